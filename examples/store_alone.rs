//! The versioned FHIR store in a service of yours, without HTTP: write resources, update one
//! under optimistic locking, search and read its history. Build with `dsf-fhir`'s `store`
//! feature only (`default-features = false, features = ["store"]`).
//!
//! `cargo run -p dsf-examples --example store_alone`

use dsf_examples::BoxError;
use dsf_fhir::search::SearchQuery;
use dsf_fhir::store::HistoryFilter;
use dsf_fhir::{ResourceStore, WriteOp, WriteOutcome};
use serde_json::json;

const BASE_URL: &str = "https://dsf.example.org/fhir";

async fn run() -> Result<(), BoxError> {
    // "sqlite:<path>" for a file, or a postgresql:// URL.
    let store = ResourceStore::open("sqlite::memory:", BASE_URL).await?;

    let mut ids = Vec::new();
    for status in ["requested", "requested", "completed"] {
        let task = json!({
            "resourceType": "Task",
            "status": status,
            "intent": "order",
            "authoredOn": "2026-11-28T10:00:00+00:00"
        });
        let created = store
            .write(WriteOp::Create {
                resource: task,
                if_none_exist: None,
                full_url: None,
            })
            .await?;
        let WriteOutcome::Created(stored) = created else {
            return Err("a create without If-None-Exist always creates".into());
        };
        ids.push(stored.id);
    }

    // Claim the first Task as a BPE does: only if nobody changed it since version 1.
    let mut task = store
        .read("Task", &ids[0])
        .await?
        .ok_or("the Task just written is missing")?
        .json()?;
    task["status"] = json!("in-progress");
    store
        .write(WriteOp::Update {
            resource_type: "Task",
            id: ids[0].clone(),
            resource: task.clone(),
            if_match: Some(1),
            full_url: None,
        })
        .await?;
    // The same claim again loses: version 1 is no longer current.
    let again = store
        .write(WriteOp::Update {
            resource_type: "Task",
            id: ids[0].clone(),
            resource: task,
            if_match: Some(1),
            full_url: None,
        })
        .await;
    assert!(matches!(again, Err(dsf_fhir::Error::VersionConflict(_))));

    let requested = SearchQuery::on("Task")?
        .with("status", "requested")
        .sort_by("-_lastUpdated")
        .count(20)
        .build(BASE_URL)?;
    let page = store.search(&requested).await?;
    println!("requested Tasks: {}", page.total);
    assert_eq!(page.total, 1);

    let versions = HistoryFilter {
        resource_type: Some("Task".into()),
        id: Some(ids[0].clone()),
        ..HistoryFilter::default()
    };
    let history = store.history(&versions, 20, 1).await?;
    println!("versions of Task/{}: {}", ids[0], history.total);
    assert_eq!(history.total, 2);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    run().await
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs() {
        super::run().await.expect("the example runs");
    }
}
