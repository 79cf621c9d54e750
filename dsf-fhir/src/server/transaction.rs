//! `POST /` with a batch or transaction Bundle. A batch runs each entry as its own request; a
//! transaction runs all writes in one database transaction (DELETE, then POST, then PUT, as the
//! Java DSF orders them), then the reads, and answers in the original entry order.

use super::bundles::{Bundle, Entry, EntryResource, EntryResponse};
use super::reply::{Body, Reply};
use super::rest::{parse_etag, resource_type, valid_id};
use super::{status, Call, FhirServer, Role};
use crate::search::parse_query_string;
use crate::store::{StoredResource, WriteOp, WriteOutcome};
use crate::{Error, Result};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;

/// One entry's request, as parsed from the Bundle.
struct Request {
    method: Method,
    /// Below the base URL, no leading '/'.
    path: String,
    query: Vec<(String, String)>,
    resource: Option<Value>,
    full_url: Option<String>,
    if_none_exist: Option<String>,
    if_match: Option<String>,
    if_none_match: Option<String>,
}

fn entry_error(index: usize, e: Error) -> Error {
    e.context(&format!("entry {index}"))
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl FhirServer {
    /// `POST /`: runs the posted batch or transaction Bundle.
    pub(crate) async fn bundle(&self, call: &Call<'_>) -> Result<Reply> {
        let bundle = self.parse_body(call).await?;
        if str_at(&bundle, "resourceType") != Some("Bundle") {
            return Err(Error::Invalid(
                "POST to the base URL takes a batch or transaction Bundle".into(),
            ));
        }
        let entries = bundle
            .get("entry")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match str_at(&bundle, "type") {
            Some("batch") => BundleRun { server: self, call }.batch(&entries).await,
            Some("transaction") => BundleRun { server: self, call }.transaction(&entries).await,
            other => Err(Error::Invalid(format!(
                "Bundle type {} is neither batch nor transaction",
                other.unwrap_or("(none)")
            ))),
        }
    }
}

/// One batch or transaction Bundle being run for one request.
struct BundleRun<'s, 'c> {
    server: &'s FhirServer,
    /// The request that posted the Bundle: its caller and its headers.
    call: &'s Call<'c>,
}

impl BundleRun<'_, '_> {
    fn parse_request(&self, entry: &Value) -> Result<Request> {
        let request = entry
            .get("request")
            .ok_or_else(|| Error::Invalid("entry has no request".into()))?;
        let method = match str_at(request, "method") {
            Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            Some("POST") => Method::POST,
            Some("PUT") => Method::PUT,
            Some("DELETE") => Method::DELETE,
            other => {
                return Err(Error::NotSupported(format!(
                    "request method {} is not supported",
                    other.unwrap_or("(none)")
                )))
            }
        };
        let url =
            str_at(request, "url").ok_or_else(|| Error::Invalid("request has no url".into()))?;
        let url = url
            .strip_prefix(self.server.config.base_url.as_str())
            .unwrap_or(url);
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        if path.contains("://") {
            return Err(Error::Invalid(format!(
                "request url {url} is not on this server"
            )));
        }
        Ok(Request {
            method,
            path: path.trim_matches('/').to_owned(),
            query: parse_query_string(query),
            resource: entry.get("resource").cloned(),
            full_url: str_at(entry, "fullUrl").map(str::to_owned),
            if_none_exist: str_at(request, "ifNoneExist").map(str::to_owned),
            if_match: str_at(request, "ifMatch").map(str::to_owned),
            if_none_match: str_at(request, "ifNoneMatch").map(str::to_owned),
        })
    }

    /// Runs one entry as if it were its own HTTP request.
    async fn sub_request(&self, request: Request) -> Result<Reply> {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("if-none-exist", &request.if_none_exist),
            ("if-match", &request.if_match),
            ("if-none-match", &request.if_none_match),
        ] {
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        }
        for name in ["prefer"] {
            if let Some(v) = self.call.headers.get(name) {
                headers.insert(name, v.clone());
            }
        }
        // An entry's answer is a resource: a Binary read in a Bundle is the Binary resource,
        // never its raw content.
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/fhir+json"),
        );
        let body = match &request.resource {
            Some(resource) => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/fhir+json"),
                );
                Bytes::from(serde_json::to_vec(resource).map_err(Error::storage)?)
            }
            None => Bytes::new(),
        };
        let method = if request.method == Method::HEAD {
            Method::GET
        } else {
            request.method
        };
        let sub = Call {
            identity: self.call.identity,
            method,
            path: request.path,
            query: request.query,
            headers,
            body,
        };
        let reply = Box::pin(self.server.route(&sub)).await?;
        self.server.collected(reply).await
    }

    async fn batch(&self, entries: &[Value]) -> Result<Reply> {
        let mut replies = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let reply = match self.parse_request(entry) {
                Ok(request) if request.path.is_empty() => {
                    Err(Error::NotSupported("nested batch or transaction".into()))
                }
                Ok(request) => self.sub_request(request).await,
                Err(e) => Err(e),
            };
            replies.push(reply.unwrap_or_else(|e| Reply::error(&entry_error(index, e))));
        }
        self.response_bundle("batch-response", replies)
    }

    /// A failed transaction answers 403 when a rule refused it, and otherwise 400 with the
    /// failing entry's reason, as the Java DSF does; faults of the server stay 5xx.
    async fn transaction(&self, entries: &[Value]) -> Result<Reply> {
        self.run_transaction(entries).await.map_err(|e| match e {
            Error::Forbidden(_)
            | Error::Duplicate(_)
            | Error::ProfileViolation(_)
            | Error::Invalid(_)
            | Error::Storage { .. }
            | Error::Unavailable(_)
            | Error::Timeout(_)
            | Error::PayloadTooLarge(_)
            | Error::Unauthenticated(_) => e,
            other => Error::Invalid(other.to_string()),
        })
    }

    async fn run_transaction(&self, entries: &[Value]) -> Result<Reply> {
        let requests: Vec<Request> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| self.parse_request(e).map_err(|err| entry_error(i, err)))
            .collect::<Result<_>>()?;
        let priority = |m: &Method| match *m {
            Method::DELETE => 1,
            Method::POST => 2,
            Method::PUT => 3,
            _ => 5,
        };
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by_key(|i| (priority(&requests[*i].method), *i));
        let mut ops = Vec::new();
        let mut op_entries = Vec::new();
        for &i in &order {
            let request = &requests[i];
            if let Some(op) = self.write_op(request).map_err(|e| entry_error(i, e))? {
                ops.push(op);
                op_entries.push(i);
            }
        }
        let outcomes = self
            .server
            .write_as(self.call, ops, {
                let op_entries = op_entries.clone();
                move |op| format!("entry {}", op_entries.get(op).copied().unwrap_or(op))
            })
            .await?;
        let mut replies: Vec<Option<Reply>> = (0..requests.len()).map(|_| None).collect();
        for (i, outcome) in op_entries.into_iter().zip(outcomes) {
            replies[i] = Some(self.outcome_reply(outcome));
        }
        // The writes are committed: a read that fails (a GET that finds nothing) answers
        // its own entry and leaves the others be.
        for (i, request) in requests.into_iter().enumerate() {
            if replies[i].is_none() {
                let reply = self
                    .sub_request(request)
                    .await
                    .unwrap_or_else(|e| Reply::error(&entry_error(i, e)));
                replies[i] = Some(reply);
            }
        }
        self.response_bundle(
            "transaction-response",
            replies.into_iter().flatten().collect(),
        )
    }

    /// The store operation of a write entry, or `None` for reads.
    fn write_op(&self, request: &Request) -> Result<Option<WriteOp>> {
        let segments: Vec<&str> = request.path.split('/').filter(|s| !s.is_empty()).collect();
        let resource = || {
            request
                .resource
                .clone()
                .ok_or_else(|| Error::Invalid(format!("{} entry has no resource", request.method)))
        };
        let op = match (&request.method, segments.as_slice()) {
            (&Method::GET | &Method::HEAD, _) => return Ok(None),
            (&Method::POST, [t]) => {
                let t = resource_type(t)?;
                self.server.require(self.call, Role::Create, t)?;
                let mut resource = resource()?;
                if str_at(&resource, "resourceType") != Some(t) {
                    return Err(Error::Invalid(format!(
                        "resource type does not match request url {t}"
                    )));
                }
                if let Some(obj) = resource.as_object_mut() {
                    obj.remove("id");
                }
                let if_none_exist = request
                    .if_none_exist
                    .as_deref()
                    .map(|c| self.server.if_none_exist(self.call, t, c))
                    .transpose()?;
                WriteOp::Create {
                    resource,
                    if_none_exist,
                    full_url: request.full_url.clone(),
                }
            }
            (&Method::PUT, [t]) => {
                let t = resource_type(t)?;
                self.server.require(self.call, Role::Update, t)?;
                let query = self
                    .server
                    .conditional_criteria(self.call, t, &request.query)?;
                WriteOp::ConditionalUpdate {
                    query,
                    resource: resource()?,
                    full_url: request.full_url.clone(),
                }
            }
            (&Method::PUT, [t, id]) => {
                let t = resource_type(t)?;
                self.server.require(self.call, Role::Update, t)?;
                let resource = resource()?;
                if str_at(&resource, "id") != Some(id) || !valid_id(id) {
                    return Err(Error::Invalid(format!(
                        "resource id does not match request url {t}/{id}"
                    )));
                }
                let if_match = request.if_match.as_deref().map(parse_etag).transpose()?;
                WriteOp::Update {
                    resource_type: t,
                    id: (*id).to_owned(),
                    resource,
                    if_match,
                    full_url: request.full_url.clone(),
                }
            }
            (&Method::DELETE, [t]) => {
                let t = resource_type(t)?;
                self.server.require(self.call, Role::Delete, t)?;
                WriteOp::ConditionalDelete {
                    query: self
                        .server
                        .conditional_criteria(self.call, t, &request.query)?,
                }
            }
            (&Method::DELETE, [t, id]) => {
                let t = resource_type(t)?;
                self.server.require(self.call, Role::Delete, t)?;
                WriteOp::Delete {
                    resource_type: t,
                    id: (*id).to_owned(),
                }
            }
            (m, _) => {
                return Err(Error::Invalid(format!(
                    "{m} {} is not a valid transaction entry",
                    request.path
                )))
            }
        };
        Ok(Some(op))
    }

    fn outcome_reply(&self, outcome: WriteOutcome) -> Reply {
        let stored_reply = |status: StatusCode, stored: &StoredResource| {
            let body = match self.call.prefer_return() {
                "minimal" | "OperationOutcome" => Body::Empty,
                _ => stored.body.clone().map_or(Body::Empty, Body::Stored),
            };
            Reply::new(status, body)
                .version_headers(stored)
                .header(header::LOCATION, self.server.location(stored))
        };
        match outcome {
            WriteOutcome::Created(s) => stored_reply(StatusCode::CREATED, &s),
            WriteOutcome::Existing(s) | WriteOutcome::Updated(s) => {
                stored_reply(StatusCode::OK, &s)
            }
            WriteOutcome::Deleted(s)
            | WriteOutcome::AlreadyDeleted(s)
            | WriteOutcome::PermanentlyDeleted(s) => Reply::new(StatusCode::OK, Body::Empty)
                .header(header::ETAG, super::reply::etag(s.version)),
            WriteOutcome::NoMatch => Reply::new(StatusCode::NO_CONTENT, Body::Empty),
        }
    }

    fn response_bundle(&self, kind: &'static str, replies: Vec<Reply>) -> Result<Reply> {
        let mut bundle = Bundle::new(kind);
        for reply in &replies {
            let header_value = |name: header::HeaderName| {
                reply
                    .headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone())
            };
            let is_error = reply.status.is_client_error() || reply.status.is_server_error();
            let (resource, outcome) = match (&reply.body, is_error) {
                // Entries always read resources (see `sub_request`); raw content has no
                // place in a Bundle.
                (Body::Empty | Body::Raw { .. } | Body::Streamed { .. }, _) => (None, None),
                (Body::Value(v), true) => (None, Some(v.clone())),
                (Body::Stored(json), true) => (
                    None,
                    Some(serde_json::from_str(json).map_err(Error::storage)?),
                ),
                (Body::Value(v), false) => (Some(EntryResource::Value(v.clone())), None),
                (Body::Stored(json), false) => (
                    Some(EntryResource::Raw(
                        serde_json::from_str(json).map_err(Error::storage)?,
                    )),
                    None,
                ),
            };
            bundle.push(Entry {
                resource,
                response: Some(EntryResponse {
                    status: format!(
                        "{} {}",
                        reply.status.as_u16(),
                        reply.status.canonical_reason().unwrap_or("")
                    )
                    .trim()
                    .to_owned(),
                    location: header_value(header::LOCATION),
                    etag: header_value(header::ETAG),
                    last_modified: header_value(header::LAST_MODIFIED).and_then(|d| {
                        httpdate::parse_http_date(&d)
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|t| crate::store::format_instant(t.as_millis() as i64))
                    }),
                    outcome,
                }),
                ..Default::default()
            });
        }
        Ok(Reply::new(
            status(200),
            Body::Stored(bundle.to_json()?.into()),
        ))
    }
}
