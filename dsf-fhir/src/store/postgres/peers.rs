//! Several server processes on one PostgreSQL database: each write transaction announces the
//! versions it wrote with `NOTIFY` (delivered when, and only if, it commits), and each
//! process `LISTEN`s, reads the versions other processes wrote and hands them to its change
//! feed, so that their websocket subscribers hear of them and caches built on the allow list
//! are rebuilt.
//!
//! A listening connection that drops misses what is committed until it is back. On
//! reconnecting, the listener reads every version written since shortly before it last heard
//! from the database (the margin covers a transaction's time between taking its timestamp
//! and committing, and small clock differences between hosts); versions already announced
//! are recognised by the feed and not announced twice.

use super::{quote_ident, storage_error, Pool, PostgresBackend};
use crate::store::sql::{Dialect, Sql};
use crate::store::{Backend, StoredResource};
use crate::Result;
use dsf_core::ErrorChain;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

/// The largest payload sent in one notification (PostgreSQL's limit is 8000 bytes).
const PAYLOAD_BYTES: usize = 7000;
/// How far back a reconnected listener reads, before it last heard from the database.
const CATCH_UP_MARGIN_MILLIS: i64 = 15_000;
/// The most versions one catch-up reads; a listener cut off for longer than that many
/// writes logs it, and subscribers recover by their own REST catch-up.
const CATCH_UP_LIMIT: i64 = 10_000;
/// How often the listening connection is checked (and a stopped store noticed).
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Keys read per statement when fetching announced versions.
const FETCH_BATCH: usize = 200;

/// Versions other processes committed, batch by batch.
pub(crate) type PeerChanges = mpsc::UnboundedReceiver<Vec<StoredResource>>;

/// The notification channel of the database's schema: processes on other schemas of the same
/// database do not hear each other.
pub(super) fn channel(schema: Option<&str>) -> String {
    // FNV-1a: stable across processes and versions, unlike the standard library's hasher.
    let hash = schema
        .unwrap_or("public")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("dsf_changes_{hash:016x}")
}

/// The `pg_notify` statements that announce `changes` from `origin` on `channel`.
pub(super) fn announcements(channel: &str, origin: &str, changes: &[StoredResource]) -> Vec<Sql> {
    let mut statements = Vec::new();
    let mut payload = String::new();
    for change in changes {
        let key = format!("{}/{}/{}", change.resource_type, change.id, change.version);
        if !payload.is_empty() && payload.len() + 1 + key.len() > PAYLOAD_BYTES {
            statements.push(notify(channel, std::mem::take(&mut payload)));
        }
        if payload.is_empty() {
            payload.push_str(origin);
        }
        payload.push(' ');
        payload.push_str(&key);
    }
    if !payload.is_empty() {
        statements.push(notify(channel, payload));
    }
    statements
}

fn notify(channel: &str, payload: String) -> Sql {
    let mut sql = Sql::new(Dialect::Postgres);
    sql.push("SELECT pg_notify(")
        .bind(channel)
        .push(", ")
        .bind(payload)
        .push(")");
    sql
}

/// The versions a notification names, unless it came from `origin` (this process).
fn announced<'a>(payload: &'a str, origin: &str) -> Vec<(&'a str, &'a str, i64)> {
    let mut parts = payload.split(' ');
    if parts.next() == Some(origin) {
        return Vec::new();
    }
    parts
        .filter_map(|key| {
            let mut fields = key.splitn(3, '/');
            let resource_type = fields.next()?;
            let id = fields.next()?;
            let version = fields.next()?.parse().ok()?;
            Some((resource_type, id, version))
        })
        .collect()
}

/// Starts listening for other processes' changes; the listener stops once the receiver is
/// dropped.
pub(super) fn follow(pool: Arc<Pool>, channel: String, origin: String) -> PeerChanges {
    let (tx, rx) = mpsc::unbounded_channel();
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(listen(pool, channel, origin, tx));
        }
        Err(_) => tracing::warn!(
            "no async runtime: changes made by other server processes are not announced here"
        ),
    }
    rx
}

async fn listen(
    pool: Arc<Pool>,
    channel: String,
    origin: String,
    tx: mpsc::UnboundedSender<Vec<StoredResource>>,
) {
    let backend = PostgresBackend {
        pool,
        origin: String::new(),
    };
    // Unix milliseconds when the database was last heard from. The first connection catches
    // up from when the store was opened: what was written before it listened is not missed.
    let mut last_contact = Some(crate::date::unix_millis_now());
    loop {
        if tx.is_closed() {
            return;
        }
        match session(&backend, &channel, &origin, &tx, &mut last_contact).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), %channel, "listening for other servers' changes stopped; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One listening connection, until it fails (an error) or nobody listens any more (`Ok`).
async fn session(
    backend: &PostgresBackend,
    channel: &str,
    origin: &str,
    tx: &mpsc::UnboundedSender<Vec<StoredResource>>,
    last_contact: &mut Option<i64>,
) -> Result<()> {
    let mut config: tokio_postgres::Config = backend
        .pool
        .url
        .parse()
        .map_err(|e| crate::Error::Invalid(format!("PostgreSQL URL: {e}")))?;
    // Named, so that operators (and tests) can tell listening connections apart.
    config.application_name(format!("dsf-fhir listen {channel}"));
    let (client, mut connection) =
        tokio::time::timeout(backend.pool.options.connect_timeout, config.connect(NoTls))
            .await
            .map_err(|_| crate::Error::Unavailable("connecting to listen timed out".into()))?
            .map_err(storage_error)?;
    let (notes_tx, mut notes) = mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    let _ = notes_tx.send(note.payload().to_owned());
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "listening connection failed");
                    return;
                }
            }
        }
    });
    let _stop_driver = AbortOnDrop(driver);
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
        .await
        .map_err(storage_error)?;
    if let Some(since) = *last_contact {
        catch_up(backend, since - CATCH_UP_MARGIN_MILLIS, tx).await?;
    }
    *last_contact = Some(crate::date::unix_millis_now());
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    loop {
        tokio::select! {
            note = notes.recv() => {
                let Some(payload) = note else {
                    return Err(crate::Error::Unavailable("the listening connection closed".into()));
                };
                *last_contact = Some(crate::date::unix_millis_now());
                let keys = announced(&payload, origin);
                if !keys.is_empty() {
                    let changes = fetch(backend, &keys).await?;
                    if tx.send(changes).is_err() {
                        return Ok(());
                    }
                }
            }
            _ = keepalive.tick() => {
                if tx.is_closed() {
                    return Ok(());
                }
                tokio::time::timeout(KEEPALIVE, client.simple_query("SELECT 1"))
                    .await
                    .map_err(|_| crate::Error::Unavailable("the listening connection stopped answering".into()))?
                    .map_err(storage_error)?;
                *last_contact = Some(crate::date::unix_millis_now());
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const COLUMNS: &str =
    "SELECT res_type, res_id, version, last_updated, deleted, body FROM resources";

/// The versions named, as stored.
async fn fetch(
    backend: &PostgresBackend,
    keys: &[(&str, &str, i64)],
) -> Result<Vec<StoredResource>> {
    let mut session = backend.read().await?;
    let mut found = Vec::with_capacity(keys.len());
    for batch in keys.chunks(FETCH_BATCH) {
        let mut sql = Sql::new(Dialect::Postgres);
        sql.push(COLUMNS).push(" WHERE ");
        for (i, (resource_type, id, version)) in batch.iter().enumerate() {
            if i > 0 {
                sql.push(" OR ");
            }
            sql.push("(res_type = ")
                .bind(*resource_type)
                .push(" AND res_id = ")
                .bind(*id)
                .push(" AND version = ")
                .bind(*version)
                .push(")");
        }
        sql.push(" ORDER BY seq");
        found.extend(session.resources(&sql).await?);
    }
    Ok(found)
}

/// Every version written since `since` (Unix milliseconds), oldest first.
async fn catch_up(
    backend: &PostgresBackend,
    since: i64,
    tx: &mpsc::UnboundedSender<Vec<StoredResource>>,
) -> Result<()> {
    let mut session = backend.read().await?;
    let mut sql = Sql::new(Dialect::Postgres);
    sql.push(COLUMNS)
        .push(" WHERE last_updated >= ")
        .bind(since)
        .push(" ORDER BY seq LIMIT ")
        .bind(CATCH_UP_LIMIT);
    let changes = session.resources(&sql).await?;
    if changes.len() as i64 >= CATCH_UP_LIMIT {
        tracing::warn!(
            limit = CATCH_UP_LIMIT,
            "catching up on other servers' changes: more than the limit were written while not listening; websocket subscribers catch up on the rest by REST when they reconnect"
        );
    }
    tracing::info!(
        versions = changes.len(),
        "caught up on other servers' changes after reconnecting"
    );
    let _ = tx.send(changes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(resource_type: &str, id: &str, version: i64) -> StoredResource {
        StoredResource {
            resource_type: resource_type.into(),
            id: id.into(),
            version,
            last_updated: 0,
            deleted: false,
            body: None,
        }
    }

    #[test]
    fn announcements_are_split_below_the_payload_limit_and_read_back() {
        let changes: Vec<StoredResource> = (0..500)
            .map(|i| version("Task", &format!("{i:036}"), 1))
            .collect();
        let statements = announcements("c", "origin-a", &changes);
        assert!(statements.len() > 1);
        let mut keys = Vec::new();
        for statement in &statements {
            let crate::store::SqlValue::Text(Some(payload)) = &statement.params[1] else {
                panic!("payload is text");
            };
            assert!(payload.len() <= PAYLOAD_BYTES);
            assert!(announced(payload, "origin-a").is_empty(), "own changes");
            keys.extend(
                announced(payload, "origin-b")
                    .into_iter()
                    .map(|(t, id, v)| (t.to_owned(), id.to_owned(), v)),
            );
        }
        assert_eq!(keys.len(), 500);
        assert_eq!(keys[499], ("Task".into(), format!("{:036}", 499), 1));
        assert!(announcements("c", "o", &[]).is_empty());
    }

    #[test]
    fn channels_differ_by_schema() {
        assert_eq!(channel(None), channel(Some("public")));
        assert_ne!(channel(Some("a")), channel(Some("b")));
        assert!(channel(Some("a")).len() < 64);
    }
}
