//! The storage conformance suite (`dsf_fhir::store::conformance`) on both backends, and on a
//! backend written outside dsf-fhir against its public traits.

use dsf_fhir::store::{
    async_trait, conformance, Backend, Dialect, PostgresBackend, ResourceStore, Session,
    SqliteBackend, WriteOp,
};
use dsf_tests::relay::{ConnectionTap, Direction, Tap, TcpRelay, Verdict};
use dsf_tests::{backend, postgres_address, postgres_url_at};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A backend of the kind an integrator writes: it wraps another and counts the sessions it
/// hands out (for a metrics endpoint, say). Only public items of dsf-fhir are used.
struct CountingBackend {
    inner: Arc<dyn Backend>,
    sessions: Arc<AtomicUsize>,
}

#[async_trait]
impl Backend for CountingBackend {
    fn dialect(&self) -> Dialect {
        self.inner.dialect()
    }

    fn single_writer(&self) -> bool {
        self.inner.single_writer()
    }

    async fn read(&self) -> dsf_fhir::Result<Box<dyn Session>> {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.inner.read().await
    }

    async fn write(&self) -> dsf_fhir::Result<Box<dyn Session>> {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.inner.write().await
    }
}

/// A relay in front of PostgreSQL that counts round trips (the times a client spoke again
/// after the database had answered it) and statements run (Execute messages).
struct RoundTripCounter {
    address: SocketAddr,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    turns: AtomicUsize,
    executes: AtomicUsize,
}

/// The counter's [`Tap`]: every connection counted into the same totals.
struct CountingTap(Arc<Counts>);

impl Tap for CountingTap {
    fn connection(&self) -> Option<Arc<dyn ConnectionTap>> {
        Some(Arc::new(ClientCounts {
            counts: self.0.clone(),
            answered: AtomicBool::new(true),
            messages: std::sync::Mutex::new(Messages::default()),
        }))
    }
}

/// What the relay counts of one client's connection.
struct ClientCounts {
    counts: Arc<Counts>,
    /// The database has answered since the client last spoke.
    answered: AtomicBool,
    messages: std::sync::Mutex<Messages>,
}

#[derive(Default)]
struct Messages {
    /// Bytes of a message not yet complete.
    pending: Vec<u8>,
    /// Past the start-up message, after which every message begins with its type byte.
    started: bool,
    /// The start-up message named the connection as a store's notifier or listener.
    announcing: bool,
}

impl ConnectionTap for ClientCounts {
    fn passing(&self, direction: Direction, bytes: &[u8]) -> Verdict {
        match direction {
            // From the client: a new round trip if the server has answered since it last spoke.
            Direction::ToServer => {
                let mut messages = self.messages.lock().unwrap();
                let executes = messages.executes_in(bytes);
                // The store's announcements to other servers go over a connection of their
                // own, after the commit: not the interaction's round trips.
                if messages.announcing {
                    return Verdict::Pass;
                }
                if self.answered.swap(false, Ordering::SeqCst) {
                    self.counts.turns.fetch_add(1, Ordering::SeqCst);
                }
                self.counts.executes.fetch_add(executes, Ordering::SeqCst);
            }
            Direction::ToClient => self.answered.store(true, Ordering::SeqCst),
        }
        Verdict::Pass
    }
}

impl Messages {
    /// The Execute messages completed by `bytes`.
    fn executes_in(&mut self, bytes: &[u8]) -> usize {
        const SSL_REQUEST: u32 = 80_877_103;
        self.pending.extend_from_slice(bytes);
        let mut executes = 0;
        loop {
            let length_at = usize::from(self.started);
            let Some(length) = self.pending.get(length_at..length_at + 4) else {
                return executes;
            };
            let end = length_at + u32::from_be_bytes(length.try_into().expect("4 bytes")) as usize;
            if self.pending.len() < end {
                return executes;
            }
            if self.started {
                if self.pending[0] == b'E' {
                    executes += 1;
                }
            } else {
                let code = self
                    .pending
                    .get(4..8)
                    .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")));
                self.started = code != Some(SSL_REQUEST);
                let startup = String::from_utf8_lossy(&self.pending[..end]);
                self.announcing =
                    startup.contains("dsf-fhir notify") || startup.contains("dsf-fhir listen");
            }
            self.pending.drain(..end);
        }
    }
}

impl RoundTripCounter {
    async fn start(target: SocketAddr) -> RoundTripCounter {
        let counts = Arc::new(Counts::default());
        let relay = TcpRelay::start(target, Arc::new(CountingTap(counts.clone()))).await;
        RoundTripCounter {
            address: relay.address,
            counts,
        }
    }

    fn turns(&self) -> usize {
        self.counts.turns.load(Ordering::SeqCst)
    }

    fn executes(&self) -> usize {
        self.counts.executes.load(Ordering::SeqCst)
    }
}

/// A Task without a uniqueness key: a draft's task identifier is checked against the stored
/// ones first, which costs its create one more round trip (lock and lookup).
fn round_trip_task(n: usize) -> Value {
    let mut task = dsf_tests::fixtures::ping_task(
        "requested",
        "2026-11-28T10:00:00+01:00",
        dsf_tests::REMOTE_ORG,
    );
    task["description"] = json!(format!("trip-{n}"));
    task
}

/// A store on a fresh PostgreSQL schema, reached through the round-trip counter with at most
/// `connections` connections.
async fn store_through(counter: &RoundTripCounter, connections: usize) -> ResourceStore {
    let schema = format!("dsf_test_{}", uuid::Uuid::new_v4().simple());
    let backend = PostgresBackend::connect(
        &postgres_url_at(counter.address),
        Some(&schema),
        connections,
    )
    .await
    .expect("PostgreSQL through the counting proxy");
    ResourceStore::new(Arc::new(backend), conformance::BASE_URL)
}

/// Round trips to PostgreSQL per interaction, once the connection is open and its statements
/// prepared: a create (BEGIN, version, index and read-access rows, COMMIT) is one, a read
/// one, an update two (lock and current version, then the writes and COMMIT).
async fn postgres_round_trips(counter: &RoundTripCounter) {
    let store = store_through(counter, 1).await;
    let update = |id: &str, n| WriteOp::Update {
        resource_type: "Task",
        id: id.to_owned(),
        resource: round_trip_task(n),
        if_match: None,
        full_url: None,
    };
    // Warm-up: the pooled connection and every statement below prepared once.
    let warm = create_task(&store, 0).await;
    store.read("Task", &warm).await.expect("read");
    store.write(update(&warm, 1)).await.expect("update");

    for n in 2..6 {
        let before = counter.turns();
        let id = create_task(&store, n).await;
        assert_eq!(counter.turns() - before, 1, "round trips of create {n}");

        let before = counter.turns();
        let read = store.read("Task", &id).await.expect("read");
        assert!(read.is_some_and(|r| r.version == 1));
        assert_eq!(counter.turns() - before, 1, "round trips of read {n}");

        let before = counter.turns();
        store.write(update(&id, n)).await.expect("update");
        assert_eq!(counter.turns() - before, 2, "round trips of update {n}");
    }
}

/// Round trips of 32 concurrent reads by id, once the shared connections are open and their
/// statement prepared: they go out together on the connections point lookups share, not
/// one per pooled connection.
async fn concurrent_reads_round_trips(counter: &RoundTripCounter) {
    let store = store_through(counter, 16).await;
    let mut ids = Vec::new();
    for n in 0..32 {
        ids.push(create_task(&store, n).await);
    }
    // Warm-up, one by one: every shared connection opened and its statement prepared.
    for id in ids.iter().take(8) {
        store.read("Task", id).await.expect("read");
    }
    let (before, executed) = (counter.turns(), counter.executes());
    let reads = futures_util::future::join_all(ids.iter().map(|id| store.read("Task", id))).await;
    let turns = counter.turns() - before;
    let statements = counter.executes() - executed;
    for (read, id) in reads.into_iter().zip(&ids) {
        assert!(read.expect("read").is_some_and(|r| &r.id == id));
    }
    assert!(
        turns <= 8,
        "32 concurrent reads by id took {turns} round trips; one per pooled connection would be 16 or more"
    );
    assert!(
        statements <= 2,
        "32 concurrent reads by id ran {statements} statements; batched, they are one"
    );
}

/// Point lookups of every kind, each answered alone (one at a time) and then all at once,
/// when they go out in batches: the answers must be the same.
async fn batched_lookups_answer_as_alone(counter: &RoundTripCounter) {
    use dsf_fhir::access::ReadGrants;
    let store = store_through(counter, 16).await;
    let local = ReadGrants::new(vec!["LOCAL".into()]);
    let stranger = ReadGrants::new(vec!["ORGANIZATION|stranger.org".into()]);
    let tasks = [create_task(&store, 0).await, create_task(&store, 1).await];
    let document = create(
        &store,
        json!({"resourceType": "DocumentReference", "status": "current",
        "meta": {"tag": [{"system": dsf_fhir::access::READ_ACCESS_TAG_SYSTEM, "code": "LOCAL"}]},
        "content": [{"attachment": {"url": "urn:x"}}]}),
    )
    .await;
    let binary = |context: &str| {
        json!({"resourceType": "Binary", "contentType": "text/plain",
        "data": "aGk=", "securityContext": {"reference": context}})
    };
    let readable = create(&store, binary(&format!("DocumentReference/{document}"))).await;
    let hidden = create(&store, binary("DocumentReference/missing")).await;
    store
        .write(WriteOp::Update {
            resource_type: "Task",
            id: tasks[1].clone(),
            resource: round_trip_task(1),
            if_match: None,
            full_url: None,
        })
        .await
        .expect("update");

    type Found = Option<(String, i64)>;
    let lookups = |store: &ResourceStore| {
        let store = store.clone();
        let (local, stranger) = (local.clone(), stranger.clone());
        let (tasks, readable, hidden) = (tasks.clone(), readable.clone(), hidden.clone());
        let document = document.clone();
        let mut all: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Found>>>> = Vec::new();
        let found = |r: dsf_fhir::Result<Option<dsf_fhir::store::StoredResource>>| {
            r.expect("lookup")
                .map(|r| (format!("{}/{}", r.resource_type, r.id), r.version))
        };
        for round in 0..3 {
            for id in tasks.iter().cloned().chain([format!("missing-{round}")]) {
                let s = store.clone();
                let i = id.clone();
                all.push(Box::pin(async move { found(s.read("Task", &i).await) }));
                let (s, i) = (store.clone(), id.clone());
                all.push(Box::pin(async move { found(s.vread("Task", &i, 1).await) }));
                let (s, i) = (store.clone(), id.clone());
                all.push(Box::pin(async move { found(s.vread("Task", &i, 2).await) }));
                for grants in [&local, &stranger] {
                    let (s, i, g) = (store.clone(), id.clone(), grants.clone());
                    all.push(Box::pin(async move {
                        found(s.read_visible("Task", &i, &g).await)
                    }));
                    let (s, i, g) = (store.clone(), id.clone(), grants.clone());
                    all.push(Box::pin(async move {
                        found(s.vread_visible("Task", &i, 1, &g).await)
                    }));
                }
            }
            for (kind, id) in [
                ("Binary", &readable),
                ("Binary", &hidden),
                ("DocumentReference", &document),
            ] {
                for grants in [&local, &stranger] {
                    let (s, i, g) = (store.clone(), id.clone(), grants.clone());
                    all.push(Box::pin(async move {
                        found(s.read_visible(kind, &i, &g).await)
                    }));
                }
            }
        }
        all
    };
    let mut alone = Vec::new();
    for lookup in lookups(&store) {
        alone.push(lookup.await);
    }
    assert!(alone.iter().any(Option::is_some) && alone.iter().any(Option::is_none));
    assert!(
        alone.contains(&Some((format!("Binary/{readable}"), 1))),
        "the Binary is readable through its security context"
    );
    let lookups = lookups(&store);
    let count = lookups.len();
    let executed = counter.executes();
    let together = futures_util::future::join_all(lookups).await;
    let statements = counter.executes() - executed;
    assert_eq!(together, alone, "batched lookups answered differently");
    assert!(
        statements < count / 4,
        "{count} concurrent point lookups ran {statements} statements"
    );
}

/// A write once the connection's statement cache is full (a long-running server meets a
/// statement it has not prepared among some it has): it must still find every statement.
async fn writes_with_a_full_statement_cache() {
    let schema = format!("dsf_test_{}", uuid::Uuid::new_v4().simple());
    let backend = PostgresBackend::connect(&postgres_url_at(postgres_address()), Some(&schema), 1)
        .await
        .expect("PostgreSQL");
    let store = ResourceStore::new(Arc::new(backend), conformance::BASE_URL);
    // Searches with lists of every length fill the one connection's cache with texts of
    // their own, and updates with ever more identifiers (index rows inserted by a text for
    // each count) meet it full while holding some of their statements.
    let id = create_task(&store, 0).await;
    let list = |prefix: &str, n| {
        (0..n)
            .map(|i| format!("{prefix}{i}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    for n in 0..400 {
        let criteria = format!(
            "Task?identifier={}&status={}",
            list("i", n % 23 + 1),
            list("s", n / 23 + 1)
        );
        let query =
            dsf_fhir::search::SearchQuery::parse_criteria("Task", &criteria, conformance::BASE_URL)
                .expect("criteria");
        store.search(&query).await.expect("search");
        let mut task = round_trip_task(n);
        task["identifier"] = (0..=n)
            .map(|i| json!({"system": "urn:test", "value": format!("{n}-{i}")}))
            .collect();
        store
            .write(WriteOp::Update {
                resource_type: "Task",
                id: id.clone(),
                resource: task,
                if_match: None,
                full_url: None,
            })
            .await
            .expect("update");
    }
}

/// A relay tap that a test can cut: while cut, new connections are refused and the bytes of
/// open ones end their connection, as when the database host goes away.
#[derive(Default)]
struct Cuttable {
    cut: Arc<AtomicBool>,
}

struct CuttableConnection(Arc<AtomicBool>);

impl Tap for Cuttable {
    fn connection(&self) -> Option<Arc<dyn ConnectionTap>> {
        if self.cut.load(Ordering::SeqCst) {
            return None;
        }
        Some(Arc::new(CuttableConnection(self.cut.clone())))
    }
}

impl ConnectionTap for CuttableConnection {
    fn passing(&self, _: Direction, _: &[u8]) -> Verdict {
        if self.0.load(Ordering::SeqCst) {
            Verdict::Close
        } else {
            Verdict::Pass
        }
    }

    fn idle(&self, _: Direction) -> bool {
        !self.0.load(Ordering::SeqCst)
    }
}

/// The readiness check follows the database: it answers while PostgreSQL is reachable,
/// fails (within its statement time-out, not hanging) while the connection is cut, and
/// answers again once PostgreSQL is back, on fresh connections.
async fn readiness_follows_the_database() {
    let tap = Cuttable::default();
    let cut = tap.cut.clone();
    let relay = TcpRelay::start(postgres_address(), Arc::new(tap)).await;
    let schema = format!("dsf_test_{}", uuid::Uuid::new_v4().simple());
    let backend = PostgresBackend::connect(&postgres_url_at(relay.address), Some(&schema), 2)
        .await
        .expect("PostgreSQL through the relay");
    let store = ResourceStore::new(Arc::new(backend), conformance::BASE_URL);
    store.check_database().await.expect("ready while connected");
    let id = create_task(&store, 0).await;

    cut.store(true, Ordering::SeqCst);
    let checked = tokio::time::timeout(Duration::from_secs(60), store.check_database()).await;
    match checked {
        Ok(Err(_)) => {}
        Ok(Ok(())) => panic!("ready although the database is cut off"),
        Err(_) => panic!("the readiness check hung while the database was cut off"),
    }

    cut.store(false, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = store.check_database().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready again after the database came back: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = store
        .read("Task", &id)
        .await
        .expect("read after reconnecting");
    assert!(read.is_some(), "the Task written before the cut is there");
}

async fn create(store: &ResourceStore, resource: Value) -> String {
    match store
        .write(WriteOp::Create {
            resource,
            if_none_exist: None,
            full_url: None,
        })
        .await
        .expect("create")
    {
        dsf_fhir::store::WriteOutcome::Created(stored) => stored.id,
        other => panic!("not created: {other:?}"),
    }
}

/// Runs `test` with a round-trip counter in front of PostgreSQL on a runtime of one thread,
/// so that every statement sent together is queued before the connection task writes: the
/// count does not depend on thread timing.
async fn on_one_thread<F, Fut>(test: F)
where
    F: FnOnce(RoundTripCounter) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    tokio::task::spawn_blocking(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                test(RoundTripCounter::start(postgres_address()).await).await;
            })
    })
    .await
    .expect("round-trip test");
}

/// A store on a fresh SQLite file, with the reader connections the embedded default has.
fn sqlite_file_store(dir: &tempfile::TempDir, max_snapshot_age: Duration) -> ResourceStore {
    let backend = SqliteBackend::open(&dir.path().join("fhir.sqlite"))
        .expect("SQLite file")
        .max_snapshot_age(max_snapshot_age);
    ResourceStore::new(Arc::new(backend), conformance::BASE_URL)
}

/// Another process's store on the same file.
fn second_process(dir: &tempfile::TempDir) -> ResourceStore {
    sqlite_file_store(dir, Duration::from_secs(3600))
}

async fn create_task(store: &ResourceStore, n: usize) -> String {
    create(store, round_trip_task(n)).await
}

/// Reads `id` on every reader connection (they are taken in turn) and says on how many it
/// was found.
async fn found_on_readers(store: &ResourceStore, id: &str) -> usize {
    let mut found = 0;
    for _ in 0..8 {
        if store.read("Task", id).await.expect("read").is_some() {
            found += 1;
        }
    }
    found
}

/// A store on a fresh file with one Task, read on every reader, so that each holds a snapshot.
async fn store_with_open_snapshots(max_age: Duration) -> (tempfile::TempDir, ResourceStore) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = sqlite_file_store(&dir, max_age);
    let first = create_task(&store, 0).await;
    assert_eq!(found_on_readers(&store, &first).await, 8);
    (dir, store)
}

/// Readers keep their snapshot between reads: what another process commits is not seen
/// until this process commits (or the snapshot's age runs out), and what this process
/// commits is seen by the very next read on every reader.
async fn readers_keep_a_snapshot_until_this_process_commits() {
    let (dir, store) = store_with_open_snapshots(Duration::from_secs(3600)).await;

    let outside = create_task(&second_process(&dir), 1).await;
    assert_eq!(
        found_on_readers(&store, &outside).await,
        0,
        "the readers started a read transaction per read instead of keeping their snapshot"
    );

    let own = create_task(&store, 2).await;
    assert_eq!(
        found_on_readers(&store, &own).await,
        8,
        "own commit not seen"
    );
    assert_eq!(found_on_readers(&store, &outside).await, 8);
}

/// What another process commits is seen once a snapshot is older than its maximum age.
async fn snapshots_age_out() {
    let (dir, store) = store_with_open_snapshots(Duration::from_millis(50)).await;
    let outside = create_task(&second_process(&dir), 1).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(found_on_readers(&store, &outside).await, 8);
}

/// Readers that are idle when this process commits give up their snapshot, so a checkpoint
/// can copy every committed page into the database file and the WAL does not grow while
/// the server only writes.
async fn idle_readers_do_not_pin_the_wal() {
    let (dir, store) = store_with_open_snapshots(Duration::from_secs(3600)).await;
    for n in 1..20 {
        create_task(&store, n).await;
    }
    let outside = rusqlite::Connection::open(dir.path().join("fhir.sqlite")).expect("open");
    let (busy, wal_frames, checkpointed): (i64, i64, i64) = outside
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!(busy, 0);
    assert_eq!(
        checkpointed, wal_frames,
        "an idle reader's snapshot held back the checkpoint"
    );
}

fn main() {
    let mut suite = dsf_tests::Suite::new();
    for case in conformance::cases() {
        suite = suite.on_both_backends(case.name, move |kind| async move {
            (case.run)(ResourceStore::new(
                backend(kind).await,
                conformance::BASE_URL,
            ))
            .await
        });
        let name = format!("{}_on_an_outside_backend", case.name);
        suite = suite.on_both_backends(&name, move |kind| async move {
            let sessions = Arc::new(AtomicUsize::new(0));
            let outside = CountingBackend {
                inner: backend(kind).await,
                sessions: sessions.clone(),
            };
            (case.run)(ResourceStore::new(Arc::new(outside), conformance::BASE_URL)).await;
            assert!(
                sessions.load(Ordering::Relaxed) > 0,
                "the store did not go through the outside backend"
            );
        });
    }
    for case in conformance::cases() {
        // The embedded default: a file with reader connections of their own.
        suite = suite.test(&format!("sqlite_file::{}", case.name), move || async move {
            let dir = tempfile::tempdir().expect("temporary directory");
            (case.run)(sqlite_file_store(&dir, Duration::from_millis(100))).await;
        });
    }
    suite
        .test(
            "sqlite_file::readers_keep_a_snapshot_until_this_process_commits",
            readers_keep_a_snapshot_until_this_process_commits,
        )
        .test("sqlite_file::snapshots_age_out", snapshots_age_out)
        .test(
            "sqlite_file::idle_readers_do_not_pin_the_wal",
            idle_readers_do_not_pin_the_wal,
        )
        .postgres_test("postgres::writes_are_pipelined", || {
            on_one_thread(|counter| async move { postgres_round_trips(&counter).await })
        })
        .postgres_test("postgres::concurrent_reads_by_id_share_round_trips", || {
            on_one_thread(|counter| async move { concurrent_reads_round_trips(&counter).await })
        })
        .postgres_test(
            "postgres::writes_with_a_full_statement_cache",
            writes_with_a_full_statement_cache,
        )
        .postgres_test(
            "postgres::readiness_follows_the_database",
            readiness_follows_the_database,
        )
        .postgres_test("postgres::batched_lookups_answer_as_alone", || {
            on_one_thread(|counter| async move { batched_lookups_answer_as_alone(&counter).await })
        })
        .run()
}
