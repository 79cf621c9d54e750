//! The DSF FHIR server as a library: R4 resources (parsed and validated with fhirbolt), a
//! versioned resource store with SQLite and PostgreSQL backends, FHIR search, and the REST API
//! served over mutual TLS, where the client certificate's thumbprint is the caller's identity.
//!
//! It knows nothing of BPMN; the BPE (`dsf-engine`) talks to it as a client.
//!
//! Cargo features choose the parts; resource parsing, input bounds and the error type are
//! always there:
//! - `client`: [`FhirClient`] (REST and websocket subscriptions over mutual TLS); no database;
//! - `store`: the versioned [`ResourceStore`] with its SQLite and PostgreSQL backends and
//!   search; no HTTP;
//! - `server` (implies `store`): the REST API, authorization and websockets, served by
//!   [`FhirServer::serve`] or mounted in an application of yours as a [`server::FhirService`];
//! - `validation` (implied by `server`): profile validation against StructureDefinitions;
//! - `conformance`: the conformance suite for storage backends written elsewhere.
//!
//! `client` and `server` are the default.
//!
//! # Where things are
//!
//! - Always built: [`format`](mod@format) (JSON and XML, content negotiation, the R4 parser and renderer),
//!   [`bounds`] (limits checked before anything is parsed: nesting depth, string and array
//!   sizes, canonical URLs), [`date`] (FHIR dates as millisecond ranges), [`resource_type`]
//!   (the types this server stores), [`Error`] and [`OperationOutcome`].
//! - [`client`]: [`FhirClient`], its paging, and [`client::subscription`] (websocket
//!   subscriptions with catch-up); [`client::Transport`] lets a test or an embedder carry
//!   requests another way.
//! - [`store`]: [`ResourceStore`] over a [`store::Backend`] ([`store::SqliteBackend`],
//!   [`store::PostgresBackend`]): versioned writes ([`WriteOp`]), transactions, uniqueness,
//!   Binary content streamed in parts ([`store::ContentWriter`]), and the change feed that
//!   websockets follow ([`store::ChangeReceiver`]).
//! - [`search`]: search parameters, the index rows they are answered from, [`search::SearchQuery`]
//!   and the in-memory matcher Subscriptions use.
//! - [`access`]: read access, the grants a stored version carries and the [`access::ReadGrants`]
//!   a caller holds; the store filters searches, history and includes with them.
//! - [`validation`]: profile validation (the R4 model, profiles compiled along
//!   `baseDefinition`, FHIRPath invariants, bindings) and the DSF base definitions.
//! - [`server`]: [`FhirServer`] and its configuration; who is calling ([`server::caller`],
//!   [`server::identity`], [`server::role_config`], [`server::Role`]); what they may do
//!   ([`server::authorization`], whose rules an embedder can replace with an
//!   [`server::AuthorizationPolicy`]); [`server::websocket`] subscriptions; HTML pages for
//!   browsers, themed by [`server::UiTheme`]; and
//!   [`server::FhirService`] to mount the API in an application of yours.
//!
//! docs/architecture.md describes each module and how they fit.
//!
//! # The store
//!
//! Versioned writes, optimistic locking and search, without HTTP:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dsf_fhir::Error> {
//! use dsf_fhir::search::SearchQuery;
//! use dsf_fhir::{ResourceStore, WriteOp, WriteOutcome};
//!
//! let base_url = "https://dsf.example.org/fhir";
//! let store = ResourceStore::open("sqlite::memory:", base_url).await?;
//! let task = serde_json::json!({"resourceType": "Task", "status": "requested", "intent": "order"});
//! let WriteOutcome::Created(stored) = store
//!     .write(WriteOp::Create { resource: task, if_none_exist: None, full_url: None })
//!     .await?
//! else {
//!     unreachable!("a plain create creates")
//! };
//! assert_eq!(stored.version, 1);
//!
//! let requested = SearchQuery::on("Task")?.with("status", "requested").build(base_url)?;
//! assert_eq!(store.search(&requested).await?.total, 1);
//! # Ok(()) }
//! ```
//!
//! # The client
//!
//! REST over mutual TLS, and the websocket subscriptions the BPE listens on:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = dsf_core::TlsFiles {
//!     certificate: "client.crt".into(),
//!     private_key: "client.key".into(),
//!     trusted_cas: "ca.crt".into(),
//! }
//! .client_config()?;
//! let client = dsf_fhir::FhirClient::new("https://dsf.example.org/fhir", std::sync::Arc::new(tls))?;
//! let requested = client.search("Task", "status=requested&_count=20").await?;
//! let subscription = client.find_subscription("Task?status=requested").await?;
//! let mut events = client.subscribe(&subscription, None, Default::default()).await?;
//! while let Some(event) = events.next().await {
//!     println!("{} {}", event.resource_type, event.id);
//! }
//! # Ok(()) }
//! ```
//!
//! # The server, mounted in your application
//!
//! [`FhirServer::serve`] runs its own mutual-TLS accept loop. To serve the API from an
//! application of yours instead, start the background work and mount
//! [`FhirServer::service`]; your transport tells each request who is calling (the full axum
//! program is `examples/rest_in_axum.rs`):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dsf_fhir::server::PeerCertificate;
//! use dsf_fhir::{FhirServer, ResourceStore, ServerConfig};
//! use std::sync::Arc;
//!
//! let base_url = "https://dsf.example.org/fhir";
//! let store = ResourceStore::open("sqlite::memory:", base_url).await?;
//! let server = Arc::new(FhirServer::new(store, ServerConfig::new(base_url, "example.org")));
//! server.start_background().await?;
//! let service = server.service(); // a tower::Service and a hyper::service::Service
//!
//! // What your TLS accept loop does for each request: the client certificate's thumbprint.
//! let mut request = http::Request::get("/fhir/metadata")
//!     .body(http_body_util::Full::new(bytes::Bytes::new()))?;
//! request
//!     .extensions_mut()
//!     .insert(PeerCertificate::from_der(b"a certificate nobody allowed"));
//! let response = service.call(request).await;
//! assert_eq!(response.status(), 401);
//! server.shut_down();
//! # Ok(()) }
//! ```

pub mod bounds;
#[cfg(feature = "client")]
pub mod client;
pub mod date;
pub mod default_profile;
mod error;
pub mod format;
mod outcome;
/// The resource types this server stores.
pub mod resource_type;

#[cfg(feature = "store")]
pub mod access;
#[cfg(feature = "store")]
mod reference;
#[cfg(feature = "store")]
pub mod search;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "store")]
pub mod store;
#[cfg(feature = "validation")]
pub mod validation;

#[cfg(feature = "client")]
pub use client::FhirClient;
pub use error::{Cause, Error, Result};
pub use format::Format;
pub use outcome::{IssueType, OperationOutcome};
#[cfg(feature = "server")]
pub use server::{AllowListEntry, FhirServer, Identity, LocalUser, ServerConfig};
#[cfg(feature = "store")]
pub use store::{ResourceStore, StoredResource, WriteOp, WriteOutcome};
