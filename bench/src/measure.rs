//! The measuring harness every scenario uses: closed-loop workers, scenarios run in turns, and
//! the throughput and latency they report.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Throughput and latency of one scenario.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The scenario.
    pub name: String,
    /// Operations completed.
    pub ops: usize,
    /// Operations per second.
    pub per_second: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
}

/// p50 and p99 in milliseconds of sorted latencies.
pub fn summarise_latencies(sorted: &[Duration]) -> (f64, f64) {
    let pick = |q: f64| {
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    (pick(0.50), pick(0.99))
}

/// A scenario's throughput and p50/p99 from its latencies and how long it ran.
pub fn summarise(name: &str, mut latencies: Vec<Duration>, elapsed: Duration) -> Measurement {
    latencies.sort();
    let (p50_ms, p99_ms) = summarise_latencies(&latencies);
    Measurement {
        name: name.to_owned(),
        ops: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms,
        p99_ms,
    }
}

/// Runs `op` from `concurrency` workers in a closed loop for `duration`.
pub async fn closed_loop<F, Fut>(
    name: &str,
    concurrency: usize,
    duration: Duration,
    op: F,
) -> Measurement
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    // On stderr, apart from the tables: what runs now, for a reader (or a profiler) waiting.
    eprintln!("running: {name} for {} s", duration.as_secs_f64());
    let start = Instant::now();
    let latencies = workers(
        Arc::new(op),
        &Arc::new(AtomicUsize::new(0)),
        concurrency,
        duration,
    )
    .await;
    summarise(name, latencies, start.elapsed())
}

/// Two closed loops run in turns, `rounds` slices each and `duration` in all for each, so
/// that the machine's drift during the run (other load, the database's background work)
/// falls on both alike: their ratio is the figure. Run once each in one block, the SQLite
/// read / trivial ratio went from 0.35 to 0.60 across runs of one binary.
pub async fn alternating<F, Fut, G, Gut>(
    first: (&str, F),
    second: (&str, G),
    concurrency: usize,
    duration: Duration,
    rounds: u32,
) -> (Measurement, Measurement)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
    G: Fn(usize) -> Gut + Send + Sync + 'static,
    Gut: std::future::Future<Output = bool> + Send,
{
    let turns = alternating_watched(first, second, concurrency, duration, rounds, &[]).await;
    let [this] = turns.cpu[..] else {
        return (turns.first, turns.second);
    };
    // CPU per operation and the share of the cores used: a cost shows as more CPU per
    // operation at the same share, waiting as a smaller share.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = |ticks: u64, elapsed: Duration| {
        ticks as f64 / TICKS_PER_SECOND / elapsed.as_secs_f64() / cores
    };
    eprintln!(
        "process CPU: {}: {:.1} µs/op, {:.0}% of the cores; {}: {:.1} µs/op, {:.0}% of the cores",
        turns.first.name,
        micros_per_op(this.0, turns.first.ops),
        busy(this.0, turns.first_elapsed) * 100.0,
        turns.second.name,
        micros_per_op(this.1, turns.second.ops),
        busy(this.1, turns.second_elapsed) * 100.0,
    );
    (turns.first, turns.second)
}

/// What two closed loops taking turns measured ([`alternating_watched`]).
pub struct Turns {
    /// The first loop.
    pub first: Measurement,
    /// The second loop.
    pub second: Measurement,
    /// How long the first loop's slices ran in all.
    pub first_elapsed: Duration,
    /// How long the second loop's slices ran in all.
    pub second_elapsed: Duration,
    /// CPU clock ticks (user and system) of this process and then of each watched process,
    /// spent while the first loop ran and while the second ran.
    pub cpu: Vec<(u64, u64)>,
}

/// [`alternating`], also counting the CPU time this process and the `watched` processes
/// (by id) spend during each loop's slices.
pub async fn alternating_watched<F, Fut, G, Gut>(
    (first_name, first): (&str, F),
    (second_name, second): (&str, G),
    concurrency: usize,
    duration: Duration,
    rounds: u32,
    watched: &[u32],
) -> Turns
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
    G: Fn(usize) -> Gut + Send + Sync + 'static,
    Gut: std::future::Future<Output = bool> + Send,
{
    eprintln!(
        "running: {first_name} and {second_name} in turns, {rounds} × {} s each",
        duration.as_secs_f64() / f64::from(rounds)
    );
    let processes: Vec<String> = std::iter::once("self".to_owned())
        .chain(watched.iter().map(u32::to_string))
        .collect();
    let ticks = || -> Vec<u64> { processes.iter().map(|p| cpu_ticks(p)).collect() };
    let slice = duration / rounds.max(1);
    let (first, second) = (Arc::new(first), Arc::new(second));
    let (first_counter, second_counter) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (mut first_latencies, mut second_latencies) = (Vec::new(), Vec::new());
    let (mut first_elapsed, mut second_elapsed) = (Duration::ZERO, Duration::ZERO);
    let mut cpu = vec![(0u64, 0u64); processes.len()];
    for round in 0..rounds.max(1) {
        // First-second, then second-first: whatever the side that runs first in a round
        // gains or loses (a connection pool gone cold in the other's turn, the machine's
        // drift within the round) falls on both sides alike.
        for second_side in [round % 2 == 1, round % 2 == 0] {
            let (t, before) = (Instant::now(), ticks());
            let elapsed = if second_side {
                second_latencies
                    .extend(workers(second.clone(), &second_counter, concurrency, slice).await);
                &mut second_elapsed
            } else {
                first_latencies
                    .extend(workers(first.clone(), &first_counter, concurrency, slice).await);
                &mut first_elapsed
            };
            for (spent, (after, before)) in cpu.iter_mut().zip(ticks().into_iter().zip(before)) {
                let side = if second_side {
                    &mut spent.1
                } else {
                    &mut spent.0
                };
                *side += after.saturating_sub(before);
            }
            *elapsed += t.elapsed();
        }
    }
    Turns {
        first: summarise(first_name, first_latencies, first_elapsed),
        second: summarise(second_name, second_latencies, second_elapsed),
        first_elapsed,
        second_elapsed,
        cpu,
    }
}

/// Microseconds of CPU per operation, from clock ticks.
pub fn micros_per_op(ticks: u64, ops: usize) -> f64 {
    ticks as f64 * 1e6 / TICKS_PER_SECOND / ops.max(1) as f64
}

/// `concurrency` workers running `op` back to back until `duration` has passed; every
/// operation's latency. `counter` numbers the operations across calls.
async fn workers<F, Fut>(
    op: Arc<F>,
    counter: &Arc<AtomicUsize>,
    concurrency: usize,
    duration: Duration,
) -> Vec<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let op = op.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    if !op(i).await {
                        panic!("operation {i} failed");
                    }
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap_or_default());
    }
    all
}

/// Linux's clock ticks (`USER_HZ`), the unit of `/proc/self/stat`'s times.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time of a process (`self` or an id) so far, user and system, in clock ticks; 0 where
/// its `/proc/<process>/stat` cannot be read.
fn cpu_ticks(process: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).unwrap_or_default();
    // The fields after the command name, which may itself hold spaces and parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime: the 14th and 15th fields, the 12th and 13th after the name.
    field(11) + field(12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cpu_of_watched_processes_is_counted_for_each_side() {
        // One process that only spins and one that only sleeps.
        let mut busy = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh");
        let mut idle = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let op = |_| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            true
        };
        let turns = alternating_watched(
            ("first", op),
            ("second", op),
            2,
            Duration::from_millis(800),
            4,
            &[busy.id(), idle.id()],
        )
        .await;
        let _ = (busy.kill(), idle.kill());
        let _ = (busy.wait(), idle.wait());
        assert!(turns.first.ops > 0 && turns.second.ops > 0);
        let [_, spinning, sleeping] = turns.cpu[..] else {
            panic!("this process and two watched: {:?}", turns.cpu);
        };
        // 0.4 s of spinning on each side is 40 ticks on an idle core; a busy machine gives
        // it less, but never nothing.
        assert!(spinning.0 >= 4 && spinning.1 >= 4, "{spinning:?}");
        assert!(sleeping.0 + sleeping.1 <= 1, "{sleeping:?}");
    }
}
