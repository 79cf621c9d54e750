//! The state on SQLite: one connection on the blocking pool, so writes never contend, and a
//! file held exclusively, so that a second BPE started on the same file is refused instead
//! of sharing it unfenced.

use super::db::{self, Migration, StateDb, Statement, Value};
use crate::{Error, Result};
use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, ToSql};
use std::path::Path;
use std::sync::{Arc, Mutex};

const NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

pub(crate) struct SqliteDb {
    connection: Arc<Mutex<Connection>>,
}

impl SqliteDb {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        Self::init(Connection::open(path)?, true).map_err(|error| match error {
            Error::Database(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Error::State(format!(
                    "the state file {} is held by another BPE: a SQLite state file serves one BPE (several BPEs share a PostgreSQL state database)",
                    path.display()
                ))
            }
            other => other,
        })
    }

    pub(crate) fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?, false)
    }

    fn init(connection: Connection, exclusive: bool) -> Result<Self> {
        connection.execute_batch(
            // The busy time-out first: a BPE restarted in the same process waits for the
            // previous one's connection to close.
            "PRAGMA busy_timeout=5000;
             PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;",
        )?;
        if exclusive {
            // Held from the first write on (the migrations below) until the file is closed.
            connection.execute_batch("PRAGMA locking_mode=EXCLUSIVE;")?;
        }
        Ok(SqliteDb {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut connection)
        })
        .await?
    }
}

/// `$n` parameters as SQLite's `?n`, and the dialect markers filled.
fn dialect(sql: &str) -> String {
    sql.replace("{now}", NOW)
        .replace("{lock}", "")
        .replace('$', "?")
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        })
    }
}

fn read_row(row: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Vec<Value>> {
    (0..columns)
        .map(|i| {
            Ok(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => Value::Int(n),
                ValueRef::Real(x) => Value::Int(x as i64),
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    Value::Text(String::from_utf8_lossy(t).into_owned())
                }
            })
        })
        .collect()
}

fn run(connection: &Connection, sql: &str, params: &[Value]) -> Result<(u64, Vec<Vec<Value>>)> {
    let mut statement = connection.prepare_cached(&dialect(sql))?;
    let columns = statement.column_count();
    if columns == 0 {
        let changed = statement.execute(params_from_iter(params.iter()))?;
        return Ok((changed as u64, Vec::new()));
    }
    let rows = statement
        .query_map(params_from_iter(params.iter()), |r| read_row(r, columns))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((rows.len() as u64, rows))
}

#[async_trait]
impl StateDb for SqliteDb {
    async fn query(&self, sql: &'static str, params: Vec<Value>) -> Result<Vec<Vec<Value>>> {
        self.with(move |c| run(c, sql, &params).map(|(_, rows)| rows))
            .await
    }

    async fn execute(&self, sql: &'static str, params: Vec<Value>) -> Result<u64> {
        self.with(move |c| run(c, sql, &params).map(|(changed, _)| changed))
            .await
    }

    async fn transaction(&self, statements: Vec<Statement>) -> Result<()> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for statement in &statements {
                let (found, _) = run(&tx, statement.sql, &statement.params)?;
                if statement.required && found == 0 {
                    // Dropping the transaction rolls it back.
                    return Err(Error::Fenced(db::fence_reason(statement.sql)));
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn migrate(&self, migrations: &'static [Migration]) -> Result<()> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(db::MIGRATIONS_TABLE)?;
            let applied: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )?;
            for migration in db::pending(applied, migrations)? {
                tx.execute_batch(migration.sql)?;
                run(
                    &tx,
                    db::RECORD_MIGRATION,
                    &[Value::Int(migration.version), migration.name.into()],
                )?;
                tracing::info!(
                    version = migration.version,
                    name = migration.name,
                    "BPE state database migrated"
                );
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    fn exclusive(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_markers_become_sqlite() {
        assert_eq!(
            dialect("SELECT 1 FROM t WHERE a = $1 AND b < {now}{lock}"),
            format!("SELECT 1 FROM t WHERE a = ?1 AND b < {NOW}")
        );
    }

    #[tokio::test]
    async fn a_second_bpe_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.sqlite");
        let first = SqliteDb::open(&path).expect("open");
        first
            .migrate(super::super::migrations::MIGRATIONS)
            .await
            .expect("migrate");
        let Err(refused) = SqliteDb::open(&path) else {
            panic!("the first BPE holds the file");
        };
        assert!(
            refused.to_string().contains("held by another BPE"),
            "{refused}"
        );
    }
}
