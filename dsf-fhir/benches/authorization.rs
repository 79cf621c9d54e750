//! `cargo bench -p dsf-fhir --bench authorization`: what read-access filtering costs a search.
//!
//! 100,000 Tasks, 1% of them sent by the remote organisation that searches. Each search runs
//! three ways in the same run on the same database: unfiltered (the baseline), as the remote
//! organisation (may read 1%) and as the local organisation (may read all). The target is a
//! filtered search no more than 2x the unfiltered one.
//!
//! SQLite always; PostgreSQL too when `DSF_BENCH_POSTGRES_URL` is set.

// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use dsf_fhir::search::{parse_query_string, SearchQuery};
use dsf_fhir::server::{Identity, IdentityKind};
use dsf_fhir::store::{Backend, PostgresBackend, SqliteBackend};
use dsf_fhir::{ResourceStore, WriteOp};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const TASKS: usize = 100_000;
const REMOTE: &str = "remote.test";
const LOCAL: &str = "local.test";

fn task(n: usize) -> Value {
    // Every 100th Task comes from the remote organisation, the others from 50 others.
    let requester = if n.is_multiple_of(100) {
        REMOTE.to_owned()
    } else {
        format!("org-{}.test", n % 50)
    };
    let status = if n.is_multiple_of(10) {
        "completed"
    } else {
        "requested"
    };
    json!({
        "resourceType": "Task",
        "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0"]},
        "instantiatesCanonical": "http://dsf.dev/bpe/Process/ping|1.0",
        "identifier": [{"system": "http://dsf.dev/sid/task-identifier", "value": format!("t-{n}")}],
        "status": status,
        "intent": "order",
        "authoredOn": "2026-11-25T10:00:00+01:00",
        "requester": {"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": requester}},
        "restriction": {"recipient": [{"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": LOCAL}}]},
        "input": [{"type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "message-name"}]}, "valueString": "startPing"}]
    })
}

async fn seed(store: &ResourceStore) {
    for chunk in (0..TASKS).collect::<Vec<_>>().chunks(2_000) {
        let ops = chunk
            .iter()
            .map(|n| WriteOp::Create {
                resource: task(*n),
                if_none_exist: None,
                full_url: None,
            })
            .collect();
        store.transaction(ops).await.expect("seed");
    }
}

fn bench_backend(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    backend: Arc<dyn Backend>,
) {
    let store = ResourceStore::new(backend, "https://local.test/fhir");
    rt.block_on(seed(&store));
    let remote =
        Identity::organization(IdentityKind::RemoteOrganization, REMOTE.into(), Vec::new());
    let local = Identity::organization(IdentityKind::LocalOrganization, LOCAL.into(), Vec::new());
    let searches = [
        ("Task?_count=20 (first page and total)", "_count=20"),
        (
            "Task?status=requested&_count=20",
            "status=requested&_count=20",
        ),
        (
            "Task?identifier=…|t-4200 (1 hit)",
            "identifier=http://dsf.dev/sid/task-identifier|t-4200",
        ),
    ];
    let mut group = c.benchmark_group(format!("search over {TASKS} Tasks, {name}"));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for (label, criteria) in searches {
        let base =
            SearchQuery::parse("Task", &parse_query_string(criteria), 20, "").expect("criteria");
        for (caller, grants) in [
            ("unfiltered", None),
            ("remote org (may read 1%)", Some(remote.grants.clone())),
            ("local org (may read all)", Some(local.grants.clone())),
        ] {
            let mut query = base.clone();
            query.visible_to = grants;
            let store = store.clone();
            group.bench_function(format!("{label}: {caller}"), |b| {
                b.iter(|| rt.block_on(store.search(&query)).expect("search"))
            });
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteBackend::open(&dir.path().join("authorization.sqlite")).expect("SQLite");
    bench_backend(c, &rt, "SQLite", Arc::new(sqlite));
    if let Ok(url) = std::env::var("DSF_BENCH_POSTGRES_URL") {
        let schema = format!("dsf_bench_{}", uuid::Uuid::new_v4().simple());
        let postgres = rt
            .block_on(PostgresBackend::connect(&url, Some(&schema), 4))
            .expect("PostgreSQL");
        bench_backend(c, &rt, "PostgreSQL", Arc::new(postgres));
    }
}

criterion_group!(authorization, benches);
criterion_main!(authorization);
