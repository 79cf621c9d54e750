//! Plugin files end to end: organisations in-process on loopback, each BPE starting the
//! executables of its plugin directory (the Rust reference plugins as cargo builds them, and
//! plugins written in Python) and running their processes across organisations; files that
//! cannot run are refused while the others run; excluded and retired processes; plugin
//! processes that crash, hang or answer garbage fail only what they were doing and come back.

use dsf_engine::{Bpe, BpeConfig, ProcessState};
use dsf_plugin_api::task::{output_string, parameter};
use dsf_plugin_ping_pong as ping_pong;
use dsf_tests::network::{Network, Organization, Topology};
use dsf_tests::plugin_files;
use dsf_tests::tasks::{
    error_of, finished, ping_statuses, post, start_ping, start_task, tasks_instantiating, tasks_of,
    BPE_STEPS, WAIT,
};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ASK: &str = "http://example.org/fhir/CodeSystem/ask";
const FAULTY: &str = "http://test.org/fhir/CodeSystem/faulty";

/// A BPE configuration running the plugin files of `directory`, pings waiting 3 s for pongs.
fn config(org: &Organization, directory: &Path) -> BpeConfig {
    let mut config = BpeConfig::new(&org.base_url, org.bpe_tls.clone());
    config.plugin_directory = Some(directory.to_path_buf());
    config
        .plugin_config
        .push((ping_pong::PONG_TIMEOUT_PROPERTY.into(), "PT3S".into()));
    config
}

async fn start(config: BpeConfig) -> Bpe {
    let bpe = Bpe::start(config, Vec::new()).await.expect("BPE starts");
    tokio::time::timeout(WAIT, bpe.wait_connected())
        .await
        .expect("BPE subscriptions bound");
    bpe
}

/// A BPE whose plugin files all deployed.
async fn start_clean(config: BpeConfig) -> Bpe {
    let bpe = start(config).await;
    let refused: Vec<_> = bpe
        .report()
        .plugin_files
        .iter()
        .filter(|f| f.outcome.is_err())
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    bpe
}

fn reference_plugins() -> tempfile::TempDir {
    plugin_files::reference_directory()
}

async fn reference_plugin_files_run_across_three_organisations() {
    let network = Network::start(3, Topology::Mesh).await;
    let plugins = reference_plugins();
    let mut bpes = Vec::new();
    for org in &network.organizations {
        bpes.push(start_clean(config(org, plugins.path())).await);
    }
    let report = bpes[0].report();
    assert_eq!(report.plugin_files.len(), 3, "{report:?}");
    let ping_pong_file = report
        .plugin_files
        .iter()
        .find(|f| f.file.ends_with("dsf-process-ping-pong"))
        .expect("ping-pong reported");
    assert_eq!(
        ping_pong_file.plugin.as_deref(),
        Some("dsf-process-ping-pong 1.0.1.0")
    );
    assert_eq!(
        ping_pong_file.outcome,
        Ok(vec![
            "dsfdev_ping|1.0".to_owned(),
            "dsfdev_pong|1.0".to_owned(),
            "dsfdev_pingAutostart|1.0".to_owned()
        ])
    );
    assert!(bpes[0].plugin_files().iter().all(|f| f.pid.is_some()));

    let org = network.organization(0);
    let id = start_ping(org).await;
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        ping_statuses(&task),
        vec![
            ("org1.test".to_owned(), "pong-received".to_owned()),
            ("org2.test".to_owned(), "pong-received".to_owned())
        ]
    );
    // The same three writes of the start Task as with the plugin linked in.
    assert_eq!(task["meta"]["versionId"], "3");

    let mut hello = start_task(org, "helloWorld", "task-hello-world", "helloWorld", vec![]);
    hello["meta"]["profile"] =
        json!(["http://example.org/fhir/StructureDefinition/task-hello-world|1.0"]);
    hello["instantiatesCanonical"] = json!(format!("{}|1.0", dsf_plugin_hello_world::PROCESS));
    let id = post(org, hello).await;
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(
        output_string(&task, dsf_plugin_hello_world::HELLO_WORLD, "greeting"),
        Some("Hello, org0.test!")
    );
}

/// A start Task of the Python plugin's `ask` process at `org`, asking `answerer`.
fn ask_task(org: &Organization, answerer: &Organization, question: &str) -> Value {
    let mut task = start_task(org, "ask", "task-ask", "ask", vec![]);
    task["meta"]["profile"] = json!(["http://example.org/fhir/StructureDefinition/task-ask|1.0"]);
    task["instantiatesCanonical"] = json!("http://example.org/bpe/Process/ask|1.0");
    let inputs = task["input"].as_array_mut().expect("inputs");
    inputs.push(parameter(ASK, "question", "valueString", json!(question)));
    inputs.push(parameter(
        ASK,
        "answerer",
        "valueString",
        json!(dsf_fhir::server::endpoint_identifier(&answerer.base_url)),
    ));
    task
}

/// The user task's QuestionnaireResponse at `org`, once the BPE created it.
async fn open_user_task(org: &Organization) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = org
            .client
            .search_pages("QuestionnaireResponse", "status=in-progress")
            .collect()
            .await
            .expect("search");
        if let Some(response) = found.into_iter().next() {
            return response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no QuestionnaireResponse"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn python_plugins() -> tempfile::TempDir {
    plugin_files::directory(&[("ask-answer", &plugin_files::python_ask_answer())])
}

async fn a_python_plugin_asks_and_a_person_answers_across_two_organisations() {
    let network = Network::start(2, Topology::Mesh).await;
    let plugins = python_plugins();
    let state = tempfile::tempdir().expect("temporary directory");
    let (asker, answerer) = (network.organization(0), network.organization(1));
    let _bpe0 = start_clean(config(asker, plugins.path())).await;
    let answering_config = || {
        let mut c = config(answerer, plugins.path());
        c.state = dsf_engine::StateDatabase::Sqlite(state.path().join("bpe1.sqlite"));
        c
    };
    let bpe1 = start_clean(answering_config()).await;
    assert_eq!(
        bpe1.report().deployed,
        vec!["exampleorg_ask|1.0", "exampleorg_answer|1.0"]
    );

    let id = post(asker, ask_task(asker, answerer, "What is six times seven?")).await;
    let mut response = open_user_task(answerer).await;
    // The plugin's user task listener put the question into the form.
    let item = response["item"]
        .as_array()
        .and_then(|items| items.iter().position(|i| i["linkId"] == "answer"))
        .expect("answer item");
    assert_eq!(
        response["item"][item]["text"],
        "Your answer to: What is six times seven?"
    );
    // The answering BPE restarts while the instance waits for the person: the new plugin
    // process carries the instance on.
    drop(bpe1);
    let _bpe1 = start_clean(answering_config()).await;
    response["item"][item]["answer"] = json!([{"valueString": "42"}]);
    response["status"] = json!("completed");
    answerer
        .client
        .update(&response)
        .await
        .expect("answer given");

    let task = finished(asker, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(output_string(&task, ASK, "answer"), Some("42"));
    let questions =
        tasks_instantiating(answerer, "http://example.org/bpe/Process/answer|1.0").await;
    assert_eq!(questions.len(), 1, "one question reached the answerer");
    assert_eq!(
        finished(answerer, questions[0]["id"].as_str().unwrap_or_default()).await["status"],
        "completed"
    );
}

async fn plugin_files_that_cannot_run_are_refused_and_the_others_run() {
    let network = Network::start(2, Topology::Mesh).await;
    let plugins = reference_plugins();
    let dir = plugins.path();
    std::fs::write(dir.join("README"), "not a plugin").expect("file");
    plugin_files::script(&dir.join("exits"), "exit 3");
    plugin_files::script(
        &dir.join("garbage"),
        "echo this is not the protocol; sleep 5",
    );
    plugin_files::script(&dir.join("silent"), "sleep 30");
    plugin_files::script(&dir.join(".hidden"), "exit 1");
    std::fs::create_dir(dir.join("folder")).expect("folder");
    // A plugin whose BPMN names a handler it does not have (the script lives elsewhere; the
    // plugin file is a wrapper that runs it).
    let script_dir = tempfile::tempdir().expect("temporary directory");
    let broken = script_dir.path().join("broken.py");
    std::fs::write(
        &broken,
        format!(
            r#"#!/usr/bin/env python3
import sys
sys.path.insert(0, {library:?})
from dsf_plugin import Plugin
plugin = Plugin("broken", "1.0.0.0", "2026-12-04")
plugin.bpmn("bpe/broken.bpmn", """<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn">
  <bpmn:process id="testorg_broken" isExecutable="true" camunda:versionTag="1.0">
    <bpmn:startEvent id="s"><bpmn:messageEventDefinition messageRef="m"/></bpmn:startEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="s" targetRef="a"/>
    <bpmn:serviceTask id="a" camunda:class="org.example.Missing"/>
    <bpmn:sequenceFlow id="f2" sourceRef="a" targetRef="e"/>
    <bpmn:endEvent id="e"/>
  </bpmn:process>
  <bpmn:message id="m" name="go"/>
</bpmn:definitions>""")
plugin.run()
"#,
            library = plugin_files::workspace()
                .join("plugins")
                .join("python")
                .display()
                .to_string()
        ),
    )
    .expect("script");
    plugin_files::script(
        &dir.join("broken-plugin"),
        &format!("exec python3 {}", broken.display()),
    );

    let org = network.organization(0);
    let mut c = config(org, dir);
    c.plugin_files.start_timeout = Duration::from_secs(3);
    let started = tokio::time::Instant::now();
    let bpe = start(c).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refusals wait at most the start time-out, all at once"
    );
    let reason = |name: &str| -> String {
        let report = bpe
            .report()
            .plugin_files
            .iter()
            .find(|f| f.file.ends_with(name))
            .unwrap_or_else(|| panic!("{name} reported: {:?}", bpe.report().plugin_files));
        report.outcome.clone().err().unwrap_or_default()
    };
    assert!(
        reason("README").contains("not executable"),
        "{}",
        reason("README")
    );
    assert!(
        reason("exits").contains("exit status 3"),
        "{}",
        reason("exits")
    );
    assert!(
        reason("garbage").contains("frame") || reason("garbage").contains("protocol"),
        "{}",
        reason("garbage")
    );
    assert!(
        reason("silent").contains("no definition within"),
        "{}",
        reason("silent")
    );
    assert!(
        reason("folder").contains("not a file"),
        "{}",
        reason("folder")
    );
    assert!(
        reason("broken-plugin").contains("no handler registered for 'org.example.Missing'"),
        "{}",
        reason("broken-plugin")
    );
    assert!(!bpe
        .report()
        .plugin_files
        .iter()
        .any(|f| f.file.ends_with(".hidden")));
    assert_eq!(bpe.plugin_files().len(), 3, "the good files run");
    assert!(bpe
        .report()
        .plugin_files
        .iter()
        .filter(|f| f.outcome.is_ok())
        .all(|f| f
            .file
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("dsf-process-"))));
    let peer_plugins = reference_plugins();
    let _peer = start_clean(config(network.organization(1), peer_plugins.path())).await;
    let id = start_ping(org).await;
    assert_eq!(finished(org, &id).await["status"], "completed");
}

async fn two_versions_of_a_plugin_file_run_side_by_side() {
    let network = Network::start(2, Topology::Mesh).await;
    let plugins = python_plugins();
    plugin_files::script(
        &plugins.path().join("ask-answer-1.1"),
        &format!(
            "EXAMPLE_ASK_ANSWER_VERSION=1.1.0.0 exec {}",
            plugin_files::python_ask_answer().display()
        ),
    );
    let (asker, answerer) = (network.organization(0), network.organization(1));
    let bpe0 = start_clean(config(asker, plugins.path())).await;
    let _bpe1 = start_clean(config(answerer, plugins.path())).await;
    let mut deployed = bpe0.report().deployed.clone();
    deployed.sort();
    assert_eq!(
        deployed,
        vec![
            "exampleorg_answer|1.0",
            "exampleorg_answer|1.1",
            "exampleorg_ask|1.0",
            "exampleorg_ask|1.1"
        ]
    );
    assert_eq!(bpe0.plugin_files().len(), 2);
    // Version 1.1 runs its own instance end to end.
    let mut task = ask_task(asker, answerer, "Which version?");
    task["instantiatesCanonical"] = json!("http://example.org/bpe/Process/ask|1.1");
    task["meta"]["profile"] = json!(["http://example.org/fhir/StructureDefinition/task-ask|1.1"]);
    let id = post(asker, task).await;
    let mut response = open_user_task(answerer).await;
    assert_eq!(
        response["questionnaire"],
        "http://example.org/fhir/Questionnaire/answer|1.1"
    );
    for item in response["item"].as_array_mut().into_iter().flatten() {
        if item["linkId"] == "answer" {
            item["answer"] = json!([{"valueString": "1.1"}]);
        }
    }
    response["status"] = json!("completed");
    answerer.client.update(&response).await.expect("answered");
    let task = finished(asker, &id).await;
    assert_eq!(output_string(&task, ASK, "answer"), Some("1.1"), "{task:#}");
}

async fn count(org: &Organization, resource_type: &str, query: &str) -> usize {
    org.client
        .search_pages(resource_type, query)
        .collect()
        .await
        .expect("search")
        .len()
}

async fn excluded_and_retired_processes_start_nothing_new() {
    let network = Network::start(2, Topology::Mesh).await;
    let plugins = reference_plugins();
    let org = network.organization(0);
    let autostart = "url=http://dsf.dev/bpe/Process/pingAutostart";
    // First as an operator would have run it, all processes active.
    let bpe = start_clean(config(org, plugins.path())).await;
    assert_eq!(count(org, "ActivityDefinition", autostart).await, 1);
    drop(bpe);
    // A Task for the ping process arrives while the BPE is down.
    let waiting = start_ping(org).await;

    let mut c = config(org, plugins.path());
    c.excluded = vec!["dsfdev_pingAutostart|1.0".into()];
    c.retired = vec!["dsfdev_ping|1.0".into()];
    let bpe = start_clean(c).await;
    let mut suspended = bpe.report().suspended.clone();
    suspended.sort();
    assert_eq!(
        suspended,
        vec![
            (
                "dsfdev_pingAutostart|1.0".to_owned(),
                ProcessState::Excluded
            ),
            ("dsfdev_ping|1.0".to_owned(), ProcessState::Retired),
        ]
    );
    assert!(bpe
        .report()
        .deployed
        .contains(&"dsfdev_pong|1.0".to_owned()));
    // Excluded: its resources are gone, those another process needs stay.
    assert_eq!(count(org, "ActivityDefinition", autostart).await, 0);
    assert_eq!(
        count(
            org,
            "StructureDefinition",
            "url=http://dsf.dev/fhir/StructureDefinition/task-start-ping-autostart"
        )
        .await,
        0
    );
    assert_eq!(
        count(org, "ValueSet", "url=http://dsf.dev/fhir/ValueSet/ping").await,
        1
    );
    // Retired: its ActivityDefinition stays, retired, so the server takes no new Task for it.
    let ping = org
        .client
        .search_pages("ActivityDefinition", "url=http://dsf.dev/bpe/Process/ping")
        .collect()
        .await
        .expect("search");
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0]["status"], "retired");
    let refused = org
        .client
        .create(&start_task(
            org,
            "ping",
            "task-start-ping",
            "startPing",
            vec![],
        ))
        .await;
    assert!(
        matches!(refused, Err(dsf_fhir::Error::Forbidden(_))),
        "{refused:?}"
    );
    // The Task that came while it was down starts no instance either.
    let task = finished(org, &waiting).await;
    assert_eq!(task["status"], "failed");
    assert!(
        error_of(&task).contains("dsfdev_ping|1.0 is retired"),
        "{}",
        error_of(&task)
    );
    // The pong process is active: the other organisation's pings are answered.
    let _peer = start_clean(config(network.organization(1), plugins.path())).await;
    let id = start_ping(network.organization(1)).await;
    let task = finished(network.organization(1), &id).await;
    assert_eq!(
        ping_statuses(&task),
        vec![("org0.test".to_owned(), "pong-received".to_owned())]
    );
}

/// A start Task of the faulty test plugin, doing `mode`.
fn faulty_task(org: &Organization, mode: &str) -> Value {
    let mut task = start_task(org, "faulty", "task-act", "act", vec![]);
    task["meta"]["profile"] = json!(["http://test.org/fhir/StructureDefinition/task-act|1.0"]);
    task["instantiatesCanonical"] = json!("http://test.org/bpe/Process/faulty|1.0");
    task["input"]
        .as_array_mut()
        .expect("inputs")
        .push(parameter(FAULTY, "mode", "valueString", json!(mode)));
    task
}

fn faulty_plugins() -> tempfile::TempDir {
    let faulty = plugin_files::workspace()
        .join("tests")
        .join("plugins")
        .join("faulty")
        .join("faulty.py");
    plugin_files::directory(&[
        ("faulty", &faulty),
        ("dsf-process-ping-pong", &plugin_files::ping_pong()),
    ])
}

fn pid_of(bpe: &Bpe, name: &str) -> Option<u32> {
    bpe.plugin_files()
        .into_iter()
        .find(|f| f.file.ends_with(name))
        .and_then(|f| f.pid)
}

/// Waits until the plugin file `name` runs as a process other than `old`.
async fn restarted(bpe: &Bpe, name: &str, old: Option<u32>) -> u32 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(pid) = pid_of(bpe, name).filter(|pid| Some(*pid) != old) {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not restarted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// After a fault, the plugin process is a new one and the next Task runs; ping-pong, another
/// plugin file of the same BPE, was never disturbed.
async fn recovers(org: &Organization, bpe: &Bpe, old: Option<u32>, ping_pong_pid: Option<u32>) {
    restarted(bpe, "faulty", old).await;
    let id = post(org, faulty_task(org, "ok")).await;
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(pid_of(bpe, "dsf-process-ping-pong"), ping_pong_pid);
    let id = start_ping(org).await;
    assert_eq!(finished(org, &id).await["status"], "completed");
}

async fn a_crashing_hanging_or_garbling_plugin_fails_its_task_and_comes_back() {
    let network = Network::start(1, Topology::Mesh).await;
    let plugins = faulty_plugins();
    let org = network.organization(0);
    let mut c = config(org, plugins.path());
    c.plugin_files.call_timeout = Duration::from_secs(3);
    let bpe = start_clean(c).await;
    let ping_pong_pid = pid_of(&bpe, "dsf-process-ping-pong");
    assert!(ping_pong_pid.is_some());

    for (mode, reason) in [
        ("exit", "stopped during the call"),
        ("garbage", "not the protocol"),
        ("sleep", "no answer within 3s"),
    ] {
        let old = pid_of(&bpe, "faulty");
        let id = post(org, faulty_task(org, mode)).await;
        let task = finished(org, &id).await;
        assert_eq!(task["status"], "failed", "{mode}: {task:#}");
        let error = error_of(&task);
        assert!(error.contains(reason), "{mode}: {error}");
        assert!(
            error.contains("plugin faulty (faulty.Act)"),
            "{mode}: {error}"
        );
        recovers(org, &bpe, old, ping_pong_pid).await;
    }

    // Killed from outside in the middle of a call.
    let old = pid_of(&bpe, "faulty");
    let id = post(org, faulty_task(org, "sleep")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(old.expect("running"));
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    assert!(
        error_of(&task).contains("killed by signal 9"),
        "{}",
        error_of(&task)
    );
    recovers(org, &bpe, old, ping_pong_pid).await;
    assert_eq!(bpe.running_instances().await.expect("count"), 0);
}

async fn a_plugin_that_keeps_crashing_is_restarted_with_back_off() {
    let network = Network::start(1, Topology::Mesh).await;
    let plugins = faulty_plugins();
    let org = network.organization(0);
    let starts = plugins.path().join("starts");
    let faulty = plugins.path().join("faulty");
    let target = std::fs::read_link(&faulty).expect("link");
    // Runs the real plugin the first time, then crashes at every start.
    std::fs::remove_file(&faulty).expect("unlink");
    plugin_files::script(
        &faulty,
        &format!(
            "echo start >> {starts}\nif [ $(wc -l < {starts}) -gt 1 ]; then exit 7; fi\nexec {target}",
            starts = starts.display(),
            target = target.display()
        ),
    );
    let mut c = config(org, plugins.path());
    c.plugin_files.call_timeout = Duration::from_secs(2);
    let bpe = start_clean(c).await;
    kill(pid_of(&bpe, "faulty").expect("running"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarts = std::fs::read_to_string(&starts)
        .expect("starts")
        .lines()
        .count()
        - 1;
    // 0.1 s, then 0.2, 0.4, 0.8, 1.6 …: about five in four seconds, not forty.
    assert!((3..=7).contains(&restarts), "{restarts} restarts");
    // Its Tasks fail with the reason; the BPE and the other plugin go on.
    let id = post(org, faulty_task(org, "ok")).await;
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "failed");
    assert!(
        error_of(&task).contains("exit status 7"),
        "{}",
        error_of(&task)
    );
    let id = start_ping(org).await;
    assert_eq!(finished(org, &id).await["status"], "completed");
}

/// Kills the ping-pong process of organisation `side` when its BPE first reaches `step`,
/// then checks that no Task is left in progress, that no ping or pong went out twice, and
/// that the next ping completes.
async fn plugin_killed_at(side: usize, step: &'static str) {
    let network = Network::start(2, Topology::Mesh).await;
    let plugins = plugin_files::directory(&[("dsf-process-ping-pong", &plugin_files::ping_pong())]);
    let pid: Arc<Mutex<Option<u32>>> = Arc::default();
    let killed = Arc::new(Mutex::new(false));
    let hook = {
        let (pid, killed) = (pid.clone(), killed.clone());
        Arc::new(move |name: &str| {
            if name == step {
                let mut killed = killed.lock().unwrap_or_else(|p| p.into_inner());
                if !*killed {
                    if let Some(pid) = *pid.lock().unwrap_or_else(|p| p.into_inner()) {
                        kill(pid);
                        *killed = true;
                    }
                }
            }
            false
        })
    };
    let mut bpes = Vec::new();
    for i in 0..2 {
        let mut c = config(network.organization(i), plugins.path());
        if i == side {
            c.crash_at = Some(hook.clone());
        }
        bpes.push(start_clean(c).await);
    }
    *pid.lock().unwrap_or_else(|p| p.into_inner()) = pid_of(&bpes[side], "dsf-process-ping-pong");
    let (a, b) = (network.organization(0), network.organization(1));
    let id = start_ping(a).await;
    let task = finished(a, &id).await;
    // A step after the Tasks' last write (`tasks-finished`) is reached just after the
    // finished Task can be read: wait for it rather than look once.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !*killed.lock().unwrap_or_else(|p| p.into_inner()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "org{side} never reached {step}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every Task has its end: none stays in progress.
    for org in [a, b] {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let open = count(org, "Task", "status=in-progress").await
                + count(org, "Task", "status=requested").await;
            if open == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "org{side} killed at {step}: {open} Tasks open at {}",
                org.identifier
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        tasks_of(b, "pong").await.len() <= 1,
        "killed at {step}: one ping at most"
    );
    assert!(
        tasks_of(a, "ping").await.len() <= 2,
        "killed at {step}: the start Task and one pong at most"
    );
    if task["status"] == "failed" {
        assert!(error_of(&task).contains("plugin"), "{}", error_of(&task));
    }
    restarted(&bpes[side], "dsf-process-ping-pong", None).await;
    let id = start_ping(a).await;
    let task = finished(a, &id).await;
    assert_eq!(
        ping_statuses(&task),
        vec![("org1.test".to_owned(), "pong-received".to_owned())],
        "after the kill at {step}"
    );
}

async fn a_plugin_process_killed_at_any_step_leaves_no_task_in_progress() {
    for side in [0, 1] {
        for step in BPE_STEPS {
            plugin_killed_at(side, step).await;
        }
    }
}

/// A start Task of the allow-list plugin's `process` at `org` (to itself).
fn allow_list_task(org: &Organization, process: &str, profile: &str, message: &str) -> Value {
    let mut task = start_task(org, process, profile, message, vec![]);
    task["meta"]["profile"] = json!([format!(
        "http://dsf.dev/fhir/StructureDefinition/{profile}|1.0"
    )]);
    task
}

fn download_task(org: &Organization, bundle: &str) -> Value {
    let mut task = allow_list_task(
        org,
        "downloadAllowList",
        "task-download-allow-list",
        "downloadAllowListMessage",
    );
    task["input"]
        .as_array_mut()
        .expect("inputs")
        .push(parameter(
            dsf_plugin_allow_list::ALLOW_LIST,
            dsf_plugin_allow_list::ALLOW_LIST_CODE,
            "valueReference",
            json!({"reference": bundle}),
        ));
    task
}

async fn pongs(org: &Organization) -> Vec<(String, String)> {
    let id = start_ping(org).await;
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    ping_statuses(&task)
}

async fn an_organisation_added_to_the_central_allow_list_reaches_the_others_once_they_download_it()
{
    // org0 is the central organisation (the allow-list management site) and knows everyone;
    // org1 and org2 know org0 and each other; org3 is new: it knows everyone, but of the
    // others only org0 knows it.
    let network = Network::start_allowing(4, |i, j| i == 0 || i == 3 || j != 3).await;
    let plugins = plugin_files::directory(&[
        ("dsf-process-allow-list", &plugin_files::allow_list()),
        ("dsf-process-ping-pong", &plugin_files::ping_pong()),
    ]);
    let mut bpes = Vec::new();
    for (i, org) in network.organizations.iter().enumerate() {
        let mut c = config(org, plugins.path());
        c.plugin_config.push((
            "dev.dsf.bpe.allow.list.organization".into(),
            "org0.test".into(),
        ));
        if i != 0 {
            c.excluded = vec!["dsfdev_updateAllowList|1.0".into()];
        }
        bpes.push(start_clean(c).await);
    }
    let (central, newcomer) = (network.organization(0), network.organization(3));
    let reached = |statuses: Vec<(String, String)>| -> Vec<String> {
        statuses
            .into_iter()
            .filter(|(_, status)| status == "pong-received")
            .map(|(org, _)| org)
            .collect()
    };
    assert_eq!(reached(pongs(newcomer).await), vec!["org0.test"]);

    // The central organisation publishes its list.
    let id = post(
        central,
        allow_list_task(
            central,
            "updateAllowList",
            "task-update-allow-list",
            "updateAllowList",
        ),
    )
    .await;
    let task = finished(central, &id).await;
    assert_eq!(task["status"], "completed", "{task:#}");
    let bundle = dsf_plugin_api::task::outputs(
        &task,
        dsf_plugin_allow_list::ALLOW_LIST,
        dsf_plugin_allow_list::ALLOW_LIST_CODE,
    )[0]["valueReference"]["reference"]
        .as_str()
        .expect("Bundle reference")
        .to_owned();
    assert!(
        bundle.starts_with(&format!("{}/Bundle/", central.base_url)),
        "{bundle}"
    );
    // Only the central organisation may start the update (its ActivityDefinition says so).
    let refused = network
        .organization(1)
        .client
        .create(&allow_list_task(
            network.organization(1),
            "updateAllowList",
            "task-update-allow-list",
            "updateAllowList",
        ))
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // The others download and apply it, with no restart.
    for i in [1, 2] {
        let org = network.organization(i);
        let id = post(org, download_task(org, &bundle)).await;
        let task = finished(org, &id).await;
        assert_eq!(task["status"], "completed", "org{i}: {task:#}");
    }
    assert_eq!(
        reached(pongs(newcomer).await),
        vec!["org0.test", "org1.test", "org2.test"]
    );
    assert_eq!(
        reached(pongs(network.organization(1)).await),
        vec!["org0.test", "org2.test", "org3.test"]
    );

    // A Bundle that would write anything else is refused, entry by entry, and changes nothing.
    let hostile = central
        .client
        .create(&json!({
            "resourceType": "Bundle",
            "meta": {"tag": [dsf_plugin_api::task::tag_all()]},
            "type": "transaction",
            "entry": [
                {"resource": start_task(central, "ping", "task-start-ping", "startPing", vec![]),
                 "request": {"method": "POST", "url": "Task"}},
                {"request": {"method": "DELETE", "url": "Organization?identifier=http://dsf.dev/sid/organization-identifier|org1.test"}},
            ],
        }))
        .await
        .expect("Bundle stored");
    let hostile = format!(
        "{}/Bundle/{}",
        central.base_url,
        hostile["id"].as_str().expect("id")
    );
    let org = network.organization(2);
    let before = count(org, "Organization", "").await;
    let id = post(org, download_task(org, &hostile)).await;
    let task = finished(org, &id).await;
    assert_eq!(task["status"], "failed", "{task:#}");
    let errors: Vec<&str> = dsf_plugin_api::task::outputs(
        &task,
        "http://dsf.dev/fhir/CodeSystem/bpmn-message",
        "error",
    )
    .into_iter()
    .filter_map(|o| o["valueString"].as_str())
    .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("Resource of type 'Task' not allowed")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("Request with Method 'POST' not allowed")),
        "{errors:?}"
    );
    assert_eq!(count(org, "Organization", "").await, before);
    assert_eq!(
        tasks_of(org, "ping").await.len(),
        0,
        "the Bundle's Task was not written"
    );
}

fn main() {
    // Plugin files run as processes of their own; the lookup builds them if needed, once,
    // before any test starts a BPE.
    plugin_files::ping_pong();
    plugin_files::hello_world();
    plugin_files::allow_list();
    dsf_tests::Suite::new()
        .test(
            "reference_plugin_files_run_across_three_organisations",
            reference_plugin_files_run_across_three_organisations,
        )
        .test(
            "a_python_plugin_asks_and_a_person_answers_across_two_organisations",
            a_python_plugin_asks_and_a_person_answers_across_two_organisations,
        )
        .test(
            "plugin_files_that_cannot_run_are_refused_and_the_others_run",
            plugin_files_that_cannot_run_are_refused_and_the_others_run,
        )
        .test(
            "two_versions_of_a_plugin_file_run_side_by_side",
            two_versions_of_a_plugin_file_run_side_by_side,
        )
        .test(
            "excluded_and_retired_processes_start_nothing_new",
            excluded_and_retired_processes_start_nothing_new,
        )
        .test(
            "a_crashing_hanging_or_garbling_plugin_fails_its_task_and_comes_back",
            a_crashing_hanging_or_garbling_plugin_fails_its_task_and_comes_back,
        )
        .test(
            "a_plugin_that_keeps_crashing_is_restarted_with_back_off",
            a_plugin_that_keeps_crashing_is_restarted_with_back_off,
        )
        .test(
            "an_organisation_added_to_the_central_allow_list_reaches_the_others_once_they_download_it",
            an_organisation_added_to_the_central_allow_list_reaches_the_others_once_they_download_it,
        )
        .test(
            "a_plugin_process_killed_at_any_step_leaves_no_task_in_progress",
            a_plugin_process_killed_at_any_step_leaves_no_task_in_progress,
        )
        .run()
}
