//! Versioned resource storage. [`ResourceStore`] implements the FHIR semantics (versions,
//! tombstones, conditional interactions, transactions, search, history) once, on top of the
//! [`Backend`] seam that the SQLite and PostgreSQL backends implement with plain SQL.

#[cfg(feature = "conformance")]
pub mod conformance;
mod content;
mod feed;
mod group;
mod operation;
mod plan;
mod postgres;
mod sql;
mod sqlite;
mod unique;
mod write;

#[cfg(feature = "server")]
pub(crate) use content::too_large_to_embed;
pub use content::{ContentWriter, StagedContent, StoredContent, PART_BYTES};
pub use feed::{ChangeReceiver, CommittedBatch};
pub use operation::{Change, WriteGuard, WriteOp, WriteOutcome};
pub use plan::FEW_READABLE;
pub use postgres::{PostgresBackend, PostgresOptions};
pub use sql::{AccessPlan, Dialect, HistoryFilter, Sql, SqlValue, STORE_SCHEMA_VERSION};
pub use sqlite::SqliteBackend;
pub use write::format_instant;

use crate::access::ReadGrants;
use crate::search::SearchQuery;
use crate::{Error, Result};
/// The attribute [`Backend`] and [`Session`] implementations are written with, so that a
/// backend outside this crate needs no dependency of its own for it.
pub use async_trait::async_trait;
use dsf_core::ErrorChain;
use std::sync::Arc;

/// One stored version of a resource. `body` is the canonical JSON, absent for a deletion.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    /// The resource's type.
    pub resource_type: String,
    /// The resource's id.
    pub id: String,
    /// The version, from 1.
    pub version: i64,
    /// Milliseconds since the Unix epoch.
    pub last_updated: i64,
    /// Whether this version is a deletion (a tombstone).
    pub deleted: bool,
    /// The resource's JSON as stored; `None` for a deletion.
    pub body: Option<Arc<str>>,
}

impl StoredResource {
    /// `Type/id`.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.resource_type, self.id)
    }

    /// The stored body as JSON. Rows written before the input bounds existed may nest deeper
    /// than serde_json's default limit of 128; they are still read (up to
    /// [`MAX_STORED_DEPTH`]), so that they can be updated and deleted.
    pub fn json(&self) -> Result<serde_json::Value> {
        use serde::Deserialize;
        let body = self.body.as_deref().ok_or_else(|| Error::Gone {
            resource: self.reference(),
            version: self.version,
        })?;
        if crate::bounds::json_depth(body.as_bytes()) > MAX_STORED_DEPTH {
            return Err(Error::storage_fault(format!(
                "{} is stored nested deeper than {MAX_STORED_DEPTH} levels",
                self.reference()
            )));
        }
        let mut reader = serde_json::Deserializer::from_str(body);
        reader.disable_recursion_limit();
        let value = serde_json::Value::deserialize(&mut reader).map_err(Error::storage)?;
        reader.end().map_err(Error::storage)?;
        Ok(value)
    }
}

/// Deepest stored JSON [`StoredResource::json`] reads.
pub const MAX_STORED_DEPTH: usize = 1_000;

/// A database session: a read-only connection, or a write transaction that is rolled back
/// unless committed.
#[async_trait]
pub trait Session: Send {
    /// Rows of `res_type, res_id, version, last_updated, deleted, body`.
    async fn resources(&mut self, sql: &Sql) -> Result<Vec<StoredResource>>;
    /// The first column of each row, as text.
    async fn strings(&mut self, sql: &Sql) -> Result<Vec<String>>;
    /// The single number a `COUNT` query answers.
    async fn count(&mut self, sql: &Sql) -> Result<i64>;
    /// Runs a statement; the number of rows it changed.
    async fn execute(&mut self, sql: &Sql) -> Result<u64>;
    /// The first column of each row, as bytes (the parts of a Binary's content).
    async fn blobs(&mut self, sql: &Sql) -> Result<Vec<bytes::Bytes>> {
        let _ = sql;
        Err(Error::NotSupported(
            "this storage backend keeps no Binary content apart".into(),
        ))
    }
    /// A statement whose answer nobody waits for. A backend may hold it back and send it
    /// with the next statement that is waited for, or with the commit, so that a write costs
    /// one round trip; its error then surfaces there. By default it runs at once.
    async fn queue(&mut self, sql: Sql) -> Result<()> {
        self.execute(&sql).await.map(|_| ())
    }
    /// Serialises writers on `key` (a resource type for conditional writes, `Type/id` for one
    /// resource) until the transaction ends: a PostgreSQL advisory lock, a no-op where the
    /// backend has a single writer. Row locks are not enough: under READ COMMITTED a waiter
    /// re-checks only the row it waited for, which is no longer the current version. The lock
    /// is held before the session's next statement runs; a backend may send it with that
    /// statement (see [`Session::queue`]).
    async fn lock(&mut self, key: &str) -> Result<()>;
    /// Commits a write transaction.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// A storage backend: where sessions come from, and which SQL dialect they speak.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The SQL dialect its sessions speak.
    fn dialect(&self) -> Dialect;
    /// Whether all writes go through one connection anyway, so that the store commits
    /// concurrent writes together (group commit) instead of one after the other.
    fn single_writer(&self) -> bool {
        false
    }
    /// A read-only session.
    async fn read(&self) -> Result<Box<dyn Session>>;
    /// A write transaction.
    async fn write(&self) -> Result<Box<dyn Session>>;

    /// Whether the backend's calls block their thread (SQLite). The store then runs
    /// multi-statement reads such as searches on the blocking pool as a whole, with a
    /// session from [`Backend::read_in_place`].
    fn blocks(&self) -> bool {
        false
    }

    /// A read session whose statements run on the calling thread; only asked for when
    /// [`Backend::blocks`], from a thread of the blocking pool.
    async fn read_in_place(&self) -> Result<Box<dyn Session>> {
        self.read().await
    }

    /// The directory where the store keeps Binary content as files, one per upload, if the
    /// backend has a place on disk for them (a SQLite database file: `<file>-binary`).
    /// Without one, content is kept in the database in parts.
    fn content_directory(&self) -> Option<&std::path::Path> {
        None
    }

    /// Tells other processes sharing the database of `changes`, just committed (PostgreSQL's
    /// NOTIFY, sent after the commit and batched); nothing where no other process writes.
    fn announce(&self, changes: &[StoredResource]) {
        let _ = changes;
    }

    /// The versions other processes sharing the database commit, as they commit; asked once
    /// by [`ResourceStore::new`]. `None` where no other process writes.
    fn follow_peers(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Vec<StoredResource>>> {
        None
    }

    /// How its database connections are used at this moment, for metrics; `None` where it
    /// does not know.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

/// How a backend's database connections are used at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The most connections it holds.
    pub max: usize,
    /// Connections serving a session now.
    pub in_use: usize,
    /// Open connections waiting for work.
    pub idle: usize,
}

impl PoolStatus {
    /// A status of `in_use` and `idle` connections out of `max`.
    pub fn new(max: usize, in_use: usize, idle: usize) -> Self {
        PoolStatus { max, in_use, idle }
    }
}

/// A page of search results.
#[derive(Debug, Clone)]
pub struct SearchResult {
    /// How many resources match in all.
    pub total: i64,
    /// This page's matches.
    pub matches: Vec<StoredResource>,
    /// `_include` and `_revinclude` results, without duplicates of matches.
    pub included: Vec<StoredResource>,
}

/// A page of history entries, newest first.
#[derive(Debug, Clone)]
pub struct HistoryResult {
    /// How many versions the history has in all.
    pub total: i64,
    /// This page's versions.
    pub entries: Vec<StoredResource>,
}

/// Resource types whose changes can change who is allowed in.
pub const ALLOW_LIST_TYPES: [&str; 3] = ["Organization", "Endpoint", "OrganizationAffiliation"];

/// The FHIR resource store. Cheap to clone.
#[derive(Clone)]
pub struct ResourceStore {
    backend: Arc<dyn Backend>,
    base_url: Arc<str>,
    group_writer: Option<group::GroupWriter>,
    plans: Arc<plan::PlanCache>,
    feed: Arc<feed::ChangeFeed>,
    content: content::ContentPlace,
}

impl ResourceStore {
    /// `base_url` is this server's external base (e.g. `https://dsf.example/fhir`); absolute
    /// references to it are stored relative.
    pub fn new(backend: Arc<dyn Backend>, base_url: &str) -> Self {
        let base_url: Arc<str> = base_url.trim_end_matches('/').into();
        let feed = Arc::new(feed::ChangeFeed::default());
        let group_writer = if backend.single_writer() {
            match group::spawn(backend.clone(), base_url.clone(), feed.clone()) {
                Ok(writer) => Some(writer),
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "no writer thread; committing writes one by one");
                    None
                }
            }
        } else {
            None
        };
        if let Some(peers) = backend.follow_peers() {
            feed.expect_peers();
            feed::forward_peers(peers, Arc::downgrade(&feed));
        }
        let content = match backend.content_directory() {
            Some(directory) => content::ContentPlace::Directory(directory.into()),
            None => content::ContentPlace::Database,
        };
        ResourceStore {
            backend,
            base_url,
            group_writer,
            plans: Arc::default(),
            feed,
            content,
        }
    }

    /// Every change committed from now on, batch by batch (see [`CommittedBatch`]): through
    /// this store, and on PostgreSQL also by other processes sharing the database.
    pub fn changes(&self) -> ChangeReceiver {
        self.feed.listen()
    }

    /// Opens the database a URL names: `sqlite:<path>`, `sqlite::memory:`, or a
    /// `postgresql://` / `postgres://` URL (the Java DSF's `DEV_DSF_FHIR_DB_URL` role).
    pub async fn open(db_url: &str, base_url: &str) -> Result<Self> {
        let backend: Arc<dyn Backend> = if db_url == "sqlite::memory:" {
            Arc::new(SqliteBackend::in_memory()?)
        } else if let Some(path) = db_url.strip_prefix("sqlite:") {
            Arc::new(SqliteBackend::open(std::path::Path::new(path))?)
        } else if db_url.starts_with("postgresql://") || db_url.starts_with("postgres://") {
            Arc::new(PostgresBackend::connect(db_url, None, 16).await?)
        } else {
            return Err(Error::Invalid(format!(
                "database URL {db_url} is neither sqlite:<path> nor postgresql://…"
            )));
        };
        Ok(ResourceStore::new(backend, base_url))
    }

    /// Whether the database answers: one trivial statement on a read session. What a
    /// readiness check asks.
    pub async fn check_database(&self) -> Result<()> {
        let mut session = self.backend.read().await?;
        let mut sql = Sql::new(self.backend.dialect());
        // `count` reads a 64-bit integer; a bare `1` is a 32-bit one on PostgreSQL.
        sql.push("SELECT CAST(1 AS BIGINT)");
        session.count(&sql).await.map(|_| ())
    }

    /// How the backend's database connections are used now (see [`Backend::pool_status`]).
    pub fn pool_status(&self) -> Option<PoolStatus> {
        self.backend.pool_status()
    }

    /// The server's base URL, relative to which stored references are kept.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The backend's SQL dialect.
    pub fn dialect(&self) -> Dialect {
        self.backend.dialect()
    }

    /// The current version, which may be a deletion.
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        let mut session = self.backend.read().await?;
        let sql = sql::current_row(self.dialect(), resource_type, id, None);
        Ok(session.resources(&sql).await?.into_iter().next())
    }

    /// The current version (which may be a deletion) if it is readable with `grants`: one
    /// statement, so that a hidden resource and a missing one cost and look the same.
    pub async fn read_visible(
        &self,
        resource_type: &str,
        id: &str,
        grants: &ReadGrants,
    ) -> Result<Option<StoredResource>> {
        let mut session = self.backend.read().await?;
        let sql = sql::current_row(self.dialect(), resource_type, id, Some(grants));
        Ok(session.resources(&sql).await?.into_iter().next())
    }

    /// Version `version` if it is readable with `grants` (see [`ResourceStore::read_visible`]).
    pub async fn vread_visible(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
        grants: &ReadGrants,
    ) -> Result<Option<StoredResource>> {
        let mut session = self.backend.read().await?;
        let mut sql = sql::version_row(self.dialect(), resource_type, id, version);
        sql::visible(&mut sql, grants, Some(resource_type), AccessPlan::PerRow);
        Ok(session.resources(&sql).await?.into_iter().next())
    }

    /// One version of a resource (a deletion included), with no read-access check.
    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredResource>> {
        let mut session = self.backend.read().await?;
        let sql = sql::version_row(self.dialect(), resource_type, id, version);
        Ok(session.resources(&sql).await?.into_iter().next())
    }

    /// Whether the given version of a resource (a tombstone included) is readable with
    /// `grants`.
    pub async fn is_readable(&self, stored: &StoredResource, grants: &ReadGrants) -> Result<bool> {
        let mut session = self.backend.read().await?;
        let sql = sql::version_visible(
            self.dialect(),
            &stored.resource_type,
            &stored.id,
            stored.version,
            grants,
        );
        Ok(session.count(&sql).await? > 0)
    }

    /// The page the query asks for, with its total and includes. On a backend whose calls
    /// block ([`Backend::blocks`]), all the search's statements run together on the blocking
    /// pool, one hop for the whole search rather than one per statement.
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchResult> {
        if !self.backend.blocks() {
            let mut session = self.backend.read().await?;
            return search_in(&mut *session, self.dialect(), query, &self.plans).await;
        }
        let backend = self.backend.clone();
        let plans = self.plans.clone();
        let query = query.clone();
        let dialect = self.dialect();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                let mut session = backend.read_in_place().await?;
                search_in(&mut *session, dialect, &query, &plans).await
            })
        })
        .await
        .map_err(|e| Error::storage_fault(format!("search task failed: {e}")))?
    }

    /// A page of the history `filter` selects, newest first; `page` counts from 1.
    pub async fn history(
        &self,
        filter: &HistoryFilter,
        count: usize,
        page: usize,
    ) -> Result<HistoryResult> {
        let mut session = self.backend.read().await?;
        let plan = match (&filter.resource_type, &filter.id, &filter.visible_to) {
            (Some(t), None, Some(grants)) => {
                self.plans
                    .for_type_history(&mut *session, self.dialect(), t, grants)
                    .await?
            }
            _ => AccessPlan::PerRow,
        };
        let total = session
            .count(&sql::history_count(self.dialect(), filter, plan))
            .await?;
        let entries = if count == 0 {
            Vec::new()
        } else {
            let offset = (page.max(1) - 1).saturating_mul(count);
            session
                .resources(&sql::history_page(
                    self.dialect(),
                    filter,
                    plan,
                    count,
                    offset,
                ))
                .await?
        };
        Ok(HistoryResult { total, entries })
    }

    /// Runs `ops` in one database transaction: all succeed, or nothing is stored.
    pub async fn transaction(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>> {
        self.transaction_labelled(ops, |i| format!("operation {i}"))
            .await
    }

    /// [`ResourceStore::transaction`], with the failing operation's index turned into the
    /// context of the error by `label` (a Bundle names its entries).
    pub async fn transaction_labelled(
        &self,
        ops: Vec<WriteOp>,
        label: impl Fn(usize) -> String + Send + 'static,
    ) -> Result<Vec<WriteOutcome>> {
        self.transaction_guarded(ops, None, label).await
    }

    /// [`ResourceStore::transaction_labelled`], with every change shown to `guard` inside the
    /// transaction, after the resource it replaces or deletes is locked: its verdict is based
    /// on the version the write actually replaces.
    pub async fn transaction_guarded(
        &self,
        ops: Vec<WriteOp>,
        guard: Option<Arc<dyn WriteGuard>>,
        label: impl Fn(usize) -> String + Send + 'static,
    ) -> Result<Vec<WriteOutcome>> {
        let deleted_binaries: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::PermanentDelete {
                    resource_type: "Binary",
                    id,
                } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        let released_content = self.content_files_of(&deleted_binaries).await?;
        let outcomes = match &self.group_writer {
            Some(writer) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let job = group::Job {
                    ops,
                    guard,
                    label: Box::new(label),
                    reply,
                };
                writer
                    .send(job)
                    .map_err(|_| Error::storage_fault("store writer has stopped"))?;
                answer
                    .await
                    .map_err(|_| Error::storage_fault("store writer has stopped"))??
            }
            None => {
                let mut session = self.backend.write().await?;
                let outcomes = write::execute(
                    &mut *session,
                    self.dialect(),
                    &self.base_url,
                    ops,
                    guard.as_deref(),
                )
                .await
                .map_err(|(index, e)| e.context(&label(index)))?;
                session.commit().await?;
                let written = feed::written(&outcomes);
                self.backend.announce(&written);
                self.feed.publish(written);
                outcomes
            }
        };
        self.content_files_released(released_content).await;
        Ok(outcomes)
    }

    /// Changes after every committed write to an allow-list type ([`ALLOW_LIST_TYPES`]),
    /// through this store or (PostgreSQL) by another process sharing the database, so that
    /// identities derived from them can be cached until it moves.
    pub fn allow_list_generation(&self) -> u64 {
        self.feed.allow_list_generation()
    }

    /// Changes after every committed write through this store to a StructureDefinition,
    /// ValueSet or CodeSystem ([`crate::resource_type::CONFORMANCE_TYPES`]), so that what
    /// is derived from them (compiled profiles) can be cached until it moves.
    pub fn conformance_generation(&self) -> u64 {
        self.feed.conformance_generation()
    }

    /// One write in its own transaction.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOutcome> {
        self.transaction(vec![op])
            .await?
            .pop()
            .ok_or_else(|| Error::storage_fault("write produced no outcome"))
    }

    /// The active, not deleted Organization whose certificate thumbprint extension holds
    /// `thumbprint` (lower-case hex).
    pub async fn organization_by_thumbprint(
        &self,
        thumbprint: &str,
    ) -> Result<Option<StoredResource>> {
        let query = SearchQuery::of_clauses(
            "Organization",
            vec![
                crate::search::Clause {
                    param: crate::search::THUMBPRINT_PARAM.into(),
                    negate: false,
                    any_of: vec![crate::search::Condition::Token {
                        system: None,
                        code: Some(thumbprint.to_owned()),
                    }],
                },
                crate::search::Clause {
                    param: "active".into(),
                    negate: false,
                    any_of: vec![crate::search::Condition::Token {
                        system: None,
                        code: Some("true".into()),
                    }],
                },
            ],
            2,
        );
        let result = self.search(&query).await?;
        match result.matches.len() {
            0 | 1 => Ok(result.matches.into_iter().next()),
            _ => Err(Error::Forbidden(
                "certificate thumbprint is claimed by more than one organization".into(),
            )),
        }
    }
}

/// Search, usable both in read sessions and inside write transactions (conditional
/// interactions must see the transaction's own writes).
pub(crate) async fn search_in(
    session: &mut dyn Session,
    dialect: Dialect,
    query: &SearchQuery,
    plans: &plan::PlanCache,
) -> Result<SearchResult> {
    let plan = plans.for_search(session, dialect, query).await?;
    let total = session
        .count(&sql::search_count(dialect, query, plan))
        .await?;
    if query.summary_count || query.count == 0 {
        return Ok(SearchResult {
            total,
            matches: Vec::new(),
            included: Vec::new(),
        });
    }
    let offset = (query.page.max(1) - 1).saturating_mul(query.count);
    let matches = session
        .resources(&sql::search_page(
            dialect,
            query,
            plan,
            query.count,
            offset,
            !query.clauses.is_empty() && total < plan::FEW_READABLE,
        ))
        .await?;
    let mut included: Vec<StoredResource> = Vec::new();
    if !matches.is_empty() {
        let ids: Vec<String> = matches.iter().map(|m| m.id.clone()).collect();
        for include in &query.includes {
            let refs = session
                .strings(&sql::reference_values(
                    dialect,
                    include.source_type,
                    include.param,
                    &ids,
                ))
                .await?;
            let mut by_type: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
            for reference in &refs {
                let Some((t, id)) = reference.split_once('/') else {
                    continue;
                };
                let Some(t) = crate::resource_type::supported_type(t) else {
                    continue;
                };
                if include.target_type.is_some_and(|wanted| wanted != t) || id.contains('/') {
                    continue;
                }
                by_type.entry(t).or_default().push(id.to_owned());
            }
            for (t, ids) in by_type {
                included.extend(
                    session
                        .resources(&sql::current_by_ids(
                            dialect,
                            t,
                            &ids,
                            query.visible_to.as_ref(),
                        ))
                        .await?,
                );
            }
        }
        let targets: Vec<String> = matches.iter().map(StoredResource::reference).collect();
        for rev in &query.revincludes {
            included.extend(
                session
                    .resources(&sql::referencing(
                        dialect,
                        rev.source_type,
                        rev.param,
                        &targets,
                        query.visible_to.as_ref(),
                    ))
                    .await?,
            );
        }
    }
    let mut seen: std::collections::HashSet<(String, String)> = matches
        .iter()
        .map(|m| (m.resource_type.clone(), m.id.clone()))
        .collect();
    included.retain(|r| seen.insert((r.resource_type.clone(), r.id.clone())));
    Ok(SearchResult {
        total,
        matches,
        included,
    })
}
