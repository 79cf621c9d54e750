//! The load run: closed-loop clients over mutual TLS creating, reading and searching Tasks on
//! an in-process FHIR server, against the baselines measured in the same run (raw inserts
//! into the same database, a trivial handler on the same transport).

use crate::baseline::{raw_sqlite_inserts, PostgresBaseline};
use crate::measure::{alternating, closed_loop, Measurement};
use crate::server::{bench_task, BenchServer};
use bytes::Bytes;
use dsf_fhir::FhirClient;
use http::Method;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

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

/// Creates draft Tasks (POST) from `concurrency` clients for `duration`, identified
/// `<prefix>-<request number>` (a draft Task's identifier is unique, so each call needs a
/// prefix of its own); the measurement and the (request number, id) of every Task created.
pub async fn create_tasks(
    client: Arc<FhirClient>,
    prefix: &str,
    concurrency: usize,
    duration: Duration,
) -> (Measurement, Vec<(usize, String)>) {
    let created_ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ids = created_ids.clone();
    let prefix = prefix.to_owned();
    let measurement = closed_loop("create Task (POST)", concurrency, duration, move |i| {
        let (cl, ids, prefix) = (client.clone(), ids.clone(), prefix.clone());
        async move {
            let body = Bytes::from(
                serde_json::to_vec(&bench_task(&format!("{prefix}-{i}"))).unwrap_or_default(),
            );
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
pub(crate) fn read_task(
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

/// How the load run loads.
pub struct LoadSettings {
    /// Closed-loop clients.
    pub concurrency: usize,
    /// How long each scenario runs.
    pub duration: Duration,
    /// PostgreSQL URL; SQLite (a file in a temporary directory) when absent.
    pub postgres: Option<String>,
}

/// What the load run measured.
pub struct LoadReport {
    /// The backend's description.
    pub backend: &'static str,
    /// Closed-loop clients.
    pub concurrency: usize,
    /// Seconds per scenario.
    pub seconds: f64,
    /// Every scenario and baseline, in the order they ran.
    pub measurements: Vec<Measurement>,
}

impl LoadReport {
    fn rate(&self, prefix: &str) -> f64 {
        self.measurements
            .iter()
            .find(|m| m.name.starts_with(prefix))
            .map_or(0.0, |m| m.per_second)
    }

    /// The report as Markdown tables and ratios.
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

/// Runs the load run on SQLite, or on PostgreSQL with `settings.postgres`.
pub async fn run(
    settings: LoadSettings,
) -> Result<LoadReport, Box<dyn std::error::Error + Send + Sync>> {
    let server = BenchServer::start(settings.postgres.as_deref(), settings.concurrency).await?;
    let (db, backend_name) = (server.db.clone(), server.backend_name);
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

    // The raw baselines insert the Task as the server returned it.
    let sample = client.create(&bench_task("sample")).await?;
    let rows: Vec<String> = (0..64)
        .map(|i| {
            let mut t = sample.clone();
            t["identifier"][0]["value"] = json!(format!("raw-{i}"));
            t["id"] = json!(uuid::Uuid::new_v4().to_string());
            serde_json::to_string(&t).unwrap_or_default()
        })
        .collect();
    let baseline = match &settings.postgres {
        Some(url) => Some(PostgresBaseline::create(url).await?),
        None => None,
    };
    if let Some(baseline) = &baseline {
        measurements.push(baseline.same_rows_inserts(&sample, &base_url, c, d).await?);
    }
    measurements.push(match &baseline {
        Some(baseline) => baseline.raw_inserts(Arc::new(rows), c, d).await?,
        None => {
            let db = db.clone();
            tokio::task::spawn_blocking(move || raw_sqlite_inserts(&db, &rows, d)).await??
        }
    });

    // The token search below finds these by `t-<n>`.
    let (created, ids) = create_tasks(client.clone(), "t", c, d).await;
    measurements.push(created);
    let ids = Arc::new(ids);
    if ids.is_empty() {
        return Err("no Task was created".into());
    }
    let known = Arc::new(ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>());
    if let Some(baseline) = &baseline {
        measurements.push(baseline.point_selects(c, d).await?);
    }
    // Reads and the trivial handler take turns: their ratio is a target of its own.
    let tc = trivial_client.clone();
    let (read, trivial) = alternating(
        (READ_TASK, read_task(client.clone(), known.clone())),
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
    if let Some(baseline) = baseline {
        baseline.remove().await;
    }
    Ok(LoadReport {
        backend: backend_name,
        concurrency: c,
        seconds: d.as_secs_f64(),
        measurements,
    })
}
