//! Who is calling: resolved from the client certificate, as the Java DSF does: an active
//! Organization of the allow list carrying its thumbprint (the local organisation or a remote
//! one), else the configured local users matching its thumbprint or one of its e-mail
//! addresses (a practitioner of the local organisation, with the roles of every matching
//! rule), else nobody. Resolutions are cached until the allow list changes, so every change to it
//! is seen by the next request.

use super::caller::PeerCertificate;
use super::roles::{DsfRole, Role};
use crate::access::{
    array_at, coding_of, grant, identifier_of, str_at, ReadGrants, ORGANIZATION_IDENTIFIER_SYSTEM,
};
use crate::search::SearchQuery;
use crate::store::{ResourceStore, StoredResource};
use crate::{Error, Result};
use dsf_core::Thumbprint;
use serde_json::Value;
use std::sync::Arc;

/// The practitioner role of DSF administrators.
pub const DSF_ADMIN: (&str, &str) = (
    "http://dsf.dev/fhir/CodeSystem/practitioner-role",
    "DSF_ADMIN",
);

/// A local user configured by certificate thumbprint or by an e-mail address the certificate
/// names (an entry of the Java DSF's `DEV_DSF_FHIR_SERVER_ROLECONFIG`), e.g. an administrator
/// with a personal certificate.
#[derive(Debug, Clone)]
pub struct LocalUser {
    /// The user's name, for logs.
    pub name: String,
    /// The certificate this user is matched by, if by thumbprint.
    pub thumbprint: Option<Thumbprint>,
    /// Lower-cased e-mail addresses this user is matched by, if a certificate or an OpenID
    /// Connect token names one.
    pub emails: Vec<String>,
    /// OpenID Connect token roles this user is matched by (`token-role`).
    pub token_roles: Vec<String>,
    /// OpenID Connect token groups this user is matched by (`token-group`).
    pub token_groups: Vec<String>,
    /// The DSF roles (`CREATE`, `READ`, …), each for all or some resource types.
    pub roles: Vec<DsfRole>,
    /// Practitioner roles as `(system, code)`, e.g. [`DSF_ADMIN`].
    pub practitioner_roles: Vec<(String, String)>,
    /// The value of the user's `http://dsf.dev/sid/practitioner-identifier` (an e-mail address).
    pub practitioner_identifier: Option<String>,
}

impl LocalUser {
    /// A user with the given roles on all resource types and no practitioner role.
    pub fn new(name: &str, thumbprint: Thumbprint, roles: &[Role]) -> Self {
        LocalUser {
            name: name.to_owned(),
            thumbprint: Some(thumbprint),
            emails: Vec::new(),
            token_roles: Vec::new(),
            token_groups: Vec::new(),
            roles: roles.iter().map(|r| DsfRole::all(*r)).collect(),
            practitioner_roles: Vec::new(),
            practitioner_identifier: None,
        }
    }

    /// A user matched by the e-mail address a client certificate names, with the given roles
    /// on all resource types.
    pub fn by_email(name: &str, email: &str, roles: &[Role]) -> Self {
        LocalUser {
            name: name.to_owned(),
            thumbprint: None,
            emails: vec![email.trim().to_ascii_lowercase()],
            token_roles: Vec::new(),
            token_groups: Vec::new(),
            roles: roles.iter().map(|r| DsfRole::all(*r)).collect(),
            practitioner_roles: Vec::new(),
            practitioner_identifier: None,
        }
    }

    /// Adds the roles this user does not hold yet.
    pub fn add_roles(&mut self, roles: &[DsfRole], practitioner_roles: &[(String, String)]) {
        for role in roles {
            if !self.roles.contains(role) {
                self.roles.push(role.clone());
            }
        }
        for role in practitioner_roles {
            if !self.practitioner_roles.contains(role) {
                self.practitioner_roles.push(role.clone());
            }
        }
    }

    /// Whether this user is the holder of `certificate`.
    pub fn matches(&self, certificate: &PeerCertificate) -> bool {
        self.thumbprint.as_ref() == Some(&certificate.thumbprint)
            || self
                .emails
                .iter()
                .any(|email| certificate.emails.contains(email))
    }

    /// Whether this user is the one an OpenID Connect token describes: by its e-mail address,
    /// one of its roles or one of its groups.
    pub fn matches_token(&self, email: &str, roles: &[String], groups: &[String]) -> bool {
        self.emails.iter().any(|e| e == email)
            || self.token_roles.iter().any(|r| roles.contains(r))
            || self.token_groups.iter().any(|g| groups.contains(g))
    }

    /// The same user with the practitioner role `system|code` too.
    pub fn with_practitioner_role(mut self, system: &str, code: &str) -> Self {
        self.practitioner_roles
            .push((system.to_owned(), code.to_owned()));
        self
    }

    /// The same user with this practitioner identifier.
    pub fn with_practitioner_identifier(mut self, identifier: &str) -> Self {
        self.practitioner_identifier = Some(identifier.to_owned());
        self
    }
}

/// Who a caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityKind {
    /// The organisation this server belongs to (its BPE and its administrators' tools).
    LocalOrganization,
    /// An organisation of the allow list.
    RemoteOrganization,
    /// A configured local user, acting as a practitioner of the local organisation.
    Practitioner,
}

/// The role an organisation holds in a parent organisation (an active
/// OrganizationAffiliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affiliation {
    /// The parent organisation's identifier value.
    pub parent: String,
    /// The role's CodeSystem.
    pub system: String,
    /// The role's code.
    pub code: String,
}

/// A caller as the server knows it: what it is, its roles and what it may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// What kind of caller.
    pub kind: IdentityKind,
    /// For logs: the organisation identifier or the user's name.
    pub name: String,
    /// The `organization-identifier` value of the caller's organisation (the local one for
    /// practitioners).
    pub organization_identifier: String,
    /// The DSF roles it holds.
    pub roles: Vec<DsfRole>,
    /// Practitioner roles as `(system, code)` (practitioners only).
    pub practitioner_roles: Vec<(String, String)>,
    /// The practitioner identifier value (practitioners only).
    pub practitioner_identifier: Option<String>,
    /// Roles of the caller's organisation in parent organisations.
    pub affiliations: Vec<Affiliation>,
    /// What the caller may read.
    pub grants: ReadGrants,
}

#[cfg(test)]
impl Identity {
    /// A caller of `kind` named `name`, of the organisation `name`, holding nothing: the
    /// start of the identities tests build.
    pub(crate) fn bare(kind: IdentityKind, name: &str) -> Identity {
        Identity {
            kind,
            name: name.into(),
            organization_identifier: name.into(),
            roles: Vec::new(),
            practitioner_roles: Vec::new(),
            practitioner_identifier: None,
            affiliations: Vec::new(),
            grants: ReadGrants::default(),
        }
    }
}

impl Identity {
    /// A reference to this caller, as a Task's `requester` or a QuestionnaireResponse's
    /// `author` must name it: the practitioner by identifier, else the organisation.
    pub fn reference(&self) -> serde_json::Value {
        match (self.kind, &self.practitioner_identifier) {
            (IdentityKind::Practitioner, Some(identifier)) => serde_json::json!({
                "type": "Practitioner",
                "identifier": {"system": crate::access::PRACTITIONER_IDENTIFIER_SYSTEM, "value": identifier}
            }),
            _ => serde_json::json!({
                "type": "Organization",
                "identifier": {"system": ORGANIZATION_IDENTIFIER_SYSTEM, "value": self.organization_identifier}
            }),
        }
    }

    /// The local organisation or one of its practitioners.
    pub fn is_local(&self) -> bool {
        self.kind != IdentityKind::RemoteOrganization
    }

    /// An organisation, local or remote, not a practitioner.
    pub fn is_organization(&self) -> bool {
        self.kind != IdentityKind::Practitioner
    }

    /// The name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it holds the practitioner role `system|code`.
    pub fn has_practitioner_role(&self, system: &str, code: &str) -> bool {
        self.practitioner_roles
            .iter()
            .any(|(s, c)| s == system && c == code)
    }

    /// A practitioner with the DSF_ADMIN role.
    pub fn is_admin(&self) -> bool {
        self.kind == IdentityKind::Practitioner
            && self.has_practitioner_role(DSF_ADMIN.0, DSF_ADMIN.1)
    }

    /// The local organisation itself or a DSF administrator: who may run the server's
    /// business (move Tasks on, answer QuestionnaireResponses for the organisation).
    pub fn is_local_organization_or_admin(&self) -> bool {
        self.kind == IdentityKind::LocalOrganization || self.is_admin()
    }

    /// Whether it holds `role` for `resource_type`.
    pub fn has_role(&self, role: Role, resource_type: &str) -> bool {
        self.roles.iter().any(|r| r.grants(role, resource_type))
    }

    /// Whether its organisation holds the role `system|code` in `parent`.
    pub fn has_affiliation(&self, parent: &str, system: &str, code: &str) -> bool {
        self.affiliations
            .iter()
            .any(|a| a.parent == parent && a.system == system && a.code == code)
    }

    /// The identity of an organisation of the allow list, with its roles in parent
    /// organisations.
    pub fn organization(
        kind: IdentityKind,
        identifier: String,
        affiliations: Vec<Affiliation>,
    ) -> Identity {
        let roles = match kind {
            IdentityKind::LocalOrganization => Role::ALL.iter().map(|r| DsfRole::all(*r)).collect(),
            _ => vec![
                DsfRole::only(Role::Create, &["Task"]),
                DsfRole::all(Role::Read),
                DsfRole::all(Role::Search),
                DsfRole::all(Role::History),
            ],
        };
        let mut grants = common_grants(&identifier, &affiliations);
        grants.push(grant::task_requester(
            ORGANIZATION_IDENTIFIER_SYSTEM,
            &identifier,
        ));
        if kind == IdentityKind::LocalOrganization {
            grants.push(grant::LOCAL.to_owned());
            grants.push(grant::task_recipient(&identifier));
            grants.push(grant::QUESTIONNAIRE_RESPONSE_LOCAL.to_owned());
        }
        Identity {
            kind,
            name: identifier.clone(),
            organization_identifier: identifier,
            roles,
            practitioner_roles: Vec::new(),
            practitioner_identifier: None,
            affiliations,
            grants: ReadGrants::new(grants),
        }
    }

    fn practitioner(user: &LocalUser, local: &str, affiliations: Vec<Affiliation>) -> Identity {
        let mut identity = Identity {
            kind: IdentityKind::Practitioner,
            name: user.name.clone(),
            organization_identifier: local.to_owned(),
            roles: user.roles.clone(),
            practitioner_roles: user.practitioner_roles.clone(),
            practitioner_identifier: user.practitioner_identifier.clone(),
            affiliations,
            grants: ReadGrants::default(),
        };
        let mut grants = common_grants(local, &identity.affiliations);
        grants.push(grant::LOCAL.to_owned());
        grants.push(grant::task_draft_recipient(local));
        grants.push(grant::QUESTIONNAIRE_RESPONSE_PRACTITIONERS.to_owned());
        if let Some(id) = &identity.practitioner_identifier {
            grants.push(grant::task_requester(
                crate::access::PRACTITIONER_IDENTIFIER_SYSTEM,
                id,
            ));
            grants.push(grant::practitioner(id));
        }
        for (system, code) in &identity.practitioner_roles {
            grants.push(grant::practitioner_role(system, code));
        }
        if identity.is_admin() {
            grants.push(grant::task_recipient(local));
            grants.push(grant::QUESTIONNAIRE_RESPONSE_LOCAL.to_owned());
        }
        identity.grants = ReadGrants::new(grants);
        identity
    }
}

fn common_grants(organization: &str, affiliations: &[Affiliation]) -> Vec<String> {
    let mut grants = vec![grant::ALL.to_owned(), grant::organization(organization)];
    grants.extend(
        affiliations
            .iter()
            .map(|a| grant::role(&a.parent, &a.system, &a.code)),
    );
    grants
}

pub(crate) fn organization_identifier(org: &Value) -> Option<String> {
    array_at(org, "identifier")
        .iter()
        .filter_map(identifier_of)
        .find(|(system, _)| *system == ORGANIZATION_IDENTIFIER_SYSTEM)
        .map(|(_, value)| value.to_owned())
}

fn unfiltered(resource_type: &'static str, criteria: &str) -> Result<SearchQuery> {
    let mut query = SearchQuery::parse_criteria(resource_type, criteria, "")?;
    query.count = crate::search::MAX_COUNT;
    Ok(query)
}

/// The roles `organization` (stored Organization) holds in parent organisations, from
/// active OrganizationAffiliations that name it by literal or logical reference.
async fn affiliations_of(
    store: &ResourceStore,
    organization: &StoredResource,
    identifier: &str,
) -> Result<Vec<Affiliation>> {
    let by_reference = unfiltered(
        "OrganizationAffiliation",
        &format!(
            "participating-organization={}&active=true",
            organization.reference()
        ),
    )?;
    let by_identifier = unfiltered(
        "OrganizationAffiliation",
        &format!(
            "participating-organization:identifier={ORGANIZATION_IDENTIFIER_SYSTEM}|{identifier}&active=true"
        ),
    )?;
    let mut found = store.search(&by_reference).await?.matches;
    found.extend(store.search(&by_identifier).await?.matches);
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found.dedup_by(|a, b| a.id == b.id);
    let mut out = Vec::new();
    for affiliation in &found {
        let json = affiliation.json()?;
        let Some(parent_ref) = json.get("organization") else {
            continue;
        };
        let parent = match parent_ref
            .get("identifier")
            .and_then(identifier_of)
            .filter(|(s, _)| *s == ORGANIZATION_IDENTIFIER_SYSTEM)
        {
            Some((_, value)) => Some(value.to_owned()),
            None => match str_at(parent_ref, "reference").and_then(|r| r.split_once('/')) {
                Some(("Organization", id)) => match store.read("Organization", id).await? {
                    Some(org) if !org.deleted => organization_identifier(&org.json()?),
                    _ => None,
                },
                _ => None,
            },
        };
        let Some(parent) = parent else { continue };
        for code in array_at(&json, "code") {
            for coding in array_at(code, "coding") {
                if let Some((system, code)) = coding_of(coding) {
                    out.push(Affiliation {
                        parent: parent.clone(),
                        system: system.to_owned(),
                        code: code.to_owned(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Maps a thumbprint to an identity; `Ok(None)` when nobody holds it.
pub async fn resolve(
    store: &ResourceStore,
    local_identifier: &str,
    users: &[LocalUser],
    certificate: &PeerCertificate,
) -> Result<Option<Identity>> {
    if let Some(org) = store
        .organization_by_thumbprint(certificate.thumbprint.as_str())
        .await?
    {
        let identifier = organization_identifier(&org.json()?).unwrap_or_default();
        let affiliations = affiliations_of(store, &org, &identifier).await?;
        let kind = if identifier == local_identifier {
            IdentityKind::LocalOrganization
        } else {
            IdentityKind::RemoteOrganization
        };
        return Ok(Some(Identity::organization(kind, identifier, affiliations)));
    }
    match matching_user(users, certificate) {
        Some(user) => Ok(Some(practitioner_of(store, local_identifier, &user).await?)),
        None => Ok(None),
    }
}

/// The local organisation's affiliations; `None` while it is not in the allow list.
async fn local_affiliations(
    store: &ResourceStore,
    local_identifier: &str,
) -> Result<Option<Vec<Affiliation>>> {
    let local = store
        .search(&unfiltered(
            "Organization",
            &format!("identifier={ORGANIZATION_IDENTIFIER_SYSTEM}|{local_identifier}&active=true"),
        )?)
        .await?
        .matches;
    match local.first() {
        Some(org) => Ok(Some(affiliations_of(store, org, local_identifier).await?)),
        None => Ok(None),
    }
}

/// `user` as a practitioner of the local organisation, with its affiliations.
async fn practitioner_of(
    store: &ResourceStore,
    local_identifier: &str,
    user: &LocalUser,
) -> Result<Identity> {
    let affiliations = local_affiliations(store, local_identifier)
        .await?
        .unwrap_or_default();
    Ok(Identity::practitioner(user, local_identifier, affiliations))
}

/// The identity of a user who logged in with OpenID Connect; `None` while the local
/// organisation is not in the allow list (as the Java DSF, which then knows no such user).
pub(crate) async fn practitioner_identity(
    store: &ResourceStore,
    local_identifier: &str,
    user: &LocalUser,
) -> Result<Option<Identity>> {
    Ok(local_affiliations(store, local_identifier)
        .await?
        .map(|affiliations| Identity::practitioner(user, local_identifier, affiliations)))
}

/// The local user an OpenID Connect token makes its holder: every configured user it matches
/// (by e-mail, token role or token group) in one, with all their roles; its practitioner
/// identifier the token's e-mail address. `None` when no rule gives it a DSF role.
pub(crate) fn token_user(
    users: &[LocalUser],
    email: &str,
    roles: &[String],
    groups: &[String],
) -> Option<LocalUser> {
    let mut matching = users
        .iter()
        .filter(|u| u.thumbprint.is_none() && u.matches_token(email, roles, groups));
    let mut user = matching.next()?.clone();
    for other in matching {
        user.add_roles(&other.roles, &other.practitioner_roles);
    }
    user.practitioner_identifier = Some(email.to_owned());
    (!user.roles.is_empty()).then_some(user)
}

/// The local user `certificate` makes its holder: every configured user it matches (by
/// thumbprint or e-mail) in one, with all their roles. Without a configured practitioner
/// identifier, the certificate's e-mail address is it, as in the Java DSF.
fn matching_user(users: &[LocalUser], certificate: &PeerCertificate) -> Option<LocalUser> {
    let mut matching = users.iter().filter(|u| u.matches(certificate));
    let mut user = matching.next()?.clone();
    for other in matching {
        user.add_roles(&other.roles, &other.practitioner_roles);
        if user.practitioner_identifier.is_none() {
            user.practitioner_identifier = other.practitioner_identifier.clone();
        }
    }
    if user.practitioner_identifier.is_none() {
        user.practitioner_identifier = certificate.emails.first().cloned();
    }
    Some(user)
}

/// The local organisation as a process-authorization recipient: its identity as if it
/// called itself. `None` while it is not in the allow list.
pub async fn local_organization(
    store: &ResourceStore,
    local_identifier: &str,
) -> Result<Option<Identity>> {
    Ok(local_affiliations(store, local_identifier)
        .await?
        .map(|affiliations| {
            Identity::organization(
                IdentityKind::LocalOrganization,
                local_identifier.to_owned(),
                affiliations,
            )
        }))
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
    entries: std::collections::HashMap<Thumbprint, Option<Arc<Identity>>>,
    local: Option<Option<Arc<Identity>>>,
}

const CACHE_CAPACITY: usize = 10_000;

impl IdentityCache {
    fn lookup<T: Clone>(
        &self,
        generation: u64,
        get: impl FnOnce(&CacheState) -> Option<T>,
    ) -> Option<T> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.generation == generation {
            get(&state)
        } else {
            None
        }
    }

    fn remember(&self, generation: u64, put: impl FnOnce(&mut CacheState)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if generation > state.generation {
            state.generation = generation;
            state.entries.clear();
            state.local = None;
        }
        if generation == state.generation {
            if state.entries.len() >= CACHE_CAPACITY {
                state.entries.clear();
            }
            put(&mut state);
        }
    }

    pub(crate) async fn resolve(
        &self,
        store: &ResourceStore,
        local_identifier: &str,
        users: &[LocalUser],
        certificate: &PeerCertificate,
    ) -> Result<Arc<Identity>> {
        let thumbprint = &certificate.thumbprint;
        let refused =
            || Error::Unauthenticated("client certificate is not part of the allow list".into());
        // Read before the lookup: a change committed meanwhile moves the generation on and
        // makes this entry stale at once.
        let generation = store.allow_list_generation();
        if let Some(hit) = self.lookup(generation, |s| s.entries.get(thumbprint).cloned()) {
            return hit.ok_or_else(refused);
        }
        let resolved = resolve(store, local_identifier, users, certificate)
            .await?
            .map(Arc::new);
        self.remember(generation, |s| {
            s.entries.insert(thumbprint.clone(), resolved.clone());
        });
        resolved.ok_or_else(refused)
    }

    /// [`local_organization`], cached the same way.
    pub(crate) async fn local(
        &self,
        store: &ResourceStore,
        local_identifier: &str,
    ) -> Result<Option<Arc<Identity>>> {
        let generation = store.allow_list_generation();
        if let Some(hit) = self.lookup(generation, |s| s.local.clone()) {
            return Ok(hit);
        }
        let resolved = local_organization(store, local_identifier)
            .await?
            .map(Arc::new);
        self.remember(generation, |s| s.local = Some(resolved.clone()));
        Ok(resolved)
    }
}
