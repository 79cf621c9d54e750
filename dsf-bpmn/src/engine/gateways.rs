//! Gateways: exclusive, parallel, inclusive and event-based; which outgoing flows are taken,
//! and how parallel and inclusive joins wait for their tokens.

use super::*;

impl Engine {
    /// Decides at a gateway which flows the token leaves by, or lets it wait for its join.
    pub(super) fn execute_gateway(
        &self,
        process: &Process,
        instance: &mut Instance,
        token: Token,
        node: &Node,
    ) -> Result<()> {
        match &node.kind {
            NodeKind::ExclusiveGateway => {
                let outgoing: Vec<&SequenceFlow> = process.outgoing(&node.id).collect();
                if outgoing.len() <= 1 {
                    return self.set_leaving(instance, &token, None);
                }
                for flow in &outgoing {
                    if Some(&flow.id) == node.default_flow.as_ref() {
                        continue;
                    }
                    let taken = match &flow.condition {
                        Some(c) => self.condition(instance, token.scope, &flow.id, c)?,
                        None => true,
                    };
                    if taken {
                        return self.set_leaving(instance, &token, Some(vec![flow.id.clone()]));
                    }
                }
                match &node.default_flow {
                    Some(default) => {
                        self.set_leaving(instance, &token, Some(vec![default.clone()]))
                    }
                    None => Err(runtime(
                        instance,
                        &node.id,
                        "no outgoing flow's condition holds and there is no default flow".into(),
                    )),
                }
            }
            NodeKind::ParallelGateway => {
                let incoming = process.incoming(&node.id).count();
                if incoming <= 1 {
                    return self.set_leaving(instance, &token, None);
                }
                self.join(instance, token, incoming)
            }
            NodeKind::InclusiveGateway => {
                if process.incoming(&node.id).count() > 1
                    && !self.inclusive_join_ready(process, instance, &token)
                {
                    if let Some(t) = instance.token_mut(token.id) {
                        t.state = TokenState::Waiting;
                    }
                    return Ok(());
                }
                // Every token of this scope waiting at the gateway merges into this one.
                let merged: Vec<u64> = instance
                    .tokens
                    .iter()
                    .filter(|t| {
                        t.id != token.id
                            && t.scope == token.scope
                            && t.node == node.id
                            && t.state == TokenState::Waiting
                    })
                    .map(|t| t.id)
                    .collect();
                instance.tokens.retain(|t| !merged.contains(&t.id));
                let mut chosen = self.true_flows(process, instance, node, token.scope)?;
                if chosen.is_empty() {
                    match &node.default_flow {
                        Some(default) => chosen.push(default.clone()),
                        None if process.outgoing(&node.id).next().is_none() => {}
                        None => {
                            return Err(runtime(
                                instance,
                                &node.id,
                                "no outgoing flow's condition holds and there is no default flow"
                                    .into(),
                            ))
                        }
                    }
                }
                self.set_leaving(instance, &token, Some(chosen))
            }
            NodeKind::EventBasedGateway => {
                let mut events = Vec::new();
                for flow in process.outgoing(&node.id) {
                    let target = super::node(process, &flow.target)?;
                    let trigger = match &target.kind {
                        NodeKind::IntermediateCatchEvent(t) => t.clone(),
                        NodeKind::ReceiveTask { message } => Trigger::Message(message.clone()),
                        _ => {
                            return Err(runtime(
                                instance,
                                &node.id,
                                format!(
                                    "'{}' after an event-based gateway is not a catch event",
                                    target.id
                                ),
                            ))
                        }
                    };
                    events.push((
                        target.id.clone(),
                        self.event_of(instance, token.scope, target, &trigger)?,
                        Effect::Race,
                    ));
                }
                self.wait(process, instance, &token, events)
            }
            other => Err(runtime(
                instance,
                &node.id,
                format!("{other:?} is not executed by this engine"),
            )),
        }
    }

    /// The outgoing flows of `node`, other than its default, that have no condition or whose
    /// condition holds.
    pub(super) fn true_flows(
        &self,
        process: &Process,
        instance: &Instance,
        node: &Node,
        scope: u64,
    ) -> Result<Vec<String>> {
        let mut chosen = Vec::new();
        for flow in process.outgoing(&node.id) {
            if Some(&flow.id) == node.default_flow.as_ref() {
                continue;
            }
            let taken = match &flow.condition {
                Some(c) => self.condition(instance, scope, &flow.id, c)?,
                None => true,
            };
            if taken {
                chosen.push(flow.id.clone());
            }
        }
        Ok(chosen)
    }

    pub(super) fn join(
        &self,
        instance: &mut Instance,
        token: Token,
        incoming: usize,
    ) -> Result<()> {
        let arrived = match instance
            .joins
            .iter_mut()
            .find(|j| j.node == token.node && j.scope == token.scope)
        {
            Some(join) => {
                join.arrived += 1;
                join.arrived
            }
            None => {
                instance.joins.push(Join {
                    node: token.node.clone(),
                    scope: token.scope,
                    arrived: 1,
                });
                1
            }
        };
        if arrived < incoming {
            instance.tokens.retain(|t| t.id != token.id);
            return Ok(());
        }
        instance
            .joins
            .retain(|j| !(j.node == token.node && j.scope == token.scope));
        self.set_leaving(instance, &token, None)
    }

    /// Whether no other token of the scope can still reach the inclusive gateway `token` is at.
    pub(super) fn inclusive_join_ready(
        &self,
        process: &Process,
        instance: &Instance,
        token: &Token,
    ) -> bool {
        let target = &token.node;
        instance
            .tokens
            .iter()
            .filter(|t| t.id != token.id && t.scope == token.scope && &t.node != target)
            .all(|t| !reaches(process, &t.node, target))
    }
}
