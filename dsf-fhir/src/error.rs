use crate::outcome::{IssueType, OperationOutcome};

/// Everything that can go wrong in dsf-fhir. Each variant knows the HTTP status and the
/// OperationOutcome issue type it is reported with, so the REST layer maps them in one place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{resource} was deleted")]
    Gone { resource: String, version: i64 },
    #[error("{0}")]
    VersionConflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("request body larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("duplicate resource exists: {0}")]
    Duplicate(String),
    /// A fault of this server's storage. The text is for the log: clients are told only
    /// that the request failed, never database details.
    #[error("storage: {0}")]
    Storage(String),
    /// The database cannot be reached, or did not answer in time: try again later (503
    /// with `Retry-After`).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Transport(String),
    /// A peer answered with a server error (5xx).
    #[error("server error {status}: {message}")]
    Server { status: u16, message: String },
    #[error("{0}")]
    Timeout(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::Invalid(_) => 400,
            Error::NotSupported(_) => 400,
            Error::NotFound(_) => 404,
            Error::Gone { .. } => 410,
            Error::VersionConflict(_) => 412,
            Error::PreconditionFailed(_) => 412,
            Error::MethodNotAllowed(_) => 405,
            Error::UnsupportedMediaType(_) => 415,
            Error::NotAcceptable(_) => 406,
            Error::PayloadTooLarge(_) => 413,
            Error::Unauthenticated(_) => 401,
            Error::Forbidden(_) => 403,
            // The Java DSF answers a unique-constraint violation with 403.
            Error::Duplicate(_) => 403,
            Error::Storage(_) | Error::Transport(_) => 500,
            Error::Server { status, .. } => *status,
            Error::Timeout(_) => 504,
            Error::Unavailable(_) => 503,
        }
    }

    pub fn issue_type(&self) -> IssueType {
        match self {
            Error::Invalid(_) => IssueType::Invalid,
            Error::NotSupported(_) | Error::MethodNotAllowed(_) => IssueType::NotSupported,
            Error::NotFound(_) => IssueType::NotFound,
            Error::Gone { .. } => IssueType::Deleted,
            Error::VersionConflict(_) | Error::PreconditionFailed(_) => IssueType::Conflict,
            Error::UnsupportedMediaType(_) | Error::NotAcceptable(_) => IssueType::NotSupported,
            Error::PayloadTooLarge(_) => IssueType::TooCostly,
            Error::Unauthenticated(_) => IssueType::Login,
            Error::Forbidden(_) => IssueType::Forbidden,
            Error::Duplicate(_) => IssueType::Duplicate,
            Error::Storage(_) | Error::Transport(_) | Error::Server { .. } => IssueType::Exception,
            Error::Timeout(_) => IssueType::Timeout,
            Error::Unavailable(_) => IssueType::Transient,
        }
    }

    /// The OperationOutcome a client is shown. Storage faults say no more than that they
    /// happened; their detail goes to the log.
    pub fn to_outcome(&self) -> OperationOutcome {
        let text = match self {
            Error::Storage(_) => "the server could not complete the request; see its log".into(),
            other => other.to_string(),
        };
        OperationOutcome::error(self.issue_type(), text)
    }

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
            other => other,
        }
    }

    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        Error::Storage(e.to_string())
    }
}
