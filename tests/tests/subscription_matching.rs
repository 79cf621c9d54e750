//! Websocket subscriptions evaluate their criteria in memory (`SearchQuery::matches`); REST
//! searches run SQL. Both must agree: for a spread of stored resources and criteria, every
//! criteria string selects the same resources both ways, on both backends.

use dsf_fhir::search::{parse_query_string, SearchQuery};
use dsf_fhir::store::{format_instant, WriteOp, WriteOutcome};
use dsf_fhir::ResourceStore;
use dsf_tests::{backend, BackendKind};
use serde_json::{json, Value};
use std::collections::BTreeSet;

const BASE: &str = "https://dsf.test/fhir";
const ORG: &str = "http://dsf.dev/sid/organization-identifier";

fn tag() -> Value {
    json!([{"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": "ALL"}])
}

/// Tasks, Organizations, ActivityDefinitions and QuestionnaireResponses whose fields vary
/// with `i`, so that each criterion below matches some and misses others.
fn resources() -> Vec<Value> {
    let statuses = ["draft", "requested", "in-progress", "completed", "failed"];
    let mut out = Vec::new();
    for i in 0..40usize {
        let mut task = json!({
            "resourceType": "Task", "status": statuses[i % 5], "intent": "order",
            "authoredOn": format!("2024-0{}-1{}T10:00:00Z", 1 + i % 4, i % 10),
            "instantiatesCanonical": format!("http://dsf.dev/bpe/Process/p{}|1.{}", i % 3, i % 2),
            "meta": {"profile": [format!("http://dsf.dev/fhir/StructureDefinition/task-{}|1.0", i % 4)]},
            "requester": {"type": "Organization", "identifier": {"system": ORG, "value": format!("org-{}", i % 3)}},
            "restriction": {"recipient": [{"type": "Organization", "identifier": {"system": ORG, "value": "local.test"}}]},
        });
        if i % 7 == 1 {
            task["requester"]["identifier"] = json!({"value": "org-1"});
        }
        if i % 6 == 0 {
            task["identifier"] = json!([{"system": "http://dsf.dev/sid/task-identifier", "value": format!("t-{i}")}]);
        }
        out.push(task);
    }
    for i in 0..12usize {
        out.push(json!({
            "resourceType": "Organization", "meta": {"tag": tag()}, "active": i % 3 != 0,
            "name": format!("{} Hospital {i}", ["North", "South", "Northeast"][i % 3]),
            "identifier": [{"system": ORG, "value": format!("org-{i}.test")}],
        }));
        out.push(json!({
            "resourceType": "ActivityDefinition", "meta": {"tag": tag()}, "status": (["active", "draft"][i % 2]),
            "url": format!("http://dsf.dev/bpe/Process/p{}", i % 4), "version": format!("1.{}", i % 3),
        }));
        out.push(json!({
            "resourceType": "QuestionnaireResponse", "status": (["in-progress", "completed", "stopped"][i % 3]),
            "questionnaire": format!("http://dsf.dev/fhir/Questionnaire/q{}|1.0", i % 2),
            "authored": format!("2024-05-{:02}T12:00:00Z", 1 + i),
        }));
    }
    out
}

const CRITERIA: &[&str] = &[
    "Task?status=requested",
    "Task?status=requested,in-progress",
    "Task?status:not=completed",
    "Task?status=requested&requester:identifier=http://dsf.dev/sid/organization-identifier|org-1",
    "Task?requester:identifier=|org-1",
    "Task?identifier=http://dsf.dev/sid/task-identifier|t-6",
    "Task?identifier=t-12",
    "Task?_profile=http://dsf.dev/fhir/StructureDefinition/task-2|1.0",
    "Task?_profile:below=http://dsf.dev/fhir/StructureDefinition/task-1",
    "Task?authored-on=2024-02",
    "Task?authored-on=ge2024-03-13",
    "Task?authored-on=lt2024-02-15&status=failed",
    "Task?authored-on=ne2024-01",
    "Task?_lastUpdated=ge2000-01-01",
    "Task",
    "Organization?active=true",
    "Organization?name=north",
    "Organization?name:contains=east",
    "Organization?name:exact=South Hospital 4",
    "Organization?identifier=http://dsf.dev/sid/organization-identifier|org-3.test",
    "ActivityDefinition?url=http://dsf.dev/bpe/Process/p1",
    "ActivityDefinition?url=http://dsf.dev/bpe/Process/p2&version=1.2",
    "ActivityDefinition?status=draft",
    "QuestionnaireResponse?status=completed",
    "QuestionnaireResponse?questionnaire=http://dsf.dev/fhir/Questionnaire/q1|1.0",
    "QuestionnaireResponse?authored=le2024-05-06",
];

async fn agree(kind: BackendKind) {
    let backend = backend(kind).await;
    let store = ResourceStore::new(backend, BASE);
    // Two instants of change, a few milliseconds apart, for `_lastUpdated` at their edges.
    let mut instants = Vec::new();
    let all = resources();
    let (first, second) = all.split_at(all.len() / 2);
    for part in [first, second] {
        let ops = part
            .iter()
            .map(|resource| WriteOp::Create {
                resource: resource.clone(),
                if_none_exist: None,
                full_url: None,
            })
            .collect();
        let outcomes = store.transaction(ops).await.expect("seed");
        if let Some(WriteOutcome::Created(stored)) = outcomes.last() {
            instants.push(stored.last_updated);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut criteria_list: Vec<String> = CRITERIA.iter().map(|c| c.to_string()).collect();
    for t in instants {
        for at in [t - 1, t, t + 1] {
            for prefix in ["eq", "ne", "gt", "lt", "ge", "le"] {
                // `+` must be percent-encoded in a query string.
                let instant = format_instant(at).replace('+', "%2B");
                criteria_list.push(format!("Task?_lastUpdated={prefix}{instant}"));
            }
        }
        let day = &format_instant(t)[..10];
        criteria_list.push(format!("Task?_lastUpdated=eq{day}"));
        criteria_list.push(format!("Task?_lastUpdated=gt{day}"));
        criteria_list.push(format!("Task?_lastUpdated=le{day}&status=requested"));
    }
    for criteria in &criteria_list {
        let criteria = criteria.as_str();
        let (resource_type, query) = criteria.split_once('?').unwrap_or((criteria, ""));
        let resource_type = dsf_fhir::resource_type::supported_type(resource_type).expect("type");
        let mut parsed = SearchQuery::parse(resource_type, &parse_query_string(query), 1000, BASE)
            .expect("criteria");
        assert!(
            parsed.unsupported.is_empty(),
            "{criteria}: {:?}",
            parsed.unsupported
        );
        let by_sql: BTreeSet<String> = store
            .search(&parsed)
            .await
            .expect("search")
            .matches
            .into_iter()
            .map(|r| r.id)
            .collect();
        // Every resource of the type, through the matcher.
        parsed.clauses.clear();
        let everything = store.search(&parsed).await.expect("all");
        let criteria_query =
            SearchQuery::parse(resource_type, &parse_query_string(query), 1000, BASE)
                .expect("criteria");
        let in_memory: BTreeSet<String> = everything
            .matches
            .iter()
            .filter(|r| criteria_query.matches(&r.id, &r.json().expect("JSON"), BASE))
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(in_memory, by_sql, "{criteria}");
        assert!(
            !by_sql.is_empty() && by_sql.len() < everything.matches.len()
                || query.is_empty()
                || query.starts_with("_lastUpdated"),
            "{criteria} should select some but not all ({} of {})",
            by_sql.len(),
            everything.matches.len()
        );
    }
}

async fn matcher_agrees_with_sql_on_sqlite() {
    agree(BackendKind::Sqlite).await;
}

async fn matcher_agrees_with_sql_on_postgres() {
    agree(BackendKind::Postgres).await;
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = suite.test(
        "matcher_agrees_with_sql_on_sqlite",
        matcher_agrees_with_sql_on_sqlite,
    );
    let suite = suite.postgres_test(
        "matcher_agrees_with_sql_on_postgres",
        matcher_agrees_with_sql_on_postgres,
    );
    suite.run()
}
