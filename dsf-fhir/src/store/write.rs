//! Writes: versions, tombstones, conditional interactions and `urn:uuid` resolution, executed
//! in one session so that a transaction Bundle is all or nothing.

use super::operation::{Change, WriteGuard, WriteOp, WriteOutcome};
use super::sql::{self, Dialect};
use super::{unique, Session, StoredResource};
use crate::access::grants_of;
pub use crate::date::format_instant;
use crate::search::{index_rows, SearchQuery};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

fn resource_type_of(resource: &Value) -> Result<&'static str> {
    let name = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Invalid("resource has no resourceType".into()))?;
    crate::resource_type::supported_type(name)
        .ok_or_else(|| Error::NotFound(format!("resource type {name} is not supported")))
}

/// Rewrites `urn:uuid:` / `urn:oid:` references to the resources they name in this
/// transaction. An unresolved one is an error: it could never be read back. The entries of a
/// Bundle stored as a resource (an allow list, a document) are left alone: their references
/// name the Bundle's own entries, not this transaction's. With `found`, every reference
/// outside contained resources is also collected, as it reads once resolved.
fn resolve_references(
    value: &mut Value,
    ids: &HashMap<String, String>,
    mut found: Option<&mut Vec<String>>,
) -> Result<()> {
    match value {
        Value::Object(map) => {
            if map.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
                for (key, v) in map.iter_mut() {
                    if key != "entry" {
                        resolve_references(v, ids, found.as_deref_mut())?;
                    }
                }
                return Ok(());
            }
            if let Some(Value::String(reference)) = map.get_mut("reference") {
                if conditional_target(reference).is_some() {
                    // Resolved before any entry is written (see resolve_conditional).
                    let target = ids.get(reference.as_str()).ok_or_else(|| {
                        Error::storage_fault(format!(
                            "conditional reference {reference} unresolved"
                        ))
                    })?;
                    *reference = target.clone();
                } else if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
                    let target = ids.get(reference.as_str()).ok_or_else(|| {
                        Error::Invalid(format!(
                            "reference {reference} names no entry of this bundle"
                        ))
                    })?;
                    *reference = target.clone();
                }
                if let Some(found) = found.as_deref_mut() {
                    found.push(reference.clone());
                }
            }
            for (key, v) in map.iter_mut() {
                let found = if key == "contained" {
                    None
                } else {
                    found.as_deref_mut()
                };
                resolve_references(v, ids, found)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                resolve_references(v, ids, found.as_deref_mut())?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The type and criteria of a conditional reference (`Organization?identifier=s|v`): a
/// reference that names a search of this server instead of a resource.
fn conditional_target(reference: &str) -> Option<(&'static str, &str)> {
    let (type_name, criteria) = reference.split_once('?')?;
    let resource_type = crate::resource_type::supported_type(type_name)?;
    (!criteria.is_empty()).then_some((resource_type, criteria))
}

/// Every conditional reference in `value`, outside the entries of a stored Bundle.
fn conditional_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let is_bundle = map.get("resourceType").and_then(Value::as_str) == Some("Bundle");
            if let Some(Value::String(reference)) = map.get("reference") {
                if conditional_target(reference).is_some() && !out.contains(reference) {
                    out.push(reference.clone());
                }
            }
            for (key, v) in map {
                if !(is_bundle && key == "entry") {
                    conditional_references(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| conditional_references(v, out)),
        _ => {}
    }
}

/// Most resources one uniqueness lookup compares; the lookups select by the key's values, so
/// only NamingSystems and Subscriptions, which are few, come near it.
const MAX_UNIQUE_CANDIDATES: usize = 10_000;

struct Writer<'a> {
    session: &'a mut dyn Session,
    dialect: Dialect,
    base_url: &'a str,
    ids: HashMap<String, String>,
    /// The references of each version written of a [`REFERENCE_CHECKED_TYPES`] type, by
    /// operation: checked once the whole transaction is written.
    references_to_check: Vec<(usize, &'static str, Vec<String>)>,
    guard: Option<&'a dyn WriteGuard>,
    /// The operation being applied, for the guard.
    index: usize,
}

impl Writer<'_> {
    async fn store_version(
        &mut self,
        resource_type: &'static str,
        id: &str,
        version: i64,
        mut resource: Value,
    ) -> Result<StoredResource> {
        if REFERENCE_CHECKED_TYPES.contains(&resource_type) {
            let mut found = Vec::new();
            resolve_references(&mut resource, &self.ids, Some(&mut found))?;
            self.references_to_check
                .push((self.index, resource_type, found));
        } else {
            resolve_references(&mut resource, &self.ids, None)?;
        }
        self.check_unique(resource_type, id, &resource).await?;
        let last_updated = crate::date::unix_millis_now();
        let Value::Object(fields) = resource else {
            return Err(Error::Invalid("resource is not a JSON object".into()));
        };
        // resourceType, id and meta lead, as FHIR JSON is conventionally written.
        let mut ordered = serde_json::Map::with_capacity(fields.len() + 2);
        let mut meta = serde_json::Map::new();
        let mut rest = Vec::with_capacity(fields.len());
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("resourceType", v) => {
                    ordered.insert(key, v);
                }
                ("id", _) => {}
                ("meta", Value::Object(m)) => meta = m,
                (_, v) => rest.push((key, v)),
            }
        }
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert(
            "lastUpdated".into(),
            Value::String(format_instant(last_updated)),
        );
        ordered.insert("id".into(), Value::String(id.to_owned()));
        ordered.insert("meta".into(), Value::Object(meta));
        ordered.extend(rest);
        let resource = Value::Object(ordered);
        let rows = index_rows(resource_type, &resource, self.base_url);
        let grants = grants_of(resource_type, &resource, self.base_url);
        let body = serde_json::to_string(&resource).map_err(Error::storage)?;
        let d = self.dialect;
        self.append_version(resource_type, id, version, last_updated, Some(body.clone()))
            .await?;
        if !rows.is_empty() {
            self.session
                .queue(sql::insert_index(d, resource_type, id, &rows))
                .await?;
        }
        if !grants.is_empty() {
            self.session
                .queue(sql::insert_grants(d, resource_type, id, version, &grants))
                .await?;
        }
        Ok(StoredResource {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version,
            last_updated,
            deleted: false,
            body: Some(Arc::from(body)),
        })
    }

    /// Makes `version` the current one: the previous version stops being current and loses
    /// its index rows. `body` is `None` for a deletion.
    async fn append_version(
        &mut self,
        resource_type: &str,
        id: &str,
        version: i64,
        last_updated: i64,
        body: Option<String>,
    ) -> Result<()> {
        let d = self.dialect;
        if version > 1 {
            self.session
                .queue(sql::retire_version(d, resource_type, id, version - 1))
                .await?;
            self.session
                .queue(sql::delete_index(d, resource_type, id))
                .await?;
        }
        self.session
            .queue(sql::insert_version(
                d,
                resource_type,
                id,
                version,
                last_updated,
                body,
            ))
            .await?;
        Ok(())
    }

    async fn current(&mut self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        self.session.lock(&format!("{resource_type}/{id}")).await?;
        let sql = sql::current_row(self.dialect, resource_type, id, None);
        Ok(self.session.resources(&sql).await?.into_iter().next())
    }

    /// At most two matches: enough to tell none, one and several apart.
    async fn matches(&mut self, query: &SearchQuery) -> Result<Vec<StoredResource>> {
        self.session.lock(query.resource_type).await?;
        self.session
            .resources(&sql::search_page(
                self.dialect,
                query,
                sql::AccessPlan::PerRow,
                2,
                0,
                false,
            ))
            .await
    }

    /// Refuses a version that clashes with another current resource under the DSF's
    /// uniqueness rules (see [`unique`]).
    async fn check_unique(
        &mut self,
        resource_type: &'static str,
        id: &str,
        resource: &Value,
    ) -> Result<()> {
        let Some(key) = unique::key_of(resource_type, resource, self.base_url) else {
            return Ok(());
        };
        for lock in key.locks(resource_type) {
            self.session.lock(&lock).await?;
        }
        for search in key.candidate_searches(resource_type) {
            let candidates = self
                .session
                .resources(&sql::search_page(
                    self.dialect,
                    &search,
                    sql::AccessPlan::PerRow,
                    MAX_UNIQUE_CANDIDATES,
                    0,
                    false,
                ))
                .await?;
            for other in candidates {
                if other.id == id || other.deleted {
                    continue;
                }
                let clashes = unique::key_of(resource_type, &other.json()?, self.base_url)
                    .is_some_and(|theirs| key.clashes_with(&theirs));
                if clashes {
                    return Err(Error::Duplicate(format!(
                        "a {resource_type} with {} exists already",
                        key.describe()
                    )));
                }
            }
        }
        Ok(())
    }

    fn check(&self, change: Change<'_>) -> Result<()> {
        match self.guard {
            Some(guard) => guard.check(change),
            None => Ok(()),
        }
    }

    /// Creates version 1; `checked` when the write rules have already judged this create.
    async fn create(&mut self, resource: Value, id: String, checked: bool) -> Result<WriteOutcome> {
        let resource_type = resource_type_of(&resource)?;
        if !checked {
            self.check(Change::Create {
                index: self.index,
                resource_type,
                new: &resource,
            })?;
        }
        let stored = self.store_version(resource_type, &id, 1, resource).await?;
        Ok(WriteOutcome::Created(stored))
    }

    async fn update(
        &mut self,
        resource_type: &'static str,
        id: &str,
        resource: Value,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome> {
        if resource_type_of(&resource)? != resource_type {
            return Err(Error::Invalid(format!(
                "resource type does not match the target {resource_type}"
            )));
        }
        let current = self.current(resource_type, id).await?.ok_or_else(|| {
            Error::MethodNotAllowed(format!(
                "{resource_type}/{id} does not exist; ids are assigned by the server, use create"
            ))
        })?;
        self.check(Change::Update {
            index: self.index,
            resource_type,
            old: &current,
            new: &resource,
        })?;
        if let Some(expected) = if_match {
            if expected != current.version {
                return Err(Error::VersionConflict(format!(
                    "expected version {expected} does not match latest version {}",
                    current.version
                )));
            }
        }
        let stored = self
            .store_version(resource_type, id, current.version + 1, resource)
            .await?;
        Ok(WriteOutcome::Updated(stored))
    }

    async fn delete(&mut self, resource_type: &'static str, id: &str) -> Result<WriteOutcome> {
        let current = self
            .current(resource_type, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{resource_type}/{id} not found")))?;
        if current.deleted {
            return Ok(WriteOutcome::AlreadyDeleted(current));
        }
        self.check(Change::Delete {
            index: self.index,
            resource_type,
            old: &current,
        })?;
        let version = current.version + 1;
        let last_updated = crate::date::unix_millis_now();
        self.append_version(resource_type, id, version, last_updated, None)
            .await?;
        self.session
            .queue(sql::copy_grants(
                self.dialect,
                resource_type,
                id,
                current.version,
                version,
            ))
            .await?;
        Ok(WriteOutcome::Deleted(StoredResource {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version,
            last_updated,
            deleted: true,
            body: None,
        }))
    }
}

impl Writer<'_> {
    async fn delete_permanently(
        &mut self,
        resource_type: &'static str,
        id: &str,
    ) -> Result<WriteOutcome> {
        let current = self
            .current(resource_type, id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{resource_type}/{id} not found")))?;
        if !current.deleted {
            return Err(Error::Invalid(format!(
                "{resource_type}/{id} is not deleted; delete it before deleting it permanently"
            )));
        }
        self.session
            .queue(sql::purge_grants(self.dialect, resource_type, id))
            .await?;
        self.session
            .queue(sql::delete_index(self.dialect, resource_type, id))
            .await?;
        if resource_type == "Binary" {
            super::content::purge(&mut *self.session, self.dialect, id).await?;
        }
        self.session
            .execute(&sql::purge_versions(self.dialect, resource_type, id))
            .await?;
        Ok(WriteOutcome::PermanentlyDeleted(current))
    }
}

/// A server-assigned id: a time-ordered UUID (version 7), so that new rows land at the end of
/// every index keyed by id instead of on a random page of it. With random ids, each create
/// into a store of a million Tasks dirtied pages all over those indexes (docs/performance.md).
fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn several(query: &SearchQuery) -> Error {
    Error::PreconditionFailed(format!(
        "more than one {} matches the criteria",
        query.resource_type
    ))
}

/// Where a create or conditional update lands, decided before anything is written.
enum Target {
    New(String),
    Existing(StoredResource),
    /// A conditional create matched what an earlier operation of this transaction writes.
    SameAs {
        index: usize,
        id: String,
    },
    Update(String),
    None,
}

impl Target {
    /// The id this operation writes, if it writes one.
    fn written_id(&self) -> Option<&str> {
        match self {
            Target::New(id) | Target::Update(id) => Some(id),
            _ => None,
        }
    }
}

/// The earlier operation of this transaction whose resource `query` matches, with the id it
/// writes: a conditional create or update must see the transaction's own writes, and those
/// are only applied after every target is resolved.
fn earlier_match(
    query: &SearchQuery,
    earlier: &[WriteOp],
    targets: &[Target],
    base_url: &str,
) -> Option<(usize, String)> {
    earlier
        .iter()
        .zip(targets)
        .enumerate()
        .find_map(|(index, (op, target))| {
            let resource = match op {
                WriteOp::Create { resource, .. }
                | WriteOp::CreateWithContent { resource, .. }
                | WriteOp::Update { resource, .. }
                | WriteOp::ConditionalUpdate { resource, .. } => resource,
                _ => return None,
            };
            let id = target.written_id()?;
            query
                .matches(id, resource, base_url)
                .then(|| (index, id.to_owned()))
        })
}

pub(super) async fn execute(
    session: &mut dyn Session,
    dialect: Dialect,
    base_url: &str,
    ops: Vec<WriteOp>,
    guard: Option<&dyn WriteGuard>,
) -> std::result::Result<Vec<WriteOutcome>, (usize, Error)> {
    let mut writer = Writer {
        session,
        dialect,
        base_url,
        ids: HashMap::new(),
        references_to_check: Vec::new(),
        guard,
        index: 0,
    };
    // First resolve every create and conditional update to its id, so that entries may
    // reference each other through fullUrls in any order, even in cycles (Organization and
    // Endpoint reference each other in the DSF's allow-list bundles).
    let mut targets = Vec::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        writer.index = index;
        let resolved = resolve_target(&mut writer, op, &ops[..index], &targets)
            .await
            .map_err(|e| (index, e))?;
        targets.push(resolved);
    }
    for (index, op) in ops.iter().enumerate() {
        writer.index = index;
        resolve_conditional(&mut writer, op, &ops, &targets)
            .await
            .map_err(|e| (index, e))?;
    }
    let mut outcomes = Vec::with_capacity(ops.len());
    for (index, (op, target)) in ops.into_iter().zip(targets).enumerate() {
        writer.index = index;
        let outcome = apply(&mut writer, op, target, &outcomes)
            .await
            .map_err(|e| (index, e))?;
        outcomes.push(outcome);
    }
    // References are checked once every entry is written, so that entries may reference
    // each other in any order.
    for (index, resource_type, references) in std::mem::take(&mut writer.references_to_check) {
        writer
            .check_references(resource_type, references)
            .await
            .map_err(|e| (index, e))?;
    }
    Ok(outcomes)
}

/// The types whose literal references to this server must name a current resource when they
/// are written, as the Java DSF checks them. (The Java DSF checks every type; the others
/// follow once their fixtures and the BPE's writes are known to hold only resolvable ones.)
const REFERENCE_CHECKED_TYPES: [&str; 2] = ["Endpoint", "QuestionnaireResponse"];

impl Writer<'_> {
    /// Refuses a version of a [`REFERENCE_CHECKED_TYPES`] type that references a resource
    /// of this server that does not exist (or is deleted).
    async fn check_references(
        &mut self,
        resource_type: &str,
        references: Vec<String>,
    ) -> Result<()> {
        let mut references: Vec<String> = references
            .iter()
            .map(|r| crate::reference::normalise_reference(r, self.base_url))
            .filter(|r| !(r.contains("://") || r.starts_with('#') || r.starts_with("urn:")))
            .collect();
        references.sort();
        references.dedup();
        for reference in references {
            let target = reference.split_once('/').and_then(|(t, id)| {
                let t = crate::resource_type::supported_type(t)?;
                (!id.is_empty() && !id.contains('/')).then_some((t, id))
            });
            let found = match target {
                Some((t, id)) => self
                    .current(t, id)
                    .await?
                    .is_some_and(|current| !current.deleted),
                None => false,
            };
            if !found {
                return Err(Error::Forbidden(format!(
                    "{resource_type} references {reference}, which is not a resource of this server"
                )));
            }
        }
        Ok(())
    }
}

/// Finds the one resource each conditional reference of `op` names, among the stored ones
/// the writer may read and this transaction's own writes, as the Java DSF resolves them:
/// none or several is a 403.
async fn resolve_conditional(
    writer: &mut Writer<'_>,
    op: &WriteOp,
    ops: &[WriteOp],
    targets: &[Target],
) -> Result<()> {
    let resource = match op {
        WriteOp::Create { resource, .. }
        | WriteOp::CreateWithContent { resource, .. }
        | WriteOp::Update { resource, .. }
        | WriteOp::ConditionalUpdate { resource, .. } => resource,
        _ => return Ok(()),
    };
    let mut references = Vec::new();
    conditional_references(resource, &mut references);
    for reference in references {
        if writer.ids.contains_key(&reference) {
            continue;
        }
        let Some((resource_type, criteria)) = conditional_target(&reference) else {
            continue;
        };
        let pairs = crate::search::parse_query_string(criteria);
        let mut query = SearchQuery::criteria_from_pairs(resource_type, &pairs, writer.base_url)
            .map_err(|e| Error::Forbidden(format!("conditional reference {reference}: {e}")))?;
        query.visible_to = writer.guard.and_then(|g| g.read_grants());
        let mut found: Vec<String> = writer
            .matches(&query)
            .await?
            .into_iter()
            .map(|stored| stored.id)
            .collect();
        for (op, target) in ops.iter().zip(targets) {
            let written = match op {
                WriteOp::Create { resource, .. }
                | WriteOp::CreateWithContent { resource, .. }
                | WriteOp::Update { resource, .. }
                | WriteOp::ConditionalUpdate { resource, .. } => resource,
                _ => continue,
            };
            if let Some(id) = target.written_id() {
                if query.matches(id, written, writer.base_url) && !found.iter().any(|f| f == id) {
                    found.push(id.to_owned());
                }
            }
        }
        match found.as_slice() {
            [id] => {
                writer
                    .ids
                    .insert(reference.clone(), format!("{resource_type}/{id}"));
            }
            [] => {
                return Err(Error::Forbidden(format!(
                    "conditional reference {reference} matches no resource"
                )))
            }
            _ => {
                return Err(Error::Forbidden(format!(
                    "conditional reference {reference} matches more than one resource"
                )))
            }
        }
    }
    Ok(())
}

async fn resolve_target(
    writer: &mut Writer<'_>,
    op: &WriteOp,
    earlier: &[WriteOp],
    earlier_targets: &[Target],
) -> Result<Target> {
    let base_url = writer.base_url;
    let (target, resource_type, full_url) = match op {
        WriteOp::Create {
            resource,
            if_none_exist,
            full_url,
        } => {
            let t = resource_type_of(resource)?;
            // The write rules judge a create before any lookup, so that a conditional create
            // the caller may not make tells nothing of what exists.
            writer.check(Change::Create {
                index: writer.index,
                resource_type: t,
                new: resource,
            })?;
            let target = match if_none_exist {
                None => Target::New(new_id()),
                Some(query) => {
                    let mut found = writer.matches(query).await?;
                    match found.len() {
                        0 => match earlier_match(query, earlier, earlier_targets, base_url) {
                            Some((index, id)) => Target::SameAs { index, id },
                            None => Target::New(new_id()),
                        },
                        1 => Target::Existing(found.remove(0)),
                        _ => return Err(several(query)),
                    }
                }
            };
            (target, t, full_url)
        }
        WriteOp::ConditionalUpdate {
            query,
            resource,
            full_url,
        } => {
            let found = writer.matches(query).await?;
            let body_id = resource.get("id").and_then(Value::as_str);
            let selected = match found.as_slice() {
                [] => earlier_match(query, earlier, earlier_targets, base_url).map(|(_, id)| id),
                [one] => Some(one.id.clone()),
                _ => return Err(several(query)),
            };
            let target = match (selected, body_id) {
                (None, None) => Target::New(new_id()),
                (None, Some(id)) => {
                    return Err(Error::MethodNotAllowed(format!(
                        "no {} matches the criteria and update as create of id {id} is not supported",
                        query.resource_type
                    )))
                }
                (Some(selected), Some(body_id)) if body_id != selected => {
                    return Err(Error::Invalid(format!(
                        "resource id does not match the id {selected} of the resource the criteria select"
                    )))
                }
                (Some(selected), _) => Target::Update(selected),
            };
            (target, query.resource_type, full_url)
        }
        WriteOp::Update {
            resource_type,
            id,
            full_url,
            ..
        } => (Target::Update(id.clone()), *resource_type, full_url),
        WriteOp::CreateWithContent { resource, .. } => {
            let t = resource_type_of(resource)?;
            if t != "Binary" {
                return Err(Error::Invalid(format!(
                    "only a Binary has content apart, not a {t}"
                )));
            }
            writer.check(Change::Create {
                index: writer.index,
                resource_type: t,
                new: resource,
            })?;
            (Target::New(new_id()), t, &None)
        }
        _ => (Target::None, "", &None),
    };
    if let Some(url) = full_url {
        match &target {
            Target::New(id) | Target::Update(id) | Target::SameAs { id, .. } => {
                writer
                    .ids
                    .insert(url.clone(), format!("{resource_type}/{id}"));
            }
            Target::Existing(stored) => {
                writer.ids.insert(url.clone(), stored.reference());
            }
            Target::None => {}
        }
    }
    Ok(target)
}

async fn apply(
    writer: &mut Writer<'_>,
    op: WriteOp,
    target: Target,
    earlier: &[WriteOutcome],
) -> Result<WriteOutcome> {
    let outcome = match (op, target) {
        (WriteOp::Create { .. }, Target::SameAs { index, .. }) => match earlier.get(index) {
            Some(WriteOutcome::Created(stored) | WriteOutcome::Updated(stored)) => {
                WriteOutcome::Existing(stored.clone())
            }
            _ => return Err(Error::storage_fault("write target resolution out of step")),
        },
        (WriteOp::Create { resource, .. }, Target::New(id)) => {
            writer.create(resource, id, true).await?
        }
        (WriteOp::CreateWithContent { resource, content }, Target::New(id)) => {
            let created = writer.create(resource, id.clone(), true).await?;
            super::content::attach(&mut *writer.session, writer.dialect, &id, 1, &content).await?;
            created
        }
        (WriteOp::ConditionalUpdate { resource, .. }, Target::New(id)) => {
            writer.create(resource, id, false).await?
        }
        (WriteOp::Create { .. }, Target::Existing(stored)) => WriteOutcome::Existing(stored),
        (
            WriteOp::Update {
                resource_type,
                id,
                resource,
                if_match,
                ..
            },
            _,
        ) => {
            writer
                .update(resource_type, &id, resource, if_match)
                .await?
        }
        (
            WriteOp::ConditionalUpdate {
                query, resource, ..
            },
            Target::Update(id),
        ) => {
            writer
                .update(query.resource_type, &id, resource, None)
                .await?
        }
        (WriteOp::Delete { resource_type, id }, _) => writer.delete(resource_type, &id).await?,
        (WriteOp::PermanentDelete { resource_type, id }, _) => {
            writer.delete_permanently(resource_type, &id).await?
        }
        (WriteOp::ConditionalDelete { query }, _) => {
            let found = writer.matches(&query).await?;
            match found.as_slice() {
                [] => WriteOutcome::NoMatch,
                [one] => {
                    let id = one.id.clone();
                    writer.delete(query.resource_type, &id).await?
                }
                _ => return Err(several(&query)),
            }
        }
        _ => return Err(Error::storage_fault("write target resolution out of step")),
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_bundle_keeps_the_references_between_its_entries() {
        let ids = HashMap::from([("urn:uuid:known".to_owned(), "Organization/1".to_owned())]);
        let mut bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction",
            "entry": [{"fullUrl": "urn:uuid:inner", "resource": {"resourceType": "Endpoint",
                "managingOrganization": {"reference": "urn:uuid:inner-org"}}}]});
        let unchanged = bundle.clone();
        resolve_references(&mut bundle, &ids, None).expect("a Bundle's own references");
        assert_eq!(bundle, unchanged);
        let mut endpoint = serde_json::json!({"resourceType": "Endpoint",
            "managingOrganization": {"reference": "urn:uuid:known"}});
        resolve_references(&mut endpoint, &ids, None).expect("resolved");
        assert_eq!(
            endpoint["managingOrganization"]["reference"],
            "Organization/1"
        );
        let mut dangling = serde_json::json!({"resourceType": "Endpoint",
            "managingOrganization": {"reference": "urn:uuid:nowhere"}});
        assert!(resolve_references(&mut dangling, &ids, None).is_err());
    }
}
