//! Giving memory back after bursts. Large request bodies are parsed into many small
//! allocations; glibc's allocator keeps the freed pages in its arenas, so a server that once
//! parsed a few 16 MiB bodies at once would stay hundreds of MiB above its idle size for
//! months. After work that allocated much, the next quiet moment trims the arenas
//! (`malloc_trim`), which returns free pages to the system. Elsewhere (other systems) trimming
//! is a no-op. The reference binaries allocate with mimalloc, which gives freed pages back on
//! its own; there the trim still matters for what C code allocates with `malloc`, such as
//! SQLite's page cache.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How often the trimmer looks whether there is something to give back.
const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// Ticks that trim after the last large allocation was noted. Memory is freed when a request
/// ends, which may be well after it was noted (an oversized body is drained for up to 10 s, a
/// parse runs on), so one trim right after the note missed it: in a `dsf dev up` after a burst,
/// 182 MiB of anonymous memory stayed until the next large request came (docs/performance.md).
const TRAILING_TRIMS: u32 = 7;

#[derive(Default)]
pub(crate) struct Trimmer {
    /// Trims still due.
    pending: AtomicU32,
}

impl Trimmer {
    /// Says that a request allocated much (a large body, a large answer).
    pub fn note_large_allocation(&self) {
        self.pending.store(TRAILING_TRIMS, Ordering::Relaxed);
    }

    /// Whether this tick trims: every tick for [`TRAILING_TRIMS`] ticks after the last note.
    fn trim_due(&self) -> bool {
        self.pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Trims after large allocations, at most once per interval, until the server closes.
    pub async fn run(&self, mut closing: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TRIM_INTERVAL) => {}
                _ = closing.changed() => return,
            }
            if *closing.borrow() {
                return;
            }
            if self.trim_due() {
                // The walk over the arenas takes milliseconds on a large heap.
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // one of the workspace's two unsafe places (see Cargo.toml)
fn trim() {
    // SAFETY: malloc_trim takes no pointers and is safe to call from any thread at any time;
    // it only releases free memory of glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod schedule_tests {
    use super::{Trimmer, TRAILING_TRIMS};

    #[test]
    fn trims_on_several_ticks_after_the_last_note() {
        let trimmer = Trimmer::default();
        assert!(!trimmer.trim_due(), "nothing noted, nothing to trim");
        trimmer.note_large_allocation();
        assert!(trimmer.trim_due());
        // A request that noted before and frees later is covered by the ticks that follow.
        for _ in 1..TRAILING_TRIMS {
            assert!(trimmer.trim_due());
        }
        assert!(!trimmer.trim_due());
        // A new note starts the count again.
        trimmer.note_large_allocation();
        assert!(trimmer.trim_due());
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    fn resident_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Freed small allocations scattered between live ones stay resident until trimmed: the
    /// pattern a parsed request body leaves behind.
    #[test]
    fn trimming_returns_pages_freed_between_live_allocations() {
        let start = resident_kib();
        let chunks: Vec<Vec<u8>> = (0..1_000_000).map(|i| vec![i as u8; 200]).collect();
        let kept: Vec<Vec<u8>> = chunks
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 64 == 0)
            .map(|(_, c)| c)
            .collect();
        let freed = resident_kib();
        super::trim();
        let trimmed = resident_kib();
        assert_eq!(kept.len(), 15_625);
        let held = freed.saturating_sub(start);
        assert!(
            held > 100 * 1024,
            "the allocations were resident: {held} KiB"
        );
        assert!(
            freed.saturating_sub(trimmed) > held / 2,
            "trimming gave back {} of {held} KiB",
            freed.saturating_sub(trimmed)
        );
    }
}
