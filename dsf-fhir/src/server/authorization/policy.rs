//! Authorization as a seam: [`AuthorizationPolicy`] is what the server asks before it reads or
//! writes for a caller, and [`DsfRules`] is the DSF's own answer, the default. An integrator
//! adds rules by writing a policy that asks [`DsfRules`] first and then its own questions
//! (see `examples/custom_authorization.rs`); it can also replace the DSF's rules entirely,
//! which makes the server something other than a DSF FHIR server.
//!
//! What a policy does not decide: which resources a search or read may see. That is the
//! caller's read access (read-access tags, see [`crate::access`]), applied inside the
//! database query. A policy can forbid reading a type altogether in
//! [`AuthorizationPolicy::check_interaction`].

use super::{meta_tag, process, questionnaire_response, require_role, task};
use crate::server::identity::Identity;
use crate::server::roles::Role;
use crate::server::FhirServer;
use crate::store::{Change, ResourceStore};
use crate::{Error, Result};
use serde_json::Value;
use std::sync::Arc;

/// What a policy may consult while judging a write.
pub struct PolicyContext<'a> {
    pub(crate) server: &'a FhirServer,
}

impl PolicyContext<'_> {
    /// The server's store, for lookups (e.g. whether a referenced Organization exists).
    pub fn store(&self) -> &ResourceStore {
        &self.server.store
    }

    /// The `organization-identifier` of the organisation this server belongs to.
    pub fn organization_identifier(&self) -> &str {
        &self.server.config.organization_identifier
    }

    /// The local organisation as an identity (as the recipient of Tasks). An error when the
    /// local organisation is not on the allow list.
    pub async fn local_organization(&self) -> Result<Arc<Identity>> {
        self.server.local_identity().await
    }
}

/// The server's authorization decisions, asked in this order for a write: the role gate,
/// then (before the transaction) the content of the create or update, then (inside the
/// transaction) the change against the version it replaces. An error refuses the request
/// with the error's status: use [`Error::Forbidden`] for 403.
#[async_trait::async_trait]
pub trait AuthorizationPolicy: Send + Sync + 'static {
    /// May `identity` perform `interaction` on resources of `resource_type` at all? Asked for
    /// every read, search, history, create, update and delete (`*` for a history across
    /// types).
    fn check_interaction(
        &self,
        identity: &Identity,
        interaction: Role,
        resource_type: &str,
    ) -> Result<()>;

    /// May `identity` create `resource`? Also asked for an update that creates (no version,
    /// or over a deleted one).
    async fn check_create(
        &self,
        context: &PolicyContext<'_>,
        identity: &Identity,
        resource_type: &str,
        resource: &Value,
    ) -> Result<()>;

    /// The new content of an update, judged without the version it replaces.
    async fn check_update(
        &self,
        context: &PolicyContext<'_>,
        identity: &Identity,
        resource_type: &str,
        resource: &Value,
    ) -> Result<()>;

    /// An update or delete against the version it replaces, inside the write's transaction
    /// (so no concurrent write can slip between check and write). Not asked for creates.
    fn check_change(&self, identity: &Identity, change: Change<'_>) -> Result<()>;
}

/// The DSF's authorization rules (the Java DSF's `AuthorizationRule`s): role gates from the
/// allow list and the role configuration, read-access tags that name only known
/// organisations and roles, the Task rules with process authorization from
/// ActivityDefinitions, and the QuestionnaireResponse rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct DsfRules;

#[async_trait::async_trait]
impl AuthorizationPolicy for DsfRules {
    fn check_interaction(
        &self,
        identity: &Identity,
        interaction: Role,
        resource_type: &str,
    ) -> Result<()> {
        require_role(identity, interaction, resource_type)
    }

    async fn check_create(
        &self,
        context: &PolicyContext<'_>,
        identity: &Identity,
        resource_type: &str,
        resource: &Value,
    ) -> Result<()> {
        let store = context.store();
        match resource_type {
            "Task" => {
                let request =
                    task::check_create(identity, context.organization_identifier(), resource)?;
                if let Some(request) = request {
                    let recipient = context.local_organization().await?;
                    process::authorize(store, identity, &recipient, &request).await?;
                }
                Ok(())
            }
            "QuestionnaireResponse" => questionnaire_response::check_create(identity, resource),
            t => meta_tag::check_content(store, identity, t, resource).await,
        }
    }

    async fn check_update(
        &self,
        context: &PolicyContext<'_>,
        identity: &Identity,
        resource_type: &str,
        resource: &Value,
    ) -> Result<()> {
        match resource_type {
            "Task" => match task::completion_request(resource) {
                // Completing re-checks that this organisation may receive the message.
                Some(request) => {
                    let recipient = context.local_organization().await?;
                    process::authorize_recipient(context.store(), &recipient, &request).await
                }
                None => Ok(()),
            },
            "QuestionnaireResponse" => Ok(()),
            t => meta_tag::check_content(context.store(), identity, t, resource).await,
        }
    }

    fn check_change(&self, identity: &Identity, change: Change<'_>) -> Result<()> {
        match change {
            Change::Create { .. } => Ok(()),
            Change::Update {
                resource_type,
                old,
                new,
                ..
            } => {
                let old = old.json()?;
                match resource_type {
                    "Task" => task::check_update(identity, &old, new),
                    "QuestionnaireResponse" => {
                        questionnaire_response::check_update(identity, &old, new)
                    }
                    t => meta_tag::check_update(t, &old, new),
                }
            }
            Change::Delete {
                resource_type, old, ..
            } => {
                let old = old.json()?;
                match resource_type {
                    "Task" => task::check_delete(identity, &old),
                    "QuestionnaireResponse" => questionnaire_response::check_delete(identity),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// An error for a policy's refusal, naming what was refused and why.
pub fn refuse(what: &str, identity: &Identity, why: impl std::fmt::Display) -> Error {
    super::forbidden(what, identity, why)
}
