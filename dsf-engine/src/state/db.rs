//! The seam between the state store and its database: statements written once, with `$n`
//! parameters and two dialect markers, run by a SQLite or a PostgreSQL backend.
//!
//! The markers: `{now}` is the database's clock in Unix milliseconds (leases compare times
//! taken on one clock, whichever host a BPE runs on), `{lock}` locks the rows a `SELECT`
//! reads until the transaction ends (PostgreSQL's `FOR UPDATE`; SQLite has one writer).

use crate::Result;
use async_trait::async_trait;

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl Value {
    pub(crate) fn text(self) -> Option<String> {
        match self {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }

    pub(crate) fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Text(text)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Int(i64::from(b))
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// One statement of a transaction.
pub(crate) struct Statement {
    pub sql: &'static str,
    pub params: Vec<Value>,
    /// Whether the transaction is void unless this statement finds or changes a row: the
    /// fence that keeps a BPE whose lease was taken over from writing.
    pub required: bool,
}

impl Statement {
    pub(crate) fn new(sql: &'static str, params: Vec<Value>) -> Self {
        Statement {
            sql,
            params,
            required: false,
        }
    }

    pub(crate) fn required(sql: &'static str, params: Vec<Value>) -> Self {
        Statement {
            sql,
            params,
            required: true,
        }
    }
}

/// A versioned schema step, applied once, in order, in a transaction of its own.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// A database the state store runs on.
#[async_trait]
pub(crate) trait StateDb: Send + Sync {
    /// The rows a query answers.
    async fn query(&self, sql: &'static str, params: Vec<Value>) -> Result<Vec<Vec<Value>>>;
    /// Runs a statement; the number of rows it changed.
    async fn execute(&self, sql: &'static str, params: Vec<Value>) -> Result<u64>;
    /// Runs `statements` in one transaction. When a required one finds or changes no row,
    /// everything is rolled back and the answer is [`crate::Error::Fenced`].
    async fn transaction(&self, statements: Vec<Statement>) -> Result<()>;
    /// Brings the schema to the last of `migrations`, one step at a time, with only one
    /// process migrating at once; refuses a database a newer BPE migrated further.
    async fn migrate(&self, migrations: &'static [Migration]) -> Result<()>;
    /// Whether this database serves one BPE only (a SQLite file), so that at start no other
    /// BPE can still be working on what it holds.
    fn exclusive(&self) -> bool;
}

/// The schema versions of a database and the known migrations: the ones still to apply,
/// or why the database cannot be used.
pub(crate) fn pending(
    applied: i64,
    migrations: &'static [Migration],
) -> Result<&'static [Migration]> {
    let latest = migrations.last().map_or(0, |m| m.version);
    if applied > latest {
        return Err(crate::Error::State(format!(
            "the state database is at schema version {applied}, written by a newer BPE; this BPE knows versions up to {latest}"
        )));
    }
    let done = migrations
        .iter()
        .take_while(|m| m.version <= applied)
        .count();
    Ok(&migrations[done..])
}

/// The statement that records a migration as applied.
pub(crate) const RECORD_MIGRATION: &str =
    "INSERT INTO schema_migrations(version, name, applied) VALUES ($1, $2, {now})";

/// The table of applied migrations.
pub(crate) const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations(
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied BIGINT NOT NULL)";

/// Why a fenced transaction was refused, from the statement that found nothing.
pub(crate) fn fence_reason(sql: &str) -> String {
    if sql.contains("key_leases") {
        "another BPE took over this business key's lease".into()
    } else if sql.contains("claimed") {
        "another BPE took over this Task's claim".into()
    } else {
        "a required row was not found".into()
    }
}
