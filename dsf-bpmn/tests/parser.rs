//! The parser on a process in the shape DSF plugins use, and every validation error.

use dsf_bpmn::*;

const PROCESS: &str = include_str!("files/ping_like.bpmn");

fn node<'a>(p: &'a Process, id: &str) -> &'a Node {
    p.node(id).unwrap_or_else(|| panic!("no node {id}"))
}

#[test]
fn reads_the_dsf_surface() {
    let d = parse(PROCESS.as_bytes(), "ping_like.bpmn").unwrap();
    let p = &d.processes[0];
    assert_eq!(
        (p.id.as_str(), p.executable, p.version_tag.as_deref()),
        ("exampleorg_probe", true, Some("#{version}"))
    );
    assert_eq!(d.messages["MsgAnswer"].name, "answer");
    assert_eq!(d.errors["ErrProbe"].code.as_deref(), Some("probe-failed"));
    assert_eq!(d.signals["SigStop"].name, "stopProbe#{version}");
    assert_eq!(
        node(p, "Start").kind,
        NodeKind::StartEvent(Trigger::Message(Some("MsgStart".into())))
    );

    let select = node(p, "SelectTargets");
    assert_eq!(
        select.behaviour,
        Some(Behaviour::Class("org.example.SelectTargets".into()))
    );
    assert!(select.async_before && !select.async_after);
    assert_eq!(select.retry_cycle.as_deref(), Some("R3/PT5S"));
    assert_eq!(select.execution_listeners[0].event, "start");
    assert_eq!(
        select.inputs,
        [Parameter {
            name: "limit".into(),
            value: "${maxTargets}".into()
        }]
    );
    assert_eq!(select.outputs[0].value, "selected");

    let per_target = node(p, "PerTarget");
    let mi = per_target.multi_instance.as_ref().unwrap();
    assert_eq!(
        (
            mi.collection.as_deref(),
            mi.element_variable.as_deref(),
            mi.sequential
        ),
        (Some("${targets.entries}"), Some("target"), false)
    );
    let send = node(p, "SendProbe");
    assert_eq!(send.parent.as_deref(), Some("PerTarget"));
    assert_eq!(send.fields.len(), 3);
    assert_eq!(send.fields[1].value, FieldValue::String("probe".into()));
    assert_eq!(
        send.fields[2].value,
        FieldValue::Expression("${profileUrl}".into())
    );
    assert_eq!(
        node(p, "Timeout").kind,
        NodeKind::IntermediateCatchEvent(Trigger::Timer(Timer::Duration("PT20S".into())))
    );
    assert_eq!(p.outgoing("Wait").count(), 2);

    assert_eq!(
        node(p, "Failed").kind,
        NodeKind::BoundaryEvent {
            attached_to: "PerTarget".into(),
            cancel_activity: true,
            trigger: Trigger::Error(Some("ErrProbe".into())),
            error_code_variable: Some("code".into()),
            error_message_variable: Some("reason".into()),
        }
    );
    assert_eq!(node(p, "Decide").default_flow.as_deref(), Some("F5"));
    let f4 = p.flows.iter().find(|f| f.id == "F4").unwrap();
    assert_eq!(
        f4.condition.as_deref(),
        Some("${execution.hasVariable('review') && review == true}")
    );
    let review = node(p, "Review");
    assert_eq!(
        review.kind,
        NodeKind::UserTask {
            form_key: Some("http://example.org/fhir/Questionnaire/review|#{version}".into())
        }
    );
    assert_eq!(review.task_listeners[0].fields[0].name, "practitionerRole");
    let done = node(p, "Done");
    assert_eq!(done.kind, NodeKind::EndEvent(Trigger::Message(None)));
    assert_eq!(
        done.behaviour,
        Some(Behaviour::Class("org.example.SendResult".into()))
    );
    assert_eq!(done.fields[0].name, "messageName");
    assert_eq!(
        node(p, "Stop").kind,
        NodeKind::EndEvent(Trigger::Signal("SigStop".into()))
    );
    // The diagram is skipped, not modelled.
    assert_eq!(p.nodes.len(), 16);
}

/// The process with `from` replaced by `to`, parsed; the error it gives.
fn error_after(from: &str, to: &str) -> Error {
    assert!(PROCESS.contains(from), "fixture lacks {from}");
    parse(PROCESS.replacen(from, to, 1).as_bytes(), "edited.bpmn").unwrap_err()
}

fn assert_error(e: Error, element: &str, words: &str) {
    match &e {
        Error::Invalid {
            element: el,
            message,
            file,
            line,
        } => {
            assert_eq!(el, element, "{e}");
            assert!(message.contains(words), "{e}");
            assert_eq!(file, "edited.bpmn");
            assert!(*line > 0 || element == "exampleorg_probe", "{e}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn dangling_flow_reference() {
    assert_error(
        error_after(r#"targetRef="Done""#, r#"targetRef="Nowhere""#),
        "F5",
        "'Nowhere'",
    );
}

#[test]
fn flow_across_subprocess_boundary() {
    assert_error(
        error_after(
            r#"sourceRef="Answer" targetRef="SubEndAnswered""#,
            r#"sourceRef="Answer" targetRef="Done""#,
        ),
        "S5",
        "different",
    );
}

#[test]
fn gateway_without_outgoing_flow() {
    let s3 = r#"<bpmn:sequenceFlow id="S3" sourceRef="Wait" targetRef="Answer" />"#;
    let s4 = r#"<bpmn:sequenceFlow id="S4" sourceRef="Wait" targetRef="Timeout" />"#;
    // One outgoing flow left is valid; none is the error.
    assert!(parse(PROCESS.replacen(s3, "", 1).as_bytes(), "edited.bpmn").is_ok());
    let none = PROCESS.replacen(s3, "", 1).replacen(s4, "", 1);
    assert_error(
        parse(none.as_bytes(), "edited.bpmn").unwrap_err(),
        "Wait",
        "gateway without outgoing",
    );
}

#[test]
fn message_event_without_message() {
    assert_error(
        error_after(
            r#"<bpmn:messageEventDefinition messageRef="MsgAnswer" />"#,
            "<bpmn:messageEventDefinition />",
        ),
        "Answer",
        "message event without message",
    );
    assert_error(
        error_after(r#"messageRef="MsgStart""#, r#"messageRef="MsgNope""#),
        "Start",
        "'MsgNope'",
    );
}

#[test]
fn undefined_error_and_signal() {
    assert_error(
        error_after(r#"errorRef="ErrProbe""#, r#"errorRef="ErrNope""#),
        "Failed",
        "'ErrNope'",
    );
    assert_error(
        error_after(r#"signalRef="SigStop""#, r#"signalRef="SigNope""#),
        "Stop",
        "'SigNope'",
    );
}

#[test]
fn unsupported_elements_are_named() {
    assert_error(
        error_after(
            r#"<bpmn:exclusiveGateway id="Decide" default="F5" />"#,
            r#"<bpmn:complexGateway id="Decide" default="F5" />"#,
        ),
        "Decide",
        "complexGateway",
    );
    assert_error(
        error_after(
            r#"<bpmn:endEvent id="FailedEnd" />"#,
            r#"<bpmn:scriptTask id="FailedEnd" scriptFormat="groovy" />"#,
        ),
        "FailedEnd",
        "script",
    );
    assert_error(
        error_after(
            r#"<bpmn:endEvent id="FailedEnd" />"#,
            r#"<bpmn:endEvent id="FailedEnd"><bpmn:escalationEventDefinition /></bpmn:endEvent>"#,
        ),
        "FailedEnd",
        "escalationEventDefinition",
    );
    assert_error(
        error_after(
            "<camunda:failedJobRetryTimeCycle>",
            "<camunda:connector/><camunda:failedJobRetryTimeCycle>",
        ),
        "connector",
        "not supported",
    );
}

#[test]
fn structural_errors() {
    assert_error(
        error_after(
            r#"<bpmn:endEvent id="FailedEnd" />"#,
            r#"<bpmn:endEvent id="Done" />"#,
        ),
        "Done",
        "more than once",
    );
    assert_error(
        error_after(r#"default="F5""#, r#"default="F1""#),
        "Decide",
        "default flow 'F1'",
    );
    assert_error(
        error_after(r#"attachedToRef="PerTarget""#, r#"attachedToRef="Ghost""#),
        "Failed",
        "'Ghost'",
    );
    let no_start = PROCESS
        .replacen(
            r#"<bpmn:startEvent id="Start">"#,
            r#"<bpmn:intermediateCatchEvent id="Start">"#,
            1,
        )
        .replacen("</bpmn:startEvent>", "</bpmn:intermediateCatchEvent>", 1);
    assert_error(
        parse(no_start.as_bytes(), "edited.bpmn").unwrap_err(),
        "exampleorg_probe",
        "without start event",
    );
}

#[test]
fn malformed_xml_reports_the_line() {
    let broken = PROCESS.replacen(
        r#"<bpmn:endEvent id="FailedEnd" />"#,
        r#"<bpmn:endEvent id="FailedEnd">"#,
        1,
    );
    match parse(broken.as_bytes(), "broken.bpmn").unwrap_err() {
        Error::Xml { file, line, .. } => {
            assert_eq!(file, "broken.bpmn");
            assert!(line > 60, "{line}");
        }
        other => panic!("{other}"),
    }
    assert!(matches!(parse(b"", "empty.bpmn"), Err(Error::Xml { .. })));
    assert!(matches!(
        parse(b"<definitions/>", "x.bpmn"),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn unnamed_unreferenced_messages_parse_and_referenced_ones_do_not() {
    let unused = r#"<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">
  <bpmn:process id="a_b" isExecutable="true">
    <bpmn:startEvent id="s"/><bpmn:sequenceFlow id="f" sourceRef="s" targetRef="e"/><bpmn:endEvent id="e"/>
  </bpmn:process>
  <bpmn:message id="Unused"/>
</bpmn:definitions>"#;
    let definitions = dsf_bpmn::parse(unused.as_bytes(), "unused.bpmn").expect("parses");
    assert_eq!(definitions.messages["Unused"].name, "");
    let used = unused.replace(
        r#"<bpmn:startEvent id="s"/>"#,
        r#"<bpmn:startEvent id="s"><bpmn:messageEventDefinition messageRef="Unused"/></bpmn:startEvent>"#,
    );
    let error = dsf_bpmn::parse(used.as_bytes(), "used.bpmn")
        .unwrap_err()
        .to_string();
    assert!(error.contains("has no name"), "{error}");
}

#[test]
fn multi_instance_job_attributes_are_kept() {
    let xml = r#"<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn">
  <bpmn:process id="a_b" isExecutable="true">
    <bpmn:startEvent id="s"/>
    <bpmn:sequenceFlow id="f1" sourceRef="s" targetRef="t"/>
    <bpmn:serviceTask id="t" camunda:class="x">
      <bpmn:multiInstanceLoopCharacteristics camunda:asyncBefore="true" camunda:exclusive="false" camunda:collection="${targets.entries}" camunda:elementVariable="target">
        <bpmn:extensionElements><camunda:failedJobRetryTimeCycle>R3/PT5S</camunda:failedJobRetryTimeCycle></bpmn:extensionElements>
      </bpmn:multiInstanceLoopCharacteristics>
    </bpmn:serviceTask>
    <bpmn:sequenceFlow id="f2" sourceRef="t" targetRef="e"/>
    <bpmn:endEvent id="e"/>
  </bpmn:process>
</bpmn:definitions>"#;
    let definitions = dsf_bpmn::parse(xml.as_bytes(), "mi.bpmn").expect("parses");
    let mi = definitions.processes[0]
        .node("t")
        .and_then(|n| n.multi_instance.clone())
        .expect("multi-instance");
    assert!(mi.async_before && !mi.async_after && !mi.exclusive);
    assert_eq!(mi.retry_cycle.as_deref(), Some("R3/PT5S"));
}
