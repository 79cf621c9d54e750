//! What the dispatcher and the connections share: the active websocket Subscriptions with
//! their parsed criteria, and the open connections with what each is bound to.

use super::Closing;
use crate::format::Format;
use crate::search::{parse_query_string, SearchQuery};
use crate::server::Identity;
use crate::server::PeerCertificate;
use crate::store::{ResourceStore, StoredResource};
use crate::{Error, Result};
use bytes::Bytes;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, watch};

/// What a Subscription's deliveries carry (`channel.payload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Payload {
    Resource(Format),
    /// No payload: `ping <subscription id>` only.
    IdOnly,
}

/// An active websocket Subscription, its criteria parsed once.
#[derive(Debug)]
pub(crate) struct ActiveSubscription {
    pub id: String,
    pub criteria: SearchQuery,
    pub payload: Payload,
}

impl ActiveSubscription {
    /// The Subscription `stored` as the dispatcher uses it; `None` when it is not an active
    /// websocket Subscription with criteria this server can evaluate.
    pub fn from_stored(stored: &StoredResource, base_url: &str) -> Option<Self> {
        let json = stored.json().ok()?;
        let str_at =
            |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        if str_at(&json, "status").as_deref() != Some("active") {
            return None;
        }
        let channel = json.get("channel")?;
        if str_at(channel, "type").as_deref() != Some("websocket") {
            return None;
        }
        let payload = match str_at(channel, "payload") {
            None => Payload::IdOnly,
            Some(mime) => Payload::Resource(Format::from_mime(&mime)?),
        };
        let criteria = str_at(&json, "criteria")?;
        let (resource_type, query) = criteria.split_once('?').unwrap_or((&criteria, ""));
        let resource_type = crate::resource_type::supported_type(resource_type)?;
        let criteria = match SearchQuery::parse(
            resource_type,
            &parse_query_string(query),
            1,
            base_url,
        ) {
            Ok(parsed) if parsed.unsupported.is_empty() => parsed,
            _ => {
                tracing::warn!(subscription = %stored.id, "Subscription criteria cannot be evaluated; ignored");
                return None;
            }
        };
        Some(ActiveSubscription {
            id: stored.id.clone(),
            criteria,
            payload,
        })
    }
}

/// One message for one connection, shared between the connections it goes to.
pub(crate) type Message = Bytes;

/// An open websocket connection as the dispatcher sees it.
pub(crate) struct Session {
    pub id: u64,
    pub certificate: Arc<PeerCertificate>,
    identity: RwLock<Arc<Identity>>,
    bound: RwLock<Option<Arc<ActiveSubscription>>>,
    queue: mpsc::Sender<Message>,
    cut: watch::Sender<Option<Closing>>,
}

impl Session {
    pub fn identity(&self) -> Arc<Identity> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_identity(&self, identity: Arc<Identity>) {
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = identity;
    }

    pub fn bound(&self) -> Option<Arc<ActiveSubscription>> {
        self.bound.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn bind(&self, subscription: Arc<ActiveSubscription>) {
        *self.bound.write().unwrap_or_else(|p| p.into_inner()) = Some(subscription);
    }

    /// Queues `message` without waiting; a full queue cuts the connection.
    pub fn offer(&self, message: Message) {
        match self.queue.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.cut(Closing::new(
                super::close_code::POLICY_VIOLATION,
                format!(
                    "subscriber too slow: {} undelivered events queued",
                    self.queue.max_capacity()
                ),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Asks the connection to close with `closing` (the first reason given wins).
    pub fn cut(&self, closing: Closing) {
        self.cut.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(closing);
                true
            } else {
                false
            }
        });
    }
}

/// The receiving ends a connection task owns.
pub(crate) struct SessionEnds {
    pub session: Arc<Session>,
    pub queue: mpsc::Receiver<Message>,
    pub cut: watch::Receiver<Option<Closing>>,
}

#[derive(Default)]
pub(crate) struct Hub {
    /// Active websocket Subscriptions by resource type of their criteria.
    by_type: RwLock<HashMap<&'static str, Vec<Arc<ActiveSubscription>>>>,
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    next_session: AtomicU64,
}

impl Hub {
    /// Reads every active websocket Subscription from the store. Sessions bound to one that
    /// is no longer active are closed.
    pub async fn reload(&self, store: &ResourceStore) -> Result<()> {
        let mut by_type: HashMap<&'static str, Vec<Arc<ActiveSubscription>>> = HashMap::new();
        let mut page = 1;
        loop {
            let mut query = SearchQuery::parse(
                "Subscription",
                &[("status".to_owned(), "active".to_owned())],
                crate::search::MAX_COUNT,
                store.base_url(),
            )?;
            query.page = page;
            let result = store.search(&query).await?;
            let last = result.matches.len() < query.count;
            for stored in &result.matches {
                if let Some(active) = ActiveSubscription::from_stored(stored, store.base_url()) {
                    by_type
                        .entry(active.criteria.resource_type)
                        .or_default()
                        .push(Arc::new(active));
                }
            }
            if last {
                break;
            }
            page += 1;
        }
        let active: std::collections::HashSet<String> =
            by_type.values().flatten().map(|s| s.id.clone()).collect();
        *self.by_type.write().unwrap_or_else(|p| p.into_inner()) = by_type;
        for session in self.sessions() {
            if let Some(bound) = session.bound() {
                if !active.contains(&bound.id) {
                    session.cut(Closing::new(
                        super::close_code::NORMAL,
                        format!("Subscription {} is no longer active", bound.id),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The active Subscription `id`, read from the store so that one created a moment ago
    /// can be bound before the dispatcher has seen it.
    pub async fn find(
        &self,
        store: &ResourceStore,
        id: &str,
    ) -> Result<Option<Arc<ActiveSubscription>>> {
        let known = self
            .by_type
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .find(|s| s.id == id)
            .cloned();
        if known.is_some() {
            return Ok(known);
        }
        let stored = match store.read("Subscription", id).await {
            Ok(Some(stored)) if !stored.deleted => stored,
            Ok(_) => return Ok(None),
            Err(Error::Invalid(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(active) = ActiveSubscription::from_stored(&stored, store.base_url()).map(Arc::new)
        else {
            return Ok(None);
        };
        let mut by_type = self.by_type.write().unwrap_or_else(|p| p.into_inner());
        let list = by_type.entry(active.criteria.resource_type).or_default();
        if !list.iter().any(|s| s.id == active.id) {
            list.push(active.clone());
        }
        Ok(Some(active))
    }

    pub fn subscriptions_of(&self, resource_type: &str) -> Vec<Arc<ActiveSubscription>> {
        self.by_type
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(resource_type)
            .cloned()
            .unwrap_or_default()
    }

    pub fn open(
        &self,
        identity: Arc<Identity>,
        certificate: Arc<PeerCertificate>,
        queue_capacity: usize,
    ) -> SessionEnds {
        let (queue_tx, queue) = mpsc::channel(queue_capacity.max(1));
        let (cut_tx, cut) = watch::channel(None);
        let session = Arc::new(Session {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            certificate,
            identity: RwLock::new(identity),
            bound: RwLock::new(None),
            queue: queue_tx,
            cut: cut_tx,
        });
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.id, session.clone());
        SessionEnds {
            session,
            queue,
            cut,
        }
    }

    pub fn close(&self, id: u64) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
