//! Load runs of the BPE: request/reply round trips between two organisations (ping and pong),
//! with the ping-pong plugin linked in and as a plugin file in turns, against a plain client
//! doing the same FHIR writes; the added cost of one handler call into a plugin file, a plugin
//! file's start and memory; a 10-service-task chain against raw inserts of its state rows; and
//! the BPE's start-up time and idle memory.

use crate::measure::{summarise as measurement, Measurement};
use dsf_bin::{start_fhir_server, FhirServerSettings};
use dsf_bpmn::engine::{Engine, Registry, SystemClock};
use dsf_core::{DevPki, IssuedCert};
use dsf_engine::{Bpe, BpeConfig, StateStore};
use dsf_fhir::server::AllowListEntry;
use dsf_fhir::{FhirClient, ServerConfig};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the BPE run loads.
pub struct BpeLoadSettings {
    /// Closed-loop clients starting pings.
    pub concurrency: usize,
    /// How long each scenario runs.
    pub duration: Duration,
}

/// What the BPE run measured.
pub struct BpeLoadReport {
    /// Round trips with ping-pong linked into both BPEs.
    pub round_trips: Measurement,
    /// The same, with ping-pong a plugin file of both BPEs (measured in turns with the above).
    pub round_trips_files: Measurement,
    /// The same FHIR writes as a round trip, by a plain client (the baseline).
    pub plain_writes: Measurement,
    /// One service-task call of hello-world linked in, and into its plugin file.
    pub call_linked: Measurement,
    /// See `call_linked`.
    pub call_file: Measurement,
    /// One byte to `cat` and back over its pipes, with the same async I/O: the floor of any
    /// call into another process on this machine.
    pub pipe_round_trip: Measurement,
    /// `Bpe::start` (median of the slices) with ping-pong linked in and as a file.
    pub start_linked: Duration,
    /// See `start_linked`.
    pub start_file: Duration,
    /// From starting a plugin file to its definition read (median of 5).
    pub spawn_to_definition: Duration,
    /// Resident memory of plugin processes: (file, KiB).
    pub plugin_rss_kib: Vec<(String, u64)>,
    /// The 10-service-task chain, its state saved at the end.
    pub chain: Measurement,
    /// The same, its state saved after every step.
    pub chain_every_step: Measurement,
    /// Inserts of the chain's state row (the baseline).
    pub raw_state_inserts: Measurement,
    /// `dsf-bpe`'s start-up time and idle resident KiB, when the binary is built.
    pub startup: Option<(Duration, u64)>,
}

impl BpeLoadReport {
    /// The report as Markdown tables and ratios.
    pub fn markdown(&self) -> String {
        let row = |m: &Measurement| {
            format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} |\n",
                m.name, m.ops, m.per_second, m.p50_ms, m.p99_ms
            )
        };
        let mut out = String::from(
            "| BPE scenario | ops | per second | p50 ms | p99 ms |\n|---|---|---|---|---|\n",
        );
        for m in [
            &self.round_trips,
            &self.round_trips_files,
            &self.plain_writes,
            &self.call_linked,
            &self.call_file,
            &self.pipe_round_trip,
            &self.chain,
            &self.chain_every_step,
            &self.raw_state_inserts,
        ] {
            out.push_str(&row(m));
        }
        out.push_str(&format!(
            "\nround trips / plain-client write sets: {:.2} (aim ≥ 0.5)\n",
            self.round_trips.per_second / self.plain_writes.per_second.max(f64::EPSILON)
        ));
        out.push_str(&format!(
            "round trips with ping-pong as plugin files / linked in: {:.2} (aim ≥ 0.8)\n",
            self.round_trips_files.per_second / self.round_trips.per_second.max(f64::EPSILON)
        ));
        out.push_str(&format!(
            "one handler call's added cost as a plugin file (p50 file − p50 linked): {:.0} µs (aim < 100 µs); a bare pipe round trip to another process: {:.0} µs\n",
            (self.call_file.p50_ms - self.call_linked.p50_ms) * 1000.0,
            self.pipe_round_trip.p50_ms * 1000.0
        ));
        out.push_str(&format!(
            "plugin file start to definition: {:.0} ms; BPE start with ping-pong as a file {:.0} ms, linked in {:.0} ms (aim: start to deployed < 200 ms)\n",
            self.spawn_to_definition.as_secs_f64() * 1000.0,
            self.start_file.as_secs_f64() * 1000.0,
            self.start_linked.as_secs_f64() * 1000.0
        ));
        for (file, rss) in &self.plugin_rss_kib {
            out.push_str(&format!(
                "resident memory of the plugin process {file}: {:.1} MiB\n",
                *rss as f64 / 1024.0
            ));
        }
        out.push_str(&format!(
            "10-task chain instances / raw state-row inserts: {:.2}; saved after every step: {:.2}\n",
            self.chain.per_second / self.raw_state_inserts.per_second.max(f64::EPSILON),
            self.chain_every_step.per_second / self.raw_state_inserts.per_second.max(f64::EPSILON)
        ));
        match &self.startup {
            Some((startup, rss)) => out.push_str(&format!(
                "dsf-bpe: start-up to both subscriptions bound {:.0} ms; resident memory when idle {:.1} MiB\n",
                startup.as_secs_f64() * 1000.0,
                *rss as f64 / 1024.0
            )),
            None => out.push_str("dsf-bpe start-up and memory: skipped (no dsf-bpe binary next to dsf-bench; build it with `cargo build --release -p dsf-bin`)\n"),
        }
        out
    }
}

pub(crate) struct Organization {
    pub(crate) identifier: String,
    pub(crate) base_url: String,
    client_cert: IssuedCert,
    pub(crate) tls: Arc<dsf_core::rustls::ClientConfig>,
}

/// A loopback port nobody listens on now.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Two organisations allowing each other, FHIR servers on SQLite files in `dir`, or on
/// PostgreSQL (`postgres`: the URL and a schema prefix) in a schema each.
pub(crate) async fn two_organizations(
    pki: &DevPki,
    dir: &Path,
    stop: &tokio::sync::watch::Receiver<bool>,
    postgres: Option<(&str, &str)>,
) -> Result<Vec<Organization>, BoxError> {
    let server_cert = pki.issue_server("localhost")?;
    let mut orgs = Vec::new();
    for name in ["bench-a.test", "bench-b.test"] {
        let client_cert = pki.issue_client(name)?;
        orgs.push(Organization {
            identifier: name.to_owned(),
            base_url: format!("https://localhost:{}/fhir", free_port()?),
            tls: Arc::new(pki.client_config(&client_cert)?),
            client_cert,
        });
    }
    for (i, org) in orgs.iter().enumerate() {
        let other = &orgs[1 - i];
        let mut stop = stop.clone();
        let port: u16 = org
            .base_url
            .trim_end_matches("/fhir")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or("port")?;
        start_fhir_server(
            FhirServerSettings {
                config: ServerConfig::new(&org.base_url, &org.identifier),
                db_url: match postgres {
                    Some((url, _)) => url.to_owned(),
                    None => format!(
                        "sqlite:{}",
                        dir.join(format!("{}.sqlite", org.identifier)).display()
                    ),
                },
                postgres_schema: postgres.map(|(_, prefix)| {
                    format!("{prefix}_{}", org.identifier.replace(['.', '-'], "_"))
                }),
                bind: ([127, 0, 0, 1], port).into(),
                tls: Some(pki.server_config(&server_cert)?),
                local_thumbprints: vec![org.client_cert.thumbprint()],
                peers: vec![AllowListEntry {
                    identifier: other.identifier.clone(),
                    name: other.identifier.clone(),
                    thumbprints: vec![other.client_cert.thumbprint()],
                    base_url: other.base_url.clone(),
                }],
                organization_name: org.identifier.clone(),
                init_bundle: None,
                status: None,
            },
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
        .await?;
    }
    Ok(orgs)
}

fn organization(identifier: &str) -> Value {
    json!({"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": identifier}})
}

fn input(system: &str, code: &str, value: Value) -> Value {
    let mut p = json!({"type": {"coding": [{"system": system, "code": code}]}});
    p["valueString"] = value;
    p
}

const BPMN_MESSAGE: &str = "http://dsf.dev/fhir/CodeSystem/bpmn-message";

/// A Task as the BPE writes it: `process|1.0`, `profile|1.0`, message, keys.
pub(crate) fn task(
    from: &str,
    to: &str,
    process: &str,
    profile: &str,
    message: &str,
    keys: &[(&str, &str)],
) -> Value {
    let mut inputs = vec![input(BPMN_MESSAGE, "message-name", json!(message))];
    for (code, value) in keys {
        inputs.push(input(BPMN_MESSAGE, code, json!(value)));
    }
    json!({
        "resourceType": "Task",
        "meta": {"profile": [format!("http://dsf.dev/fhir/StructureDefinition/{profile}|1.0")]},
        "instantiatesCanonical": format!("http://dsf.dev/bpe/Process/{process}|1.0"),
        "status": "requested",
        "intent": "order",
        "authoredOn": "2026-11-28T10:00:00.000Z",
        "requester": organization(from),
        "restriction": {"recipient": [organization(to)]},
        "input": inputs,
    })
}

async fn set_status(client: &FhirClient, task: &mut Value, status: &str) -> bool {
    task["status"] = json!(status);
    match client.update(&*task).await {
        Ok(updated) => {
            *task = updated;
            true
        }
        Err(_) => false,
    }
}

/// The clients a round trip uses: each organisation's own, and each one's client of the
/// other's server.
pub(crate) struct Clients {
    pub(crate) a: FhirClient,
    b: FhirClient,
    a_at_b: FhirClient,
    b_at_a: FhirClient,
}

impl Clients {
    pub(crate) fn new(orgs: &[Organization]) -> Result<Self, BoxError> {
        Ok(Clients {
            a: FhirClient::new(&orgs[0].base_url, orgs[0].tls.clone())?,
            b: FhirClient::new(&orgs[1].base_url, orgs[1].tls.clone())?,
            a_at_b: FhirClient::new(&orgs[1].base_url, orgs[0].tls.clone())?,
            b_at_a: FhirClient::new(&orgs[0].base_url, orgs[1].tls.clone())?,
        })
    }
}

/// The FHIR writes one ping/pong round trip makes, by a plain client: start Task created,
/// claimed, ping created at B, claimed, pong created at A, ping completed, pong claimed and
/// completed, start Task completed (9 writes).
async fn plain_round_trip(clients: &Clients, a: &str, b: &str) -> bool {
    let key = uuid::Uuid::new_v4().to_string();
    let correlation = uuid::Uuid::new_v4().to_string();
    let keys = [
        ("business-key", key.as_str()),
        ("correlation-key", correlation.as_str()),
    ];
    let Ok(mut start) = clients
        .a
        .create(&task(a, a, "ping", "task-start-ping", "startPing", &[]))
        .await
    else {
        return false;
    };
    if let Some(inputs) = start["input"].as_array_mut() {
        inputs.push(input(BPMN_MESSAGE, "business-key", json!(key)));
    }
    if !set_status(&clients.a, &mut start, "in-progress").await {
        return false;
    }
    let mut ping = task(a, b, "pong", "task-ping", "ping", &keys);
    if let Some(inputs) = ping["input"].as_array_mut() {
        inputs.push(json!({"type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/ping", "code": "endpoint-identifier"}]},
            "valueReference": {"type": "Endpoint", "identifier": {"system": "http://dsf.dev/sid/endpoint-identifier", "value": "bench"}}}));
    }
    let Ok(mut ping) = clients.a_at_b.create(&ping).await else {
        return false;
    };
    if !set_status(&clients.b, &mut ping, "in-progress").await {
        return false;
    }
    let Ok(mut pong) = clients
        .b_at_a
        .create(&task(b, a, "ping", "task-pong", "pong", &keys))
        .await
    else {
        return false;
    };
    set_status(&clients.b, &mut ping, "completed").await
        && set_status(&clients.a, &mut pong, "in-progress").await
        && set_status(&clients.a, &mut pong, "completed").await
        && set_status(&clients.a, &mut start, "completed").await
}

/// Completed Tasks of organisation A as they happen, by id, for round-trip timing.
pub(crate) type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

pub(crate) async fn watch_completions(client: FhirClient) -> Result<Waiters, BoxError> {
    let subscription = client
        .create(&json!({
            "resourceType": "Subscription",
            "meta": {"tag": [{"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": "LOCAL"}]},
            "status": "active",
            "reason": "bench: completed Tasks",
            "criteria": "Task?status=completed",
            "channel": {"type": "websocket", "payload": "application/fhir+json"},
        }))
        .await?;
    let id = subscription["id"].as_str().ok_or("no id")?.to_owned();
    let mut stream = client
        .subscribe(
            &id,
            Some(dsf_fhir::date::unix_millis_now()),
            dsf_fhir::client::SubscriptionSettings::default(),
        )
        .await?;
    stream.wait_for(|s| s.connected).await;
    let waiters: Waiters = Arc::default();
    let shared = waiters.clone();
    tokio::spawn(async move {
        while let Some(n) = stream.next().await {
            let waiter = shared.lock().ok().and_then(|mut w| w.remove(&n.id));
            if let Some(waiter) = waiter {
                let _ = waiter.send(());
            }
        }
    });
    Ok(waiters)
}

/// Runs `op` from `concurrency` workers for `duration`; latencies of the successes.
async fn closed_loop<F, Fut>(
    concurrency: usize,
    duration: Duration,
    op: F,
) -> (Vec<Duration>, Duration)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let failures = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, failures) = (op.clone(), failures.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while start.elapsed() < duration {
                    let t = Instant::now();
                    if op().await {
                        latencies.push(t.elapsed());
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap_or_default());
    }
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        tracing::warn!(failed, "operations failed in the load run");
    }
    (all, start.elapsed())
}

/// Where a BPE of the bench gets ping-pong from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PingPong {
    Linked,
    File,
}

fn bpe_config(org: &Organization, plugins: PingPong, directory: &Path) -> BpeConfig {
    let mut config = BpeConfig::new(&org.base_url, org.tls.clone());
    if plugins == PingPong::File {
        config.plugin_directory = Some(directory.to_path_buf());
    }
    config
}

/// One slice of round trips: both BPEs started (timed) with ping-pong from `plugins`, pings
/// from A in a closed loop for `duration`, then the BPEs stopped.
struct Slice {
    latencies: Vec<Duration>,
    elapsed: Duration,
    starts: Vec<Duration>,
    plugin_rss_kib: Vec<(String, u64)>,
}

async fn round_trip_slice(
    orgs: &[Organization],
    plugins: PingPong,
    directory: &Path,
    waiters: &Waiters,
    clients: &Arc<Clients>,
    settings: &BpeLoadSettings,
    duration: Duration,
) -> Result<Slice, BoxError> {
    let linked = || match plugins {
        PingPong::Linked => vec![dsf_plugin_ping_pong::plugin()],
        PingPong::File => Vec::new(),
    };
    let mut starts = Vec::new();
    let mut bpes = Vec::new();
    for org in &orgs[..2] {
        let started = Instant::now();
        let bpe = Bpe::start(bpe_config(org, plugins, directory), linked()).await?;
        starts.push(started.elapsed());
        bpes.push(bpe);
    }
    for bpe in &bpes {
        bpe.wait_connected().await;
    }
    let a = orgs[0].identifier.clone();
    let (latencies, elapsed) = {
        let (clients, waiters, a) = (clients.clone(), waiters.clone(), a.clone());
        closed_loop(settings.concurrency, duration, move || {
            let (clients, waiters, a) = (clients.clone(), waiters.clone(), a.clone());
            async move {
                let (tx, rx) = oneshot::channel();
                let Ok(created) = clients
                    .a
                    .create(&task(&a, &a, "ping", "task-start-ping", "startPing", &[]))
                    .await
                else {
                    return false;
                };
                let Some(id) = created["id"].as_str() else {
                    return false;
                };
                if let Ok(mut w) = waiters.lock() {
                    w.insert(id.to_owned(), tx);
                }
                tokio::time::timeout(Duration::from_secs(60), rx)
                    .await
                    .is_ok()
            }
        })
        .await
    };
    let plugin_rss_kib = bpes
        .iter()
        .zip(orgs)
        .flat_map(|(bpe, org)| bpe.plugin_files().into_iter().map(move |f| (org, f)))
        .filter_map(|(org, f)| {
            let name = f.file.file_name()?.to_string_lossy().into_owned();
            let rss = dsf_bin::proc_status_kib(&f.pid?.to_string(), "VmRSS:")?;
            Some((
                format!("{name} of {} (after its round trips)", org.identifier),
                rss,
            ))
        })
        .collect();
    Ok(Slice {
        latencies,
        elapsed,
        starts,
        plugin_rss_kib,
    })
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// `calls` sequential calls of hello-world's service task, linked in and in its plugin file,
/// with the same start Task and the same (unused) FHIR client; and the file's start time.
async fn handler_calls(
    pki: &DevPki,
    file: &Path,
    calls: usize,
) -> Result<(Measurement, Measurement, Duration, u64), BoxError> {
    use dsf_plugin_api::{EndpointInfo, Handler, ProcessApi, Variables};
    let tls = Arc::new(pki.client_config(&pki.issue_client("bench.test")?)?);
    let endpoint = EndpointInfo {
        identifier: "bench.test".into(),
        address: "https://localhost:1/fhir".into(),
        organization: Some("bench.test".into()),
    };
    let api = ProcessApi::new(
        FhirClient::new(&endpoint.address, tls)?,
        Arc::new(pki.client_config(&pki.issue_client("bench-api.test")?)?),
        "bench.test",
        endpoint.clone(),
    );
    let hello = dsf_plugin_api::protocol::Hello {
        protocol: dsf_plugin_api::protocol::PROTOCOL_VERSION,
        organization: "bench.test".into(),
        endpoint: endpoint.clone(),
        fhir_base_url: endpoint.address.clone(),
    };
    let mut spawns = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (running, _) = dsf_engine::PluginFile::start(
            file,
            hello.clone(),
            dsf_engine::PluginFileSettings::default(),
        )
        .await?;
        spawns.push(started.elapsed());
        drop(running);
    }
    let (running, from_file) =
        dsf_engine::PluginFile::start(file, hello, dsf_engine::PluginFileSettings::default())
            .await?;
    let linked = dsf_plugin_hello_world::plugin();
    let service_task = |plugin: &dsf_plugin_api::PluginDefinition| {
        plugin.handlers().iter().find_map(|(name, h)| match h {
            Handler::ServiceTask(h) if name == "org.example.Greet" => Some(h.clone()),
            _ => None,
        })
    };
    let start_task = task(
        "bench.test",
        "bench.test",
        "helloWorld",
        "task-hello-world",
        "helloWorld",
        &[("business-key", "bk")],
    );
    let mut results = Vec::new();
    for (name, plugin) in [
        ("hello-world service task call, linked in", &linked),
        ("the same call into its plugin file", &from_file),
    ] {
        let handler = service_task(plugin).ok_or("no Greet handler")?;
        let mut latencies = Vec::with_capacity(calls);
        let started = Instant::now();
        for _ in 0..calls {
            let mut scope = serde_json::Map::new();
            let mut start = start_task.clone();
            start["id"] = json!("bench");
            scope.insert(dsf_plugin_api::constants::START_TASK.into(), start);
            let fields = serde_json::Map::new();
            let t = Instant::now();
            let mut vars = Variables::new(&mut scope, Some("bk"), "instance", "Greet", &fields);
            handler.execute(&api, &mut vars).await?;
            latencies.push(t.elapsed());
        }
        results.push(measurement(name, latencies, started.elapsed()));
    }
    let rss = running
        .pid()
        .and_then(|pid| dsf_bin::proc_status_kib(&pid.to_string(), "VmRSS:"))
        .unwrap_or(0);
    let file_call = results.pop().ok_or("missing")?;
    let linked_call = results.pop().ok_or("missing")?;
    Ok((linked_call, file_call, median(spawns), rss))
}

/// `count` one-byte round trips through `cat`'s standard input and output.
async fn pipe_round_trips(count: usize) -> Result<Measurement, BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cat = tokio::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let (mut input, mut output) = (
        cat.stdin.take().ok_or("no stdin")?,
        cat.stdout.take().ok_or("no stdout")?,
    );
    let mut latencies = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    let started = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        input.write_all(b"x").await?;
        output.read_exact(&mut byte).await?;
        latencies.push(t.elapsed());
    }
    Ok(measurement(
        "one byte to cat and back (baseline)",
        latencies,
        started.elapsed(),
    ))
}

/// Round trips through both BPEs with ping-pong linked in and as plugin files, and what
/// each BPE start took with each.
struct RoundTrips {
    linked: Measurement,
    files: Measurement,
    start_linked: Duration,
    start_file: Duration,
    plugin_rss_kib: Vec<(String, u64)>,
}

/// Runs the round trips in four slices, linked in and as plugin files in turns, so that the
/// machine's drift falls on both.
async fn round_trips_in_turns(
    orgs: &[Organization],
    plugin_dir: &Path,
    waiters: &Waiters,
    clients: &Arc<Clients>,
    settings: &BpeLoadSettings,
) -> Result<RoundTrips, BoxError> {
    let slice = settings.duration / 2;
    let mut linked = (Vec::new(), Duration::ZERO, Vec::new());
    let mut files = (Vec::new(), Duration::ZERO, Vec::new());
    let mut plugin_rss_kib = Vec::new();
    for plugins in [
        PingPong::Linked,
        PingPong::File,
        PingPong::Linked,
        PingPong::File,
    ] {
        eprintln!(
            "BPE round trips, ping-pong {}",
            if plugins == PingPong::File {
                "as plugin files"
            } else {
                "linked in"
            }
        );
        let run =
            round_trip_slice(orgs, plugins, plugin_dir, waiters, clients, settings, slice).await?;
        let totals = if plugins == PingPong::File {
            &mut files
        } else {
            &mut linked
        };
        totals.0.extend(run.latencies);
        totals.1 += run.elapsed;
        totals.2.extend(run.starts);
        if !run.plugin_rss_kib.is_empty() {
            plugin_rss_kib = run.plugin_rss_kib;
        }
    }
    let round_trips = measurement(
        "ping/pong round trip through two BPEs, ping-pong linked in",
        linked.0,
        linked.1,
    );
    let round_trips_files = measurement(
        "the same, ping-pong a plugin file of both BPEs",
        files.0,
        files.1,
    );

    Ok(RoundTrips {
        linked: round_trips,
        files: round_trips_files,
        start_linked: median(linked.2),
        start_file: median(files.2),
        plugin_rss_kib,
    })
}

/// Runs every BPE scenario.
pub async fn run(settings: BpeLoadSettings) -> Result<BpeLoadReport, BoxError> {
    let dir = std::env::temp_dir().join(format!("dsf-bpe-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let pki = DevPki::generate("dsf-rs BPE bench CA")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let orgs = two_organizations(&pki, &dir, &stop_rx, None).await?;
    let reference = dsf_bin::reference_plugin_files()?;
    let plugin_dir = dir.join("process");
    let ping_pong_file: Vec<PathBuf> = reference
        .iter()
        .filter(|f| f.ends_with("dsf-process-ping-pong"))
        .cloned()
        .collect();
    dsf_bin::plugin_directory(&plugin_dir, &ping_pong_file)?;

    let clients = Arc::new(Clients::new(&orgs)?);
    let waiters = watch_completions(clients.a.clone()).await?;
    let RoundTrips {
        linked: round_trips,
        files: round_trips_files,
        start_linked,
        start_file,
        mut plugin_rss_kib,
    } = round_trips_in_turns(&orgs, &plugin_dir, &waiters, &clients, &settings).await?;

    // The same writes by a plain client (no BPE listening).
    let a = orgs[0].identifier.clone();
    let (latencies, elapsed) = {
        let (clients, a, b) = (clients.clone(), a.clone(), orgs[1].identifier.clone());
        closed_loop(settings.concurrency, settings.duration, move || {
            let (clients, a, b) = (clients.clone(), a.clone(), b.clone());
            async move { plain_round_trip(&clients, &a, &b).await }
        })
        .await
    };
    let plain_writes = measurement(
        "the same 9 FHIR writes by a plain client",
        latencies,
        elapsed,
    );
    let _ = stop_tx.send(true);

    eprintln!("handler calls linked in and into a plugin file");
    let hello_world = reference
        .iter()
        .find(|f| f.ends_with("dsf-process-hello-world"))
        .ok_or("no hello-world plugin file")?;
    // On a task of the runtime, as the BPE calls handlers (the bench's own main task runs on
    // a thread of its own, and every wake-up of it would cross threads).
    let hello_world = hello_world.clone();
    let (call_linked, call_file, spawn_to_definition, hello_rss, pipe_round_trip) =
        tokio::spawn(async move {
            let pki =
                DevPki::generate("dsf-rs handler call bench CA").map_err(|e| e.to_string())?;
            let (linked, file, spawn, rss) = handler_calls(&pki, &hello_world, 5_000)
                .await
                .map_err(|e| e.to_string())?;
            let pipe = pipe_round_trips(5_000).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((linked, file, spawn, rss, pipe))
        })
        .await??;
    plugin_rss_kib.push(("dsf-process-hello-world (idle)".into(), hello_rss));

    let (chain, chain_every_step, raw_state_inserts) = chain_runs(&dir, settings.duration).await?;
    let startup = match std::env::current_exe()?.with_file_name("dsf-bpe") {
        binary if binary.exists() => {
            Some(bpe_startup_and_memory(&binary, &pki, &dir, &plugin_dir).await?)
        }
        _ => None,
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BpeLoadReport {
        round_trips,
        round_trips_files,
        plain_writes,
        call_linked,
        call_file,
        pipe_round_trip,
        start_linked,
        start_file,
        spawn_to_definition,
        plugin_rss_kib,
        chain,
        chain_every_step,
        raw_state_inserts,
        startup,
    })
}

fn chain_bpmn() -> String {
    let mut body = String::from(
        r#"<bpmn:startEvent id="s"><bpmn:messageEventDefinition messageRef="m"/></bpmn:startEvent>"#,
    );
    let mut previous = "s".to_owned();
    for i in 0..10 {
        body.push_str(&format!(r#"<bpmn:sequenceFlow id="f{i}" sourceRef="{previous}" targetRef="t{i}"/><bpmn:serviceTask id="t{i}" camunda:class="bench.Step"/>"#));
        previous = format!("t{i}");
    }
    body.push_str(&format!(r#"<bpmn:sequenceFlow id="fe" sourceRef="{previous}" targetRef="e"/><bpmn:endEvent id="e"/>"#));
    format!(
        r#"<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn"><bpmn:process id="bench_chain" isExecutable="true">{body}</bpmn:process><bpmn:message id="m" name="go"/></bpmn:definitions>"#
    )
}

/// Instances of a 10-service-task chain per second (each handler sets a variable), the state
/// saved at the end, and saved after every step; against raw inserts of the final state rows.
async fn chain_runs(
    dir: &Path,
    duration: Duration,
) -> Result<(Measurement, Measurement, Measurement), BoxError> {
    let definitions = dsf_bpmn::parse(chain_bpmn().as_bytes(), "chain.bpmn")?;
    let mut registry = Registry::new();
    registry.bind_fn("bench.Step", |ctx| {
        let n = ctx.variable("n").and_then(Value::as_i64).unwrap_or(0);
        ctx.set("n", json!(n + 1));
        Ok(())
    });
    let engine = Arc::new(Engine::deploy(
        definitions,
        registry,
        Arc::new(SystemClock),
    )?);
    let mut results = Vec::new();
    let mut sample_row = String::new();
    for (name, every_step) in [
        ("10-service-task chain, state saved at the end", false),
        ("10-service-task chain, state saved after every step", true),
    ] {
        let state = StateStore::open(&dir.join(format!("chain-{every_step}.sqlite"))).await?;
        let mut latencies = Vec::new();
        let start = Instant::now();
        while start.elapsed() < duration {
            let t = Instant::now();
            let key = uuid::Uuid::new_v4().to_string();
            let lease = state.acquire(&key).await?.ok_or("key leased")?;
            let mut instance = engine
                .correlate(&mut [], "go", Some(&key), None, Map::new())?
                .ok_or("no instance")?;
            loop {
                let step = engine.step(&mut instance).await?;
                if every_step {
                    state
                        .save(&lease, "bench_chain|1.0", &instance, None, false)
                        .await?;
                }
                if step != dsf_bpmn::engine::Step::Progressed {
                    break;
                }
            }
            if !every_step {
                state
                    .save(&lease, "bench_chain|1.0", &instance, None, false)
                    .await?;
            }
            latencies.push(t.elapsed());
            if sample_row.is_empty() {
                sample_row = serde_json::to_string(&instance)?;
            }
        }
        results.push(measurement(name, latencies, start.elapsed()));
    }
    let raw = raw_state_inserts(&dir.join("raw-state.sqlite"), &sample_row, duration).await?;
    let every = results.pop().ok_or("missing")?;
    let end = results.pop().ok_or("missing")?;
    Ok((end, every, raw))
}

/// One committed insert per row of the instance's JSON, with the state store's pragmas, on
/// the blocking pool as the state store does: the ceiling for saving instances.
async fn raw_state_inserts(
    path: &Path,
    row: &str,
    duration: Duration,
) -> Result<Measurement, BoxError> {
    let (path, row) = (path.to_path_buf(), row.to_owned());
    let connection = Arc::new(Mutex::new(rusqlite::Connection::open(&path)?));
    {
        let c = connection.lock().map_err(|_| "lock")?;
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE raw(id TEXT PRIMARY KEY, data TEXT NOT NULL);",
        )?;
    }
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let (c, row) = (connection.clone(), row.clone());
        tokio::task::spawn_blocking(move || -> rusqlite::Result<()> {
            let c = c.lock().map_err(|_| rusqlite::Error::InvalidQuery)?;
            c.execute(
                "INSERT INTO raw(id, data) VALUES (?1, ?2)",
                rusqlite::params![uuid::Uuid::new_v4().to_string(), row],
            )?;
            Ok(())
        })
        .await??;
        latencies.push(t.elapsed());
    }
    Ok(measurement(
        "raw insert of the same state row (baseline)",
        latencies,
        start.elapsed(),
    ))
}

/// Starts the dsf-bpe binary with the ping-pong plugin file against an in-process FHIR
/// server: time until it logs that it runs with both subscriptions bound, and its resident
/// memory 2 s later (the plugin's process not counted).
async fn bpe_startup_and_memory(
    binary: &Path,
    pki: &DevPki,
    dir: &Path,
    plugins: &Path,
) -> Result<(Duration, u64), BoxError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let files: PathBuf = dir.join("startup");
    std::fs::create_dir_all(&files)?;
    let orgs = two_organizations(pki, &files, &stop_rx, None).await?;
    let org = &orgs[0];
    org.client_cert.write(&files, "client")?;
    pki.write_ca(&files)?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env("DEV_DSF_BPE_FHIR_SERVER_BASE_URL", &org.base_url)
        .env(
            "DEV_DSF_BPE_FHIR_CLIENT_CERTIFICATE",
            files.join("client.crt"),
        )
        .env(
            "DEV_DSF_BPE_FHIR_CLIENT_CERTIFICATE_PRIVATE_KEY",
            files.join("client.key"),
        )
        .env(
            "DEV_DSF_BPE_FHIR_CLIENT_TRUST_SERVER_CERTIFICATE_CAS",
            files.join("ca.crt"),
        )
        .env(
            "DEV_DSF_BPE_DB_URL",
            format!("sqlite:{}", files.join("bpe.sqlite").display()),
        )
        .env("DEV_DSF_BPE_PROCESS_PLUGIN_DIRECTORY", plugins)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let startup = loop {
        match tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await {
            Ok(Ok(Some(line))) if line.contains("BPE running") => break started.elapsed(),
            Ok(Ok(Some(_))) => continue,
            _ => return Err("dsf-bpe did not report running within 30 s".into()),
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().ok_or("dsf-bpe exited")?;
    let rss_kib = dsf_bin::proc_status_kib(&pid.to_string(), "VmRSS:").ok_or("no VmRSS")?;
    child.kill().await.ok();
    let _ = stop_tx.send(true);
    Ok((startup, rss_kib))
}
