//! What the BPE counts for operators: Tasks claimed, completed and failed by process, sends
//! and their failures, plugin calls and their time, and, read at each scrape, the
//! subscriptions' state and the instances waiting. Always counted (a few atomic additions
//! per Task); exported once registered into a Prometheus registry (`Bpe::register_metrics`).

use crate::status::BpeStatus;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProcessLabel {
    /// `process id|version` of a deployed process; `none` for a Task no deployed process
    /// handles.
    pub process: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCallLabels {
    kind: &'static str,
    outcome: &'static str,
}

/// Upper bounds of the plugin call buckets, in seconds: from a millisecond to the default
/// call time-out of two minutes.
const CALL_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 120.0,
];

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS)
}

/// The BPE's counters, shared by its loops and handlers.
#[derive(Debug)]
pub(crate) struct EngineMetrics {
    claimed: Family<ProcessLabel, Counter>,
    completed: Family<ProcessLabel, Counter>,
    failed: Family<ProcessLabel, Counter>,
    sends: Family<OutcomeLabel, Counter>,
    plugin_calls: Family<PluginCallLabels, Histogram, fn() -> Histogram>,
    waiting: Gauge,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            claimed: Family::default(),
            completed: Family::default(),
            failed: Family::default(),
            sends: Family::default(),
            plugin_calls: Family::new_with_constructor(call_histogram),
            waiting: Gauge::default(),
        }
    }
}

fn process(key: Option<&str>) -> ProcessLabel {
    ProcessLabel {
        process: key.unwrap_or("none").to_owned(),
    }
}

impl EngineMetrics {
    /// A Task of `process` (`id|version`) was set in progress by this BPE.
    pub(crate) fn task_claimed(&self, process_key: &str) {
        self.claimed
            .get_or_create(&process(Some(process_key)))
            .inc();
    }

    /// A Task was completed (`failed` false) or failed; `process_key` when a deployed process
    /// handled it.
    pub(crate) fn task_finished(&self, process_key: Option<&str>, failed: bool) {
        let family = if failed {
            &self.failed
        } else {
            &self.completed
        };
        family.get_or_create(&process(process_key)).inc();
    }

    /// A send reached its target (`ok`) or failed for good.
    pub(crate) fn sent(&self, ok: bool) {
        let outcome = if ok { "sent" } else { "failed" };
        self.sends.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A plugin handler of `kind` returned after `elapsed`: `ok`, `bpmn_error`, `failed` or
    /// `panicked`.
    pub(crate) fn plugin_call(&self, kind: &'static str, outcome: &'static str, elapsed: Duration) {
        self.plugin_calls
            .get_or_create(&PluginCallLabels { kind, outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the instances waiting, as counted in the state database.
    pub(crate) fn set_waiting(&self, waiting: u64) {
        self.waiting.set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    pub(crate) fn register(&self, registry: &mut Registry, status: watch::Receiver<BpeStatus>) {
        registry.register(
            "dsf_bpe_tasks_claimed",
            "Tasks this BPE set in progress, by process",
            self.claimed.clone(),
        );
        registry.register(
            "dsf_bpe_tasks_completed",
            "Tasks this BPE completed, by process",
            self.completed.clone(),
        );
        registry.register(
            "dsf_bpe_tasks_failed",
            "Tasks this BPE set failed, by process ('none': no deployed process takes them)",
            self.failed.clone(),
        );
        registry.register(
            "dsf_bpe_sends",
            "Tasks sent to other organisations, by outcome (sent or failed)",
            self.sends.clone(),
        );
        registry.register(
            "dsf_bpe_plugin_call_duration_seconds",
            "Time of plugin handler calls, by handler kind and outcome",
            self.plugin_calls.clone(),
        );
        registry.register(
            "dsf_bpe_instances_waiting",
            "Process instances in the state database waiting for a message, a timer or a user (as of the last scrape)",
            self.waiting.clone(),
        );
        registry.register_collector(Box::new(SubscriptionGauges(status)));
    }
}

/// Reads the subscriptions' state at each scrape.
#[derive(Debug)]
struct SubscriptionGauges(watch::Receiver<BpeStatus>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: &'static str,
}

impl prometheus_client::collector::Collector for SubscriptionGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.borrow().clone();
        let mut family = encoder.encode_descriptor(
            "dsf_bpe_subscription_connected",
            "Whether the websocket subscription is bound and caught up (1) or not (0)",
            None,
            MetricType::Gauge,
        )?;
        for (resource, connected) in [
            ("Task", status.tasks_connected),
            (
                "QuestionnaireResponse",
                status.questionnaire_responses_connected,
            ),
        ] {
            ConstGauge::new(i64::from(connected))
                .encode(family.encode_family(&ResourceLabel { resource })?)?;
        }
        let connects = prometheus_client::metrics::counter::ConstCounter::new(status.connects);
        let metric = encoder.encode_descriptor(
            "dsf_bpe_websocket_connects",
            "Websocket connections opened for the subscriptions (more than 2 after reconnects)",
            None,
            connects.metric_type(),
        )?;
        connects.encode(metric)
    }
}
