//! From the element tree to the model.

use crate::model::*;
use crate::tree::{self, Element, BPMN, CAMUNDA, XSI};
use crate::{Error, Result};

/// Reads a BPMN 2.0 file (as bytes) and validates it. `file` names it in errors.
pub fn parse(bytes: &[u8], file: &str) -> Result<Definitions> {
    let root = tree::read(bytes, file)?;
    let parser = Parser { file };
    if !root.is(BPMN, "definitions") {
        return Err(parser.invalid(&root, "root element is not bpmn:definitions"));
    }
    let mut definitions = Definitions::default();
    for child in &root.children {
        match (child.namespace.as_deref(), child.name.as_str()) {
            (Some(BPMN), "process") => definitions.processes.push(parser.process(child)?),
            (Some(BPMN), "message") => {
                let id = parser.required(child, "id")?;
                // A message without a name is valid BPMN; it is an error only where an event
                // references it (see validate), since correlation goes by name.
                let name = child.attr("name").unwrap_or_default().to_owned();
                definitions
                    .messages
                    .insert(id.clone(), Message { id, name });
            }
            (Some(BPMN), "error") => {
                let id = parser.required(child, "id")?;
                definitions.errors.insert(
                    id.clone(),
                    ErrorDefinition {
                        id,
                        name: child.attr("name").map(str::to_owned),
                        code: child.attr("errorCode").map(str::to_owned),
                    },
                );
            }
            (Some(BPMN), "signal") => {
                let id = parser.required(child, "id")?;
                let name = parser.required(child, "name")?;
                definitions.signals.insert(id.clone(), Signal { id, name });
            }
            // Pools and their message flows describe the diagram, not execution.
            (Some(BPMN), "collaboration" | "documentation" | "extensionElements" | "category") => {}
            _ => return Err(parser.unsupported(child)),
        }
    }
    crate::validate::validate(&definitions, file)?;
    Ok(definitions)
}

struct Parser<'a> {
    file: &'a str,
}

fn flag(e: &Element, name: &str) -> bool {
    e.attr_ns(CAMUNDA, name) == Some("true")
}

impl Parser<'_> {
    fn invalid(&self, e: &Element, message: &str) -> Error {
        Error::Invalid {
            file: self.file.to_owned(),
            line: e.line,
            element: e.id().to_owned(),
            message: message.to_owned(),
        }
    }

    fn unsupported(&self, e: &Element) -> Error {
        self.invalid(e, &format!("<{}> is not supported", e.name))
    }

    fn required(&self, e: &Element, attr: &str) -> Result<String> {
        e.attr(attr)
            .map(str::to_owned)
            .ok_or_else(|| self.invalid(e, &format!("attribute '{attr}' is missing")))
    }

    fn process(&self, e: &Element) -> Result<Process> {
        let mut process = Process {
            id: self.required(e, "id")?,
            executable: e.attr("isExecutable") == Some("true"),
            version_tag: e.attr_ns(CAMUNDA, "versionTag").map(str::to_owned),
            nodes: Vec::new(),
            flows: Vec::new(),
        };
        self.scope(e, None, &mut process)?;
        Ok(process)
    }

    /// The flow elements of a process or subprocess.
    fn scope(&self, e: &Element, parent: Option<&str>, process: &mut Process) -> Result<()> {
        for child in &e.children {
            if child.namespace.as_deref() != Some(BPMN) {
                return Err(self.unsupported(child));
            }
            match child.name.as_str() {
                "sequenceFlow" => process.flows.push(SequenceFlow {
                    id: self.required(child, "id")?,
                    source: self.required(child, "sourceRef")?,
                    target: self.required(child, "targetRef")?,
                    condition: child.child(BPMN, "conditionExpression").map(|c| {
                        // xsi:type is tFormalExpression for every expression Modeler writes.
                        let _ = c.attr_ns(XSI, "type");
                        c.text()
                    }),
                    line: child.line,
                }),
                "documentation"
                | "extensionElements"
                | "laneSet"
                | "textAnnotation"
                | "association"
                | "dataObject"
                | "dataObjectReference"
                | "dataStoreReference"
                | "group" => {}
                // A subprocess's own attributes as an activity, read by `node`.
                "incoming"
                | "outgoing"
                | "multiInstanceLoopCharacteristics"
                | "standardLoopCharacteristics" => {}
                _ => {
                    let node = self.node(child, parent)?;
                    let id = node.id.clone();
                    let is_subprocess = matches!(node.kind, NodeKind::SubProcess { .. });
                    process.nodes.push(node);
                    if is_subprocess {
                        self.scope(child, Some(&id), process)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn trigger(&self, e: &Element) -> Result<Trigger> {
        let definitions: Vec<&Element> = e
            .children
            .iter()
            .filter(|c| c.namespace.as_deref() == Some(BPMN) && c.name.ends_with("EventDefinition"))
            .collect();
        let definition = match definitions.as_slice() {
            [] => return Ok(Trigger::None),
            [one] => *one,
            _ => {
                return Err(self.invalid(
                    e,
                    "several event definitions on one event are not supported",
                ))
            }
        };
        Ok(match definition.name.as_str() {
            "messageEventDefinition" => {
                Trigger::Message(definition.attr("messageRef").map(str::to_owned))
            }
            "timerEventDefinition" => {
                let timer = [("timeDuration", 0), ("timeDate", 1), ("timeCycle", 2)]
                    .iter()
                    .find_map(|(name, kind)| {
                        definition.child(BPMN, name).map(|t| (*kind, t.text()))
                    });
                match timer {
                    Some((0, v)) => Trigger::Timer(Timer::Duration(v)),
                    Some((1, v)) => Trigger::Timer(Timer::Date(v)),
                    Some((_, v)) => Trigger::Timer(Timer::Cycle(v)),
                    None => {
                        return Err(
                            self.invalid(e, "timer without timeDuration, timeDate or timeCycle")
                        )
                    }
                }
            }
            "signalEventDefinition" => Trigger::Signal(
                definition
                    .attr("signalRef")
                    .map(str::to_owned)
                    .ok_or_else(|| self.invalid(e, "signal event without signalRef"))?,
            ),
            "errorEventDefinition" => {
                Trigger::Error(definition.attr("errorRef").map(str::to_owned))
            }
            "terminateEventDefinition" => Trigger::Terminate,
            "conditionalEventDefinition" => Trigger::Conditional {
                condition: definition
                    .child(BPMN, "condition")
                    .map(Element::text)
                    .ok_or_else(|| self.invalid(e, "conditional event without condition"))?,
                variable_name: definition
                    .attr_ns(CAMUNDA, "variableName")
                    .map(str::to_owned),
                variable_events: definition
                    .attr_ns(CAMUNDA, "variableEvents")
                    .map(str::to_owned),
            },
            _ => return Err(self.invalid(e, &format!("<{}> is not supported", definition.name))),
        })
    }

    fn behaviour(&self, e: &Element) -> Option<Behaviour> {
        if let Some(c) = e.attr_ns(CAMUNDA, "class") {
            Some(Behaviour::Class(c.to_owned()))
        } else if let Some(x) = e.attr_ns(CAMUNDA, "expression") {
            Some(Behaviour::Expression(x.to_owned()))
        } else {
            e.attr_ns(CAMUNDA, "delegateExpression")
                .map(|x| Behaviour::DelegateExpression(x.to_owned()))
        }
    }

    fn fields(&self, e: &Element) -> Result<Vec<Field>> {
        e.children
            .iter()
            .filter(|c| c.is(CAMUNDA, "field"))
            .map(|f| {
                let name = self.required(f, "name")?;
                let value = if let Some(s) = f.attr("stringValue") {
                    FieldValue::String(s.to_owned())
                } else if let Some(x) = f.attr("expression") {
                    FieldValue::Expression(x.to_owned())
                } else if let Some(s) = f.child(CAMUNDA, "string") {
                    FieldValue::String(s.text())
                } else if let Some(x) = f.child(CAMUNDA, "expression") {
                    FieldValue::Expression(x.text())
                } else {
                    return Err(self.invalid(f, &format!("field '{name}' has no value")));
                };
                Ok(Field { name, value })
            })
            .collect()
    }

    fn listener(&self, e: &Element) -> Result<Listener> {
        if e.children.iter().any(|c| c.is(CAMUNDA, "script"))
            || e.attr("class").is_none()
                && e.attr("expression").is_none()
                && e.attr("delegateExpression").is_none()
        {
            return Err(self.invalid(e, "listener needs class, expression or delegateExpression (scripts are not supported)"));
        }
        let behaviour = if let Some(c) = e.attr("class") {
            Behaviour::Class(c.to_owned())
        } else if let Some(x) = e.attr("expression") {
            Behaviour::Expression(x.to_owned())
        } else {
            Behaviour::DelegateExpression(
                e.attr("delegateExpression").unwrap_or_default().to_owned(),
            )
        };
        Ok(Listener {
            event: self.required(e, "event")?,
            behaviour,
            fields: self.fields(e)?,
        })
    }

    fn node(&self, e: &Element, parent: Option<&str>) -> Result<Node> {
        let kind = match e.name.as_str() {
            "startEvent" => NodeKind::StartEvent(self.trigger(e)?),
            "endEvent" => NodeKind::EndEvent(self.trigger(e)?),
            "intermediateCatchEvent" => NodeKind::IntermediateCatchEvent(self.trigger(e)?),
            "intermediateThrowEvent" => NodeKind::IntermediateThrowEvent(self.trigger(e)?),
            "boundaryEvent" => NodeKind::BoundaryEvent {
                attached_to: self.required(e, "attachedToRef")?,
                cancel_activity: e.attr("cancelActivity") != Some("false"),
                trigger: self.trigger(e)?,
                error_code_variable: e.children.iter().find_map(|d| d.attr_ns(CAMUNDA, "errorCodeVariable")).map(str::to_owned),
                error_message_variable: e.children.iter().find_map(|d| d.attr_ns(CAMUNDA, "errorMessageVariable")).map(str::to_owned),
            },
            "serviceTask" => NodeKind::ServiceTask,
            "sendTask" => NodeKind::SendTask,
            "receiveTask" => NodeKind::ReceiveTask { message: e.attr("messageRef").map(str::to_owned) },
            "userTask" => NodeKind::UserTask { form_key: e.attr_ns(CAMUNDA, "formKey").map(str::to_owned) },
            "exclusiveGateway" => NodeKind::ExclusiveGateway,
            "inclusiveGateway" => NodeKind::InclusiveGateway,
            "parallelGateway" => NodeKind::ParallelGateway,
            "eventBasedGateway" => NodeKind::EventBasedGateway,
            "subProcess" => NodeKind::SubProcess { triggered_by_event: e.attr("triggeredByEvent") == Some("true") },
            "callActivity" => NodeKind::CallActivity { called_element: self.required(e, "calledElement")? },
            "scriptTask" => return Err(self.invalid(e, "script tasks are not supported: dsf-rs runs no script language; use a service task")),
            _ => return Err(self.unsupported(e)),
        };
        let mut node = Node {
            id: self.required(e, "id")?,
            name: e.attr("name").map(str::to_owned),
            kind,
            parent: parent.map(str::to_owned),
            line: e.line,
            behaviour: self.behaviour(e),
            fields: Vec::new(),
            execution_listeners: Vec::new(),
            task_listeners: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            properties: Vec::new(),
            async_before: flag(e, "asyncBefore"),
            async_after: flag(e, "asyncAfter"),
            retry_cycle: None,
            multi_instance: None,
            default_flow: e.attr("default").map(str::to_owned),
            interrupting: e.attr("isInterrupting") != Some("false"),
            call_inputs: Vec::new(),
            call_outputs: Vec::new(),
        };
        // Message events carry their class and fields on the event definition.
        if let Some(definition) = e.child(BPMN, "messageEventDefinition") {
            if node.behaviour.is_none() {
                node.behaviour = self.behaviour(definition);
            }
            if let Some(ext) = definition.child(BPMN, "extensionElements") {
                node.fields.extend(self.fields(ext)?);
            }
        }
        for child in &e.children {
            match (child.namespace.as_deref(), child.name.as_str()) {
                (Some(BPMN), "extensionElements") => self.extensions(child, &mut node)?,
                (Some(BPMN), "multiInstanceLoopCharacteristics") => {
                    node.multi_instance = Some(MultiInstance {
                        sequential: child.attr("isSequential") == Some("true"),
                        collection: child.attr_ns(CAMUNDA, "collection").map(str::to_owned),
                        element_variable: child
                            .attr_ns(CAMUNDA, "elementVariable")
                            .map(str::to_owned),
                        loop_cardinality: child.child(BPMN, "loopCardinality").map(Element::text),
                        completion_condition: child
                            .child(BPMN, "completionCondition")
                            .map(Element::text),
                        async_before: flag(child, "asyncBefore"),
                        async_after: flag(child, "asyncAfter"),
                        exclusive: child.attr_ns(CAMUNDA, "exclusive") != Some("false"),
                        retry_cycle: child
                            .child(BPMN, "extensionElements")
                            .and_then(|x| x.child(CAMUNDA, "failedJobRetryTimeCycle"))
                            .map(Element::text),
                    });
                }
                (Some(BPMN), "standardLoopCharacteristics") => {
                    return Err(
                        self.invalid(e, "standard loops are not supported; use multi-instance")
                    )
                }
                _ => {}
            }
        }
        Ok(node)
    }

    fn extensions(&self, ext: &Element, node: &mut Node) -> Result<()> {
        node.fields.extend(self.fields(ext)?);
        for c in &ext.children {
            match (c.namespace.as_deref(), c.name.as_str()) {
                (Some(CAMUNDA), "field") => {}
                (Some(CAMUNDA), "executionListener") => {
                    node.execution_listeners.push(self.listener(c)?)
                }
                (Some(CAMUNDA), "taskListener") => node.task_listeners.push(self.listener(c)?),
                (Some(CAMUNDA), direction @ ("in" | "out"))
                    if matches!(node.kind, NodeKind::CallActivity { .. }) =>
                {
                    let mapping = if c.attr("variables") == Some("all") {
                        VariableMapping::All
                    } else {
                        VariableMapping::One {
                            source: c.attr("source").map(str::to_owned),
                            source_expression: c.attr("sourceExpression").map(str::to_owned),
                            target: self.required(c, "target")?,
                        }
                    };
                    if let VariableMapping::One {
                        source: None,
                        source_expression: None,
                        ..
                    } = mapping
                    {
                        return Err(
                            self.invalid(c, "needs source, sourceExpression or variables=\"all\"")
                        );
                    }
                    if direction == "in" {
                        node.call_inputs.push(mapping);
                    } else {
                        node.call_outputs.push(mapping);
                    }
                }
                (Some(CAMUNDA), "failedJobRetryTimeCycle") => node.retry_cycle = Some(c.text()),
                (Some(CAMUNDA), "properties") => {
                    for p in c.children.iter().filter(|p| p.is(CAMUNDA, "property")) {
                        node.properties.push((
                            self.required(p, "name")?,
                            p.attr("value").unwrap_or_default().to_owned(),
                        ));
                    }
                }
                (Some(CAMUNDA), "inputOutput") => {
                    for p in &c.children {
                        if p.children
                            .iter()
                            .any(|x| x.namespace.as_deref() == Some(CAMUNDA))
                        {
                            return Err(self.invalid(
                                p,
                                "only text parameters are supported (no list, map or script)",
                            ));
                        }
                        let param = Parameter {
                            name: self.required(p, "name")?,
                            value: p.text(),
                        };
                        match p.name.as_str() {
                            "inputParameter" => node.inputs.push(param),
                            "outputParameter" => node.outputs.push(param),
                            _ => return Err(self.unsupported(p)),
                        }
                    }
                }
                _ => return Err(self.unsupported(c)),
            }
        }
        Ok(())
    }
}
