/// Everything that can go wrong in dsf-fhir. The server maps each variant to the HTTP status
/// and OperationOutcome issue type it answers with (`server::reply`, the one place that knows
/// HTTP statuses of errors); the client maps the statuses of answers it receives back to
/// variants.
///
/// A storage or transport error keeps the lower-level error it came from as its
/// [`source`](std::error::Error::source) and does not repeat it in its message: print it with
/// [`dsf_core::ErrorChain`] to see the whole chain.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Malformed input: a body, a parameter, a reference (400).
    #[error("{0}")]
    Invalid(String),
    /// Well-formed, but this server does not do it: an unknown search parameter or
    /// resource type (400).
    #[error("{0}")]
    NotSupported(String),
    /// No such resource or version, or none the caller may see (404).
    #[error("{0}")]
    NotFound(String),
    /// The resource was deleted (410).
    #[error("{resource} was deleted")]
    Gone {
        /// `Type/id`.
        resource: String,
        /// The version the delete wrote (its ETag).
        version: i64,
    },
    /// `If-Match` named a version that is not the current one (412).
    #[error("{0}")]
    VersionConflict(String),
    /// A conditional write's search found more than one match, or another precondition
    /// failed (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The interaction is not allowed on this path (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body's content type is not one this server reads (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The `Accept` header asks for a format this server does not write (406).
    #[error("{0}")]
    NotAcceptable(String),
    /// The body is larger than the limit, in bytes (413).
    #[error("request body larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// No or an unknown client certificate (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// A resource that must be unique exists already (403, as the Java DSF answers).
    #[error("duplicate resource exists: {0}")]
    Duplicate(String),
    /// The resource breaks its type's or its profiles' rules (each named with its location).
    #[error("resource not valid: {0}")]
    ProfileViolation(String),
    /// A fault of this server's storage. The text is for the log: clients are told only
    /// that the request failed, never database details.
    #[error("storage{}", colon_before(message))]
    Storage {
        /// What failed, at the store's level; may be empty when the cause says it all.
        message: String,
        /// The database's or serialiser's own error, where there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// The database cannot be reached, or did not answer in time: try again later (503
    /// with `Retry-After`).
    #[error("{0}")]
    Unavailable(String),
    /// The request did not reach the peer or its answer did not come back (connection,
    /// TLS, HTTP framing).
    #[error("{}", if message.is_empty() { "HTTP exchange failed" } else { message })]
    Transport {
        /// What failed (`connect b.dsf.test:443`); empty when the cause says it all.
        message: String,
        /// The connection's, TLS's or HTTP's own error, where there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// A peer answered with a server error (5xx).
    #[error("server error {status}: {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The OperationOutcome's diagnostics, or the body's start.
        message: String,
    },
    /// A request or the database took longer than allowed (504).
    #[error("{0}")]
    Timeout(String),
}

/// A result with this crate's [`Error`](enum@Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The lower-level error an [`Error`] came from, kept for `source()` chains (shared, so that
/// errors stay cheap to clone).
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

impl Error {
    /// The same error with `context` before its message (e.g. which Bundle entry failed).
    pub fn context(self, context: &str) -> Self {
        let with = |m: String| format!("{context}: {m}");
        match self {
            Error::Invalid(m) => Error::Invalid(with(m)),
            Error::NotSupported(m) => Error::NotSupported(with(m)),
            Error::NotFound(m) => Error::NotFound(with(m)),
            Error::VersionConflict(m) => Error::VersionConflict(with(m)),
            Error::PreconditionFailed(m) => Error::PreconditionFailed(with(m)),
            Error::MethodNotAllowed(m) => Error::MethodNotAllowed(with(m)),
            Error::Forbidden(m) => Error::Forbidden(with(m)),
            Error::Duplicate(m) => Error::Duplicate(with(m)),
            Error::ProfileViolation(m) => Error::ProfileViolation(with(m)),
            other => other,
        }
    }

    /// A storage fault caused by `e`, which stays the error's source.
    pub fn storage(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Storage {
            message: String::new(),
            cause: Some(std::sync::Arc::new(e)),
        }
    }

    /// A storage fault described by `message` alone.
    pub fn storage_fault(message: impl Into<String>) -> Self {
        Error::Storage {
            message: message.into(),
            cause: None,
        }
    }

    /// A transport failure caused by `e`, which stays the error's source.
    pub fn transport(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::transport_in(String::new(), e)
    }

    /// A transport failure while doing `what` (e.g. `connect host:443`), caused by `e`, which
    /// stays the error's source.
    pub fn transport_in(
        what: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Transport {
            message: what.into(),
            cause: Some(std::sync::Arc::new(e)),
        }
    }

    /// A transport failure described by `message` alone.
    pub fn transport_fault(message: impl Into<String>) -> Self {
        Error::Transport {
            message: message.into(),
            cause: None,
        }
    }
}

/// `": message"`, or nothing for an empty message.
fn colon_before(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsf_core::ErrorChain;

    #[test]
    fn a_transport_error_names_what_failed_and_keeps_its_cause_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = Error::transport_in("connect peer:443", refused);
        assert_eq!(error.to_string(), "connect peer:443");
        let source = std::error::Error::source(&error).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("refused"));
        assert_eq!(ErrorChain(&error).to_string(), "connect peer:443: refused");
    }

    #[test]
    fn a_storage_error_from_a_cause_prints_the_cause_only_in_the_chain() {
        let error = Error::storage(std::io::Error::other("disk full"));
        assert_eq!(error.to_string(), "storage");
        assert_eq!(ErrorChain(&error).to_string(), "storage: disk full");
        assert_eq!(
            Error::storage_fault("no row").to_string(),
            "storage: no row"
        );
    }
}
