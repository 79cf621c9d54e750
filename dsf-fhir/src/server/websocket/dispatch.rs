//! The dispatcher: takes each committed batch from the store's outbox, keeps the Subscription
//! list and the connections' identities current, and offers every matching, readable change
//! to the connections bound to the Subscription it matches.

use super::hub::{ActiveSubscription, Message, Payload, Session};
use super::{close_code, may_connect, Closing};
use crate::access::grants_of;
use crate::format::Format;
use crate::search::index_rows;
use crate::server::reply::stored_body;
use crate::server::roles::Role;
use crate::server::FhirServer;
use crate::store::{ChangeReceiver, StoredResource, ALLOW_LIST_TYPES};
use bytes::Bytes;
use dsf_core::ErrorChain;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

impl FhirServer {
    /// Runs until the store stops or `closing` turns true.
    pub(crate) async fn dispatch_changes(
        self: Arc<Self>,
        mut changes: ChangeReceiver,
        mut closing: watch::Receiver<bool>,
    ) {
        let mut generation = self.store.allow_list_generation();
        loop {
            let batch = tokio::select! {
                batch = changes.recv() => match batch {
                    Some(batch) => batch,
                    None => return,
                },
                _ = super::session::shut_down(&mut closing) => return,
            };
            if batch.iter().any(|r| r.resource_type == "Subscription") {
                if let Err(e) = self.hub.reload(&self.store).await {
                    tracing::error!(error = %ErrorChain(&e), "cannot reload Subscriptions");
                }
            }
            let now = self.store.allow_list_generation();
            if now != generation
                || batch
                    .iter()
                    .any(|r| ALLOW_LIST_TYPES.contains(&r.resource_type.as_str()))
            {
                generation = now;
                self.recheck_identities().await;
            }
            let sessions = self.hub.sessions();
            if sessions.is_empty() {
                continue;
            }
            for stored in batch.iter().filter(|r| !r.deleted) {
                self.deliver(stored, &sessions).await;
            }
        }
    }

    /// Closes connections whose certificate left the allow list or lost the WEBSOCKET role;
    /// the others get their identity as it is now (read access may have changed).
    async fn recheck_identities(&self) {
        for session in self.hub.sessions() {
            let resolved = self
                .identities
                .resolve(
                    &self.store,
                    &self.config.organization_identifier,
                    &self.config.users,
                    &session.certificate,
                )
                .await;
            match resolved {
                Ok(identity) if may_connect(&identity) => session.set_identity(identity),
                Ok(_) => session.cut(Closing::new(close_code::POLICY_VIOLATION, "Forbidden")),
                Err(crate::Error::Unauthenticated(_)) => session.cut(Closing::new(
                    close_code::POLICY_VIOLATION,
                    "Forbidden: client certificate no longer on the allow list",
                )),
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), session = session.id, "cannot re-check websocket identity")
                }
            }
        }
    }

    async fn deliver(&self, stored: &StoredResource, sessions: &[Arc<Session>]) {
        let subscriptions = self.hub.subscriptions_of(&stored.resource_type);
        if subscriptions.is_empty() {
            return;
        }
        let Ok(json) = stored.json() else {
            return;
        };
        let rows = index_rows(&stored.resource_type, &json, self.store.base_url());
        let matched: Vec<&Arc<ActiveSubscription>> = subscriptions
            .iter()
            .filter(|s| s.criteria.matches_rows(&stored.id, &rows))
            .collect();
        if matched.is_empty() {
            return;
        }
        let granted = grants_of(&stored.resource_type, &json, self.store.base_url());
        let mut rendered: HashMap<Format, Option<Message>> = HashMap::new();
        for session in sessions {
            let Some(bound) = session.bound() else {
                continue;
            };
            let Some(subscription) = matched.iter().find(|s| s.id == bound.id) else {
                continue;
            };
            let identity = session.identity();
            // As the Java DSF: reading it and receiving it by websocket are both needed.
            if !identity.has_role(Role::Websocket, &stored.resource_type)
                || !identity.has_role(Role::Read, &stored.resource_type)
            {
                continue;
            }
            let readable = identity.grants.admits(&granted)
                || (stored.resource_type == "Binary"
                    && granted
                        .iter()
                        .any(|g| g.starts_with(crate::access::grant::CONTEXT_PREFIX))
                    && self
                        .store
                        .is_readable(stored, &identity.grants)
                        .await
                        .unwrap_or(false));
            if !readable {
                continue;
            }
            let message = match subscription.payload {
                Payload::IdOnly => Some(Bytes::from(format!("ping {}", subscription.id))),
                Payload::Resource(format) => rendered
                    .entry(format)
                    .or_insert_with(|| render(stored, format))
                    .clone(),
            };
            if let Some(message) = message {
                session.offer(message);
            }
        }
    }
}

fn render(stored: &StoredResource, format: Format) -> Option<Message> {
    let body = stored.body.as_ref()?;
    match stored_body(body, format, false) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), resource = %stored.reference(), "cannot render event payload");
            None
        }
    }
}
