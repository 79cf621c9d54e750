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
