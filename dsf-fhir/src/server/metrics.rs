//! The server's metrics, registered into a Prometheus registry the embedder owns
//! ([`FhirServer::register_metrics`]): request latency by interaction and status, and, read
//! at each scrape, open connections, websocket sessions and the database pool.

use super::interaction::Interaction;
use super::FhirServer;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: from half a millisecond (a cached read)
/// to ten seconds (the statement time-out).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    interaction: &'static str,
    status: u16,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Statuses whose histograms requests find without a look-up in the family: what most
/// answers have.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 410, 412, 422, 429, 500, 503,
];

/// What requests record once metrics are registered.
#[derive(Debug)]
pub(crate) struct RequestMetrics {
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// The family's histograms of each interaction with a common status, once used: the
    /// family hashes the labels and takes its lock on every look-up.
    at_hand: Box<[OnceLock<Histogram>]>,
}

impl RequestMetrics {
    fn new() -> Self {
        RequestMetrics {
            durations: Family::new_with_constructor(latency_histogram),
            at_hand: (0..Interaction::COUNT * COMMON_STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    pub(crate) fn observe(&self, interaction: Interaction, status: u16, elapsed: Duration) {
        let labels = || RequestLabels {
            interaction: interaction.name(),
            status,
        };
        let seconds = elapsed.as_secs_f64();
        let at_hand = COMMON_STATUSES
            .iter()
            .position(|&common| common == status)
            .and_then(|n| {
                self.at_hand
                    .get(interaction as usize * COMMON_STATUSES.len() + n)
            });
        match at_hand {
            Some(cell) => cell
                .get_or_init(|| self.durations.get_or_create(&labels()).clone())
                .observe(seconds),
            None => self.durations.get_or_create(&labels()).observe(seconds),
        }
    }
}

impl FhirServer {
    /// Registers the server's metrics into `registry` (all named `dsf_fhir_…`) and starts
    /// recording request latency; until it is called, requests record nothing. Call it once;
    /// a second call registers nothing more.
    ///
    /// - `dsf_fhir_request_duration_seconds{interaction, status}`: histogram of the time to
    ///   each answer's head (its `_count` is the number of requests);
    /// - `dsf_fhir_connections`: open client connections, websockets included;
    /// - `dsf_fhir_websocket_sessions`: open websocket sessions;
    /// - `dsf_fhir_db_connections{state="in_use"|"idle"}` and `dsf_fhir_db_connections_max`:
    ///   the database pool.
    pub fn register_metrics(self: &Arc<Self>, registry: &mut Registry) {
        let metrics = RequestMetrics::new();
        let durations = metrics.durations.clone();
        if self.metrics.set(metrics).is_err() {
            return;
        }
        registry.register(
            "dsf_fhir_request_duration_seconds",
            "Time to the answer's head of requests, by FHIR interaction and HTTP status",
            durations,
        );
        registry.register_collector(Box::new(ServerGauges(Arc::downgrade(self))));
    }
}

/// Reads the server's gauges at each scrape.
#[derive(Debug)]
struct ServerGauges(Weak<FhirServer>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl prometheus_client::collector::Collector for ServerGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(server) = self.0.upgrade() else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "dsf_fhir_connections",
            "Open client connections, websockets included",
            count(server.open_connections()),
        )?;
        gauge(
            &mut encoder,
            "dsf_fhir_websocket_sessions",
            "Open websocket sessions",
            count(server.websocket_connections()),
        )?;
        if let Some(pool) = server.store.pool_status() {
            let mut family = encoder.encode_descriptor(
                "dsf_fhir_db_connections",
                "Database connections of the store, by state",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in [("in_use", pool.in_use), ("idle", pool.idle)] {
                ConstGauge::new(count(n)).encode(family.encode_family(&StateLabel { state })?)?;
            }
            gauge(
                &mut encoder,
                "dsf_fhir_db_connections_max",
                "Most database connections the store holds",
                count(pool.max),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_at_hand_and_looked_up_land_in_the_same_series() {
        let metrics = RequestMetrics::new();
        let mut registry = Registry::default();
        registry.register("requests", "test", metrics.durations.clone());
        for _ in 0..3 {
            metrics.observe(Interaction::Read, 200, Duration::from_millis(1));
        }
        metrics.observe(Interaction::Read, 418, Duration::from_millis(1));
        metrics.observe(Interaction::Other, 503, Duration::from_millis(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoded");
        for series in [
            r#"requests_count{interaction="read",status="200"} 3"#,
            r#"requests_count{interaction="read",status="418"} 1"#,
            r#"requests_count{interaction="other",status="503"} 1"#,
        ] {
            assert!(text.contains(series), "{series} not in {text}");
        }
    }
}
