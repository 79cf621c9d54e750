//! The FHIR interactions on single resources, types and the system: routing, read, vread,
//! create, update, delete (plain and conditional), search and history.

use super::bundles::{self, Bundle, Entry, EntryRequest, EntryResource, EntrySearch};
use super::interaction::Interaction;
use super::reply::{etag, Body, Reply};
use super::{method_not_allowed, trace, Call, FhirServer, Role};
use crate::resource_type::supported_type;
use crate::search::{parse_date_range, parse_query_string, SearchQuery};
use crate::store::{HistoryFilter, StoredResource, WriteOp, WriteOutcome};
use crate::{Error, OperationOutcome, Result};
use http::{header, Method, StatusCode};
use serde_json::Value;

/// Server-assigned ids are UUIDs; anything outside the FHIR id syntax cannot exist.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A 400 for an id that breaks the FHIR id syntax (1 to 64 of `A-Z a-z 0-9 - .`).
fn require_valid_id(id: &str) -> Result<()> {
    if valid_id(id) {
        return Ok(());
    }
    let shown: String = id.chars().take(80).collect();
    Err(Error::Invalid(format!(
        "'{shown}' is not a valid FHIR id: 1 to 64 letters, digits, '-' or '.'"
    )))
}

pub(crate) fn resource_type(name: &str) -> Result<&'static str> {
    supported_type(name)
        .ok_or_else(|| Error::NotFound(format!("resource type '{name}' is not supported")))
}

/// Parses `W/"3"`, `"3"` or `3`.
pub(crate) fn parse_etag(value: &str) -> Result<i64> {
    value
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map_err(|_| Error::Invalid(format!("'{value}' is not a version ETag such as W/\"1\"")))
}

fn percent(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl FhirServer {
    pub(crate) async fn route(&self, call: &Call<'_>) -> Result<Reply> {
        let segments: Vec<&str> = if call.path.is_empty() {
            Vec::new()
        } else {
            call.path.split('/').collect()
        };
        let m = &call.method;
        // Tells the audit record and the request metrics what the path asked for, and how
        // many of its segments name the resource.
        let routed = |interaction, named: usize| {
            let segments = segments.get(..named).unwrap_or(&segments);
            let length = segments.iter().map(|s| s.len() + 1).sum::<usize>();
            trace::routed(interaction, length.saturating_sub(1));
        };
        match segments.as_slice() {
            [] if m == Method::POST => {
                routed(Interaction::Bundle, 0);
                self.bundle(call).await
            }
            [] => Ok(method_not_allowed("POST")),
            ["metadata"] if m == Method::GET => {
                routed(Interaction::Capabilities, 0);
                Ok(Reply::new(
                    StatusCode::OK,
                    Body::Value(self.capability_statement()),
                ))
            }
            ["_history"] if m == Method::GET => {
                routed(Interaction::HistorySystem, 0);
                self.history(call, None, None).await
            }
            [t, ..] if t.starts_with('_') || *t == "metadata" => Ok(method_not_allowed("GET")),
            [t] => {
                let t = resource_type(t)?;
                let interaction = match *m {
                    Method::GET => Interaction::SearchType,
                    Method::POST => Interaction::Create,
                    Method::PUT => Interaction::Update,
                    Method::DELETE => Interaction::Delete,
                    _ => return Ok(method_not_allowed("GET, POST, PUT, DELETE")),
                };
                routed(interaction, 1);
                match interaction {
                    Interaction::SearchType => self.search(call, t, &call.query).await,
                    Interaction::Create => self.create(call, t).await,
                    Interaction::Update => self.conditional_update(call, t).await,
                    _ => self.conditional_delete(call, t).await,
                }
            }
            ["StructureDefinition", "$snapshot"] if m == Method::GET || m == Method::POST => {
                routed(Interaction::Operation, 1);
                self.snapshot(call, None).await
            }
            ["StructureDefinition", id, "$snapshot"] if m == Method::GET || m == Method::POST => {
                routed(Interaction::Operation, 2);
                self.snapshot(call, Some(id)).await
            }
            [t, "_search"] if m == Method::POST => {
                let t = resource_type(t)?;
                routed(Interaction::SearchType, 1);
                let mut pairs = call.query.clone();
                let form = std::str::from_utf8(&call.body)
                    .map_err(|_| Error::Invalid("_search body is not UTF-8 form data".into()))?;
                pairs.extend(parse_query_string(form));
                self.search(call, t, &pairs).await
            }
            [t, "_history"] if m == Method::GET => {
                let t = resource_type(t)?;
                routed(Interaction::HistoryType, 1);
                self.history(call, Some(t), None).await
            }
            [t, id] => {
                let t = resource_type(t)?;
                let interaction = match *m {
                    Method::GET => Interaction::Read,
                    Method::PUT => Interaction::Update,
                    Method::DELETE => Interaction::Delete,
                    _ => return Ok(method_not_allowed("GET, PUT, DELETE")),
                };
                routed(interaction, 2);
                match interaction {
                    Interaction::Read => self.read(call, t, id).await,
                    Interaction::Update => self.update(call, t, id).await,
                    _ => self.delete(call, t, id).await,
                }
            }
            [t, id, "$permanent-delete"] if m == Method::POST => {
                let t = resource_type(t)?;
                routed(Interaction::Delete, 2);
                self.delete_permanently(call, t, id).await
            }
            [t, id, "_history"] if m == Method::GET => {
                let t = resource_type(t)?;
                routed(Interaction::HistoryInstance, 2);
                self.history(call, Some(t), Some(id)).await
            }
            [t, id, "_history", version] if m == Method::GET => {
                let t = resource_type(t)?;
                routed(Interaction::Vread, 4);
                self.vread(call, t, id, version).await
            }
            [t, ..] => {
                resource_type(t)?;
                Err(Error::NotFound(format!("no interaction at /{}", call.path)))
            }
        }
    }

    pub(crate) fn location(&self, stored: &StoredResource) -> String {
        format!(
            "{}/{}/{}/_history/{}",
            self.config.base_url, stored.resource_type, stored.id, stored.version
        )
    }

    /// The reply to a successful create or update, shaped by `Prefer: return`.
    pub(crate) fn written(
        &self,
        call: &Call<'_>,
        status: StatusCode,
        stored: &StoredResource,
        what: &str,
    ) -> Reply {
        let body = match call.prefer_return() {
            "minimal" => Body::Empty,
            "OperationOutcome" => Body::Value(
                OperationOutcome::information(format!(
                    "{what} {}/_history/{}",
                    stored.reference(),
                    stored.version
                ))
                .to_json(),
            ),
            _ => stored.body.clone().map_or(Body::Empty, Body::Stored),
        };
        Reply::new(status, body)
            .version_headers(stored)
            .header(header::LOCATION, self.location(stored))
    }

    async fn read(&self, call: &Call<'_>, t: &'static str, id: &str) -> Result<Reply> {
        self.require(call, Role::Read, t)?;
        let not_found = || Error::NotFound(format!("{t}/{id} not found"));
        if !valid_id(id) {
            return Err(not_found());
        }
        // A hidden resource is answered exactly as a missing one, in one database trip.
        let stored = self
            .store
            .read_visible(t, id, &call.identity.grants)
            .await?
            .ok_or_else(not_found)?;
        super::trace::allowed(|| "readable to the caller under its read-access tags".into());
        if stored.deleted {
            return Err(Error::Gone {
                resource: stored.reference(),
                version: stored.version,
            });
        }
        if let Some(if_match) = call.header(header::IF_MATCH) {
            if parse_etag(if_match)? != stored.version {
                return Err(Error::PreconditionFailed(format!(
                    "{t}/{id} is at version {}",
                    stored.version
                )));
            }
        }
        let unchanged = match (
            call.header(header::IF_NONE_MATCH),
            call.header(header::IF_MODIFIED_SINCE),
        ) {
            (Some(tag), _) => tag
                .split(',')
                .any(|t| parse_etag(t).ok() == Some(stored.version)),
            (None, Some(since)) => httpdate::parse_http_date(since)
                .ok()
                .and_then(|s| s.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|s| stored.last_updated / 1000 <= s.as_secs() as i64),
            (None, None) => false,
        };
        if unchanged {
            return Ok(Reply::new(StatusCode::NOT_MODIFIED, Body::Empty).version_headers(&stored));
        }
        self.read_reply(call, t, &stored).await
    }

    async fn vread(
        &self,
        call: &Call<'_>,
        t: &'static str,
        id: &str,
        version: &str,
    ) -> Result<Reply> {
        self.require(call, Role::Read, t)?;
        let not_found = || Error::NotFound(format!("{t}/{id}/_history/{version} not found"));
        let v: i64 = version.parse().map_err(|_| not_found())?;
        if !valid_id(id) {
            return Err(not_found());
        }
        // A hidden version is answered exactly as a missing one.
        let stored = self
            .store
            .vread_visible(t, id, v, &call.identity.grants)
            .await?
            .ok_or_else(not_found)?;
        if stored.deleted {
            return Err(Error::Gone {
                resource: stored.reference(),
                version: stored.version,
            });
        }
        self.read_reply(call, t, &stored).await
    }

    /// The answer to a read of `stored`: the resource, or a Binary's raw content when the
    /// request asks for that (see `binary`).
    async fn read_reply(&self, call: &Call<'_>, t: &str, stored: &StoredResource) -> Result<Reply> {
        if t == "Binary" {
            if let Some(raw) = self.binary_read_reply(call, stored).await? {
                return Ok(raw);
            }
        }
        Ok(Reply::new(
            StatusCode::OK,
            stored.body.clone().map_or(Body::Empty, Body::Stored),
        )
        .version_headers(stored))
    }

    /// A resource the caller may not read is answered as if it did not exist, so that
    /// neither the status nor the message tells whether it does.
    pub(crate) async fn require_readable(
        &self,
        call: &Call<'_>,
        stored: &StoredResource,
    ) -> Result<()> {
        if self
            .store
            .is_readable(stored, &call.identity.grants)
            .await?
        {
            Ok(())
        } else {
            tracing::info!(identity = call.identity.name(), resource = %stored.reference(), "read refused");
            Err(Error::NotFound(format!("{} not found", stored.reference())))
        }
    }

    async fn write_one(&self, call: &Call<'_>, op: WriteOp) -> Result<WriteOutcome> {
        self.write_as(call, vec![op], |_| "request".to_owned())
            .await?
            .pop()
            .ok_or_else(|| Error::storage_fault("write produced no outcome"))
    }

    /// Parses the body as a resource of type `t`.
    async fn body_resource(&self, call: &Call<'_>, t: &str) -> Result<Value> {
        let resource = self.parse_body(call).await?;
        let actual = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        if actual != t {
            return Err(Error::Invalid(format!(
                "resource type {actual} does not match the URL type {t}"
            )));
        }
        Ok(resource)
    }

    async fn create(&self, call: &Call<'_>, t: &'static str) -> Result<Reply> {
        self.require(call, Role::Create, t)?;
        let mut resource = if t == "Binary" && super::binary::is_raw_create(call) {
            super::binary::resource_from_raw(call)?
        } else {
            self.body_resource(call, t).await?
        };
        if let Some(obj) = resource.as_object_mut() {
            obj.remove("id");
        }
        let if_none_exist = call
            .header(http::HeaderName::from_static("if-none-exist"))
            .map(|criteria| self.if_none_exist(call, t, criteria))
            .transpose()?;
        match self
            .write_one(
                call,
                WriteOp::Create {
                    resource,
                    if_none_exist,
                    full_url: None,
                },
            )
            .await?
        {
            WriteOutcome::Created(stored) => {
                Ok(self.written(call, StatusCode::CREATED, &stored, "created"))
            }
            WriteOutcome::Existing(stored) => Ok(Reply::outcome(
                StatusCode::OK,
                OperationOutcome::information(format!(
                    "resource {} already exists",
                    stored.reference()
                )),
            )
            .version_headers(&stored)
            .header(header::LOCATION, self.location(&stored))),
            other => Err(Error::storage_fault(format!(
                "unexpected create outcome {other:?}"
            ))),
        }
    }

    async fn update(&self, call: &Call<'_>, t: &'static str, id: &str) -> Result<Reply> {
        self.require(call, Role::Update, t)?;
        require_valid_id(id)?;
        let resource = self.body_resource(call, t).await?;
        let body_id = resource.get("id").and_then(Value::as_str).unwrap_or("");
        if body_id != id {
            return Err(Error::Invalid(format!(
                "resource id '{body_id}' does not match the URL id '{id}'"
            )));
        }
        let if_match = call.header(header::IF_MATCH).map(parse_etag).transpose()?;
        let op = WriteOp::Update {
            resource_type: t,
            id: id.to_owned(),
            resource,
            if_match,
            full_url: None,
        };
        match self.write_one(call, op).await? {
            WriteOutcome::Updated(stored) => {
                Ok(self.written(call, StatusCode::OK, &stored, "updated"))
            }
            other => Err(Error::storage_fault(format!(
                "unexpected update outcome {other:?}"
            ))),
        }
    }

    fn criteria(&self, call: &Call<'_>, t: &'static str) -> Result<SearchQuery> {
        self.conditional_criteria(call, t, &call.query)
    }

    /// Criteria of a conditional create, update or delete. They select only among what the
    /// caller may read, so that a conditional write tells nothing about hidden resources.
    pub(crate) fn conditional_criteria(
        &self,
        call: &Call<'_>,
        t: &'static str,
        pairs: &[(String, String)],
    ) -> Result<SearchQuery> {
        let mut query = SearchQuery::criteria_from_pairs(t, pairs, &self.config.base_url)?;
        query.visible_to = Some(call.identity.grants.clone());
        Ok(query)
    }

    /// `If-None-Exist` criteria (`[type?]name=value&…`), as [`FhirServer::conditional_criteria`].
    pub(crate) fn if_none_exist(
        &self,
        call: &Call<'_>,
        t: &'static str,
        criteria: &str,
    ) -> Result<SearchQuery> {
        let mut query = SearchQuery::parse_criteria(t, criteria, &self.config.base_url)?;
        query.visible_to = Some(call.identity.grants.clone());
        Ok(query)
    }

    async fn conditional_update(&self, call: &Call<'_>, t: &'static str) -> Result<Reply> {
        self.require(call, Role::Update, t)?;
        let query = self.criteria(call, t)?;
        let resource = self.body_resource(call, t).await?;
        match self
            .write_one(
                call,
                WriteOp::ConditionalUpdate {
                    query,
                    resource,
                    full_url: None,
                },
            )
            .await?
        {
            WriteOutcome::Created(stored) => {
                Ok(self.written(call, StatusCode::CREATED, &stored, "created"))
            }
            WriteOutcome::Updated(stored) => {
                Ok(self.written(call, StatusCode::OK, &stored, "updated"))
            }
            other => Err(Error::storage_fault(format!(
                "unexpected update outcome {other:?}"
            ))),
        }
    }

    fn deleted(outcome: WriteOutcome) -> Result<Reply> {
        match outcome {
            WriteOutcome::Deleted(tomb) | WriteOutcome::AlreadyDeleted(tomb) => Ok(Reply::outcome(
                StatusCode::OK,
                OperationOutcome::information(format!("{} deleted", tomb.reference())),
            )
            .header(header::ETAG, etag(tomb.version))),
            WriteOutcome::NoMatch => Ok(Reply::new(StatusCode::NO_CONTENT, Body::Empty)),
            other => Err(Error::storage_fault(format!(
                "unexpected delete outcome {other:?}"
            ))),
        }
    }

    async fn delete(&self, call: &Call<'_>, t: &'static str, id: &str) -> Result<Reply> {
        self.require(call, Role::Delete, t)?;
        require_valid_id(id)?;
        Self::deleted(
            self.write_one(
                call,
                WriteOp::Delete {
                    resource_type: t,
                    id: id.to_owned(),
                },
            )
            .await?,
        )
    }

    /// `$permanent-delete`: removes every version of a deleted resource.
    async fn delete_permanently(
        &self,
        call: &Call<'_>,
        t: &'static str,
        id: &str,
    ) -> Result<Reply> {
        self.require(call, Role::PermanentDelete, t)?;
        require_valid_id(id)?;
        let op = WriteOp::PermanentDelete {
            resource_type: t,
            id: id.to_owned(),
        };
        match self.write_one(call, op).await? {
            WriteOutcome::PermanentlyDeleted(tomb) => Ok(Reply::outcome(
                StatusCode::OK,
                OperationOutcome::information(format!("{} permanently deleted", tomb.reference())),
            )),
            other => Err(Error::storage_fault(format!(
                "unexpected permanent delete outcome {other:?}"
            ))),
        }
    }

    async fn conditional_delete(&self, call: &Call<'_>, t: &'static str) -> Result<Reply> {
        self.require(call, Role::Delete, t)?;
        let query = self.criteria(call, t)?;
        Self::deleted(
            self.write_one(call, WriteOp::ConditionalDelete { query })
                .await?,
        )
    }

    /// A searchset Bundle as JSON text.
    pub(crate) async fn search_bundle(
        &self,
        call: &Call<'_>,
        t: &'static str,
        pairs: &[(String, String)],
    ) -> Result<String> {
        self.require(call, Role::Search, t)?;
        let mut query =
            SearchQuery::parse(t, pairs, self.config.page_count, &self.config.base_url)?;
        query.visible_to = Some(call.identity.grants.clone());
        super::trace::allowed(|| {
            "results limited to what the read-access tags let the caller read".into()
        });
        if call.strict() && !query.unsupported.is_empty() {
            return Err(Error::Invalid(format!(
                "unsupported search parameters: {}",
                query.unsupported.join(", ")
            )));
        }
        let mut result = self.store.search(&query).await?;
        self.embed_content(&mut result.matches).await?;
        self.embed_content(&mut result.included).await?;
        let base = &self.config.base_url;
        let mut bundle = Bundle::new("searchset").total(result.total);
        let kept: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k != "_page" && k != "_count")
            .map(|(k, v)| format!("{}={}", percent(k), percent(v)))
            .collect();
        let page_url = |page: usize| {
            let mut url = format!("{base}/{t}?");
            for p in &kept {
                url.push_str(p);
                url.push('&');
            }
            url.push_str(&format!("_count={}&_page={page}", query.count));
            url
        };
        bundle.link("self", page_url(query.page));
        if query.count > 0 && !query.summary_count {
            let last = (result.total.max(1) as usize).div_ceil(query.count);
            bundle.link("first", page_url(1));
            if query.page > 1 {
                bundle.link("previous", page_url(query.page - 1));
            }
            if query.page < last {
                bundle.link("next", page_url(query.page + 1));
            }
            bundle.link("last", page_url(last));
        }
        for (stored, mode) in result
            .matches
            .iter()
            .map(|s| (s, "match"))
            .chain(result.included.iter().map(|s| (s, "include")))
        {
            bundle.push(Entry {
                full_url: Some(bundles::full_url(base, stored)),
                resource: bundles::raw(stored)?.map(EntryResource::Raw),
                search: Some(EntrySearch { mode }),
                ..Default::default()
            });
        }
        if !query.unsupported.is_empty() {
            bundle.push(Entry {
                resource: Some(EntryResource::Value(
                    OperationOutcome::warning(
                        crate::IssueType::NotSupported,
                        format!(
                            "ignored unsupported parameters: {}",
                            query.unsupported.join(", ")
                        ),
                    )
                    .to_json(),
                )),
                search: Some(EntrySearch { mode: "outcome" }),
                ..Default::default()
            });
        }
        bundle.to_json()
    }

    async fn search(
        &self,
        call: &Call<'_>,
        t: &'static str,
        pairs: &[(String, String)],
    ) -> Result<Reply> {
        let json = self.search_bundle(call, t, pairs).await?;
        Ok(Reply::new(StatusCode::OK, Body::Stored(json.into())))
    }

    async fn history(
        &self,
        call: &Call<'_>,
        t: Option<&'static str>,
        id: Option<&str>,
    ) -> Result<Reply> {
        self.require(call, Role::History, t.unwrap_or("*"))?;
        let mut filter = HistoryFilter {
            resource_type: t.map(str::to_owned),
            id: id.map(str::to_owned),
            visible_to: Some(call.identity.grants.clone()),
            ..Default::default()
        };
        let mut count = self.config.page_count;
        let mut page = 1;
        if call.query.len() > crate::search::MAX_PARAMETERS {
            return Err(Error::Invalid(format!(
                "more than {} history parameters in one request",
                crate::search::MAX_PARAMETERS
            )));
        }
        for (k, v) in &call.query {
            let bad = || Error::Invalid(format!("history parameter {k}={v} is not valid"));
            match k.as_str() {
                "_since" => filter.since = Some(parse_date_range(v).ok_or_else(bad)?.low),
                "_at" => filter.at.push(parse_date_range(v).ok_or_else(bad)?.low),
                "_count" => {
                    count = v
                        .parse::<usize>()
                        .map_err(|_| bad())?
                        .min(crate::search::MAX_COUNT)
                }
                "_page" => {
                    page = v
                        .parse::<usize>()
                        .ok()
                        .filter(|p| (1..=crate::search::MAX_PAGE).contains(p))
                        .ok_or_else(bad)?
                }
                "_format" | "_pretty" => {}
                _ => {
                    return Err(Error::Invalid(format!(
                        "history parameter {k} is not supported"
                    )))
                }
            }
        }
        if let (Some(t), Some(id)) = (t, id) {
            let current = match valid_id(id) {
                true => self.store.read(t, id).await?,
                false => None,
            };
            let current = current.ok_or_else(|| Error::NotFound(format!("{t}/{id} not found")))?;
            self.require_readable(call, &current).await?;
        }
        let mut result = self.store.history(&filter, count, page).await?;
        self.embed_content(&mut result.entries).await?;
        let base = &self.config.base_url;
        let mut bundle = Bundle::new("history").total(result.total);
        let path = match (t, id) {
            (Some(t), Some(id)) => format!("{base}/{t}/{id}/_history"),
            (Some(t), None) => format!("{base}/{t}/_history"),
            _ => format!("{base}/_history"),
        };
        let kept: String = call
            .query
            .iter()
            .filter(|(k, _)| k != "_page" && k != "_count")
            .map(|(k, v)| format!("{}={}&", percent(k), percent(v)))
            .collect();
        let page_url = |p: usize| format!("{path}?{kept}_count={count}&_page={p}");
        bundle.link("self", page_url(page));
        if count > 0 {
            if page > 1 {
                bundle.link("previous", page_url(page - 1));
            }
            if (page as i64) * (count as i64) < result.total {
                bundle.link("next", page_url(page + 1));
            }
        }
        for stored in &result.entries {
            let (method, status, url) = if stored.deleted {
                ("DELETE", "200", stored.reference())
            } else if stored.version == 1 {
                ("POST", "201", stored.resource_type.clone())
            } else {
                ("PUT", "200", stored.reference())
            };
            bundle.push(Entry {
                full_url: Some(bundles::full_url(base, stored)),
                resource: bundles::raw(stored)?.map(EntryResource::Raw),
                request: Some(EntryRequest { method, url }),
                response: Some(bundles::version_response(status, stored)),
                ..Default::default()
            });
        }
        Ok(Reply::new(
            StatusCode::OK,
            Body::Stored(bundle.to_json()?.into()),
        ))
    }
}
