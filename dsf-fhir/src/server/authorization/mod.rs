//! The DSF's authorization rules: a role gate per interaction and resource type, a rule per
//! resource type for writes, read access for everything that is read (see [`crate::access`]),
//! and process authorization for Tasks (the `process` module).
//!
//! Writes are judged in two steps. Before the transaction, the server checks what needs
//! lookups (read-access tags naming organisations, process authorization of a Task) and what
//! depends only on the new content; inside the transaction, a [`WriteGuard`] compares the new
//! content with the version it replaces (status transitions, immutable fields), so that a
//! concurrent write cannot slip between the check and the write.

mod meta_tag;
mod policy;
pub(crate) mod process;
mod questionnaire_response;
mod task;

pub use policy::{refuse, AuthorizationPolicy, DsfRules, PolicyContext};

use super::identity::Identity;
use super::roles::Role;
use super::{Call, FhirServer};
use crate::store::{Change, WriteGuard, WriteOp, WriteOutcome};
use crate::{Error, Result};
use serde_json::Value;
use std::sync::Arc;

fn forbidden(what: &str, identity: &Identity, why: impl std::fmt::Display) -> Error {
    Error::Forbidden(format!(
        "{what} not allowed for '{}': {why}",
        identity.name()
    ))
}

/// The role gate: 403 unless the identity holds `role` for `resource_type`.
pub(crate) fn require_role(identity: &Identity, role: Role, resource_type: &str) -> Result<()> {
    if identity.has_role(role, resource_type) {
        super::trace::allowed(|| {
            match crate::resource_type::supported_type(resource_type) {
                Some(resource_type) => super::trace::Reason::Role {
                    role: role.name(),
                    resource_type,
                },
                // `*`, a history across types.
                None => format!("holds the role {} for {resource_type}", role.name()).into(),
            }
        });
        Ok(())
    } else {
        Err(forbidden(
            &format!("{} of {resource_type}", role.name().to_lowercase()),
            identity,
            format!("no role {}", role.name()),
        ))
    }
}

/// What was decided about one operation before its transaction.
#[derive(Debug, Clone)]
struct Verdict {
    /// If the operation creates a resource.
    as_create: Result<()>,
    /// If it updates one: the part that needs no old version.
    as_update: Result<()>,
}

/// The guard of one request's writes.
pub(crate) struct WriteRules {
    identity: Arc<Identity>,
    policy: Arc<dyn AuthorizationPolicy>,
    verdicts: Vec<Verdict>,
}

impl WriteRules {
    fn verdict(&self, index: usize) -> Result<&Verdict> {
        self.verdicts
            .get(index)
            .ok_or_else(|| Error::storage_fault("write rules out of step with the operations"))
    }
}

impl WriteGuard for WriteRules {
    fn read_grants(&self) -> Option<crate::access::ReadGrants> {
        Some(self.identity.grants.clone())
    }

    fn check(&self, change: Change<'_>) -> Result<()> {
        match change {
            Change::Create { index, .. } => self.verdict(index)?.as_create.clone(),
            Change::Update { index, old, .. } => {
                let verdict = self.verdict(index)?;
                if old.deleted {
                    // Writing over a tombstone brings the resource back: judged as a create.
                    return verdict.as_create.clone();
                }
                verdict.as_update.clone()?;
                self.policy.check_change(&self.identity, change)
            }
            Change::Delete { .. } => self.policy.check_change(&self.identity, change),
        }
    }
}

impl FhirServer {
    /// The role gate for the caller of `call`.
    pub(crate) fn require(&self, call: &Call<'_>, role: Role, resource_type: &str) -> Result<()> {
        self.policy
            .check_interaction(call.identity, role, resource_type)
    }

    /// Runs `ops` in one transaction under the caller's write rules.
    pub(crate) async fn write_as(
        &self,
        call: &Call<'_>,
        mut ops: Vec<WriteOp>,
        label: impl Fn(usize) -> String + Send + 'static,
    ) -> Result<Vec<WriteOutcome>> {
        Self::set_default_profiles(&mut ops);
        let mut verdicts = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            verdicts.push(
                self.prepare(call.identity, op)
                    .await
                    .map_err(|e| e.context(&label(index)))?,
            );
        }
        let rules = WriteRules {
            identity: Arc::new(call.identity.clone()),
            policy: self.policy.clone(),
            verdicts,
        };
        self.store
            .transaction_guarded(ops, Some(Arc::new(rules)), label)
            .await
    }

    /// Refuses, before any content is read, a create the caller may not make or whose
    /// resource breaks its profile; the create's transaction judges it again.
    pub(crate) async fn check_create_allowed(
        &self,
        call: &Call<'_>,
        resource: Value,
    ) -> Result<()> {
        let mut ops = vec![WriteOp::Create {
            resource,
            if_none_exist: None,
            full_url: None,
        }];
        Self::set_default_profiles(&mut ops);
        self.prepare(call.identity, &ops[0]).await?.as_create
    }

    /// The role gate of an operation, and what can be decided before its transaction.
    async fn prepare(&self, identity: &Identity, op: &WriteOp) -> Result<Verdict> {
        let t = op.resource_type();
        let not_checked = || Err(Error::Forbidden("not checked".into()));
        let context = PolicyContext { server: self };
        Ok(match op {
            WriteOp::Create { resource, .. } | WriteOp::CreateWithContent { resource, .. } => {
                let as_create = self.check_create(&context, identity, t, resource).await;
                Verdict {
                    as_create: match as_create {
                        Ok(()) => self.validate_resource(resource, false).await,
                        refused => refused,
                    },
                    as_update: not_checked(),
                }
            }
            WriteOp::Update { resource, .. } | WriteOp::ConditionalUpdate { resource, .. } => {
                self.policy.check_interaction(identity, Role::Update, t)?;
                // Validated once: the outcome is the same whether the write turns out to
                // update or (over a tombstone, or conditionally) to create.
                let valid = self.validate_resource(resource, true).await;
                let as_create = self.check_create(&context, identity, t, resource).await;
                let as_update = self
                    .policy
                    .check_update(&context, identity, t, resource)
                    .await;
                Verdict {
                    as_create: as_create.and(valid.clone()),
                    as_update: as_update.and(valid),
                }
            }
            WriteOp::PermanentDelete { .. } => {
                // As in the Java DSF: the local organisation or a local user, holding both
                // the PERMANENT_DELETE and the DELETE role.
                if !identity.is_local() {
                    return Err(forbidden(
                        &format!("permanent delete of {t}"),
                        identity,
                        "not a local identity",
                    ));
                }
                self.policy
                    .check_interaction(identity, Role::PermanentDelete, t)?;
                self.policy.check_interaction(identity, Role::Delete, t)?;
                Verdict {
                    as_create: not_checked(),
                    as_update: not_checked(),
                }
            }
            WriteOp::Delete { .. } | WriteOp::ConditionalDelete { .. } => {
                self.policy.check_interaction(identity, Role::Delete, t)?;
                Verdict {
                    as_create: not_checked(),
                    as_update: not_checked(),
                }
            }
        })
    }

    async fn check_create(
        &self,
        context: &PolicyContext<'_>,
        identity: &Identity,
        t: &str,
        resource: &Value,
    ) -> Result<()> {
        self.policy.check_interaction(identity, Role::Create, t)?;
        self.policy
            .check_create(context, identity, t, resource)
            .await
    }

    pub(crate) async fn local_identity(&self) -> Result<Arc<Identity>> {
        self.identities
            .local(&self.store, &self.config.organization_identifier)
            .await?
            .ok_or_else(|| {
                Error::Forbidden(
                    "the local organization is not in the allow list; no Task can be received"
                        .into(),
                )
            })
    }
}
