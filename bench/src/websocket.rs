//! The websocket part of `dsf-bench`: write-to-delivery latency of Subscription events at a
//! fixed write rate with several subscribers, and what active Subscriptions cost the write
//! rate, against the rate without any, all in one run on one in-process server over loopback.

use crate::measure::{closed_loop, summarise_latencies};
use crate::server::{bench_task, BenchServer};
use dsf_fhir::client::subscription::RawWebSocket;
use dsf_fhir::FhirClient;
use fastwebsockets::{Frame, OpCode, Payload};
use http::Method;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How the websocket run loads.
pub struct WebsocketSettings {
    /// Writes per second of the latency scenario.
    pub rate: u32,
    /// Websocket connections bound to one Subscription that matches every write.
    pub subscribers: usize,
    /// How long each scenario runs.
    pub duration: Duration,
    /// Closed-loop writers of the write-rate scenarios.
    pub concurrency: usize,
    /// PostgreSQL URL; SQLite (a file in a temporary directory) when absent.
    pub postgres: Option<String>,
}

/// What the websocket run measured.
pub struct WebsocketReport {
    /// The settings, for the report.
    pub settings_line: String,
    /// Writes made in the latency scenario.
    pub writes: usize,
    /// Writes per second achieved.
    pub achieved_rate: f64,
    /// Events delivered to all subscribers.
    pub deliveries: usize,
    /// Events the writes should have delivered.
    pub expected_deliveries: usize,
    /// Median write-to-delivery latency.
    pub p50_ms: f64,
    /// 99th percentile write-to-delivery latency.
    pub p99_ms: f64,
    /// Longest write-to-delivery latency.
    pub max_ms: f64,
    /// The same run's POST round trips (send to 201): the baseline of the delivery latency.
    pub write_p50_ms: f64,
    /// See `write_p50_ms`.
    pub write_p99_ms: f64,
    /// (scenario, creates per second)
    pub rates: Vec<(String, f64)>,
}

impl WebsocketReport {
    /// The report as Markdown tables and ratios.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{}\n\n| write-to-delivery | value |\n|---|---:|\n| writes sent | {} ({:.0}/s achieved) |\n| deliveries received / expected | {} / {} |\n| p50 | {:.2} ms ({:.2}x the write's own round trip, {:.2} ms) |\n| p99 | {:.2} ms ({:.2}x, {:.2} ms) |\n| max | {:.2} ms |\n\n| scenario | creates/s | ratio to none |\n|---|---:|---:|\n",
            self.settings_line,
            self.writes,
            self.achieved_rate,
            self.deliveries,
            self.expected_deliveries,
            self.p50_ms,
            self.p50_ms / self.write_p50_ms,
            self.write_p50_ms,
            self.p99_ms,
            self.p99_ms / self.write_p99_ms,
            self.write_p99_ms,
            self.max_ms
        );
        let none = self.rates.first().map_or(0.0, |(_, r)| *r);
        for (name, rate) in &self.rates {
            out.push_str(&format!("| {name} | {rate:.0} | {:.2} |\n", rate / none));
        }
        out
    }
}

async fn create_subscription(
    client: &FhirClient,
    criteria: &str,
) -> Result<String, dsf_fhir::Error> {
    let created: Value = client
        .create(&json!({
            "resourceType": "Subscription", "status": "active", "reason": "bench",
            "criteria": criteria,
            "channel": {"type": "websocket", "payload": "application/fhir+json"},
            "meta": {"tag": [{"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": "ALL"}]}
        }))
        .await?;
    Ok(created["id"].as_str().unwrap_or_default().to_owned())
}

async fn bind(client: &FhirClient, id: &str) -> Result<RawWebSocket, dsf_fhir::Error> {
    let mut ws = client.websocket().await?;
    let failed = |e: fastwebsockets::WebSocketError| dsf_fhir::Error::transport(e);
    ws.write_frame(Frame::text(Payload::Owned(
        format!("bind {id}").into_bytes(),
    )))
    .await
    .map_err(failed)?;
    loop {
        let frame = ws.read_frame().await.map_err(failed)?;
        if frame.opcode == OpCode::Text && frame.payload.starts_with(b"bound ") {
            return Ok(ws);
        }
        if frame.opcode == OpCode::Close {
            return Err(dsf_fhir::Error::transport_fault("closed while binding"));
        }
    }
}

/// The sequence number a latency Task carries in its identifier (`lat-<n>`).
fn sequence_of(event: &[u8]) -> Option<usize> {
    let marker = b"\"lat-";
    let start = event.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let digits: String = event[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|b| char::from(*b))
        .collect();
    digits.parse().ok()
}

/// Reads events until the connection ends, recording each latency against the send time.
fn drain(
    mut ws: RawWebSocket,
    sent: Option<Arc<Vec<OnceLock<Instant>>>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    received: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(frame) = ws.read_frame().await {
            match frame.opcode {
                OpCode::Text => {
                    received.fetch_add(1, Ordering::Relaxed);
                    if let (Some(sent), Some(n)) = (&sent, sequence_of(&frame.payload)) {
                        if let Some(at) = sent.get(n).and_then(OnceLock::get) {
                            latencies
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(at.elapsed());
                        }
                    }
                }
                OpCode::Close => return,
                _ => {}
            }
        }
    })
}

async fn post(client: &FhirClient, task: &Value) -> bool {
    let body = bytes::Bytes::from(serde_json::to_vec(task).unwrap_or_default());
    matches!(
        client
            .request(
                Method::POST,
                "Task",
                &[("content-type", "application/fhir+json"), ("accept", "application/fhir+json"), ("prefer", "return=minimal")],
                Some(body),
            )
            .await,
        Ok(r) if r.status == 201
    )
}

/// Closed-loop create rate with the server as it is now.
async fn create_rate(
    name: &str,
    client: &FhirClient,
    concurrency: usize,
    duration: Duration,
) -> (String, f64) {
    let client = client.clone();
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let m = closed_loop(name, concurrency, duration, move |i| {
        let (client, prefix) = (client.clone(), prefix.clone());
        async move { post(&client, &bench_task(&format!("rate-{prefix}-{i}"))).await }
    })
    .await;
    (name.to_owned(), m.per_second)
}

/// Runs the delivery scenario and the write-rate scenarios.
pub async fn run(
    settings: WebsocketSettings,
) -> Result<WebsocketReport, Box<dyn std::error::Error + Send + Sync>> {
    let server = BenchServer::start(settings.postgres.as_deref(), settings.concurrency).await?;
    let backend = server.backend_name;
    let client = server.client()?;

    // Write rate without any Subscription of Tasks (the built-in one matches requested
    // Tasks only; these are drafts).
    let mut rates = vec![
        create_rate(
            "no Task Subscription",
            &client,
            settings.concurrency,
            settings.duration,
        )
        .await,
    ];
    let latency = delivery_latency(&client, &settings).await?;
    rates.extend(subscription_costs(&client, &settings).await?);
    server.stop().await;
    Ok(WebsocketReport {
        settings_line: format!(
            "{backend}, {} subscribers on one Subscription, {} writes/s for {:.0} s; write rates with {} closed-loop writers for {:.0} s each.",
            settings.subscribers,
            settings.rate,
            settings.duration.as_secs_f64(),
            settings.concurrency,
            settings.duration.as_secs_f64()
        ),
        writes: latency.writes,
        achieved_rate: latency.achieved_rate,
        deliveries: latency.deliveries,
        expected_deliveries: latency.expected_deliveries,
        p50_ms: latency.p50_ms,
        p99_ms: latency.p99_ms,
        max_ms: latency.max_ms,
        write_p50_ms: latency.write_p50_ms,
        write_p99_ms: latency.write_p99_ms,
        rates,
    })
}

/// The delivery scenario's figures.
struct Latency {
    writes: usize,
    achieved_rate: f64,
    deliveries: usize,
    expected_deliveries: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    write_p50_ms: f64,
    write_p99_ms: f64,
}

/// Subscribers on one Subscription matching every write, writes at a fixed rate: the time
/// from each write to each delivery, against the writes' own round trips.
async fn delivery_latency(
    client: &FhirClient,
    settings: &WebsocketSettings,
) -> Result<Latency, Box<dyn std::error::Error + Send + Sync>> {
    let id = create_subscription(client, "Task?status=draft").await?;
    let capacity = (settings.rate as usize) * (settings.duration.as_secs() as usize + 1) + 16;
    let sent: Arc<Vec<OnceLock<Instant>>> =
        Arc::new((0..capacity).map(|_| OnceLock::new()).collect());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..settings.subscribers {
        let ws = bind(client, &id).await?;
        readers.push(drain(
            ws,
            Some(sent.clone()),
            latencies.clone(),
            received.clone(),
        ));
    }
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(settings.rate.max(1)),
    ));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut writes = 0usize;
    let mut pending = tokio::task::JoinSet::new();
    while start.elapsed() < settings.duration && writes < capacity {
        ticker.tick().await;
        let n = writes;
        writes += 1;
        let (client, sent) = (client.clone(), sent.clone());
        pending.spawn(async move {
            let task = bench_task(&format!("lat-{n}"));
            let at = Instant::now();
            let _ = sent[n].set(at);
            post(&client, &task).await.then(|| at.elapsed())
        });
    }
    let mut failed = 0;
    let mut write_latencies = Vec::with_capacity(writes);
    while let Some(done) = pending.join_next().await {
        match done {
            Ok(Some(latency)) => write_latencies.push(latency),
            _ => failed += 1,
        }
    }
    write_latencies.sort();
    let (write_p50_ms, write_p99_ms) = summarise_latencies(&write_latencies);
    let achieved_rate = writes as f64 / start.elapsed().as_secs_f64();
    if failed > 0 {
        return Err(format!("{failed} of {writes} latency writes failed").into());
    }
    let expected_deliveries = writes * settings.subscribers;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected_deliveries && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for reader in readers {
        reader.abort();
    }
    let mut all = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    all.sort();
    let max_ms = all.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let (p50_ms, p99_ms) = summarise_latencies(&all);
    let mut stored: Value = client.read("Subscription", &id).await?;
    stored["status"] = json!("off");
    client.update(&stored).await?;

    Ok(Latency {
        writes,
        achieved_rate,
        deliveries: all.len(),
        expected_deliveries,
        p50_ms,
        p99_ms,
        max_ms,
        write_p50_ms,
        write_p99_ms,
    })
}

/// 100 active Subscriptions, each with a connection: the write rate with none of them
/// matching the writes (the cost of evaluating criteria), then with all of them (the cost of
/// delivering).
async fn subscription_costs(
    client: &FhirClient,
    settings: &WebsocketSettings,
) -> Result<Vec<(String, f64)>, Box<dyn std::error::Error + Send + Sync>> {
    let mut rates = Vec::new();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut connections = Vec::new();
    let none_received = Arc::new(AtomicUsize::new(0));
    let add = |criteria: Vec<String>| {
        let (client, latencies, received) =
            (client.clone(), latencies.clone(), none_received.clone());
        async move {
            let mut opened = Vec::new();
            for c in criteria {
                let id = create_subscription(&client, &c).await?;
                opened.push(drain(
                    bind(&client, &id).await?,
                    None,
                    latencies.clone(),
                    received.clone(),
                ));
            }
            Ok::<_, dsf_fhir::Error>(opened)
        }
    };
    connections.extend(
        add((0..100)
            .map(|i| {
                format!("Task?status=draft&identifier=http://dsf.dev/sid/task-identifier|none-{i}")
            })
            .collect())
        .await?,
    );
    rates.push(
        create_rate(
            "100 Subscriptions, none matching",
            client,
            settings.concurrency,
            settings.duration,
        )
        .await,
    );
    connections.extend(
        add((0..100)
            .map(|i| format!("Task?status=draft&authored-on=ge{}-01-01", 1900 + i))
            .collect())
        .await?,
    );
    rates.push(
        create_rate(
            "+100 Subscriptions, all matching (JSON payload)",
            client,
            settings.concurrency,
            settings.duration,
        )
        .await,
    );
    for c in connections {
        c.abort();
    }
    Ok(rates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_found_in_events() {
        assert_eq!(
            sequence_of(br#"{"identifier":[{"value":"lat-42"}]}"#),
            Some(42)
        );
        assert_eq!(sequence_of(br#"{"identifier":[{"value":"other"}]}"#), None);
    }
}
