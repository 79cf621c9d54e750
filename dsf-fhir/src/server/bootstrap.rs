//! Puts the local organisation and its endpoint into the store at start-up, as the Java DSF's
//! init bundle does, so that the local BPE's certificate is recognised from the first request.

use super::{FhirServer, ORGANIZATION_IDENTIFIER_SYSTEM, READ_ACCESS_TAG_SYSTEM};
use crate::search::SearchQuery;
use crate::store::WriteOp;
use crate::Result;
use dsf_core::Thumbprint;
use serde_json::{json, Value};

/// Identifier system of endpoints.
pub const ENDPOINT_IDENTIFIER_SYSTEM: &str = "http://dsf.dev/sid/endpoint-identifier";

/// An organisation of the allow list: its identifier, certificate thumbprints and FHIR base URL.
#[derive(Debug, Clone)]
pub struct AllowListEntry {
    /// The organisation's identifier value.
    pub identifier: String,
    /// Its name, for the Organization resource and logs.
    pub name: String,
    /// Thumbprints of its client certificates.
    pub thumbprints: Vec<Thumbprint>,
    /// Its FHIR server's base URL (its Endpoint's address).
    pub base_url: String,
}

/// The Java DSF derives the endpoint identifier from the base URL's host. Development
/// networks run several organisations on one host, so a non-default port is appended.
pub fn endpoint_identifier(base_url: &str) -> String {
    let authority = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or(base_url);
    match authority.rsplit_once(':') {
        Some((host, port)) if port != "443" => format!("{host}_{port}"),
        Some((host, _)) => host.to_owned(),
        None => authority.to_owned(),
    }
}

/// The Organization and Endpoint resources of one allow-list entry, as a conditional-update
/// pair that references each other through `urn:uuid` full URLs.
pub fn allow_list_ops(entry: &AllowListEntry) -> Result<Vec<WriteOp>> {
    let org_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let endpoint_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let endpoint_id = endpoint_identifier(&entry.base_url);
    let tag = json!([{"system": READ_ACCESS_TAG_SYSTEM, "code": "ALL"}]);
    let organization = json!({
        "resourceType": "Organization",
        "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/organization"], "tag": tag},
        "extension": entry.thumbprints.iter().map(|t| json!({
            "url": "http://dsf.dev/fhir/StructureDefinition/extension-certificate-thumbprint",
            "valueString": t.as_str(),
        })).collect::<Vec<Value>>(),
        "identifier": [{"system": ORGANIZATION_IDENTIFIER_SYSTEM, "value": entry.identifier}],
        "active": true,
        "name": entry.name,
        "endpoint": [{"reference": endpoint_urn, "type": "Endpoint"}],
    });
    let endpoint = json!({
        "resourceType": "Endpoint",
        "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/endpoint"], "tag": tag},
        "identifier": [{"system": ENDPOINT_IDENTIFIER_SYSTEM, "value": endpoint_id}],
        "status": "active",
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
        "managingOrganization": {"reference": org_urn, "type": "Organization"},
        "payloadType": [{"coding": [{"system": "http://hl7.org/fhir/resource-types", "code": "Task"}]}],
        "payloadMimeType": ["application/fhir+json", "application/fhir+xml"],
        "address": entry.base_url,
    });
    Ok(vec![
        WriteOp::ConditionalUpdate {
            query: SearchQuery::parse_criteria(
                "Organization",
                &format!(
                    "identifier={ORGANIZATION_IDENTIFIER_SYSTEM}|{}",
                    entry.identifier
                ),
                "",
            )?,
            resource: organization,
            full_url: Some(org_urn),
        },
        WriteOp::ConditionalUpdate {
            query: SearchQuery::parse_criteria(
                "Endpoint",
                &format!("identifier={ENDPOINT_IDENTIFIER_SYSTEM}|{endpoint_id}"),
                "",
            )?,
            resource: endpoint,
            full_url: Some(endpoint_urn),
        },
    ])
}

/// The Subscriptions every DSF FHIR server has (the Java DSF ships them in its internal
/// bundle): the BPE binds to them to hear of Tasks to start or continue and of answered user
/// tasks. As `(criteria, reason)`.
pub const BUILT_IN_SUBSCRIPTIONS: [(&str, &str); 2] = [
    (
        "Task?status=requested",
        "Waiting for new Tasks with status requested",
    ),
    (
        "QuestionnaireResponse?status=completed",
        "Waiting for completed QuestionnaireResponses",
    ),
];

/// Creates each of [`BUILT_IN_SUBSCRIPTIONS`] unless an equal one exists.
fn built_in_subscription_ops() -> Result<Vec<WriteOp>> {
    BUILT_IN_SUBSCRIPTIONS
        .iter()
        .map(|(criteria, reason)| {
            let if_none_exist = SearchQuery::criteria_from_pairs(
                "Subscription",
                &[
                    ("criteria:exact".to_owned(), (*criteria).to_owned()),
                    ("status".to_owned(), "active".to_owned()),
                    ("type".to_owned(), "websocket".to_owned()),
                    ("payload".to_owned(), "application/fhir+json".to_owned()),
                ],
                "",
            )?;
            Ok(WriteOp::Create {
                resource: json!({
                    "resourceType": "Subscription",
                    "meta": {"tag": [{"system": READ_ACCESS_TAG_SYSTEM, "code": "ALL"}]},
                    "status": "active",
                    "reason": reason,
                    "criteria": criteria,
                    "channel": {"type": "websocket", "payload": "application/fhir+json"},
                }),
                if_none_exist: Some(if_none_exist),
                full_url: None,
            })
        })
        .collect()
}

impl FhirServer {
    /// Creates the built-in Subscriptions ([`BUILT_IN_SUBSCRIPTIONS`]) if they are missing.
    pub(crate) async fn ensure_built_in_subscriptions(&self) -> Result<()> {
        self.store.transaction(built_in_subscription_ops()?).await?;
        Ok(())
    }

    /// Creates or updates the given allow-list entries (the local organisation among them)
    /// in one transaction.
    pub async fn load_allow_list(&self, entries: &[AllowListEntry]) -> Result<()> {
        let mut ops = Vec::new();
        for entry in entries {
            ops.extend(allow_list_ops(entry)?);
        }
        self.store.transaction(ops).await?;
        Ok(())
    }
}
