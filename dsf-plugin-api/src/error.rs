use dsf_core::ErrorChain;
use thiserror::Error;

/// A plugin definition that cannot be deployed, or a plugin file that stopped serving its BPE.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the BPE's messages (the plugin file's standard input) failed.
    #[error("reading from the BPE: {0}")]
    Read(#[source] std::io::Error),
    /// Writing to the BPE (standard output) failed.
    #[error("writing to the BPE: {0}")]
    Write(#[source] std::io::Error),
    /// A frame from the BPE is not a protocol message.
    #[error("the BPE sent something that is not a protocol message: {0}")]
    Garbage(#[source] serde_json::Error),
    /// The BPE's first message was not its hello.
    #[error("the BPE spoke before its hello, or closed without one")]
    NoHello,
    /// The BPE's protocol version (first) is not this crate's (second).
    #[error("the BPE speaks plugin protocol version {0}; this plugin speaks {1}")]
    ProtocolVersion(u32, u32),
    /// The plugin version is not `major.minor.patch.build`.
    #[error("plugin version '{0}' is not major.minor.patch.build (e.g. 1.0.1.0)")]
    Version(String),
    /// The release date is not `yyyy-mm-dd`.
    #[error("plugin release date '{0}' is not yyyy-mm-dd")]
    ReleaseDate(String),
    /// The plugin has no name.
    #[error("plugin name must not be empty")]
    Name,
    /// A placeholder in a FHIR file has no value.
    #[error("{file}: placeholder {name} has no value (set the environment variable {variable})")]
    Placeholder {
        /// The plugin file the placeholder is in.
        file: String,
        /// The placeholder (`${dev.dsf.…}`) without a value.
        name: String,
        /// The environment variable that would give it one.
        variable: String,
    },
}

/// How a handler ends other than normally: what plugin code returns.
///
/// Unlike the engine's `dsf_bpmn::engine::HandlerError`, which holds the text the engine
/// stores with the instance, a failure here keeps the error it came from (a FHIR request, a
/// JSON value of the wrong shape) as its [`source`](std::error::Error::source). The BPE turns
/// the whole chain into the failure reason, so `Display` alone says only what failed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// A BPMN error, caught by an error boundary event with this code (the process goes on).
    #[error("BPMN error {code}: {message}")]
    Bpmn {
        /// The error code boundary events are matched by.
        code: String,
        /// What happened, for the log.
        message: String,
    },
    /// A failure: the instance ends, its Tasks in progress become `failed` with this reason
    /// (followed by the cause's).
    #[error("{reason}")]
    Failed {
        /// What failed, at the handler's level.
        reason: String,
        /// The error behind it, if any.
        #[source]
        cause: Option<dsf_fhir::Cause>,
    },
}

impl ProcessError {
    /// A BPMN error: an error boundary event with this `code` catches it.
    pub fn bpmn(code: impl Into<String>, message: impl Into<String>) -> Self {
        ProcessError::Bpmn {
            code: code.into(),
            message: message.into(),
        }
    }

    /// A failure with no error behind it: the instance ends and its Tasks fail with `reason`.
    pub fn failed(reason: impl Into<String>) -> Self {
        ProcessError::Failed {
            reason: reason.into(),
            cause: None,
        }
    }

    /// A failure while doing `reason` (e.g. `reading the Endpoint`), caused by `cause`.
    pub fn failed_by(
        reason: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ProcessError::Failed {
            reason: reason.into(),
            cause: Some(std::sync::Arc::new(cause)),
        }
    }

    /// The error with its causes on one line: the reason a failed Task is given.
    pub fn describe(&self) -> String {
        ErrorChain(self).to_string()
    }
}

/// Equal when of the same kind with the same text, causes included.
impl PartialEq for ProcessError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                ProcessError::Bpmn { code, message },
                ProcessError::Bpmn {
                    code: other_code,
                    message: other_message,
                },
            ) => code == other_code && message == other_message,
            (ProcessError::Failed { .. }, ProcessError::Failed { .. }) => {
                self.describe() == other.describe()
            }
            _ => false,
        }
    }
}

impl Eq for ProcessError {}

impl From<dsf_fhir::Error> for ProcessError {
    fn from(error: dsf_fhir::Error) -> Self {
        ProcessError::failed_by("FHIR request", error)
    }
}

impl From<serde_json::Error> for ProcessError {
    fn from(error: serde_json::Error) -> Self {
        ProcessError::failed_by("JSON", error)
    }
}

/// Why a Task could not be delivered to its target.
#[derive(Debug, Clone, PartialEq, Eq, Error, serde::Serialize, serde::Deserialize)]
#[error("{message}")]
pub struct SendError {
    /// The HTTP status the target answered with, if it answered.
    pub status: Option<u16>,
    /// What went wrong, for the log and the Task's error output.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_from_a_fhir_error_keeps_it_and_describes_the_whole_chain() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = ProcessError::from(dsf_fhir::Error::transport_in("connect b:443", refused));
        assert_eq!(error.to_string(), "FHIR request");
        let source = std::error::Error::source(&error).expect("the FHIR error is kept");
        assert_eq!(source.to_string(), "connect b:443");
        assert_eq!(error.describe(), "FHIR request: connect b:443: refused");
    }

    #[test]
    fn failures_are_equal_by_their_whole_text() {
        let json = || serde_json::from_str::<u8>("x").expect_err("not a number");
        assert_eq!(ProcessError::from(json()), ProcessError::from(json()));
        assert_ne!(ProcessError::from(json()), ProcessError::failed("JSON"));
        assert_ne!(ProcessError::failed("a"), ProcessError::bpmn("a", "a"));
    }
}
