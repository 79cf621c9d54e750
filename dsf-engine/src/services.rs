//! What plugin handlers and the BPE's loops share: the API handlers call, the state database,
//! and the crash hook the crash tests use.

use crate::state::StateStore;
use dsf_plugin_api::ProcessApi;
use std::sync::Arc;

/// See [`crate::BpeConfig::crash_at`].
#[doc(hidden)]
pub type CrashHook = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What the handlers and loops share.
pub(crate) struct Services {
    pub api: ProcessApi,
    pub state: StateStore,
    pub crash_at: Option<CrashHook>,
    pub metrics: crate::metrics::EngineMetrics,
}

impl Services {
    /// A step boundary: with a crash hook that fires here, the caller's work never goes on.
    pub(crate) async fn step_boundary(&self, name: &str) {
        if self.crash_at.as_ref().is_some_and(|hook| hook(name)) {
            tracing::warn!(step = name, "simulated crash");
            std::future::pending::<()>().await;
        }
    }
}
