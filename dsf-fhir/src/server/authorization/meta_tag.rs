//! Rules for every type but Task and QuestionnaireResponse (the Java DSF's meta-tag rules):
//! only local identities write them (the role gate sees to that), each needs valid
//! read-access tags, and some types have content and immutability rules of their own.

use super::{forbidden, process};
use crate::access::{
    array_at, extensions, identifier_of, read_access_tags, str_at, ReadAccessTag,
    ORGANIZATION_IDENTIFIER_SYSTEM,
};
use crate::search::SearchQuery;
use crate::server::identity::Identity;
use crate::server::ENDPOINT_IDENTIFIER_SYSTEM;
use crate::store::ResourceStore;
use crate::{Error, Result};
use serde_json::Value;

pub const THUMBPRINT_EXTENSION: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-certificate-thumbprint";

async fn organization_exists(store: &ResourceStore, identifier: &str) -> Result<bool> {
    let query = SearchQuery::parse_criteria(
        "Organization",
        &format!("identifier={ORGANIZATION_IDENTIFIER_SYSTEM}|{identifier}&_count=1"),
        "",
    )?;
    Ok(!store.search(&query).await?.matches.is_empty())
}

/// Read-access tags (400 when missing or invalid) and the type's own content rules (403).
pub(super) async fn check_content(
    store: &ResourceStore,
    identity: &Identity,
    resource_type: &str,
    resource: &Value,
) -> Result<()> {
    if !identity.is_local() {
        return Err(forbidden(
            &format!("write of {resource_type}"),
            identity,
            "not a local identity",
        ));
    }
    let has_context = resource_type == "Binary" && resource.get("securityContext").is_some();
    if has_context {
        // A Binary with a security context is readable as its context is; tags would be a
        // second, conflicting answer.
        if read_access_tags(resource).is_ok() {
            return Err(Error::Invalid(
                "Binary has both a securityContext and read-access tags; it takes one of them"
                    .into(),
            ));
        }
    } else {
        let tags = read_access_tags(resource).map_err(Error::Invalid)?;
        for tag in &tags {
            let organization = match tag {
                ReadAccessTag::Organization(org) => org,
                ReadAccessTag::Role { parent, .. } => parent,
                _ => continue,
            };
            if !organization_exists(store, organization).await? {
                return Err(Error::Invalid(format!(
                    "read-access tag names organization '{organization}', which does not exist"
                )));
            }
        }
    }
    check_type_rules(resource_type, resource)
        .map_err(|why| forbidden(&format!("write of {resource_type}"), identity, why))
}

fn check_type_rules(resource_type: &str, resource: &Value) -> Result<(), String> {
    match resource_type {
        "ActivityDefinition" => activity_definition(resource),
        "Endpoint" => endpoint(resource),
        "Organization" => organization(resource),
        "OrganizationAffiliation" => organization_affiliation(resource),
        "Subscription" => subscription(resource),
        _ => Ok(()),
    }
}

fn activity_definition(ad: &Value) -> Result<(), String> {
    if str_at(ad, "url").is_none_or(str::is_empty)
        || str_at(ad, "version").is_none_or(str::is_empty)
    {
        return Err("ActivityDefinition.url and ActivityDefinition.version are required".into());
    }
    if !matches!(str_at(ad, "status"), Some("draft" | "active" | "retired")) {
        return Err("ActivityDefinition.status must be draft, active or retired".into());
    }
    let authorizations: Vec<&Value> =
        extensions(ad, process::EXTENSION_PROCESS_AUTHORIZATION).collect();
    if authorizations.is_empty() {
        return Err(format!(
            "ActivityDefinition needs at least one extension {}",
            process::EXTENSION_PROCESS_AUTHORIZATION
        ));
    }
    let mut names = Vec::new();
    for authorization in authorizations {
        let name = process::validate_authorization(authorization)?;
        if names.contains(&name) {
            return Err(format!("message-name '{name}' is authorized twice"));
        }
        names.push(name);
    }
    Ok(())
}

/// `https://host[:port][/path]` as the DSF's Endpoint rule matches it: the whole address
/// against `https://[0-9a-zA-Z.-]+(?::\d{1,4})?[-\w/]*`. Digits past the fourth of a port
/// fall to the path part, so a five-digit port passes there too.
fn valid_endpoint_address(address: &str) -> bool {
    let Some(rest) = address.strip_prefix("https://") else {
        return false;
    };
    let host = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        .count();
    if host == 0 {
        return false;
    }
    let mut rest = &rest[host..];
    if let Some(port) = rest.strip_prefix(':') {
        let digits = port.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &port[digits.min(4)..];
    }
    rest.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/'))
}

fn identifiers_with<'a>(resource: &'a Value, system: &str) -> Vec<&'a str> {
    array_at(resource, "identifier")
        .iter()
        .filter_map(identifier_of)
        .filter(|(s, _)| *s == system)
        .map(|(_, v)| v)
        .collect()
}

fn endpoint(endpoint: &Value) -> Result<(), String> {
    if identifiers_with(endpoint, ENDPOINT_IDENTIFIER_SYSTEM).len() != 1 {
        return Err(format!(
            "Endpoint needs exactly one identifier of {ENDPOINT_IDENTIFIER_SYSTEM}"
        ));
    }
    match str_at(endpoint, "address") {
        Some(address) if valid_endpoint_address(address) => Ok(()),
        _ => Err("Endpoint.address must be an https URL".into()),
    }
}

fn organization(org: &Value) -> Result<(), String> {
    if identifiers_with(org, ORGANIZATION_IDENTIFIER_SYSTEM).len() != 1 {
        return Err(format!(
            "Organization needs exactly one identifier of {ORGANIZATION_IDENTIFIER_SYSTEM}"
        ));
    }
    for ext in extensions(org, THUMBPRINT_EXTENSION) {
        let valid = str_at(ext, "valueString").is_some_and(|t| {
            t.len() == 128
                && t.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !valid {
            return Err(
                "certificate thumbprints must be 128 lower-case hex digits (SHA-512)".into(),
            );
        }
    }
    Ok(())
}

fn organization_affiliation(affiliation: &Value) -> Result<(), String> {
    if affiliation.get("organization").is_none()
        || affiliation.get("participatingOrganization").is_none()
    {
        return Err(
            "OrganizationAffiliation needs organization and participatingOrganization".into(),
        );
    }
    if array_at(affiliation, "endpoint").len() != 1 {
        return Err("OrganizationAffiliation needs exactly one endpoint".into());
    }
    let codes = array_at(affiliation, "code");
    if codes.is_empty() || codes.iter().any(|c| array_at(c, "coding").is_empty()) {
        return Err("OrganizationAffiliation needs role codes with codings".into());
    }
    Ok(())
}

fn subscription(subscription: &Value) -> Result<(), String> {
    let criteria = str_at(subscription, "criteria").unwrap_or("");
    let (t, query) = criteria.split_once('?').unwrap_or((criteria, ""));
    let t = crate::resource_type::supported_type(t)
        .ok_or_else(|| format!("Subscription.criteria '{criteria}' names no supported type"))?;
    let parsed = SearchQuery::parse(t, &crate::search::parse_query_string(query), 20, "")
        .map_err(|e| format!("Subscription.criteria: {e}"))?;
    if !parsed.unsupported.is_empty() {
        return Err(format!(
            "Subscription.criteria has unsupported parameters: {}",
            parsed.unsupported.join(", ")
        ));
    }
    let channel = subscription.get("channel").unwrap_or(&Value::Null);
    if str_at(channel, "type") != Some("websocket") {
        return Err("Subscription.channel.type must be websocket".into());
    }
    match str_at(channel, "payload") {
        None | Some("application/fhir+json") | Some("application/fhir+xml") => Ok(()),
        Some(other) => Err(format!(
            "Subscription.channel.payload '{other}' is not supported; use application/fhir+json, application/fhir+xml or none"
        )),
    }
}

/// Fields that identify a resource and may not change.
pub(super) fn check_update(resource_type: &str, old: &Value, new: &Value) -> Result<()> {
    let fixed: &[&str] = match resource_type {
        "ActivityDefinition" => &["url", "version"],
        "Endpoint" => &["identifier", "address"],
        "Organization" => &["identifier"],
        "Subscription" => &["criteria", "channel.type", "channel.payload"],
        _ => &[],
    };
    let at = |resource: &Value, field: &str| {
        field
            .split('.')
            .try_fold(resource, |v, step| v.get(step))
            .cloned()
    };
    for field in fixed {
        if at(old, field) != at(new, field) {
            return Err(Error::Forbidden(format!(
                "{resource_type}.{field} cannot be changed"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_addresses() {
        assert!(valid_endpoint_address("https://dsf.example.org/fhir"));
        assert!(valid_endpoint_address("https://localhost:8443/fhir"));
        assert!(valid_endpoint_address("https://localhost:45213/fhir"));
        assert!(!valid_endpoint_address("https://localhost:/fhir"));
        assert!(!valid_endpoint_address("https://localhost:x/fhir"));
        assert!(valid_endpoint_address("https://a-b.c"));
        assert!(!valid_endpoint_address("http://dsf.example.org/fhir"));
        // Java's Pattern.matches takes ":8443" as the port and "0/fhir" as the path.
        assert!(valid_endpoint_address("https://dsf.example.org:84430/fhir"));
        assert!(!valid_endpoint_address("https://dsf.example.org/fhir?x=1"));
        assert!(!valid_endpoint_address("https://:8443/fhir"));
    }
}
