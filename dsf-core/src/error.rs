use std::path::PathBuf;

/// Errors of certificate and TLS handling, and of filling placeholders.
///
/// Like every error of dsf-rs, its message says what failed at this layer and leaves the
/// cause to [`source`](std::error::Error::source); print the whole chain with [`ErrorChain`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file cannot be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// PEM text (named by the text) holds no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    /// PEM text (named by the text) holds no private key.
    #[error("no private key found in {0}")]
    NoPrivateKey(String),
    /// PEM text that does not parse.
    #[error("invalid PEM in {what}: {reason}")]
    Pem {
        /// The file or text it came from.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match its certificate, say).
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    /// The client certificate verifier cannot be built (no usable CA certificate).
    #[error("client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A development certificate cannot be generated.
    #[error("certificate generation")]
    Generation(#[from] rcgen::Error),
    /// A placeholder with no value and no default.
    #[error("placeholder {name} has no value (set the environment variable {variable})")]
    Placeholder {
        /// The placeholder's name, as written between `${` and `}`.
        name: String,
        /// The environment variable that would give it a value.
        variable: String,
    },
}

/// The result of dsf-core's fallible functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line, outermost first, separated by `": "`: how logs and
/// the binaries print an error (`tracing::warn!(error = %ErrorChain(&e), ...)`).
///
/// Errors of dsf-rs keep their cause as their `source()` instead of repeating its text, so
/// `Display` of the error alone says only what failed at the outermost layer. A cause whose
/// text is already the end of the line printed so far (an error of another crate that
/// repeats its source) is left out.
///
/// ```
/// use dsf_core::ErrorChain;
///
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
/// let error = dsf_core::Error::Io { path: "ca.pem".into(), source: io };
/// assert_eq!(ErrorChain(&error).to_string(), "cannot read ca.pem: no such file");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut printed = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !text.is_empty() && !printed.ends_with(&text) {
                if !printed.is_empty() {
                    printed.push_str(": ");
                }
                printed.push_str(&text);
            }
            cause = error.source();
        }
        f.write_str(&printed)
    }
}

impl std::fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Repeating);

    /// An error of another crate that repeats its source in its own message.
    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Repeating(#[source] std::io::Error);

    #[test]
    fn a_chain_prints_each_cause_once_outermost_first() {
        let io = std::io::Error::other("disk full");
        let error = Outer(Repeating(io));
        assert_eq!(ErrorChain(&error).to_string(), "outer: middle: disk full");
    }

    #[test]
    fn an_error_without_cause_prints_alone() {
        let error = Error::NoCertificate("a.pem".into());
        assert_eq!(
            ErrorChain(&error).to_string(),
            "no certificate found in a.pem"
        );
    }
}
