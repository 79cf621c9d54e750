//! What a status endpoint asks of a running BPE: its metrics registered, readiness, and the
//! figures read from the state database before each scrape.

use crate::incoming::Dispatcher;
use crate::status::BpeStatus;
use crate::Bpe;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::sync::watch;

impl Bpe {
    /// Registers the BPE's metrics into `registry` (all named `dsf_bpe_…`):
    ///
    /// - `dsf_bpe_tasks_claimed_total`, `dsf_bpe_tasks_completed_total` and
    ///   `dsf_bpe_tasks_failed_total`, by `process`;
    /// - `dsf_bpe_sends_total{outcome="sent"|"failed"}`;
    /// - `dsf_bpe_plugin_call_duration_seconds{kind, outcome}`;
    /// - `dsf_bpe_instances_waiting` (refreshed by [`BpeMonitor::refresh_metrics`]);
    /// - `dsf_bpe_subscription_connected{resource}` and `dsf_bpe_websocket_connects_total`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.dispatcher
            .services
            .metrics
            .register(registry, self.status.clone());
    }

    /// A handle for a status endpoint: readiness and the metrics read from the database.
    pub fn monitor(&self) -> BpeMonitor {
        BpeMonitor {
            dispatcher: self.dispatcher.clone(),
            status: self.status.clone(),
        }
    }
}

/// What a status endpoint asks of a running BPE ([`Bpe::monitor`]); cheap to clone.
#[derive(Clone)]
pub struct BpeMonitor {
    dispatcher: Arc<Dispatcher>,
    status: watch::Receiver<BpeStatus>,
}

impl BpeMonitor {
    /// Reads what the metrics report from the state database (the instances waiting); a
    /// status endpoint calls it before each scrape.
    pub async fn refresh_metrics(&self) -> crate::Result<()> {
        let waiting = self.dispatcher.services.state.running_count().await?;
        self.dispatcher.services.metrics.set_waiting(waiting);
        Ok(())
    }

    /// Whether the BPE can work: both subscriptions are bound and caught up, and its state
    /// database answers. The reason when not.
    pub async fn check_ready(&self) -> std::result::Result<(), String> {
        let status = self.status.borrow().clone();
        if !status.tasks_connected {
            return Err("the Task subscription is not connected".into());
        }
        if !status.questionnaire_responses_connected {
            return Err("the QuestionnaireResponse subscription is not connected".into());
        }
        self.dispatcher
            .services
            .state
            .running_count()
            .await
            .map(|_| ())
            .map_err(|e| format!("state database: {}", dsf_core::ErrorChain(&e)))
    }
}
