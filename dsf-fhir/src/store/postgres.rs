//! The PostgreSQL backend (tokio-postgres): the choice for production, where replicas,
//! backups and failover come from PostgreSQL. Connections are pooled; each caches its
//! prepared statements.

use super::sql::{schema, Dialect, Sql, SqlValue};
use super::{Backend, Session, StoredResource};
use crate::{Error, Result};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

const STATEMENT_CACHE: usize = 512;

struct Connection {
    client: Client,
    statements: HashMap<String, Statement>,
}

struct Pool {
    url: String,
    schema: Option<String>,
    idle: std::sync::Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

pub struct PostgresBackend {
    pool: Arc<Pool>,
}

fn storage_error(e: tokio_postgres::Error) -> Error {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return Error::VersionConflict(format!("concurrent modification: {e}"));
    }
    Error::Storage(e.to_string())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Pool {
    async fn connect(&self) -> Result<Connection> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .map_err(storage_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection closed");
            }
        });
        if let Some(schema) = &self.schema {
            client
                .batch_execute(&format!("SET search_path TO {}", quote_ident(schema)))
                .await
                .map_err(storage_error)?;
        }
        Ok(Connection {
            client,
            statements: HashMap::new(),
        })
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
        let pool = Arc::new(Pool {
            url: url.to_owned(),
            schema: schema_name.map(str::to_owned),
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
        });
        let conn = pool.connect().await?;
        if let Some(schema) = schema_name {
            conn.client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    quote_ident(schema)
                ))
                .await
                .map_err(storage_error)?;
        }
        conn.client
            .batch_execute(&schema(Dialect::Postgres))
            .await
            .map_err(storage_error)?;
        pool.give_back(conn);
        Ok(PostgresBackend { pool })
    }

    async fn session(&self, transaction: bool) -> Result<Box<dyn Session>> {
        let permit = self
            .pool
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
        let conn = match self.pool.checkout() {
            Some(conn) => conn,
            None => self.pool.connect().await?,
        };
        if transaction {
            conn.client
                .batch_execute("BEGIN")
                .await
                .map_err(storage_error)?;
        }
        Ok(Box::new(PgSession {
            conn: Some(conn),
            pool: self.pool.clone(),
            _permit: permit,
            open_transaction: transaction,
        }))
    }
}

struct PgSession {
    conn: Option<Connection>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
    open_transaction: bool,
}

impl Drop for PgSession {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
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

impl PgSession {
    fn conn(&mut self) -> Result<&mut Connection> {
        self.conn
            .as_mut()
            .ok_or_else(|| Error::Storage("session already finished".into()))
    }

    async fn statement(&mut self, text: &str) -> Result<Statement> {
        let conn = self.conn()?;
        if let Some(stmt) = conn.statements.get(text) {
            return Ok(stmt.clone());
        }
        let stmt = conn.client.prepare(text).await.map_err(storage_error)?;
        if conn.statements.len() >= STATEMENT_CACHE {
            conn.statements.clear();
        }
        conn.statements.insert(text.to_owned(), stmt.clone());
        Ok(stmt)
    }

    async fn rows(&mut self, sql: &Sql) -> Result<Vec<tokio_postgres::Row>> {
        let stmt = self.statement(&sql.text).await?;
        let params: Vec<&(dyn ToSql + Sync)> = sql.params.iter().map(as_sql).collect();
        self.conn()?
            .client
            .query(&stmt, &params)
            .await
            .map_err(storage_error)
    }
}

fn as_sql(v: &SqlValue) -> &(dyn ToSql + Sync) {
    match v {
        SqlValue::Text(s) => s,
        SqlValue::Int(i) => i,
    }
}

#[async_trait]
impl Session for PgSession {
    async fn resources(&mut self, sql: &Sql) -> Result<Vec<StoredResource>> {
        self.rows(sql)
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
                        .try_get::<_, Option<String>>(5)
                        .map_err(storage_error)?
                        .map(Arc::from),
                })
            })
            .collect()
    }

    async fn strings(&mut self, sql: &Sql) -> Result<Vec<String>> {
        self.rows(sql)
            .await?
            .iter()
            .map(|row| row.try_get(0).map_err(storage_error))
            .collect()
    }

    async fn count(&mut self, sql: &Sql) -> Result<i64> {
        let rows = self.rows(sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Storage("count returned no row".into()))?;
        row.try_get(0).map_err(storage_error)
    }

    async fn execute(&mut self, sql: &Sql) -> Result<u64> {
        let stmt = self.statement(&sql.text).await?;
        let params: Vec<&(dyn ToSql + Sync)> = sql.params.iter().map(as_sql).collect();
        self.conn()?
            .client
            .execute(&stmt, &params)
            .await
            .map_err(storage_error)
    }

    async fn lock(&mut self, key: &str) -> Result<()> {
        let stmt = self
            .statement(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':' || $1)::bigint)",
            )
            .await?;
        self.conn()?
            .client
            .execute(&stmt, &[&key])
            .await
            .map_err(storage_error)?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.conn()?
            .client
            .batch_execute("COMMIT")
            .await
            .map_err(storage_error)?;
        self.open_transaction = false;
        Ok(())
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn read(&self) -> Result<Box<dyn Session>> {
        self.session(false).await
    }

    async fn write(&self) -> Result<Box<dyn Session>> {
        self.session(true).await
    }
}
