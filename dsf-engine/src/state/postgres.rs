//! The state on PostgreSQL: a small connection pool (deadpool), several BPEs on one database.
//! Every statement is bounded (`statement_timeout`), and so are connecting and waiting for a
//! pooled connection; migrations take an advisory lock so that BPEs starting together
//! migrate once.

use super::db::{self, Migration, StateDb, Statement, Value};
use crate::{Error, Result};
use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::NoTls;

const NOW: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// The advisory lock migrating BPEs share (an arbitrary constant: "dsf-bpe" in ASCII).
const MIGRATION_LOCK: i64 = 0x0064_7366_2d62_7065;

/// Connections one BPE keeps: its work runs at most `DEV_DSF_BPE_PROCESS_THREADS` at once,
/// and each step holds a connection only for one statement or one short transaction.
const POOL_SIZE: usize = 8;
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct PostgresDb {
    pool: Pool,
}

fn dialect(sql: &str) -> String {
    sql.replace("{now}", NOW).replace("{lock}", " FOR UPDATE")
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PostgresDb {
    /// Connects with a libpq-style URL; with `schema`, the tables live in that schema
    /// (created if missing).
    pub(crate) async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("BPE state database URL: {e}")))?;
        let mut options = format!("-c statement_timeout={}", STATEMENT_TIMEOUT.as_millis());
        if let Some(schema) = schema {
            options.push_str(&format!(" -c search_path={schema}"));
        }
        config.options(&options);
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("dsf-bpe");
        if let Some(schema) = schema {
            let (client, connection) = config.connect(NoTls).await?;
            let driver = tokio::spawn(connection);
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    quote_ident(schema)
                ))
                .await?;
            drop(client);
            let _ = driver.await;
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(STATEMENT_TIMEOUT))
            .build()
            .map_err(|e| Error::Config(format!("BPE state database pool: {e}")))?;
        let db = PostgresDb { pool };
        // Fail at start, not at the first Task, when the database is out of reach.
        drop(db.client().await?);
        Ok(db)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::Unavailable(dsf_core::ErrorChain(&e).to_string()))
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => n.to_sql(ty, out),
            Value::Text(text) => text.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <String as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            _ => Value::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as FromSql>::accepts(ty)
            || <i32 as FromSql>::accepts(ty)
            || <String as FromSql>::accepts(ty)
    }
}

fn parameters(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Runs one statement: the rows it answers (a query) or the number it changed, as the
/// number of rows found either way.
async fn run(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[Value],
) -> Result<(u64, Vec<Vec<Value>>)> {
    let statement = client.prepare_cached(&dialect(sql)).await?;
    if statement.columns().is_empty() {
        let changed = client.execute(&statement, &parameters(params)).await?;
        return Ok((changed, Vec::new()));
    }
    let rows = client.query(&statement, &parameters(params)).await?;
    let rows = rows
        .iter()
        .map(|row| (0..row.len()).map(|i| row.try_get(i)).collect())
        .collect::<std::result::Result<Vec<Vec<Value>>, _>>()?;
    Ok((rows.len() as u64, rows))
}

#[async_trait]
impl StateDb for PostgresDb {
    async fn query(&self, sql: &'static str, params: Vec<Value>) -> Result<Vec<Vec<Value>>> {
        let client = self.client().await?;
        run(&client, sql, &params).await.map(|(_, rows)| rows)
    }

    async fn execute(&self, sql: &'static str, params: Vec<Value>) -> Result<u64> {
        let client = self.client().await?;
        run(&client, sql, &params).await.map(|(changed, _)| changed)
    }

    async fn transaction(&self, statements: Vec<Statement>) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for statement in &statements {
            let (found, _) = run(&tx, statement.sql, &statement.params).await?;
            if statement.required && found == 0 {
                tx.rollback().await?;
                return Err(Error::Fenced(db::fence_reason(statement.sql)));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn migrate(&self, migrations: &'static [Migration]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(db::MIGRATIONS_TABLE).await?;
        let applied: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await?
            .try_get(0)?;
        for migration in db::pending(applied, migrations)? {
            tx.batch_execute(migration.sql).await?;
            run(
                &tx,
                db::RECORD_MIGRATION,
                &[Value::Int(migration.version), migration.name.into()],
            )
            .await?;
            tracing::info!(
                version = migration.version,
                name = migration.name,
                "BPE state database migrated"
            );
        }
        tx.commit().await?;
        Ok(())
    }

    fn exclusive(&self) -> bool {
        false
    }
}
