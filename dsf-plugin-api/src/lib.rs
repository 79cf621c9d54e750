//! The API DSF process plugins are written against.
//!
//! A plugin is a Rust crate that builds one [`PluginDefinition`]: its name and version, its
//! BPMN files, its FHIR resources per process (with the `#{version}`, `#{date}` and
//! `#{organization}` placeholders), and its handlers, registered under the names the BPMN
//! files use (`camunda:class` values or delegate expressions). The BPE (`dsf-engine`) deploys
//! the definition; the plugin never sees engine internals.
//!
//! A plugin reaches a BPE in one of two ways. An embedder links the crate and hands its
//! definition to the engine in-process. A site running the reference `dsf-bpe` gets a *plugin
//! file*: the crate's `main` calls [`serve`], and the BPE starts the executable from its plugin
//! directory and talks to it over the [`protocol`] (its handlers' FHIR requests go through the
//! BPE, so the plugin never holds the organisation's key). Handlers are written once for both.
//! Configuration reaches handlers through [`ProcessApi::config`].
//!
//! Handlers are plain traits made async with the re-exported [`async_trait`](macro@async_trait) attribute, so a
//! plugin crate depends on this crate alone:
//!
//! ```
//! use dsf_plugin_api::{async_trait, PluginDefinition, ProcessApi, ProcessError, ServiceTask, Variables};
//!
//! struct Greet;
//!
//! #[async_trait]
//! impl ServiceTask for Greet {
//!     async fn execute(&self, api: &ProcessApi, vars: &mut Variables<'_>) -> Result<(), ProcessError> {
//!         let greeting = format!("hello from {}", api.local_organization());
//!         vars.set_string("greeting", &greeting);
//!         Ok(())
//!     }
//! }
//!
//! let plugin = PluginDefinition::new("hello-world", "1.0.0.0", "2026-11-28")
//!     .unwrap()
//!     .bpmn("bpe/hello.bpmn", "<definitions/>")
//!     .service_task("org.example.Greet", Greet);
//! assert_eq!(plugin.version().resource_version(), "1.0");
//! ```

mod api;
pub mod constants;
mod definition;
mod error;
mod handlers;
mod placeholders;
pub mod protocol;
mod serve;
pub mod task;
mod variables;

pub use api::{EndpointInfo, ProcessApi};
pub use async_trait::async_trait;
pub use definition::{PluginDefinition, PluginVersion, ResourceFile};
pub use error::{panic_message, Error, ProcessError, SendError};
pub use handlers::{
    BusinessKeyStrategy, DefaultMessageSend, ExecutionListener, Handler, MessageSend, SendContext,
    ServiceTask, UserTaskListener,
};
pub use placeholders::{environment_variable, fill_placeholders, fill_resource_placeholders};
#[cfg(feature = "serve")]
pub use serve::serve;
pub use serve::serve_on;
pub use variables::{Target, Targets, VariableScope, Variables};

/// The FHIR client type handlers use (re-exported so plugins need no direct dependency).
pub use dsf_fhir::FhirClient;
/// JSON values: FHIR resources are handled as JSON.
pub use serde_json::{json, Value};
