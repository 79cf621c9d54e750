//! The conformance suite of storage backends: what every [`Backend`](super::Backend) must do
//! for the store to keep its promises (versions and tombstones, atomic transactions, one
//! resource from racing conditional creates, no lost updates, failures isolated from each
//! other). The SQLite and PostgreSQL backends pass it in this workspace's tests; a backend
//! written outside the crate runs the same cases:
//!
//! ```no_run
//! # async fn check(my_backend: impl Fn() -> std::sync::Arc<dyn dsf_fhir::store::Backend>) {
//! use dsf_fhir::store::{conformance, ResourceStore};
//! for case in conformance::cases() {
//!     // A fresh, empty store for every case.
//!     let store = ResourceStore::new(my_backend(), conformance::BASE_URL);
//!     (case.run)(store).await; // panics, naming what failed, if the backend falls short
//! }
//! # }
//! ```
//!
//! The cases panic on failure, as tests do; this module is built only with the
//! `conformance` feature.

use crate::search::SearchQuery;
use crate::store::{HistoryFilter, ResourceStore, WriteOp, WriteOutcome};
use crate::Error;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;

/// The base URL the cases' stores are made with.
pub const BASE_URL: &str = "https://store.test/fhir";
const BASE: &str = BASE_URL;

/// One case of the suite: run it on a fresh, empty store.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name, for the report.
    pub name: &'static str,
    /// Runs the case on the store it is given.
    pub run: fn(ResourceStore) -> Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Every case, in a stable order.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "versions_and_tombstones",
            run: |store| Box::pin(versions_and_tombstones(store)),
        },
        Case {
            name: "failed_transaction_leaves_nothing",
            run: |store| Box::pin(failed_transaction_leaves_nothing(store)),
        },
        Case {
            name: "parallel_conditional_creates_make_one_resource",
            run: |store| Box::pin(parallel_conditional_creates_make_one_resource(store)),
        },
        Case {
            name: "parallel_updates_never_lose_a_version",
            run: |store| Box::pin(parallel_updates_never_lose_a_version(store)),
        },
        Case {
            name: "concurrent_failures_stay_isolated",
            run: |store| Box::pin(concurrent_failures_stay_isolated(store)),
        },
        Case {
            name: "database_check_answers",
            run: |store| Box::pin(database_check_answers(store)),
        },
    ]
}

fn org(identifier: &str) -> Value {
    json!({
        "resourceType": "Organization",
        "identifier": [{"system": "http://dsf.dev/sid/organization-identifier", "value": identifier}],
        "active": true
    })
}

fn criteria(identifier: &str) -> SearchQuery {
    SearchQuery::parse_criteria(
        "Organization",
        &format!("identifier=http://dsf.dev/sid/organization-identifier|{identifier}"),
        BASE,
    )
    .unwrap()
}

async fn count(store: &ResourceStore, identifier: &str) -> i64 {
    let mut q = criteria(identifier);
    q.summary_count = true;
    store.search(&q).await.unwrap().total
}

/// The readiness check ([`ResourceStore::check_database`]) succeeds on a working database.
async fn database_check_answers(store: ResourceStore) {
    if let Err(e) = store.check_database().await {
        panic!("the database check failed on a working database: {e}");
    }
}

async fn versions_and_tombstones(store: ResourceStore) {
    let WriteOutcome::Created(v1) = store
        .write(WriteOp::Create {
            resource: org("v.test"),
            if_none_exist: None,
            full_url: None,
        })
        .await
        .unwrap()
    else {
        panic!("not created")
    };
    assert_eq!(v1.version, 1);
    let mut changed = v1.json().unwrap();
    changed["name"] = json!("changed");
    let op = |resource: Value, if_match| WriteOp::Update {
        resource_type: "Organization",
        id: v1.id.clone(),
        resource,
        if_match,
        full_url: None,
    };
    let WriteOutcome::Updated(v2) = store.write(op(changed.clone(), Some(1))).await.unwrap() else {
        panic!("not updated")
    };
    assert_eq!(v2.version, 2);
    assert_eq!(v2.json().unwrap()["meta"]["versionId"], "2");
    assert!(matches!(
        store.write(op(changed.clone(), Some(1))).await,
        Err(Error::VersionConflict(_))
    ));
    let WriteOutcome::Deleted(tomb) = store
        .write(WriteOp::Delete {
            resource_type: "Organization",
            id: v1.id.clone(),
        })
        .await
        .unwrap()
    else {
        panic!("not deleted")
    };
    assert!(tomb.deleted && tomb.version == 3 && tomb.body.is_none());
    assert!(
        store
            .read("Organization", &v1.id)
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
    assert_eq!(
        count(&store, "v.test").await,
        0,
        "deleted resources are not found by search"
    );
    assert_eq!(
        store
            .vread("Organization", &v1.id, 1)
            .await
            .unwrap()
            .unwrap()
            .json()
            .unwrap()["active"],
        true
    );
    let history = store
        .history(
            &HistoryFilter {
                id: Some(v1.id.clone()),
                ..Default::default()
            },
            10,
            1,
        )
        .await
        .unwrap();
    assert_eq!(
        history
            .entries
            .iter()
            .map(|e| e.version)
            .collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert!(matches!(
        store
            .write(WriteOp::Delete {
                resource_type: "Organization",
                id: "missing".into()
            })
            .await,
        Err(Error::NotFound(_))
    ));
}

async fn failed_transaction_leaves_nothing(store: ResourceStore) {
    let ops = vec![
        WriteOp::Create {
            resource: org("tx1.test"),
            if_none_exist: None,
            full_url: None,
        },
        WriteOp::Create {
            resource: org("tx2.test"),
            if_none_exist: None,
            full_url: None,
        },
        WriteOp::Update {
            resource_type: "Organization",
            id: "does-not-exist".into(),
            resource: json!({"resourceType": "Organization", "id": "does-not-exist"}),
            if_match: None,
            full_url: None,
        },
    ];
    let err = store.transaction(ops).await.unwrap_err();
    assert!(
        matches!(err, Error::MethodNotAllowed(ref m) if m.starts_with("operation 2")),
        "{err}"
    );
    assert_eq!(count(&store, "tx1.test").await, 0);
    assert_eq!(count(&store, "tx2.test").await, 0);
    let history = store
        .history(&HistoryFilter::default(), 10, 1)
        .await
        .unwrap();
    assert_eq!(history.total, 0);
    // The store is still usable afterwards.
    store
        .write(WriteOp::Create {
            resource: org("tx1.test"),
            if_none_exist: None,
            full_url: None,
        })
        .await
        .unwrap();
    assert_eq!(count(&store, "tx1.test").await, 1);
}

async fn parallel_conditional_creates_make_one_resource(store: ResourceStore) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(WriteOp::Create {
                        resource: org("race.test"),
                        if_none_exist: Some(criteria("race.test")),
                        full_url: None,
                    })
                    .await
            })
        })
        .collect();
    let mut created = 0;
    let mut existing = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            WriteOutcome::Created(_) => created += 1,
            WriteOutcome::Existing(_) => existing += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((created, existing), (1, 15));
    assert_eq!(count(&store, "race.test").await, 1);
}

async fn parallel_updates_never_lose_a_version(store: ResourceStore) {
    let WriteOutcome::Created(v1) = store
        .write(WriteOp::Create {
            resource: org("upd.test"),
            if_none_exist: None,
            full_url: None,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    let body = v1.json().unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = store.clone();
            let mut body = body.clone();
            body["name"] = json!(format!("n{i}"));
            let id = v1.id.clone();
            tokio::spawn(async move {
                store
                    .write(WriteOp::Update {
                        resource_type: "Organization",
                        id,
                        resource: body,
                        if_match: None,
                        full_url: None,
                    })
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::VersionConflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let current = store.read("Organization", &v1.id).await.unwrap().unwrap();
    assert_eq!(
        current.version,
        1 + ok,
        "every acknowledged update is a version"
    );
    let history = store
        .history(
            &HistoryFilter {
                id: Some(v1.id.clone()),
                ..Default::default()
            },
            100,
            1,
        )
        .await
        .unwrap();
    assert_eq!(history.total, current.version);
}

/// Concurrent writes may be committed together; one that fails must not take the others with
/// it, and none of its own operations may remain.
async fn concurrent_failures_stay_isolated(store: ResourceStore) {
    let jobs: Vec<_> = (0..30)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ops = vec![WriteOp::Create {
                    resource: org(&format!("iso-{i}.test")),
                    if_none_exist: None,
                    full_url: None,
                }];
                if i % 3 == 0 {
                    ops.push(WriteOp::Delete {
                        resource_type: "Organization",
                        id: format!("missing-{i}"),
                    });
                }
                (i, store.transaction(ops).await)
            })
        })
        .collect();
    for job in jobs {
        let (i, result) = job.await.unwrap();
        let expected = if i % 3 == 0 { 0 } else { 1 };
        assert_eq!(result.is_ok(), expected == 1, "job {i}: {result:?}");
        assert_eq!(
            count(&store, &format!("iso-{i}.test")).await,
            expected,
            "job {i}"
        );
    }
}
