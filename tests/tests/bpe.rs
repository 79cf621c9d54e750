//! The BPE end to end: organisations in-process on loopback over mutual TLS, each with its
//! FHIR server and a BPE running the ping-pong plugin; Tasks start and continue processes,
//! messages travel between organisations, and the BPE survives restarts and rivals.

use dsf_engine::{Bpe, BpeConfig, StateDatabase};
use dsf_plugin_api::task::{output_string, outputs};
use dsf_plugin_api::PluginDefinition;
use dsf_plugin_ping_pong as ping_pong;
use dsf_tests::network::{unreachable_entry, Network, Organization, Topology};
use dsf_tests::tasks::{
    error_of, finished, organization_reference, ping_statuses, post, start_ping, start_task,
    tasks_of, BPE_STEPS, WAIT,
};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn plugins() -> Vec<PluginDefinition> {
    vec![ping_pong::plugin()]
}

/// A BPE configuration for `org` whose pings wait 3 s for their pongs.
fn bpe_config(org: &Organization) -> BpeConfig {
    let mut config = BpeConfig::new(&org.base_url, org.bpe_tls.clone());
    config
        .plugin_config
        .push((ping_pong::PONG_TIMEOUT_PROPERTY.into(), "PT3S".into()));
    config
}

async fn start_bpe(org: &Organization, state: Option<&Path>) -> Bpe {
    let mut config = bpe_config(org);
    config.state = state.map_or(StateDatabase::Memory, |p| {
        StateDatabase::Sqlite(p.to_path_buf())
    });
    let bpe = Bpe::start(config, plugins()).await.expect("BPE starts");
    assert!(
        bpe.report().refused.is_empty(),
        "{:?}",
        bpe.report().refused
    );
    tokio::time::timeout(WAIT, bpe.wait_connected())
        .await
        .expect("BPE subscriptions bound");
    bpe
}

async fn ping_from_one_to_all_others_in_a_mesh() {
    let network = Network::start(3, Topology::Mesh).await;
    let mut bpes = Vec::new();
    for org in &network.organizations {
        bpes.push(start_bpe(org, None).await);
    }
    assert_eq!(bpes[0].report().deployed.len(), 3, "{:?}", bpes[0].report());
    let id = start_ping(network.organization(0)).await;
    let task = finished(network.organization(0), &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        ping_statuses(&task),
        vec![
            ("org1.test".to_owned(), "pong-received".to_owned()),
            ("org2.test".to_owned(), "pong-received".to_owned())
        ]
    );
    // Exactly three writes: created, in progress, completed (the Java BPE's count).
    assert_eq!(task["meta"]["versionId"], "3");
    for receiver in [1, 2] {
        let pings = tasks_of(network.organization(receiver), "pong").await;
        assert_eq!(pings.len(), 1, "one ping reached org{receiver}");
        let ping = finished(
            network.organization(receiver),
            pings[0]["id"].as_str().unwrap_or_default(),
        )
        .await;
        assert_eq!(ping["status"], "completed", "{ping:#}");
        let pong_status = &outputs(&ping, ping_pong::PING, "pong-status")[0]["valueCoding"]["code"];
        assert_eq!(pong_status, "pong-send");
    }
    // The pongs that came back were claimed and completed too.
    let pongs = tasks_of(network.organization(0), "ping").await;
    assert_eq!(pongs.len(), 3, "the start Task and two pongs");
    for pong in &pongs {
        let pong = finished(
            network.organization(0),
            pong["id"].as_str().unwrap_or_default(),
        )
        .await;
        assert_eq!(pong["status"], "completed", "{pong:#}");
    }
}

async fn hub_and_spokes_ping_each_other_through_the_allow_lists() {
    let network = Network::start(4, Topology::Star).await;
    let mut bpes = Vec::new();
    for org in &network.organizations {
        bpes.push(start_bpe(org, None).await);
    }
    let id = start_ping(network.organization(0)).await;
    let task = finished(network.organization(0), &id).await;
    assert_eq!(
        ping_statuses(&task)
            .iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>(),
        vec!["pong-received"; 3]
    );
    // A spoke knows only the hub.
    let id = start_ping(network.organization(2)).await;
    let task = finished(network.organization(2), &id).await;
    assert_eq!(
        ping_statuses(&task),
        vec![("org0.test".to_owned(), "pong-received".to_owned())]
    );
}

async fn refused_unreachable_and_silent_targets_are_told_apart() {
    let mut network = Network::start(4, Topology::Mesh).await;
    // org1 runs no BPE: its server has no pong ActivityDefinition and refuses the ping (403).
    // org2 is stopped before the ping: not reachable. org3 answers.
    // org0 also knows an organisation whose endpoint nobody serves.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let closed_port = closed.local_addr().expect("address").port();
    drop(closed);
    network.organizations[0]
        .server
        .load_allow_list(&[unreachable_entry("gone.test", closed_port)])
        .await
        .expect("allow list");
    let _bpe0 = start_bpe(network.organization(0), None).await;
    let _bpe3 = start_bpe(network.organization(3), None).await;
    network.organizations[2].stop().await;
    let id = start_ping(network.organization(0)).await;
    let task = finished(network.organization(0), &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        ping_statuses(&task),
        vec![
            ("gone.test".to_owned(), "not-reachable".to_owned()),
            ("org1.test".to_owned(), "not-allowed".to_owned()),
            ("org2.test".to_owned(), "not-reachable".to_owned()),
            ("org3.test".to_owned(), "pong-received".to_owned()),
        ]
    );
    let refused = outputs(&task, ping_pong::PING, "ping-status")
        .into_iter()
        .find(|o| o.to_string().contains("org1.test"))
        .cloned()
        .unwrap_or_default();
    assert!(refused.to_string().contains("error-message"), "{refused:#}");
}

async fn a_target_that_never_answers_is_pong_missing() {
    let network = Network::start(2, Topology::Mesh).await;
    let _bpe0 = start_bpe(network.organization(0), None).await;
    // org1 accepts the ping (its BPE deployed the plugin) but its BPE is gone before it runs.
    let bpe1 = start_bpe(network.organization(1), None).await;
    drop(bpe1);
    let id = start_ping(network.organization(0)).await;
    let task = finished(network.organization(0), &id).await;
    assert_eq!(
        ping_statuses(&task),
        vec![("org1.test".to_owned(), "pong-missing".to_owned())]
    );
}

async fn unknown_process_and_uncorrelated_messages_fail_the_task() {
    let network = Network::start(1, Topology::Mesh).await;
    let org = network.organization(0);
    let _bpe = start_bpe(org, None).await;
    // A pong nobody waits for (its business key matches no instance).
    let mut pong = start_task(org, "ping", "task-pong", "pong", vec![]);
    pong["input"].as_array_mut().expect("inputs").push(json!({
        "type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "business-key"}]},
        "valueString": "no-such-instance"}));
    let id = post(org, pong).await;
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "failed");
    assert!(
        error_of(&task).contains("Unable to correlate"),
        "{}",
        error_of(&task)
    );
    // A process the server authorises but no BPE plugin deploys.
    let mut definition: Value = org
        .client
        .search("ActivityDefinition", "url=http://dsf.dev/bpe/Process/pong")
        .await
        .expect("search")["entry"][0]["resource"]
        .clone();
    definition.as_object_mut().expect("object").remove("id");
    definition["url"] = json!("http://dsf.dev/bpe/Process/ghost");
    // A Task profile of its own, which this server does not hold (a warning, not a refusal):
    // the pong process's Task profile fixes its process.
    let definition: Value = serde_json::from_str(
        &definition
            .to_string()
            .replace("/task-ping|", "/task-ghost|"),
    )
    .expect("JSON");
    org.client
        .create(&definition)
        .await
        .expect("ActivityDefinition");
    let mut ghost = start_task(org, "ghost", "task-ghost", "ping", vec![]);
    ghost["restriction"] = json!({"recipient": [organization_reference(&org.identifier)]});
    let id = post(org, ghost).await;
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "failed");
    assert!(
        error_of(&task).contains("Process not found"),
        "{}",
        error_of(&task)
    );
    // The BPE goes on handling Tasks.
    let id = start_ping(org).await;
    assert_eq!(finished(org, &id).await["status"], "completed");
}

async fn two_bpes_on_one_server_run_each_task_once() {
    // org1 runs two BPEs (each with its own state): both hear of every ping, one claims it.
    let network = Network::start(2, Topology::Mesh).await;
    let _a = start_bpe(network.organization(0), None).await;
    let _b = start_bpe(network.organization(1), None).await;
    let _c = start_bpe(network.organization(1), None).await;
    let ids = futures_join(network.organization(0), 5).await;
    for id in ids {
        let task = finished(network.organization(0), &id).await;
        assert_eq!(task["status"], "completed", "{task:#}");
        assert_eq!(
            ping_statuses(&task),
            vec![("org1.test".to_owned(), "pong-received".to_owned())]
        );
    }
    // Each ping was answered once, and written three times (created, claimed, completed).
    let pings = tasks_of(network.organization(1), "pong").await;
    assert_eq!(pings.len(), 5);
    for ping in &pings {
        let ping = finished(
            network.organization(1),
            ping["id"].as_str().unwrap_or_default(),
        )
        .await;
        assert_eq!(ping["meta"]["versionId"], "3", "{ping:#}");
        assert_eq!(
            outputs(&ping, ping_pong::PING, "pong-status").len(),
            1,
            "{ping:#}"
        );
    }
    assert_eq!(
        tasks_of(network.organization(0), "ping").await.len(),
        10,
        "five starts, five pongs"
    );
}

async fn futures_join(org: &Organization, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(start_ping(org).await);
    }
    ids
}

async fn a_restarted_bpe_catches_up_on_what_arrived_while_it_was_down() {
    let network = Network::start(2, Topology::Mesh).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = dir.path().join("bpe0.sqlite");
    let bpe0 = start_bpe(network.organization(0), Some(&state)).await;
    let _bpe1 = start_bpe(network.organization(1), None).await;
    let id = start_ping(network.organization(0)).await;
    // Stop org0's BPE as soon as its ping is out: the pong arrives while it is down.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tasks_of(network.organization(1), "pong").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no ping sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(bpe0);
    // And a start Task arrives while it is down.
    let second = start_ping(network.organization(0)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _bpe0 = start_bpe(network.organization(0), Some(&state)).await;
    for id in [id, second] {
        let task = finished(network.organization(0), &id).await;
        assert_eq!(task["status"], "completed", "{task:#}");
        assert_eq!(
            ping_statuses(&task),
            vec![("org1.test".to_owned(), "pong-received".to_owned())]
        );
    }
    // Nothing was sent twice.
    assert_eq!(tasks_of(network.organization(1), "pong").await.len(), 2);
}

async fn autostart_pings_at_its_interval_until_stopped() {
    let network = Network::start(2, Topology::Mesh).await;
    let org = network.organization(0);
    let bpe0 = start_bpe(org, None).await;
    let _bpe1 = start_bpe(network.organization(1), None).await;
    let interval = json!({"type": {"coding": [{"system": ping_pong::PING, "code": "timer-interval"}]}, "valueString": "PT1S"});
    let autostart = post(
        org,
        start_task(
            org,
            "pingAutostart",
            "task-start-ping-autostart",
            "startPingAutostart",
            vec![interval],
        ),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let started = tasks_of(org, "ping")
            .await
            .into_iter()
            .filter(|t| {
                t["meta"]["profile"][0]
                    .as_str()
                    .is_some_and(|p| p.contains("task-start-ping|"))
            })
            .count();
        if started >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {started} pings started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = post(
        org,
        start_task(
            org,
            "pingAutostart",
            "task-stop-ping-autostart",
            "stopPingAutostart",
            vec![],
        ),
    )
    .await;
    assert_eq!(finished(org, &stop).await["status"], "completed");
    let looping = finished(org, &autostart).await;
    assert_eq!(looping["status"], "completed", "{looping:#}");
    let count = tasks_of(org, "ping").await.len();
    // Once no instance runs, nothing is left that could start a ping (the loop's timer lives
    // in its instance): wait for that instead of for a while.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let running = bpe0.running_instances().await.expect("running instances");
        if running == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} instances still run after the stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started_after_stop = tasks_of(org, "ping").await.len() - count;
    assert!(
        started_after_stop <= 2,
        "the loop kept pinging: {started_after_stop} more Tasks"
    );
}

async fn a_broken_plugin_is_refused_and_the_others_run() {
    let network = Network::start(1, Topology::Mesh).await;
    let org = network.organization(0);
    let broken = PluginDefinition::new("broken", "1.0.0.0", "2026-11-28")
        .expect("metadata")
        .bpmn(
            "bpe/broken.bpmn",
            r#"<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn">
  <bpmn:process id="testorg_broken" isExecutable="true" camunda:versionTag="1.0">
    <bpmn:startEvent id="s"><bpmn:messageEventDefinition messageRef="m"/></bpmn:startEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="s" targetRef="a"/>
    <bpmn:serviceTask id="a" camunda:class="org.example.Missing"/>
    <bpmn:sequenceFlow id="f2" sourceRef="a" targetRef="b"/>
    <bpmn:serviceTask id="b" camunda:class="org.example.AlsoMissing"/>
    <bpmn:sequenceFlow id="f3" sourceRef="b" targetRef="e"/>
    <bpmn:endEvent id="e"/>
  </bpmn:process>
  <bpmn:message id="m" name="go"/>
</bpmn:definitions>"#,
        );
    let mut config = bpe_config(org);
    config.state = StateDatabase::Memory;
    let mut all = plugins();
    all.push(broken);
    let bpe = Bpe::start(config, all).await.expect("BPE starts");
    let refused = &bpe.report().refused;
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (name, reason) = &refused[0];
    assert_eq!(name, "broken");
    // Every missing handler at once, with file and line.
    assert!(
        reason.contains("org.example.Missing") && reason.contains("org.example.AlsoMissing"),
        "{reason}"
    );
    assert!(reason.contains("bpe/broken.bpmn:5"), "{reason}");
    assert_eq!(bpe.report().deployed.len(), 3);
    tokio::time::timeout(WAIT, bpe.wait_connected())
        .await
        .expect("connected");
    let id = start_ping(org).await;
    assert_eq!(finished(org, &id).await["status"], "completed");
}

const APPROVE_BPMN: &str = r##"<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn">
  <bpmn:process id="testorg_approve" isExecutable="true" camunda:versionTag="#{version}">
    <bpmn:startEvent id="Start"><bpmn:messageEventDefinition messageRef="Go"/></bpmn:startEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="Start" targetRef="Ask"/>
    <bpmn:userTask id="Ask" camunda:formKey="http://test.org/fhir/Questionnaire/approve|#{version}"/>
    <bpmn:sequenceFlow id="f2" sourceRef="Ask" targetRef="Record"/>
    <bpmn:serviceTask id="Record" camunda:class="org.test.RecordAnswer"/>
    <bpmn:sequenceFlow id="f3" sourceRef="Record" targetRef="End"/>
    <bpmn:endEvent id="End"/>
  </bpmn:process>
  <bpmn:message id="Go" name="approve"/>
</bpmn:definitions>"##;

/// Copies the user's answer (item `approved`) to an output of the start Task.
struct RecordAnswer;

#[dsf_plugin_api::async_trait]
impl dsf_plugin_api::ServiceTask for RecordAnswer {
    async fn execute(
        &self,
        _api: &dsf_plugin_api::ProcessApi,
        vars: &mut dsf_plugin_api::Variables<'_>,
    ) -> Result<(), dsf_plugin_api::ProcessError> {
        let response = vars
            .questionnaire_response()
            .ok_or_else(|| dsf_plugin_api::ProcessError::failed("no answer"))?;
        let approved = response["item"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["linkId"] == "approved")
            .and_then(|i| i["answer"][0]["valueBoolean"].as_bool())
            .unwrap_or(false);
        let mut task = vars.start_task().unwrap_or_default();
        dsf_plugin_api::task::add_output(
            &mut task,
            dsf_plugin_api::task::parameter(
                "http://test.org/fhir/CodeSystem/approve",
                "approved",
                "valueBoolean",
                json!(approved),
            ),
        );
        vars.update_task(task)
    }
}

/// A start Task of the test process `approve`; `slow` adds the input `test|slow`.
fn approve_task(org: &Organization, slow: bool) -> Value {
    let mut extra = Vec::new();
    if slow {
        extra.push(json!({"type": {"coding": [{"system": "http://test.org/fhir/CodeSystem/test", "code": "slow"}]}, "valueString": "yes"}));
    }
    let mut task = start_task(org, "approve", "task-approve", "approve", extra);
    task["instantiatesCanonical"] = json!("http://test.org/bpe/Process/approve|1.0");
    task["meta"]["profile"] = json!(["http://test.org/fhir/StructureDefinition/task-approve|1.0"]);
    task
}

fn approve_plugin() -> PluginDefinition {
    let authorization = json!({"url": "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization", "extension": [
        {"url": "message-name", "valueString": "approve"},
        {"url": "task-profile", "valueCanonical": "http://test.org/fhir/StructureDefinition/task-approve|#{version}"},
        {"url": "requester", "valueCoding": {"system": "http://dsf.dev/fhir/CodeSystem/process-authorization", "code": "LOCAL_ALL"}},
        {"url": "recipient", "valueCoding": {"system": "http://dsf.dev/fhir/CodeSystem/process-authorization", "code": "LOCAL_ALL"}}]});
    let tag = json!([{"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": "ALL"}]);
    let activity = json!({"resourceType": "ActivityDefinition", "meta": {"tag": tag}, "extension": [authorization],
        "url": "http://test.org/bpe/Process/approve", "version": "#{version}", "date": "#{date}",
        "status": "unknown", "kind": "Task"});
    let questionnaire = json!({"resourceType": "Questionnaire", "meta": {"tag": tag},
        "url": "http://test.org/fhir/Questionnaire/approve", "version": "#{version}", "date": "#{date}",
        "status": "unknown",
        "item": [
            {"linkId": "business-key", "type": "string", "text": "The business-key of the process execution", "required": true},
            {"linkId": "user-task-id", "type": "string", "text": "The user-task-id of the process execution", "required": true},
            {"linkId": "approved", "type": "boolean", "text": "Approve?", "required": true}]});
    PluginDefinition::new("approve", "1.0.0.0", "2026-11-28")
        .expect("metadata")
        .bpmn("bpe/approve.bpmn", APPROVE_BPMN)
        .fhir(
            "testorg_approve",
            "fhir/approve-ad.json",
            activity.to_string(),
        )
        .fhir(
            "testorg_approve",
            "fhir/approve-q.json",
            questionnaire.to_string(),
        )
        .service_task("org.test.RecordAnswer", RecordAnswer)
}

/// The approve plugin's FHIR resources with another BPMN file and no handlers yet.
fn approve_variant(bpmn: String) -> PluginDefinition {
    approve_plugin().fhir_files().iter().fold(
        PluginDefinition::new("approve", "1.0.0.0", "2026-11-28")
            .expect("metadata")
            .bpmn("bpe/approve.bpmn", bpmn),
        |plugin, (process, file)| plugin.fhir(process, &file.path, file.contents.clone()),
    )
}

async fn a_user_task_waits_for_its_questionnaire_response() {
    let network = Network::start(1, Topology::Mesh).await;
    let org = network.organization(0);
    let config = bpe_config(org);
    let bpe = Bpe::start(config, vec![approve_plugin()])
        .await
        .expect("BPE");
    assert!(
        bpe.report().refused.is_empty(),
        "{:?}",
        bpe.report().refused
    );
    tokio::time::timeout(WAIT, bpe.wait_connected())
        .await
        .expect("bound");
    let id = post(org, approve_task(org, false)).await;
    let mut response = waiting_user_task(org).await;
    assert_eq!(
        response["questionnaire"],
        "http://test.org/fhir/Questionnaire/approve|1.0"
    );
    let items = response["item"].as_array().cloned().unwrap_or_default();
    let links: Vec<&str> = items.iter().filter_map(|i| i["linkId"].as_str()).collect();
    assert_eq!(links, ["business-key", "user-task-id", "approved"]);
    // The instance waits: the start Task stays in progress until the user answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting: Value = org.client.read("Task", &id).await.expect("read");
    assert_eq!(waiting["status"], "in-progress");
    response["item"][2]["answer"] = json!([{"valueBoolean": true}]);
    response["status"] = json!("completed");
    org.client.update(&response).await.expect("answer");
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let approved = outputs(&task, "http://test.org/fhir/CodeSystem/approve", "approved");
    assert_eq!(
        approved.first().map(|o| o["valueBoolean"].clone()),
        Some(json!(true)),
        "{task:#}"
    );
}

async fn the_plugin_guide_hello_world_runs() {
    let network = Network::start(1, Topology::Mesh).await;
    let org = network.organization(0);
    let bpe = Bpe::start(bpe_config(org), vec![dsf_plugin_hello_world::plugin()])
        .await
        .expect("BPE");
    assert_eq!(
        bpe.report().deployed,
        ["exampleorg_helloWorld|1.0", "exampleorg_helloUser|1.0"]
    );
    tokio::time::timeout(WAIT, bpe.wait_connected())
        .await
        .expect("bound");
    let mut task = start_task(org, "helloWorld", "task-hello-world", "helloWorld", vec![]);
    task["instantiatesCanonical"] = json!(format!("{}|1.0", dsf_plugin_hello_world::PROCESS));
    task["meta"]["profile"] =
        json!(["http://example.org/fhir/StructureDefinition/task-hello-world|1.0"]);
    let id = post(org, task).await;
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        output_string(&task, dsf_plugin_hello_world::HELLO_WORLD, "greeting"),
        Some("Hello, org0.test!")
    );
}

async fn the_hello_user_process_waits_for_a_person_and_records_their_greeting() {
    let network = Network::start(1, Topology::Mesh).await;
    let org = network.organization(0);
    let bpe = Bpe::start(bpe_config(org), vec![dsf_plugin_hello_world::plugin()])
        .await
        .expect("BPE");
    tokio::time::timeout(WAIT, bpe.wait_connected())
        .await
        .expect("bound");
    // The draft Task the plugin ships is on the server to start from.
    let drafts = org
        .client
        .search(
            "Task",
            "status=draft&_profile=http://example.org/fhir/StructureDefinition/task-hello-user|1.0",
        )
        .await
        .expect("search");
    assert_eq!(drafts["total"], 1, "{drafts:#}");
    let mut task = start_task(org, "helloUser", "task-hello-user", "helloUser", vec![]);
    task["instantiatesCanonical"] = json!(format!("{}|1.0", dsf_plugin_hello_world::USER_PROCESS));
    task["meta"]["profile"] =
        json!(["http://example.org/fhir/StructureDefinition/task-hello-user|1.0"]);
    let id = post(org, task).await;
    let mut response = waiting_user_task(org).await;
    assert_eq!(
        response["questionnaire"],
        "http://example.org/fhir/Questionnaire/hello-user|1.0"
    );
    response["item"][2]["answer"] = json!([{"valueString": "Moin"}]);
    response["item"][3]["answer"] = json!([{"valueInteger": 2}]);
    response["status"] = json!("completed");
    org.client.update(&response).await.expect("answer");
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        output_string(&task, dsf_plugin_hello_world::HELLO_WORLD, "user-greeting"),
        Some("Moin Moin")
    );
}

/// The first QuestionnaireResponse in progress at `org`, once the BPE has created one.
async fn waiting_user_task(org: &Organization) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = org
            .client
            .search("QuestionnaireResponse", "status=in-progress")
            .await
            .expect("search");
        if let Some(response) = found.pointer("/entry/0/resource") {
            return response.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no QuestionnaireResponse created"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The hello-world plugin as version `version` (same files, handlers and name).
fn hello_world_as(version: &str) -> PluginDefinition {
    let original = dsf_plugin_hello_world::plugin();
    let mut plugin = PluginDefinition::new("hello-world", version, "2026-11-28").expect("metadata");
    for file in original.bpmn_files() {
        plugin = plugin.bpmn(&file.path, file.contents.clone());
    }
    for (process, file) in original.fhir_files() {
        plugin = plugin.fhir(process, &file.path, file.contents.clone());
    }
    for (name, handler) in original.handlers() {
        plugin = plugin.handler(name, handler.clone());
    }
    plugin
}

fn hello_task(org: &Organization, version: &str) -> Value {
    let mut task = start_task(org, "helloWorld", "task-hello-world", "helloWorld", vec![]);
    task["instantiatesCanonical"] = json!(format!("{}|{version}", dsf_plugin_hello_world::PROCESS));
    task["meta"]["profile"] = json!([format!(
        "http://example.org/fhir/StructureDefinition/task-hello-world|{version}"
    )]);
    task
}

async fn two_versions_of_a_plugin_run_side_by_side_and_old_ones_retire() {
    let network = Network::start(1, Topology::Mesh).await;
    let org = network.organization(0);
    let config = || bpe_config(org);
    let bpe = Bpe::start(
        config(),
        vec![hello_world_as("1.0.0.0"), hello_world_as("1.1.0.0")],
    )
    .await
    .expect("BPE");
    let mut deployed = bpe.report().deployed.clone();
    deployed.sort();
    assert_eq!(
        deployed,
        [
            "exampleorg_helloUser|1.0",
            "exampleorg_helloUser|1.1",
            "exampleorg_helloWorld|1.0",
            "exampleorg_helloWorld|1.1"
        ]
    );
    tokio::time::timeout(WAIT, bpe.wait_connected())
        .await
        .expect("bound");
    for version in ["1.0", "1.1"] {
        let id = post(org, hello_task(org, version)).await;
        assert_eq!(
            finished(org, &id).await["status"],
            "completed",
            "version {version}"
        );
    }
    drop(bpe);
    // Only 1.1 installed now: 1.0's ActivityDefinitions (one per process) are retired, so
    // its Tasks are refused.
    let bpe = Bpe::start(config(), vec![hello_world_as("1.1.0.0")])
        .await
        .expect("BPE");
    assert_eq!(bpe.report().retired, 2, "{:?}", bpe.report());
    let definitions = org
        .client
        .search(
            "ActivityDefinition",
            "url=http://example.org/bpe/Process/helloWorld&status=active",
        )
        .await
        .expect("search");
    assert_eq!(definitions["total"], 1, "{definitions:#}");
    assert_eq!(definitions["entry"][0]["resource"]["version"], "1.1");
}

async fn tasks_written_while_the_websocket_was_down_are_caught_up() {
    let mut network = Network::start(1, Topology::Mesh).await;
    let bpe = start_bpe(network.organization(0), None).await;
    // The server goes away (websocket dropped); a Task arrives in its store meanwhile.
    network.organizations[0].stop().await;
    let org = network.organization(0);
    let written = org
        .store
        .transaction(vec![dsf_fhir::WriteOp::Create {
            resource: start_task(org, "ping", "task-start-ping", "startPing", vec![]),
            if_none_exist: None,
            full_url: None,
        }])
        .await
        .expect("written to the store");
    let id = match &written[..] {
        [dsf_fhir::WriteOutcome::Created(stored)] => stored.id.clone(),
        other => panic!("unexpected outcome {other:?}"),
    };
    network.organizations[0].restart().await;
    let org = network.organization(0);
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert!(bpe.status().connects >= 2, "{:?}", bpe.status());
}

/// Sleeps when the start Task carries the input `test|slow`.
struct MaybeSlow;

#[dsf_plugin_api::async_trait]
impl dsf_plugin_api::ServiceTask for MaybeSlow {
    async fn execute(
        &self,
        _api: &dsf_plugin_api::ProcessApi,
        vars: &mut dsf_plugin_api::Variables<'_>,
    ) -> Result<(), dsf_plugin_api::ProcessError> {
        let task = vars.start_task().unwrap_or_default();
        if !dsf_plugin_api::task::inputs(&task, "http://test.org/fhir/CodeSystem/test", "slow")
            .is_empty()
        {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(())
    }
}

async fn a_slow_handler_holds_up_no_other_instance() {
    let bpmn = APPROVE_BPMN
        .replace(r#"<bpmn:userTask id="Ask" camunda:formKey="http://test.org/fhir/Questionnaire/approve|#{version}"/>"#, r#"<bpmn:serviceTask id="Ask" camunda:class="org.test.MaybeSlow"/>"#)
        .replace(r#"<bpmn:serviceTask id="Record" camunda:class="org.test.RecordAnswer"/>"#, r#"<bpmn:serviceTask id="Record" camunda:class="org.test.MaybeSlow"/>"#);
    let plugin = approve_variant(bpmn).service_task("org.test.MaybeSlow", MaybeSlow);
    let network = Network::start(1, Topology::Mesh).await;
    let org = network.organization(0);
    let bpe = Bpe::start(bpe_config(org), vec![plugin])
        .await
        .expect("BPE");
    assert!(
        bpe.report().refused.is_empty(),
        "{:?}",
        bpe.report().refused
    );
    tokio::time::timeout(WAIT, bpe.wait_connected())
        .await
        .expect("bound");
    let slow = post(org, approve_task(org, true)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    let fast = post(org, approve_task(org, false)).await;
    assert_eq!(finished(org, &fast).await["status"], "completed");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the fast instance waited for the slow one"
    );
    let still: Value = org.client.read("Task", &slow).await.expect("read");
    assert_eq!(still["status"], "in-progress");
    assert_eq!(finished(org, &slow).await["status"], "completed");
}

struct Panics;

#[dsf_plugin_api::async_trait]
impl dsf_plugin_api::ServiceTask for Panics {
    async fn execute(
        &self,
        _api: &dsf_plugin_api::ProcessApi,
        _vars: &mut dsf_plugin_api::Variables<'_>,
    ) -> Result<(), dsf_plugin_api::ProcessError> {
        panic!("a bug in plugin code")
    }
}

async fn a_panicking_handler_fails_its_task_and_the_bpe_goes_on() {
    let bpmn = APPROVE_BPMN.replace(
        r#"<bpmn:userTask id="Ask" camunda:formKey="http://test.org/fhir/Questionnaire/approve|#{version}"/>"#,
        r#"<bpmn:serviceTask id="Ask" camunda:class="org.test.Panics"/>"#,
    );
    let plugin = approve_variant(bpmn)
        .service_task("org.test.Panics", Panics)
        .service_task("org.test.RecordAnswer", RecordAnswer);
    let network = Network::start(1, Topology::Mesh).await;
    let org = network.organization(0);
    let bpe = Bpe::start(bpe_config(org), vec![plugin, ping_pong::plugin()])
        .await
        .expect("BPE");
    tokio::time::timeout(WAIT, bpe.wait_connected())
        .await
        .expect("bound");
    let id = post(org, approve_task(org, false)).await;
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert!(
        error_of(&task).contains("panicked: a bug in plugin code"),
        "{}",
        error_of(&task)
    );
    let id = start_ping(org).await;
    assert_eq!(finished(org, &id).await["status"], "completed");
}

/// Kills the BPE of organisation `side` (0 pings, 1 answers) at the `occurrence`-th time it
/// reaches `step`, restarts it on its state, and checks that the ping still completes with
/// one ping and one pong sent, and that no Task is left in progress.
async fn killed_at(side: usize, step: &'static str, occurrence: usize) -> bool {
    let network = Network::start(2, Topology::Mesh).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let states = [
        dir.path().join("bpe0.sqlite"),
        dir.path().join("bpe1.sqlite"),
    ];
    let hits = Arc::new(AtomicUsize::new(0));
    let crashed = Arc::new(AtomicBool::new(false));
    let hook = {
        let (hits, crashed) = (hits.clone(), crashed.clone());
        Arc::new(move |name: &str| {
            name == step
                && hits.fetch_add(1, Ordering::SeqCst) + 1 == occurrence
                && !crashed.swap(true, Ordering::SeqCst)
        })
    };
    let start = |i: usize, crash: bool| {
        let org = network.organization(i);
        let mut config = bpe_config(org);
        config.state = StateDatabase::Sqlite(states[i].clone());
        if crash {
            config.crash_at = Some(hook.clone());
        }
        async move {
            let bpe = Bpe::start(config, plugins()).await.expect("BPE starts");
            tokio::time::timeout(WAIT, bpe.wait_connected())
                .await
                .expect("bound");
            bpe
        }
    };
    let mut bpes = vec![start(0, side == 0).await, start(1, side == 1).await];
    let id = start_ping(network.organization(0)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let org0 = network.organization(0);
    loop {
        if crashed.load(Ordering::SeqCst) {
            break;
        }
        let task: Value = org0.client.read("Task", &id).await.expect("read");
        if task["status"] == "completed" || tokio::time::Instant::now() > deadline {
            // Steps after the final Task write come just after it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if crashed.load(Ordering::SeqCst) {
                break;
            }
            // This step does not occur that often on this side: nothing to kill.
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(bpes.remove(side));
    let restarted = start(side, false).await;
    bpes.insert(side, restarted);
    let task = finished(org0, &id).await;
    let context = format!("killed at {step} #{occurrence} on org{side}");
    assert_eq!(task["status"], "completed", "{context}: {task:#}");
    assert_eq!(
        ping_statuses(&task),
        vec![("org1.test".to_owned(), "pong-received".to_owned())],
        "{context}"
    );
    let pings = tasks_of(network.organization(1), "pong").await;
    assert_eq!(pings.len(), 1, "{context}: pings sent");
    let pongs = tasks_of(org0, "ping").await;
    assert_eq!(pongs.len(), 2, "{context}: start Task and pongs");
    for (org, task) in [(1, &pings[0]), (0, &pongs[0]), (0, &pongs[1])] {
        let task = finished(
            network.organization(org),
            task["id"].as_str().unwrap_or_default(),
        )
        .await;
        assert_eq!(task["status"], "completed", "{context}: {task:#}");
    }
    true
}

async fn a_bpe_killed_at_any_step_loses_nothing_and_sends_nothing_twice() {
    let mut kills = Vec::new();
    for side in [0, 1] {
        for step in BPE_STEPS {
            for occurrence in [1, 2] {
                if killed_at(side, step, occurrence).await {
                    kills.push(format!("org{side}:{step}#{occurrence}"));
                }
            }
        }
    }
    // The pinging side meets every step twice (start Task, then pong) but for the sends;
    // the answering side once.
    assert!(kills.len() >= 18, "only {} kills: {kills:?}", kills.len());
}

fn main() {
    dsf_tests::Suite::new()
        .test(
            "ping_from_one_to_all_others_in_a_mesh",
            ping_from_one_to_all_others_in_a_mesh,
        )
        .test(
            "hub_and_spokes_ping_each_other_through_the_allow_lists",
            hub_and_spokes_ping_each_other_through_the_allow_lists,
        )
        .test(
            "refused_unreachable_and_silent_targets_are_told_apart",
            refused_unreachable_and_silent_targets_are_told_apart,
        )
        .test(
            "a_target_that_never_answers_is_pong_missing",
            a_target_that_never_answers_is_pong_missing,
        )
        .test(
            "unknown_process_and_uncorrelated_messages_fail_the_task",
            unknown_process_and_uncorrelated_messages_fail_the_task,
        )
        .test(
            "two_bpes_on_one_server_run_each_task_once",
            two_bpes_on_one_server_run_each_task_once,
        )
        .test(
            "a_restarted_bpe_catches_up_on_what_arrived_while_it_was_down",
            a_restarted_bpe_catches_up_on_what_arrived_while_it_was_down,
        )
        .test(
            "autostart_pings_at_its_interval_until_stopped",
            autostart_pings_at_its_interval_until_stopped,
        )
        .test(
            "a_broken_plugin_is_refused_and_the_others_run",
            a_broken_plugin_is_refused_and_the_others_run,
        )
        .test(
            "two_versions_of_a_plugin_run_side_by_side_and_old_ones_retire",
            two_versions_of_a_plugin_run_side_by_side_and_old_ones_retire,
        )
        .test(
            "tasks_written_while_the_websocket_was_down_are_caught_up",
            tasks_written_while_the_websocket_was_down_are_caught_up,
        )
        .test(
            "the_plugin_guide_hello_world_runs",
            the_plugin_guide_hello_world_runs,
        )
        .test(
            "the_hello_user_process_waits_for_a_person_and_records_their_greeting",
            the_hello_user_process_waits_for_a_person_and_records_their_greeting,
        )
        .test(
            "a_slow_handler_holds_up_no_other_instance",
            a_slow_handler_holds_up_no_other_instance,
        )
        .test(
            "a_panicking_handler_fails_its_task_and_the_bpe_goes_on",
            a_panicking_handler_fails_its_task_and_the_bpe_goes_on,
        )
        .test(
            "a_user_task_waits_for_its_questionnaire_response",
            a_user_task_waits_for_its_questionnaire_response,
        )
        .test(
            "a_bpe_killed_at_any_step_loses_nothing_and_sends_nothing_twice",
            a_bpe_killed_at_any_step_loses_nothing_and_sends_nothing_twice,
        )
        .run()
}
