//! The embedded default backend: SQLite (bundled) in WAL mode, one writer connection and a few
//! reader connections, so reads never wait for a write to commit.
//!
//! A session may run for at most [`SqliteBackend::statement_timeout`]; past it, SQLite's
//! progress handler interrupts the statement and the request gets [`Error::Unavailable`].
//!
//! SQLite calls block their thread, so what may take long leaves the async runtime's workers:
//! a search runs all its statements on the blocking pool in one hop (the store asks for a
//! [`Backend::read_in_place`] session there); other read statements whose cost grows with the
//! data (counts, history) hop to the blocking pool one by one, the connection moved there and
//! back; reads of one row by its key ([`Sql::is_point_lookup`]) run where they are, because
//! the hop would cost more than the lookup (measured in docs/performance.md: 30% of read
//! throughput on two cores). Write sessions run where they are opened, which is the store's
//! own writer thread (see `group`).
//!
//! Reader connections keep their read transaction (their snapshot) from one read to the next
//! while nothing was committed: starting and ending a transaction per statement takes the WAL's
//! and the file's locks with system calls each time (measured in docs/performance.md). The
//! writer connection counts its commits and, after each, ends the snapshot of every reader that
//! is idle, so a write acknowledged to a client is seen by every read that starts after it and no
//! idle reader pins the WAL against checkpoints. A snapshot is also given up after
//! [`SqliteBackend::max_snapshot_age`] (100 ms unless set), so what another process commits to
//! the file is seen within that time.

use super::sql::{schema, Dialect, Sql, SqlValue};
use super::{Backend, Session, StoredResource};
use crate::{Error, Result};
use async_trait::async_trait;
use rusqlite::{params_from_iter, Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OwnedMutexGuard};

const READERS: usize = 4;
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_SNAPSHOT_AGE: Duration = Duration::from_millis(100);

/// A connection and the time its current session must end by.
struct Guarded {
    conn: Connection,
    /// Milliseconds since [`epoch`] after which statements are interrupted.
    deadline: Arc<AtomicU64>,
    /// The open read transaction a reader keeps between sessions.
    snapshot: Option<Snapshot>,
}

/// A reader's open read transaction.
struct Snapshot {
    /// The writer's commit count when the transaction began; the snapshot itself is taken
    /// by the first statement after that, so it holds at least those commits.
    commits: u64,
    began: Instant,
}

/// What the writer needs to keep readers' snapshots current.
struct Snapshots {
    /// Commits of the writer connection so far.
    commits: AtomicU64,
    readers: Vec<Arc<Mutex<Guarded>>>,
}

impl Snapshots {
    /// Counts a commit, then ends the snapshot of every reader not in use; a reader in use
    /// ends its own when its next session starts.
    fn committed(&self) {
        self.commits.fetch_add(1, Ordering::SeqCst);
        for reader in &self.readers {
            if let Ok(mut guarded) = reader.try_lock() {
                guarded.end_snapshot();
            }
        }
    }
}

impl Guarded {
    /// Makes sure this reader reads in a snapshot that holds every commit counted in
    /// `commits`, reusing the open one if it does.
    fn current_snapshot(&mut self, commits: u64, max_age: Duration) -> Result<()> {
        let reusable = self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.commits == commits && s.began.elapsed() < max_age);
        if reusable && !self.conn.is_autocommit() {
            return Ok(());
        }
        // Ends the stale snapshot, or a transaction this reader does not know of.
        self.end_snapshot();
        self.conn
            .prepare_cached("BEGIN")
            .and_then(|mut begin| begin.execute([]))
            .map_err(storage_error)?;
        self.snapshot = Some(Snapshot {
            commits,
            began: Instant::now(),
        });
        Ok(())
    }

    fn end_snapshot(&mut self) {
        self.snapshot = None;
        if !self.conn.is_autocommit() {
            // A read transaction: ending it cannot fail in a way that leaves data behind.
            let _ = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut end| end.execute([]));
        }
    }
}

/// The store on SQLite: one writer connection and a pool of readers, in WAL mode (or
/// in memory).
pub struct SqliteBackend {
    writer: Arc<Mutex<Guarded>>,
    readers: Vec<Arc<Mutex<Guarded>>>,
    /// Where Binary content is kept as files (a database file only).
    content_directory: Option<PathBuf>,
    /// Set when readers are connections of their own (not the in-memory database's one).
    snapshots: Option<Arc<Snapshots>>,
    next_reader: AtomicUsize,
    statement_timeout: Duration,
    max_snapshot_age: Duration,
}

/// A monotonic origin for deadlines stored in atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch() -> u64 {
    epoch().elapsed().as_millis() as u64
}

fn storage_error(e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            rusqlite::ErrorCode::ConstraintViolation => {
                return Error::VersionConflict(format!("concurrent modification: {e}"))
            }
            rusqlite::ErrorCode::OperationInterrupted => {
                return Error::Unavailable(
                    "the database did not finish the request in time; try again later".into(),
                )
            }
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                return Error::Unavailable("the database is busy; try again later".into())
            }
            _ => {}
        }
    }
    Error::storage(e)
}

/// Installs the progress handler that interrupts statements running past the deadline.
fn guard(conn: Connection) -> Guarded {
    let deadline = Arc::new(AtomicU64::new(u64::MAX));
    let seen = deadline.clone();
    conn.progress_handler(
        10_000,
        Some(move || millis_since_epoch() > seen.load(Ordering::Relaxed)),
    );
    Guarded {
        conn,
        deadline,
        snapshot: None,
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(storage_error)?;
    conn.set_prepared_statement_cache_capacity(256);
    // Search values are compared byte-wise (strings are stored lower-cased for the
    // case-insensitive ones), which also lets SQLite use indexes for `LIKE 'prefix%'`.
    conn.execute_batch("PRAGMA case_sensitive_like = ON")
        .map_err(storage_error)?;
    // Pages read through a memory map cost no system call each. SQLite caps the map at its
    // compile-time limit (2 GiB); a million Tasks take about 3.5 GiB, so what lies beyond is
    // read through SQLite's page cache, 8 MiB per connection (grown only as pages are read).
    conn.execute_batch("PRAGMA mmap_size = 2147418112; PRAGMA cache_size = -8192")
        .map_err(storage_error)?;
    Ok(())
}

fn check_schema_version(conn: &Connection) -> Result<()> {
    let version: i64 = conn
        .query_row(super::sql::STORE_SCHEMA_QUERY, [], |r| r.get(0))
        .map_err(storage_error)?;
    super::sql::check_store_schema(version)
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let writer = Connection::open(path).map_err(storage_error)?;
        configure(&writer)?;
        // FULL makes every acknowledged commit durable, also in WAL mode.
        writer
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(storage_error)?;
        writer
            .execute_batch(&schema(Dialect::Sqlite))
            .map_err(storage_error)?;
        check_schema_version(&writer)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(storage_error)?;
            configure(&reader)?;
            readers.push(Arc::new(Mutex::new(guard(reader))));
        }
        let content_directory = super::content::directory_for(path);
        std::fs::create_dir_all(&content_directory).map_err(|e| {
            Error::storage_fault(format!(
                "cannot create the Binary content directory {}: {e}",
                content_directory.display()
            ))
        })?;
        Ok(SqliteBackend {
            writer: Arc::new(Mutex::new(guard(writer))),
            content_directory: Some(content_directory),
            snapshots: Some(Arc::new(Snapshots {
                commits: AtomicU64::new(0),
                readers: readers.clone(),
            })),
            readers,
            next_reader: AtomicUsize::new(0),
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            max_snapshot_age: DEFAULT_MAX_SNAPSHOT_AGE,
        })
    }

    /// How long one session (a read, or a write transaction) may run before its statement
    /// is interrupted; 10 s unless set.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// How long a reader may keep reading in one snapshot while this process commits nothing,
    /// that is, how late it may see what another process commits to the same file; 100 ms
    /// unless set. Commits of this backend are seen by every read that starts after them.
    pub fn max_snapshot_age(mut self, age: Duration) -> Self {
        self.max_snapshot_age = age;
        self
    }

    async fn session(&self, conn: &Arc<Mutex<Guarded>>) -> OwnedMutexGuard<Guarded> {
        let conn = conn.clone().lock_owned().await;
        let deadline = millis_since_epoch() + self.statement_timeout.as_millis() as u64;
        conn.deadline.store(deadline, Ordering::Relaxed);
        conn
    }

    /// A session on the next reader connection.
    async fn reader_session(&self, off_runtime: bool) -> Result<SqliteSession> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        // Counted before the reader is taken: a commit acknowledged before this read arrived
        // is in the count, so the snapshot read in holds it.
        let commits = self
            .snapshots
            .as_ref()
            .map(|s| s.commits.load(Ordering::SeqCst));
        let mut guarded = self.session(&self.readers[i]).await;
        if let Some(commits) = commits {
            guarded.current_snapshot(commits, self.max_snapshot_age)?;
        }
        Ok(SqliteSession {
            guarded: Some(guarded),
            open_transaction: false,
            off_runtime,
            snapshots: None,
        })
    }

    /// A private in-memory database (one connection serves reads and writes).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(storage_error)?;
        configure(&conn)?;
        conn.execute_batch(&schema(Dialect::Sqlite))
            .map_err(storage_error)?;
        check_schema_version(&conn)?;
        let writer = Arc::new(Mutex::new(guard(conn)));
        Ok(SqliteBackend {
            readers: vec![writer.clone()],
            content_directory: None,
            writer,
            snapshots: None,
            next_reader: AtomicUsize::new(0),
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            max_snapshot_age: DEFAULT_MAX_SNAPSHOT_AGE,
        })
    }
}

struct SqliteSession {
    /// The connection; away on the blocking pool while a read statement runs, and gone if
    /// that statement's caller stopped waiting (the pool thread then releases it).
    guarded: Option<OwnedMutexGuard<Guarded>>,
    open_transaction: bool,
    /// Whether statements that are not point lookups run on the blocking pool (reads) or
    /// where the session is (writes, which the writer thread opens).
    off_runtime: bool,
    /// For the writer's session: whom to tell of its commit.
    snapshots: Option<Arc<Snapshots>>,
}

impl SqliteSession {
    /// Runs `statement` on this session's connection: on the blocking pool for reads.
    async fn run<T: Send + 'static>(
        &mut self,
        sql: &Sql,
        statement: fn(&Connection, &Sql) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let guarded = self.guarded.take().ok_or_else(|| {
            Error::storage_fault("SQLite session used after it lost its connection")
        })?;
        if !self.off_runtime || sql.is_point_lookup() {
            let result = statement(&guarded.conn, sql);
            self.guarded = Some(guarded);
            return result.map_err(storage_error);
        }
        let sql = sql.clone();
        let (guarded, result) = tokio::task::spawn_blocking(move || {
            let result = statement(&guarded.conn, &sql);
            (guarded, result)
        })
        .await
        .map_err(|e| Error::storage_fault(format!("SQLite read task failed: {e}")))?;
        self.guarded = Some(guarded);
        result.map_err(storage_error)
    }
}

impl Drop for SqliteSession {
    fn drop(&mut self) {
        let Some(guarded) = &self.guarded else {
            return;
        };
        // The rollback must not be interrupted by a deadline that has passed.
        guarded.deadline.store(u64::MAX, Ordering::Relaxed);
        if self.open_transaction {
            // Not committed: nothing of it may persist.
            let _ = guarded.conn.execute_batch("ROLLBACK");
        }
    }
}

fn query_resources(conn: &Connection, sql: &Sql) -> rusqlite::Result<Vec<StoredResource>> {
    let mut stmt = conn.prepare_cached(&sql.text)?;
    let rows = stmt.query_map(params(sql), |row| {
        Ok(StoredResource {
            resource_type: row.get(0)?,
            id: row.get(1)?,
            version: row.get(2)?,
            last_updated: row.get(3)?,
            deleted: row.get::<_, i64>(4)? != 0,
            // Straight from SQLite's buffer into the shared body: one copy, not two.
            body: row.get_ref(5)?.as_str_or_null()?.map(Arc::from),
        })
    })?;
    rows.collect()
}

fn query_strings(conn: &Connection, sql: &Sql) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(&sql.text)?;
    let rows = stmt.query_map(params(sql), |row| row.get(0))?;
    rows.collect()
}

fn query_blobs(conn: &Connection, sql: &Sql) -> rusqlite::Result<Vec<bytes::Bytes>> {
    let mut stmt = conn.prepare_cached(&sql.text)?;
    let rows = stmt.query_map(params(sql), |row| {
        Ok(bytes::Bytes::copy_from_slice(row.get_ref(0)?.as_blob()?))
    })?;
    rows.collect()
}

fn query_count(conn: &Connection, sql: &Sql) -> rusqlite::Result<i64> {
    conn.prepare_cached(&sql.text)?
        .query_row(params(sql), |row| row.get(0))
}

fn execute_statement(conn: &Connection, sql: &Sql) -> rusqlite::Result<u64> {
    conn.prepare_cached(&sql.text)?
        .execute(params(sql))
        .map(|n| n as u64)
}

/// A parameter bound by reference: no copy of its text per execution.
struct Bound<'a>(&'a SqlValue);

impl rusqlite::ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self.0 {
            SqlValue::Text(Some(s)) => ValueRef::Text(s.as_bytes()),
            SqlValue::Int(Some(i)) => ValueRef::Integer(*i),
            SqlValue::Bytes(b) => ValueRef::Blob(b),
            SqlValue::Text(None) | SqlValue::Int(None) => ValueRef::Null,
        }))
    }
}

fn params(sql: &Sql) -> impl rusqlite::Params + '_ {
    params_from_iter(sql.params.iter().map(Bound))
}

#[async_trait]
impl Session for SqliteSession {
    async fn resources(&mut self, sql: &Sql) -> Result<Vec<StoredResource>> {
        self.run(sql, query_resources).await
    }

    async fn strings(&mut self, sql: &Sql) -> Result<Vec<String>> {
        self.run(sql, query_strings).await
    }

    async fn count(&mut self, sql: &Sql) -> Result<i64> {
        self.run(sql, query_count).await
    }

    async fn blobs(&mut self, sql: &Sql) -> Result<Vec<bytes::Bytes>> {
        self.run(sql, query_blobs).await
    }

    async fn execute(&mut self, sql: &Sql) -> Result<u64> {
        self.run(sql, execute_statement).await
    }

    async fn lock(&mut self, _key: &str) -> Result<()> {
        // The single writer connection already serialises all writes.
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.open_transaction = false;
        let guarded = self
            .guarded
            .as_ref()
            .ok_or_else(|| Error::storage_fault("SQLite session lost its connection"))?;
        guarded
            .conn
            .execute_batch("COMMIT")
            .map_err(storage_error)?;
        if let Some(snapshots) = &self.snapshots {
            snapshots.committed();
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn single_writer(&self) -> bool {
        true
    }

    async fn read(&self) -> Result<Box<dyn Session>> {
        Ok(Box::new(self.reader_session(true).await?))
    }

    fn blocks(&self) -> bool {
        true
    }

    async fn read_in_place(&self) -> Result<Box<dyn Session>> {
        Ok(Box::new(self.reader_session(false).await?))
    }

    fn content_directory(&self) -> Option<&Path> {
        self.content_directory.as_deref()
    }

    fn pool_status(&self) -> Option<super::PoolStatus> {
        let mut connections: Vec<&Arc<Mutex<Guarded>>> = vec![&self.writer];
        for reader in &self.readers {
            if !connections.iter().any(|c| Arc::ptr_eq(c, reader)) {
                connections.push(reader);
            }
        }
        let in_use = connections.iter().filter(|c| c.try_lock().is_err()).count();
        Some(super::PoolStatus::new(
            connections.len(),
            in_use,
            connections.len() - in_use,
        ))
    }

    async fn write(&self) -> Result<Box<dyn Session>> {
        let guarded = self.session(&self.writer).await;
        guarded
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(storage_error)?;
        Ok(Box::new(SqliteSession {
            guarded: Some(guarded),
            open_transaction: true,
            off_runtime: false,
            snapshots: self.snapshots.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::ReadGrants;
    use crate::store::sql;
    use rusqlite::StatementStatus;

    #[test]
    fn a_database_a_newer_server_moved_further_is_refused() {
        let dir = std::env::temp_dir().join(format!("dsf-schema-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("fhir.sqlite");
        drop(SqliteBackend::open(&path).expect("creates version 1"));
        drop(SqliteBackend::open(&path).expect("opens its own version again"));
        let conn = Connection::open(&path).expect("open");
        let version: i64 = conn
            .query_row("SELECT MAX(version) FROM store_schema", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, sql::STORE_SCHEMA_VERSION);
        conn.execute("INSERT INTO store_schema (version) VALUES (99)", [])
            .expect("a newer version");
        drop(conn);
        let Err(error) = SqliteBackend::open(&path) else {
            panic!("a newer schema is refused");
        };
        assert!(error.to_string().contains("schema version 99"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Stores `versions` versions of `Task/id` the way the writer does, each readable by all.
    fn store_versions(conn: &Connection, id: &str, versions: i64) {
        for version in 1..=versions {
            if version > 1 {
                execute_statement(
                    conn,
                    &sql::retire_version(Dialect::Sqlite, "Task", id, version - 1),
                )
                .unwrap();
            }
            let body = format!(r#"{{"resourceType":"Task","id":"{id}"}}"#);
            execute_statement(
                conn,
                &sql::insert_version(Dialect::Sqlite, "Task", id, version, 0, Some(body)),
            )
            .unwrap();
            let all = [crate::access::grant::ALL.to_owned()];
            execute_statement(
                conn,
                &sql::insert_grants(Dialect::Sqlite, "Task", id, version, &all),
            )
            .unwrap();
        }
    }

    /// Runs `statement` to its end and says how many virtual machine steps SQLite took.
    fn steps(conn: &Connection, statement: &Sql) -> i32 {
        let mut stmt = conn.prepare(&statement.text).unwrap();
        let mut rows = stmt.query(params(statement)).unwrap();
        while rows.next().unwrap().is_some() {}
        drop(rows);
        stmt.get_status(StatementStatus::VmStep)
    }

    /// Finding the current version of a resource (a read by id, with or without its access
    /// check, and the lock-and-read before an update) and retiring the replaced version cost
    /// the same for a resource with 200 versions as for one with a single version.
    #[test]
    fn current_version_costs_the_same_however_many_versions() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&schema(Dialect::Sqlite)).unwrap();
        store_versions(&conn, "one", 1);
        store_versions(&conn, "many", 200);
        let grants = ReadGrants::new(vec![crate::access::grant::ALL.to_owned()]);
        for visible_to in [None, Some(&grants)] {
            let one = steps(
                &conn,
                &sql::current_row(Dialect::Sqlite, "Task", "one", visible_to),
            );
            let many = steps(
                &conn,
                &sql::current_row(Dialect::Sqlite, "Task", "many", visible_to),
            );
            assert!(
                many <= one + 10,
                "reading the current version took {many} steps with 200 versions, {one} with one"
            );
            let current = query_resources(
                &conn,
                &sql::current_row(Dialect::Sqlite, "Task", "many", visible_to),
            )
            .unwrap();
            assert_eq!(current.len(), 1);
            assert_eq!(current[0].version, 200);
        }
        let retire_one = steps(
            &conn,
            &sql::retire_version(Dialect::Sqlite, "Task", "one", 1),
        );
        let retire_many = steps(
            &conn,
            &sql::retire_version(Dialect::Sqlite, "Task", "many", 200),
        );
        assert!(
            retire_many <= retire_one + 10,
            "retiring a version took {retire_many} steps with 200 versions, {retire_one} with one"
        );
    }
}
