use thiserror::Error;

/// What can stop the BPE, or a plugin's deployment.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The local FHIR server refused or failed a request the BPE needs.
    #[error("FHIR server: {0}")]
    Fhir(#[from] dsf_fhir::Error),
    /// A plugin cannot be deployed; the message names its file and element.
    #[error("plugin {plugin}: {message}")]
    Plugin { plugin: String, message: String },
    /// The state database failed.
    #[error("BPE state: {0}")]
    State(String),
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
