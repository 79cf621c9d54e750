//! The init bundle (`DEV_DSF_FHIR_SERVER_INIT_BUNDLE`): a transaction the operator writes,
//! usually the local organisation, its endpoint and its parent organisations' affiliations,
//! run at start as the local organisation under the same rules as any request.

use super::reply::Body;
use super::{Call, FhirServer};
use crate::format::Format;
use crate::{Error, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

impl FhirServer {
    /// Runs the transaction or batch Bundle `text` (FHIR JSON or XML, its placeholders filled)
    /// as the local organisation; the local organisation must be on the allow list already.
    /// Answers the response Bundle.
    pub async fn load_init_bundle(&self, text: &str) -> Result<Value> {
        let format = if text.trim_start().starts_with('<') {
            Format::Xml
        } else {
            Format::Json
        };
        let bundle = crate::format::parse_resource(text.as_bytes(), format)
            .map_err(|e| e.context("init bundle"))?;
        let kind = bundle.get("type").and_then(Value::as_str);
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle")
            || !matches!(kind, Some("transaction" | "batch"))
        {
            return Err(Error::Invalid(
                "init bundle: not a transaction or batch Bundle".into(),
            ));
        }
        let identity = self.local_identity().await?;
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json"),
        );
        headers.insert(
            http::HeaderName::from_static("prefer"),
            HeaderValue::from_static("return=minimal, handling=strict"),
        );
        let call = Call {
            identity: &identity,
            method: Method::POST,
            path: String::new(),
            query: Vec::new(),
            headers,
            body: Bytes::from(serde_json::to_vec(&bundle).map_err(Error::storage)?),
        };
        let reply = self
            .route(&call)
            .await
            .map_err(|e| e.context("init bundle"))?;
        let answer = match reply.body {
            Body::Value(value) => value,
            Body::Stored(json) => serde_json::from_str(&json).map_err(Error::storage)?,
            Body::Empty | Body::Raw { .. } | Body::Streamed { .. } => Value::Null,
        };
        let failed: Vec<String> = answer
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, entry)| {
                let status = entry.pointer("/response/status")?.as_str()?;
                (!status.starts_with('2')).then(|| format!("entry {i}: {status}"))
            })
            .collect();
        if !failed.is_empty() {
            return Err(Error::Invalid(format!(
                "init bundle: {}",
                failed.join(", ")
            )));
        }
        Ok(answer)
    }
}
