//! The DSF FHIR server as a library: R4 resources (parsed and validated with fhirbolt), a
//! versioned resource store with SQLite and PostgreSQL backends, FHIR search, and the REST API
//! served over mutual TLS, where the client certificate's thumbprint is the caller's identity.
//!
//! It knows nothing of BPMN; the BPE (`dsf-engine`) talks to it as a client.
//!
//! Cargo features choose the parts: the client, resource parsing and the error types are
//! always there; `store` adds the versioned store with its SQLite and PostgreSQL backends and
//! search; `server` (default, implies `store`) adds the REST API, authorization and
//! websockets. A client-only build (`default-features = false`) links neither database.

pub mod bounds;
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

pub use client::FhirClient;
pub use error::{Error, Result};
pub use format::Format;
pub use outcome::{IssueType, OperationOutcome};
#[cfg(feature = "server")]
pub use server::{AllowListEntry, FhirServer, Identity, LocalUser, ServerConfig};
#[cfg(feature = "store")]
pub use store::{ResourceStore, StoredResource, WriteOp, WriteOutcome};
