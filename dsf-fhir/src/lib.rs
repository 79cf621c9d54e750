//! The DSF FHIR server as a library: R4 resources (parsed and validated with fhirbolt), a
//! versioned resource store with SQLite and PostgreSQL backends, FHIR search, and the REST API
//! served over mutual TLS, where the client certificate's thumbprint is the caller's identity.
//!
//! It knows nothing of BPMN; the BPE (`dsf-engine`) talks to it as a client.

pub mod access;
pub mod bounds;
pub mod client;
mod error;
pub mod format;
mod outcome;
pub mod resource_type;
pub mod search;
pub mod store;

pub use error::{Error, Result};
pub use format::Format;
pub use outcome::{IssueType, OperationOutcome};
pub use store::{ResourceStore, StoredResource, WriteOp, WriteOutcome};
pub mod server;

pub use client::FhirClient;
pub use server::{AllowListEntry, FhirServer, Identity, LocalUser, ServerConfig};
