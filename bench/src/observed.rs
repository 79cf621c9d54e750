//! What the audit log and the metrics cost reads, measured on the `dsf-fhir-server` binary as
//! operators run it: two server processes on one SQLite database, one with both off and one
//! with the audit log (a file) and the status port's metrics on, read by id in turns from a
//! load generator in this process. Each server's CPU time per read comes from its
//! `/proc/<pid>/stat`, apart from the load generator's.

use crate::bpe::free_port;
use crate::load::{create_tasks, read_task};
use crate::measure::{alternating_watched, closed_loop, micros_per_op, Measurement};
use crate::server::certs;
use crate::startup::{answering, fhir_server};
use dsf_fhir::FhirClient;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Turns of the comparison: a few percent is the figure, so the machine's drift must fall on
/// both sides in many small slices.
const ROUNDS: u32 = 96;

const READ_OFF: &str = "read, audit log and metrics off (baseline)";
const READ_ON: &str = "read, audit log and metrics on";
const READ_CONTROL: &str = "read, second server, audit log and metrics off (control)";

/// What the second server has on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sides {
    /// The audit log (a file) and the status port's metrics: the comparison.
    OffAndOn,
    /// Nothing, as the first: the control, which shows the set-up's own asymmetry (a second
    /// process on the database, turns, the machine's drift) with nothing to measure.
    BothOff,
}

impl Sides {
    /// Whether the second server has the audit log and metrics on.
    fn audited(self) -> bool {
        self == Sides::OffAndOn
    }

    /// The second server's reads, their ratio to the first's, and what that ratio should be.
    fn labels(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Sides::OffAndOn => (
                READ_ON,
                "read with audit log and metrics / without",
                "≥ 0.95",
            ),
            Sides::BothOff => (
                READ_CONTROL,
                "read, second server / first (control, both off)",
                "1 ± noise",
            ),
        }
    }
}

/// What the comparison measured.
pub struct ObservedReport {
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Reads with both off, then with both on.
    pub measurements: [Measurement; 2],
    /// µs of CPU per read of the server being read, off then on.
    pub server_cpu: [f64; 2],
    /// µs of CPU per read of the load generator, off then on.
    pub client_cpu: [f64; 2],
    /// µs of CPU per read of the server not being read (idle: its background work).
    pub idle_cpu: [f64; 2],
    /// Lines the audit log holds at the end.
    pub audit_lines: usize,
    /// What the second server had on.
    pub sides: Sides,
}

impl ObservedReport {
    /// The report as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "dsf-fhir-server processes on SQLite, {} concurrent clients in another process, {ROUNDS} turns.\n\n| scenario | ops | ops/s | p50 ms | p99 ms | server µs CPU/op | load generator µs CPU/op | other server µs CPU/op |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
            self.concurrency
        );
        for (i, m) in self.measurements.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} |\n",
                m.name,
                m.ops,
                m.per_second,
                m.p50_ms,
                m.p99_ms,
                self.server_cpu[i],
                self.client_cpu[i],
                self.idle_cpu[i]
            ));
        }
        let [off, on] = &self.measurements;
        out.push_str(&format!(
            "\n| ratio | value | target |\n|---|---:|---:|\n| {} | {:.2} | {} |\n| server CPU per read, first / second | {:.2} | – |\n\nThe audit log holds {} lines.\n",
            self.sides.labels().1,
            on.per_second / off.per_second.max(f64::MIN_POSITIVE),
            self.sides.labels().2,
            self.server_cpu[0] / self.server_cpu[1].max(f64::MIN_POSITIVE),
            self.audit_lines
        ));
        out
    }
}

/// Runs the comparison on the `dsf-fhir-server` at `binary`, `duration` of reads on each side.
pub async fn run(
    binary: &Path,
    sides: Sides,
    concurrency: usize,
    duration: Duration,
) -> Result<ObservedReport, Box<dyn std::error::Error + Send + Sync>> {
    let certs = certs()?;
    let dir = std::env::temp_dir().join(format!("dsf-observed-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let result = compare(binary, sides, &certs, &dir, concurrency, duration).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn compare(
    binary: &Path,
    sides: Sides,
    certs: &crate::server::Certs,
    dir: &Path,
    concurrency: usize,
    duration: Duration,
) -> Result<ObservedReport, Box<dyn std::error::Error + Send + Sync>> {
    let (off_port, on_port, status_port) = (free_port()?, free_port()?, free_port()?);
    // Both know themselves by the first one's address: one organisation, two processes.
    let base_url = format!("https://localhost:{off_port}/fhir");
    let tls = Arc::new(certs.pki.client_config(&certs.local)?);
    let off_client = Arc::new(FhirClient::new(&base_url, tls.clone())?);
    let on_client = Arc::new(FhirClient::new(
        &format!("https://localhost:{on_port}/fhir"),
        tls,
    )?);

    let mut off = fhir_server(binary, certs, dir, off_port, &base_url)?
        .env("RUST_LOG", "warn")
        .spawn()?;
    answering(&off_client).await?;
    // The Tasks to read; the second server starts on the database once they are written.
    let (_, created) = create_tasks(
        off_client.clone(),
        "t",
        concurrency,
        duration.min(Duration::from_secs(3)),
    )
    .await;
    if created.is_empty() {
        return Err("no Task was created".into());
    }
    let ids = Arc::new(created.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
    let audit_log = dir.join("fhir-audit.log");
    let mut on = fhir_server(binary, certs, dir, on_port, &base_url)?;
    if sides.audited() {
        on.env("DEV_DSF_LOG_AUDIT_FILE_ENABLED", "true")
            .env("DEV_DSF_LOG_AUDIT_FILE", &audit_log)
            .env("DEV_DSF_SERVER_STATUS_PORT", status_port.to_string());
    }
    let mut on = on.env("RUST_LOG", "warn").spawn()?;
    answering(&on_client).await?;
    let (off_pid, on_pid) = (
        off.id().ok_or("the server without audit log exited")?,
        on.id().ok_or("the server with audit log exited")?,
    );

    // Both servers' caches warm before the turns begin: the first wrote the Tasks, the
    // second has read none of them yet.
    for client in [&off_client, &on_client] {
        closed_loop(
            "warm-up reads",
            concurrency,
            Duration::from_secs(1),
            read_task(client.clone(), ids.clone()),
        )
        .await;
    }
    let turns = alternating_watched(
        (READ_OFF, read_task(off_client, ids.clone())),
        (sides.labels().0, read_task(on_client, ids)),
        concurrency,
        duration,
        ROUNDS,
        &[off_pid, on_pid],
    )
    .await;
    let metrics = if sides.audited() {
        scrape(status_port).await?
    } else {
        String::new()
    };
    // The writer gathers records for a moment before it writes them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit_lines = std::fs::read_to_string(&audit_log)
        .map(|log| log.lines().count())
        .unwrap_or(0);
    off.kill().await.ok();
    on.kill().await.ok();
    if sides.audited()
        && (audit_lines < turns.second.ops || !metrics.contains("interaction=\"read\""))
    {
        return Err(format!(
            "the server with audit log and metrics on logged {audit_lines} of {} reads, or its metrics had none",
            turns.second.ops
        )
        .into());
    }
    let ops = [turns.first.ops, turns.second.ops];
    let [client, off_cpu, on_cpu] = turns.cpu[..] else {
        return Err("the CPU of three processes was not counted".into());
    };
    Ok(ObservedReport {
        concurrency,
        server_cpu: [
            micros_per_op(off_cpu.0, ops[0]),
            micros_per_op(on_cpu.1, ops[1]),
        ],
        client_cpu: [
            micros_per_op(client.0, ops[0]),
            micros_per_op(client.1, ops[1]),
        ],
        idle_cpu: [
            micros_per_op(on_cpu.0, ops[0]),
            micros_per_op(off_cpu.1, ops[1]),
        ],
        measurements: [turns.first, turns.second],
        audit_lines,
        sides,
    })
}

/// The status port's `/metrics`, over plain HTTP/1.0.
async fn scrape(port: u16) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
