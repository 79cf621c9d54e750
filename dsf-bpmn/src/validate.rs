//! Deploy-time checks: every reference resolves, every path can continue.

use crate::model::*;
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};

pub fn validate(definitions: &Definitions, file: &str) -> Result<()> {
    for process in &definitions.processes {
        check_process(definitions, process, file)?;
    }
    Ok(())
}

fn check_process(d: &Definitions, p: &Process, file: &str) -> Result<()> {
    let check = ProcessCheck {
        definitions: d,
        process: p,
        file,
        // Looked up once per flow end: an index keeps large files linear.
        by_id: p.nodes.iter().map(|n| (n.id.as_str(), n)).collect(),
        sources: p.flows.iter().map(|f| f.source.as_str()).collect(),
    };
    check.unique_ids()?;
    check.flows()?;
    for n in &p.nodes {
        check.node(n)?;
    }
    check.has_start_event()
}

/// The checks of one process, with what they look things up in.
struct ProcessCheck<'a> {
    definitions: &'a Definitions,
    process: &'a Process,
    file: &'a str,
    by_id: HashMap<&'a str, &'a Node>,
    /// Nodes with an outgoing flow.
    sources: HashSet<&'a str>,
}

impl ProcessCheck<'_> {
    fn fail(&self, line: u64, element: &str, message: String) -> Error {
        Error::Invalid {
            file: self.file.to_owned(),
            line,
            element: element.to_owned(),
            message,
        }
    }

    /// No two nodes or flows share an id.
    fn unique_ids(&self) -> Result<()> {
        let p = self.process;
        let mut ids = HashSet::new();
        for (id, line) in p
            .nodes
            .iter()
            .map(|n| (&n.id, n.line))
            .chain(p.flows.iter().map(|f| (&f.id, f.line)))
        {
            if !ids.insert(id.as_str()) {
                return Err(self.fail(line, id, "id is used more than once".into()));
            }
        }
        Ok(())
    }

    /// Every flow connects two nodes of the same (sub)process.
    fn flows(&self) -> Result<()> {
        for f in &self.process.flows {
            for end in [&f.source, &f.target] {
                let Some(node) = self.by_id.get(end.as_str()) else {
                    return Err(self.fail(
                        f.line,
                        &f.id,
                        format!(
                            "references '{end}', which is no flow node of process '{}'",
                            self.process.id
                        ),
                    ));
                };
                let source_parent = self
                    .by_id
                    .get(f.source.as_str())
                    .and_then(|n| n.parent.as_ref());
                if node.parent.as_ref() != source_parent {
                    return Err(self.fail(
                        f.line,
                        &f.id,
                        "connects elements of different (sub)processes".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A node's references resolve, a gateway can leave, a default flow is its own.
    fn node(&self, n: &Node) -> Result<()> {
        match &n.kind {
            NodeKind::StartEvent(t) | NodeKind::IntermediateCatchEvent(t) => {
                self.trigger_refs(n, t, true)?
            }
            NodeKind::EndEvent(t) | NodeKind::IntermediateThrowEvent(t) => {
                self.trigger_refs(n, t, false)?
            }
            NodeKind::BoundaryEvent {
                attached_to,
                trigger,
                ..
            } => {
                self.trigger_refs(n, trigger, true)?;
                if !self.by_id.contains_key(attached_to.as_str()) {
                    return Err(self.fail(
                        n.line,
                        &n.id,
                        format!(
                            "attached to '{attached_to}', which is no activity of this process"
                        ),
                    ));
                }
            }
            NodeKind::ReceiveTask { message } => self.message_ref(n, message, true)?,
            NodeKind::ExclusiveGateway
            | NodeKind::InclusiveGateway
            | NodeKind::ParallelGateway
            | NodeKind::EventBasedGateway
                if !self.sources.contains(n.id.as_str()) =>
            {
                return Err(self.fail(
                    n.line,
                    &n.id,
                    "gateway without outgoing sequence flow".into(),
                ));
            }
            _ => {}
        }
        if let Some(default) = &n.default_flow {
            if !self.process.outgoing(&n.id).any(|f| &f.id == default) {
                return Err(self.fail(
                    n.line,
                    &n.id,
                    format!("default flow '{default}' is not an outgoing flow of this element"),
                ));
            }
        }
        Ok(())
    }

    /// A message reference names a defined message with a name; a catching event has one.
    fn message_ref(&self, n: &Node, message: &Option<String>, catching: bool) -> Result<()> {
        let messages = &self.definitions.messages;
        match message {
            Some(id) if !messages.contains_key(id) => Err(self.fail(
                n.line,
                &n.id,
                format!("references message '{id}', which is not defined"),
            )),
            Some(id) if messages.get(id).is_some_and(|m| m.name.is_empty()) => Err(self.fail(
                n.line,
                &n.id,
                format!("references message '{id}', which has no name to correlate by"),
            )),
            None if catching => {
                Err(self.fail(n.line, &n.id, "message event without message".into()))
            }
            _ => Ok(()),
        }
    }

    /// An event's message, signal or error is defined.
    fn trigger_refs(&self, n: &Node, t: &Trigger, catching: bool) -> Result<()> {
        match t {
            Trigger::Message(m) => self.message_ref(n, m, catching),
            Trigger::Signal(id) if !self.definitions.signals.contains_key(id) => Err(self.fail(
                n.line,
                &n.id,
                format!("references signal '{id}', which is not defined"),
            )),
            Trigger::Error(Some(id)) if !self.definitions.errors.contains_key(id) => Err(self
                .fail(
                    n.line,
                    &n.id,
                    format!("references error '{id}', which is not defined"),
                )),
            _ => Ok(()),
        }
    }

    /// An executable process has a start event at its top level.
    fn has_start_event(&self) -> Result<()> {
        let p = self.process;
        if p.executable
            && !p
                .nodes
                .iter()
                .any(|n| n.parent.is_none() && matches!(n.kind, NodeKind::StartEvent(_)))
        {
            return Err(self.fail(0, &p.id, "executable process without start event".into()));
        }
        Ok(())
    }
}
