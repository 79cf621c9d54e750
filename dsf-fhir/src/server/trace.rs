//! What handling one request learns for its audit record: who called, why each step was
//! allowed, why it was refused. Noted through a task-local so that the authorization rules
//! deep in the call chain need no extra parameter; where no request is traced (the audit
//! log is off, or an embedder calls [`FhirServer::handle`](super::FhirServer::handle)
//! directly) noting does nothing.

use super::Identity;
use crate::Error;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// Reasons kept per request; a Bundle of thousands of entries must not make a record of
/// megabytes.
const MAX_REASONS: usize = 16;
/// Characters kept of one reason.
const MAX_REASON_CHARS: usize = 400;

/// What was noted of one request.
#[derive(Debug, Default)]
pub(crate) struct Noted {
    /// SHA-512 thumbprint of the client certificate presented, if one was.
    pub thumbprint: Option<String>,
    pub identity: Option<Arc<Identity>>,
    /// Why steps were allowed, in order.
    pub allowed: Vec<String>,
    /// Why the request (or a Bundle entry) was refused or failed, in order.
    pub refused: Vec<String>,
    /// Reasons left out beyond [`MAX_REASONS`].
    pub left_out: usize,
}

tokio::task_local! {
    static CURRENT: Arc<Mutex<Noted>>;
}

/// Runs `handling` with noting on; returns its output and what was noted.
pub(crate) async fn traced<F: Future>(handling: F) -> (F::Output, Noted) {
    let noted = Arc::new(Mutex::new(Noted::default()));
    let output = CURRENT.scope(noted.clone(), handling).await;
    let noted = std::mem::take(&mut *noted.lock().unwrap_or_else(|p| p.into_inner()));
    (output, noted)
}

fn with(note: impl FnOnce(&mut Noted)) {
    let _ = CURRENT.try_with(|noted| note(&mut noted.lock().unwrap_or_else(|p| p.into_inner())));
}

/// Whether a request is being traced: callers skip formatting a reason when it is not.
pub(crate) fn active() -> bool {
    CURRENT.try_with(|_| ()).is_ok()
}

fn push(list: impl FnOnce(&mut Noted) -> &mut Vec<String>, reason: String, noted: &mut Noted) {
    // The same check made twice (before and inside a write's transaction) is one reason.
    if noted.allowed.contains(&reason) || noted.refused.contains(&reason) {
        return;
    }
    if noted.allowed.len() + noted.refused.len() >= MAX_REASONS {
        noted.left_out += 1;
        return;
    }
    let reason = match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &reason[..cut]),
        None => reason,
    };
    list(noted).push(reason);
}

/// The client certificate presented.
pub(crate) fn certificate(thumbprint: &dsf_core::Thumbprint) {
    with(|noted| noted.thumbprint = Some(thumbprint.as_str().to_owned()));
}

/// The caller, once known.
pub(crate) fn identity(identity: &Arc<Identity>) {
    with(|noted| noted.identity = Some(identity.clone()));
}

/// A step was allowed because of `reason` (formatted only when traced).
pub(crate) fn allowed(reason: impl FnOnce() -> String) {
    if active() {
        let reason = reason();
        with(|noted| push(|n| &mut n.allowed, reason, noted));
    }
}

/// The request, or a part of it, was refused or failed with `error`.
pub(crate) fn refused(error: &Error) {
    if active() {
        let reason = audit_reason(error);
        with(|noted| push(|n| &mut n.refused, reason, noted));
    }
}

/// An error as an audit record gives it: what was refused and why, but never resource
/// content. Messages about a body's content (parse errors, profile violations, duplicates
/// naming the clashing values) and database details are reduced to their kind.
fn audit_reason(error: &Error) -> String {
    match error {
        Error::Invalid(_) => "invalid request (the message is in the response only)".into(),
        Error::ProfileViolation(_) => "resource not valid against its profiles".into(),
        Error::Duplicate(_) => "a resource with the same unique values exists".into(),
        Error::Storage { .. } => "storage fault".into(),
        Error::Transport { .. } | Error::Server { .. } => "upstream exchange failed".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_reach_the_traced_request_only_and_are_bounded() {
        allowed(|| unreachable!("not formatted outside a traced request"));
        let ((), noted) = traced(async {
            allowed(|| "role READ".into());
            refused(&Error::Forbidden("not yours".into()));
            refused(&Error::Invalid("status 'secret value' unknown".into()));
            allowed(|| "role READ".into());
            for n in 0..40 {
                allowed(|| format!("{n}{}", "x".repeat(1000)));
            }
        })
        .await;
        assert_eq!(noted.allowed[0], "role READ");
        assert_eq!(noted.refused[0], "not yours");
        assert!(!noted.refused[1].contains("secret"), "{:?}", noted.refused);
        assert_eq!(noted.allowed.len() + noted.refused.len(), MAX_REASONS);
        assert_eq!(noted.left_out, 40 - (MAX_REASONS - 3));
        assert!(noted.allowed[1].chars().count() <= MAX_REASON_CHARS + 1);
    }
}
