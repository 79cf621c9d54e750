//! Admission and time limits for client connections, so that idle or slow connections from
//! one peer (or from a certificate nobody allowed) cannot use up the server's sockets while
//! the organisations it serves are kept waiting.
//!
//! Every connection holds a [`Slot`] for its lifetime. A new connection over the per-address
//! limit is closed at once. At the total limit, the connection idle the longest is closed to
//! make room, preferring one whose certificate is on no allow list; when every connection is
//! busy with a request, the new one is closed instead.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Connection limits of a server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// Open connections at most, websockets included.
    pub max_connections: usize,
    /// Open connections from one IP address at most.
    pub max_per_address: usize,
    /// New connections one IP address may open per second (with bursts of twice as many):
    /// each costs a TLS handshake, so a peer reconnecting in a loop is refused at accept,
    /// before any TLS work. Callers that keep their connections open never reach it; the
    /// default leaves room for a local BPE or a dev network opening many connections at once
    /// from one address.
    pub new_connections_per_address_per_second: u32,
    /// How long the TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long a caller may take to send a request's head, counted from the moment the
    /// connection waits for it: after the handshake and between requests (the idle limit).
    pub header_timeout: Duration,
    /// The same for a certificate that maps to no organisation or user: such a connection
    /// gets its 401 and is closed, so it needs no more than the time to send one request.
    pub unknown_client_header_timeout: Duration,
    /// Requests of one remote organisation handled at once; further ones wait their turn
    /// (before their bodies are read), so that one peer cannot take the server's cores from
    /// the local organisation and the other peers. The local organisation and local users
    /// are not limited.
    pub max_requests_per_peer: usize,
    /// How long a remote organisation's turn stays taken after a request of it was refused
    /// (4xx), doubled for each refusal in a row (up to 16×; a request answered without
    /// refusal starts over). The answer is not delayed, but a peer sending request after
    /// request that is refused gets fewer and fewer of them handled.
    pub refusal_penalty: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            max_per_address: 256,
            new_connections_per_address_per_second: 200,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(60),
            unknown_client_header_timeout: Duration::from_secs(5),
            max_requests_per_peer: 4,
            refusal_penalty: Duration::from_millis(100),
        }
    }
}

/// Milliseconds since this process first asked (a monotonic clock, for idle times).
fn monotonic_millis() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One open connection, as the registry sees it.
pub(crate) struct Slot {
    id: u64,
    address: IpAddr,
    /// Whether the certificate maps to an organisation or local user (set after the
    /// handshake; until then the connection counts as unknown).
    known: AtomicBool,
    /// Requests being handled (a websocket counts as one for its whole life).
    busy: AtomicU64,
    last_active: AtomicU64,
    close: Notify,
    registry: Arc<OpenConnections>,
}

impl Slot {
    pub fn set_known(&self, known: bool) {
        self.known.store(known, Ordering::Relaxed);
    }

    /// Marks a request as being handled until the returned guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.last_active
            .store(monotonic_millis(), Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Completes when the registry wants this connection closed to make room.
    pub async fn evicted(&self) {
        self.close.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        state.slots.remove(&self.id);
        if let Some(n) = state.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                state.per_address.remove(&self.address);
            }
        }
    }
}

pub(crate) struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .last_active
            .store(monotonic_millis(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct State {
    next_id: u64,
    slots: HashMap<u64, std::sync::Weak<Slot>>,
    per_address: HashMap<IpAddr, usize>,
    /// Token buckets of new connections per address: tokens left and when last refilled.
    arrivals: HashMap<IpAddr, (f64, u64)>,
}

/// Addresses whose buckets are kept at most; full buckets are dropped beyond it.
const MAX_TRACKED_ADDRESSES: usize = 4096;

impl State {
    /// Takes a token of `address`'s bucket if it has one.
    fn arrival(&mut self, address: IpAddr, per_second: u32, now: u64) -> bool {
        let rate = f64::from(per_second.max(1));
        let burst = rate * 2.0;
        let refill = |(tokens, at): (f64, u64)| {
            (tokens + (now - at.min(now)) as f64 * rate / 1000.0).min(burst)
        };
        if self.arrivals.len() >= MAX_TRACKED_ADDRESSES && !self.arrivals.contains_key(&address) {
            self.arrivals.retain(|_, bucket| refill(*bucket) < burst);
        }
        let bucket = self.arrivals.entry(address).or_insert((burst, now));
        let tokens = refill(*bucket);
        if tokens < 1.0 {
            *bucket = (tokens, now);
            return false;
        }
        *bucket = (tokens - 1.0, now);
        true
    }
}

/// The open connections of one server.
#[derive(Default)]
pub(crate) struct OpenConnections {
    state: Mutex<State>,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    TooManyFromAddress,
    TooFast,
    Full,
}

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(&self) -> usize {
        self.lock().slots.len()
    }

    /// Admits a connection from `address`, closing an idle one when the server is full.
    pub fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        limits: &ConnectionLimits,
    ) -> Result<Arc<Slot>, Refused> {
        let mut state = self.lock();
        if !state.arrival(
            address,
            limits.new_connections_per_address_per_second,
            monotonic_millis(),
        ) {
            return Err(Refused::TooFast);
        }
        if state.per_address.get(&address).copied().unwrap_or(0) >= limits.max_per_address {
            return Err(Refused::TooManyFromAddress);
        }
        if state.slots.len() >= limits.max_connections {
            // Unknown certificates first, then the longest idle; a busy connection stays.
            let victim = state
                .slots
                .values()
                .filter_map(std::sync::Weak::upgrade)
                .filter(|slot| slot.busy.load(Ordering::Relaxed) == 0)
                .min_by_key(|slot| {
                    (
                        slot.known.load(Ordering::Relaxed),
                        slot.last_active.load(Ordering::Relaxed),
                    )
                })
                .ok_or(Refused::Full)?;
            // The victim leaves the count now; its task closes it as soon as it runs.
            state.slots.remove(&victim.id);
            victim.close.notify_one();
        }
        state.next_id += 1;
        let slot = Arc::new(Slot {
            id: state.next_id,
            address,
            known: AtomicBool::new(false),
            busy: AtomicU64::new(0),
            last_active: AtomicU64::new(monotonic_millis()),
            close: Notify::new(),
            registry: self.clone(),
        });
        state.slots.insert(slot.id, Arc::downgrade(&slot));
        *state.per_address.entry(address).or_default() += 1;
        Ok(slot)
    }
}

/// Turns of the remote organisations: one semaphore per organisation identifier.
#[derive(Default)]
pub(crate) struct PeerTurns {
    peers: Mutex<HashMap<String, Arc<Peer>>>,
}

/// One remote organisation's turns, and how many of its requests in a row were refused.
struct Peer {
    turns: Arc<tokio::sync::Semaphore>,
    refused_in_a_row: AtomicU64,
}

/// A turn of a remote organisation; dropping it gives the turn back.
pub(crate) struct Turn {
    _permit: tokio::sync::OwnedSemaphorePermit,
    peer: Arc<Peer>,
}

/// Refusals in a row beyond which the penalty stops doubling (16× the base penalty).
const MAX_PENALTY_DOUBLINGS: u64 = 4;

impl Turn {
    /// The turn stays taken `base` longer after a refused request, doubled for each refusal
    /// in a row before it (up to 16×): a peer that sends nothing but refused requests gets
    /// fewer and fewer of them handled, one that is refused now and then barely notices.
    pub fn penalty(&self, base: Duration) -> Duration {
        let before = self.peer.refused_in_a_row.fetch_add(1, Ordering::Relaxed);
        base * (1u32 << before.min(MAX_PENALTY_DOUBLINGS))
    }

    /// A request of the peer was answered without refusal: the doubling starts over.
    pub fn succeeded(&self) {
        self.peer.refused_in_a_row.store(0, Ordering::Relaxed);
    }
}

impl PeerTurns {
    /// Waits for a turn of `peer`; the turn ends when it drops.
    pub async fn take(&self, peer: &str, limit: usize) -> Option<Turn> {
        let peer = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            // Forget organisations with nobody waiting or served, so the map stays small.
            if peers.len() > 1024 {
                peers.retain(|_, p| p.turns.available_permits() < limit);
            }
            peers
                .entry(peer.to_owned())
                .or_insert_with(|| {
                    Arc::new(Peer {
                        turns: Arc::new(tokio::sync::Semaphore::new(limit.max(1))),
                        refused_in_a_row: AtomicU64::new(0),
                    })
                })
                .clone()
        };
        let permit = peer.turns.clone().acquire_owned().await.ok()?;
        Some(Turn {
            _permit: permit,
            peer,
        })
    }
}

/// A stream whose writes may stall for at most `limit`: a client that stops reading its
/// answer gets its connection closed instead of holding it (and the answer) forever.
pub(crate) struct StallLimited<T> {
    inner: T,
    limit: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallLimited<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        StallLimited {
            inner,
            limit,
            stalled_since: None,
        }
    }

    /// Turns a pending write into an error once it has been pending for `limit`.
    fn bound<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if poll.is_ready() {
            self.stalled_since = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallLimited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallLimited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bound(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_address: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: total,
            max_per_address: per_address,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn per_address_limit_and_release() {
        let registry = Arc::new(OpenConnections::default());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let limits = limits(10, 2);
        let first = registry.admit(a, &limits).unwrap();
        let _second = registry.admit(a, &limits).unwrap();
        assert_eq!(
            registry.admit(a, &limits).err(),
            Some(Refused::TooManyFromAddress)
        );
        assert!(registry.admit(b, &limits).is_ok());
        drop(first);
        assert!(registry.admit(a, &limits).is_ok());
    }

    #[tokio::test]
    async fn refusals_in_a_row_double_the_penalty_until_a_success() {
        let turns = PeerTurns::default();
        let base = Duration::from_millis(100);
        let mut penalties = Vec::new();
        for _ in 0..7 {
            let turn = turns.take("peer.test", 4).await.expect("turn");
            penalties.push(turn.penalty(base).as_millis());
        }
        assert_eq!(penalties, [100, 200, 400, 800, 1600, 1600, 1600]);
        turns.take("peer.test", 4).await.expect("turn").succeeded();
        let turn = turns.take("peer.test", 4).await.expect("turn");
        assert_eq!(turn.penalty(base), base);
        // Another organisation is judged on its own requests.
        let other = turns.take("other.test", 4).await.expect("turn");
        assert_eq!(other.penalty(base), base);
    }

    #[test]
    fn new_connections_per_address_are_rate_limited() {
        let registry = Arc::new(OpenConnections::default());
        let limits = ConnectionLimits {
            new_connections_per_address_per_second: 10,
            ..limits(1000, 1000)
        };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let mut open = Vec::new();
        // A burst of twice the rate, then refused before any TLS work.
        for _ in 0..20 {
            open.push(registry.admit(a, &limits).expect("within the burst"));
        }
        assert_eq!(registry.admit(a, &limits).err(), Some(Refused::TooFast));
        // Another address has its own allowance.
        assert!(registry.admit(b, &limits).is_ok());
        // Closing connections does not give new ones; time does.
        open.clear();
        assert_eq!(registry.admit(a, &limits).err(), Some(Refused::TooFast));
        std::thread::sleep(Duration::from_millis(250));
        assert!(registry.admit(a, &limits).is_ok());
    }

    #[tokio::test]
    async fn full_server_closes_unknown_then_idle_never_busy() {
        let registry = Arc::new(OpenConnections::default());
        let limits = limits(2, 10);
        let address: IpAddr = "127.0.0.1".parse().unwrap();
        let known = registry.admit(address, &limits).unwrap();
        known.set_known(true);
        let unknown = registry.admit(address, &limits).unwrap();
        // Full: the unknown one is chosen although the known one is idle for longer.
        let third = registry.admit(address, &limits).unwrap();
        tokio::time::timeout(Duration::from_secs(1), unknown.evicted())
            .await
            .expect("unknown connection told to close");
        assert_eq!(registry.open(), 2);
        third.set_known(true);
        let _working = known.busy();
        let _working_too = third.busy();
        assert_eq!(registry.admit(address, &limits).err(), Some(Refused::Full));
    }
}
