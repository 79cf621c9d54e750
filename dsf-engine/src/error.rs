use thiserror::Error;

/// What can stop the BPE, or a plugin's deployment.
///
/// Each variant says what failed here and keeps the error it came from as its
/// [`source`](std::error::Error::source); print it with [`dsf_core::ErrorChain`] to see why.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The local FHIR server refused or failed a request the BPE needs.
    #[error("FHIR server")]
    Fhir(#[from] dsf_fhir::Error),
    /// A plugin cannot be deployed; the message names its file and element.
    #[error("plugin {plugin}: {message}")]
    Plugin {
        /// The plugin's name and version, or its file when it announced neither.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// The state database failed.
    #[error("BPE state database")]
    Database(#[from] rusqlite::Error),
    /// The PostgreSQL state database failed.
    #[cfg(feature = "postgres")]
    #[error("BPE state database")]
    Postgres(#[from] tokio_postgres::Error),
    /// The state database cannot be reached now (no pooled connection in time).
    #[error("BPE state database unavailable: {0}")]
    Unavailable(String),
    /// Another BPE sharing the state database took over the work this one was doing (its
    /// lease had expired); what this one did is not written.
    #[error("BPE state: fenced: {0}")]
    Fenced(String),
    /// The state database's worker thread stopped (it panicked or the runtime shut down).
    #[error("BPE state database worker")]
    DatabaseWorker(#[from] tokio::task::JoinError),
    /// Stored state cannot be read or written as JSON; `what` names it (e.g. `stored
    /// instance`).
    #[error("BPE state: {what}")]
    StoredData {
        /// What was read or written (`stored instance`).
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Stored state this BPE cannot use, with why (e.g. a format it has no migration for).
    #[error("BPE state: {0}")]
    State(String),
    /// Settings or a set-up that cannot work (a malformed process list, the local organisation
    /// not found on the FHIR server, plugin resources the server refused).
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// A JSON fault of the stored state `what`.
    pub(crate) fn stored_data(what: &'static str) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| Error::StoredData { what, source }
    }
}

/// A result with this crate's [`Error`](enum@Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;
