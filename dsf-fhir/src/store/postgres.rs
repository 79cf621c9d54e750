//! The PostgreSQL backend (tokio-postgres): the choice for production, where replicas,
//! backups and failover come from PostgreSQL. Connections are pooled; each caches its
//! prepared statements.
//!
//! Every wait on the database is bounded: connecting, getting a pooled connection and each
//! statement (a server-side `statement_timeout` and, for a database that stopped answering
//! altogether, the same bound on the client side). Running out of time or reaching no server
//! is [`Error::Unavailable`] (503), and the pool heals itself as the database comes back.
//! A session dropped while a statement runs (its HTTP client went away) cancels the
//! statement on the server instead of leaving it to run.

use super::sql::{schema, Dialect, Sql, SqlValue};
use super::{Backend, Session, StoredResource};
use crate::{Error, Result};
use async_trait::async_trait;
use dsf_core::ErrorChain;
use futures_util::future::{join_all, try_join_all};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

mod batch;
mod peers;

pub(crate) use peers::PeerChanges;

const STATEMENT_CACHE: usize = 512;

struct Connection {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Pool size and time limits of a [`PostgresBackend`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The most connections the pool opens.
    pub max_connections: usize,
    /// How long opening a connection (TCP, authentication, set-up) may take.
    pub connect_timeout: Duration,
    /// How long one statement may run, and how long a request waits for a pooled connection.
    pub statement_timeout: Duration,
}

impl PostgresOptions {
    /// Up to `max_connections`, 5 s to connect and 10 s per statement.
    pub fn new(max_connections: usize) -> Self {
        PostgresOptions {
            max_connections,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        }
    }

    /// Sets how long opening a connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long a statement may run.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// The client-side bound: the server's own timeout plus time for its answer to arrive.
    fn answer_timeout(&self) -> Duration {
        self.statement_timeout + Duration::from_secs(1)
    }
}

struct Pool {
    url: String,
    schema: Option<String>,
    options: PostgresOptions,
    idle: std::sync::Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    shared: Vec<SharedSlot>,
    next_shared: AtomicUsize,
}

/// One shared connection's place in the pool: the open connection, taken without waiting,
/// a lock that lets one caller at a time (re)connect it, and the lookups waiting for it.
#[derive(Default)]
struct SharedSlot {
    open: std::sync::Mutex<Option<Arc<SharedConnection>>>,
    connecting: tokio::sync::Mutex<()>,
    queue: std::sync::Mutex<batch::Queue>,
    batched: std::sync::Mutex<batch::KnownTexts>,
}

impl SharedSlot {
    fn open(&self) -> Option<Arc<SharedConnection>> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|c| !c.client.is_closed())
            .cloned()
    }

    /// Takes `conn` out of use if it is still this slot's: a statement on it went unanswered,
    /// and a connection that stopped answering without closing (a lost network path) would
    /// otherwise keep failing every read until TCP gave up on it. Statements already on it
    /// finish or time out on their own; the next read connects afresh.
    fn retire(&self, conn: &Arc<SharedConnection>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, conn)) {
            *open = None;
        }
    }
}

/// A connection that reads of one row by key ([`Sql::is_point_lookup`]) share, sent in
/// batches (see the `batch` module): a burst of reads costs the database and both ends a few
/// statements and round trips instead of one each (docs/performance.md). Only point lookups
/// go here: their cost is bounded by an index's depth, so none holds up the others behind
/// it, and one whose caller went away is left to finish rather than cancelled, since a
/// cancel would hit whichever statement the connection runs at that moment.
struct SharedConnection {
    client: Client,
    statements: std::sync::Mutex<HashMap<String, Statement>>,
}

/// How many of `max_connections` point lookups share: one per four cores of this host, at
/// least one, once the pool is large enough that the rest still serve searches and writes.
/// Fewer shared connections carry bigger batches: on two cores, one shared connection served
/// 23,000 reads by id a second and two of them 16,700 (docs/performance.md).
fn shared_connections(max_connections: usize) -> usize {
    if max_connections < 4 {
        return 0;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 4).clamp(1, max_connections / 4)
}

/// The store on PostgreSQL: a pool of pipelined connections, the tables in a schema of
/// their own (or `public`).
pub struct PostgresBackend {
    pool: Arc<Pool>,
    /// This process among those sharing the database, in its change announcements.
    origin: String,
    /// Sends the announcements of this process's writes.
    notifier: peers::Notifier,
}

fn storage_error(e: tokio_postgres::Error) -> Error {
    match e.code() {
        Some(&SqlState::UNIQUE_VIOLATION) => {
            return Error::VersionConflict(format!("concurrent modification: {e}"))
        }
        Some(&SqlState::CHARACTER_NOT_IN_REPERTOIRE | &SqlState::UNTRANSLATABLE_CHARACTER) => {
            // A NUL character, which PostgreSQL text cannot hold: the input's fault.
            return Error::Invalid(format!(
                "a value cannot be stored or searched: {}",
                ErrorChain(&e)
            ));
        }
        Some(&SqlState::QUERY_CANCELED) => {
            return Error::Unavailable(
                "the database did not finish the request in time; try again later".into(),
            )
        }
        Some(code) if code.code().starts_with("08") || code.code().starts_with("57P") => {
            return unavailable(&e)
        }
        _ => {}
    }
    if e.is_closed() || e.code().is_none() && e.as_db_error().is_none() {
        // No answer from the server at all: connection refused, reset or closed.
        return unavailable(&e);
    }
    Error::storage(e)
}

fn unavailable(e: &tokio_postgres::Error) -> Error {
    tracing::warn!(error = %ErrorChain(e), "PostgreSQL unavailable");
    Error::Unavailable("the database is not available; try again later".into())
}

fn timed_out(what: &str, after: Duration) -> Error {
    tracing::warn!(after = ?after, "PostgreSQL: {what} timed out");
    Error::Unavailable(format!(
        "the database did not answer within {} s; try again later",
        after.as_secs_f32()
    ))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Pool {
    async fn connect(&self) -> Result<Connection> {
        let timeout = self.options.connect_timeout;
        tokio::time::timeout(timeout, self.open())
            .await
            .map_err(|_| timed_out("connecting", timeout))?
    }

    async fn open(&self) -> Result<Connection> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .map_err(storage_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %ErrorChain(&e), "PostgreSQL connection closed");
            }
        });
        let mut setup = format!(
            "SET statement_timeout = {}",
            self.options.statement_timeout.as_millis().max(1)
        );
        if let Some(schema) = &self.schema {
            setup.push_str(&format!("; SET search_path TO {}", quote_ident(schema)));
        }
        client.batch_execute(&setup).await.map_err(storage_error)?;
        Ok(Connection {
            client,
            statements: HashMap::new(),
        })
    }

    /// `slot`'s shared connection, opened on first use and again after it closed or was
    /// retired.
    async fn shared_connection(&self, slot: &SharedSlot) -> Result<Arc<SharedConnection>> {
        if let Some(conn) = slot.open() {
            return Ok(conn);
        }
        let _connecting = slot.connecting.lock().await;
        // Someone else may have connected it while this caller waited.
        if let Some(conn) = slot.open() {
            return Ok(conn);
        }
        let client = self.connect().await?.client;
        // Batched lookups vary in size; a custom plan for each would cost more than the
        // lookups themselves, and every statement here is a walk down a unique index.
        let limit = self.options.answer_timeout();
        tokio::time::timeout(
            limit,
            client.batch_execute("SET plan_cache_mode = force_generic_plan"),
        )
        .await
        .map_err(|_| timed_out("connecting", limit))?
        .map_err(storage_error)?;
        let conn = Arc::new(SharedConnection {
            client,
            statements: std::sync::Mutex::new(HashMap::new()),
        });
        *slot.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.client.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn give_back(&self, conn: Connection) {
        if !conn.client.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

impl PostgresBackend {
    /// Connects with a libpq-style URL (`postgresql://user@host:port/db`) and creates the
    /// schema. With `schema`, everything lives in that schema (created if missing), which is
    /// how tests isolate themselves in one database.
    pub async fn connect(
        url: &str,
        schema_name: Option<&str>,
        max_connections: usize,
    ) -> Result<Self> {
        Self::connect_with(url, schema_name, PostgresOptions::new(max_connections)).await
    }

    /// [`PostgresBackend::connect`] with explicit pool size and time limits.
    pub async fn connect_with(
        url: &str,
        schema_name: Option<&str>,
        options: PostgresOptions,
    ) -> Result<Self> {
        let max = options.max_connections.max(1);
        let shared = shared_connections(max);
        let pool = Arc::new(Pool {
            url: url.to_owned(),
            schema: schema_name.map(str::to_owned),
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max - shared)),
            shared: (0..shared).map(|_| SharedSlot::default()).collect(),
            next_shared: AtomicUsize::new(0),
            options,
        });
        let conn = pool.connect().await?;
        // Servers starting together on one database: one creates the tables, the others
        // wait for it (concurrent CREATE ... IF NOT EXISTS can fail on the catalogue's
        // unique indexes).
        let mut setup = String::from("BEGIN; SELECT pg_advisory_xact_lock(7239847123984712);");
        if let Some(schema) = schema_name {
            setup.push_str(&format!(
                "CREATE SCHEMA IF NOT EXISTS {};",
                quote_ident(schema)
            ));
        }
        setup.push_str(&schema(Dialect::Postgres));
        setup.push_str("; COMMIT;");
        conn.client
            .batch_execute(&setup)
            .await
            .map_err(storage_error)?;
        let version: i64 = conn
            .client
            .query_one(super::sql::STORE_SCHEMA_QUERY, &[])
            .await
            .map_err(storage_error)?
            .try_get(0)
            .map_err(storage_error)?;
        super::sql::check_store_schema(version)?;
        pool.give_back(conn);
        let origin = uuid::Uuid::new_v4().simple().to_string();
        let notifier = peers::Notifier::start(&pool, origin.clone());
        Ok(PostgresBackend {
            pool,
            origin,
            notifier,
        })
    }

    fn session(&self, transaction: bool) -> Box<dyn Session> {
        Box::new(PgSession {
            conn: None,
            pool: self.pool.clone(),
            _permit: None,
            transaction,
            open_transaction: false,
            in_statement: false,
            queued: Vec::new(),
        })
    }
}

struct PgSession {
    /// The session's own pooled connection, taken when its first statement that is not a
    /// lone point lookup goes out.
    conn: Option<Connection>,
    pool: Arc<Pool>,
    _permit: Option<OwnedSemaphorePermit>,
    /// A write session: its BEGIN goes out with its first statement.
    transaction: bool,
    /// BEGIN was answered and no COMMIT yet: dropping the session must roll back.
    open_transaction: bool,
    /// A statement was sent and its answer not yet read: dropping now must cancel it.
    in_statement: bool,
    /// Statements held back to go out with the next one whose answer is awaited.
    queued: Vec<Sql>,
}

impl Drop for PgSession {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.in_statement {
            // The caller went away (or gave up) mid-statement: stop the statement on the
            // server and retire the connection, whose state is unknown.
            let cancel = conn.client.cancel_token();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = cancel.cancel_query(NoTls).await {
                        tracing::debug!(error = %ErrorChain(&e), "cancelling an abandoned statement failed");
                    }
                    drop(conn);
                });
            }
            return;
        }
        if !self.open_transaction {
            self.pool.give_back(conn);
            return;
        }
        // An abandoned transaction is rolled back before the connection is reused.
        let pool = self.pool.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if conn.client.batch_execute("ROLLBACK").await.is_ok() {
                    pool.give_back(conn);
                }
            });
        }
    }
}

type Answer<'a> = std::pin::Pin<
    Box<dyn Future<Output = Result<Option<Vec<Row>>, tokio_postgres::Error>> + Send + 'a>,
>;

impl PgSession {
    /// Takes a pooled connection for this session unless it has one.
    async fn check_out(&mut self) -> Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let wait = self.pool.options.statement_timeout;
        let permit = tokio::time::timeout(wait, self.pool.permits.clone().acquire_owned())
            .await
            .map_err(|_| timed_out("waiting for a pooled connection", wait))?
            .map_err(Error::storage)?;
        let conn = match self.pool.checkout() {
            Some(conn) => conn,
            None => self.pool.connect().await?,
        };
        self._permit = Some(permit);
        self.conn = Some(conn);
        Ok(())
    }

    fn conn(&mut self) -> Result<&mut Connection> {
        self.conn
            .as_mut()
            .ok_or_else(|| Error::storage_fault("session already finished"))
    }

    /// The client, the mid-statement flag and the answer time limit, borrowed apart so that
    /// a round trip can run under [`bounded`].
    fn parts(&mut self) -> Result<(&Client, &mut bool, Duration)> {
        let limit = self.pool.options.answer_timeout();
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| Error::storage_fault("session already finished"))?;
        Ok((&conn.client, &mut self.in_statement, limit))
    }

    /// Prepares, in one round trip, whichever of `texts` this connection has not prepared.
    async fn prepare_all(&mut self, texts: &[&str]) -> Result<Vec<Statement>> {
        let conn = self.conn()?;
        let mut missing: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| !conn.statements.contains_key(*t))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return texts
                .iter()
                .map(|t| {
                    conn.statements
                        .get(*t)
                        .cloned()
                        .ok_or_else(|| Error::storage_fault("prepared statement missing"))
                })
                .collect();
        }
        let (client, in_statement, limit) = self.parts()?;
        let prepared = bounded(
            in_statement,
            limit,
            try_join_all(missing.iter().map(|text| client.prepare(text))),
        )
        .await?;
        let conn = self.conn()?;
        // Taken before a full cache is cleared below, which would drop those this call
        // found cached.
        let statements: Vec<Option<Statement>> = texts
            .iter()
            .map(|t| conn.statements.get(*t).cloned())
            .collect();
        if conn.statements.len() + prepared.len() > STATEMENT_CACHE {
            conn.statements.clear();
        }
        for (text, stmt) in missing.iter().zip(&prepared) {
            conn.statements.insert((*text).to_owned(), stmt.clone());
        }
        texts
            .iter()
            .zip(statements)
            .map(|(t, cached)| {
                cached
                    .or_else(|| {
                        let at = missing.iter().position(|m| m == t)?;
                        prepared.get(at).cloned()
                    })
                    .ok_or_else(|| Error::storage_fault("prepared statement missing"))
            })
            .collect()
    }

    /// The prepared statement of one `sql`, from the cache or prepared now.
    async fn prepared(&mut self, sql: &Sql) -> Result<Statement> {
        self.prepare_all(&[sql.text.as_str()])
            .await?
            .pop()
            .ok_or_else(|| Error::storage_fault("prepared statement missing"))
    }

    /// Sends, as one pipeline (one round trip), a pending BEGIN, the held-back statements,
    /// `last` and, with `commit`, the COMMIT; returns the rows of `last`. The first failure
    /// in order is the error: PostgreSQL answers every later statement of the aborted
    /// transaction with an error of its own and turns the COMMIT into a rollback.
    async fn pipeline(&mut self, last: Option<&Sql>, commit: bool) -> Result<Vec<Row>> {
        let begin = self.transaction && !self.open_transaction;
        if let (Some(sql), false, false, true) = (last, begin, commit, self.queued.is_empty()) {
            if sql.is_point_lookup() && self.conn.is_none() && !self.pool.shared.is_empty() {
                return batch::lookup(&self.pool, sql.clone()).await;
            }
            self.check_out().await?;
            // A lone statement (every read): no pipeline to assemble.
            let stmt = self.prepared(sql).await?;
            let params: Vec<&(dyn ToSql + Sync)> = sql.params.iter().map(as_sql).collect();
            let (client, in_statement, limit) = self.parts()?;
            return bounded(in_statement, limit, client.query(&stmt, &params)).await;
        }
        self.check_out().await?;
        let queued = std::mem::take(&mut self.queued);
        let texts: Vec<&str> = queued
            .iter()
            .chain(last)
            .map(|sql| sql.text.as_str())
            .collect();
        let statements = self.prepare_all(&texts).await?;
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = queued
            .iter()
            .chain(last)
            .map(|sql| sql.params.iter().map(as_sql).collect())
            .collect();
        let (client, in_statement, limit) = self.parts()?;
        let mut steps: Vec<Answer<'_>> = Vec::with_capacity(statements.len() + 2);
        if begin {
            steps.push(Box::pin(async move {
                client.batch_execute("BEGIN").await.map(|_| None)
            }));
        }
        let held = queued.len();
        for (i, (stmt, params)) in statements.iter().zip(&params).enumerate() {
            if i < held {
                steps.push(Box::pin(async move {
                    client.execute(stmt, params).await.map(|_| None)
                }));
            } else {
                steps.push(Box::pin(async move {
                    client.query(stmt, params).await.map(Some)
                }));
            }
        }
        if commit {
            steps.push(Box::pin(async move {
                client.batch_execute("COMMIT").await.map(|_| None)
            }));
        }
        let answers = bounded(
            in_statement,
            limit,
            async move { Ok(join_all(steps).await) },
        )
        .await?;
        // BEGIN answered opens the transaction; COMMIT answered (even with an error) ends it.
        if begin && answers.first().is_some_and(|a| a.is_ok()) {
            self.open_transaction = true;
        }
        if commit
            && answers
                .last()
                .is_some_and(|a| a.is_ok() || a.as_ref().is_err_and(|e| e.as_db_error().is_some()))
        {
            self.open_transaction = false;
        }
        let mut rows = Vec::new();
        for answer in answers {
            if let Some(found) = answer.map_err(storage_error)? {
                rows = found;
            }
        }
        Ok(rows)
    }
}

/// Runs one round trip to the server within `limit`. Until it returns, the session counts as
/// mid-statement, so that dropping it (or this timing out) cancels the statement.
async fn bounded<T>(
    in_statement: &mut bool,
    limit: Duration,
    round_trip: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    *in_statement = true;
    match tokio::time::timeout(limit, round_trip).await {
        Ok(answer) => {
            *in_statement = false;
            answer.map_err(storage_error)
        }
        // The flag stays set: dropping the session cancels the statement and retires the
        // connection.
        Err(_) => Err(timed_out("a statement", limit)),
    }
}

fn as_sql(v: &SqlValue) -> &(dyn ToSql + Sync) {
    match v {
        SqlValue::Text(s) => s,
        SqlValue::Int(i) => i,
        SqlValue::Bytes(b) => b,
    }
}

#[async_trait]
impl Session for PgSession {
    async fn resources(&mut self, sql: &Sql) -> Result<Vec<StoredResource>> {
        self.pipeline(Some(sql), false)
            .await?
            .iter()
            .map(|row| {
                Ok(StoredResource {
                    resource_type: row.try_get(0).map_err(storage_error)?,
                    id: row.try_get(1).map_err(storage_error)?,
                    version: row.try_get(2).map_err(storage_error)?,
                    last_updated: row.try_get(3).map_err(storage_error)?,
                    deleted: row.try_get::<_, i64>(4).map_err(storage_error)? != 0,
                    body: row
                        .try_get::<_, Option<&str>>(5)
                        .map_err(storage_error)?
                        .map(Arc::from),
                })
            })
            .collect()
    }

    async fn strings(&mut self, sql: &Sql) -> Result<Vec<String>> {
        self.pipeline(Some(sql), false)
            .await?
            .iter()
            .map(|row| row.try_get(0).map_err(storage_error))
            .collect()
    }

    async fn blobs(&mut self, sql: &Sql) -> Result<Vec<bytes::Bytes>> {
        self.pipeline(Some(sql), false)
            .await?
            .iter()
            .map(|row| {
                row.try_get::<_, &[u8]>(0)
                    .map(bytes::Bytes::copy_from_slice)
                    .map_err(storage_error)
            })
            .collect()
    }

    async fn count(&mut self, sql: &Sql) -> Result<i64> {
        let rows = self.pipeline(Some(sql), false).await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::storage_fault("count returned no row"))?;
        row.try_get(0).map_err(storage_error)
    }

    async fn execute(&mut self, sql: &Sql) -> Result<u64> {
        if !self.queued.is_empty() || self.transaction && !self.open_transaction {
            self.pipeline(None, false).await?;
        }
        self.check_out().await?;
        let stmt = self.prepared(sql).await?;
        let params: Vec<&(dyn ToSql + Sync)> = sql.params.iter().map(as_sql).collect();
        let (client, in_statement, limit) = self.parts()?;
        bounded(in_statement, limit, client.execute(&stmt, &params)).await
    }

    async fn queue(&mut self, sql: Sql) -> Result<()> {
        self.queued.push(sql);
        Ok(())
    }

    /// Held back like any statement whose answer is not needed: the lock is taken on the
    /// server before the statements that follow it in the pipeline run.
    async fn lock(&mut self, key: &str) -> Result<()> {
        let mut sql = Sql::new(Dialect::Postgres);
        sql.push("SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':' || ")
            .bind(key)
            .push(")::bigint)");
        self.queued.push(sql);
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.queued.is_empty() && !self.open_transaction {
            // Nothing was written: no transaction was ever begun on the server.
            return Ok(());
        }
        self.pipeline(None, true).await?;
        Ok(())
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn read(&self) -> Result<Box<dyn Session>> {
        Ok(self.session(false))
    }

    async fn write(&self) -> Result<Box<dyn Session>> {
        Ok(self.session(true))
    }

    fn announce(&self, changes: &[StoredResource]) {
        self.notifier.send(changes);
    }

    fn pool_status(&self) -> Option<super::PoolStatus> {
        let pool = &self.pool;
        let exclusive = pool.options.max_connections - pool.shared.len();
        let shared_open = pool.shared.iter().filter(|s| s.open().is_some()).count();
        let idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).len();
        Some(super::PoolStatus::new(
            pool.options.max_connections,
            exclusive.saturating_sub(pool.permits.available_permits()) + shared_open,
            idle,
        ))
    }

    fn follow_peers(&self) -> Option<PeerChanges> {
        Some(peers::follow(
            self.pool.clone(),
            peers::channel(self.pool.schema.as_deref()),
            self.origin.clone(),
        ))
    }
}
