//! The hostile load run of `dsf-bench`: an allowed organisation's read latency with and
//! without a flood of idle connections and allow-listed clients sending hostile requests, and
//! the memory one oversized request costs. Everything on loopback against an in-process
//! server; the flood comes from other loopback addresses, as it would from other hosts.

use crate::measure::{closed_loop, Measurement};
use crate::server::{bench_task, BenchServer};
use bytes::Bytes;
use dsf_fhir::FhirClient;
use http::Method;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;

/// How the hostile run loads.
pub struct HostileSettings {
    /// Closed-loop workers of the allowed organisation.
    pub concurrency: usize,
    /// How long each scenario runs.
    pub duration: Duration,
    /// Idle connections kept open by the flood.
    pub idle_connections: usize,
    /// Allow-listed clients sending hostile requests back to back.
    pub hostile_clients: usize,
}

/// What the hostile run measured.
pub struct HostileReport {
    /// Reads by id with no flood.
    pub quiet: Measurement,
    /// The same reads during the flood.
    pub flooded: Measurement,
    /// The settings it ran with.
    pub settings: HostileSettings,
    /// Hostile requests answered, and how many of them with a 4xx.
    pub hostile_answered: usize,
    /// See `hostile_answered`.
    pub hostile_refused: usize,
    /// Idle connections open at the end of the flood, as the flood counted them.
    pub idle_open: usize,
    /// Memory of oversized and deeply nested requests, one kind each.
    pub memory: Vec<MemoryProbe>,
}

/// Peak resident memory above the idle level while requests of one kind were handled.
pub struct MemoryProbe {
    /// The kind of request.
    pub what: String,
    /// Its body's size.
    pub body_bytes: usize,
    /// The status the server answered.
    pub status: u16,
    /// Peak resident KiB above idle while the requests were handled.
    pub peak_kib: u64,
    /// Resident memory above the idle level once the burst has been quiet for a while.
    pub after_kib: u64,
}

impl HostileReport {
    /// The report as Markdown tables and ratios.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let mut out = format!(
            "Hostile load (SQLite): {} allowed clients reading a Task for {:.0} s, then the same with {} idle connections held open (half plain TCP, half TLS with a certificate on no allow list, reopened when closed) and {} clients of an allow-listed remote organisation sending hostile requests back to back.\n\n| scenario | reads | reads/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|\n",
            s.concurrency,
            s.duration.as_secs_f64(),
            s.idle_connections,
            s.hostile_clients
        );
        for m in [&self.quiet, &self.flooded] {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} |\n",
                m.name, m.ops, m.per_second, m.p50_ms, m.p99_ms
            ));
        }
        out.push_str(&format!(
            "\n| ratio | value | target |\n|---|---:|---:|\n| p99 flooded / quiet | {:.2} | ≤ 2 |\n| reads/s flooded / quiet | {:.2} | – |\n\nHostile requests answered: {} ({} refused with 4xx); idle connections open at the end: {}.\n",
            self.flooded.p99_ms / self.quiet.p99_ms.max(f64::EPSILON),
            self.flooded.per_second / self.quiet.per_second.max(f64::EPSILON),
            self.hostile_answered,
            self.hostile_refused,
            self.idle_open,
        ));
        out.push_str(&format!("\n| memory probe | body | status | peak resident above idle | peak / body | resident above idle {} s later |\n|---|---:|---:|---:|---:|---:|\n", SETTLE.as_secs()));
        for p in &self.memory {
            out.push_str(&format!(
                "| {} | {:.1} MiB | {} | {:.1} MiB | {:.1} | {:.1} MiB |\n",
                p.what,
                p.body_bytes as f64 / 1048576.0,
                p.status,
                p.peak_kib as f64 / 1024.0,
                (p.peak_kib * 1024) as f64 / p.body_bytes.max(1) as f64,
                p.after_kib as f64 / 1024.0
            ));
        }
        out
    }
}

/// A Task with `inputs` inputs: a large body of many small values.
pub fn task_with_inputs(inputs: usize) -> Vec<u8> {
    let mut body =
        String::from(r#"{"resourceType":"Task","status":"requested","intent":"order","input":["#);
    for i in 0..inputs {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"type":{"text":"x"},"valueString":"y"}"#);
    }
    body.push_str("]}");
    body.into_bytes()
}

fn deep_xml(levels: usize) -> Vec<u8> {
    let mut xml = String::from("<Task xmlns=\"http://hl7.org/fhir\">");
    xml.push_str(&"<extension url=\"http://x\">".repeat(levels));
    xml.push_str(&"</extension>".repeat(levels));
    xml.push_str("<status value=\"draft\"/><intent value=\"order\"/></Task>");
    xml.into_bytes()
}

/// The requests a hostile allow-listed peer sends: each one refused before it costs much.
/// A request of the hostile mix: method, path with query, and content type with body.
type HostileRequest = (Method, String, Option<(&'static str, Bytes)>);

fn hostile_requests() -> Vec<HostileRequest> {
    let repeated = |n: usize| {
        (0..n)
            .map(|i| format!("identifier=x{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    vec![
        (
            Method::POST,
            "Task".into(),
            Some(("application/fhir+xml", deep_xml(700).into())),
        ),
        (
            Method::POST,
            "Task".into(),
            Some(("application/fhir+json", task_with_inputs(60_000).into())),
        ),
        (Method::GET, format!("Task?{}", repeated(1_000)), None),
        (Method::GET, format!("Task?{}", repeated(25)), None),
        (Method::GET, "Task?_page=99999999999".into(), None),
        (
            Method::POST,
            "Task".into(),
            Some((
                "application/fhir+json",
                Bytes::from_static(b"{\"resourceType\":"),
            )),
        ),
    ]
}

fn vm_kib(field: &str) -> u64 {
    dsf_bin::proc_status_kib("self", field).unwrap_or(0)
}

/// How long a memory probe waits after its burst before it reads what is still resident.
const SETTLE: Duration = Duration::from_secs(5);

/// Peak resident memory above the current level while `parallel` copies of one request run,
/// and what is still resident [`SETTLE`] later.
async fn memory_probe(
    client: &FhirClient,
    what: &str,
    body: Vec<u8>,
    parallel: usize,
) -> MemoryProbe {
    // Resets the peak (VmHWM) to the current resident size.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = vm_kib("VmRSS:");
    let body = Bytes::from(body);
    let body_bytes = body.len();
    let sends = (0..parallel).map(|_| {
        let client = client.clone();
        let body = body.clone();
        async move {
            client
                .request(
                    Method::POST,
                    "Task",
                    &[("content-type", "application/fhir+json")],
                    Some(body),
                )
                .await
                .map(|r| r.status.as_u16())
                .unwrap_or(0)
        }
    });
    let statuses = spawn_all(sends).await;
    let peak = vm_kib("VmHWM:");
    tokio::time::sleep(SETTLE).await;
    let after = vm_kib("VmRSS:");
    MemoryProbe {
        what: format!("{what} ×{parallel}"),
        body_bytes,
        status: statuses.first().copied().unwrap_or(0),
        peak_kib: peak.saturating_sub(before),
        after_kib: after.saturating_sub(before),
    }
}

/// Runs the futures as tasks at once and collects their answers in order.
async fn spawn_all<F: std::future::Future<Output = u16> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<u16> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or(0));
    }
    out
}

async fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// Reads from `stream` until the server closes it or the flood stops.
async fn hold(stream: &mut (impl AsyncRead + Unpin), stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            _ => {}
        }
    }
}

/// Holds one idle connection open from `source`, reopening it whenever the server closes it,
/// until `stop`. With `tls`, completes a handshake first (with a certificate on no allow list).
async fn idle_connection(
    source: IpAddr,
    target: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let Ok(name) = ServerName::try_from("localhost") else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut tcp) = connect_from(source, target).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        open.fetch_add(1, Ordering::Relaxed);
        match &tls {
            None => hold(&mut tcp, &stop).await,
            Some(connector) => {
                if let Ok(mut stream) = connector.connect(name.clone(), tcp).await {
                    hold(&mut stream, &stop).await;
                }
            }
        }
        open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends hostile requests back to back until `stop`; returns (answered, refused with 4xx).
async fn hostile_client(
    client: FhirClient,
    stop: Arc<AtomicBool>,
    offset: usize,
) -> (usize, usize) {
    let requests = hostile_requests();
    let (mut answered, mut refused) = (0, 0);
    let mut i = offset;
    while !stop.load(Ordering::Relaxed) {
        let (method, path, body) = &requests[i % requests.len()];
        i += 1;
        let mut headers = vec![("accept", "application/fhir+json")];
        if let Some((content_type, _)) = body {
            headers.push(("content-type", content_type));
        }
        let sent = client
            .request(
                method.clone(),
                path,
                &headers,
                body.as_ref().map(|(_, b)| b.clone()),
            )
            .await;
        if let Ok(r) = sent {
            answered += 1;
            refused += usize::from(r.status.is_client_error());
        }
    }
    (answered, refused)
}

/// Runs the quiet and flooded reads and the memory probes.
pub async fn run(
    settings: HostileSettings,
) -> Result<HostileReport, Box<dyn std::error::Error + Send + Sync>> {
    let server = BenchServer::start(None, settings.concurrency).await?;
    let client = server.client()?;
    let target: SocketAddr = format!(
        "127.0.0.1:{}",
        server
            .base_url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .unwrap_or_default()
    )
    .parse()?;

    let mut memory = Vec::new();
    for (what, inputs) in [
        ("Task with 380,000 inputs", 380_000),
        ("Task with 30,000 inputs", 30_000),
    ] {
        for parallel in [1, 4] {
            memory.push(memory_probe(&client, what, task_with_inputs(inputs), parallel).await);
        }
    }

    let task = client.create(&bench_task("hostile-read")).await?;
    let path = format!("Task/{}", task["id"].as_str().unwrap_or_default());
    let reads = |name: &'static str| {
        let client = client.clone();
        let path = path.clone();
        closed_loop(name, settings.concurrency, settings.duration, move |_| {
            let client = client.clone();
            let path = path.clone();
            async move {
                client
                    .json(Method::GET, &path, None)
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
    };
    let quiet = reads("read Task, quiet").await;

    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let stranger = tokio_rustls::TlsConnector::from(server.stranger_tls()?);
    // Forty addresses, each within its allowance of new connections, so that the flood
    // reaches its full size (the server refuses faster reconnects from one address).
    let sources: Vec<IpAddr> = (2..=41).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let mut flood = Vec::new();
    for i in 0..settings.idle_connections {
        let tls = (i % 2 == 1).then(|| stranger.clone());
        flood.push(tokio::spawn(idle_connection(
            sources[i % sources.len()],
            target,
            tls,
            open.clone(),
            stop.clone(),
        )));
    }
    let peer = server.peer_client()?;
    let hostile: Vec<_> = (0..settings.hostile_clients)
        .map(|i| tokio::spawn(hostile_client(peer.clone(), stop.clone(), i)))
        .collect();
    // Let the flood reach its size before measuring.
    let filling = std::time::Instant::now();
    while open.load(Ordering::Relaxed) < settings.idle_connections * 95 / 100
        && filling.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flooded = reads("read Task, flooded").await;
    let idle_open = open.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let (mut hostile_answered, mut hostile_refused) = (0, 0);
    for h in hostile {
        let (a, r) = h.await.unwrap_or_default();
        hostile_answered += a;
        hostile_refused += r;
    }
    for f in flood {
        let _ = f.await;
    }
    server.stop().await;
    Ok(HostileReport {
        quiet,
        flooded,
        settings,
        hostile_answered,
        hostile_refused,
        idle_open,
        memory,
    })
}
