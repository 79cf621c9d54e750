//! The same behaviour from both storage backends, below the REST layer.

use dsf_fhir::search::SearchQuery;
use dsf_fhir::store::HistoryFilter;
use dsf_fhir::{Error, ResourceStore, WriteOp, WriteOutcome};
use dsf_tests::{backend, BackendKind};
use serde_json::{json, Value};

const BASE: &str = "https://store.test/fhir";

async fn store(kind: BackendKind) -> ResourceStore {
    ResourceStore::new(backend(kind).await, BASE)
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

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = suite.on_both_backends("versions_and_tombstones", |kind| async move {
        versions_and_tombstones(store(kind).await).await
    });
    let suite = suite.on_both_backends("failed_transaction_leaves_nothing", |kind| async move {
        failed_transaction_leaves_nothing(store(kind).await).await
    });
    let suite =
        suite.on_both_backends(
            "parallel_conditional_creates_make_one_resource",
            |kind| async move {
                parallel_conditional_creates_make_one_resource(store(kind).await).await
            },
        );
    let suite = suite
        .on_both_backends("parallel_updates_never_lose_a_version", |kind| async move {
            parallel_updates_never_lose_a_version(store(kind).await).await
        });
    let suite = suite.on_both_backends("concurrent_failures_stay_isolated", |kind| async move {
        concurrent_failures_stay_isolated(store(kind).await).await
    });
    suite.run()
}
