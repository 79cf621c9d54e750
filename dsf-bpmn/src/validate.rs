//! Deploy-time checks: every reference resolves, every path can continue.

use crate::model::*;
use crate::{Error, Result};
use std::collections::HashSet;

pub fn validate(definitions: &Definitions, file: &str) -> Result<()> {
    for process in &definitions.processes {
        check_process(definitions, process, file)?;
    }
    Ok(())
}

fn check_process(d: &Definitions, p: &Process, file: &str) -> Result<()> {
    let fail = |line: u64, element: &str, message: String| Error::Invalid {
        file: file.to_owned(),
        line,
        element: element.to_owned(),
        message,
    };
    let mut ids = HashSet::new();
    for (id, line) in p
        .nodes
        .iter()
        .map(|n| (&n.id, n.line))
        .chain(p.flows.iter().map(|f| (&f.id, f.line)))
    {
        if !ids.insert(id.as_str()) {
            return Err(fail(line, id, "id is used more than once".into()));
        }
    }
    // Looked up once per flow end: an index keeps large files linear.
    let by_id: std::collections::HashMap<&str, &Node> =
        p.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let sources: HashSet<&str> = p.flows.iter().map(|f| f.source.as_str()).collect();
    for f in &p.flows {
        for end in [&f.source, &f.target] {
            let Some(node) = by_id.get(end.as_str()) else {
                return Err(fail(
                    f.line,
                    &f.id,
                    format!(
                        "references '{end}', which is no flow node of process '{}'",
                        p.id
                    ),
                ));
            };
            let source_parent = by_id.get(f.source.as_str()).and_then(|n| n.parent.as_ref());
            if node.parent.as_ref() != source_parent {
                return Err(fail(
                    f.line,
                    &f.id,
                    "connects elements of different (sub)processes".into(),
                ));
            }
        }
    }
    let message_ref = |n: &Node, message: &Option<String>, catching: bool| -> Result<()> {
        match message {
            Some(id) if !d.messages.contains_key(id) => Err(fail(
                n.line,
                &n.id,
                format!("references message '{id}', which is not defined"),
            )),
            Some(id) if d.messages.get(id).is_some_and(|m| m.name.is_empty()) => Err(fail(
                n.line,
                &n.id,
                format!("references message '{id}', which has no name to correlate by"),
            )),
            None if catching => Err(fail(n.line, &n.id, "message event without message".into())),
            _ => Ok(()),
        }
    };
    let trigger_refs = |n: &Node, t: &Trigger, catching: bool| -> Result<()> {
        match t {
            Trigger::Message(m) => message_ref(n, m, catching),
            Trigger::Signal(id) if !d.signals.contains_key(id) => Err(fail(
                n.line,
                &n.id,
                format!("references signal '{id}', which is not defined"),
            )),
            Trigger::Error(Some(id)) if !d.errors.contains_key(id) => Err(fail(
                n.line,
                &n.id,
                format!("references error '{id}', which is not defined"),
            )),
            _ => Ok(()),
        }
    };
    for n in &p.nodes {
        match &n.kind {
            NodeKind::StartEvent(t) | NodeKind::IntermediateCatchEvent(t) => {
                trigger_refs(n, t, true)?
            }
            NodeKind::EndEvent(t) | NodeKind::IntermediateThrowEvent(t) => {
                trigger_refs(n, t, false)?
            }
            NodeKind::BoundaryEvent {
                attached_to,
                trigger,
                ..
            } => {
                trigger_refs(n, trigger, true)?;
                if !by_id.contains_key(attached_to.as_str()) {
                    return Err(fail(
                        n.line,
                        &n.id,
                        format!(
                            "attached to '{attached_to}', which is no activity of this process"
                        ),
                    ));
                }
            }
            NodeKind::ReceiveTask { message } => message_ref(n, message, true)?,
            NodeKind::ExclusiveGateway
            | NodeKind::InclusiveGateway
            | NodeKind::ParallelGateway
            | NodeKind::EventBasedGateway
                if !sources.contains(n.id.as_str()) =>
            {
                return Err(fail(
                    n.line,
                    &n.id,
                    "gateway without outgoing sequence flow".into(),
                ));
            }
            _ => {}
        }
        if let Some(default) = &n.default_flow {
            if !p.outgoing(&n.id).any(|f| &f.id == default) {
                return Err(fail(
                    n.line,
                    &n.id,
                    format!("default flow '{default}' is not an outgoing flow of this element"),
                ));
            }
        }
    }
    if p.executable
        && !p
            .nodes
            .iter()
            .any(|n| n.parent.is_none() && matches!(n.kind, NodeKind::StartEvent(_)))
    {
        return Err(Error::Invalid {
            file: file.to_owned(),
            line: 0,
            element: p.id.clone(),
            message: "executable process without start event".into(),
        });
    }
    Ok(())
}
