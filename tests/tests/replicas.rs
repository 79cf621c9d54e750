//! Organisations outgrowing one machine: two FHIR server processes and two BPEs per
//! organisation on one PostgreSQL database, behind one base URL. Ping-pong goes on while
//! servers and BPEs are killed and restarted; an allow-list change made through one server
//! is honoured by the other; a write through one server reaches the other's subscribers,
//! also when its listening connection was cut.

use dsf_fhir::server::AllowListEntry;
use dsf_fhir::store::{PostgresBackend, WriteOp};
use dsf_fhir::ResourceStore;
use dsf_plugin_api::task::{business_key, message_name};
use dsf_plugin_api::PluginDefinition;
use dsf_plugin_ping_pong as ping_pong;
use dsf_tests::replicas::{self, ReplicatedOrganization};
use dsf_tests::tasks::{ping_statuses, start_task, tasks_of};
use dsf_tests::{postgres_url, Suite};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Suite::new()
        .postgres_test(
            "ping_pong_goes_on_while_servers_and_bpes_are_killed_and_restarted",
            ping_pong_goes_on_while_servers_and_bpes_are_killed_and_restarted,
        )
        .postgres_test(
            "an_allow_list_change_through_one_server_is_honoured_by_the_other_within_a_second",
            an_allow_list_change_through_one_server_is_honoured_by_the_other_within_a_second,
        )
        .postgres_test(
            "another_servers_writes_are_announced_also_after_a_missed_notification",
            another_servers_writes_are_announced_also_after_a_missed_notification,
        )
        .postgres_test(
            "versions_and_uniqueness_hold_across_server_processes",
            versions_and_uniqueness_hold_across_server_processes,
        )
        .postgres_test(
            "a_server_refuses_a_store_a_newer_server_moved_further",
            a_server_refuses_a_store_a_newer_server_moved_further,
        )
        .postgres_test(
            "a_killed_bpes_work_is_taken_over_by_the_other_within_seconds",
            a_killed_bpes_work_is_taken_over_by_the_other_within_seconds,
        )
        .run()
}

fn plugins() -> Vec<PluginDefinition> {
    vec![ping_pong::plugin()]
}

/// Starts a ping on `org` through its relay, retrying while a killed replica's connection
/// is cut under the request.
async fn start_ping(org: &ReplicatedOrganization) {
    let task = start_task(org, "ping", "task-start-ping", "startPing", vec![]);
    for _ in 0..50 {
        match org.client.create::<Value>(&task).await {
            Ok(_) => return,
            Err(error) => {
                eprintln!("starting a ping on {}: {error}", org.identifier);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("cannot start a ping on {}", org.identifier);
}

/// Every Task on `org` but drafts, read from server replica 0.
async fn all_tasks(org: &ReplicatedOrganization) -> Vec<Value> {
    org.client_of(0)
        .search_pages("Task", "_count=500")
        .collect()
        .await
        .expect("search Tasks")
        .into_iter()
        .filter(|t| t["status"] != "draft")
        .collect()
}

async fn ping_pong_goes_on_while_servers_and_bpes_are_killed_and_restarted() {
    let (_pki, mut orgs) = replicas::start(2, 2, 2, plugins, |config| {
        // A pong delayed by a fail-over must not count as missing.
        config
            .plugin_config
            .push((ping_pong::PONG_TIMEOUT_PROPERTY.into(), "PT90S".into()));
        config.lease = Duration::from_secs(2);
    })
    .await;
    let rounds = 6;
    for round in 0..rounds {
        let org = round % 2;
        let other = 1 - org;
        let replica = (round / 2) % 2;
        start_ping(&orgs[0]).await;
        start_ping(&orgs[1]).await;
        // One server of one organisation and one BPE of the other die mid-traffic.
        orgs[org].kill_server(replica).await;
        orgs[other].kill_bpe(replica);
        tokio::time::sleep(Duration::from_millis(300)).await;
        start_ping(&orgs[org]).await;
        start_ping(&orgs[other]).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        orgs[org].start_server(replica).await;
        orgs[other].start_bpe(replica).await;
    }
    // Every ping started ends, each with its pong received.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut starts = Vec::new();
    for org in &orgs {
        loop {
            let mine: Vec<Value> = tasks_of(org, "ping")
                .await
                .into_iter()
                .filter(|t| message_name(t) == Some("startPing"))
                .collect();
            let open = mine
                .iter()
                .filter(|t| !matches!(t["status"].as_str(), Some("completed" | "failed")))
                .count();
            if open == 0 {
                starts.push(mine);
                break;
            }
            if Instant::now() > deadline {
                for org in &orgs {
                    for task in all_tasks(org).await {
                        if task["status"] != "completed" {
                            eprintln!("{}: {task:#}", org.identifier);
                        }
                    }
                }
                panic!("{open} pings on {} still running", org.identifier);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (i, mine) in starts.iter().enumerate() {
        let other = &orgs[1 - i];
        assert!(mine.len() >= 2 * rounds, "{} pings on org{i}", mine.len());
        let received_pings = tasks_of(other, "pong").await;
        let received_pongs: Vec<Value> = tasks_of(&orgs[i], "ping")
            .await
            .into_iter()
            .filter(|t| message_name(t) == Some("pong"))
            .collect();
        for start in mine {
            assert_eq!(start["status"], "completed", "{start:#}");
            assert_eq!(
                ping_statuses(start),
                vec![(other.identifier.clone(), "pong-received".to_owned())],
                "{start:#}"
            );
            let key = business_key(start).expect("business key");
            let with_key = |tasks: &[Value]| {
                tasks
                    .iter()
                    .filter(|t| business_key(t) == Some(key))
                    .count()
            };
            assert_eq!(with_key(&received_pings), 1, "one ping sent for {key}");
            assert_eq!(with_key(&received_pongs), 1, "one pong sent for {key}");
        }
    }
    // Nothing is left requested or in progress, and nothing failed.
    for org in &orgs {
        for task in all_tasks(org).await {
            assert_eq!(task["status"], "completed", "{task:#}");
        }
    }
    for org in &mut orgs {
        for bpe in org.bpes.iter_mut().filter_map(Option::take) {
            bpe.shutdown().await;
        }
    }
}

async fn an_allow_list_change_through_one_server_is_honoured_by_the_other_within_a_second() {
    let (pki, orgs) = replicas::start(1, 2, 0, plugins, |_| {}).await;
    let org = &orgs[0];
    let newcomer = pki.issue_client("newcomer").expect("certificate");
    let tls = Arc::new(pki.client_config(&newcomer).expect("TLS"));
    let through_second = dsf_fhir::FhirClient::new(
        &format!("https://localhost:{}/fhir", org.servers[1].port),
        tls,
    )
    .expect("client");
    assert!(
        through_second.search("Organization", "").await.is_err(),
        "not on the allow list yet"
    );
    let first = org.servers[0].server().expect("running");
    first
        .load_allow_list(&[AllowListEntry {
            identifier: "newcomer.test".into(),
            name: "Newcomer".into(),
            thumbprints: vec![newcomer.thumbprint()],
            base_url: "https://newcomer.test/fhir".into(),
        }])
        .await
        .expect("allow list");
    let changed = Instant::now();
    loop {
        if through_second.search("Organization", "").await.is_ok() {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the second server still refuses the newcomer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "the second server let the newcomer in {:?} after the first wrote it",
        changed.elapsed()
    );
    // Its identity is now known to the second server; deactivated through the first, it is
    // refused by the second within a second too.
    let found = org
        .client_of(0)
        .search(
            "Organization",
            "identifier=http://dsf.dev/sid/organization-identifier|newcomer.test",
        )
        .await
        .expect("search");
    let mut organization = found["entry"][0]["resource"].clone();
    organization["active"] = json!(false);
    org.client_of(0)
        .update::<Value>(&organization)
        .await
        .expect("deactivated");
    let changed = Instant::now();
    while through_second.search("Organization", "").await.is_ok() {
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the second server still lets the deactivated newcomer in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "the second server refused the deactivated newcomer {:?} after the first wrote it",
        changed.elapsed()
    );
}

async fn store_on(schema: &str) -> ResourceStore {
    let backend = PostgresBackend::connect(&postgres_url(), Some(schema), 4)
        .await
        .expect("PostgreSQL");
    ResourceStore::new(Arc::new(backend), "https://replicas.test/fhir")
}

fn task(note: &str) -> WriteOp {
    WriteOp::Create {
        resource: json!({
            "resourceType": "Task", "status": "requested", "intent": "order",
            "note": [{"text": note}]
        }),
        if_none_exist: None,
        full_url: None,
    }
}

/// Waits for a Task with `note` among the batches `changes` delivers.
async fn announced(changes: &mut dsf_fhir::store::ChangeReceiver, note: &str) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(batch) = changes.recv().await {
            if batch
                .iter()
                .any(|c| c.body.as_deref().is_some_and(|b| b.contains(note)))
            {
                return;
            }
        }
        panic!("the feed ended");
    })
    .await;
    assert!(found.is_ok(), "the Task '{note}' was not announced");
}

async fn another_servers_writes_are_announced_also_after_a_missed_notification() {
    let schema = format!("dsf_feed_{}", uuid::Uuid::new_v4().simple());
    let first = store_on(&schema).await;
    let second = store_on(&schema).await;
    let mut heard = second.changes();
    let generation = second.allow_list_generation();
    first.transaction(vec![task("one")]).await.expect("write");
    announced(&mut heard, "one").await;
    // The writer's own feed announces it once, not again when the notification returns.
    let mut own = first.changes();
    first.transaction(vec![task("two")]).await.expect("write");
    announced(&mut own, "two").await;
    announced(&mut heard, "two").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(own.try_recv().is_err(), "announced twice");
    // An Organization written through the first moves the second's allow-list generation.
    first
        .transaction(vec![WriteOp::Create {
            resource: json!({"resourceType": "Organization", "active": true, "name": "x"}),
            if_none_exist: None,
            full_url: None,
        }])
        .await
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(2);
    while second.allow_list_generation() == generation {
        assert!(Instant::now() < deadline, "allow-list generation unchanged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The listening connections are cut; what is written before they are back is caught up.
    let (admin, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let cut = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("dsf-fhir listen {}", channel_name(&schema))],
        )
        .await
        .expect("terminate");
    assert!(cut >= 2, "both listeners were cut");
    first.transaction(vec![task("three")]).await.expect("write");
    announced(&mut heard, "three").await;
    let mut tail = Vec::new();
    while let Ok(batch) = heard.try_recv() {
        tail.extend(batch.iter().cloned());
    }
    assert!(
        !tail
            .iter()
            .any(|c| c.body.as_deref().is_some_and(|b| b.contains("\"one\""))),
        "the catch-up announced an old version again"
    );
}

async fn versions_and_uniqueness_hold_across_server_processes() {
    let schema = format!("dsf_unique_{}", uuid::Uuid::new_v4().simple());
    let stores = [store_on(&schema).await, store_on(&schema).await];
    // Ten creates of one organisation identifier at once, through both processes: one wins.
    let organization = json!({
        "resourceType": "Organization", "active": true, "name": "Twin",
        "identifier": [{"system": "http://dsf.dev/sid/organization-identifier", "value": "twin.test"}]
    });
    let creates = (0..10).map(|i| {
        let store = stores[i % 2].clone();
        let resource = organization.clone();
        tokio::spawn(async move {
            store
                .transaction(vec![WriteOp::Create {
                    resource,
                    if_none_exist: None,
                    full_url: None,
                }])
                .await
                .is_ok()
        })
    });
    let mut created = 0;
    for create in creates {
        created += usize::from(create.await.expect("task"));
    }
    assert_eq!(created, 1, "the identifier is unique across processes");
    // Ten updates of one Task at once, through both processes: ten new versions, none lost.
    let written = stores[0]
        .transaction(vec![task("versions")])
        .await
        .expect("create");
    let dsf_fhir::store::WriteOutcome::Created(first) = &written[0] else {
        panic!("created");
    };
    let id = first.id.clone();
    let updates = (0..10).map(|i| {
        let store = stores[i % 2].clone();
        let id = id.clone();
        tokio::spawn(async move {
            let resource = json!({
                "resourceType": "Task", "id": id, "status": "requested", "intent": "order",
                "note": [{"text": format!("update {i}")}]
            });
            store
                .transaction(vec![WriteOp::Update {
                    resource_type: "Task",
                    id,
                    resource,
                    if_match: None,
                    full_url: None,
                }])
                .await
        })
    });
    for update in updates {
        update.await.expect("task").expect("update");
    }
    let filter = dsf_fhir::store::HistoryFilter {
        resource_type: Some("Task".into()),
        id: Some(id.clone()),
        ..Default::default()
    };
    let history = stores[1].history(&filter, 100, 0).await.expect("history");
    let mut versions: Vec<i64> = history.entries.iter().map(|v| v.version).collect();
    versions.sort();
    assert_eq!(versions, (1..=11).collect::<Vec<i64>>());
}

async fn a_server_refuses_a_store_a_newer_server_moved_further() {
    // A rolling upgrade: a newer server has moved the shared tables on; an older one
    // restarting on them says so instead of misreading them.
    let schema = format!("dsf_schema_{}", uuid::Uuid::new_v4().simple());
    drop(store_on(&schema).await);
    let (admin, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "INSERT INTO \"{schema}\".store_schema (version) VALUES (99)"
        ))
        .await
        .expect("a newer version");
    let Err(error) = PostgresBackend::connect(&postgres_url(), Some(&schema), 4).await else {
        panic!("a newer schema is refused");
    };
    assert!(error.to_string().contains("schema version 99"), "{error}");
}

/// The servers' channel name of `schema` (FNV-1a of the name, as `store::postgres` makes it).
fn channel_name(schema: &str) -> String {
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("dsf_changes_{hash:016x}")
}

async fn a_killed_bpes_work_is_taken_over_by_the_other_within_seconds() {
    let (_pki, mut orgs) = replicas::start(2, 1, 1, plugins, |_| {}).await;
    // org0's second BPE stops for good after recording its first send (the ping), before
    // sending it: it holds a claimed Task and an instance in the middle of a run.
    let crashed = Arc::new(AtomicBool::new(false));
    let hook_flag = crashed.clone();
    orgs[0].bpes.push(None);
    orgs[0]
        .start_bpe_with(1, move |config| {
            config.crash_at = Some(Arc::new(move |step: &str| {
                step == "send-recorded" && !hook_flag.swap(true, Ordering::SeqCst)
            }));
        })
        .await;
    for _ in 0..40 {
        start_ping(&orgs[0]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if crashed.load(Ordering::SeqCst) {
            break;
        }
    }
    assert!(
        crashed.load(Ordering::SeqCst),
        "the crashing BPE never got a ping"
    );
    orgs[0].kill_bpe(1);
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    loop {
        let starts: Vec<Value> = tasks_of(&orgs[0], "ping")
            .await
            .into_iter()
            .filter(|t| message_name(t) == Some("startPing"))
            .collect();
        if starts.iter().all(|t| t["status"] == "completed") {
            for start in &starts {
                assert_eq!(
                    ping_statuses(start),
                    vec![("org1.test".to_owned(), "pong-received".to_owned())]
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pings not completed: {starts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failover = killed.elapsed();
    eprintln!("the killed BPE's ping completed {failover:?} after the kill (lease 3 s)");
    assert!(failover < Duration::from_secs(5), "{failover:?}");
    // Its ping went out once.
    assert_eq!(
        tasks_of(&orgs[1], "pong").await.len(),
        tasks_of(&orgs[0], "ping")
            .await
            .iter()
            .filter(|t| message_name(t) == Some("startPing"))
            .count()
    );
}
