//! Starting processes with Tasks and waiting for their outcome, as the multi-organisation
//! tests do: start Tasks, the statuses a ping records, the error a failed Task carries.

use crate::network::Organization;
use dsf_fhir::FhirClient;
use dsf_plugin_api::task::{output_string, outputs};
use serde_json::{json, Value};
use std::time::Duration;

/// An organisation as the helpers here reach it: its identifier and a client with its
/// certificate.
pub trait Site {
    /// The organisation's identifier value.
    fn identifier(&self) -> &str;
    /// A client with the organisation's own certificate.
    fn client(&self) -> &FhirClient;
}

impl Site for Organization {
    fn identifier(&self) -> &str {
        &self.identifier
    }
    fn client(&self) -> &FhirClient {
        &self.client
    }
}

impl Site for crate::replicas::ReplicatedOrganization {
    fn identifier(&self) -> &str {
        &self.identifier
    }
    fn client(&self) -> &FhirClient {
        &self.client
    }
}

/// How long a test waits for a process.
pub const WAIT: Duration = Duration::from_secs(30);

/// The ping-pong plugin's CodeSystem of its inputs and outputs.
const PING: &str = "http://dsf.dev/fhir/CodeSystem/ping";

/// A logical reference to the Organization `identifier`.
pub fn organization_reference(identifier: &str) -> Value {
    json!({"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": identifier}})
}

/// A `message-name` input.
pub fn message_input(name: &str) -> Value {
    json!({"type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "message-name"}]}, "valueString": name})
}

/// A Task from the organisation to itself starting `process` (`ping`, `pingAutostart` …).
pub fn start_task(
    org: &impl Site,
    process: &str,
    profile: &str,
    message: &str,
    extra: Vec<Value>,
) -> Value {
    let mut inputs = vec![message_input(message)];
    inputs.extend(extra);
    json!({
        "resourceType": "Task",
        "meta": {"profile": [format!("http://dsf.dev/fhir/StructureDefinition/{profile}|1.0")]},
        "instantiatesCanonical": format!("http://dsf.dev/bpe/Process/{process}|1.0"),
        "status": "requested",
        "intent": "order",
        "authoredOn": "2026-11-28T10:00:00+00:00",
        "requester": organization_reference(org.identifier()),
        "restriction": {"recipient": [organization_reference(org.identifier())]},
        "input": inputs,
    })
}

/// Creates `task` on `org`'s server; its id.
pub async fn post(org: &impl Site, task: Value) -> String {
    let created: Value = org.client().create(&task).await.expect("Task created");
    created["id"].as_str().expect("id").to_owned()
}

/// Starts a ping on `org`; the start Task's id.
pub async fn start_ping(org: &impl Site) -> String {
    post(
        org,
        start_task(org, "ping", "task-start-ping", "startPing", vec![]),
    )
    .await
}

/// Waits until `Task/id` on `org` is completed or failed, and returns it.
pub async fn finished(org: &impl Site, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let task: Value = org.client().read("Task", id).await.expect("read Task");
        if matches!(task["status"].as_str(), Some("completed" | "failed")) {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Task/{id} still {}",
            task["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `organization identifier -> ping status code` of a finished start-ping Task.
pub fn ping_statuses(task: &Value) -> Vec<(String, String)> {
    let mut statuses: Vec<(String, String)> = outputs(task, PING, "ping-status")
        .into_iter()
        .map(|o| {
            let organization = o["extension"][0]["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["url"] == "organization-identifier")
                .and_then(|e| e["valueIdentifier"]["value"].as_str())
                .unwrap_or_default()
                .to_owned();
            (
                organization,
                o["valueCoding"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    statuses.sort();
    statuses
}

/// The `error` output of a failed Task.
pub fn error_of(task: &Value) -> String {
    output_string(task, "http://dsf.dev/fhir/CodeSystem/bpmn-message", "error")
        .unwrap_or_default()
        .to_owned()
}

/// Tasks on `org` of the DSF process `process` (`http://dsf.dev/bpe/Process/<process>|1.0`),
/// without the plugin's drafts.
pub async fn tasks_of(org: &impl Site, process: &str) -> Vec<Value> {
    tasks_instantiating(org, &format!("http://dsf.dev/bpe/Process/{process}|1.0")).await
}

/// Tasks on `org` whose `instantiatesCanonical` is `canonical`, without drafts.
pub async fn tasks_instantiating(org: &impl Site, canonical: &str) -> Vec<Value> {
    org.client()
        .search_pages("Task", "_count=200")
        .collect()
        .await
        .expect("search Tasks")
        .into_iter()
        .filter(|t| t["instantiatesCanonical"] == canonical && t["status"] != "draft")
        .collect()
}

/// The step boundaries of the BPE's crash hook (`BpeConfig::crash_at`), in the order a
/// request/reply process meets them.
pub const BPE_STEPS: [&str; 7] = [
    "claim-recorded",
    "claimed",
    "send-recorded",
    "sent",
    "ran",
    "tasks-finished",
    "saved",
];
