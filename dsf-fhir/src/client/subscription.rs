//! A websocket subscription that does not lose events: it binds to a Subscription at
//! `{base}/ws`, answers the server's pings, reconnects with backoff when the connection
//! drops, and after every (re)connect searches over REST for what matches the Subscription's
//! criteria since the last event it saw, so that nothing written while it was away is missed.
//! Each version reaches the caller once: events and search results are deduplicated by
//! `Type/id` and version.

use super::pages::matches;
use super::{backoff, FhirClient};
use crate::date::format_instant;
use crate::date::parse_date_range;
use crate::format::{parse_resource, Format};
use crate::{Error, Result};
use bytes::Bytes;
use dsf_core::ErrorChain;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use http::{Method, Request};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// A raw websocket connection to the server's `/ws` endpoint.
pub type RawWebSocket = WebSocket<TokioIo<Upgraded>>;

/// How a [`SubscriptionStream`] reconnects and catches up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscriptionSettings {
    /// Wait before the first reconnect; doubled after each failed one, with jitter.
    pub reconnect_backoff: Duration,
    /// The longest wait between reconnects.
    pub max_reconnect_backoff: Duration,
    /// How long the server may take to answer `bind` with `bound`.
    pub bind_timeout: Duration,
    /// How far before the newest `lastUpdated` seen a catch-up search starts, so that a
    /// write stamped earlier but committed later is still found.
    pub catch_up_overlap: Duration,
    /// Page size of catch-up searches.
    pub catch_up_page: usize,
    /// How many versions are remembered for deduplication.
    pub remembered: usize,
    /// Notifications waiting for the caller; when full, reading from the server pauses.
    pub buffer: usize,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        SubscriptionSettings {
            reconnect_backoff: Duration::from_millis(500),
            max_reconnect_backoff: Duration::from_secs(30),
            bind_timeout: Duration::from_secs(10),
            catch_up_overlap: Duration::from_secs(60),
            catch_up_page: 200,
            remembered: 100_000,
            buffer: 1024,
        }
    }
}

/// One resource version the Subscription matched.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The resource's type.
    pub resource_type: String,
    /// The resource's id.
    pub id: String,
    /// The version matched (`meta.versionId`).
    pub version: i64,
    /// `meta.lastUpdated` in milliseconds since the Unix epoch.
    pub last_updated: Option<i64>,
    /// The resource.
    pub resource: Value,
    /// Whether it came from a catch-up search rather than a websocket event.
    pub from_catch_up: bool,
}

/// What the subscription is doing, for callers that report or wait on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionStatus {
    /// Successful binds so far (1 after the first connect, more after reconnects).
    pub connects: u64,
    /// Whether the websocket is bound now.
    pub connected: bool,
    /// Catch-up searches finished so far.
    pub catch_ups: u64,
    /// The newest `meta.lastUpdated` delivered, in milliseconds; persist it and pass it to
    /// [`FhirClient::subscribe`] after a restart to catch up from there.
    pub watermark: Option<i64>,
    /// The last connect or catch-up failure, with its causes.
    pub last_error: Option<String>,
}

/// The notifications of one Subscription. Dropping it stops the background task.
pub struct SubscriptionStream {
    notifications: mpsc::Receiver<Notification>,
    status: watch::Receiver<SubscriptionStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl SubscriptionStream {
    /// The next notification; `None` only if the background task ended.
    pub async fn next(&mut self) -> Option<Notification> {
        self.notifications.recv().await
    }

    /// What the subscription is doing now.
    pub fn status(&self) -> SubscriptionStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `condition`.
    pub async fn wait_for(&mut self, condition: impl FnMut(&SubscriptionStatus) -> bool) {
        let _ = self.status.wait_for(condition).await;
    }
}

impl Drop for SubscriptionStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}

impl FhirClient {
    /// Opens a websocket to `{base}/ws` with this client's certificate. Most callers want
    /// [`FhirClient::subscribe`]; this is the raw protocol.
    pub async fn websocket(&self) -> Result<RawWebSocket> {
        let tls = self.connect_tls().await?;
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("{}/ws", self.inner.path_prefix))
            .header(http::header::HOST, self.authority())
            .header(http::header::UPGRADE, "websocket")
            .header(http::header::CONNECTION, "upgrade")
            .header(
                "sec-websocket-key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("sec-websocket-version", "13")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let handshake = fastwebsockets::handshake::client(&SpawnExecutor, request, tls);
        match tokio::time::timeout(self.inner.settings.timeout, handshake).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(fastwebsockets::WebSocketError::InvalidStatusCode(401))) => {
                Err(Error::Unauthenticated(
                    "websocket refused: certificate not on the allow list".into(),
                ))
            }
            Ok(Err(fastwebsockets::WebSocketError::InvalidStatusCode(403))) => {
                Err(Error::Forbidden("websocket refused".into()))
            }
            Ok(Err(e)) => Err(Error::transport_in("websocket handshake", e)),
            Err(_) => Err(Error::Timeout("websocket handshake timed out".into())),
        }
    }

    /// Subscribes to the Subscription `subscription_id`: connects, binds and catches up,
    /// then keeps doing so in the background. `since` (milliseconds, a former
    /// [`SubscriptionStatus::watermark`]) limits the first catch-up; `None` catches up on
    /// everything that matches. Fails when the first bind fails (an unknown Subscription, a
    /// refused certificate); later failures are retried.
    pub async fn subscribe(
        &self,
        subscription_id: &str,
        since: Option<i64>,
        settings: SubscriptionSettings,
    ) -> Result<SubscriptionStream> {
        let subscription: Value = self.read("Subscription", subscription_id).await?;
        let criteria = subscription
            .get("criteria")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::Invalid(format!("Subscription/{subscription_id} has no criteria"))
            })?;
        let (resource_type, query) = criteria.split_once('?').unwrap_or((criteria, ""));
        let (notify, notifications) = mpsc::channel(settings.buffer.max(1));
        let (status_tx, status) = watch::channel(SubscriptionStatus {
            watermark: since,
            ..SubscriptionStatus::default()
        });
        let (first_tx, first_rx) = oneshot::channel();
        let follower = Follower {
            client: self.clone(),
            subscription_id: subscription_id.to_owned(),
            resource_type: resource_type.to_owned(),
            query: query.to_owned(),
            settings,
            notify,
            status: status_tx,
            seen: Seen::default(),
        };
        let task = tokio::spawn(follower.run(first_tx));
        match first_rx.await {
            Ok(Ok(())) => Ok(SubscriptionStream {
                notifications,
                status,
                task,
            }),
            Ok(Err(e)) => {
                task.abort();
                Err(e)
            }
            Err(_) => Err(Error::transport_fault("subscription task ended")),
        }
    }
}

/// Sends `bind <id>` and waits for `bound <id>`.
async fn bind(ws: &mut RawWebSocket, id: &str, timeout: Duration) -> Result<()> {
    ws.write_frame(Frame::text(Payload::Owned(
        format!("bind {id}").into_bytes(),
    )))
    .await
    .map_err(|e| Error::transport_in("websocket", e))?;
    let expected = format!("bound {id}");
    let answer = async {
        loop {
            let frame = ws
                .read_frame()
                .await
                .map_err(|e| Error::transport_in("websocket", e))?;
            match frame.opcode {
                OpCode::Text if frame.payload[..] == *expected.as_bytes() => return Ok(()),
                OpCode::Close => {
                    let (code, reason) = close_of(&frame.payload);
                    return Err(if code == 1003 {
                        Error::NotFound(reason)
                    } else if code == 1008 {
                        Error::Forbidden(reason)
                    } else {
                        Error::transport_fault(format!("websocket closed ({code}): {reason}"))
                    });
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| Error::Timeout(format!("no 'bound {id}' within {timeout:?}")))?
}

/// The code and reason of a close frame's payload.
pub fn close_of(payload: &[u8]) -> (u16, String) {
    match payload {
        [a, b, reason @ ..] => (
            u16::from_be_bytes([*a, *b]),
            String::from_utf8_lossy(reason).into_owned(),
        ),
        _ => (1005, String::new()),
    }
}

/// What the reader task passes on.
enum Incoming {
    Text(Vec<u8>),
    Closed(String),
}

/// Owns the websocket: answers pings (fastwebsockets does so while reading) and forwards
/// text messages, so the follower can search meanwhile without the server missing a pong.
async fn read_frames(mut ws: RawWebSocket, forward: mpsc::Sender<Incoming>) {
    loop {
        let incoming = match ws.read_frame().await {
            Ok(frame) => match frame.opcode {
                OpCode::Text => Incoming::Text(frame.payload.to_vec()),
                OpCode::Close => {
                    let (code, reason) = close_of(&frame.payload);
                    Incoming::Closed(format!("closed by server ({code}): {reason}"))
                }
                _ => continue,
            },
            Err(e) => Incoming::Closed(format!("websocket: {e}")),
        };
        let last = matches!(incoming, Incoming::Closed(_));
        if forward.send(incoming).await.is_err() || last {
            return;
        }
    }
}

/// Versions already delivered, the oldest forgotten first.
#[derive(Default)]
struct Seen {
    set: HashSet<(String, i64)>,
    order: VecDeque<(String, i64)>,
}

impl Seen {
    /// Records `key`; false if it was known.
    fn insert(&mut self, key: (String, i64), capacity: usize) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > capacity.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

struct Follower {
    client: FhirClient,
    subscription_id: String,
    resource_type: String,
    query: String,
    settings: SubscriptionSettings,
    notify: mpsc::Sender<Notification>,
    status: watch::Sender<SubscriptionStatus>,
    seen: Seen,
}

/// Why following stopped.
enum Stop {
    /// The caller dropped the stream.
    CallerGone,
    /// The connection or a search failed; reconnect.
    Failed(String),
}

impl Follower {
    async fn run(mut self, first: oneshot::Sender<Result<()>>) {
        let mut first = Some(first);
        let mut failures = 0u32;
        loop {
            let connected = async {
                let mut ws = self.client.websocket().await?;
                bind(&mut ws, &self.subscription_id, self.settings.bind_timeout).await?;
                Ok::<_, Error>(ws)
            }
            .await;
            let stop = match connected {
                Ok(ws) => {
                    failures = 0;
                    self.status.send_modify(|s| {
                        s.connects += 1;
                        s.connected = true;
                    });
                    if let Some(first) = first.take() {
                        let _ = first.send(Ok(()));
                    }
                    tracing::debug!(subscription = %self.subscription_id, "websocket bound");
                    let stop = self.follow(ws).await;
                    self.status.send_modify(|s| s.connected = false);
                    stop
                }
                Err(e) => {
                    if let Some(first) = first.take() {
                        let _ = first.send(Err(e));
                        return;
                    }
                    Stop::Failed(ErrorChain(&e).to_string())
                }
            };
            match stop {
                Stop::CallerGone => return,
                Stop::Failed(reason) => {
                    tracing::info!(subscription = %self.subscription_id, %reason, "subscription connection lost; reconnecting");
                    self.status.send_modify(|s| s.last_error = Some(reason));
                }
            }
            let wait = backoff(
                self.settings.reconnect_backoff,
                self.settings.max_reconnect_backoff,
                failures,
            );
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.notify.closed() => return,
            }
        }
    }

    /// Catches up, then passes events on until the connection ends.
    async fn follow(&mut self, ws: RawWebSocket) -> Stop {
        let (forward, mut incoming) = mpsc::channel(256);
        let reader = tokio::spawn(read_frames(ws, forward));
        let stop = async {
            self.catch_up().await?;
            while let Some(message) = incoming.recv().await {
                match message {
                    Incoming::Closed(reason) => return Err(Stop::Failed(reason)),
                    Incoming::Text(text) if text.starts_with(b"ping ") => self.catch_up().await?,
                    Incoming::Text(payload) => {
                        let format = if payload.first() == Some(&b'<') {
                            Format::Xml
                        } else {
                            Format::Json
                        };
                        match parse_resource(&payload, format) {
                            Ok(resource) => self.deliver(resource, false).await?,
                            Err(e) => {
                                tracing::warn!(error = %ErrorChain(&e), "unreadable websocket event; catching up instead");
                                self.catch_up().await?;
                            }
                        }
                    }
                }
            }
            Err(Stop::Failed("websocket reader ended".into()))
        }
        .await;
        reader.abort();
        match stop {
            Ok(()) => Stop::Failed("connection ended".into()),
            Err(stop) => stop,
        }
    }

    /// Searches the criteria for everything since the watermark (less the overlap), oldest
    /// first, paging by `_lastUpdated` so that resources leaving the result set meanwhile
    /// do not shift a page past unseen ones.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let page_size = self.settings.catch_up_page.max(1);
        let overlap = i64::try_from(self.settings.catch_up_overlap.as_millis()).unwrap_or(i64::MAX);
        let mut cursor = self
            .status
            .borrow()
            .watermark
            .map(|w| w.saturating_sub(overlap));
        let mut page = 1;
        loop {
            let mut query = self.query.clone();
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(&format!(
                "_sort=_lastUpdated&_count={page_size}&_page={page}"
            ));
            if let Some(cursor) = cursor {
                query.push_str(&format!("&_lastUpdated=ge{}", format_instant(cursor)));
            }
            let bundle = self
                .client
                .search(&self.resource_type, &query)
                .await
                .map_err(|e| Stop::Failed(format!("catch-up search: {}", ErrorChain(&e))))?;
            let found = matches(&bundle);
            let full = found.len() >= page_size;
            let newest = found.last().and_then(last_updated);
            for resource in found {
                self.deliver(resource, true).await?;
            }
            if !full {
                break;
            }
            if newest.is_some() && newest != cursor {
                cursor = newest;
                page = 1;
            } else {
                // A whole page within one millisecond: step on by page number.
                page += 1;
            }
        }
        self.status.send_modify(|s| s.catch_ups += 1);
        Ok(())
    }

    async fn deliver(&mut self, resource: Value, from_catch_up: bool) -> Result<(), Stop> {
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let id = resource
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let version = resource
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let key = (format!("{resource_type}/{id}"), version);
        if !self.seen.insert(key, self.settings.remembered) {
            return Ok(());
        }
        let last_updated = last_updated(&resource);
        if let Some(at) = last_updated {
            self.status.send_if_modified(|s| {
                if s.watermark.is_none_or(|w| w < at) {
                    s.watermark = Some(at);
                    true
                } else {
                    false
                }
            });
        }
        let notification = Notification {
            resource_type,
            id,
            version,
            last_updated,
            resource,
            from_catch_up,
        };
        self.notify
            .send(notification)
            .await
            .map_err(|_| Stop::CallerGone)
    }
}

fn last_updated(resource: &Value) -> Option<i64> {
    resource
        .pointer("/meta/lastUpdated")
        .and_then(Value::as_str)
        .and_then(parse_date_range)
        .map(|range| range.low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_forgets_the_oldest_beyond_capacity() {
        let mut seen = Seen::default();
        assert!(seen.insert(("Task/a".into(), 1), 2));
        assert!(!seen.insert(("Task/a".into(), 1), 2));
        assert!(seen.insert(("Task/a".into(), 2), 2));
        assert!(seen.insert(("Task/b".into(), 1), 2));
        assert!(
            seen.insert(("Task/a".into(), 1), 2),
            "forgotten, so new again"
        );
    }

    #[test]
    fn close_payloads() {
        assert_eq!(close_of(&[0x03, 0xeb, b'n', b'o']), (1003, "no".into()));
        assert_eq!(close_of(&[]), (1005, String::new()));
    }
}
