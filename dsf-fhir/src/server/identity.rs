//! Who is calling: resolved from the client certificate's thumbprint on every request, so a
//! change to the allow list takes effect on the next request.

use crate::store::ResourceStore;
use crate::{Error, Result};
use dsf_core::Thumbprint;
use serde_json::Value;

/// The identifier system of DSF organisations.
pub const ORGANIZATION_IDENTIFIER_SYSTEM: &str = "http://dsf.dev/sid/organization-identifier";

/// A local user configured by thumbprint (the Java DSF's role config), e.g. an administrator
/// using the server with a personal certificate.
#[derive(Debug, Clone)]
pub struct LocalUser {
    pub name: String,
    pub thumbprint: Thumbprint,
    /// DSF roles such as `CREATE`, `READ`, `UPDATE`, `DELETE`, `SEARCH`, `HISTORY`.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The organisation this server belongs to (its BPE and its administrators' tools).
    LocalOrganization {
        identifier: String,
        organization: String,
    },
    /// An organisation of the allow list.
    RemoteOrganization {
        identifier: String,
        organization: String,
    },
    LocalUser {
        name: String,
        roles: Vec<String>,
    },
}

impl Identity {
    pub fn is_local(&self) -> bool {
        !matches!(self, Identity::RemoteOrganization { .. })
    }

    /// For logs.
    pub fn name(&self) -> &str {
        match self {
            Identity::LocalOrganization { identifier, .. }
            | Identity::RemoteOrganization { identifier, .. } => identifier,
            Identity::LocalUser { name, .. } => name,
        }
    }
}

fn organization_identifier(org: &Value) -> Option<String> {
    org.get("identifier")?
        .as_array()?
        .iter()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(ORGANIZATION_IDENTIFIER_SYSTEM))
        .and_then(|i| i.get("value").and_then(Value::as_str))
        .map(str::to_owned)
}

/// Maps a thumbprint to an identity: an active Organization of the allow list carrying it,
/// else a configured local user, else nobody.
pub async fn resolve(
    store: &ResourceStore,
    local_identifier: &str,
    users: &[LocalUser],
    thumbprint: &Thumbprint,
) -> Result<Identity> {
    if let Some(org) = store
        .organization_by_thumbprint(thumbprint.as_str())
        .await?
    {
        let json = org.json()?;
        let identifier = organization_identifier(&json).unwrap_or_default();
        let organization = org.reference();
        return Ok(if identifier == local_identifier {
            Identity::LocalOrganization {
                identifier,
                organization,
            }
        } else {
            Identity::RemoteOrganization {
                identifier,
                organization,
            }
        });
    }
    if let Some(user) = users.iter().find(|u| &u.thumbprint == thumbprint) {
        return Ok(Identity::LocalUser {
            name: user.name.clone(),
            roles: user.roles.clone(),
        });
    }
    Err(Error::Unauthenticated(
        "client certificate is not part of the allow list".into(),
    ))
}

/// Identities by thumbprint, valid while the store's allow-list generation stays the same, so
/// that the allow list is not queried on every request yet every change to it is seen by the
/// next request. Refusals are cached too, so unknown certificates cost no queries either.
#[derive(Default)]
pub(crate) struct IdentityCache {
    state: std::sync::Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    generation: u64,
    entries: std::collections::HashMap<Thumbprint, Option<Identity>>,
}

const CACHE_CAPACITY: usize = 10_000;

impl IdentityCache {
    pub(crate) async fn resolve(
        &self,
        store: &ResourceStore,
        local_identifier: &str,
        users: &[LocalUser],
        thumbprint: &Thumbprint,
    ) -> Result<Identity> {
        let refused =
            || Error::Unauthenticated("client certificate is not part of the allow list".into());
        // Read before the lookup: a change committed meanwhile moves the generation on and
        // makes this entry stale at once.
        let generation = store.allow_list_generation();
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.generation == generation {
                if let Some(hit) = state.entries.get(thumbprint) {
                    return hit.clone().ok_or_else(refused);
                }
            }
        }
        let resolved = match resolve(store, local_identifier, users, thumbprint).await {
            Ok(identity) => Some(identity),
            Err(Error::Unauthenticated(_)) => None,
            Err(other) => return Err(other),
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if generation > state.generation {
            state.generation = generation;
            state.entries.clear();
        }
        if generation == state.generation {
            if state.entries.len() >= CACHE_CAPACITY {
                state.entries.clear();
            }
            state.entries.insert(thumbprint.clone(), resolved.clone());
        }
        resolved.ok_or_else(refused)
    }
}
