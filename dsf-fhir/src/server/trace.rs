//! What handling one request learns for its audit record: who called, why each step was
//! allowed, why it was refused. Noted through a task-local so that the authorization rules
//! deep in the call chain need no extra parameter; where no request is traced (the audit
//! log is off, or an embedder calls [`FhirServer::handle`](super::FhirServer::handle)
//! directly) noting does nothing.

use super::interaction::Interaction;
use super::Identity;
use crate::Error;
use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

/// Reasons kept per request; a Bundle of thousands of entries must not make a record of
/// megabytes.
const MAX_REASONS: usize = 16;
/// Characters kept of one reason.
const MAX_REASON_CHARS: usize = 400;

/// Why a step was allowed or refused. The common ones are kept unformatted: the audit
/// record's line ([`super::audit`]) writes their sentences straight into the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A sentence known in advance.
    Fixed(&'static str),
    /// The caller holds `role` for `resource_type` (both the crate's own words: nothing to
    /// allocate, nothing to escape).
    Role {
        role: &'static str,
        resource_type: &'static str,
    },
    /// A sentence made for this request.
    Text(String),
}

impl From<&'static str> for Reason {
    fn from(sentence: &'static str) -> Self {
        Reason::Fixed(sentence)
    }
}

impl From<String> for Reason {
    fn from(sentence: String) -> Self {
        Reason::Text(sentence)
    }
}

/// What was noted of one request.
#[derive(Debug, Default)]
pub(crate) struct Noted {
    /// SHA-512 thumbprint of the client certificate presented, if one was.
    pub thumbprint: Option<dsf_core::Thumbprint>,
    /// The caller last noted: kept from one request of a connection to the next (see
    /// [`Noted::note_identity`]), this request's only if `identity_noted`.
    identity: Option<Arc<Identity>>,
    identity_noted: bool,
    /// Why steps were allowed, in order.
    pub allowed: Vec<Reason>,
    /// Why the request (or a Bundle entry) was refused or failed, in order.
    pub refused: Vec<Reason>,
    /// Reasons left out beyond [`MAX_REASONS`].
    pub left_out: usize,
    /// What the router made of the request's path, if the request got that far.
    pub routed: Option<Routed>,
}

/// The interaction the router chose for a request, and how much of its path (below the base
/// URL's path) names the resource: `Task` of `Task?status=…`, `Task/1` of `Task/1/_history`.
/// The audit record and the request metrics take it rather than reading the path again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Routed {
    pub interaction: Interaction,
    /// Bytes of the path that name the resource (0 for none).
    pub named: usize,
}

/// The part of a connection's audit records that all its requests share (the peer's
/// address and who asked), as the audit log formatted it last. Kept with the trace so that
/// it lives as long as the connection; the audit log's `line` module fills it in and
/// formats it anew only when the caller changes.
#[derive(Default)]
pub(crate) struct RecordHead {
    /// What `json` was formatted from.
    pub formatted_for: Option<HeadKey>,
    /// `,"peer":"…","identity":{…}`.
    pub json: Vec<u8>,
}

/// What a [`RecordHead`] was formatted from.
pub(crate) struct HeadKey {
    pub peer: Option<std::net::SocketAddr>,
    pub identity: Option<Arc<Identity>>,
    pub thumbprint: Option<dsf_core::Thumbprint>,
}

/// What a traced task keeps: the notes of the request at hand, and the part its audit
/// records share (for a connection, formatted once for all its requests).
#[derive(Default)]
pub(crate) struct Trace {
    pub noted: Noted,
    pub head: RecordHead,
}

tokio::task_local! {
    // Boxed: the task-local is swapped in and out on every poll of the task, and a pointer
    // is cheaper to swap than the notes.
    static CURRENT: Box<RefCell<Trace>>;
}

/// Runs `handling` with noting on; returns its output and the trace.
pub(crate) async fn traced<F: Future>(handling: F) -> (F::Output, Trace) {
    let handling = CURRENT.scope(Box::default(), handling);
    let mut handling = std::pin::pin!(handling);
    let output = handling.as_mut().await;
    let trace = handling
        .take_value()
        .map(|trace| trace.into_inner())
        .unwrap_or_default();
    (output, trace)
}

/// Runs `connection`, a task that serves requests one after the other (as an HTTP/1.1
/// connection does), with noting on for all of them: each request clears the notes with
/// [`restart`] and reads them with [`finish`]. Cheaper than [`traced`] per request, which
/// wraps (and moves) every request's handling.
pub(crate) async fn for_connection<F: Future>(connection: F) -> F::Output {
    CURRENT.scope(Box::default(), connection).await
}

/// Starts noting afresh for the next request of a connection run by [`for_connection`];
/// false outside one. The lists keep their room, so a request notes without allocating.
pub(crate) fn restart() -> bool {
    CURRENT
        .try_with(|trace| {
            if let Ok(mut trace) = trace.try_borrow_mut() {
                trace.noted.clear();
            }
        })
        .is_ok()
}

/// Hands what was noted since [`restart`] and the connection's record head to `read`. The
/// notes stay until the next request's [`restart`] clears them (once per request, and also
/// after a request whose handling was dropped before it finished). Outside a connection run
/// by [`for_connection`] `read` gets empty notes: a record without its reasons beats none.
pub(crate) fn finish<R>(read: impl FnOnce(&Noted, &mut RecordHead) -> R) -> R {
    if !active() {
        return read(&Noted::default(), &mut RecordHead::default());
    }
    // Read where they lie: nothing moved, and the lists keep their room once cleared.
    CURRENT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut trace) => {
            let Trace { noted, head } = &mut *trace;
            read(noted, head)
        }
        Err(_) => read(&Noted::default(), &mut RecordHead::default()),
    })
}

impl Noted {
    /// The caller, if this request noted one.
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        self.identity.as_ref().filter(|_| self.identity_noted)
    }

    /// Notes `identity` as the caller. A connection's requests come from one caller, whose
    /// identity is shared by every connection of theirs: keeping it rather than cloning it
    /// for each request spares a count that all threads write to.
    pub fn note_identity(&mut self, identity: &Arc<Identity>) {
        if !self
            .identity
            .as_ref()
            .is_some_and(|kept| Arc::ptr_eq(kept, identity))
        {
            self.identity = Some(identity.clone());
        }
        self.identity_noted = true;
    }

    /// Forgets what was noted, keeping the lists' room (and the caller, unnoted).
    fn clear(&mut self) {
        self.thumbprint = None;
        self.identity_noted = false;
        self.allowed.clear();
        self.refused.clear();
        self.left_out = 0;
        self.routed = None;
    }
}

/// Applies `note` to the notes of the traced request at hand, if there is one. One copy for
/// all kinds of note (`dyn`, not generic): a request notes several times, and each copy of
/// the task-local's access would be more code to fetch per request.
#[inline(never)]
fn with(note: &mut dyn FnMut(&mut Noted)) {
    let _ = CURRENT.try_with(|trace| {
        // Noting never calls back into noting, so the cell is never borrowed twice; should
        // that change, the note is dropped rather than the request failed.
        if let Ok(mut trace) = trace.try_borrow_mut() {
            note(&mut trace.noted);
        }
    });
}

/// [`with`] for a note made once.
fn with_once(note: impl FnOnce(&mut Noted)) {
    let mut note = Some(note);
    with(&mut |noted| {
        if let Some(note) = note.take() {
            note(noted)
        }
    });
}

/// Whether this task is traced.
fn active() -> bool {
    CURRENT.try_with(|_| ()).is_ok()
}

fn push(list: impl FnOnce(&mut Noted) -> &mut Vec<Reason>, reason: Reason, noted: &mut Noted) {
    let first = noted.allowed.is_empty() && noted.refused.is_empty();
    // The same check made twice (before and inside a write's transaction) is one reason.
    if !first && (noted.allowed.contains(&reason) || noted.refused.contains(&reason)) {
        return;
    }
    if noted.allowed.len() + noted.refused.len() >= MAX_REASONS {
        noted.left_out += 1;
        return;
    }
    let reason = match reason {
        Reason::Text(text) => Reason::Text(match text.char_indices().nth(MAX_REASON_CHARS) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }),
        other => other,
    };
    list(noted).push(reason);
}

/// The client certificate presented.
pub(crate) fn certificate(thumbprint: dsf_core::Thumbprint) {
    with_once(|noted| noted.thumbprint = Some(thumbprint));
}

/// The caller, once known.
pub(crate) fn identity(identity: &Arc<Identity>) {
    with(&mut |noted| noted.note_identity(identity));
}

/// A step was allowed because of `reason` (formatted only when traced).
pub(crate) fn allowed(reason: impl FnOnce() -> Reason) {
    with_once(|noted| push(|n| &mut n.allowed, reason(), noted));
}

/// The request, or a part of it, was refused or failed with `error`.
pub(crate) fn refused(error: &Error) {
    with(&mut |noted| push(|n| &mut n.refused, audit_reason(error), noted));
}

/// The router chose `interaction` for the request, whose path names its resource in its
/// first `named` bytes. The first note of a request counts: the requests the router makes
/// on its behalf (a transaction's entries, a page's action) are not the request.
pub(crate) fn routed(interaction: Interaction, named: usize) {
    with(&mut |noted| {
        noted.routed.get_or_insert(Routed { interaction, named });
    });
}

/// An error as an audit record gives it: what was refused and why, but never resource
/// content. Messages about a body's content (parse errors, profile violations, duplicates
/// naming the clashing values) and database details are reduced to their kind.
fn audit_reason(error: &Error) -> Reason {
    Reason::Fixed(match error {
        Error::Invalid(_) => "invalid request (the message is in the response only)",
        Error::ProfileViolation(_) => "resource not valid against its profiles",
        Error::Duplicate(_) => "a resource with the same unique values exists",
        Error::Storage { .. } => "storage fault",
        Error::Transport { .. } | Error::Server { .. } => "upstream exchange failed",
        other => return Reason::Text(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_reach_the_traced_request_only_and_are_bounded() {
        allowed(|| unreachable!("not formatted outside a traced request"));
        let ((), Trace { noted, .. }) = traced(async {
            allowed(|| "role READ".into());
            refused(&Error::Forbidden("not yours".into()));
            refused(&Error::Invalid("status 'secret value' unknown".into()));
            allowed(|| "role READ".into());
            for n in 0..40 {
                allowed(|| format!("{n}{}", "x".repeat(1000)).into());
            }
            // Notes survive the request's awaits.
            tokio::task::yield_now().await;
            certificate(dsf_core::Thumbprint::of_der(b"certificate"));
        })
        .await;
        assert_eq!(sentence(&noted.allowed[0]), "role READ");
        assert_eq!(sentence(&noted.refused[0]), "not yours");
        let second = sentence(&noted.refused[1]);
        assert!(!second.contains("secret"), "{second}");
        assert_eq!(noted.allowed.len() + noted.refused.len(), MAX_REASONS);
        assert_eq!(noted.left_out, 40 - (MAX_REASONS - 3));
        assert!(sentence(&noted.allowed[1]).chars().count() <= MAX_REASON_CHARS + 1);
        assert!(noted.thumbprint.is_some());
    }

    /// The sentence of a reason noted as one (the role sentence is the audit line's to
    /// write: see its tests).
    fn sentence(reason: &Reason) -> &str {
        match reason {
            Reason::Fixed(sentence) => sentence,
            Reason::Text(sentence) => sentence,
            Reason::Role { .. } => panic!("a role, not a sentence: {reason:?}"),
        }
    }

    #[tokio::test]
    async fn requests_of_one_connection_each_get_their_own_notes() {
        assert!(!restart(), "no connection is traced here");
        let notes = for_connection(async {
            let mut notes = Vec::new();
            for n in 0..3 {
                assert!(restart());
                allowed(|| format!("request {n}").into());
                tokio::task::yield_now().await;
                notes.push(finish(|noted, _| noted.allowed.clone()));
            }
            // Noted after a request was finished: the next request starts without it.
            allowed(|| "late".into());
            assert!(restart());
            notes.push(finish(|noted, _| noted.allowed.clone()));
            notes
        })
        .await;
        for (n, allowed) in notes.iter().take(3).enumerate() {
            assert_eq!(allowed, &vec![Reason::Text(format!("request {n}"))]);
        }
        assert!(notes[3].is_empty());
        // The caller noted by one request is not the next one's unless noted again.
        let caller = |name: &str| {
            Arc::new(Identity::bare(
                super::super::IdentityKind::RemoteOrganization,
                name,
            ))
        };
        let (a, b) = (caller("a.test"), caller("b.test"));
        let callers = for_connection(async {
            let mut callers = Vec::new();
            for noting in [Some(&a), None, Some(&a), Some(&b), None] {
                assert!(restart());
                if let Some(noting) = noting {
                    identity(noting);
                }
                callers.push(finish(|noted, _| noted.identity().map(|i| i.name.clone())));
            }
            callers
        })
        .await;
        let names = |list: [Option<&str>; 5]| list.map(|n| n.map(String::from)).to_vec();
        assert_eq!(
            callers,
            names([Some("a.test"), None, Some("a.test"), Some("b.test"), None])
        );
        // The router's first note of a request counts (not those of the entries it routes
        // on the request's behalf); the next request starts without it.
        let routed = for_connection(async {
            assert!(restart());
            super::routed(Interaction::Bundle, 0);
            super::routed(Interaction::Read, 6);
            let first = finish(|noted, _| noted.routed);
            assert!(restart());
            (first, finish(|noted, _| noted.routed))
        })
        .await;
        assert_eq!(
            routed,
            (
                Some(Routed {
                    interaction: Interaction::Bundle,
                    named: 0
                }),
                None
            )
        );
        // Outside a traced connection the record still gets written, without notes.
        assert!(finish(
            |noted, _| noted.allowed.is_empty() && noted.identity().is_none()
        ));
    }
}
