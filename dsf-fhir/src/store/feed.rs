//! The store's outbox: every committed change, announced after its commit and in commit
//! order per writer, to whoever listens (the websocket subscriptions of the server). A write
//! that is rolled back announces nothing.

use super::StoredResource;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The versions one transaction committed: creations and updates with their body,
/// deletions as tombstones.
pub type CommittedBatch = Arc<[StoredResource]>;

/// Receives committed batches. Unbounded on purpose: writers never wait for listeners; a
/// listener that falls behind holds memory, not writers (the websocket layer bounds what it
/// holds per connection).
pub type ChangeReceiver = mpsc::UnboundedReceiver<CommittedBatch>;

#[derive(Default)]
pub(super) struct ChangeFeed {
    listeners: Mutex<Vec<mpsc::UnboundedSender<CommittedBatch>>>,
    /// See [`super::ResourceStore::allow_list_generation`].
    allow_list_generation: AtomicU64,
    /// See [`super::ResourceStore::conformance_generation`].
    conformance_generation: AtomicU64,
}

impl ChangeFeed {
    pub(super) fn listen(&self) -> ChangeReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    pub(super) fn allow_list_generation(&self) -> u64 {
        self.allow_list_generation.load(Ordering::SeqCst)
    }

    pub(super) fn conformance_generation(&self) -> u64 {
        self.conformance_generation.load(Ordering::SeqCst)
    }

    /// Announces `changes` to every listener still listening. A change to the allow list
    /// moves its generation on first, so a listener that re-checks identities on hearing of
    /// it does not get a stale cached one.
    pub(super) fn publish(&self, changes: Vec<StoredResource>) {
        if changes.is_empty() {
            return;
        }
        if changes
            .iter()
            .any(|c| super::ALLOW_LIST_TYPES.contains(&c.resource_type.as_str()))
        {
            self.allow_list_generation.fetch_add(1, Ordering::SeqCst);
        }
        if changes
            .iter()
            .any(|c| crate::resource_type::CONFORMANCE_TYPES.contains(&c.resource_type.as_str()))
        {
            self.conformance_generation.fetch_add(1, Ordering::SeqCst);
        }
        let batch: CommittedBatch = changes.into();
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.retain(|tx| tx.send(batch.clone()).is_ok());
    }
}

/// The versions a transaction's outcomes wrote.
pub(super) fn written(outcomes: &[super::WriteOutcome]) -> Vec<StoredResource> {
    use super::WriteOutcome;
    outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            WriteOutcome::Created(s) | WriteOutcome::Updated(s) | WriteOutcome::Deleted(s) => {
                Some(s.clone())
            }
            WriteOutcome::Existing(_)
            | WriteOutcome::AlreadyDeleted(_)
            | WriteOutcome::NoMatch
            | WriteOutcome::PermanentlyDeleted(_) => None,
        })
        .collect()
}
