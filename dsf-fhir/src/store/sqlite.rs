//! The embedded default backend: SQLite (bundled) in WAL mode, one writer connection and a few
//! reader connections, so reads never wait for a write to commit.

use super::sql::{schema, Dialect, Sql, SqlValue};
use super::{Backend, Session, StoredResource};
use crate::{Error, Result};
use async_trait::async_trait;
use rusqlite::{params_from_iter, Connection, OpenFlags};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

const READERS: usize = 4;

pub struct SqliteBackend {
    writer: Arc<Mutex<Connection>>,
    readers: Vec<Arc<Mutex<Connection>>>,
    next_reader: AtomicUsize,
}

fn storage_error(e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            return Error::VersionConflict(format!("concurrent modification: {e}"));
        }
    }
    Error::Storage(e.to_string())
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(storage_error)?;
    conn.set_prepared_statement_cache_capacity(256);
    // Search values are compared byte-wise (strings are stored lower-cased for the
    // case-insensitive ones), which also lets SQLite use indexes for `LIKE 'prefix%'`.
    conn.execute_batch("PRAGMA case_sensitive_like = ON")
        .map_err(storage_error)?;
    // Pages read through a memory map cost no system call each.
    conn.execute_batch("PRAGMA mmap_size = 268435456")
        .map_err(storage_error)?;
    Ok(())
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
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(storage_error)?;
            configure(&reader)?;
            readers.push(Arc::new(Mutex::new(reader)));
        }
        Ok(SqliteBackend {
            writer: Arc::new(Mutex::new(writer)),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// A private in-memory database (one connection serves reads and writes).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(storage_error)?;
        configure(&conn)?;
        conn.execute_batch(&schema(Dialect::Sqlite))
            .map_err(storage_error)?;
        let writer = Arc::new(Mutex::new(conn));
        Ok(SqliteBackend {
            readers: vec![writer.clone()],
            writer,
            next_reader: AtomicUsize::new(0),
        })
    }
}

struct SqliteSession {
    conn: OwnedMutexGuard<Connection>,
    open_transaction: bool,
}

impl Drop for SqliteSession {
    fn drop(&mut self) {
        if self.open_transaction {
            // Not committed: nothing of it may persist.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

fn to_sqlite(v: &SqlValue) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        SqlValue::Text(Some(s)) => V::Text(s.clone()),
        SqlValue::Int(Some(i)) => V::Integer(*i),
        SqlValue::Text(None) | SqlValue::Int(None) => V::Null,
    }
}

fn params(sql: &Sql) -> impl rusqlite::Params + '_ {
    params_from_iter(sql.params.iter().map(to_sqlite))
}

#[async_trait]
impl Session for SqliteSession {
    async fn resources(&mut self, sql: &Sql) -> Result<Vec<StoredResource>> {
        let mut stmt = self.conn.prepare_cached(&sql.text).map_err(storage_error)?;
        let rows = stmt
            .query_map(params(sql), |row| {
                Ok(StoredResource {
                    resource_type: row.get(0)?,
                    id: row.get(1)?,
                    version: row.get(2)?,
                    last_updated: row.get(3)?,
                    deleted: row.get::<_, i64>(4)? != 0,
                    body: row.get::<_, Option<String>>(5)?.map(Arc::from),
                })
            })
            .map_err(storage_error)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(storage_error)
    }

    async fn strings(&mut self, sql: &Sql) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(&sql.text).map_err(storage_error)?;
        let rows = stmt
            .query_map(params(sql), |row| row.get(0))
            .map_err(storage_error)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(storage_error)
    }

    async fn count(&mut self, sql: &Sql) -> Result<i64> {
        let mut stmt = self.conn.prepare_cached(&sql.text).map_err(storage_error)?;
        stmt.query_row(params(sql), |row| row.get(0))
            .map_err(storage_error)
    }

    async fn execute(&mut self, sql: &Sql) -> Result<u64> {
        let mut stmt = self.conn.prepare_cached(&sql.text).map_err(storage_error)?;
        stmt.execute(params(sql))
            .map(|n| n as u64)
            .map_err(storage_error)
    }

    async fn lock(&mut self, _key: &str) -> Result<()> {
        // The single writer connection already serialises all writes.
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.open_transaction = false;
        self.conn.execute_batch("COMMIT").map_err(storage_error)
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
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let conn = self.readers[i].clone().lock_owned().await;
        Ok(Box::new(SqliteSession {
            conn,
            open_transaction: false,
        }))
    }

    async fn write(&self) -> Result<Box<dyn Session>> {
        let conn = self.writer.clone().lock_owned().await;
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(storage_error)?;
        Ok(Box::new(SqliteSession {
            conn,
            open_transaction: true,
        }))
    }
}
