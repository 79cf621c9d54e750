//! Read access: what a stored resource version grants, and what a caller holds.
//!
//! Every stored version gets a set of *grants*, short strings derived from its content: its
//! read-access tags (`ALL`, `LOCAL`, `ORGANIZATION`, `ROLE`) for most types, its requester and
//! recipient for Tasks, the questionnaire authorization for QuestionnaireResponses. A caller
//! holds a set of grants derived from its identity ([`ReadGrants`]). The caller may read a
//! version when the two sets meet. The store keeps the version grants in a table of their
//! own, so that searches, history and includes filter inside the query and paging and totals
//! stay right.

use crate::reference::normalise_reference;
use serde_json::Value;
use std::sync::Arc;

/// CodeSystem of the read-access tags in `meta.tag`.
pub const READ_ACCESS_TAG_SYSTEM: &str = "http://dsf.dev/fhir/CodeSystem/read-access-tag";
/// Extension of an `ORGANIZATION` tag: the organisation's identifier.
pub const EXTENSION_READ_ACCESS_ORGANIZATION: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-read-access-organization";
/// Extension of a `ROLE` tag: the parent organisation and the role.
pub const EXTENSION_READ_ACCESS_ROLE: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-read-access-parent-organization-role";
/// Extension of a Questionnaire naming who may answer it.
pub const EXTENSION_QUESTIONNAIRE_AUTHORIZATION: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-questionnaire-authorization";
/// Identifier system of organisations.
pub const ORGANIZATION_IDENTIFIER_SYSTEM: &str = "http://dsf.dev/sid/organization-identifier";
/// Identifier system of practitioners (local users).
pub const PRACTITIONER_IDENTIFIER_SYSTEM: &str = "http://dsf.dev/sid/practitioner-identifier";

/// A read-access tag of `meta.tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAccessTag {
    /// Readable by every organisation on the allow list.
    All,
    /// Readable by the local organisation only.
    Local,
    /// Readable by the organisation with this `organization-identifier` value.
    Organization(String),
    /// Readable by members of `parent` (organisation identifier value) in a role.
    Role {
        /// The parent organisation's identifier value.
        parent: String,
        /// The role's CodeSystem.
        system: String,
        /// The role's code.
        code: String,
    },
}

impl ReadAccessTag {
    /// The grant a version with this tag carries.
    pub fn grant(&self) -> String {
        match self {
            ReadAccessTag::All => grant::ALL.to_owned(),
            ReadAccessTag::Local => grant::LOCAL.to_owned(),
            ReadAccessTag::Organization(identifier) => grant::organization(identifier),
            ReadAccessTag::Role {
                parent,
                system,
                code,
            } => grant::role(parent, system, code),
        }
    }
}

/// The grant vocabulary shared by stored versions and callers.
pub mod grant {
    /// Granted to everyone allowed to read at all.
    pub const ALL: &str = "ALL";
    /// Granted to the local organisation.
    pub const LOCAL: &str = "LOCAL";
    /// QuestionnaireResponses: the local organisation and DSF administrators.
    pub const QUESTIONNAIRE_RESPONSE_LOCAL: &str = "QR-LOCAL";
    /// QuestionnaireResponses without a questionnaire-authorization extension: every
    /// practitioner of the local organisation (the DSF 1.x behaviour).
    pub const QUESTIONNAIRE_RESPONSE_PRACTITIONERS: &str = "QR-PRACTITIONERS";

    /// Granted to the organisation `identifier`.
    pub fn organization(identifier: &str) -> String {
        format!("ORGANIZATION|{identifier}")
    }
    /// Granted to members of `parent` in the role `system|code`.
    pub fn role(parent: &str, system: &str, code: &str) -> String {
        format!("ROLE|{parent}|{system}|{code}")
    }
    /// A Task's: its requester, by identifier.
    pub fn task_requester(system: &str, value: &str) -> String {
        format!("TASK-REQUESTER|{system}|{value}")
    }
    /// A Task's: its recipient organisation.
    pub fn task_recipient(organization: &str) -> String {
        format!("TASK-RECIPIENT|{organization}")
    }
    /// A draft Task's: its recipient organisation.
    pub fn task_draft_recipient(organization: &str) -> String {
        format!("TASK-DRAFT-RECIPIENT|{organization}")
    }
    /// Granted to the practitioner `identifier`.
    pub fn practitioner(identifier: &str) -> String {
        format!("PRACTITIONER|{identifier}")
    }
    /// Granted to practitioners with the role `system|code`.
    pub fn practitioner_role(system: &str, code: &str) -> String {
        format!("PRACTITIONER-ROLE|{system}|{code}")
    }
    /// A Binary readable by whoever may read the resource `Type/id` (its securityContext).
    pub fn security_context(reference: &str) -> String {
        format!("CONTEXT|{reference}")
    }
    /// The start of every [`security_context`] grant.
    pub const CONTEXT_PREFIX: &str = "CONTEXT|";
}

/// What a caller may read: a sorted set of grants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ReadGrants(Arc<[String]>);

impl ReadGrants {
    /// The set of `grants` (sorted, duplicates dropped).
    pub fn new(mut grants: Vec<String>) -> Self {
        grants.sort();
        grants.dedup();
        ReadGrants(grants.into())
    }

    /// The grants, sorted.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether a version granting `granted` is readable. Binaries readable through their
    /// security context need the store (see [`crate::ResourceStore::is_readable`]).
    pub fn admits(&self, granted: &[String]) -> bool {
        granted.iter().any(|g| self.0.binary_search(g).is_ok())
    }
}

pub(crate) fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

pub(crate) fn array_at<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `(system, value)` of an Identifier.
pub(crate) fn identifier_of(identifier: &Value) -> Option<(&str, &str)> {
    Some((str_at(identifier, "system")?, str_at(identifier, "value")?))
}

/// `(system, code)` of a Coding.
pub(crate) fn coding_of(coding: &Value) -> Option<(&str, &str)> {
    Some((str_at(coding, "system")?, str_at(coding, "code")?))
}

/// The extensions of `value` with `url`.
pub(crate) fn extensions<'a>(
    value: &'a Value,
    url: &'static str,
) -> impl Iterator<Item = &'a Value> {
    array_at(value, "extension")
        .iter()
        .filter(move |e| str_at(e, "url") == Some(url))
}

fn organization_identifier_value(identifier: &Value) -> Option<&str> {
    match identifier_of(identifier)? {
        (ORGANIZATION_IDENTIFIER_SYSTEM, value) if !value.is_empty() => Some(value),
        _ => None,
    }
}

fn parse_tag(tag: &Value) -> Result<ReadAccessTag, String> {
    let code = str_at(tag, "code").unwrap_or("");
    match code {
        "ALL" => Ok(ReadAccessTag::All),
        "LOCAL" => Ok(ReadAccessTag::Local),
        "ORGANIZATION" => {
            let found: Vec<&Value> = extensions(tag, EXTENSION_READ_ACCESS_ORGANIZATION).collect();
            match found.as_slice() {
                [one] => one
                    .get("valueIdentifier")
                    .and_then(organization_identifier_value)
                    .map(|v| ReadAccessTag::Organization(v.to_owned()))
                    .ok_or_else(|| {
                        format!("ORGANIZATION read-access tag needs a valueIdentifier of {ORGANIZATION_IDENTIFIER_SYSTEM}")
                    }),
                _ => Err(format!(
                    "ORGANIZATION read-access tag needs exactly one extension {EXTENSION_READ_ACCESS_ORGANIZATION}"
                )),
            }
        }
        "ROLE" => {
            let found: Vec<&Value> = extensions(tag, EXTENSION_READ_ACCESS_ROLE).collect();
            let [one] = found.as_slice() else {
                return Err(format!(
                    "ROLE read-access tag needs exactly one extension {EXTENSION_READ_ACCESS_ROLE}"
                ));
            };
            let parent = extensions(one, "parent-organization")
                .next()
                .and_then(|e| e.get("valueIdentifier"))
                .and_then(organization_identifier_value);
            let role = extensions(one, "organization-role")
                .next()
                .and_then(|e| e.get("valueCoding"))
                .and_then(coding_of);
            match (parent, role) {
                (Some(parent), Some((system, code))) => Ok(ReadAccessTag::Role {
                    parent: parent.to_owned(),
                    system: system.to_owned(),
                    code: code.to_owned(),
                }),
                _ => Err("ROLE read-access tag needs a parent-organization identifier and an organization-role coding".into()),
            }
        }
        other => Err(format!("unknown read-access tag code '{other}'")),
    }
}

/// The read-access tags of a resource, checked as the DSF checks them on write: exactly one
/// `ALL` and nothing else, or one `LOCAL` with any number of `ORGANIZATION` and `ROLE` tags.
pub fn read_access_tags(resource: &Value) -> Result<Vec<ReadAccessTag>, String> {
    let meta = resource.get("meta").unwrap_or(&Value::Null);
    let tags = array_at(meta, "tag")
        .iter()
        .filter(|t| str_at(t, "system") == Some(READ_ACCESS_TAG_SYSTEM))
        .map(parse_tag)
        .collect::<Result<Vec<_>, String>>()?;
    let all = tags.iter().filter(|t| **t == ReadAccessTag::All).count();
    let local = tags.iter().filter(|t| **t == ReadAccessTag::Local).count();
    match (tags.len(), all, local) {
        (0, _, _) => Err(format!(
            "read-access tag missing: meta.tag needs system {READ_ACCESS_TAG_SYSTEM} with code ALL or LOCAL"
        )),
        (1, 1, _) => Ok(tags),
        (_, 0, 1) => Ok(tags),
        (_, 0, 0) => Err("ORGANIZATION and ROLE read-access tags need a LOCAL tag beside them".into()),
        _ => Err("read-access tags must be one ALL alone, or one LOCAL with any ORGANIZATION and ROLE tags".into()),
    }
}

/// The grants a stored version of `resource_type` carries. Never fails: content a write
/// rule would refuse simply grants less.
pub fn grants_of(resource_type: &str, resource: &Value, base_url: &str) -> Vec<String> {
    let mut out = match resource_type {
        "Task" => task_grants(resource),
        "QuestionnaireResponse" => questionnaire_response_grants(resource),
        _ => read_access_tags(resource)
            .map(|tags| tags.iter().map(ReadAccessTag::grant).collect())
            .unwrap_or_default(),
    };
    if resource_type == "Binary" {
        if let Some(reference) = resource
            .get("securityContext")
            .and_then(|c| str_at(c, "reference"))
        {
            let reference = normalise_reference(reference, base_url);
            // A version-specific context grants what the resource grants now.
            let unversioned = match reference.split_once("/_history/") {
                Some((r, _)) => r.to_owned(),
                None => reference,
            };
            out.push(grant::security_context(&unversioned));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn task_grants(task: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((system, value)) = task
        .get("requester")
        .and_then(|r| r.get("identifier"))
        .and_then(identifier_of)
    {
        out.push(grant::task_requester(system, value));
    }
    let draft = str_at(task, "status") == Some("draft");
    let recipients = task
        .get("restriction")
        .map(|r| array_at(r, "recipient"))
        .unwrap_or(&[]);
    for recipient in recipients {
        if let Some(org) = recipient
            .get("identifier")
            .and_then(organization_identifier_value)
        {
            out.push(grant::task_recipient(org));
            if draft {
                out.push(grant::task_draft_recipient(org));
            }
        }
    }
    out
}

fn questionnaire_response_grants(response: &Value) -> Vec<String> {
    let mut out = vec![grant::QUESTIONNAIRE_RESPONSE_LOCAL.to_owned()];
    let mut authorizations = extensions(response, EXTENSION_QUESTIONNAIRE_AUTHORIZATION).peekable();
    if authorizations.peek().is_none() {
        out.push(grant::QUESTIONNAIRE_RESPONSE_PRACTITIONERS.to_owned());
    }
    for authorization in authorizations {
        for practitioner in extensions(authorization, "practitioner") {
            if let Some((PRACTITIONER_IDENTIFIER_SYSTEM, value)) =
                practitioner.get("valueIdentifier").and_then(identifier_of)
            {
                out.push(grant::practitioner(value));
            }
        }
        for role in extensions(authorization, "practitioner-role") {
            if let Some((system, code)) = role.get("valueCoding").and_then(coding_of) {
                out.push(grant::practitioner_role(system, code));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tagged(tags: Value) -> Value {
        json!({"resourceType": "Library", "meta": {"tag": tags}})
    }

    fn tag(code: &str) -> Value {
        json!({"system": READ_ACCESS_TAG_SYSTEM, "code": code})
    }

    fn organization_tag(identifier: &str) -> Value {
        json!({"system": READ_ACCESS_TAG_SYSTEM, "code": "ORGANIZATION", "extension": [{
            "url": EXTENSION_READ_ACCESS_ORGANIZATION,
            "valueIdentifier": {"system": ORGANIZATION_IDENTIFIER_SYSTEM, "value": identifier}}]})
    }

    fn role_tag(parent: &str, code: &str) -> Value {
        json!({"system": READ_ACCESS_TAG_SYSTEM, "code": "ROLE", "extension": [{
        "url": EXTENSION_READ_ACCESS_ROLE,
        "extension": [
            {"url": "parent-organization", "valueIdentifier": {"system": ORGANIZATION_IDENTIFIER_SYSTEM, "value": parent}},
            {"url": "organization-role", "valueCoding": {"system": "http://dsf.dev/fhir/CodeSystem/organization-role", "code": code}}
        ]}]})
    }

    #[test]
    fn valid_tag_sets() {
        assert_eq!(
            read_access_tags(&tagged(json!([tag("ALL")]))),
            Ok(vec![ReadAccessTag::All])
        );
        let tags = read_access_tags(&tagged(json!([
            tag("LOCAL"),
            organization_tag("a.test"),
            role_tag("net.test", "DIC")
        ])))
        .unwrap();
        assert_eq!(tags.len(), 3);
        assert_eq!(
            tags[2].grant(),
            "ROLE|net.test|http://dsf.dev/fhir/CodeSystem/organization-role|DIC"
        );
    }

    #[test]
    fn invalid_tag_sets() {
        for tags in [
            json!([]),
            json!([tag("ALL"), tag("LOCAL")]),
            json!([tag("ALL"), tag("ALL")]),
            json!([tag("LOCAL"), tag("LOCAL")]),
            json!([organization_tag("a.test")]),
            json!([tag("LOCAL"), tag("ORGANIZATION")]),
            json!([tag("LOCAL"), tag("ROLE")]),
            json!([tag("EVERYONE")]),
        ] {
            assert!(
                read_access_tags(&tagged(tags.clone())).is_err(),
                "{tags} accepted"
            );
        }
        assert!(read_access_tags(&json!({"resourceType": "Library"})).is_err());
    }

    #[test]
    fn task_grants_name_requester_and_recipient() {
        let task = json!({"resourceType": "Task", "status": "draft",
            "requester": {"identifier": {"system": ORGANIZATION_IDENTIFIER_SYSTEM, "value": "a.test"}},
            "restriction": {"recipient": [{"identifier": {"system": ORGANIZATION_IDENTIFIER_SYSTEM, "value": "b.test"}}]}});
        assert_eq!(
            grants_of("Task", &task, "https://b.test/fhir"),
            vec![
                "TASK-DRAFT-RECIPIENT|b.test",
                "TASK-RECIPIENT|b.test",
                "TASK-REQUESTER|http://dsf.dev/sid/organization-identifier|a.test",
            ]
        );
    }

    #[test]
    fn binary_grants_its_security_context() {
        let binary = json!({"resourceType": "Binary",
            "securityContext": {"reference": "https://b.test/fhir/Task/1/_history/2"}});
        assert_eq!(
            grants_of("Binary", &binary, "https://b.test/fhir"),
            vec!["CONTEXT|Task/1"]
        );
    }

    #[test]
    fn read_grants_admit_on_any_overlap() {
        let grants = ReadGrants::new(vec!["LOCAL".into(), "ALL".into(), "ALL".into()]);
        assert_eq!(grants.as_slice(), ["ALL", "LOCAL"]);
        assert!(grants.admits(&["ORGANIZATION|x".into(), "LOCAL".into()]));
        assert!(!grants.admits(&["ORGANIZATION|x".into()]));
    }
}
