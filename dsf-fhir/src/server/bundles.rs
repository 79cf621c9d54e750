//! Bundles this server writes: searchset, history, batch-response and transaction-response.
//! Stored resources are embedded as raw JSON text, never parsed again.

use super::reply::etag;
use crate::store::StoredResource;
use crate::{Error, Result};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

#[derive(Serialize)]
#[serde(untagged)]
pub enum EntryResource<'a> {
    Raw(&'a RawValue),
    Value(Value),
}

#[derive(Serialize, Default)]
pub struct EntrySearch {
    pub mode: &'static str,
}

#[derive(Serialize)]
pub struct EntryRequest {
    pub method: &'static str,
    pub url: String,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EntryResponse {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Entry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<EntryResource<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<EntrySearch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<EntryRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<EntryResponse>,
}

#[derive(Serialize)]
pub struct Link {
    pub relation: &'static str,
    pub url: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle<'a> {
    resource_type: &'static str,
    id: String,
    meta: Value,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<Entry<'a>>,
}

impl<'a> Bundle<'a> {
    pub fn new(kind: &'static str) -> Self {
        Bundle {
            resource_type: "Bundle",
            id: uuid::Uuid::new_v4().to_string(),
            meta: serde_json::json!({
                "lastUpdated": crate::date::format_instant(crate::date::unix_millis_now()),
            }),
            kind,
            total: None,
            link: Vec::new(),
            entry: Vec::new(),
        }
    }

    pub fn total(mut self, total: i64) -> Self {
        self.total = Some(total);
        self
    }

    pub fn link(&mut self, relation: &'static str, url: String) {
        self.link.push(Link { relation, url });
    }

    pub fn push(&mut self, entry: Entry<'a>) {
        self.entry.push(entry);
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(Error::storage)
    }
}

/// A stored body as an embeddable raw value.
pub fn raw(stored: &StoredResource) -> Result<Option<&RawValue>> {
    match stored.body.as_deref() {
        None => Ok(None),
        Some(body) => serde_json::from_str::<&RawValue>(body)
            .map(Some)
            .map_err(Error::storage),
    }
}

pub fn full_url(base: &str, stored: &StoredResource) -> String {
    format!("{base}/{}/{}", stored.resource_type, stored.id)
}

/// `response` of a history entry for a stored version.
pub fn version_response(status: &str, stored: &StoredResource) -> EntryResponse {
    EntryResponse {
        status: status.to_owned(),
        location: None,
        etag: Some(etag(stored.version)),
        last_modified: Some(crate::store::format_instant(stored.last_updated)),
        outcome: None,
    }
}
