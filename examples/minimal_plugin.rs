//! A minimal process plugin, defined in one file and run on a BPE against a FHIR server: a
//! Task with the message `stamp` starts `exampleorg_stamp`, whose one service task adds an
//! output naming the organisation that handled it; the BPE then completes the Task.
//!
//! A real plugin is a crate of its own with its files under `bpe/` and `fhir/` (see
//! `plugins/hello-world` and docs/plugin-guide.md); here they are inline.
//!
//! `cargo run -p dsf-examples --example minimal_plugin`

use dsf_engine::{Bpe, BpeConfig};
use dsf_examples::{BoxError, LocalServer};
use dsf_plugin_api::task::{add_output, parameter};
use dsf_plugin_api::{
    async_trait, json, PluginDefinition, ProcessApi, ProcessError, ServiceTask, Value, Variables,
};
use std::time::Duration;

const PROCESS_URL: &str = "http://example.org/bpe/Process/stamp";
const TASK_PROFILE: &str = "http://example.org/fhir/StructureDefinition/task-stamp";
const STAMP: &str = "http://example.org/fhir/CodeSystem/stamp";

const BPMN: &str = r##"<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="stamp" targetNamespace="http://example.org/bpe">
  <bpmn:process id="exampleorg_stamp" isExecutable="true" camunda:versionTag="#{version}">
    <bpmn:startEvent id="Start"><bpmn:messageEventDefinition messageRef="Stamp" /></bpmn:startEvent>
    <bpmn:sequenceFlow id="toStamp" sourceRef="Start" targetRef="AddStamp" />
    <bpmn:serviceTask id="AddStamp" camunda:class="org.example.AddStamp" />
    <bpmn:sequenceFlow id="toEnd" sourceRef="AddStamp" targetRef="End" />
    <bpmn:endEvent id="End" />
  </bpmn:process>
  <bpmn:message id="Stamp" name="stamp" />
</bpmn:definitions>"##;

/// The ActivityDefinition that publishes the process and says who may start it: here only
/// the local organisation (`LOCAL_ALL`), with Tasks of the profile above.
fn activity_definition() -> String {
    let authorization = |code: &str| json!({"system": "http://dsf.dev/fhir/CodeSystem/process-authorization", "code": code});
    json!({
        "resourceType": "ActivityDefinition",
        "meta": {
            "profile": ["http://dsf.dev/fhir/StructureDefinition/activity-definition"],
            "tag": [{"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": "ALL"}]
        },
        "extension": [{
            "url": "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization",
            "extension": [
                {"url": "message-name", "valueString": "stamp"},
                {"url": "task-profile", "valueCanonical": format!("{TASK_PROFILE}|#{{version}}")},
                {"url": "requester", "valueCoding": authorization("LOCAL_ALL")},
                {"url": "recipient", "valueCoding": authorization("LOCAL_ALL")}
            ]
        }],
        "url": PROCESS_URL,
        "version": "#{version}",
        "name": "Stamp",
        "status": "unknown",
        "date": "#{date}",
        "kind": "Task"
    })
    .to_string()
}

/// The one piece of process code.
struct AddStamp;

#[async_trait]
impl ServiceTask for AddStamp {
    async fn execute(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let mut task = vars
            .start_task()
            .ok_or_else(|| ProcessError::failed("no start Task"))?;
        let stamp = format!("handled by {}", api.local_organization());
        add_output(
            &mut task,
            parameter(STAMP, "stamp", "valueString", json!(stamp)),
        );
        vars.update_task(task)
    }
}

fn plugin() -> Result<PluginDefinition, BoxError> {
    Ok(PluginDefinition::new("stamp", "1.0.0.0", "2026-11-28")?
        .bpmn("bpe/stamp.bpmn", BPMN)
        .fhir(
            "exampleorg_stamp",
            "fhir/ActivityDefinition-stamp.json",
            activity_definition(),
        )
        .service_task("org.example.AddStamp", AddStamp))
}

async fn run() -> Result<(), BoxError> {
    let server = LocalServer::start("example.org").await?;
    let bpe = Bpe::start(
        BpeConfig::new(&server.base_url, server.organization_tls()?),
        vec![plugin()?],
    )
    .await?;
    println!("deployed: {:?}", bpe.report().deployed);
    tokio::time::timeout(Duration::from_secs(20), bpe.wait_connected()).await?;

    let organization = json!({
        "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": server.identifier}
    });
    let task = json!({
        "resourceType": "Task",
        "meta": {"profile": [format!("{TASK_PROFILE}|1.0")]},
        "instantiatesCanonical": format!("{PROCESS_URL}|1.0"),
        "status": "requested",
        "intent": "order",
        "authoredOn": "2026-11-28T10:00:00+00:00",
        "requester": organization,
        "restriction": {"recipient": [organization]},
        "input": [{
            "type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "message-name"}]},
            "valueString": "stamp"
        }]
    });
    let client = server.organization_client()?;
    let created: Value = client.create(&task).await?;
    let id = created["id"].as_str().ok_or("a created Task has an id")?;

    let finished = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let task: Value = client.read("Task", id).await?;
            if matches!(task["status"].as_str(), Some("completed" | "failed")) {
                return Ok::<_, BoxError>(task);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    println!(
        "Task/{id} {}: {}",
        finished["status"], finished["output"][0]["valueString"]
    );
    assert_eq!(finished["status"], "completed");
    assert_eq!(
        finished["output"][0]["valueString"],
        "handled by example.org"
    );

    bpe.stop();
    server.stop().await
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
