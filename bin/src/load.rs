//! A loopback load generator for `dsf bench`: closed-loop clients over mutual TLS against an
//! in-process FHIR server, and the baselines the figures are reported against, all measured in
//! the same run on the same machine.

use bytes::Bytes;
use dsf_core::{DevPki, IssuedCert};
use dsf_fhir::server::AllowListEntry;
use dsf_fhir::{FhirClient, FhirServer, ResourceStore, ServerConfig};
use http::Method;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Throughput and latency of one scenario.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub name: String,
    pub ops: usize,
    pub per_second: f64,
    pub p50_ms: f64,
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
    (first_name, first): (&str, F),
    (second_name, second): (&str, G),
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
    eprintln!(
        "running: {first_name} and {second_name} in turns, {rounds} × {} s each",
        duration.as_secs_f64() / f64::from(rounds)
    );
    let slice = duration / rounds.max(1);
    let (first, second) = (Arc::new(first), Arc::new(second));
    let (first_counter, second_counter) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (mut first_latencies, mut second_latencies) = (Vec::new(), Vec::new());
    let (mut first_elapsed, mut second_elapsed) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        first_latencies.extend(workers(first.clone(), &first_counter, concurrency, slice).await);
        first_elapsed += t.elapsed();
        let t = Instant::now();
        second_latencies.extend(workers(second.clone(), &second_counter, concurrency, slice).await);
        second_elapsed += t.elapsed();
    }
    (
        summarise(first_name, first_latencies, first_elapsed),
        summarise(second_name, second_latencies, second_elapsed),
    )
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

/// A draft start message of the local organisation: the Task the local BPE keeps and updates
/// most, and one that carries a searchable identifier.
pub fn bench_task(identifier: &str) -> Value {
    json!({
        "resourceType": "Task",
        "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0"]},
        "identifier": [{"system": "http://dsf.dev/sid/task-identifier", "value": identifier}],
        "instantiatesCanonical": "http://dsf.dev/bpe/Process/ping|1.0",
        "status": "draft",
        "intent": "order",
        "authoredOn": "2026-11-25T10:00:00+01:00",
        "requester": {"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "bench.test"}},
        "restriction": {"recipient": [{"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "bench.test"}}]},
        "input": [
            {"type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "message-name"}]}, "valueString": "startPing"}
        ]
    })
}

/// A hyper + rustls server with the FHIR server's accept loop shape that answers every
/// request with a fixed small JSON body: the ceiling for anything served over this transport.
async fn trivial_server(listener: TcpListener, tls: Arc<dsf_core::rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    let body = Bytes::from_static(
        br#"{"resourceType":"Task","id":"x","status":"requested","intent":"order"}"#,
    );
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |_req| {
                let body = body.clone();
                async move {
                    let mut response = http::Response::new(Full::new(body));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/fhir+json"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Inserts of the JSON rows our store writes, one committed transaction each, with the same
/// pragmas, into the same SQLite file: the ceiling for any create on that database.
fn raw_sqlite_inserts(db: &Path, rows: &[String], duration: Duration) -> Measurement {
    let conn = rusqlite::Connection::open(db).expect("open database");
    conn.busy_timeout(Duration::from_secs(10)).ok();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS raw_baseline (id TEXT PRIMARY KEY, body TEXT NOT NULL);",
    )
    .expect("baseline table");
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < duration {
        let t = Instant::now();
        let row = &rows[i % rows.len()];
        conn.execute_batch("BEGIN").ok();
        conn.execute(
            "INSERT INTO raw_baseline (id, body) VALUES (?1, ?2)",
            rusqlite::params![uuid::Uuid::new_v4().to_string(), row],
        )
        .expect("raw insert");
        conn.execute_batch("COMMIT").ok();
        latencies.push(t.elapsed());
        i += 1;
    }
    summarise("raw SQLite insert (baseline)", latencies, start.elapsed())
}

/// The same for PostgreSQL, with as many connections as the load has clients.
async fn raw_postgres_inserts(
    url: &str,
    schema: &str,
    rows: Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> Measurement {
    let (setup, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    setup
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".raw_baseline (id TEXT PRIMARY KEY, body TEXT NOT NULL)"
        ))
        .await
        .expect("baseline table");
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let stmt = client
            .prepare(&format!(
                "INSERT INTO \"{schema}\".raw_baseline (id, body) VALUES ($1, $2)"
            ))
            .await
            .expect("prepare");
        clients.push((client, stmt));
    }
    let clients = Arc::new(clients);
    let next = Arc::new(AtomicUsize::new(0));
    closed_loop(
        "raw PostgreSQL insert (baseline)",
        concurrency,
        duration,
        move |i| {
            let clients = clients.clone();
            let rows = rows.clone();
            let slot = next.fetch_add(1, Ordering::Relaxed) % clients.len();
            async move {
                let (client, stmt) = &clients[slot];
                let id = uuid::Uuid::new_v4().to_string();
                client
                    .execute(stmt, &[&id, &rows[i % rows.len()]])
                    .await
                    .is_ok()
            }
        },
    )
    .await
}

/// Reads of the stored rows of `ids` by type and id (no access check, so a little less than
/// the server asks of the database) from `concurrency` callers sharing one pipelined
/// connection: the database's own ceiling for reads by id on this machine.
async fn raw_postgres_point_selects(
    url: &str,
    schema: &str,
    ids: Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> Result<Measurement, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let stmt = client
        .prepare(&format!(
            "SELECT res_type, res_id, version, last_updated, deleted, body FROM \"{schema}\".resources \
             WHERE res_type = 'Task' AND res_id = $1 AND current = 1"
        ))
        .await?;
    let shared = Arc::new((client, stmt));
    Ok(closed_loop(POINT_SELECT, concurrency, duration, move |i| {
        let (shared, ids) = (shared.clone(), ids.clone());
        async move {
            let (client, stmt) = &*shared;
            let id = &ids[(i * 7919) % ids.len()];
            matches!(client.query(stmt, &[id]).await, Ok(rows) if rows.len() == 1)
        }
    })
    .await)
}

const POINT_SELECT: &str = "point select of a Task's row, one pipelined connection (baseline)";

/// Creates draft Tasks (POST) from `concurrency` clients for `duration`; the measurement and
/// the (request number, id) of every Task created.
pub async fn create_tasks(
    client: Arc<FhirClient>,
    concurrency: usize,
    duration: Duration,
) -> (Measurement, Vec<(usize, String)>) {
    let created_ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ids = created_ids.clone();
    let measurement = closed_loop("create Task (POST)", concurrency, duration, move |i| {
        let (cl, ids) = (client.clone(), ids.clone());
        async move {
            let body =
                Bytes::from(serde_json::to_vec(&bench_task(&format!("t-{i}"))).unwrap_or_default());
            match cl
                .request(
                    Method::POST,
                    "Task",
                    &[
                        ("content-type", "application/fhir+json"),
                        ("accept", "application/fhir+json"),
                    ],
                    Some(body),
                )
                .await
            {
                Ok(r) if r.status == 201 => {
                    if let Some(id) = r.header("location").and_then(|l| l.split('/').rev().nth(2)) {
                        ids.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((i, id.to_owned()));
                    }
                    true
                }
                _ => false,
            }
        }
    })
    .await;
    let ids = std::mem::take(&mut *created_ids.lock().unwrap_or_else(|p| p.into_inner()));
    (measurement, ids)
}

/// Reads Tasks by id (GET), spread over `ids`, from `concurrency` clients for `duration`.
pub async fn read_tasks(
    client: Arc<FhirClient>,
    ids: Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> Measurement {
    closed_loop(READ_TASK, concurrency, duration, read_task(client, ids)).await
}

/// How many turns reads and the trivial handler take in the load run.
const READ_ROUNDS: u32 = 4;

const READ_TASK: &str = "read Task by id (GET)";

/// One read by id (GET) of a Task among `ids`, picked by the operation's number.
fn read_task(
    client: Arc<FhirClient>,
    ids: Arc<Vec<String>>,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
       + Send
       + Sync
       + 'static {
    move |i| {
        let (cl, known) = (client.clone(), ids.clone());
        Box::pin(async move {
            let id = &known[(i * 7919) % known.len()];
            matches!(cl.request(Method::GET, &format!("Task/{id}"), &[("accept", "application/fhir+json")], None).await, Ok(r) if r.status == 200)
        })
    }
}

/// One search index row: `param, system, value, norm, low, high`.
type IndexRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// The rows the store keeps for one stored Task: its resource row, its search index rows and
/// its read-access rows, as read back from the database.
struct StoredRows {
    resource_type: String,
    last_updated: i64,
    body: String,
    index: Vec<IndexRow>,
    grants: Vec<String>,
}

async fn stored_rows(
    client: &tokio_postgres::Client,
    schema: &str,
    id: &str,
) -> Result<StoredRows, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!("SELECT res_type, last_updated, body, seq FROM \"{schema}\".resources WHERE res_id = $1 AND current = 1"),
            &[&id],
        )
        .await?;
    let seq: i64 = row.get(3);
    let index = client
        .query(
            &format!("SELECT param, system, value, norm, low, high FROM \"{schema}\".search_values WHERE res_id = $1"),
            &[&id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    let grants = client
        .query(
            &format!("SELECT access FROM \"{schema}\".read_access WHERE seq = $1"),
            &[&seq],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(StoredRows {
        resource_type: row.get(0),
        last_updated: row.get(1),
        body: row.get(2),
        index,
        grants,
    })
}

/// The ceiling for a create on PostgreSQL: the rows the store writes for one Task (resource,
/// index and read-access rows), in one transaction per resource, sent as one pipeline (one
/// round trip), from as many connections as the load has clients, into the same tables.
async fn same_rows_postgres_inserts(
    url: &str,
    schema: &str,
    sample_id: &str,
    concurrency: usize,
    duration: Duration,
) -> Result<Measurement, Box<dyn std::error::Error + Send + Sync>> {
    let (setup, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let rows = Arc::new(stored_rows(&setup, schema, sample_id).await?);
    // $1 the id, $2 the type, then six per index row.
    let values: Vec<String> = (0..rows.index.len())
        .map(|i| {
            let n = 3 + i * 6;
            format!(
                "($1, $2, ${n}, ${}, ${}, ${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3,
                n + 4,
                n + 5
            )
        })
        .collect();
    let values = values.join(", ");
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let resource = client
            .prepare(&format!(
                "INSERT INTO \"{schema}\".resources (res_type, res_id, version, last_updated, deleted, current, body) VALUES ($1, $2, 1, $3, 0, 1, $4)"
            ))
            .await?;
        let index = client
            .prepare(&format!(
                "INSERT INTO \"{schema}\".search_values (res_id, res_type, param, system, value, norm, low, high) VALUES {values}"
            ))
            .await
            .ok();
        let grants = client
            .prepare(&format!(
                "INSERT INTO \"{schema}\".read_access (seq, res_type, access) SELECT currval(pg_get_serial_sequence('\"{schema}\".resources', 'seq')), $1, unnest($2::text[])"
            ))
            .await?;
        clients.push((client, resource, index, grants));
    }
    let clients = Arc::new(clients);
    let next = Arc::new(AtomicUsize::new(0));
    Ok(closed_loop(
        "same rows into PostgreSQL, one round trip (baseline)",
        concurrency,
        duration,
        move |_| {
            let (clients, rows) = (clients.clone(), rows.clone());
            let slot = next.fetch_add(1, Ordering::Relaxed) % clients.len();
            async move {
                let (client, resource, index, grants) = &clients[slot];
                let id = uuid::Uuid::new_v4().to_string();
                let mut index_params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    vec![&id, &rows.resource_type];
                for (param, system, value, norm, low, high) in &rows.index {
                    index_params.extend_from_slice(&[
                        param as &(dyn tokio_postgres::types::ToSql + Sync),
                        system,
                        value,
                        norm,
                        low,
                        high,
                    ]);
                }
                let begin = client.batch_execute("BEGIN");
                let resource_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                    [&rows.resource_type, &id, &rows.last_updated, &rows.body];
                let grant_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                    [&rows.resource_type, &rows.grants];
                let resource = client.execute(resource, &resource_params);
                let index = async {
                    match index {
                        Some(index) => client.execute(index, &index_params).await,
                        None => Ok(0),
                    }
                };
                let grants = client.execute(grants, &grant_params);
                let commit = client.batch_execute("COMMIT");
                let (begin, resource, index, grants, commit) =
                    futures_util::future::join5(begin, resource, index, grants, commit).await;
                begin.is_ok()
                    && resource.is_ok()
                    && index.is_ok()
                    && grants.is_ok()
                    && commit.is_ok()
            }
        },
    )
    .await)
}

pub struct LoadSettings {
    pub concurrency: usize,
    pub duration: Duration,
    /// PostgreSQL URL; SQLite (a file in a temporary directory) when absent.
    pub postgres: Option<String>,
}

pub struct LoadReport {
    pub backend: &'static str,
    pub concurrency: usize,
    pub seconds: f64,
    pub measurements: Vec<Measurement>,
}

impl LoadReport {
    fn rate(&self, prefix: &str) -> f64 {
        self.measurements
            .iter()
            .find(|m| m.name.starts_with(prefix))
            .map_or(0.0, |m| m.per_second)
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Backend {}, {} concurrent clients, {:.0} s per scenario.\n\n| scenario | ops | ops/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|\n",
            self.backend, self.concurrency, self.seconds
        );
        for m in &self.measurements {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} |\n",
                m.name, m.ops, m.per_second, m.p50_ms, m.p99_ms
            ));
        }
        let raw = self.rate("raw ");
        let trivial = self.rate("trivial");
        out.push_str("\n| ratio | value | target |\n|---|---:|---:|\n");
        let same_rows = self.rate("same rows");
        if same_rows > 0.0 {
            out.push_str(&format!(
                "| create Task / same rows in one round trip | {:.2} | ≥ 0.5 |\n",
                self.rate("create") / same_rows
            ));
        }
        out.push_str(&format!(
            "| create Task / raw two-column insert | {:.2} | {} |\n| read Task / trivial handler | {:.2} | ≥ 0.5 |\n| token search / trivial handler | {:.2} | – |\n",
            self.rate("create") / raw,
            if same_rows > 0.0 { "–" } else { "≥ 0.5" },
            self.rate("read") / trivial,
            self.rate("search") / trivial,
        ));
        let point = self.rate("point select");
        if point > 0.0 {
            // A read can cost no less than the transport plus the database's own lookup.
            let floor = 1.0 / (1.0 / trivial + 1.0 / point);
            out.push_str(&format!(
                "| read Task / (trivial handler + point select) | {:.2} | – |\n",
                self.rate("read") / floor
            ));
        }
        out
    }
}

struct Certs {
    pki: DevPki,
    server: IssuedCert,
    local: IssuedCert,
    /// A remote organisation on the allow list.
    peer: IssuedCert,
}

fn certs() -> Result<Certs, dsf_core::Error> {
    let pki = DevPki::generate("dsf-rs bench CA")?;
    Ok(Certs {
        server: pki.issue_server("localhost")?,
        local: pki.issue_client("bench-bpe")?,
        peer: pki.issue_client("bench-peer")?,
        pki,
    })
}

/// An in-process FHIR server of one organisation on a loopback port, its database in a
/// temporary directory (SQLite) or a schema of its own (PostgreSQL).
pub struct BenchServer {
    pub base_url: String,
    /// The server's store, for loading data past the REST API.
    pub store: ResourceStore,
    pub backend_name: &'static str,
    pub schema: String,
    pub db: std::path::PathBuf,
    dir: std::path::PathBuf,
    postgres: Option<String>,
    certs: Certs,
    tls: Arc<dsf_core::rustls::ServerConfig>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BenchServer {
    /// `postgres`: a PostgreSQL URL, used with a pool as large as `concurrency` (at least 4);
    /// SQLite when absent.
    pub async fn start(
        postgres: Option<&str>,
        concurrency: usize,
    ) -> Result<BenchServer, Box<dyn std::error::Error + Send + Sync>> {
        let certs = certs()?;
        let tls = Arc::new(certs.pki.server_config(&certs.server)?);
        let dir = std::env::temp_dir().join(format!("dsf-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let db = dir.join("fhir.sqlite");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("https://localhost:{}/fhir", listener.local_addr()?.port());
        let schema = format!("dsf_bench_{}", uuid::Uuid::new_v4().simple());
        let (store, backend_name) = match postgres {
            Some(url) => {
                let backend = dsf_fhir::store::PostgresBackend::connect(
                    url,
                    Some(&schema),
                    concurrency.max(4),
                )
                .await?;
                (
                    ResourceStore::new(Arc::new(backend), &base_url),
                    "PostgreSQL",
                )
            }
            None => (
                ResourceStore::open(&format!("sqlite:{}", db.display()), &base_url).await?,
                "SQLite (file, WAL, synchronous=FULL)",
            ),
        };
        let server = FhirServer::new(store.clone(), ServerConfig::new(&base_url, "bench.test"));
        server
            .load_allow_list(&[
                AllowListEntry {
                    identifier: "bench.test".into(),
                    name: "Bench".into(),
                    thumbprints: vec![certs.local.thumbprint()],
                    base_url: base_url.clone(),
                },
                AllowListEntry {
                    identifier: "peer.test".into(),
                    name: "Bench peer".into(),
                    thumbprints: vec![certs.peer.thumbprint()],
                    base_url: "https://peer.test/fhir".into(),
                },
            ])
            .await?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(Arc::new(server).serve(listener, tls.clone(), async {
            let _ = stop_rx.await;
        }));
        Ok(BenchServer {
            base_url,
            store,
            backend_name,
            schema,
            db,
            dir,
            postgres: postgres.map(str::to_owned),
            certs,
            tls,
            stop: Some(stop),
        })
    }

    /// A client holding the local organisation's certificate.
    pub fn client(&self) -> Result<FhirClient, Box<dyn std::error::Error + Send + Sync>> {
        Ok(FhirClient::new(&self.base_url, self.client_tls()?)?)
    }

    fn client_tls(
        &self,
    ) -> Result<Arc<dsf_core::rustls::ClientConfig>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Arc::new(self.certs.pki.client_config(&self.certs.local)?))
    }

    /// A client holding the certificate of a remote organisation on the allow list.
    pub fn peer_client(&self) -> Result<FhirClient, Box<dyn std::error::Error + Send + Sync>> {
        let tls = self.certs.pki.client_config(&self.certs.peer)?;
        Ok(FhirClient::new(&self.base_url, Arc::new(tls))?)
    }

    /// Client TLS with a certificate from the server's CA that is on no allow list.
    pub fn stranger_tls(
        &self,
    ) -> Result<Arc<dsf_core::rustls::ClientConfig>, Box<dyn std::error::Error + Send + Sync>> {
        let stranger = self.certs.pki.issue_client("stranger")?;
        Ok(Arc::new(self.certs.pki.client_config(&stranger)?))
    }

    /// Stops serving and removes the SQLite directory, or the PostgreSQL schema.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(url) = &self.postgres {
            match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
                    if let Err(e) = client.batch_execute(&drop).await {
                        eprintln!("could not drop bench schema {}: {e}", self.schema);
                    }
                }
                Err(e) => eprintln!("could not drop bench schema {}: {e}", self.schema),
            }
        }
    }
}

pub async fn run(
    settings: LoadSettings,
) -> Result<LoadReport, Box<dyn std::error::Error + Send + Sync>> {
    let server = BenchServer::start(settings.postgres.as_deref(), settings.concurrency).await?;
    let (schema, db, backend_name) = (
        server.schema.clone(),
        server.db.clone(),
        server.backend_name,
    );
    let client_tls = server.client_tls()?;
    let tls = server.tls.clone();
    let base_url = server.base_url.clone();
    let trivial_listener = TcpListener::bind("127.0.0.1:0").await?;
    let trivial_url = format!(
        "https://localhost:{}/fhir",
        trivial_listener.local_addr()?.port()
    );
    let trivial_task = tokio::spawn(trivial_server(trivial_listener, tls));

    let client = Arc::new(FhirClient::new(&base_url, client_tls.clone())?);
    let trivial_client = Arc::new(FhirClient::new(&trivial_url, client_tls)?);
    let (c, d) = (settings.concurrency, settings.duration);
    let mut measurements = Vec::new();

    // The rows the raw baseline inserts are exactly what the store keeps for such a Task.
    let sample = client.create(&bench_task("sample")).await?;
    let rows: Vec<String> = (0..64)
        .map(|i| {
            let mut t = sample.clone();
            t["identifier"][0]["value"] = json!(format!("raw-{i}"));
            t["id"] = json!(uuid::Uuid::new_v4().to_string());
            serde_json::to_string(&t).unwrap_or_default()
        })
        .collect();
    if let Some(url) = &settings.postgres {
        let sample_id = sample["id"].as_str().unwrap_or_default();
        measurements.push(same_rows_postgres_inserts(url, &schema, sample_id, c, d).await?);
    }
    measurements.push(match &settings.postgres {
        Some(url) => raw_postgres_inserts(url, &schema, Arc::new(rows), c, d).await,
        None => {
            let db = db.clone();
            tokio::task::spawn_blocking(move || raw_sqlite_inserts(&db, &rows, d)).await?
        }
    });

    let (created, ids) = create_tasks(client.clone(), c, d).await;
    measurements.push(created);
    let ids = Arc::new(ids);
    if ids.is_empty() {
        return Err("no Task was created".into());
    }
    let known = Arc::new(ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>());
    if let Some(url) = &settings.postgres {
        measurements.push(raw_postgres_point_selects(url, &schema, known.clone(), c, d).await?);
    }
    // Reads and the trivial handler take turns: their ratio is a target of its own.
    let tc = trivial_client.clone();
    let (read, trivial) = alternating(
        (READ_TASK, read_task(client.clone(), known)),
        ("trivial hyper+rustls handler (baseline)", move |_| {
            let tc = tc.clone();
            async move { matches!(tc.request(Method::GET, "Task/x", &[], None).await, Ok(r) if r.status == 200) }
        }),
        c,
        d,
        READ_ROUNDS,
    )
    .await;
    measurements.push(read);
    let (cl, known) = (client.clone(), ids.clone());
    measurements.push(
        closed_loop(
            "search Task?identifier=… (token, 1 hit)",
            c,
            d,
            move |i| {
                let (cl, known) = (cl.clone(), known.clone());
                async move {
                    let n = known[(i * 7919) % known.len()].0;
                    let path =
                        format!("Task?identifier=http://dsf.dev/sid/task-identifier%7Ct-{n}");
                    match cl
                        .request(
                            Method::GET,
                            &path,
                            &[("accept", "application/fhir+json")],
                            None,
                        )
                        .await
                    {
                        Ok(r) if r.status == 200 => {
                            r.body.windows(10).any(|w| w == b"\"total\":1,")
                        }
                        _ => false,
                    }
                }
            },
        )
        .await,
    );
    measurements.push(trivial);
    server.stop().await;
    trivial_task.abort();
    Ok(LoadReport {
        backend: backend_name,
        concurrency: c,
        seconds: d.as_secs_f64(),
        measurements,
    })
}

/// Start-up time to the first served request, and resident memory once idle, of the
/// `dsf-fhir-server` binary at `binary` on a fresh SQLite database.
pub async fn startup_and_memory(
    binary: &Path,
) -> Result<(Duration, u64), Box<dyn std::error::Error + Send + Sync>> {
    let certs = certs()?;
    let dir = std::env::temp_dir().join(format!("dsf-startup-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    certs.server.write(&dir, "server")?;
    certs.local.write(&dir, "client")?;
    certs.pki.write_ca(&dir)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let base_url = format!("https://localhost:{port}/fhir");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env("DEV_DSF_FHIR_SERVER_BASE_URL", &base_url)
        .env(
            "DEV_DSF_FHIR_SERVER_ORGANIZATION_IDENTIFIER_VALUE",
            "startup.test",
        )
        .env("DEV_DSF_FHIR_CLIENT_CERTIFICATE", dir.join("client.crt"))
        .env(
            "DEV_DSF_FHIR_DB_URL",
            format!("sqlite:{}", dir.join("fhir.sqlite").display()),
        )
        .env("DEV_DSF_SERVER_API_PORT", port.to_string())
        .env("DEV_DSF_SERVER_CERTIFICATE", dir.join("server.crt"))
        .env("DEV_DSF_SERVER_CERTIFICATE_KEY", dir.join("server.key"))
        .env(
            "DEV_DSF_SERVER_AUTH_TRUST_CLIENT_CERTIFICATE_CAS",
            dir.join("ca.crt"),
        )
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let client = FhirClient::new(&base_url, Arc::new(certs.pki.client_config(&certs.local)?))?;
    let startup = loop {
        if let Ok(r) = client.json(Method::GET, "metadata", None).await {
            if r.status == 200 {
                break started.elapsed();
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("server did not answer within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().ok_or("server exited")?;
    let rss_kib = crate::proc_status_kib(&pid.to_string(), "VmRSS:").ok_or("no VmRSS")?;
    child.kill().await.ok();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((startup, rss_kib))
}
