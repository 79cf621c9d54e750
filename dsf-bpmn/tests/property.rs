//! Random well-formed process graphs: parsing and deploying them never fails, and running them
//! (completing user tasks, delivering messages, moving the clock) never panics or errs and
//! always ends or comes to a wait, within a bounded number of steps.

use dsf_bpmn::engine::{Engine, Registry, Step, VirtualClock, Waiting};
use proptest::prelude::*;
use serde_json::{json, Map};
use std::sync::Arc;

#[derive(Debug, Clone)]
struct Shape {
    /// Per inner node: its kind (0..9) and a seed for its options.
    kinds: Vec<(u8, u8)>,
    /// Per node: a bit set choosing its forward targets.
    targets: Vec<u16>,
    x: u8,
}

fn shape() -> impl Strategy<Value = Shape> {
    (1usize..12).prop_flat_map(|inner| {
        (
            proptest::collection::vec((0u8..10, any::<u8>()), inner),
            proptest::collection::vec(any::<u16>(), inner + 1),
            0u8..3,
        )
            .prop_map(|(kinds, targets, x)| Shape { kinds, targets, x })
    })
}

/// BPMN for a shape: node 0 is the start, node n-1 the end, flows only go forward, every node
/// but the end has an outgoing flow, gateways have a default flow.
fn xml(shape: &Shape) -> String {
    let n = shape.kinds.len() + 2;
    let mut body = String::from(r#"<bpmn:startEvent id="n0" />"#);
    let mut flows = String::new();
    let mut extra = String::new();
    for (i, (kind, seed)) in shape.kinds.iter().enumerate() {
        let id = format!("n{}", i + 1);
        let element = match kind {
            0 => format!(r#"<bpmn:serviceTask id="{id}" camunda:class="Noop" />"#),
            1 => format!(r#"<bpmn:exclusiveGateway id="{id}" default="{id}_0" />"#),
            2 => format!(r#"<bpmn:parallelGateway id="{id}" />"#),
            3 => format!(r#"<bpmn:inclusiveGateway id="{id}" default="{id}_0" />"#),
            4 => {
                if seed % 2 == 0 {
                    extra.push_str(&format!(
                        r#"<bpmn:boundaryEvent id="{id}_b" attachedToRef="{id}" cancelActivity="{}"><bpmn:timerEventDefinition><bpmn:timeDuration>PT30M</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:boundaryEvent>"#,
                        seed % 4 == 0
                    ));
                    flows.push_str(&format!(
                        r#"<bpmn:sequenceFlow id="{id}_bf" sourceRef="{id}_b" targetRef="n{}" />"#,
                        n - 1
                    ));
                }
                format!(r#"<bpmn:userTask id="{id}" />"#)
            }
            5 => format!(
                r#"<bpmn:intermediateCatchEvent id="{id}"><bpmn:timerEventDefinition><bpmn:timeDuration>PT{}M</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"#,
                1 + seed % 90
            ),
            6 if seed % 2 == 0 => format!(
                r#"<bpmn:intermediateCatchEvent id="{id}"><bpmn:messageEventDefinition messageRef="M" /></bpmn:intermediateCatchEvent>"#
            ),
            6 => format!(
                r#"<bpmn:intermediateCatchEvent id="{id}"><bpmn:signalEventDefinition signalRef="S" /></bpmn:intermediateCatchEvent>"#
            ),
            7 => {
                // Sometimes with an event subprocess (message or timer start, interrupting or not).
                let event_sub = match seed % 4 {
                    1 => format!(
                        r#"<bpmn:subProcess id="{id}_ev" triggeredByEvent="true"><bpmn:startEvent id="{id}_es" isInterrupting="{}"><bpmn:messageEventDefinition messageRef="M" /></bpmn:startEvent><bpmn:endEvent id="{id}_ee" /><bpmn:sequenceFlow id="{id}_ef" sourceRef="{id}_es" targetRef="{id}_ee" /></bpmn:subProcess>"#,
                        seed % 8 == 1
                    ),
                    3 => format!(
                        r#"<bpmn:subProcess id="{id}_ev" triggeredByEvent="true"><bpmn:startEvent id="{id}_es" isInterrupting="{}"><bpmn:timerEventDefinition><bpmn:timeDuration>PT10M</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:startEvent><bpmn:endEvent id="{id}_ee" /><bpmn:sequenceFlow id="{id}_ef" sourceRef="{id}_es" targetRef="{id}_ee" /></bpmn:subProcess>"#,
                        seed % 8 == 3
                    ),
                    _ => String::new(),
                };
                format!(
                    r#"<bpmn:subProcess id="{id}"><bpmn:startEvent id="{id}_s" /><bpmn:userTask id="{id}_t" /><bpmn:endEvent id="{id}_e" /><bpmn:sequenceFlow id="{id}_f1" sourceRef="{id}_s" targetRef="{id}_t" /><bpmn:sequenceFlow id="{id}_f2" sourceRef="{id}_t" targetRef="{id}_e" />{event_sub}</bpmn:subProcess>"#
                )
            }
            8 => format!(
                r#"<bpmn:serviceTask id="{id}" camunda:class="Noop"><bpmn:multiInstanceLoopCharacteristics isSequential="{}"><bpmn:loopCardinality>{}</bpmn:loopCardinality></bpmn:multiInstanceLoopCharacteristics></bpmn:serviceTask>"#,
                seed % 2 == 0,
                seed % 4
            ),
            _ => format!(
                r#"<bpmn:endEvent id="{id}"><bpmn:errorEventDefinition errorRef="E" /></bpmn:endEvent>"#
            ),
        };
        body.push_str(&element);
    }
    body.push_str(&format!(r#"<bpmn:endEvent id="n{}" />"#, n - 1));
    for i in 0..n - 1 {
        let is_error_end = i > 0 && shape.kinds[i - 1].0 == 9;
        if is_error_end {
            continue;
        }
        let bits = shape.targets[i];
        let mut targets: Vec<usize> = (i + 1..n).filter(|j| bits & (1 << (j % 16)) != 0).collect();
        if targets.is_empty() {
            targets.push(n - 1);
        }
        for (k, j) in targets.iter().enumerate() {
            let condition = if i > 0 && matches!(shape.kinds[i - 1].0, 1 | 3) && k > 0 {
                format!(
                    r#"<bpmn:conditionExpression>${{x == {}}}</bpmn:conditionExpression>"#,
                    k % 3
                )
            } else {
                String::new()
            };
            flows.push_str(&format!(r#"<bpmn:sequenceFlow id="n{i}_{k}" sourceRef="n{i}" targetRef="n{j}">{condition}</bpmn:sequenceFlow>"#));
        }
    }
    format!(
        r#"<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn"><bpmn:process id="p" isExecutable="true">{body}{extra}{flows}</bpmn:process><bpmn:message id="M" name="m" /><bpmn:signal id="S" name="s" /><bpmn:error id="E" errorCode="e" /></bpmn:definitions>"#
    )
}

const STEP_BUDGET: usize = 10_000;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]
    #[test]
    fn random_processes_end_or_wait(shape in shape()) {
        let text = xml(&shape);
        let definitions = dsf_bpmn::parse(text.as_bytes(), "random.bpmn").map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let mut registry = Registry::new();
        registry.bind_fn("Noop", |_| Ok(()));
        let clock = VirtualClock::at(0);
        let engine = Engine::deploy(definitions, registry, Arc::new(clock.clone())).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut instance = engine.start("p", Some("bk"), Map::from_iter([("x".to_owned(), json!(shape.x))])).expect("start");
            let mut steps = 0;
            for _round in 0..100 {
                loop {
                    steps += 1;
                    prop_assert!(steps < STEP_BUDGET, "no end or wait after {} steps\n{}", steps, text);
                    match engine.step(&mut instance).await {
                        Ok(Step::Progressed) => continue,
                        Ok(_) => break,
                        // These graphs are valid and their conditions evaluate: an error
                        // here is an engine fault, not an outcome.
                        Err(e) => prop_assert!(false, "{}\n{}", e, text),
                    }
                }
                if instance.is_finished() {
                    return Ok(());
                }
                let waiting = instance.waiting();
                if waiting.is_empty() && instance.next_due().is_none() {
                    // Stuck for good (a parallel join missing a branch): a wait, not a hang.
                    return Ok(());
                }
                for w in waiting {
                    let answered = match w {
                        Waiting::UserTask { node } => engine.complete_user_task(&mut instance, &node, &Map::new()).map(drop),
                        Waiting::Message { name, .. } => engine.deliver(&mut instance, &name, None, &Map::new()).map(drop),
                        Waiting::Signal { name, .. } => engine.signal(std::slice::from_mut(&mut instance), &name).map(drop),
                        // Timers come due as the clock advances; conditions need no input.
                        _ => Ok(()),
                    };
                    // An earlier answer of this round may have ended this wait (an event-based
                    // gateway, an interrupting boundary): that is the only error allowed.
                    if let Err(e) = answered {
                        prop_assert!(matches!(e, dsf_bpmn::Error::NoMatch(_)), "{}\n{}", e, text);
                    }
                }
                clock.advance(3_600_000);
            }
            prop_assert!(false, "still running after 100 rounds\n{}", text);
            Ok(())
        })?;
    }
}
