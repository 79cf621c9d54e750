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
//! - `conformance`: the conformance suite for storage backends written elsewhere.
//!
//! `client` and `server` are the default.

pub mod bounds;
#[cfg(feature = "client")]
pub mod client;
pub mod date;
mod error;
pub mod format;
mod outcome;
pub mod resource_type;

#[cfg(feature = "store")]
pub mod access;
#[cfg(feature = "store")]
pub mod search;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "store")]
pub mod store;

#[cfg(feature = "client")]
pub use client::FhirClient;
pub use error::{Error, Result};
pub use format::Format;
pub use outcome::{IssueType, OperationOutcome};
#[cfg(feature = "server")]
pub use server::{AllowListEntry, FhirServer, Identity, LocalUser, ServerConfig};
#[cfg(feature = "store")]
pub use store::{ResourceStore, StoredResource, WriteOp, WriteOutcome};
