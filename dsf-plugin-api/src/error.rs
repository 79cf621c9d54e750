use thiserror::Error;

/// A plugin definition that cannot be deployed, or a plugin file that stopped serving its BPE.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    #[error("reading from the BPE: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing to the BPE: {0}")]
    Write(#[source] std::io::Error),
    #[error("the BPE sent something that is not a protocol message: {0}")]
    Garbage(#[source] serde_json::Error),
    #[error("the BPE spoke before its hello, or closed without one")]
    NoHello,
    #[error("the BPE speaks plugin protocol version {0}; this plugin speaks {1}")]
    ProtocolVersion(u32, u32),
    #[error("plugin version '{0}' is not major.minor.patch.build (e.g. 1.0.1.0)")]
    Version(String),
    #[error("plugin release date '{0}' is not yyyy-mm-dd")]
    ReleaseDate(String),
    #[error("plugin name must not be empty")]
    Name,
    #[error("{file}: placeholder {name} has no value (set the environment variable {variable})")]
    Placeholder {
        file: String,
        name: String,
        variable: String,
    },
}

/// How a handler ends other than normally.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// A BPMN error, caught by an error boundary event with this code (the process goes on).
    #[error("BPMN error {code}: {message}")]
    Bpmn { code: String, message: String },
    /// A failure: the instance ends, its Tasks in progress become `failed` with this reason.
    #[error("{0}")]
    Failed(String),
}

impl ProcessError {
    pub fn bpmn(code: impl Into<String>, message: impl Into<String>) -> Self {
        ProcessError::Bpmn {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn failed(reason: impl Into<String>) -> Self {
        ProcessError::Failed(reason.into())
    }
}

impl From<dsf_fhir::Error> for ProcessError {
    fn from(error: dsf_fhir::Error) -> Self {
        ProcessError::Failed(error.to_string())
    }
}

impl From<serde_json::Error> for ProcessError {
    fn from(error: serde_json::Error) -> Self {
        ProcessError::Failed(error.to_string())
    }
}

/// Why a Task could not be delivered to its target.
#[derive(Debug, Clone, PartialEq, Eq, Error, serde::Serialize, serde::Deserialize)]
#[error("{message}")]
pub struct SendError {
    /// The HTTP status the target answered with, if it answered.
    pub status: Option<u16>,
    pub message: String,
}

impl SendError {
    /// The target refused the Task (403): the process authorization does not allow it.
    pub fn is_not_allowed(&self) -> bool {
        self.status == Some(403)
    }

    /// The target was not reached or could not store the Task (any answer but 403).
    pub fn is_not_reachable(&self) -> bool {
        !self.is_not_allowed()
    }
}

/// The message of a panic caught in handler code (`&str` and `String` payloads), for the
/// failure it becomes.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}
