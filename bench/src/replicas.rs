//! BPEs sharing one PostgreSQL state database: ping/pong round trips between two
//! organisations with one BPE each against two BPEs each, what PostgreSQL spends on a round
//! trip (its processes' CPU time and its transactions), and how long a killed BPE's pings
//! wait before the other BPE resumes them.

use crate::bpe::{task, two_organizations, watch_completions, Clients, Organization, Waiters};
use dsf_core::DevPki;
use dsf_engine::{Bpe, BpeConfig, StateDatabase};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the replica run loads.
pub struct ReplicaSettings {
    /// Closed-loop clients starting pings.
    pub concurrency: usize,
    /// How long each scenario runs.
    pub duration: Duration,
    /// The PostgreSQL both FHIR servers and all BPEs use.
    pub postgres: String,
}

/// Round trips with `bpes` BPEs per organisation, and what PostgreSQL spent on them.
pub struct Throughput {
    /// What ran: BPEs per organisation and where their state was.
    pub label: String,
    /// BPEs per organisation.
    pub bpes: usize,
    /// Completed round trips.
    pub round_trips: usize,
    /// Round trips per second.
    pub per_second: f64,
    /// Median round trip.
    pub p50: Duration,
    /// PostgreSQL's CPU time per round trip (all its processes), if readable here.
    pub database_cpu: Option<Duration>,
    /// PostgreSQL transactions committed per round trip.
    pub transactions: Option<f64>,
}

/// What the replica run measured.
pub struct ReplicaReport {
    /// One BPE per organisation, then two.
    pub throughput: Vec<Throughput>,
    /// From killing one of two BPEs to the last of the pings it held completing.
    pub failover: Duration,
    /// Pings in flight when it was killed.
    pub in_flight: usize,
    /// Pings not completed within a minute of the kill (lost).
    pub lost: usize,
    /// The BPEs' lease.
    pub lease: Duration,
}

impl ReplicaReport {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| BPEs per organisation | round trips | per second | p50 ms | PostgreSQL CPU ms per round trip | transactions per round trip |\n|---|---|---|---|---|---|\n",
        );
        for t in &self.throughput {
            out.push_str(&format!(
                "| {} | {} | {:.1} | {:.1} | {} | {} |\n",
                t.label,
                t.round_trips,
                t.per_second,
                t.p50.as_secs_f64() * 1000.0,
                t.database_cpu
                    .map_or("n/a".into(), |d| format!("{:.2}", d.as_secs_f64() * 1000.0)),
                t.transactions.map_or("n/a".into(), |n| format!("{n:.1}")),
            ));
        }
        if let [sqlite, one, two] = &self.throughput[..] {
            out.push_str(&format!(
                "\n2 BPEs / 1 BPE per organisation: {:.2}x the round trips per second\n",
                two.per_second / one.per_second
            ));
            if let (Some(a), Some(b)) = (one.database_cpu, two.database_cpu) {
                out.push_str(&format!(
                    "PostgreSQL CPU per round trip, 2 BPEs / 1: {:.2}\n",
                    b.as_secs_f64() / a.as_secs_f64()
                ));
            }
            out.push_str(&format!(
                "1 BPE with its state on PostgreSQL / on SQLite: {:.2}x the round trips per second\n",
                one.per_second / sqlite.per_second
            ));
            if let (Some(s), Some(a)) = (sqlite.database_cpu, one.database_cpu) {
                out.push_str(&format!(
                    "the BPEs' state on PostgreSQL costs it {:.2} ms of CPU per round trip (the FHIR servers {:.2} ms)\n",
                    (a.as_secs_f64() - s.as_secs_f64()) * 1000.0,
                    s.as_secs_f64() * 1000.0
                ));
            }
        }
        out.push_str(&format!(
            "\nFail-over (lease {:.1} s): one of two BPEs killed with {} pings in flight; the last of them completed {:.2} s after the kill; {} lost\n",
            self.lease.as_secs_f64(),
            self.in_flight,
            self.failover.as_secs_f64(),
            self.lost
        ));
        out
    }
}

/// CPU time (user + system) of every process named `postgres` on this machine, if `/proc`
/// shows them.
fn postgres_cpu() -> Option<Duration> {
    let mut ticks: u64 = 0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: fields after the closing parenthesis.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after `) state`.
        if let (Some(user), Some(system)) = (fields.get(11), fields.get(12)) {
            ticks += user.parse::<u64>().unwrap_or(0) + system.parse::<u64>().unwrap_or(0);
            found = true;
        }
    }
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    found.then(|| Duration::from_millis(ticks * 10))
}

async fn transactions(postgres: &str) -> Option<i64> {
    let (client, connection) = tokio_postgres::connect(postgres, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    // Statistics reach the view within a second of each backend's transactions.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .ok()?
        .try_get(0)
        .ok()
}

/// `count` BPEs per organisation, their state in PostgreSQL schemas named after `schema`,
/// or (with `postgres` `None`) each in a SQLite file in `dir`.
async fn start_bpes(
    orgs: &[Organization],
    count: usize,
    postgres: Option<&str>,
    schema: &str,
    dir: &std::path::Path,
) -> Result<Vec<Bpe>, BoxError> {
    let mut bpes = Vec::new();
    for org in orgs {
        for i in 0..count {
            let mut config = BpeConfig::new(&org.base_url, org.tls.clone());
            let name = format!("{schema}_{}", org.identifier.replace(['.', '-'], "_"));
            config.state = match postgres {
                Some(url) => StateDatabase::Postgres {
                    url: url.to_owned(),
                    schema: Some(name),
                },
                None => StateDatabase::Sqlite(dir.join(format!("{name}_{i}.sqlite"))),
            };
            let bpe = Bpe::start(config, vec![dsf_plugin_ping_pong::plugin()]).await?;
            bpe.wait_connected().await;
            bpes.push(bpe);
        }
    }
    Ok(bpes)
}

/// Round trips started by `concurrency` closed-loop workers for `duration`: (start, end) of
/// each completed one, and how many did not complete within a minute.
async fn round_trips(
    clients: &Arc<Clients>,
    waiters: &Waiters,
    a: &str,
    concurrency: usize,
    duration: Duration,
) -> (Vec<(Instant, Instant)>, usize) {
    let done = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (clients, waiters, a, done) =
                (clients.clone(), waiters.clone(), a.to_owned(), done.clone());
            tokio::spawn(async move {
                while start.elapsed() < duration {
                    let t = Instant::now();
                    let (tx, rx) = oneshot::channel();
                    let Ok(created) = clients
                        .a
                        .create(&task(&a, &a, "ping", "task-start-ping", "startPing", &[]))
                        .await
                    else {
                        continue;
                    };
                    let Some(id) = created["id"].as_str() else {
                        continue;
                    };
                    if let Ok(mut w) = waiters.lock() {
                        w.insert(id.to_owned(), tx);
                    }
                    let completed = tokio::time::timeout(Duration::from_secs(60), rx).await;
                    if let Ok(mut done) = done.lock() {
                        match completed {
                            Ok(_) => done.0.push((t, Instant::now())),
                            Err(_) => done.1 += 1,
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let mut done = done.lock().map(|d| d.clone()).unwrap_or_default();
    done.0.sort();
    done
}

/// The replica run (see the module documentation).
pub async fn run(settings: ReplicaSettings) -> Result<ReplicaReport, BoxError> {
    let dir = std::env::temp_dir().join(format!(
        "dsf-replica-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let run = format!(
        "dsf_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let pki = DevPki::generate("dsf-rs replica bench CA")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let orgs = two_organizations(&pki, &dir, &stop_rx, Some((&settings.postgres, &run))).await?;
    let clients = Arc::new(Clients::new(&orgs)?);
    let waiters = watch_completions(clients.a.clone()).await?;
    let a = orgs[0].identifier.clone();

    let mut throughput = Vec::new();
    for (label, count, postgres) in [
        ("1, state on SQLite (baseline)", 1, None),
        (
            "1, state on PostgreSQL",
            1,
            Some(settings.postgres.as_str()),
        ),
        (
            "2, sharing a PostgreSQL state",
            2,
            Some(settings.postgres.as_str()),
        ),
    ] {
        eprintln!("round trips with {label}");
        let schema = format!("{run}_bpe{count}");
        let bpes = start_bpes(&orgs, count, postgres, &schema, &dir).await?;
        let (cpu_before, xacts_before) = (postgres_cpu(), transactions(&settings.postgres).await);
        let started = Instant::now();
        let (done, _) = round_trips(
            &clients,
            &waiters,
            &a,
            settings.concurrency,
            settings.duration,
        )
        .await;
        let elapsed = started.elapsed();
        let (cpu_after, xacts_after) = (postgres_cpu(), transactions(&settings.postgres).await);
        for bpe in bpes {
            bpe.shutdown().await;
        }
        let n = done.len().max(1);
        let mut latencies: Vec<Duration> = done.iter().map(|(s, e)| *e - *s).collect();
        latencies.sort();
        throughput.push(Throughput {
            label: label.to_owned(),
            bpes: count,
            round_trips: done.len(),
            per_second: done.len() as f64 / elapsed.as_secs_f64(),
            p50: latencies
                .get(latencies.len() / 2)
                .copied()
                .unwrap_or_default(),
            database_cpu: cpu_before
                .zip(cpu_after)
                .map(|(b, a)| a.saturating_sub(b) / n as u32),
            transactions: xacts_before
                .zip(xacts_after)
                .map(|(b, a)| (a - b) as f64 / n as f64),
        });
    }

    eprintln!("fail-over: one of two BPEs per organisation killed under load");
    let schema = format!("{run}_failover");
    let mut bpes = start_bpes(&orgs, 2, Some(&settings.postgres), &schema, &dir).await?;
    let lease = dsf_engine::DEFAULT_LEASE;
    let load = {
        let (clients, waiters, a) = (clients.clone(), waiters.clone(), a.clone());
        let (concurrency, duration) = (
            settings.concurrency,
            settings.duration.max(Duration::from_secs(8)),
        );
        tokio::spawn(
            async move { round_trips(&clients, &waiters, &a, concurrency, duration).await },
        )
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The second BPE of organisation B (pings are answered there) dies without a word.
    let killed = Instant::now();
    bpes.remove(3).stop();
    let (done, lost) = load.await?;
    let in_flight: Vec<&(Instant, Instant)> = done
        .iter()
        .filter(|(s, e)| *s < killed && *e > killed)
        .collect();
    let failover = in_flight
        .iter()
        .map(|(_, e)| *e - killed)
        .max()
        .unwrap_or_default();
    for bpe in bpes {
        bpe.shutdown().await;
    }
    let _ = stop_tx.send(true);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ReplicaReport {
        throughput,
        failover,
        in_flight: in_flight.len(),
        lost,
        lease,
    })
}
