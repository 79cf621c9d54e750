//! The DSF business process engine (BPE): deploys process plugins written against
//! `dsf-plugin-api` onto `dsf-bpmn`, starts and continues their instances from Task resources
//! on the local DSF FHIR server, sends Tasks to other organisations' FHIR servers, and keeps
//! its state (instances, timers, claimed and sent Tasks) in SQLite or PostgreSQL so that it
//! resumes after a crash without losing a step or sending a Task twice. Several BPEs may
//! share one PostgreSQL state database: each Task is claimed and each instance advanced by
//! one of them at a time, and a dead one's work is taken over ([`StateStore`]).
//!
//! Plugins come linked in (a [`PluginDefinition`](dsf_plugin_api::PluginDefinition) handed to
//! [`Bpe::start`]) or as *plugin files* ([`BpeConfig::plugin_directory`]): executables the BPE
//! starts, each a process of its own ([`PluginFile`]), speaking the protocol of
//! `dsf_plugin_api::protocol`; their handlers' FHIR requests are sent by the BPE, a process
//! that crashes, hangs or answers garbage fails what it was doing and is restarted
//! ([`PluginFileSettings`]). Both kinds deploy alike; [`DeploymentReport`] says what came of
//! each plugin file, and processes can be excluded or retired ([`ProcessState`]).
//!
//! It is a client of its FHIR server only (`dsf-fhir`'s client), over HTTPS and a websocket
//! subscription, so the server may run in another process (the DSF's DMZ/intranet split) or
//! in the same one.
//!
//! # Where things are
//!
//! - `bpe`: [`Bpe`] and [`BpeConfig`]: start-up (the local identity, deployment, recovery)
//!   and the loops that feed it.
//! - `deploy`: plugins checked and deployed ([`Deployment`], [`DeploymentReport`],
//!   [`ProcessState`]), their FHIR resources written when they changed.
//! - `incoming`: the dispatcher that claims requested Tasks, starts and continues instances,
//!   completes user tasks and fires timers; `status`: [`BpeStatus`], how far it got.
//! - `metrics` and `monitor`: what the BPE counts for Prometheus, and what a status endpoint
//!   asks of it ([`Bpe::register_metrics`], [`BpeMonitor`]).
//! - `outgoing`: message sends, recorded before and after so none goes out twice.
//! - `adapters` and `scope`: plugin handlers as dsf-bpmn element handlers, and the variable
//!   scope they see; `services` is what handlers and loops share.
//! - `state`: the durable state in SQLite or PostgreSQL ([`StateStore`]), versioned schema,
//!   leases and fencing for several BPEs on one database; `locks`: one business key at a
//!   time.
//! - `plugin_files` and `plugin_process`: plugin files as processes of their own
//!   ([`PluginFile`], [`PluginFileSettings`]).
//!
//! ```no_run
//! # async fn run(tls: std::sync::Arc<rustls::ClientConfig>, plugin: dsf_plugin_api::PluginDefinition) -> Result<(), dsf_engine::Error> {
//! let config = dsf_engine::BpeConfig::new("https://dic.example.org/fhir", tls);
//! let bpe = dsf_engine::Bpe::start(config, vec![plugin]).await?;
//! bpe.wait_connected().await;
//! # Ok(()) }
//! ```

mod adapters;
mod bpe;
mod deploy;
mod error;
mod incoming;
mod locks;
mod metrics;
mod monitor;
mod outgoing;
mod plugin_files;
mod plugin_process;
mod scope;
mod services;
mod state;
mod status;

pub use bpe::{parse_process_list, Bpe, BpeConfig, PluginFileStatus};
pub use deploy::{process_key, Deployment, DeploymentReport, ProcessState};
pub use error::{Error, Result};
pub use monitor::BpeMonitor;
pub use plugin_files::{PluginFile, PluginFileReport};
pub use plugin_process::PluginFileSettings;
pub use state::{
    Lease, StateDatabase, StateStore, StoredInstance, TakenOver, DEFAULT_LEASE, INSTANCE_FORMAT,
};
pub use status::BpeStatus;
