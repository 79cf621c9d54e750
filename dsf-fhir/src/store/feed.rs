//! The store's outbox: every committed change, announced after its commit and in commit
//! order per writer, to whoever listens (the websocket subscriptions of the server). A write
//! that is rolled back announces nothing.

use super::StoredResource;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
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
    /// With other processes writing to the same database: the versions announced lately,
    /// so that one heard of twice (from this process and from the database, or again in a
    /// catch-up) is announced once.
    recent: Mutex<Option<Recent>>,
}

/// The most versions remembered as announced.
const RECENT: usize = 65_536;

#[derive(Default)]
struct Recent {
    keys: HashSet<(String, String, i64)>,
    order: VecDeque<(String, String, i64)>,
}

impl Recent {
    /// Remembers `change`; false if it was announced already.
    fn first_time(&mut self, change: &StoredResource) -> bool {
        let key = (
            change.resource_type.clone(),
            change.id.clone(),
            change.version,
        );
        if !self.keys.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > RECENT {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }
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

    /// Other processes write to the same database: their changes will be published too,
    /// and no version may be announced twice.
    pub(super) fn expect_peers(&self) {
        *self.recent.lock().unwrap_or_else(|p| p.into_inner()) = Some(Recent::default());
    }

    /// Announces `changes` to every listener still listening. A change to the allow list
    /// moves its generation on first, so a listener that re-checks identities on hearing of
    /// it does not get a stale cached one.
    pub(super) fn publish(&self, mut changes: Vec<StoredResource>) {
        if let Some(recent) = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            changes.retain(|c| recent.first_time(c));
        }
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

/// Publishes what other processes commit into `feed` for as long as the store lives.
pub(super) fn forward_peers(
    mut peers: mpsc::UnboundedReceiver<Vec<StoredResource>>,
    feed: Weak<ChangeFeed>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        loop {
            tokio::select! {
                changes = peers.recv() => {
                    let (Some(changes), Some(feed)) = (changes, feed.upgrade()) else {
                        return;
                    };
                    feed.publish(changes);
                }
                // A store dropped while nothing is written is noticed too.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    if feed.strong_count() == 0 {
                        return;
                    }
                }
            }
        }
    });
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
