//! Several server processes on one PostgreSQL database: each process announces the versions
//! it committed with `NOTIFY`, and each `LISTEN`s, reads the versions other processes wrote and
//! hands them to its change feed, so that their websocket subscribers hear of them and caches
//! built on the allow list are rebuilt.
//!
//! The announcements are sent after the commit, by one notifier per process that gathers
//! what committed meanwhile into one transaction: PostgreSQL serialises the commits of
//! notifying transactions, and a `NOTIFY` inside every write cut concurrent commits to a
//! quarter (pgbench, 16 clients: 12,300 inserts/s plain, 2,900 with a `NOTIFY` each). The price
//! is that a process dying between a commit and its announcement leaves it unannounced to the
//! other processes' subscribers until they reconnect and catch up.
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

/// The payloads that announce `changes` from `origin`, each below PostgreSQL's limit.
fn payloads(origin: &str, changes: &[(String, String, i64)]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut payload = String::new();
    for (resource_type, id, version) in changes {
        let key = format!("{resource_type}/{id}/{version}");
        if !payload.is_empty() && payload.len() + 1 + key.len() > PAYLOAD_BYTES {
            payloads.push(std::mem::take(&mut payload));
        }
        if payload.is_empty() {
            payload.push_str(origin);
        }
        payload.push(' ');
        payload.push_str(&key);
    }
    if !payload.is_empty() {
        payloads.push(payload);
    }
    payloads
}

/// Announces this process's committed versions: a task of its own with a connection of its
/// own, sending what committed while it sent the last batch as the next one.
pub(super) struct Notifier {
    tx: Option<mpsc::UnboundedSender<Vec<(String, String, i64)>>>,
}

impl Notifier {
    pub(super) fn start(pool: &Pool, origin: String) -> Notifier {
        let (url, timeout) = (pool.url.clone(), pool.options.connect_timeout);
        let channel = channel(pool.schema.as_deref());
        let (tx, rx) = mpsc::unbounded_channel();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(notify(url, timeout, channel, origin, rx));
                Notifier { tx: Some(tx) }
            }
            Err(_) => Notifier { tx: None },
        }
    }

    pub(super) fn send(&self, changes: &[StoredResource]) {
        if changes.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            let keys = changes
                .iter()
                .map(|c| (c.resource_type.clone(), c.id.clone(), c.version))
                .collect();
            let _ = tx.send(keys);
        }
    }
}

async fn notify(
    url: String,
    connect_timeout: Duration,
    channel: String,
    origin: String,
    mut rx: mpsc::UnboundedReceiver<Vec<(String, String, i64)>>,
) {
    let mut client: Option<(tokio_postgres::Client, AbortOnDrop)> = None;
    while let Some(mut keys) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            keys.extend(more);
        }
        let payloads = payloads(&origin, &keys);
        // One more try on a fresh connection: the first may have found it closed.
        for _ in 0..2 {
            if client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                client = match connect_named(&url, connect_timeout, "notify", &channel).await {
                    Ok((c, connection)) => Some((
                        c,
                        AbortOnDrop(tokio::spawn(async move {
                            let _ = connection.await;
                        })),
                    )),
                    Err(error) => {
                        tracing::warn!(error = %ErrorChain(&error), "cannot connect to announce changes to other servers");
                        None
                    }
                };
            }
            let Some((c, _)) = client.as_mut() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            match send_payloads(c, &channel, &payloads).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "cannot announce changes to other servers");
                    client = None;
                }
            }
        }
    }
}

async fn send_payloads(
    client: &mut tokio_postgres::Client,
    channel: &str,
    payloads: &[String],
) -> std::result::Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    for payload in payloads {
        tx.execute("SELECT pg_notify($1, $2)", &[&channel, payload])
            .await?;
    }
    tx.commit().await
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
    // Reads only: it announces nothing.
    let backend = PostgresBackend {
        pool,
        origin: String::new(),
        notifier: Notifier { tx: None },
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

/// A connection of its own for `role` (`listen` or `notify`) on `channel`, named
/// `dsf-fhir <role> <channel>` so that operators (and tests) can tell it from the pool's.
async fn connect_named(
    url: &str,
    timeout: Duration,
    role: &str,
    channel: &str,
) -> Result<(
    tokio_postgres::Client,
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
)> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| crate::Error::Invalid(format!("PostgreSQL URL: {e}")))?;
    config.application_name(format!("dsf-fhir {role} {channel}"));
    tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| crate::Error::Unavailable(format!("connecting to {role} timed out")))?
        .map_err(storage_error)
}

/// One listening connection, until it fails (an error) or nobody listens any more (`Ok`).
async fn session(
    backend: &PostgresBackend,
    channel: &str,
    origin: &str,
    tx: &mpsc::UnboundedSender<Vec<StoredResource>>,
    last_contact: &mut Option<i64>,
) -> Result<()> {
    let (client, mut connection) = connect_named(
        &backend.pool.url,
        backend.pool.options.connect_timeout,
        "listen",
        channel,
    )
    .await?;
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

    #[test]
    fn announcements_are_split_below_the_payload_limit_and_read_back() {
        let changes: Vec<(String, String, i64)> = (0..500)
            .map(|i| ("Task".to_owned(), format!("{i:036}"), 1))
            .collect();
        let sent = payloads("origin-a", &changes);
        assert!(sent.len() > 1);
        let mut keys = Vec::new();
        for payload in &sent {
            assert!(payload.len() <= PAYLOAD_BYTES);
            assert!(announced(payload, "origin-a").is_empty(), "own changes");
            keys.extend(
                announced(payload, "origin-b")
                    .into_iter()
                    .map(|(t, id, v)| (t.to_owned(), id.to_owned(), v)),
            );
        }
        assert_eq!(keys, changes);
        assert!(payloads("o", &[]).is_empty());
    }

    #[test]
    fn channels_differ_by_schema() {
        assert_eq!(channel(None), channel(Some("public")));
        assert_ne!(channel(Some("a")), channel(Some("b")));
        assert!(channel(Some("a")).len() < 64);
    }
}
