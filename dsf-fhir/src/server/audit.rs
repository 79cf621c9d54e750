//! The audit log: one JSON line per request with who asked (certificate thumbprint,
//! organisation or user), the interaction, the resource it named, the answer's status and
//! why it was allowed or refused. Never resource contents, never search values: only the
//! names of the search parameters.
//!
//! Lines are written by a thread of their own, so that a slow disk never holds up a request:
//! the thread gathers what arrives within 50 ms of a first record and writes it at once. A
//! log file that logrotate (or an operator) moved away is noticed within a second and opened
//! anew at its path.

use super::trace::Noted;
use super::IdentityKind;
use dsf_core::ErrorChain;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
/// clone, one writer thread behind all clones.
#[derive(Clone)]
pub struct AuditLog {
    lines: mpsc::Sender<String>,
    targets: Arc<[AuditTarget]>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("targets", &self.targets)
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
        let (lines, queue) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("dsf-audit".into())
            .spawn(move || write_lines(queue, outputs))?;
        Ok(AuditLog {
            lines,
            targets: targets.into(),
        })
    }

    /// Where it writes.
    pub fn targets(&self) -> &[AuditTarget] {
        &self.targets
    }

    pub(crate) fn write(&self, record: &AuditRecord<'_>) {
        match serde_json::to_string(record) {
            Ok(line) => {
                if self.lines.send(line).is_err() {
                    tracing::error!("the audit log's writer has stopped; record lost");
                }
            }
            Err(e) => tracing::error!(error = %e, "audit record not serialisable"),
        }
    }
}

/// One request's audit record.
#[derive(Debug, Serialize)]
pub(crate) struct AuditRecord<'a> {
    /// When the answer was ready, RFC 3339 in UTC.
    pub time: String,
    /// Network address of the caller (a trusted proxy's, behind one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub identity: AuditIdentity<'a>,
    pub interaction: &'static str,
    pub method: &'a str,
    /// `Type`, `Type/id` or `Type/id/_history/version`: from the answer's `Location` when
    /// there is one (a create's new id), else from the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Names of the query parameters, never their values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    pub status: u16,
    /// `allowed` (answered 1xx–3xx), `refused` (4xx) or `failed` (5xx).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub reasons_left_out: usize,
    /// Time to the answer's head, in microseconds.
    pub duration_us: u64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Who asked: the certificate presented and whom the allow list or role configuration
/// found for it.
#[derive(Debug, Serialize)]
pub(crate) struct AuditIdentity<'a> {
    /// `local-organization`, `remote-organization`, `practitioner`, or `unknown` when no one
    /// was recognised.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<&'a str>,
    /// SHA-512 thumbprint of the client certificate, when one was presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<&'a str>,
}

impl<'a> AuditIdentity<'a> {
    pub(crate) fn of(noted: &'a Noted, thumbprint: Option<&'a str>) -> Self {
        match &noted.identity {
            Some(identity) => AuditIdentity {
                kind: match identity.kind {
                    IdentityKind::LocalOrganization => "local-organization",
                    IdentityKind::RemoteOrganization => "remote-organization",
                    IdentityKind::Practitioner => "practitioner",
                },
                name: Some(identity.name()),
                organization: Some(&identity.organization_identifier),
                practitioner: identity.practitioner_identifier.as_deref(),
                thumbprint,
            },
            None => AuditIdentity {
                kind: "unknown",
                name: None,
                organization: None,
                practitioner: None,
                thumbprint,
            },
        }
    }
}

/// The outcome word of an HTTP status.
pub(crate) fn outcome(status: u16) -> &'static str {
    match status {
        500.. => "failed",
        400.. => "refused",
        _ => "allowed",
    }
}

/// The current time as RFC 3339 in UTC with milliseconds.
pub(crate) fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&format).unwrap_or_default()
}

/// One open target.
enum Output {
    File {
        path: PathBuf,
        writer: std::io::BufWriter<std::fs::File>,
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

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let writer: &mut dyn Write = match self {
            Output::File { writer, .. } => writer,
            Output::Stdout(out) => out,
            Output::Stderr(err) => err,
        };
        writer.write_all(line.as_bytes())?;
        writer.write_all(b"\n")
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
                writer.flush()?;
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

fn open_file(path: &Path) -> std::io::Result<(std::io::BufWriter<std::fs::File>, FileIdentity)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok((
        std::io::BufWriter::with_capacity(64 * 1024, file),
        file_identity(path),
    ))
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

/// How often a file target is checked for having been moved away.
const REOPEN_CHECK: Duration = Duration::from_secs(1);

fn write_lines(queue: mpsc::Receiver<String>, mut outputs: Vec<Output>) {
    let mut checked = Instant::now();
    let mut failing = false;
    loop {
        let first = match queue.recv_timeout(REOPEN_CHECK) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut result = Ok(());
        if checked.elapsed() >= REOPEN_CHECK {
            checked = Instant::now();
            for output in &mut outputs {
                result = result.and(output.reopen_if_moved());
            }
        }
        if let Some(first) = first {
            // Records of the next moments are gathered into one write: a write and a wake-up
            // per record cost a busy server a third of its reads.
            std::thread::sleep(GATHER);
            for line in std::iter::once(first).chain(queue.try_iter()) {
                for output in &mut outputs {
                    result = result.and(output.write_line(&line));
                }
            }
            for output in &mut outputs {
                result = result.and(output.flush());
            }
        }
        // One error line per run of failures, not one per record.
        match result {
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %ErrorChain(&e), "cannot write the audit log");
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: u16) -> AuditRecord<'static> {
        AuditRecord {
            time: now(),
            peer: None,
            identity: AuditIdentity {
                kind: "unknown",
                name: None,
                organization: None,
                practitioner: None,
                thumbprint: Some("ab"),
            },
            interaction: "read",
            method: "GET",
            resource: Some("Task/1".into()),
            parameters: Vec::new(),
            status,
            outcome: outcome(status),
            allowed: Vec::new(),
            refused: vec!["not on the allow list".into()],
            reasons_left_out: 0,
            duration_us: 12,
        }
    }

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
        log.write(&record(401));
        let first = lines(&path, 1);
        assert_eq!(first[0]["outcome"], "refused");
        assert_eq!(first[0]["identity"]["thumbprint"], "ab");
        assert!(first[0].get("allowed").is_none());

        std::fs::rename(&path, dir.path().join("rotated.log")).expect("rotate");
        std::thread::sleep(REOPEN_CHECK + Duration::from_millis(200));
        log.write(&record(200));
        let after = lines(&path, 1);
        assert_eq!(after[0]["outcome"], "allowed");
        assert_eq!(lines(&dir.path().join("rotated.log"), 1).len(), 1);
    }
}
