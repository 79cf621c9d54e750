//! `cargo bench -p dsf-fhir`: the store's create and read against raw SQLite statements on the
//! same database file in the same run, the cost of a uniqueness check (a draft Task against a
//! requested one), the cost of profile validation (a Task create with and without validating
//! it against the ping plugin's profile and the DSF base profiles), and the edge costs
//! (fhirbolt parse, index extraction).

// criterion_group! defines a public function it cannot document.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use dsf_fhir::format::{parse_resource, Format};
use dsf_fhir::search::{index_rows, SearchQuery};
use dsf_fhir::store::SqliteBackend;
use dsf_fhir::validation::{base_definitions, validate, Definitions};
use dsf_fhir::{ResourceStore, WriteOp, WriteOutcome};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn task(n: usize) -> Value {
    json!({
        "resourceType": "Task",
        "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0"]},
        "identifier": [{"system": "http://dsf.dev/sid/task-identifier", "value": format!("t-{n}")}],
        "instantiatesCanonical": "http://dsf.dev/bpe/Process/ping|1.0",
        "status": "requested",
        "intent": "order",
        "authoredOn": "2026-11-25T10:00:00+01:00",
        "requester": {"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "a.test"}},
        "restriction": {"recipient": [{"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "b.test"}}]},
        "input": [{"type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "message-name"}]}, "valueString": "startPing"}]
    })
}

/// Validated and unvalidated creates taken in turns, so that both meet the same disk and the
/// same machine load: the two criterion benches above run one after the other, and a commit's
/// fsync moves both by more than validation costs. Prints the medians and their ratio.
fn interleaved_validation_cost(
    rt: &tokio::runtime::Runtime,
    store: &ResourceStore,
    definitions: &Definitions,
    n: &mut usize,
) {
    const PAIRS: usize = 2_000;
    let create = |resource: Value| {
        let op = WriteOp::Create {
            resource,
            if_none_exist: None,
            full_url: None,
        };
        rt.block_on(store.write(op)).unwrap();
    };
    let mut plain = Vec::with_capacity(PAIRS);
    let mut validated = Vec::with_capacity(PAIRS);
    for pair in 0..PAIRS {
        for validating in [pair % 2 == 0, pair % 2 == 1] {
            *n += 1;
            let start = std::time::Instant::now();
            let resource = task(*n);
            if validating {
                assert!(validate(definitions, &resource).is_valid());
            }
            create(resource);
            let took = start.elapsed();
            if validating {
                validated.push(took);
            } else {
                plain.push(took);
            }
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (plain, validated) = (median(&mut plain), median(&mut validated));
    println!(
        "store create Task, validated / not, {PAIRS} interleaved pairs: median {:.0} µs / {:.0} µs = {:.3}",
        validated.as_secs_f64() * 1e6,
        plain.as_secs_f64() * 1e6,
        validated.as_secs_f64() / plain.as_secs_f64()
    );
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.sqlite");
    let store = ResourceStore::new(
        Arc::new(SqliteBackend::open(&db).unwrap()),
        "https://bench.test/fhir",
    );
    let body = serde_json::to_vec(&task(0)).unwrap();

    let mut edge = c.benchmark_group("edge");
    edge.bench_function("parse Task JSON (fhirbolt, strict)", |b| {
        b.iter(|| parse_resource(&body, Format::Json).unwrap())
    });
    let parsed = parse_resource(&body, Format::Json).unwrap();
    edge.bench_function("extract Task index rows", |b| {
        b.iter(|| index_rows("Task", &parsed, "https://bench.test/fhir"))
    });

    // What the server holds once the ping plugin is deployed: the DSF base profiles and
    // the plugin's Task profile (its placeholders filled as the BPE fills them).
    let ping_profile =
        include_str!("../../plugins/ping-pong/fhir/StructureDefinition-task-start-ping.json")
            .replace("#{version}", "1.0")
            .replace("#{date}", "2026-01-01");
    let definitions = Definitions::new(
        base_definitions()
            .into_iter()
            .map(|(_, resource)| resource)
            .chain([serde_json::from_str(&ping_profile).unwrap()]),
    );
    let report = validate(&definitions, &task(0));
    assert!(
        report.is_valid(),
        "the bench Task must be valid: {:?}",
        report.issues
    );
    edge.bench_function(
        "validate Task against task-start-ping (profiles compiled)",
        |b| b.iter(|| validate(&definitions, &task(0))),
    );
    edge.finish();

    let mut create = c.benchmark_group("create (one committed transaction each)");
    let mut n = 0;
    let mut last_id = String::new();
    create.bench_function("store create Task", |b| {
        b.iter(|| {
            n += 1;
            let op = WriteOp::Create {
                resource: task(n),
                if_none_exist: None,
                full_url: None,
            };
            if let WriteOutcome::Created(stored) = rt.block_on(store.write(op)).unwrap() {
                last_id = stored.id;
            }
        })
    });
    // What the server does for a Task create since profile validation: validate, then write.
    create.bench_function("store create Task, validated first", |b| {
        b.iter(|| {
            n += 1;
            let resource = task(n);
            assert!(validate(&definitions, &resource).is_valid());
            let op = WriteOp::Create {
                resource,
                if_none_exist: None,
                full_url: None,
            };
            rt.block_on(store.write(op)).unwrap()
        })
    });
    // A draft's task identifier is unique among the stored Tasks: its create takes a lock
    // and looks the identifier up first.
    create.bench_function("store create draft Task (uniqueness checked)", |b| {
        b.iter(|| {
            n += 1;
            let mut draft = task(n);
            draft["status"] = json!("draft");
            let op = WriteOp::Create {
                resource: draft,
                if_none_exist: None,
                full_url: None,
            };
            rt.block_on(store.write(op)).unwrap()
        })
    });
    let raw = rusqlite::Connection::open(&db).unwrap();
    raw.execute_batch("PRAGMA synchronous = FULL; CREATE TABLE IF NOT EXISTS raw_baseline (id TEXT PRIMARY KEY, body TEXT NOT NULL);").unwrap();
    let row = String::from_utf8(body.clone()).unwrap();
    create.bench_function("raw insert of the same JSON (baseline)", |b| {
        b.iter(|| {
            raw.execute_batch("BEGIN").unwrap();
            raw.execute(
                "INSERT INTO raw_baseline (id, body) VALUES (?1, ?2)",
                rusqlite::params![uuid::Uuid::new_v4().to_string(), row],
            )
            .unwrap();
            raw.execute_batch("COMMIT").unwrap();
        })
    });
    create.finish();
    interleaved_validation_cost(&rt, &store, &definitions, &mut n);

    let mut read = c.benchmark_group("read");
    read.bench_function("store read Task by id", |b| {
        b.iter(|| rt.block_on(store.read("Task", &last_id)).unwrap().unwrap())
    });
    let mut stmt = raw
        .prepare("SELECT body FROM raw_baseline LIMIT 1")
        .unwrap();
    read.bench_function("raw select of one row (baseline)", |b| {
        b.iter(|| stmt.query_row([], |r| r.get::<_, String>(0)).unwrap())
    });
    let query = SearchQuery::parse_criteria(
        "Task",
        "identifier=http://dsf.dev/sid/task-identifier|t-5",
        "",
    )
    .unwrap();
    read.bench_function("store token search (1 hit)", |b| {
        b.iter(|| rt.block_on(store.search(&query)).unwrap())
    });
    read.finish();
}

criterion_group! {
    name = store;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(30);
    targets = benches
}
criterion_main!(store);
