//! Process authorization: a Task is accepted only if an ActivityDefinition of the process it
//! instantiates (url and version, status draft or active) authorizes, for the Task's message
//! name and profile, the requester who sends it and this organisation as its recipient.
//!
//! The authorizations are `extension-process-authorization` extensions of the
//! ActivityDefinition: `message-name`, `task-profile`, and `requester` / `recipient` codings of
//! the `process-authorization` CodeSystem, some qualified by extensions naming an
//! organisation, a parent organisation and role, or a practitioner role.

use crate::access::{coding_of, extensions, identifier_of, str_at, ORGANIZATION_IDENTIFIER_SYSTEM};
use crate::search::SearchQuery;
use crate::server::identity::Identity;
use crate::store::ResourceStore;
use crate::{Error, Result};
use serde_json::Value;

pub const EXTENSION_PROCESS_AUTHORIZATION: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization";
pub const PROCESS_AUTHORIZATION_SYSTEM: &str =
    "http://dsf.dev/fhir/CodeSystem/process-authorization";
const EXTENSION_PRACTITIONER: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization-practitioner";
const EXTENSION_ORGANIZATION: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization-organization";
const EXTENSION_ORGANIZATION_PRACTITIONER: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization-organization-practitioner";
const EXTENSION_PARENT_ORGANIZATION_ROLE: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization-parent-organization-role";
const EXTENSION_PARENT_ORGANIZATION_ROLE_PRACTITIONER: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization-parent-organization-role-practitioner";

/// What a Task asks to be authorized for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRequest {
    /// `instantiatesCanonical` without the version.
    pub process_url: String,
    pub process_version: String,
    pub message_name: String,
    /// `Task.meta.profile`.
    pub task_profiles: Vec<String>,
}

/// Who is named by one requester or recipient coding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Party {
    All {
        local: bool,
        practitioner_role: Option<(String, String)>,
    },
    Organization {
        local: bool,
        organization: String,
        practitioner_role: Option<(String, String)>,
    },
    Role {
        local: bool,
        parent: String,
        role: (String, String),
        practitioner_role: Option<(String, String)>,
    },
}

fn sub_identifier(ext: &Value, url: &'static str) -> Option<String> {
    let (system, value) = extensions(ext, url)
        .next()?
        .get("valueIdentifier")
        .and_then(identifier_of)?;
    (system == ORGANIZATION_IDENTIFIER_SYSTEM).then(|| value.to_owned())
}

fn sub_coding(ext: &Value, url: &'static str) -> Option<(String, String)> {
    extensions(ext, url)
        .next()?
        .get("valueCoding")
        .and_then(coding_of)
        .map(|(s, c)| (s.to_owned(), c.to_owned()))
}

impl Party {
    /// Parses a coding; `recipient` allows only the local, non-practitioner codes.
    fn parse(coding: &Value, recipient: bool) -> Result<Party, String> {
        let Some((PROCESS_AUTHORIZATION_SYSTEM, code)) = coding_of(coding) else {
            return Err(format!("coding is not of {PROCESS_AUTHORIZATION_SYSTEM}"));
        };
        let missing = |what: &str| format!("{code} needs {what}");
        let practitioner = |url: &'static str| {
            extensions(coding, url)
                .next()
                .and_then(|e| e.get("valueCoding"))
                .and_then(coding_of)
                .map(|(s, c)| (s.to_owned(), c.to_owned()))
                .ok_or_else(|| missing("a practitioner role"))
        };
        let organization = || {
            extensions(coding, EXTENSION_ORGANIZATION)
                .next()
                .and_then(|e| e.get("valueIdentifier"))
                .and_then(identifier_of)
                .filter(|(s, _)| *s == ORGANIZATION_IDENTIFIER_SYSTEM)
                .map(|(_, v)| v.to_owned())
                .ok_or_else(|| missing("an organization identifier"))
        };
        let role = |url: &'static str| {
            let ext = extensions(coding, url).next().ok_or_else(|| missing(url))?;
            let parent = sub_identifier(ext, "parent-organization")
                .ok_or_else(|| missing("a parent-organization identifier"))?;
            let role = sub_coding(ext, "organization-role")
                .ok_or_else(|| missing("an organization-role"))?;
            Ok::<_, String>((ext, parent, role))
        };
        let party = match code {
            "LOCAL_ALL" => Party::All {
                local: true,
                practitioner_role: None,
            },
            "REMOTE_ALL" => Party::All {
                local: false,
                practitioner_role: None,
            },
            "LOCAL_ALL_PRACTITIONER" => Party::All {
                local: true,
                practitioner_role: Some(practitioner(EXTENSION_PRACTITIONER)?),
            },
            "LOCAL_ORGANIZATION" => Party::Organization {
                local: true,
                organization: organization()?,
                practitioner_role: None,
            },
            "REMOTE_ORGANIZATION" => Party::Organization {
                local: false,
                organization: organization()?,
                practitioner_role: None,
            },
            "LOCAL_ORGANIZATION_PRACTITIONER" => {
                let ext = extensions(coding, EXTENSION_ORGANIZATION_PRACTITIONER)
                    .next()
                    .ok_or_else(|| missing(EXTENSION_ORGANIZATION_PRACTITIONER))?;
                Party::Organization {
                    local: true,
                    organization: sub_identifier(ext, "organization")
                        .ok_or_else(|| missing("an organization identifier"))?,
                    practitioner_role: Some(
                        sub_coding(ext, "practitioner-role")
                            .ok_or_else(|| missing("a practitioner role"))?,
                    ),
                }
            }
            "LOCAL_ROLE" | "REMOTE_ROLE" => {
                let (_, parent, role) = role(EXTENSION_PARENT_ORGANIZATION_ROLE)?;
                Party::Role {
                    local: code == "LOCAL_ROLE",
                    parent,
                    role,
                    practitioner_role: None,
                }
            }
            "LOCAL_ROLE_PRACTITIONER" => {
                let (ext, parent, role) = role(EXTENSION_PARENT_ORGANIZATION_ROLE_PRACTITIONER)?;
                let practitioner_role = sub_coding(ext, "practitioner-role")
                    .ok_or_else(|| missing("a practitioner role"))?;
                Party::Role {
                    local: true,
                    parent,
                    role,
                    practitioner_role: Some(practitioner_role),
                }
            }
            other => return Err(format!("unknown process-authorization code '{other}'")),
        };
        let practitioner = matches!(
            &party,
            Party::All {
                practitioner_role: Some(_),
                ..
            } | Party::Organization {
                practitioner_role: Some(_),
                ..
            } | Party::Role {
                practitioner_role: Some(_),
                ..
            }
        );
        let local = match &party {
            Party::All { local, .. }
            | Party::Organization { local, .. }
            | Party::Role { local, .. } => *local,
        };
        if recipient && (practitioner || !local) {
            return Err(format!("{code} cannot name a recipient"));
        }
        Ok(party)
    }

    /// The Java DSF's rule: the locality must match, the organisation or role must match,
    /// and then an organisation identity is authorized by the non-practitioner codes, a
    /// practitioner by a practitioner code with its role, and a DSF administrator by either.
    fn authorizes(&self, identity: &Identity) -> bool {
        let (local, practitioner_role) = match self {
            Party::All {
                local,
                practitioner_role,
            } => (*local, practitioner_role),
            Party::Organization {
                local,
                organization,
                practitioner_role,
            } => {
                if identity.organization_identifier != *organization {
                    return false;
                }
                (*local, practitioner_role)
            }
            Party::Role {
                local,
                parent,
                role,
                practitioner_role,
            } => {
                if !identity.has_affiliation(parent, &role.0, &role.1) {
                    return false;
                }
                (*local, practitioner_role)
            }
        };
        if identity.is_local() != local {
            return false;
        }
        match practitioner_role {
            Some((system, code)) => {
                !identity.is_organization() && identity.has_practitioner_role(system, code)
                    || identity.is_admin()
            }
            None => identity.is_organization() || identity.is_admin(),
        }
    }
}

/// Checks one `extension-process-authorization` of an ActivityDefinition; returns its
/// message name.
pub(super) fn validate_authorization(authorization: &Value) -> Result<String, String> {
    let names: Vec<&str> = extensions(authorization, "message-name")
        .filter_map(|e| str_at(e, "valueString"))
        .collect();
    let [name] = names.as_slice() else {
        return Err("process authorization needs exactly one message-name".into());
    };
    if name.trim().is_empty() {
        return Err("process authorization message-name is blank".into());
    }
    if extensions(authorization, "task-profile")
        .filter_map(|e| str_at(e, "valueCanonical"))
        .count()
        != 1
    {
        return Err(format!(
            "process authorization of '{name}' needs exactly one task-profile"
        ));
    }
    for (url, recipient) in [("requester", false), ("recipient", true)] {
        let codings: Vec<&Value> = extensions(authorization, url)
            .filter_map(|e| e.get("valueCoding"))
            .collect();
        if codings.is_empty() {
            return Err(format!("process authorization of '{name}' needs a {url}"));
        }
        for coding in codings {
            Party::parse(coding, recipient).map_err(|e| format!("{url} of '{name}': {e}"))?;
        }
    }
    Ok((*name).to_owned())
}

/// `profile` (from Task.meta.profile) matches the authorization's `task-profile` exactly or,
/// without a version, its versioned form.
fn profile_matches(authorized: &str, profile: &str) -> bool {
    authorized == profile || authorized.split('|').next() == Some(profile)
}

/// The authorization extensions of the process's ActivityDefinitions that cover the request.
async fn authorizations(store: &ResourceStore, request: &ProcessRequest) -> Result<Vec<Value>> {
    let query = SearchQuery::parse(
        "ActivityDefinition",
        &[
            ("url".to_owned(), request.process_url.clone()),
            ("version".to_owned(), request.process_version.clone()),
            ("_count".to_owned(), "100".to_owned()),
        ],
        100,
        "",
    )?;
    let mut out = Vec::new();
    for stored in store.search(&query).await?.matches {
        let ad = stored.json()?;
        if !matches!(str_at(&ad, "status"), Some("draft" | "active")) {
            continue;
        }
        for authorization in extensions(&ad, EXTENSION_PROCESS_AUTHORIZATION) {
            let name_matches = extensions(authorization, "message-name")
                .any(|e| str_at(e, "valueString") == Some(request.message_name.as_str()));
            let profile_ok = extensions(authorization, "task-profile")
                .filter_map(|e| str_at(e, "valueCanonical"))
                .any(|authorized| {
                    request
                        .task_profiles
                        .iter()
                        .any(|p| profile_matches(authorized, p))
                });
            if name_matches && profile_ok {
                out.push(authorization.clone());
            }
        }
    }
    Ok(out)
}

/// The code of the first `url` (`requester` or `recipient`) coding of `authorization` that
/// names `identity`.
fn names<'a>(authorization: &'a Value, url: &'static str, identity: &Identity) -> Option<&'a str> {
    extensions(authorization, url)
        .filter_map(|e| e.get("valueCoding"))
        .find(|coding| {
            Party::parse(coding, url == "recipient").is_ok_and(|party| party.authorizes(identity))
        })
        .map(|coding| str_at(coding, "code").unwrap_or("?"))
}

fn note_authorized(request: &ProcessRequest, requester: Option<&str>, recipient: &str) {
    super::super::trace::allowed(|| {
        let requester = requester.map_or(String::new(), |code| format!("requester {code}, "));
        format!(
            "process authorization of {}|{} for message '{}': {requester}recipient {recipient}",
            request.process_url, request.process_version, request.message_name
        )
        .into()
    });
}

fn refused(request: &ProcessRequest, whom: &str) -> Error {
    Error::Forbidden(format!(
        "no active ActivityDefinition of {}|{} authorizes {whom} for message '{}'",
        request.process_url, request.process_version, request.message_name
    ))
}

/// Requester and recipient authorized by the same process authorization.
pub(super) async fn authorize(
    store: &ResourceStore,
    requester: &Identity,
    recipient: &Identity,
    request: &ProcessRequest,
) -> Result<()> {
    let found = authorizations(store, request).await?;
    let matched = found.iter().find_map(|a| {
        Some((
            names(a, "requester", requester)?,
            names(a, "recipient", recipient)?,
        ))
    });
    if let Some((requester, recipient)) = matched {
        note_authorized(request, Some(requester), recipient);
        Ok(())
    } else {
        Err(refused(
            request,
            &format!("requester '{}' and this recipient", requester.name()),
        ))
    }
}

/// The recipient alone, re-checked when a Task is completed.
pub(super) async fn authorize_recipient(
    store: &ResourceStore,
    recipient: &Identity,
    request: &ProcessRequest,
) -> Result<()> {
    let found = authorizations(store, request).await?;
    if let Some(code) = found.iter().find_map(|a| names(a, "recipient", recipient)) {
        note_authorized(request, None, code);
        Ok(())
    } else {
        Err(refused(request, "this recipient"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::identity::{Affiliation, IdentityKind};
    use serde_json::json;

    fn identity(kind: IdentityKind, org: &str) -> Identity {
        Identity {
            affiliations: vec![Affiliation {
                parent: "net.test".into(),
                system: "http://dsf.dev/fhir/CodeSystem/organization-role".into(),
                code: "DIC".into(),
            }],
            ..Identity::bare(kind, org)
        }
    }

    fn coding(code: &str) -> Value {
        json!({"system": PROCESS_AUTHORIZATION_SYSTEM, "code": code})
    }

    fn role_coding(code: &str, role: &str) -> Value {
        let mut c = coding(code);
        c["extension"] = json!([{"url": EXTENSION_PARENT_ORGANIZATION_ROLE, "extension": [
            {"url": "parent-organization", "valueIdentifier": {"system": ORGANIZATION_IDENTIFIER_SYSTEM, "value": "net.test"}},
            {"url": "organization-role", "valueCoding": {"system": "http://dsf.dev/fhir/CodeSystem/organization-role", "code": role}}
        ]}]);
        c
    }

    #[test]
    fn codes_match_identities() {
        let remote = identity(IdentityKind::RemoteOrganization, "a.test");
        let local = identity(IdentityKind::LocalOrganization, "b.test");
        let mut admin = identity(IdentityKind::Practitioner, "b.test");
        admin.practitioner_roles.push((
            crate::server::identity::DSF_ADMIN.0.into(),
            crate::server::identity::DSF_ADMIN.1.into(),
        ));
        let user = identity(IdentityKind::Practitioner, "b.test");
        let remote_all = Party::parse(&coding("REMOTE_ALL"), false).unwrap();
        assert!(remote_all.authorizes(&remote));
        assert!(!remote_all.authorizes(&local));
        let local_all = Party::parse(&coding("LOCAL_ALL"), false).unwrap();
        assert!(local_all.authorizes(&local));
        assert!(local_all.authorizes(&admin));
        assert!(!local_all.authorizes(&user));
        assert!(!local_all.authorizes(&remote));
        let dic = Party::parse(&role_coding("REMOTE_ROLE", "DIC"), false).unwrap();
        assert!(dic.authorizes(&remote));
        let hrp = Party::parse(&role_coding("REMOTE_ROLE", "HRP"), false).unwrap();
        assert!(!hrp.authorizes(&remote));
        let mut org = coding("REMOTE_ORGANIZATION");
        org["extension"] = json!([{"url": EXTENSION_ORGANIZATION, "valueIdentifier": {"system": ORGANIZATION_IDENTIFIER_SYSTEM, "value": "a.test"}}]);
        assert!(Party::parse(&org, false).unwrap().authorizes(&remote));
        org["extension"][0]["valueIdentifier"]["value"] = json!("c.test");
        assert!(!Party::parse(&org, false).unwrap().authorizes(&remote));
    }

    #[test]
    fn recipients_are_local_organizations() {
        assert!(Party::parse(&coding("REMOTE_ALL"), true).is_err());
        assert!(Party::parse(&coding("LOCAL_ALL"), true).is_ok());
        assert!(
            Party::parse(&coding("LOCAL_ORGANIZATION"), true).is_err(),
            "needs its extension"
        );
        assert!(Party::parse(&coding("EVERYONE"), false).is_err());
    }

    #[test]
    fn profiles_match_with_or_without_version() {
        let authorized = "http://dsf.dev/fhir/StructureDefinition/task-ping|1.0";
        assert!(profile_matches(authorized, authorized));
        assert!(profile_matches(
            authorized,
            "http://dsf.dev/fhir/StructureDefinition/task-ping"
        ));
        assert!(!profile_matches(
            authorized,
            "http://dsf.dev/fhir/StructureDefinition/task-ping|2.0"
        ));
        assert!(!profile_matches(
            authorized,
            "http://dsf.dev/fhir/StructureDefinition/task-pong"
        ));
    }
}
