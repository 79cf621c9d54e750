//! The database baselines the REST figures are divided by, measured in the same run on the
//! same database as the server: raw inserts, the rows a store needs for one Task, and point
//! selects. They write tables of their own, never the store's: on SQLite a table beside the
//! store's in its file, on PostgreSQL a schema of their own that [`PostgresBaseline::remove`]
//! drops.

use crate::measure::{closed_loop, summarise, Measurement};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Inserts of `rows` (JSON bodies), one committed transaction each, with the store's pragmas,
/// into a table of their own in the store's SQLite file: the ceiling for any create on that
/// database.
pub fn raw_sqlite_inserts(
    db: &Path,
    rows: &[String],
    duration: Duration,
) -> Result<Measurement, rusqlite::Error> {
    let conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS raw_baseline (id TEXT PRIMARY KEY, body TEXT NOT NULL);",
    )?;
    let mut insert = conn.prepare("INSERT INTO raw_baseline (id, body) VALUES (?1, ?2)")?;
    let mut latencies = Vec::new();
    let start = Instant::now();
    for row in rows.iter().cycle() {
        if start.elapsed() >= duration {
            break;
        }
        let t = Instant::now();
        conn.execute_batch("BEGIN")?;
        insert.execute(rusqlite::params![uuid::Uuid::new_v4().to_string(), row])?;
        conn.execute_batch("COMMIT")?;
        latencies.push(t.elapsed());
    }
    Ok(summarise(
        "raw SQLite insert (baseline)",
        latencies,
        start.elapsed(),
    ))
}

/// The rows a store of FHIR resources needs for one Task to be read by id, searched and
/// filtered by read access: the resource row, its search index rows and its grants, computed
/// with dsf-fhir's public [`dsf_fhir::search::index_rows`] and [`dsf_fhir::access::grants_of`].
struct TaskRows {
    body: String,
    index: Vec<dsf_fhir::search::IndexRow>,
    grants: Vec<String>,
}

/// The bench's own tables, with the keys and indexes that searches by type, id, parameter
/// value and grant need; not the store's layout, which is its own business.
const TABLES: &str = r#"
    CREATE TABLE raw_rows (id TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE documents (
        seq BIGSERIAL PRIMARY KEY,
        doc_type TEXT NOT NULL,
        doc_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        updated BIGINT NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (doc_type, doc_id, version)
    );
    CREATE INDEX ON documents (doc_type, updated);
    CREATE TABLE document_index (
        doc_type TEXT NOT NULL,
        doc_id TEXT NOT NULL,
        param TEXT NOT NULL,
        system TEXT,
        value TEXT COLLATE "C",
        norm TEXT COLLATE "C",
        low BIGINT,
        high BIGINT
    );
    CREATE INDEX ON document_index (doc_type, param, value) WHERE value IS NOT NULL;
    CREATE INDEX ON document_index (doc_type, param, norm) WHERE norm IS NOT NULL;
    CREATE INDEX ON document_index (doc_type, param, low) WHERE low IS NOT NULL;
    CREATE INDEX ON document_index (doc_type, doc_id);
    CREATE TABLE document_grants (
        seq BIGINT NOT NULL,
        doc_type TEXT NOT NULL,
        access_grant TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (seq, access_grant)
    );
    CREATE INDEX ON document_grants (doc_type, access_grant, seq);
"#;

/// The PostgreSQL baselines, in a schema of their own in the server's database.
pub struct PostgresBaseline {
    url: String,
    schema: String,
}

impl PostgresBaseline {
    /// Creates the baseline's schema and tables.
    pub async fn create(url: &str) -> Result<PostgresBaseline, BoxError> {
        let schema = format!("dsf_bench_baseline_{}", uuid::Uuid::new_v4().simple());
        let client = connect(url, None).await?;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\"; {TABLES}"
            ))
            .await?;
        Ok(PostgresBaseline {
            url: url.to_owned(),
            schema,
        })
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(&self.url, Some(&self.schema)).await
    }

    /// `count` connections, each with `statements` prepared.
    async fn connections(
        &self,
        count: usize,
        statements: &[&str],
    ) -> Result<Vec<(tokio_postgres::Client, Vec<tokio_postgres::Statement>)>, BoxError> {
        let mut connections = Vec::new();
        for _ in 0..count {
            let client = self.connect().await?;
            let mut prepared = Vec::new();
            for statement in statements {
                prepared.push(client.prepare(statement).await?);
            }
            connections.push((client, prepared));
        }
        Ok(connections)
    }

    /// Inserts of `rows` (JSON bodies) into a two-column table, with as many connections as
    /// the load has clients.
    pub async fn raw_inserts(
        &self,
        rows: Arc<Vec<String>>,
        concurrency: usize,
        duration: Duration,
    ) -> Result<Measurement, BoxError> {
        let connections = Arc::new(
            self.connections(
                concurrency,
                &["INSERT INTO raw_rows (id, body) VALUES ($1, $2)"],
            )
            .await?,
        );
        let next = Arc::new(AtomicUsize::new(0));
        Ok(closed_loop(
            "raw PostgreSQL insert (baseline)",
            concurrency,
            duration,
            move |i| {
                let (connections, rows) = (connections.clone(), rows.clone());
                let slot = next.fetch_add(1, Ordering::Relaxed) % connections.len();
                async move {
                    let (client, statements) = &connections[slot];
                    let id = uuid::Uuid::new_v4().to_string();
                    client
                        .execute(&statements[0], &[&id, &rows[i % rows.len()]])
                        .await
                        .is_ok()
                }
            },
        )
        .await)
    }

    /// The ceiling for a create on PostgreSQL: the rows one Task like `sample` needs (resource,
    /// index and grant rows), in one transaction per resource sent as one pipeline (one round
    /// trip), from as many connections as the load has clients.
    pub async fn same_rows_inserts(
        &self,
        sample: &Value,
        base_url: &str,
        concurrency: usize,
        duration: Duration,
    ) -> Result<Measurement, BoxError> {
        let rows = Arc::new(TaskRows {
            body: serde_json::to_string(sample)?,
            index: dsf_fhir::search::index_rows("Task", sample, base_url),
            grants: dsf_fhir::access::grants_of("Task", sample, base_url),
        });
        // $1 the id, then six per index row.
        let values: Vec<String> = (0..rows.index.len())
            .map(|i| {
                let n = 2 + i * 6;
                let params: Vec<String> = (n..n + 6).map(|p| format!("${p}")).collect();
                format!("('Task', $1, {})", params.join(", "))
            })
            .collect();
        let mut statements = vec![
            "INSERT INTO documents (doc_type, doc_id, version, updated, body) VALUES ('Task', $1, 1, $2, $3)".to_owned(),
            "INSERT INTO document_grants (seq, doc_type, access_grant) SELECT currval(pg_get_serial_sequence('documents', 'seq')), 'Task', unnest($1::text[])".to_owned(),
        ];
        if !values.is_empty() {
            statements.push(format!(
                "INSERT INTO document_index (doc_type, doc_id, param, system, value, norm, low, high) VALUES {}",
                values.join(", ")
            ));
        }
        let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
        let connections = Arc::new(self.connections(concurrency, &statements).await?);
        let next = Arc::new(AtomicUsize::new(0));
        Ok(closed_loop(
            "same rows into PostgreSQL, one round trip (baseline)",
            concurrency,
            duration,
            move |_| {
                let (connections, rows) = (connections.clone(), rows.clone());
                let slot = next.fetch_add(1, Ordering::Relaxed) % connections.len();
                async move {
                    let (client, statements) = &connections[slot];
                    insert_task_rows(client, statements, &rows).await.is_ok()
                }
            },
        )
        .await)
    }

    /// Reads by type and id of the rows [`Self::same_rows_inserts`] wrote (no access check,
    /// so a little less than the server asks of the database) from `concurrency` callers
    /// sharing one pipelined connection: the database's own ceiling for reads by id.
    pub async fn point_selects(
        &self,
        concurrency: usize,
        duration: Duration,
    ) -> Result<Measurement, BoxError> {
        let client = self.connect().await?;
        let ids: Vec<String> = client
            .query("SELECT doc_id FROM documents LIMIT 20000", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if ids.is_empty() {
            return Err("the point-select baseline needs the same-rows baseline's rows".into());
        }
        let select = client
            .prepare(
                "SELECT doc_type, doc_id, version, updated, body FROM documents \
                 WHERE doc_type = 'Task' AND doc_id = $1",
            )
            .await?;
        let shared = Arc::new((client, select, ids));
        Ok(closed_loop(
            "point select of a Task's row, one pipelined connection (baseline)",
            concurrency,
            duration,
            move |i| {
                let shared = shared.clone();
                async move {
                    let (client, select, ids) = &*shared;
                    let id = &ids[(i * 7919) % ids.len()];
                    matches!(client.query(select, &[id]).await, Ok(rows) if rows.len() == 1)
                }
            },
        )
        .await)
    }

    /// Drops the baseline's schema.
    pub async fn remove(self) {
        let dropped = async {
            let client = connect(&self.url, None).await?;
            client
                .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema))
                .await
        };
        if let Err(e) = dropped.await {
            eprintln!(
                "could not drop baseline schema {}: {}",
                self.schema,
                dsf_core::ErrorChain(&e)
            );
        }
    }
}

/// One Task's rows in one transaction, all statements pipelined.
async fn insert_task_rows(
    client: &tokio_postgres::Client,
    statements: &[tokio_postgres::Statement],
    rows: &TaskRows,
) -> Result<(), tokio_postgres::Error> {
    let id = uuid::Uuid::new_v4().to_string();
    let updated = dsf_fhir::date::unix_millis_now();
    let mut index_params: Vec<&(dyn ToSql + Sync)> = vec![&id];
    for row in &rows.index {
        index_params.extend_from_slice(&[
            &row.param as &(dyn ToSql + Sync),
            &row.system,
            &row.value,
            &row.norm,
            &row.low,
            &row.high,
        ]);
    }
    let document_params: [&(dyn ToSql + Sync); 3] = [&id, &updated, &rows.body];
    let grant_params: [&(dyn ToSql + Sync); 1] = [&rows.grants];
    let begin = client.batch_execute("BEGIN");
    let document = client.execute(&statements[0], &document_params);
    let grants = client.execute(&statements[1], &grant_params);
    let index = async {
        match statements.get(2) {
            Some(index) => client.execute(index, &index_params).await,
            None => Ok(0),
        }
    };
    let commit = client.batch_execute("COMMIT");
    let (begin, document, grants, index, commit) =
        futures_util::future::join5(begin, document, grants, index, commit).await;
    begin?;
    document?;
    grants?;
    index?;
    commit
}

/// A connection whose `search_path` is `schema`, its driver task spawned.
async fn connect(
    url: &str,
    schema: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    if let Some(schema) = schema {
        client
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await?;
    }
    Ok(client)
}
