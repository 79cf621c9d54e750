//! The audit log: one JSON line per request with who asked (certificate thumbprint,
//! organisation or user), the interaction, the resource it named, the answer's status and
//! why it was allowed or refused. Never resource contents, never search values: only the
//! names of the search parameters.
//!
//! A request formats its record where it runs, straight into the batch pending ([`line`]:
//! field by field, the caller's part kept from the connection's earlier requests), under the
//! batch's lock, which the writer takes only to swap the batch. A thread of its own writes
//! the batch out, so that a slow disk never holds up a request. The writer gathers what
//! arrives within 50 ms of a first line and writes it at once. Nothing of a request crosses
//! to the writer but bytes, so no request's memory is freed on another thread and what waits
//! for a stalled disk is bounded. A log file that logrotate (or an operator) moved away is
//! noticed within a second and opened anew at its path.

mod line;

use super::interaction::PathId;
use super::trace::{Noted, RecordHead};
use dsf_core::ErrorChain;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// Appended to a file (its directory created if missing).
    File(PathBuf),
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The audit log of a server ([`ServerConfig::audit`](super::ServerConfig::audit)): cheap to
/// clone, one writer thread behind all clones; it stops once the last clone is dropped.
#[derive(Clone)]
pub struct AuditLog {
    handle: Arc<Handle>,
}

/// What the clones share; dropping the last tells the writer to finish.
struct Handle {
    batch: Arc<Batch>,
    targets: Vec<AuditTarget>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.batch.lock().closed = true;
        self.batch.ready.notify_one();
    }
}

/// Lines waiting for the writer.
#[derive(Default)]
struct Batch {
    pending: Mutex<Pending>,
    /// Signalled when the first line arrives in an empty batch, when the batch grows past
    /// [`BATCH_BYTES`], and on closing.
    ready: Condvar,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// The time of the records, formatted.
    clock: Clock,
    /// Records left out because the batch was full (the writer could not keep up).
    dropped: u64,
    closed: bool,
}

impl Batch {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Most bytes waiting for the writer; beyond, records are counted and left out rather than
/// let a stuck disk take the server's memory.
const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("targets", &self.handle.targets)
            .finish()
    }
}

impl AuditLog {
    /// Opens the targets (files are created, their directories too) and starts the writer.
    pub fn open(targets: Vec<AuditTarget>) -> std::io::Result<AuditLog> {
        let mut outputs = Vec::with_capacity(targets.len());
        for target in &targets {
            outputs.push(Output::open(target)?);
        }
        let batch = Arc::new(Batch::default());
        let for_writer = batch.clone();
        std::thread::Builder::new()
            .name("dsf-audit".into())
            .spawn(move || write_batches(&for_writer, outputs))?;
        Ok(AuditLog {
            handle: Arc::new(Handle { batch, targets }),
        })
    }

    /// Where it writes.
    pub fn targets(&self) -> &[AuditTarget] {
        &self.handle.targets
    }

    /// Writes the record of `entry`, with the caller's part kept in `head` (one per
    /// connection: see [`RecordHead`]).
    pub(crate) fn write(&self, entry: &AuditEntry<'_>, head: &mut RecordHead) {
        let batch = &self.handle.batch;
        let mut pending = batch.lock();
        let Pending {
            lines,
            clock,
            dropped,
            ..
        } = &mut *pending;
        let before = lines.len();
        let time = clock.format(entry.time);
        line::write(entry, head, time, lines);
        lines.push(b'\n');
        if lines.len() > MAX_PENDING_BYTES {
            lines.truncate(before);
            *dropped += 1;
            return;
        }
        let after = lines.len();
        drop(pending);
        if before == 0 || (before < BATCH_BYTES && after >= BATCH_BYTES) {
            batch.ready.notify_one();
        }
    }
}

/// One request's audit record as the request leaves it: what was noted and measured, not
/// yet formatted.
#[derive(Debug)]
pub(crate) struct AuditEntry<'a> {
    /// When the answer was ready (the reading its duration ends with).
    pub time: Instant,
    /// Network address of the caller (a trusted proxy's, behind one).
    pub peer: Option<SocketAddr>,
    /// Read where it was noted, not moved.
    pub noted: &'a Noted,
    pub interaction: &'static str,
    pub method: &'a http::Method,
    pub resource: NamedResource<'a>,
    /// Names of the query parameters, never their values.
    pub parameters: Vec<String>,
    pub status: u16,
    /// Time to the answer's head.
    pub duration: Duration,
}

/// The resource a request named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NamedResource<'a> {
    None,
    /// `Type`, `Type/id` or `Type/id/_history/version` as the path named it when the router
    /// took the request, or as the answer's `Location` gave it (a create's new id).
    Reference(&'a str),
    /// A type and, if the path gave one, an id (and version): the path's own reading, for a
    /// request that did not reach the router.
    Path(&'static str, Option<PathId<'a>>),
}

/// Formats times as RFC 3339 in UTC with milliseconds, formatting each second once and
/// each millisecond's text once (a busy server writes dozens of records per millisecond).
///
/// Takes the request's own monotonic reading (the one its duration ends with) rather than
/// reading the wall clock again for every record: the wall clock is read once a second, and
/// a record's time is that reading plus the monotonic time since. A step of the wall clock
/// (an operator setting it) shows within a second.
#[derive(Default)]
struct Clock {
    /// A monotonic reading and the wall clock's time since the Unix epoch then.
    anchor: Option<(Instant, Duration)>,
    /// The second last formatted (since the Unix epoch) and its text up to the seconds.
    second: Option<(u64, String)>,
    /// The millisecond last formatted (since the Unix epoch) and its whole text.
    millisecond: Option<u64>,
    text: String,
}

/// How long a wall clock reading serves as the [`Clock`]'s anchor (either way: records of
/// several threads reach the clock in an order a little different from their readings').
const ANCHOR_FOR: Duration = Duration::from_secs(1);

impl Clock {
    /// The wall clock time at the monotonic reading `at`, formatted.
    fn format(&mut self, at: Instant) -> &str {
        let anchored =
            self.anchor
                .and_then(|(anchor, wall)| match at.checked_duration_since(anchor) {
                    Some(since) if since < ANCHOR_FOR => wall.checked_add(since),
                    Some(_) => None,
                    None => {
                        let before = anchor.duration_since(at);
                        (before < ANCHOR_FOR).then(|| wall.saturating_sub(before))
                    }
                });
        let wall = anchored.unwrap_or_else(|| {
            let wall = since_epoch(SystemTime::now());
            self.anchor = Some((at, wall));
            wall
        });
        self.format_millis(u64::try_from(wall.as_millis()).unwrap_or(u64::MAX))
    }

    /// The time `millis` after the Unix epoch, formatted.
    fn format_millis(&mut self, millis: u64) -> &str {
        if self.millisecond == Some(millis) {
            return &self.text;
        }
        self.millisecond = Some(millis);
        let (second, millis) = (millis / 1000, (millis % 1000) as u32);
        if self.second.as_ref().map(|(s, _)| *s) != Some(second) {
            let millis = i64::try_from(second.saturating_mul(1000)).unwrap_or(i64::MAX);
            let mut text = crate::date::format_instant(millis);
            // Up to the seconds: the milliseconds are each time's own.
            text.truncate(text.rfind('.').unwrap_or(text.len()));
            self.second = Some((second, text));
        }
        let out = &mut self.text;
        out.clear();
        if let Some((_, text)) = &self.second {
            out.push_str(text);
        }
        out.push('.');
        for digit in [millis / 100, millis / 10 % 10, millis % 10] {
            out.push(char::from_digit(digit, 10).unwrap_or('0'));
        }
        out.push('Z');
        out
    }
}

/// Time since the Unix epoch (none for a clock set before it).
fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// One open target.
enum Output {
    File {
        path: PathBuf,
        /// Unbuffered: each write is a whole batch already.
        writer: std::fs::File,
        /// The file's identity when opened, to notice that it was moved away.
        identity: FileIdentity,
    },
    Stdout(std::io::Stdout),
    Stderr(std::io::Stderr),
}

impl Output {
    fn open(target: &AuditTarget) -> std::io::Result<Output> {
        Ok(match target {
            AuditTarget::File(path) => {
                let (writer, identity) = open_file(path)?;
                Output::File {
                    path: path.clone(),
                    writer,
                    identity,
                }
            }
            AuditTarget::Stdout => Output::Stdout(std::io::stdout()),
            AuditTarget::Stderr => Output::Stderr(std::io::stderr()),
        })
    }

    fn write_all(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let writer: &mut dyn Write = match self {
            Output::File { writer, .. } => writer,
            Output::Stdout(out) => out,
            Output::Stderr(err) => err,
        };
        writer.write_all(lines)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::File { writer, .. } => writer.flush(),
            Output::Stdout(out) => out.flush(),
            Output::Stderr(err) => err.flush(),
        }
    }

    /// Opens the file anew when the one written to is no longer at its path.
    fn reopen_if_moved(&mut self) -> std::io::Result<()> {
        if let Output::File {
            path,
            writer,
            identity,
        } = self
        {
            if file_identity(path) != *identity {
                let (fresh, fresh_identity) = open_file(path)?;
                *writer = fresh;
                *identity = fresh_identity;
            }
        }
        Ok(())
    }
}

/// A file's device and inode: what changes when it is moved away and created anew.
type FileIdentity = Option<(u64, u64)>;

fn open_file(path: &Path) -> std::io::Result<(std::fs::File, FileIdentity)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok((file, file_identity(path)))
}

#[cfg(unix)]
fn file_identity(path: &Path) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(path: &Path) -> FileIdentity {
    std::fs::metadata(path).ok().map(|_| (0, 0))
}

/// How long the writer gathers records after the first before writing them together.
const GATHER: Duration = Duration::from_millis(50);

/// A batch this large is written without waiting out [`GATHER`]: a busy server's records
/// of 50 ms are megabytes, which pass through every cache on their way to the file and
/// push out what the requests use; batches of this size stay in a core's own cache.
const BATCH_BYTES: usize = 64 * 1024;

/// How often a file target is checked for having been moved away.
const REOPEN_CHECK: Duration = Duration::from_secs(1);

fn write_batches(batch: &Batch, mut outputs: Vec<Output>) {
    let mut checked = Instant::now();
    let mut failing = false;
    let mut lines = Vec::new();
    loop {
        let mut pending = batch.lock();
        if pending.lines.is_empty() && !pending.closed {
            pending = batch
                .ready
                .wait_timeout(pending, REOPEN_CHECK)
                .map(|(pending, _)| pending)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        if !pending.lines.is_empty() {
            // Lines of the next moments are gathered into one write: a write and a wake-up
            // per record cost a busy server a third of its reads.
            pending = batch
                .ready
                .wait_timeout_while(pending, GATHER, |pending| {
                    pending.lines.len() < BATCH_BYTES && !pending.closed
                })
                .map(|(pending, _)| pending)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        std::mem::swap(&mut pending.lines, &mut lines);
        let dropped = std::mem::take(&mut pending.dropped);
        let closed = pending.closed;
        drop(pending);

        let mut result = Ok(());
        if checked.elapsed() >= REOPEN_CHECK {
            checked = Instant::now();
            for output in &mut outputs {
                result = result.and(output.reopen_if_moved());
            }
        }
        if !lines.is_empty() {
            for output in &mut outputs {
                result = result.and(output.write_all(&lines));
                result = result.and(output.flush());
            }
            lines.clear();
        }
        if dropped > 0 {
            tracing::error!(
                dropped,
                "audit records left out: the audit log's writer cannot keep up"
            );
        }
        // One error line per run of failures, not one per batch.
        match result {
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %ErrorChain(&e), "cannot write the audit log");
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::{record, refused};
    use super::*;

    fn lines(path: &Path, count: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<_> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON line"))
                .collect();
            if lines.len() >= count {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{count} audit lines not written to {}", path.display());
    }

    #[test]
    fn records_are_json_lines_and_a_moved_file_is_opened_anew() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("log").join("audit.log");
        let log = AuditLog::open(vec![AuditTarget::File(path.clone())]).expect("open");
        log.write(&record(&refused(), 401), &mut RecordHead::default());
        let first = lines(&path, 1);
        assert_eq!(first[0]["outcome"], "refused");
        assert_eq!(first[0]["resource"], "Task/1");
        assert_eq!(first[0]["refused"][0], "not on the allow list");
        assert_eq!(
            first[0]["identity"]["thumbprint"],
            dsf_core::Thumbprint::of_der(b"certificate").as_str()
        );
        assert!(first[0].get("allowed").is_none());
        assert!(first[0].get("parameters").is_none());

        std::fs::rename(&path, dir.path().join("rotated.log")).expect("rotate");
        std::thread::sleep(REOPEN_CHECK + Duration::from_millis(200));
        log.write(&record(&refused(), 200), &mut RecordHead::default());
        let after = lines(&path, 1);
        assert_eq!(after[0]["outcome"], "allowed");
        assert_eq!(lines(&dir.path().join("rotated.log"), 1).len(), 1);
    }
}

#[cfg(test)]
mod batch_tests {
    use super::tests_support::{record, refused};
    use super::*;

    #[test]
    fn an_idle_writer_is_woken_by_a_first_line() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(vec![AuditTarget::File(path.clone())]).expect("open");
        // The writer, with nothing to write, waits up to a second for lines.
        std::thread::sleep(Duration::from_millis(100));
        let written = Instant::now();
        log.write(&record(&refused(), 200), &mut RecordHead::default());
        while !std::fs::read_to_string(&path).is_ok_and(|text| text.lines().count() == 1) {
            // Unsignalled, the writer would look again only when its wait times out.
            assert!(
                written.elapsed() < Duration::from_millis(600),
                "the line waited for the writer's timeout"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_full_batch_is_written_without_waiting_out_the_gathering() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(vec![AuditTarget::File(path.clone())]).expect("open");
        let mut line = Vec::new();
        line::write(
            &record(&refused(), 200),
            &mut RecordHead::default(),
            "t",
            &mut line,
        );
        // A first line starts the gathering, which would last until 50 ms after it.
        log.write(&record(&refused(), 200), &mut RecordHead::default());
        std::thread::sleep(Duration::from_millis(10));
        let started = SystemTime::now();
        for _ in 0..BATCH_BYTES / line.len() {
            log.write(&record(&refused(), 200), &mut RecordHead::default());
        }
        // The batch filling up ends the gathering early: its write is the file's first. The
        // file's own time of writing tells, whenever this thread gets to look.
        let deadline = Instant::now() + Duration::from_secs(5);
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        while size() < BATCH_BYTES as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        let waited = modified.duration_since(started).unwrap_or_default();
        assert!(size() >= BATCH_BYTES as u64);
        assert!(
            waited < Duration::from_millis(30),
            "a full batch waited {waited:?} for the gathering to end"
        );
    }

    #[test]
    fn lines_from_many_threads_stay_whole_and_closing_writes_what_is_pending() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(vec![AuditTarget::File(path.clone())]).expect("open");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for n in 0..500u16 {
                        log.write(
                            &record(&refused(), 200 + n % 100),
                            &mut RecordHead::default(),
                        );
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("writer");
        }
        // The last clone dropped: the writer writes what is pending, then stops.
        drop(log);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("each line one whole record"))
                .collect();
            if lines.len() == 2000 {
                assert!(lines.iter().all(|l| l["interaction"] == "read"));
                break;
            }
            assert!(Instant::now() < deadline, "{} of 2000 lines", lines.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    /// A refused caller's notes.
    pub(super) fn refused() -> Noted {
        let mut noted = Noted::default();
        noted.thumbprint = Some(dsf_core::Thumbprint::of_der(b"certificate"));
        noted.refused = vec!["not on the allow list".into()];
        noted
    }

    pub(super) fn record(noted: &Noted, status: u16) -> AuditEntry<'_> {
        AuditEntry {
            time: Instant::now(),
            peer: None,
            noted,
            interaction: "read",
            method: &http::Method::GET,
            resource: NamedResource::Path(
                "Task",
                Some(PathId {
                    id: "1",
                    version: None,
                }),
            ),
            parameters: Vec::new(),
            status,
            duration: Duration::from_micros(12),
        }
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_milliseconds_and_each_second_is_formatted_anew() {
        let mut clock = Clock::default();
        for (millis, text) in [
            (1_765_050_834_127, "2025-12-06T19:53:54.127Z"),
            (1_765_050_834_127, "2025-12-06T19:53:54.127Z"),
            (1_765_050_834_999, "2025-12-06T19:53:54.999Z"),
            (1_765_050_835_004, "2025-12-06T19:53:55.004Z"),
            (0, "1970-01-01T00:00:00.000Z"),
            (1_765_050_835_004, "2025-12-06T19:53:55.004Z"),
        ] {
            assert_eq!(clock.format_millis(millis), text);
        }
    }

    #[test]
    fn monotonic_readings_tell_the_wall_clock_time_and_the_anchor_is_renewed() {
        let mut clock = Clock::default();
        let parse = |text: &str| {
            let range = crate::date::parse_date_range(text).expect("RFC 3339");
            u64::try_from(range.low).expect("after the epoch")
        };
        let millis = |time: SystemTime| since_epoch(time).as_millis() as u64;
        let start = Instant::now();
        let before = millis(SystemTime::now());
        let first = parse(clock.format(start));
        let after = millis(SystemTime::now());
        assert!(
            (before..=after).contains(&first),
            "{before} {first} {after}"
        );
        // Within the anchor's second, either way: the monotonic time since it counts.
        let anchored = clock.anchor;
        let later = parse(clock.format(start + Duration::from_millis(250)));
        assert!(
            (first + 249..=first + 251).contains(&later),
            "{first} {later}"
        );
        if let Some(earlier) = start.checked_sub(Duration::from_millis(250)) {
            let earlier = parse(clock.format(earlier));
            assert!(
                (first - 251..=first - 249).contains(&earlier),
                "{first} {earlier}"
            );
        }
        assert_eq!(clock.anchor, anchored);
        // Past it: the wall clock is read anew.
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        let renewed = parse(clock.format(now + ANCHOR_FOR));
        assert!(renewed >= first + 5, "{first} {renewed}");
        assert_eq!(clock.anchor.map(|(at, _)| at), Some(now + ANCHOR_FOR));
    }
}
