use std::path::PathBuf;

/// Errors of certificate and TLS handling, and of filling placeholders.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    #[error("no private key found in {0}")]
    NoPrivateKey(String),
    #[error("invalid PEM in {what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("certificate generation: {0}")]
    Generation(#[from] rcgen::Error),
    /// A placeholder with no value and no default.
    #[error("placeholder {name} has no value (set the environment variable {variable})")]
    Placeholder { name: String, variable: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
