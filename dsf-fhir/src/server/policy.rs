//! The allow/deny seam every interaction passes before it touches the store. The full DSF
//! rules (read-access tags, process authorization) plug in here.

use super::identity::Identity;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
    History,
}

impl Interaction {
    /// The DSF role that grants it.
    pub fn role(self) -> &'static str {
        match self {
            Interaction::Create => "CREATE",
            Interaction::Read => "READ",
            Interaction::Update => "UPDATE",
            Interaction::Delete => "DELETE",
            Interaction::Search => "SEARCH",
            Interaction::History => "HISTORY",
        }
    }
}

/// Decides whether an identity may perform an interaction on a resource type.
pub trait AccessPolicy: Send + Sync {
    fn check(
        &self,
        identity: &Identity,
        interaction: Interaction,
        resource_type: &str,
    ) -> Result<()>;
}

/// The Java DSF's role baseline: the local organisation may do everything; a remote
/// organisation may create Tasks and read, search and see history; a local user has the roles
/// configured for it.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoleBaseline;

impl AccessPolicy for RoleBaseline {
    fn check(
        &self,
        identity: &Identity,
        interaction: Interaction,
        resource_type: &str,
    ) -> Result<()> {
        let allowed = match identity {
            Identity::LocalOrganization { .. } => true,
            Identity::RemoteOrganization { .. } => match interaction {
                Interaction::Create => resource_type == "Task",
                Interaction::Read | Interaction::Search | Interaction::History => true,
                Interaction::Update | Interaction::Delete => false,
            },
            Identity::LocalUser { roles, .. } => roles.iter().any(|r| r == interaction.role()),
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "{} of {resource_type} not allowed for {}",
                interaction.role().to_lowercase(),
                identity.name()
            )))
        }
    }
}
