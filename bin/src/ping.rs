//! Starting a ping on a dev network and reading its outcome: what `dsf dev up` does once it
//! runs, `dsf dev ping` does on demand, and `--smoke` checks.

use dsf_fhir::FhirClient;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// One target's outcome, from the start Task's `ping-status` outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingStatus {
    /// The target organisation's identifier value.
    pub organization: String,
    /// The target endpoint's identifier value.
    pub endpoint: String,
    /// `pong-received`, `pong-missing`, `not-allowed` or `not-reachable`.
    pub status: String,
    /// The error the target's status carries, if any.
    pub error: Option<String>,
}

/// The outcome of one ping process.
#[derive(Debug, Clone)]
pub struct PingOutcome {
    /// The start Task's id.
    pub task_id: String,
    /// `completed` or `failed`.
    pub task_status: String,
    /// One status per target.
    pub statuses: Vec<PingStatus>,
    /// From the start to the Task's end.
    pub elapsed: Duration,
}

fn organization(identifier: &str) -> Value {
    json!({"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": identifier}})
}

/// The start Task of a ping from `from` (its own organisation) to the endpoints with the
/// identifiers `endpoints` (all active ones of other organisations when empty).
pub fn start_ping_task(from: &str, endpoints: &[String]) -> Value {
    let mut inputs = vec![json!({
        "type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "message-name"}]},
        "valueString": "startPing"
    })];
    if !endpoints.is_empty() {
        let identifiers: Vec<String> = endpoints
            .iter()
            .map(|e| format!("http://dsf.dev/sid/endpoint-identifier|{e}"))
            .collect();
        inputs.push(json!({
            "type": {"coding": [{"system": dsf_plugin_ping_pong::PING, "code": "target-endpoints"}]},
            "valueString": format!("Endpoint?status=active&identifier={}", identifiers.join(","))
        }));
    }
    json!({
        "resourceType": "Task",
        "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0"]},
        "instantiatesCanonical": format!("{}|1.0", dsf_plugin_ping_pong::PING_PROCESS),
        "status": "requested",
        "intent": "order",
        "authoredOn": dsf_fhir::date::format_instant(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        ),
        "requester": organization(from),
        "restriction": {"recipient": [organization(from)]},
        "input": inputs,
    })
}

/// The `ping-status` outputs of a finished start Task.
pub fn statuses_of(task: &Value) -> Vec<PingStatus> {
    let outputs = dsf_plugin_api::task::outputs(task, dsf_plugin_ping_pong::PING, "ping-status");
    outputs
        .into_iter()
        .map(|o| {
            let details = o["extension"][0]["extension"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let detail = |url: &str, key: &str| {
                details
                    .iter()
                    .find(|e| e["url"] == url)
                    .and_then(|e| {
                        if key.is_empty() {
                            e["valueString"].as_str()
                        } else {
                            e[key]["value"].as_str()
                        }
                    })
                    .map(str::to_owned)
            };
            PingStatus {
                organization: detail("organization-identifier", "valueIdentifier")
                    .unwrap_or_default(),
                endpoint: detail("endpoint-identifier", "valueIdentifier").unwrap_or_default(),
                status: o["valueCoding"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                error: detail("error-message", ""),
            }
        })
        .collect()
}

/// Starts a ping with `client` (the organisation `from`'s own certificate) and waits up to
/// `timeout` for its start Task to finish.
pub async fn ping(
    client: &FhirClient,
    from: &str,
    endpoints: &[String],
    timeout: Duration,
) -> Result<PingOutcome, Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let created: Value = client.create(&start_ping_task(from, endpoints)).await?;
    let id = created["id"]
        .as_str()
        .ok_or("the server returned no id")?
        .to_owned();
    loop {
        let task: Value = client.read("Task", &id).await?;
        let status = task["status"].as_str().unwrap_or_default().to_owned();
        if status == "completed" || status == "failed" {
            return Ok(PingOutcome {
                task_id: id,
                task_status: status,
                statuses: statuses_of(&task),
                elapsed: started.elapsed(),
            });
        }
        if started.elapsed() > timeout {
            return Err(format!("Task/{id} still {status} after {} s", timeout.as_secs()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
