//! `dsf-bench --stored N`: whether cost stays flat as a site's store fills. Create and read
//! rates and the BPE's searches are measured on an empty store, then again after loading `N`
//! Tasks (nearly all completed, as on a site that has run for years), in the same run.

use crate::load::{create_tasks, read_tasks};
use crate::measure::summarise_latencies;
use crate::server::BenchServer;
use dsf_fhir::store::{format_instant, WriteOp, WriteOutcome};
use dsf_fhir::FhirClient;
use http::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the stored-scale run loads.
pub struct StoredSettings {
    /// Tasks loaded before the second measurement.
    pub stored: usize,
    /// Closed-loop clients.
    pub concurrency: usize,
    /// How long each scenario runs.
    pub duration: Duration,
    /// PostgreSQL URL; SQLite (a file in a temporary directory) when absent.
    pub postgres: Option<String>,
}

/// Tasks loaded per transaction, and transactions in flight at once.
const BATCH: usize = 1_000;
const LOADERS: usize = 4;
/// Of the loaded Tasks, one in this many is `requested`; the rest are `completed`.
const REQUESTED_EVERY: usize = 100_000;
/// Tasks created after the catch-up instant, which `_lastUpdated=gt…` must find.
const RECENT: usize = 10;
const SEARCH_REPEATS: usize = 100;

/// A Task as a long-running site holds them: a finished ping from another organisation.
fn stored_task(n: usize, status: &str) -> Value {
    json!({
        "resourceType": "Task",
        "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/task-ping|1.0"]},
        "identifier": [{"system": "http://dsf.dev/sid/task-identifier", "value": format!("stored-{n}")}],
        "instantiatesCanonical": "http://dsf.dev/bpe/Process/pong|1.0",
        "status": status,
        "intent": "order",
        "authoredOn": "2025-06-01T10:00:00+02:00",
        "requester": {"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "peer.test"}},
        "restriction": {"recipient": [{"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "bench.test"}}]},
        "input": [
            {"type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "message-name"}]}, "valueString": "ping"},
            {"type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "business-key"}]}, "valueString": format!("bk-{n}")}
        ]
    })
}

/// What one state of the store measured.
pub struct StoreState {
    /// Creates per second.
    pub create: f64,
    /// Reads by id per second.
    pub read: f64,
    /// p50 and p99 in ms of the newest 20 requested Tasks as JSON.
    pub list_json: (f64, f64),
    /// The same as a browser page.
    pub list_page: (f64, f64),
    /// p50 and p99 in ms of `Task?status=requested`, first page with total.
    pub requested: (f64, f64),
    /// p50 and p99 in ms of `Task?_lastUpdated=gt…&_sort=_lastUpdated`, first page with total.
    pub catch_up: (f64, f64),
}

/// What the stored-scale run measured.
pub struct StoredReport {
    /// The backend's description.
    pub backend: &'static str,
    /// Tasks loaded.
    pub stored: usize,
    /// How long loading them took.
    pub load_seconds: f64,
    /// On the empty store.
    pub empty: StoreState,
    /// After loading.
    pub full: StoreState,
}

impl StoredReport {
    /// The report as a Markdown table and ratios.
    pub fn markdown(&self) -> String {
        let (e, f) = (&self.empty, &self.full);
        let mut out = format!(
            "Backend {}: {} Tasks loaded through the store (transactions of {BATCH}, {LOADERS} at a time, one in {REQUESTED_EVERY} `requested`, the rest `completed`) in {:.0} s ({:.0} Tasks/s).\n\n",
            self.backend,
            self.stored,
            self.load_seconds,
            self.stored as f64 / self.load_seconds.max(0.001)
        );
        out.push_str("| scenario | empty store | loaded store | loaded / empty | target |\n|---|---:|---:|---:|---|\n");
        out.push_str(&format!(
            "| create Task (POST), ops/s | {:.0} | {:.0} | {:.2} | ≥ 0.8 |\n",
            e.create,
            f.create,
            f.create / e.create
        ));
        out.push_str(&format!(
            "| read Task by id (GET), ops/s | {:.0} | {:.0} | {:.2} | ≥ 0.8 |\n",
            e.read,
            f.read,
            f.read / e.read
        ));
        out.push_str(&format!(
            "| `Task?status=requested` first page + total, p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | – | < 20 ms |\n",
            e.requested.0, e.requested.1, f.requested.0, f.requested.1
        ));
        out.push_str(&format!(
            "| `Task?_lastUpdated=gt…&_sort=_lastUpdated` first page + total, p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | – | < 20 ms |\n",
            e.catch_up.0, e.catch_up.1, f.catch_up.0, f.catch_up.1
        ));
        out.push_str(&format!(
            "| 20 newest requested Tasks as JSON, p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | – | – |\n| the same as a browser page, p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | page / JSON p50 {:.2} | < 5 ms |\n",
            e.list_json.0, e.list_json.1, f.list_json.0, f.list_json.1,
            e.list_page.0, e.list_page.1, f.list_page.0, f.list_page.1,
            f.list_page.0 / f.list_json.0
        ));
        out
    }
}

/// Runs `path` `SEARCH_REPEATS` times as JSON, one after the other; each answer must report
/// `total`.
async fn search_latency(
    client: &FhirClient,
    path: &str,
    total: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error + Send + Sync>> {
    answer_latency(
        client,
        path,
        "application/fhir+json",
        &format!("\"total\":{total},"),
    )
    .await
}

/// Runs `path` `SEARCH_REPEATS` times as a browser page; each must say `total` were found.
async fn page_latency(
    client: &FhirClient,
    path: &str,
    total: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error + Send + Sync>> {
    answer_latency(client, path, "text/html", &format!("{total} found")).await
}

/// Runs `path` `SEARCH_REPEATS` times with `accept`; each answer must contain `expected`.
async fn answer_latency(
    client: &FhirClient,
    path: &str,
    accept: &str,
    expected: &str,
) -> Result<(f64, f64), Box<dyn std::error::Error + Send + Sync>> {
    let mut latencies = Vec::with_capacity(SEARCH_REPEATS);
    for _ in 0..SEARCH_REPEATS {
        let started = Instant::now();
        let r = client
            .request(Method::GET, path, &[("accept", accept)], None)
            .await?;
        latencies.push(started.elapsed());
        let body = String::from_utf8_lossy(&r.body);
        if r.status != 200 || !body.contains(expected) {
            return Err(format!(
                "{path}: expected '{expected}', got {} {body:.300}",
                r.status
            )
            .into());
        }
    }
    latencies.sort();
    Ok(summarise_latencies(&latencies))
}

/// Creates `RECENT` requested Tasks after an instant and returns the instant.
async fn recent_tasks(server: &BenchServer, first: usize) -> Result<String, dsf_fhir::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let since = format_instant(now);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let ops = (0..RECENT)
        .map(|i| WriteOp::Create {
            resource: stored_task(first + i, "requested"),
            if_none_exist: None,
            full_url: None,
        })
        .collect();
    server.store.transaction(ops).await?;
    Ok(since)
}

async fn measure(
    server: &BenchServer,
    client: &Arc<FhirClient>,
    settings: &StoredSettings,
    requested: usize,
    read_ids: Arc<Vec<String>>,
    tag: usize,
) -> Result<StoreState, Box<dyn std::error::Error + Send + Sync>> {
    // Searches first: the creates below would add to what `_lastUpdated=gt…` finds.
    let since = recent_tasks(server, tag).await?.replace('+', "%2B");
    // A browser's Task list: the same 20 Tasks as JSON and as a page.
    let list = "Task?status=requested&_sort=-_lastUpdated&_count=20";
    let list_json = search_latency(client, list, requested + RECENT).await?;
    let list_page = page_latency(client, list, requested + RECENT).await?;
    let requested = search_latency(
        client,
        "Task?status=requested&_count=20",
        requested + RECENT,
    )
    .await?;
    let catch_up = search_latency(
        client,
        &format!("Task?_lastUpdated=gt{since}&_sort=_lastUpdated&_count=20"),
        RECENT,
    )
    .await?;
    let (c, d) = (settings.concurrency, settings.duration);
    let (create, created) = create_tasks(client.clone(), &format!("m{tag}"), c, d).await;
    let read_ids = if read_ids.is_empty() {
        Arc::new(created.into_iter().map(|(_, id)| id).collect())
    } else {
        read_ids
    };
    let read = read_tasks(client.clone(), read_ids, c, d).await;
    Ok(StoreState {
        create: create.per_second,
        read: read.per_second,
        list_json,
        list_page,
        requested,
        catch_up,
    })
}

/// Loads `count` Tasks through the store; returns every hundredth id (to read) and how many
/// are `requested`.
async fn load(
    server: &BenchServer,
    count: usize,
) -> Result<(Vec<String>, usize), Box<dyn std::error::Error + Send + Sync>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut loaders = Vec::new();
    for _ in 0..LOADERS {
        let (store, next) = (server.store.clone(), next.clone());
        loaders.push(tokio::spawn(async move {
            let mut sample = Vec::new();
            let mut requested = 0;
            loop {
                let start = next.fetch_add(BATCH, std::sync::atomic::Ordering::Relaxed);
                if start >= count {
                    return Ok::<_, dsf_fhir::Error>((sample, requested));
                }
                let ops = (start..(start + BATCH).min(count))
                    .map(|n| {
                        let status = if n % REQUESTED_EVERY == REQUESTED_EVERY / 2 {
                            requested += 1;
                            "requested"
                        } else {
                            "completed"
                        };
                        WriteOp::Create {
                            resource: stored_task(n, status),
                            if_none_exist: None,
                            full_url: None,
                        }
                    })
                    .collect();
                for outcome in store.transaction(ops).await?.into_iter().step_by(100) {
                    if let WriteOutcome::Created(stored) = outcome {
                        sample.push(stored.id);
                    }
                }
            }
        }));
    }
    let mut sample = Vec::new();
    let mut requested = 0;
    for loader in loaders {
        let (ids, n) = loader.await??;
        sample.extend(ids);
        requested += n;
    }
    Ok((sample, requested))
}

/// Runs on the empty store, loads, and runs again.
pub async fn run(
    settings: StoredSettings,
) -> Result<StoredReport, Box<dyn std::error::Error + Send + Sync>> {
    let server = BenchServer::start(settings.postgres.as_deref(), settings.concurrency).await?;
    let client = Arc::new(server.client()?);
    // Warm-up, not measured: connections, prepared statements, caches.
    let (_, created) = create_tasks(
        client.clone(),
        "warm-up",
        settings.concurrency,
        Duration::from_secs(1),
    )
    .await;
    let created = Arc::new(created.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
    if !created.is_empty() {
        read_tasks(
            client.clone(),
            created,
            settings.concurrency,
            Duration::from_secs(1),
        )
        .await;
    }
    let empty = measure(&server, &client, &settings, 0, Arc::new(Vec::new()), 0).await?;
    let started = Instant::now();
    let (ids, requested) = load(&server, settings.stored).await?;
    let load_seconds = started.elapsed().as_secs_f64();
    // The first state added RECENT requested Tasks of its own.
    let full = measure(
        &server,
        &client,
        &settings,
        requested + RECENT,
        Arc::new(ids),
        settings.stored + RECENT,
    )
    .await?;
    let backend = server.backend_name;
    server.stop().await;
    Ok(StoredReport {
        backend,
        stored: settings.stored,
        load_seconds,
        empty,
        full,
    })
}
