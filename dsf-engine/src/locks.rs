//! One holder per key (a business key): Tasks and timers of one instance run one at a time,
//! those of different instances in parallel. Inside this BPE a mutex per key orders its own
//! work; the state database's key lease orders it with other BPEs sharing the database.

use crate::state::{Lease, StateStore};
use crate::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub(crate) struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

pub(crate) struct KeyGuard<'a> {
    owner: &'a KeyLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
    lease: Lease,
    state: StateStore,
}

impl KeyGuard<'_> {
    /// The key lease held: saves under it are fenced by it.
    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }
}

/// How long a BPE waits between tries for a key another BPE holds: at first briefly (the
/// holder is usually one short run away from done), then less often.
const FIRST_RETRY: Duration = Duration::from_millis(10);
const LAST_RETRY: Duration = Duration::from_millis(250);

impl KeyLocks {
    /// Waits for `key` here, then for its lease in the state database: until the other BPE
    /// holding it releases it or dies. Fails only when the database does.
    pub(crate) async fn lock(&self, key: &str, state: &StateStore) -> Result<KeyGuard<'_>> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.to_owned()).or_default().clone()
        };
        let mut guard = KeyGuard {
            owner: self,
            key: key.to_owned(),
            guard: Some(lock.lock_owned().await),
            lease: Lease::default(),
            state: state.clone(),
        };
        let mut wait = FIRST_RETRY;
        loop {
            if let Some(lease) = state.acquire(key).await? {
                guard.lease = lease;
                return Ok(guard);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LAST_RETRY);
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        if self.lease != Lease::default() {
            // The next holder on this BPE takes the lease over as its own, so releasing it
            // need not finish before the mutex below is free.
            let (state, lease) = (self.state.clone(), std::mem::take(&mut self.lease));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(error) = state.release(&lease).await {
                        tracing::warn!(error = %dsf_core::ErrorChain(&error), "cannot release a key lease; it ends with the BPE's lease");
                    }
                });
            }
        }
        drop(self.guard.take());
        let mut locks = self.owner.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Only this map holds it: nobody waits, so the entry can go.
        if locks
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.key);
        }
    }
}
