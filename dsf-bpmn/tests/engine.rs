//! Conformance of the token engine: one test per element and extension it executes, each
//! asserting the exact path an instance takes and the variables it leaves, on a virtual clock.

use dsf_bpmn::engine::{
    Engine, HandlerError, Instance, InstanceState, Registry, Step, VirtualClock, Waiting,
};
use dsf_bpmn::Error;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};

const T0: i64 = 1_700_000_000_000;

fn definitions(body: &str, extra: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <bpmn:process id="p" isExecutable="true">{body}</bpmn:process>
  <bpmn:message id="MsgGo" name="go" />
  <bpmn:message id="MsgStart" name="startMe" />
  <bpmn:error id="ErrFail" name="fail" errorCode="fail-code" />
  {extra}
</bpmn:definitions>"#
    )
}

fn flow(id: &str, from: &str, to: &str) -> String {
    format!(r#"<bpmn:sequenceFlow id="{id}" sourceRef="{from}" targetRef="{to}" />"#)
}

fn conditional(id: &str, from: &str, to: &str, condition: &str) -> String {
    format!(
        r#"<bpmn:sequenceFlow id="{id}" sourceRef="{from}" targetRef="{to}"><bpmn:conditionExpression xsi:type="bpmn:tFormalExpression">{condition}</bpmn:conditionExpression></bpmn:sequenceFlow>"#
    )
}

fn service(id: &str, class: &str) -> String {
    format!(r#"<bpmn:serviceTask id="{id}" camunda:class="{class}" />"#)
}

/// Records the element ids handlers ran for, in order.
type Calls = Arc<Mutex<Vec<String>>>;

fn recording(calls: &Calls, names: &[&str]) -> Registry {
    let mut registry = Registry::new();
    for name in names {
        let calls = calls.clone();
        registry.bind_fn(name, move |ctx| {
            calls.lock().unwrap().push(ctx.element_id.to_owned());
            Ok(())
        });
    }
    registry
}

fn deploy(xml: &str, registry: Registry, clock: &VirtualClock) -> Engine {
    let definitions = dsf_bpmn::parse(xml.as_bytes(), "test.bpmn").expect("parses");
    Engine::deploy(definitions, registry, Arc::new(clock.clone())).expect("deploys")
}

fn vars(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

fn path(instance: &Instance) -> Vec<&str> {
    instance.path.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn service_task_with_fields_and_variables() {
    let body = [
        r#"<bpmn:startEvent id="s" />"#.to_owned(),
        r#"<bpmn:serviceTask id="t" camunda:class="org.example.Work"><bpmn:extensionElements>
            <camunda:field name="fixed"><camunda:string>literal</camunda:string></camunda:field>
            <camunda:field name="computed" expression="${input}-x" />
          </bpmn:extensionElements></bpmn:serviceTask>"#
            .to_owned(),
        r#"<bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "t"),
        flow("f2", "t", "e"),
    ]
    .concat();
    let mut registry = Registry::new();
    registry.bind_fn("org.example.Work", |ctx| {
        let joined = format!(
            "{}+{}",
            ctx.field("fixed").unwrap().as_str().unwrap(),
            ctx.field("computed").unwrap().as_str().unwrap()
        );
        ctx.set("result", json!(joined));
        Ok(())
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), registry, &clock);
    let mut instance = engine
        .start("p", Some("bk"), vars(json!({"input": "in"})))
        .unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(path(&instance), ["s", "t", "e"]);
    assert_eq!(instance.state, InstanceState::Completed);
    assert_eq!(instance.variable("result"), Some(&json!("literal+in-x")));
}

#[tokio::test]
async fn exclusive_gateway_takes_the_first_true_condition_or_the_default() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:exclusiveGateway id="g" default="fDefault" />"#
            .to_owned(),
        r#"<bpmn:endEvent id="small" /><bpmn:endEvent id="big" /><bpmn:endEvent id="other" />"#
            .to_owned(),
        flow("f0", "s", "g"),
        conditional("fSmall", "g", "small", "${n &lt; 10}"),
        conditional("fBig", "g", "big", "${n >= 10 &amp;&amp; n &lt; 100}"),
        flow("fDefault", "g", "other"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    for (n, end) in [(3, "small"), (50, "big"), (500, "other")] {
        let mut instance = engine.start("p", None, vars(json!({"n": n}))).unwrap();
        engine.run(&mut instance).await.unwrap();
        assert_eq!(path(&instance), ["s", "g", end], "n = {n}");
    }
    // Without a matching condition and without a default: a runtime error naming the gateway.
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:exclusiveGateway id="g" /><bpmn:endEvent id="a" /><bpmn:endEvent id="b" />"#.to_owned(),
        flow("f0", "s", "g"),
        conditional("fa", "g", "a", "${n == 1}"),
        conditional("fb", "g", "b", "${n == 2}"),
    ]
    .concat();
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut instance = engine.start("p", None, vars(json!({"n": 3}))).unwrap();
    let error = engine.run(&mut instance).await.unwrap_err();
    assert!(
        matches!(&error, Error::Runtime { element, .. } if element == "g"),
        "{error}"
    );
    // The instance is failed, not left running with a token stuck at the gateway.
    assert!(
        matches!(&instance.state, InstanceState::Failed { element, .. } if element == "g"),
        "{:?}",
        instance.state
    );
    assert!(instance.is_finished());
}

#[tokio::test]
async fn parallel_gateway_forks_and_joins_once() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:parallelGateway id="fork" /><bpmn:parallelGateway id="join" /><bpmn:endEvent id="e" />"#.to_owned(),
        service("a", "A"),
        service("b", "B"),
        flow("f0", "s", "fork"),
        flow("f1", "fork", "a"),
        flow("f2", "fork", "b"),
        flow("f3", "a", "join"),
        flow("f4", "b", "join"),
        flow("f5", "join", "e"),
    ]
    .concat();
    let calls = Calls::default();
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&body, ""),
        recording(&calls, &["A", "B"]),
        &clock,
    );
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    // The first branch runs on to the join and waits there; the second arrives and goes on.
    assert_eq!(
        path(&instance),
        ["s", "fork", "a", "join", "b", "join", "e"]
    );
    assert_eq!(*calls.lock().unwrap(), ["a", "b"]);
    assert_eq!(instance.state, InstanceState::Completed);
}

#[tokio::test]
async fn inclusive_gateway_takes_every_true_flow_and_joins_what_was_taken() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:inclusiveGateway id="fork" /><bpmn:inclusiveGateway id="join" /><bpmn:endEvent id="e" />"#.to_owned(),
        service("a", "A"),
        service("b", "B"),
        service("c", "C"),
        flow("f0", "s", "fork"),
        conditional("fa", "fork", "a", "${x &gt; 0}"),
        conditional("fb", "fork", "b", "${x &gt; 1}"),
        conditional("fc", "fork", "c", "${x &gt; 2}"),
        flow("fa2", "a", "join"),
        flow("fb2", "b", "join"),
        flow("fc2", "c", "join"),
        flow("f9", "join", "e"),
    ]
    .concat();
    let calls = Calls::default();
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&body, ""),
        recording(&calls, &["A", "B", "C"]),
        &clock,
    );
    let mut instance = engine.start("p", None, vars(json!({"x": 2}))).unwrap();
    engine.run(&mut instance).await.unwrap();
    assert_eq!(*calls.lock().unwrap(), ["a", "b"]);
    assert_eq!(
        path(&instance),
        ["s", "fork", "a", "join", "b", "join", "e"]
    );
    assert_eq!(
        instance.path.iter().filter(|p| *p == "e").count(),
        1,
        "joined into one token"
    );
    assert_eq!(instance.state, InstanceState::Completed);
}

fn message_wait_process() -> String {
    [
        r#"<bpmn:startEvent id="s" />"#.to_owned(),
        r#"<bpmn:intermediateCatchEvent id="wait"><bpmn:messageEventDefinition messageRef="MsgGo" /></bpmn:intermediateCatchEvent>"#.to_owned(),
        r#"<bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "wait"),
        flow("f2", "wait", "e"),
    ]
    .concat()
}

#[tokio::test]
async fn message_catch_correlates_by_business_key_and_correlation_key() {
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&message_wait_process(), ""),
        Registry::new(),
        &clock,
    );
    let mut a = engine
        .start("p", Some("bk-a"), vars(json!({"correlationKey": "ck-1"})))
        .unwrap();
    let mut b = engine.start("p", Some("bk-b"), Map::new()).unwrap();
    assert_eq!(engine.run(&mut a).await.unwrap(), Step::Waiting);
    assert_eq!(engine.run(&mut b).await.unwrap(), Step::Waiting);
    assert_eq!(
        a.waiting(),
        [Waiting::Message {
            name: "go".into(),
            correlation_key: Some("ck-1".into()),
            node: "wait".into()
        }]
    );
    let mut instances = vec![a, b];
    // Wrong correlation key: nobody takes it, and there is no message start event for "go".
    let miss = engine.correlate(&mut instances, "go", Some("bk-a"), Some("ck-2"), Map::new());
    assert!(matches!(miss, Err(Error::NoMatch(_))), "{miss:?}");
    let started = engine
        .correlate(
            &mut instances,
            "go",
            Some("bk-a"),
            Some("ck-1"),
            vars(json!({"answer": 42})),
        )
        .unwrap();
    assert!(started.is_none());
    engine.run(&mut instances[0]).await.unwrap();
    assert_eq!(path(&instances[0]), ["s", "wait", "e"]);
    assert_eq!(instances[0].variable("answer"), Some(&json!(42)));
    assert_eq!(
        instances[1].state,
        InstanceState::Running,
        "the other instance still waits"
    );
}

#[tokio::test]
async fn message_start_event_starts_an_instance() {
    let body = [
        r#"<bpmn:startEvent id="s"><bpmn:messageEventDefinition messageRef="MsgStart" /></bpmn:startEvent><bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "e"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut started = engine
        .correlate(&mut [], "startMe", Some("bk"), None, vars(json!({"v": 1})))
        .unwrap()
        .expect("new instance");
    engine.run(&mut started).await.unwrap();
    assert_eq!(path(&started), ["s", "e"]);
    assert_eq!(started.business_key.as_deref(), Some("bk"));
    assert_eq!(started.variable("v"), Some(&json!(1)));
}

#[test]
fn instance_ids_are_unique_across_engines_on_one_clock() {
    let body = [
        r#"<bpmn:startEvent id="s"><bpmn:messageEventDefinition messageRef="MsgStart" /></bpmn:startEvent><bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "e"),
    ]
    .concat();
    // Two deployments (as a BPE has one per process) on a clock that stands still.
    let clock = VirtualClock::at(T0);
    let a = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let b = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut ids = std::collections::HashSet::new();
    for engine in [&a, &b, &a, &b] {
        let instance = engine
            .correlate(&mut [], "startMe", Some("bk"), None, Map::new())
            .unwrap()
            .expect("new instance");
        assert!(ids.insert(instance.id), "duplicate instance id");
    }
}

#[tokio::test]
async fn receive_task_waits_for_its_message() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:receiveTask id="r" messageRef="MsgGo" /><bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "r"),
        flow("f2", "r", "e"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut instance = engine.start("p", Some("bk"), Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting);
    assert!(engine
        .deliver(&mut instance, "go", None, &Map::new())
        .unwrap());
    engine.run(&mut instance).await.unwrap();
    assert_eq!(path(&instance), ["s", "r", "e"]);
}

#[tokio::test]
async fn user_task_with_create_listener_waits_for_completion() {
    let body = [
        r#"<bpmn:startEvent id="s" />"#.to_owned(),
        r#"<bpmn:userTask id="u" camunda:formKey="http://dsf.test/Questionnaire/q|1.0"><bpmn:extensionElements><camunda:taskListener class="OnCreate" event="create" /></bpmn:extensionElements></bpmn:userTask>"#.to_owned(),
        r#"<bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "u"),
        flow("f2", "u", "e"),
    ]
    .concat();
    let calls = Calls::default();
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&body, ""),
        recording(&calls, &["OnCreate"]),
        &clock,
    );
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting);
    assert_eq!(instance.waiting(), [Waiting::UserTask { node: "u".into() }]);
    assert_eq!(*calls.lock().unwrap(), ["u"]);
    assert!(matches!(
        engine.complete_user_task(&mut instance, "nope", &Map::new()),
        Err(Error::NoMatch(_))
    ));
    engine
        .complete_user_task(&mut instance, "u", &vars(json!({"approved": true})))
        .unwrap();
    engine.run(&mut instance).await.unwrap();
    assert_eq!(path(&instance), ["s", "u", "e"]);
    assert_eq!(instance.variable("approved"), Some(&json!(true)));
}

#[tokio::test]
async fn timer_catch_fires_on_the_virtual_clock() {
    let body = [
        r#"<bpmn:startEvent id="s" />"#.to_owned(),
        r#"<bpmn:intermediateCatchEvent id="t"><bpmn:timerEventDefinition><bpmn:timeDuration xsi:type="bpmn:tFormalExpression">${delay}</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"#.to_owned(),
        r#"<bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "t"),
        flow("f2", "t", "e"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut instance = engine
        .start("p", None, vars(json!({"delay": "PT5M"})))
        .unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting);
    assert_eq!(instance.next_due(), Some(T0 + 300_000));
    clock.advance(299_999);
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting);
    clock.advance(1);
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(path(&instance), ["s", "t", "e"]);
}

fn race_process() -> String {
    [
        r#"<bpmn:startEvent id="s" /><bpmn:eventBasedGateway id="g" />"#.to_owned(),
        r#"<bpmn:intermediateCatchEvent id="answer"><bpmn:messageEventDefinition messageRef="MsgGo" /></bpmn:intermediateCatchEvent>"#.to_owned(),
        r#"<bpmn:intermediateCatchEvent id="timeout"><bpmn:timerEventDefinition><bpmn:timeDuration>PT20S</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"#.to_owned(),
        r#"<bpmn:endEvent id="answered" /><bpmn:endEvent id="timedOut" />"#.to_owned(),
        flow("f1", "s", "g"),
        flow("f2", "g", "answer"),
        flow("f3", "g", "timeout"),
        flow("f4", "answer", "answered"),
        flow("f5", "timeout", "timedOut"),
    ]
    .concat()
}

#[tokio::test]
async fn event_based_gateway_races_message_against_timer() {
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&race_process(), ""), Registry::new(), &clock);
    let mut by_message = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut by_message).await.unwrap();
    assert_eq!(by_message.waiting().len(), 2);
    assert!(engine
        .deliver(&mut by_message, "go", None, &Map::new())
        .unwrap());
    engine.run(&mut by_message).await.unwrap();
    assert_eq!(path(&by_message), ["s", "g", "answer", "answered"]);
    assert!(by_message.waiting().is_empty(), "the timer is cancelled");

    let mut by_timer = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut by_timer).await.unwrap();
    clock.advance(20_000);
    engine.run(&mut by_timer).await.unwrap();
    assert_eq!(path(&by_timer), ["s", "g", "timeout", "timedOut"]);
    assert!(
        !engine
            .deliver(&mut by_timer, "go", None, &Map::new())
            .unwrap(),
        "the message wait is gone"
    );
}

#[tokio::test]
async fn embedded_subprocess_runs_in_its_own_scope() {
    let body = [
        r#"<bpmn:startEvent id="s" />"#.to_owned(),
        r#"<bpmn:subProcess id="sub"><bpmn:startEvent id="ss" /><bpmn:serviceTask id="inner" camunda:class="Inner" /><bpmn:endEvent id="se" />"#.to_owned(),
        flow("i1", "ss", "inner"),
        flow("i2", "inner", "se"),
        r#"</bpmn:subProcess><bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "sub"),
        flow("f2", "sub", "e"),
    ]
    .concat();
    let mut registry = Registry::new();
    registry.bind_fn("Inner", |ctx| {
        ctx.set_local("scratch", json!(1));
        ctx.set("kept", json!(2));
        Ok(())
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), registry, &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    assert_eq!(path(&instance), ["s", "sub", "ss", "inner", "se", "e"]);
    assert_eq!(instance.variable("kept"), Some(&json!(2)));
    assert_eq!(
        instance.variable("scratch"),
        None,
        "local to the subprocess, gone with it"
    );
}

#[tokio::test]
async fn interrupting_timer_boundary_cancels_the_user_task() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:userTask id="u" /><bpmn:endEvent id="done" /><bpmn:endEvent id="late" />"#.to_owned(),
        r#"<bpmn:boundaryEvent id="b" attachedToRef="u"><bpmn:timerEventDefinition><bpmn:timeDuration>PT1H</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:boundaryEvent>"#.to_owned(),
        flow("f1", "s", "u"),
        flow("f2", "u", "done"),
        flow("f3", "b", "late"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    clock.advance(3_600_000);
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(path(&instance), ["s", "u", "b", "late"]);
    assert!(
        engine
            .complete_user_task(&mut instance, "u", &Map::new())
            .is_err(),
        "the task is gone"
    );
}

#[tokio::test]
async fn non_interrupting_cycle_boundary_fires_repeatedly_beside_the_task() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:userTask id="u" /><bpmn:endEvent id="done" />"#.to_owned(),
        r#"<bpmn:boundaryEvent id="remind" attachedToRef="u" cancelActivity="false"><bpmn:timerEventDefinition><bpmn:timeCycle>R2/PT10M</bpmn:timeCycle></bpmn:timerEventDefinition></bpmn:boundaryEvent>"#.to_owned(),
        service("notify", "Notify"),
        r#"<bpmn:endEvent id="reminded" />"#.to_owned(),
        flow("f1", "s", "u"),
        flow("f2", "u", "done"),
        flow("f3", "remind", "notify"),
        flow("f4", "notify", "reminded"),
    ]
    .concat();
    let calls = Calls::default();
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&body, ""),
        recording(&calls, &["Notify"]),
        &clock,
    );
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    for _ in 0..3 {
        clock.advance(600_000);
        engine.run(&mut instance).await.unwrap();
    }
    assert_eq!(
        calls.lock().unwrap().len(),
        2,
        "R2: two reminders, then no more"
    );
    engine
        .complete_user_task(&mut instance, "u", &Map::new())
        .unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(
        path(&instance),
        ["s", "u", "remind", "notify", "reminded", "remind", "notify", "reminded", "done"]
    );
}

#[tokio::test]
async fn message_boundary_interrupts_a_receive_task() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:receiveTask id="r" messageRef="MsgStart" /><bpmn:endEvent id="normal" /><bpmn:endEvent id="cancelled" />"#.to_owned(),
        r#"<bpmn:boundaryEvent id="stop" attachedToRef="r"><bpmn:messageEventDefinition messageRef="MsgGo" /></bpmn:boundaryEvent>"#.to_owned(),
        flow("f1", "s", "r"),
        flow("f2", "r", "normal"),
        flow("f3", "stop", "cancelled"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    assert!(engine
        .deliver(&mut instance, "go", None, &Map::new())
        .unwrap());
    engine.run(&mut instance).await.unwrap();
    assert_eq!(path(&instance), ["s", "r", "stop", "cancelled"]);
}

#[tokio::test]
async fn error_end_event_is_caught_by_the_subprocess_boundary() {
    let body = [
        r#"<bpmn:startEvent id="s" />"#.to_owned(),
        r#"<bpmn:subProcess id="sub"><bpmn:startEvent id="ss" /><bpmn:endEvent id="boom"><bpmn:errorEventDefinition errorRef="ErrFail" /></bpmn:endEvent>"#.to_owned(),
        flow("i1", "ss", "boom"),
        r#"</bpmn:subProcess><bpmn:endEvent id="e" /><bpmn:endEvent id="handled" />"#.to_owned(),
        r#"<bpmn:boundaryEvent id="catch" attachedToRef="sub"><bpmn:errorEventDefinition errorRef="ErrFail" camunda:errorCodeVariable="code" /></bpmn:boundaryEvent>"#.to_owned(),
        flow("f1", "s", "sub"),
        flow("f2", "sub", "e"),
        flow("f3", "catch", "handled"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    assert_eq!(
        path(&instance),
        ["s", "sub", "ss", "boom", "catch", "handled"]
    );
    assert_eq!(instance.variable("code"), Some(&json!("fail-code")));
    assert_eq!(instance.state, InstanceState::Completed);
}

#[tokio::test]
async fn handler_bpmn_errors_are_caught_by_task_boundaries_or_fail_the_instance() {
    let caught = [
        r#"<bpmn:startEvent id="s" />"#.to_owned(),
        service("t", "Throws"),
        r#"<bpmn:boundaryEvent id="catch" attachedToRef="t"><bpmn:errorEventDefinition camunda:errorMessageVariable="why" /></bpmn:boundaryEvent>"#.to_owned(),
        r#"<bpmn:endEvent id="e" /><bpmn:endEvent id="handled" />"#.to_owned(),
        flow("f1", "s", "t"),
        flow("f2", "t", "e"),
        flow("f3", "catch", "handled"),
    ]
    .concat();
    let throwing = || {
        let mut registry = Registry::new();
        registry.bind_fn("Throws", |_| {
            Err(HandlerError::Bpmn {
                code: "other".into(),
                message: "no answer".into(),
            })
        });
        registry
    };
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&caught, ""), throwing(), &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    assert_eq!(path(&instance), ["s", "t", "catch", "handled"]);
    assert_eq!(instance.variable("why"), Some(&json!("no answer")));

    let uncaught = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" />"#.to_owned(),
        service("t", "Throws"),
        flow("f1", "s", "t"),
        flow("f2", "t", "e"),
    ]
    .concat();
    let engine = deploy(&definitions(&uncaught, ""), throwing(), &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(
        instance.state,
        InstanceState::Failed {
            element: "t".into(),
            reason: "unhandled BPMN error 'other': no answer".into()
        }
    );
}

#[tokio::test]
async fn terminate_end_event_ends_every_branch() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:parallelGateway id="fork" /><bpmn:userTask id="u" />"#.to_owned(),
        r#"<bpmn:endEvent id="stop"><bpmn:terminateEventDefinition /></bpmn:endEvent><bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "fork"),
        flow("f2", "fork", "u"),
        flow("f3", "fork", "stop"),
        flow("f4", "u", "e"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(path(&instance), ["s", "fork", "u", "stop"]);
    assert_eq!(instance.state, InstanceState::Terminated);
    assert!(instance.waiting().is_empty());
}

fn multi_instance_process(sequential: bool, completion: &str) -> String {
    [
        r#"<bpmn:startEvent id="s" />"#.to_owned(),
        format!(
            r#"<bpmn:serviceTask id="each" camunda:class="Each"><bpmn:multiInstanceLoopCharacteristics isSequential="{sequential}" camunda:collection="${{targets}}" camunda:elementVariable="target">{completion}</bpmn:multiInstanceLoopCharacteristics></bpmn:serviceTask>"#
        ),
        r#"<bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "each"),
        flow("f2", "each", "e"),
    ]
    .concat()
}

fn collecting() -> (Registry, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let record = seen.clone();
    registry.bind_fn("Each", move |ctx| {
        let target = ctx.variable("target").cloned().unwrap_or(Value::Null);
        let counter = ctx.variable("loopCounter").cloned().unwrap_or(Value::Null);
        record.lock().unwrap().push(json!([target, counter]));
        ctx.set_local("perIteration", json!(true));
        Ok(())
    });
    (registry, seen)
}

#[tokio::test]
async fn parallel_multi_instance_runs_once_per_item_with_its_own_variables() {
    let (registry, seen) = collecting();
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&multi_instance_process(false, ""), ""),
        registry,
        &clock,
    );
    let mut instance = engine
        .start("p", None, vars(json!({"targets": ["a", "b", "c"]})))
        .unwrap();
    engine.run(&mut instance).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [json!(["a", 0]), json!(["b", 1]), json!(["c", 2])]
    );
    assert_eq!(path(&instance), ["s", "each", "each", "each", "each", "e"]);
    assert_eq!(
        instance.variable("perIteration"),
        None,
        "iteration variables stay in the iteration"
    );
    assert_eq!(instance.variable("target"), None);
    assert_eq!(instance.state, InstanceState::Completed);
}

#[tokio::test]
async fn sequential_multi_instance_stops_at_its_completion_condition() {
    let (registry, seen) = collecting();
    let clock = VirtualClock::at(T0);
    let xml = definitions(
        &multi_instance_process(true, "<bpmn:completionCondition>${nrOfCompletedInstances &gt;= 2}</bpmn:completionCondition>"),
        "",
    );
    let engine = deploy(&xml, registry, &clock);
    let mut instance = engine
        .start("p", None, vars(json!({"targets": ["a", "b", "c"]})))
        .unwrap();
    engine.run(&mut instance).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [json!(["a", 0]), json!(["b", 1])]);
    assert_eq!(path(&instance), ["s", "each", "each", "each", "e"]);
}

#[tokio::test]
async fn async_before_with_retries_runs_as_a_job_and_retries_on_the_clock() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" />"#.to_owned(),
        r#"<bpmn:serviceTask id="t" camunda:class="Flaky" camunda:asyncBefore="true"><bpmn:extensionElements><camunda:failedJobRetryTimeCycle>R3/PT5S</camunda:failedJobRetryTimeCycle></bpmn:extensionElements></bpmn:serviceTask>"#.to_owned(),
        flow("f1", "s", "t"),
        flow("f2", "t", "e"),
    ]
    .concat();
    let attempts = Arc::new(Mutex::new(0));
    let mut registry = Registry::new();
    let counter = attempts.clone();
    registry.bind_fn("Flaky", move |_| {
        let mut n = counter.lock().unwrap();
        *n += 1;
        if *n < 3 {
            Err(HandlerError::Failed(format!("attempt {n} failed")))
        } else {
            Ok(())
        }
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), registry, &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    // The asynchronous continuation is its own step: the caller can persist before it runs.
    assert_eq!(engine.step(&mut instance).await.unwrap(), Step::Progressed); // s
    assert_eq!(engine.step(&mut instance).await.unwrap(), Step::Progressed); // s leaves
    assert_eq!(engine.step(&mut instance).await.unwrap(), Step::Progressed); // t: job created
    assert_eq!(*attempts.lock().unwrap(), 0);
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting); // attempt 1 fails
    assert_eq!(instance.next_due(), Some(T0 + 5_000));
    clock.advance(5_000);
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting); // attempt 2 fails
    clock.advance(5_000);
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished); // attempt 3 succeeds
    assert_eq!(*attempts.lock().unwrap(), 3);
    assert_eq!(path(&instance), ["s", "t", "e"]);
}

#[tokio::test]
async fn failing_handler_without_retries_fails_the_instance() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" />"#.to_owned(),
        service("t", "Broken"),
        flow("f1", "s", "t"),
        flow("f2", "t", "e"),
    ]
    .concat();
    let mut registry = Registry::new();
    registry.bind_fn("Broken", |_| {
        Err(HandlerError::Failed("database down".into()))
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), registry, &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(
        instance.state,
        InstanceState::Failed {
            element: "t".into(),
            reason: "database down".into()
        }
    );
}

#[tokio::test]
async fn execution_listeners_and_input_output_mappings() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" />"#.to_owned(),
        r#"<bpmn:serviceTask id="t" camunda:class="Work"><bpmn:extensionElements>
            <camunda:executionListener class="Listen" event="start" />
            <camunda:executionListener class="Listen" event="end" />
            <camunda:inputOutput>
              <camunda:inputParameter name="limit">${max}</camunda:inputParameter>
              <camunda:outputParameter name="phase">done-${limit}</camunda:outputParameter>
            </camunda:inputOutput>
          </bpmn:extensionElements></bpmn:serviceTask>"#
            .to_owned(),
        flow("f1", "s", "t"),
        flow("f2", "t", "e"),
    ]
    .concat();
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let record = events.clone();
    registry.bind_fn("Listen", move |ctx| {
        record.lock().unwrap().push(format!(
            "{}:{}",
            ctx.element_id,
            ctx.listener_event.unwrap_or("-")
        ));
        Ok(())
    });
    let record = events.clone();
    registry.bind_fn("Work", move |ctx| {
        record.lock().unwrap().push(format!(
            "work with limit {}",
            ctx.variable("limit").unwrap()
        ));
        Ok(())
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), registry, &clock);
    let mut instance = engine.start("p", None, vars(json!({"max": 7}))).unwrap();
    engine.run(&mut instance).await.unwrap();
    assert_eq!(
        *events.lock().unwrap(),
        ["t:start", "work with limit 7", "t:end"]
    );
    assert_eq!(instance.variable("phase"), Some(&json!("done-7")));
}

#[tokio::test]
async fn instances_resume_from_their_serialised_form_after_every_step() {
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&race_process(), ""), Registry::new(), &clock);
    let mut stored =
        serde_json::to_string(&engine.start("p", Some("bk"), Map::new()).unwrap()).unwrap();
    loop {
        let mut instance: Instance = serde_json::from_str(&stored).unwrap();
        let step = engine.step(&mut instance).await.unwrap();
        stored = serde_json::to_string(&instance).unwrap();
        if step != Step::Progressed {
            break;
        }
    }
    // A restart: a new engine on the same deployment continues the stored instance.
    let engine = deploy(&definitions(&race_process(), ""), Registry::new(), &clock);
    let mut instance: Instance = serde_json::from_str(&stored).unwrap();
    assert!(engine
        .deliver(&mut instance, "go", None, &Map::new())
        .unwrap());
    engine.run(&mut instance).await.unwrap();
    assert_eq!(path(&instance), ["s", "g", "answer", "answered"]);
    assert_eq!(instance.state, InstanceState::Completed);
}

#[test]
fn deploy_errors_name_process_and_element() {
    let clock = Arc::new(VirtualClock::at(T0));
    let started = |element: String| {
        [
            r#"<bpmn:startEvent id="s" />"#.to_owned(),
            element,
            flow("f", "s", "t"),
        ]
        .concat()
    };
    let cases = [
        (started(service("t", "org.example.Missing")), "no handler bound to 'org.example.Missing'"),
        (
            [r#"<bpmn:startEvent id="s" /><bpmn:exclusiveGateway id="g" /><bpmn:endEvent id="e" />"#.to_owned(), flow("f0", "s", "g"), conditional("f1", "g", "e", "${a +}")].concat(),
            "unexpected character '+'",
        ),
        (
            started(r#"<bpmn:intermediateCatchEvent id="t"><bpmn:timerEventDefinition><bpmn:timeDuration>5 minutes</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"#.to_owned()),
            "'5 minutes' is not an ISO 8601 duration such as PT5M",
        ),
        (started(r#"<bpmn:callActivity id="t" calledElement="other" />"#.to_owned()), "called process 'other' is not part of this deployment"),
    ];
    for (body, expected) in cases {
        let definitions =
            dsf_bpmn::parse(definitions(&body, "").as_bytes(), "t.bpmn").expect("parses");
        let error = Engine::deploy(definitions, Registry::new(), clock.clone())
            .err()
            .expect("refused");
        let text = error.to_string();
        assert!(text.starts_with("process 'p', element '"), "{text}");
        assert!(text.contains(expected), "{text}");
    }
}

#[tokio::test]
async fn send_task_message_end_and_none_throw_call_their_handlers() {
    let body = [
        r#"<bpmn:startEvent id="s" />"#.to_owned(),
        r#"<bpmn:sendTask id="send" camunda:delegateExpression="${sendPing}" />"#.to_owned(),
        r#"<bpmn:intermediateThrowEvent id="mark" />"#.to_owned(),
        r#"<bpmn:endEvent id="e"><bpmn:messageEventDefinition messageRef="MsgGo" camunda:expression="${reply}" /></bpmn:endEvent>"#.to_owned(),
        flow("f1", "s", "send"),
        flow("f2", "send", "mark"),
        flow("f3", "mark", "e"),
    ]
    .concat();
    let calls = Calls::default();
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&body, ""),
        recording(&calls, &["sendPing", "${reply}"]),
        &clock,
    );
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    assert_eq!(path(&instance), ["s", "send", "mark", "e"]);
    assert_eq!(*calls.lock().unwrap(), ["send", "e"]);
}

#[tokio::test]
async fn time_date_timer_fires_at_its_instant() {
    let body = [
        r#"<bpmn:startEvent id="s" />"#.to_owned(),
        r#"<bpmn:intermediateCatchEvent id="t"><bpmn:timerEventDefinition><bpmn:timeDate>2023-11-14T22:30:00Z</bpmn:timeDate></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"#.to_owned(),
        r#"<bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "t"),
        flow("f2", "t", "e"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting);
    assert_eq!(instance.next_due(), Some(1_700_001_000_000));
    clock.set(1_700_001_000_000);
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(path(&instance), ["s", "t", "e"]);
}

#[tokio::test]
async fn async_after_leaves_the_node_in_a_step_of_its_own() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" />"#.to_owned(),
        r#"<bpmn:serviceTask id="t" camunda:class="Work" camunda:asyncAfter="true" />"#.to_owned(),
        flow("f1", "s", "t"),
        flow("f2", "t", "e"),
    ]
    .concat();
    let calls = Calls::default();
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&body, ""),
        recording(&calls, &["Work"]),
        &clock,
    );
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    for _ in 0..3 {
        assert_eq!(engine.step(&mut instance).await.unwrap(), Step::Progressed);
    }
    // The handler ran; leaving is its own job, so a crash now repeats only the leaving.
    assert_eq!(*calls.lock().unwrap(), ["t"]);
    assert_eq!(path(&instance), ["s", "t"]);
    let stored: Instance =
        serde_json::from_str(&serde_json::to_string(&instance).unwrap()).unwrap();
    let mut resumed = stored;
    assert_eq!(engine.run(&mut resumed).await.unwrap(), Step::Finished);
    assert_eq!(path(&resumed), ["s", "t", "e"]);
    assert_eq!(*calls.lock().unwrap(), ["t"], "not run twice");
}

#[tokio::test]
async fn loop_cardinality_multi_instance_subprocess() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" />"#.to_owned(),
        r#"<bpmn:subProcess id="sub"><bpmn:multiInstanceLoopCharacteristics><bpmn:loopCardinality>${n}</bpmn:loopCardinality></bpmn:multiInstanceLoopCharacteristics><bpmn:startEvent id="ss" /><bpmn:serviceTask id="inner" camunda:class="Inner" /><bpmn:endEvent id="se" />"#.to_owned(),
        flow("i1", "ss", "inner"),
        flow("i2", "inner", "se"),
        r#"</bpmn:subProcess>"#.to_owned(),
        flow("f1", "s", "sub"),
        flow("f2", "sub", "e"),
    ]
    .concat();
    let counters = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let record = counters.clone();
    registry.bind_fn("Inner", move |ctx| {
        record
            .lock()
            .unwrap()
            .push(ctx.variable("loopCounter").cloned().unwrap_or(Value::Null));
        Ok(())
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), registry, &clock);
    let mut instance = engine.start("p", None, vars(json!({"n": 2}))).unwrap();
    engine.run(&mut instance).await.unwrap();
    assert_eq!(*counters.lock().unwrap(), [json!(0), json!(1)]);
    assert_eq!(instance.state, InstanceState::Completed);
    assert_eq!(path(&instance).first(), Some(&"s"));
    assert_eq!(path(&instance).last(), Some(&"e"));
    assert_eq!(instance.path.iter().filter(|p| *p == "inner").count(), 2);
}

const SIGNALS: &str = r#"<bpmn:signal id="SigStop" name="stopPing" />"#;

#[tokio::test]
async fn signal_end_event_stops_waiting_instances_through_a_boundary() {
    // As the ping autostart process: one instance loops on a timer until a signal stops it.
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:userTask id="loop" /><bpmn:endEvent id="never" /><bpmn:endEvent id="stopped" />"#.to_owned(),
        r#"<bpmn:boundaryEvent id="stop" attachedToRef="loop"><bpmn:signalEventDefinition signalRef="SigStop" /></bpmn:boundaryEvent>"#.to_owned(),
        flow("f1", "s", "loop"),
        flow("f2", "loop", "never"),
        flow("f3", "stop", "stopped"),
    ]
    .concat();
    let stopper = r#"<bpmn:process id="stopper" isExecutable="true"><bpmn:startEvent id="s2" /><bpmn:endEvent id="send"><bpmn:signalEventDefinition signalRef="SigStop" /></bpmn:endEvent><bpmn:sequenceFlow id="g1" sourceRef="s2" targetRef="send" /></bpmn:process>"#;
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&body, &format!("{SIGNALS}{stopper}")),
        Registry::new(),
        &clock,
    );
    let mut looping = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut looping).await.unwrap();
    assert_eq!(
        looping.waiting()[1],
        Waiting::Signal {
            name: "stopPing".into(),
            node: "stop".into()
        }
    );
    let mut thrower = engine.start("stopper", None, Map::new()).unwrap();
    engine.run(&mut thrower).await.unwrap();
    let thrown = thrower.take_signals();
    assert_eq!(thrown, ["stopPing"]);
    assert!(thrower.take_signals().is_empty(), "taken once");
    let mut others = vec![looping];
    for name in &thrown {
        assert!(engine.signal(&mut others, name).unwrap().is_empty());
    }
    engine.run(&mut others[0]).await.unwrap();
    assert_eq!(path(&others[0]), ["s", "loop", "stop", "stopped"]);
    assert_eq!(others[0].state, InstanceState::Completed);
}

#[tokio::test]
async fn signals_reach_catches_in_the_throwing_instance_and_start_events() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:parallelGateway id="fork" />"#.to_owned(),
        r#"<bpmn:intermediateCatchEvent id="hear"><bpmn:signalEventDefinition signalRef="SigStop" /></bpmn:intermediateCatchEvent>"#.to_owned(),
        r#"<bpmn:userTask id="first" /><bpmn:intermediateThrowEvent id="say"><bpmn:signalEventDefinition signalRef="SigStop" /></bpmn:intermediateThrowEvent>"#.to_owned(),
        r#"<bpmn:endEvent id="e1" /><bpmn:endEvent id="e2" />"#.to_owned(),
        flow("f1", "s", "fork"),
        flow("f2", "fork", "hear"),
        flow("f3", "fork", "first"),
        flow("f4", "first", "say"),
        flow("f5", "say", "e1"),
        flow("f6", "hear", "e2"),
    ]
    .concat();
    let started_by_signal = r#"<bpmn:process id="listener" isExecutable="true"><bpmn:startEvent id="sig"><bpmn:signalEventDefinition signalRef="SigStop" /></bpmn:startEvent><bpmn:endEvent id="le" /><bpmn:sequenceFlow id="h1" sourceRef="sig" targetRef="le" /></bpmn:process>"#;
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&body, &format!("{SIGNALS}{started_by_signal}")),
        Registry::new(),
        &clock,
    );
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    engine
        .complete_user_task(&mut instance, "first", &Map::new())
        .unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    // The catching branch is the older token, so it moves on first.
    assert_eq!(
        path(&instance),
        ["s", "fork", "hear", "first", "say", "e2", "e1"]
    );
    let mut started = engine.signal(&mut [], "stopPing").unwrap();
    assert_eq!(started.len(), 1);
    engine.run(&mut started[0]).await.unwrap();
    assert_eq!(path(&started[0]), ["sig", "le"]);
}

#[tokio::test]
async fn interrupting_message_event_subprocess_cancels_the_main_flow() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:userTask id="u" /><bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "u"),
        flow("f2", "u", "e"),
        r#"<bpmn:subProcess id="cancel" triggeredByEvent="true"><bpmn:startEvent id="cs"><bpmn:messageEventDefinition messageRef="MsgGo" /></bpmn:startEvent>"#.to_owned(),
        service("cleanup", "Cleanup"),
        r#"<bpmn:endEvent id="ce" />"#.to_owned(),
        flow("c1", "cs", "cleanup"),
        flow("c2", "cleanup", "ce"),
        r#"</bpmn:subProcess>"#.to_owned(),
    ]
    .concat();
    let calls = Calls::default();
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&body, ""),
        recording(&calls, &["Cleanup"]),
        &clock,
    );
    let mut instance = engine.start("p", Some("bk"), Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting);
    assert_eq!(
        instance.waiting().len(),
        2,
        "the user task and the event subprocess's message"
    );
    assert!(engine
        .deliver(&mut instance, "go", None, &Map::new())
        .unwrap());
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(path(&instance), ["s", "u", "cancel", "cs", "cleanup", "ce"]);
    assert_eq!(*calls.lock().unwrap(), ["cleanup"]);
    assert_eq!(instance.state, InstanceState::Completed);
    assert!(instance.waiting().is_empty());
}

#[tokio::test]
async fn non_interrupting_timer_event_subprocess_runs_beside_the_main_flow() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:userTask id="u" /><bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "u"),
        flow("f2", "u", "e"),
        r#"<bpmn:subProcess id="remind" triggeredByEvent="true"><bpmn:startEvent id="rs" isInterrupting="false"><bpmn:timerEventDefinition><bpmn:timeCycle>R2/PT10M</bpmn:timeCycle></bpmn:timerEventDefinition></bpmn:startEvent>"#.to_owned(),
        service("notify", "Notify"),
        r#"<bpmn:endEvent id="re" />"#.to_owned(),
        flow("r1", "rs", "notify"),
        flow("r2", "notify", "re"),
        r#"</bpmn:subProcess>"#.to_owned(),
    ]
    .concat();
    let calls = Calls::default();
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&body, ""),
        recording(&calls, &["Notify"]),
        &clock,
    );
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    for _ in 0..3 {
        clock.advance(600_000);
        assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting);
    }
    assert_eq!(
        calls.lock().unwrap().len(),
        2,
        "R2: two runs of the event subprocess"
    );
    engine
        .complete_user_task(&mut instance, "u", &Map::new())
        .unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(
        path(&instance),
        ["s", "u", "remind", "rs", "notify", "re", "remind", "rs", "notify", "re", "e"]
    );
}

#[tokio::test]
async fn error_event_subprocess_handles_an_error_inside_its_subprocess() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" />"#.to_owned(),
        r#"<bpmn:subProcess id="work"><bpmn:startEvent id="ws" />"#.to_owned(),
        service("risky", "Risky"),
        r#"<bpmn:endEvent id="we" />"#.to_owned(),
        flow("w1", "ws", "risky"),
        flow("w2", "risky", "we"),
        r#"<bpmn:subProcess id="onError" triggeredByEvent="true"><bpmn:startEvent id="es"><bpmn:errorEventDefinition errorRef="ErrFail" /></bpmn:startEvent>"#.to_owned(),
        service("repair", "Repair"),
        r#"<bpmn:endEvent id="ee" />"#.to_owned(),
        flow("e1", "es", "repair"),
        flow("e2", "repair", "ee"),
        r#"</bpmn:subProcess></bpmn:subProcess>"#.to_owned(),
        flow("f1", "s", "work"),
        flow("f2", "work", "e"),
    ]
    .concat();
    let calls = Calls::default();
    let mut registry = recording(&calls, &["Repair"]);
    registry.bind_fn("Risky", |_| {
        Err(HandlerError::Bpmn {
            code: "fail-code".into(),
            message: "broken".into(),
        })
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), registry, &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(
        path(&instance),
        ["s", "work", "ws", "risky", "onError", "es", "repair", "ee", "e"]
    );
    assert_eq!(*calls.lock().unwrap(), ["repair"]);
    assert_eq!(instance.state, InstanceState::Completed);
}

#[tokio::test]
async fn conditional_catch_waits_until_its_variable_makes_the_condition_true() {
    // As MII data-sharing: one branch waits until the other has received all data sets.
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:parallelGateway id="fork" /><bpmn:parallelGateway id="join" /><bpmn:endEvent id="e" />"#.to_owned(),
        r#"<bpmn:intermediateCatchEvent id="allReceived"><bpmn:conditionalEventDefinition camunda:variableName="allDataSetsReceived" camunda:variableEvents="update"><bpmn:condition xsi:type="bpmn:tFormalExpression">${allDataSetsReceived}</bpmn:condition></bpmn:conditionalEventDefinition></bpmn:intermediateCatchEvent>"#.to_owned(),
        r#"<bpmn:receiveTask id="receive" messageRef="MsgGo" />"#.to_owned(),
        service("count", "Count"),
        flow("f1", "s", "fork"),
        flow("f2", "fork", "allReceived"),
        flow("f3", "fork", "receive"),
        flow("f4", "receive", "count"),
        flow("f5", "count", "join"),
        flow("f6", "allReceived", "join"),
        flow("f7", "join", "e"),
    ]
    .concat();
    let mut registry = Registry::new();
    registry.bind_fn("Count", |ctx| {
        ctx.set("allDataSetsReceived", json!(true));
        Ok(())
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), registry, &clock);
    let mut instance = engine
        .start("p", None, vars(json!({"allDataSetsReceived": false})))
        .unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting);
    assert!(instance
        .waiting()
        .iter()
        .any(|w| matches!(w, Waiting::Condition { node, .. } if node == "allReceived")));
    // An unrelated variable changing does not fire it.
    assert!(engine
        .deliver(&mut instance, "go", None, &vars(json!({"other": 1})))
        .unwrap());
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(
        path(&instance),
        [
            "s",
            "fork",
            "allReceived",
            "receive",
            "count",
            "join",
            "join",
            "e"
        ]
    );
}

#[tokio::test]
async fn conditional_catch_passes_at_once_when_already_true() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" />"#.to_owned(),
        r#"<bpmn:intermediateCatchEvent id="c"><bpmn:conditionalEventDefinition><bpmn:condition xsi:type="bpmn:tFormalExpression">${ready == true}</bpmn:condition></bpmn:conditionalEventDefinition></bpmn:intermediateCatchEvent>"#.to_owned(),
        flow("f1", "s", "c"),
        flow("f2", "c", "e"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut instance = engine
        .start("p", None, vars(json!({"ready": true})))
        .unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(path(&instance), ["s", "c", "e"]);
}

#[tokio::test]
async fn messages_correlate_by_alternative_business_key() {
    let clock = VirtualClock::at(T0);
    let engine = deploy(
        &definitions(&message_wait_process(), ""),
        Registry::new(),
        &clock,
    );
    let mut waiting = engine
        .start(
            "p",
            Some("bk-own"),
            vars(json!({"alternativeBusinessKey": "bk-alt"})),
        )
        .unwrap();
    engine.run(&mut waiting).await.unwrap();
    let mut instances = vec![waiting];
    assert!(engine
        .correlate(&mut instances, "go", Some("bk-alt"), None, Map::new())
        .unwrap()
        .is_none());
    engine.run(&mut instances[0]).await.unwrap();
    assert_eq!(path(&instances[0]), ["s", "wait", "e"]);
}

#[tokio::test]
async fn timer_start_events_give_their_schedule() {
    let body = [
        r#"<bpmn:startEvent id="s"><bpmn:timerEventDefinition><bpmn:timeCycle>R/PT1H</bpmn:timeCycle></bpmn:timerEventDefinition></bpmn:startEvent><bpmn:endEvent id="e" />"#.to_owned(),
        flow("f1", "s", "e"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let schedules = engine.timer_starts(T0).unwrap();
    assert_eq!(schedules.len(), 1);
    assert_eq!(schedules[0].0, "p");
    assert_eq!(schedules[0].1.first, T0 + 3_600_000);
    assert_eq!(schedules[0].1.every, Some(3_600_000));
    assert_eq!(schedules[0].1.repeats, None);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(path(&instance), ["s", "e"]);
}

const CALLED: &str = r#"<bpmn:process id="child" isExecutable="true">
    <bpmn:startEvent id="cs" /><bpmn:serviceTask id="work" camunda:class="ChildWork" /><bpmn:endEvent id="ce" />
    <bpmn:sequenceFlow id="c1" sourceRef="cs" targetRef="work" /><bpmn:sequenceFlow id="c2" sourceRef="work" targetRef="ce" />
  </bpmn:process>"#;

#[tokio::test]
async fn call_activity_maps_variables_in_and_out() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" />"#.to_owned(),
        r#"<bpmn:callActivity id="call" calledElement="child"><bpmn:extensionElements>
            <camunda:in source="input" target="childInput" />
            <camunda:in sourceExpression="${input}-x" target="derived" />
            <camunda:out source="childResult" target="result" />
          </bpmn:extensionElements></bpmn:callActivity>"#
            .to_owned(),
        flow("f1", "s", "call"),
        flow("f2", "call", "e"),
    ]
    .concat();
    let mut registry = Registry::new();
    registry.bind_fn("ChildWork", |ctx| {
        assert!(
            ctx.variable("input").is_none(),
            "a called process sees only what is mapped in"
        );
        let value = format!(
            "{}/{}",
            ctx.variable_str("childInput").unwrap(),
            ctx.variable_str("derived").unwrap()
        );
        ctx.set("childResult", json!(value));
        ctx.set("childOnly", json!(1));
        Ok(())
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, CALLED), registry, &clock);
    let mut instance = engine
        .start("p", None, vars(json!({"input": "in"})))
        .unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(path(&instance), ["s", "call", "cs", "work", "ce", "e"]);
    assert_eq!(instance.variable("result"), Some(&json!("in/in-x")));
    assert_eq!(
        instance.variable("childOnly"),
        None,
        "only what is mapped out comes back"
    );
}

#[tokio::test]
async fn errors_in_a_called_process_reach_the_call_activity_boundary() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" /><bpmn:endEvent id="handled" />"#.to_owned(),
        r#"<bpmn:callActivity id="call" calledElement="child" />"#.to_owned(),
        r#"<bpmn:boundaryEvent id="failed" attachedToRef="call"><bpmn:errorEventDefinition errorRef="ErrFail" camunda:errorCodeVariable="code" /></bpmn:boundaryEvent>"#.to_owned(),
        flow("f1", "s", "call"),
        flow("f2", "call", "e"),
        flow("f3", "failed", "handled"),
    ]
    .concat();
    let mut registry = Registry::new();
    registry.bind_fn("ChildWork", |_| {
        Err(HandlerError::Bpmn {
            code: "fail-code".into(),
            message: "child failed".into(),
        })
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, CALLED), registry, &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(
        path(&instance),
        ["s", "call", "cs", "work", "failed", "handled"]
    );
    assert_eq!(instance.variable("code"), Some(&json!("fail-code")));
    assert_eq!(instance.state, InstanceState::Completed);
}

/// The DSF-shaped test file (message start, async service task with retries and listener,
/// multi-instance subprocess over `${targets.entries}` sending per target and racing an answer
/// against a timer, error boundary, decision, user task, message and signal ends) runs as
/// written, against handlers bound to its class names.
#[tokio::test]
async fn a_dsf_shaped_process_runs_unchanged() {
    let xml = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/files/ping_like.bpmn"
    ))
    .unwrap();
    let definitions = dsf_bpmn::parse(&xml, "ping_like.bpmn").unwrap();
    let calls = Calls::default();
    let mut registry = recording(
        &calls,
        &["org.example.LogStart", "org.example.ReviewListener"],
    );
    let record = calls.clone();
    registry.bind_fn("org.example.SelectTargets", move |ctx| {
        record
            .lock()
            .unwrap()
            .push(format!("select (limit {})", ctx.variable("limit").unwrap()));
        ctx.set(
            "targets",
            json!({"entries": [{"organization": "org-a"}, {"organization": "org-b"}]}),
        );
        Ok(())
    });
    let record = calls.clone();
    registry.bind_fn("org.example.SendProbe", move |ctx| {
        record.lock().unwrap().push(format!(
            "send {} to {} with profile {}",
            ctx.field("messageName").unwrap().as_str().unwrap(),
            ctx.variable("target").unwrap()["organization"]
                .as_str()
                .unwrap(),
            ctx.field("profile").unwrap().as_str().unwrap()
        ));
        Ok(())
    });
    let record = calls.clone();
    registry.bind_fn("org.example.SendResult", move |ctx| {
        record.lock().unwrap().push(format!(
            "result {}",
            ctx.field("messageName").unwrap().as_str().unwrap()
        ));
        Ok(())
    });
    let clock = VirtualClock::at(T0);
    let engine = Engine::deploy(definitions, registry, Arc::new(clock.clone())).unwrap();
    let mut instance = engine
        .correlate(&mut [], "startProbe", Some("bk-1"), None, vars(json!({"maxTargets": 2, "profileUrl": "http://example.org/fhir/StructureDefinition/probe"})))
        .unwrap()
        .expect("started by its message start event");
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Waiting);
    let waits: Vec<_> = instance
        .waiting()
        .into_iter()
        .filter(|w| matches!(w, Waiting::Message { .. }))
        .collect();
    assert_eq!(
        waits.len(),
        2,
        "each target waits for its answer: {waits:?}"
    );
    // One target answers; the other's timer runs out.
    let mut instances = vec![instance];
    engine
        .correlate(&mut instances, "answer", Some("bk-1"), None, Map::new())
        .unwrap();
    let mut instance = instances.remove(0);
    engine.run(&mut instance).await.unwrap();
    clock.advance(20_000);
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(instance.state, InstanceState::Completed);
    assert_eq!(instance.variable("phase"), Some(&json!("selected")));
    assert_eq!(
        *calls.lock().unwrap(),
        [
            "SelectTargets",
            "select (limit 2)",
            "send probe to org-a with profile http://example.org/fhir/StructureDefinition/probe",
            "send probe to org-b with profile http://example.org/fhir/StructureDefinition/probe",
            "result result",
        ]
    );
    for reached in ["SubEndAnswered", "SubEndTimeout", "Decide", "Done"] {
        assert!(
            instance.path.iter().any(|p| p == reached),
            "{reached} in {:?}",
            instance.path
        );
    }
}

#[tokio::test]
async fn the_path_keeps_only_the_most_recent_nodes_of_a_long_loop() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:exclusiveGateway id="again" default="more" /><bpmn:endEvent id="e" />"#.to_owned(),
        service("count", "Count"),
        flow("f1", "s", "count"),
        flow("f2", "count", "again"),
        conditional("done", "again", "e", "${n >= 1500}"),
        flow("more", "again", "count"),
    ]
    .concat();
    let mut registry = Registry::new();
    registry.bind_fn("Count", |ctx| {
        let n = ctx.variable("n").and_then(Value::as_i64).unwrap_or(0);
        ctx.set("n", json!(n + 1));
        Ok(())
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), registry, &clock);
    let mut instance = engine.start("p", None, vars(json!({"n": 0}))).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(instance.variable("n"), Some(&json!(1500)));
    assert_eq!(instance.path.len(), dsf_bpmn::engine::PATH_LIMIT);
    assert_eq!(instance.path.last().map(String::as_str), Some("e"));
}

#[tokio::test]
async fn conditional_variable_events_update_ignores_creation() {
    // `ready` does not exist until the first handler creates it (true); only the second
    // handler's update may fire the event, as camunda:variableEvents="update" says.
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:parallelGateway id="fork" /><bpmn:endEvent id="e1" /><bpmn:endEvent id="e2" />"#.to_owned(),
        r#"<bpmn:intermediateCatchEvent id="c"><bpmn:conditionalEventDefinition camunda:variableName="ready" camunda:variableEvents="update"><bpmn:condition xsi:type="bpmn:tFormalExpression">${execution.hasVariable('ready') &amp;&amp; ready}</bpmn:condition></bpmn:conditionalEventDefinition></bpmn:intermediateCatchEvent>"#.to_owned(),
        r#"<bpmn:userTask id="u1" /><bpmn:userTask id="u2" />"#.to_owned(),
        service("create", "Set"),
        service("update", "Set"),
        flow("f1", "s", "fork"),
        flow("f2", "fork", "c"),
        flow("f3", "fork", "u1"),
        flow("f4", "u1", "create"),
        flow("f5", "create", "u2"),
        flow("f6", "u2", "update"),
        flow("f7", "update", "e1"),
        flow("f8", "c", "e2"),
    ]
    .concat();
    let mut registry = Registry::new();
    registry.bind_fn("Set", |ctx| {
        ctx.set("ready", json!(true));
        Ok(())
    });
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), registry, &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    engine.run(&mut instance).await.unwrap();
    engine
        .complete_user_task(&mut instance, "u1", &Map::new())
        .unwrap();
    engine.run(&mut instance).await.unwrap();
    assert!(
        !instance.path.iter().any(|p| p == "e2"),
        "creating the variable does not fire: {:?}",
        instance.path
    );
    engine
        .complete_user_task(&mut instance, "u2", &Map::new())
        .unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(
        instance.path.iter().filter(|p| *p == "e2").count(),
        1,
        "{:?}",
        instance.path
    );
}

#[tokio::test]
async fn terminate_inside_a_subprocess_ends_it_even_with_a_join_half_arrived() {
    let body = [
        r#"<bpmn:startEvent id="s" /><bpmn:endEvent id="e" />"#.to_owned(),
        r#"<bpmn:subProcess id="sub"><bpmn:startEvent id="ss" /><bpmn:parallelGateway id="fork" /><bpmn:parallelGateway id="join" /><bpmn:userTask id="slow" /><bpmn:endEvent id="never" />"#.to_owned(),
        r#"<bpmn:endEvent id="stop"><bpmn:terminateEventDefinition /></bpmn:endEvent>"#.to_owned(),
        flow("i1", "ss", "fork"),
        flow("i2", "fork", "join"),
        flow("i3", "fork", "slow"),
        flow("i4", "slow", "join"),
        flow("i5", "join", "never"),
        flow("i6", "fork", "stop"),
        r#"</bpmn:subProcess>"#.to_owned(),
        flow("f1", "s", "sub"),
        flow("f2", "sub", "e"),
    ]
    .concat();
    let clock = VirtualClock::at(T0);
    let engine = deploy(&definitions(&body, ""), Registry::new(), &clock);
    let mut instance = engine.start("p", None, Map::new()).unwrap();
    assert_eq!(engine.run(&mut instance).await.unwrap(), Step::Finished);
    assert_eq!(
        path(&instance),
        ["s", "sub", "ss", "fork", "join", "slow", "stop", "e"]
    );
    assert_eq!(instance.state, InstanceState::Completed);
}
