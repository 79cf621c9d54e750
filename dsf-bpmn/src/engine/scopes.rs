//! Scopes: embedded and event subprocesses, called processes and multi-instance bodies; a
//! token consumed, a scope completed or terminated, and the process instance ending.

use super::*;

impl Engine {
    /// Opens the scope of a subprocess or call activity, which the token waits for.
    pub(super) fn enter_scope(
        &self,
        process: &Process,
        instance: &mut Instance,
        token: Token,
        node: &Node,
    ) -> Result<()> {
        match &node.kind {
            NodeKind::SubProcess { .. } => self.open_scope(
                (process, process),
                instance,
                &token,
                ScopeKind::SubProcess,
                Map::new(),
                Some(&node.id),
            ),
            NodeKind::CallActivity { called_element } => {
                let called = self.process(called_element)?;
                let values =
                    self.map_variables(instance, token.scope, &node.call_inputs, &node.id)?;
                let kind = ScopeKind::Called {
                    process: called.id.clone(),
                };
                self.open_scope(
                    (process, called),
                    instance,
                    &token,
                    kind,
                    values.into_iter().collect(),
                    None,
                )
            }
            other => Err(runtime(
                instance,
                &node.id,
                format!("{other:?} is not executed by this engine"),
            )),
        }
    }

    /// Starts a scope owned by `token` (a subprocess, or a called process) at the none start
    /// event whose parent is `start_parent` in `processes.1`, arms its event subprocesses, and
    /// lets `token` (a node of `processes.0`) wait for it.
    pub(super) fn open_scope(
        &self,
        processes: (&Process, &Process),
        instance: &mut Instance,
        token: &Token,
        kind: ScopeKind,
        variables: Map<String, Value>,
        start_parent: Option<&str>,
    ) -> Result<()> {
        let (outer, inner) = processes;
        let scope = instance.fresh_id();
        instance.scopes.push(Scope {
            id: scope,
            parent: Some(token.scope),
            owner: Some(token.id),
            kind,
            variables,
        });
        self.arm_event_subprocesses(inner, instance, scope, start_parent)?;
        let start = inner
            .nodes
            .iter()
            .find(|n| {
                n.parent.as_deref() == start_parent
                    && matches!(n.kind, NodeKind::StartEvent(Trigger::None))
            })
            .ok_or_else(|| {
                runtime(
                    instance,
                    &token.node,
                    format!(
                        "'{}' has no none start event",
                        start_parent.unwrap_or(&inner.id)
                    ),
                )
            })?;
        let id = instance.fresh_id();
        instance.tokens.push(Token {
            id,
            scope,
            node: start.id.clone(),
            state: TokenState::Arriving,
            iteration: false,
        });
        self.wait(outer, instance, token, Vec::new())
    }

    pub(super) fn start_multi_instance(
        &self,
        process: &Process,
        instance: &mut Instance,
        node: &Node,
        mi: &MultiInstance,
        token: Token,
    ) -> Result<()> {
        let items: Vec<Value> = if let Some(collection) = &mi.collection {
            let value = if collection.contains("${") || collection.contains("#{") {
                self.evaluate(instance, token.scope, &node.id, collection)?
            } else {
                instance
                    .visible(token.scope)
                    .get(collection)
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            match value {
                Value::Array(items) => items,
                Value::Null => Vec::new(),
                other => {
                    return Err(runtime(
                        instance,
                        &node.id,
                        format!("multi-instance collection is not a list: {other}"),
                    ))
                }
            }
        } else if let Some(cardinality) = &mi.loop_cardinality {
            let n = self
                .evaluate(instance, token.scope, &node.id, cardinality)?
                .as_u64()
                .or_else(|| cardinality.trim().parse().ok())
                .ok_or_else(|| {
                    runtime(instance, &node.id, "loopCardinality is not a number".into())
                })?;
            (0..n).map(Value::from).collect()
        } else {
            return Err(runtime(
                instance,
                &node.id,
                "multi-instance needs a collection or a loopCardinality".into(),
            ));
        };
        let body = instance.fresh_id();
        let mut variables = Map::new();
        variables.insert("nrOfInstances".into(), Value::from(items.len()));
        variables.insert("nrOfCompletedInstances".into(), Value::from(0));
        variables.insert("nrOfActiveInstances".into(), Value::from(0));
        instance.scopes.push(Scope {
            id: body,
            parent: Some(token.scope),
            owner: Some(token.id),
            kind: ScopeKind::MultiInstance {
                items: items.clone(),
                started: 0,
                completed: 0,
                sequential: mi.sequential,
            },
            variables,
        });
        self.wait(process, instance, &token, Vec::new())?;
        if items.is_empty() {
            return self.finish_scope(instance, body);
        }
        let first_wave = if mi.sequential { 1 } else { items.len() };
        for _ in 0..first_wave {
            self.start_iteration(instance, node, mi, body)?;
        }
        Ok(())
    }

    pub(super) fn start_iteration(
        &self,
        instance: &mut Instance,
        node: &Node,
        mi: &MultiInstance,
        body: u64,
    ) -> Result<()> {
        let Some(Scope {
            kind: ScopeKind::MultiInstance { items, started, .. },
            ..
        }) = instance.scope_mut(body)
        else {
            return Err(runtime(
                instance,
                &node.id,
                "multi-instance body missing".into(),
            ));
        };
        let index = *started;
        *started += 1;
        let item = items.get(index).cloned().unwrap_or(Value::Null);
        let scope = instance.fresh_id();
        let mut variables = Map::new();
        variables.insert("loopCounter".into(), Value::from(index));
        if let Some(name) = &mi.element_variable {
            variables.insert(name.clone(), item);
        }
        instance.scopes.push(Scope {
            id: scope,
            parent: Some(body),
            owner: None,
            kind: ScopeKind::Iteration,
            variables,
        });
        self.adjust_active(instance, body, 1);
        let id = instance.fresh_id();
        instance.tokens.push(Token {
            id,
            scope,
            node: node.id.clone(),
            state: TokenState::Arriving,
            iteration: true,
        });
        Ok(())
    }

    pub(super) fn adjust_active(&self, instance: &mut Instance, body: u64, delta: i64) {
        if let Some(scope) = instance.scope_mut(body) {
            let active = scope
                .variables
                .get("nrOfActiveInstances")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            scope
                .variables
                .insert("nrOfActiveInstances".into(), Value::from(active + delta));
        }
    }

    /// A token ends; when its scope has no tokens left, the scope completes.
    pub(super) fn consume(
        &self,
        process: &Process,
        instance: &mut Instance,
        token: u64,
    ) -> Result<()> {
        let scope = instance.token(token).map_or(0, |t| t.scope);
        instance.remove_token_tree(token);
        self.complete_if_empty(process, instance, scope)
    }

    pub(super) fn complete_if_empty(
        &self,
        process: &Process,
        instance: &mut Instance,
        scope: u64,
    ) -> Result<()> {
        let busy = instance.tokens.iter().any(|t| t.scope == scope)
            || instance.scopes.iter().any(|s| s.parent == Some(scope))
            || instance.joins.iter().any(|j| j.scope == scope);
        if busy {
            // Tokens of the scope waiting at an inclusive join may now be able to go on.
            let waiting: Vec<Token> = instance
                .tokens
                .iter()
                .filter(|t| {
                    t.scope == scope
                        && t.state == TokenState::Waiting
                        && process
                            .node(&t.node)
                            .is_some_and(|n| n.kind == NodeKind::InclusiveGateway)
                })
                .cloned()
                .collect();
            if let Some(first) = waiting
                .into_iter()
                .find(|t| self.inclusive_join_ready(process, instance, t))
            {
                // Decides again at the next step, without entering the gateway a second time.
                if let Some(t) = instance.token_mut(first.id) {
                    t.state = TokenState::Job {
                        due: 0,
                        retries_left: None,
                        interval: 0,
                    };
                }
            }
            return Ok(());
        }
        self.finish_scope(instance, scope)
    }

    pub(super) fn finish_scope(&self, instance: &mut Instance, scope: u64) -> Result<()> {
        let Some(finished) = instance.scope(scope).cloned() else {
            return Ok(());
        };
        match finished.kind {
            ScopeKind::Process => {
                // Event subprocesses do not keep an instance alive.
                instance.subscriptions.clear();
                instance.state = InstanceState::Completed;
                Ok(())
            }
            ScopeKind::SubProcess => {
                instance.remove_scope_tree(scope);
                match finished.owner.and_then(|o| instance.token(o).cloned()) {
                    Some(owner) => {
                        instance.subscriptions.retain(|s| s.token != owner.id);
                        self.set_leaving(instance, &owner, None)
                    }
                    // An event subprocess: its parent scope may be done now.
                    None => match finished.parent {
                        Some(parent) => {
                            let process = self.process(instance.process_of(parent))?;
                            self.complete_if_empty(process, instance, parent)
                        }
                        None => Ok(()),
                    },
                }
            }
            ScopeKind::Iteration => {
                instance.scopes.retain(|s| s.id != scope);
                let Some(body) = finished.parent else {
                    return Ok(());
                };
                self.iteration_done(instance, body)
            }
            ScopeKind::Called { .. } => {
                let owner = finished.owner.and_then(|o| instance.token(o).cloned());
                if let Some(owner) = &owner {
                    let caller = self.process(instance.process_of(owner.scope))?;
                    let node = node(caller, &owner.node)?;
                    for (name, value) in
                        self.map_variables(instance, scope, &node.call_outputs, &node.id)?
                    {
                        instance.set_variable(owner.scope, &name, value, false);
                    }
                }
                instance.remove_scope_tree(scope);
                match owner {
                    Some(owner) => {
                        instance.subscriptions.retain(|s| s.token != owner.id);
                        self.set_leaving(instance, &owner, None)
                    }
                    None => Ok(()),
                }
            }
            ScopeKind::MultiInstance { .. } => {
                instance.remove_scope_tree(scope);
                match finished.owner.and_then(|o| instance.token(o).cloned()) {
                    Some(owner) => {
                        instance.subscriptions.retain(|s| s.token != owner.id);
                        self.set_leaving(instance, &owner, None)
                    }
                    None => Ok(()),
                }
            }
        }
    }

    pub(super) fn iteration_done(&self, instance: &mut Instance, body: u64) -> Result<()> {
        let process = self.process(instance.process_of(body))?;
        let Some(Scope {
            kind:
                ScopeKind::MultiInstance {
                    items,
                    started,
                    completed,
                    sequential,
                },
            owner,
            ..
        }) = instance.scope_mut(body)
        else {
            return Ok(());
        };
        *completed += 1;
        let (total, started, done, sequential, owner) =
            (items.len(), *started, *completed, *sequential, *owner);
        if let Some(scope) = instance.scope_mut(body) {
            scope
                .variables
                .insert("nrOfCompletedInstances".into(), Value::from(done));
        }
        self.adjust_active(instance, body, -1);
        let owner_node = owner
            .and_then(|o| instance.token(o))
            .map(|t| t.node.clone())
            .unwrap_or_default();
        let node = node(process, &owner_node)?;
        let mi = node.multi_instance.clone().unwrap_or(MultiInstance {
            sequential,
            collection: None,
            element_variable: None,
            loop_cardinality: None,
            completion_condition: None,
            async_before: false,
            async_after: false,
            exclusive: true,
            retry_cycle: None,
        });
        let condition_met = match &mi.completion_condition {
            Some(c) => self.condition(instance, body, &node.id, c)?,
            None => false,
        };
        if done >= total || condition_met {
            return self.finish_scope(instance, body);
        }
        if sequential && started < total {
            self.start_iteration(instance, node, &mi, body)?;
        }
        Ok(())
    }

    pub(super) fn terminate(
        &self,
        process: &Process,
        instance: &mut Instance,
        scope: u64,
    ) -> Result<()> {
        if scope == 0 {
            instance.tokens.clear();
            instance.subscriptions.clear();
            instance.joins.clear();
            instance.scopes.retain(|s| s.id == 0);
            instance.state = InstanceState::Terminated;
            return Ok(());
        }
        instance.clear_scope(scope);
        self.complete_if_empty(process, instance, scope)
    }

    /// Subscriptions for the message, timer and signal start events of the event subprocesses
    /// of `scope`, whose activity is `scope_node` (`None` for the process).
    pub(super) fn arm_event_subprocesses(
        &self,
        process: &Process,
        instance: &mut Instance,
        scope: u64,
        scope_node: Option<&str>,
    ) -> Result<()> {
        let subprocesses = process.nodes.iter().filter(|n| {
            n.kind
                == (NodeKind::SubProcess {
                    triggered_by_event: true,
                })
                && n.parent.as_deref() == scope_node
        });
        for sub in subprocesses {
            let start = process.nodes.iter().find(|n| {
                n.parent.as_deref() == Some(&sub.id) && matches!(n.kind, NodeKind::StartEvent(_))
            });
            let Some(start) = start else { continue };
            let NodeKind::StartEvent(trigger) = &start.kind else {
                continue;
            };
            if matches!(trigger, Trigger::Error(_) | Trigger::None) {
                continue;
            }
            let event = self.event_of(instance, scope, start, trigger)?;
            let id = instance.fresh_id();
            instance.subscriptions.push(Subscription {
                id,
                token: 0,
                node: start.id.clone(),
                event,
                effect: Effect::EventSubProcess {
                    scope,
                    interrupting: start.interrupting,
                },
            });
        }
        Ok(())
    }

    /// Starts the event subprocess whose start event is `start` in `scope`; an interrupting
    /// one first cancels everything else running in the scope.
    pub(super) fn start_event_subprocess(
        &self,
        process: &Process,
        instance: &mut Instance,
        scope: u64,
        start: &str,
        interrupting: bool,
    ) -> Result<()> {
        let start_node = node(process, start)?;
        if interrupting {
            instance.clear_scope(scope);
        }
        let child = instance.fresh_id();
        instance.scopes.push(Scope {
            id: child,
            parent: Some(scope),
            owner: None,
            kind: ScopeKind::SubProcess,
            variables: Map::new(),
        });
        if let Some(sub) = &start_node.parent {
            instance.entered(sub);
        }
        instance.entered(start);
        let id = instance.fresh_id();
        instance.tokens.push(Token {
            id,
            scope: child,
            node: start.to_owned(),
            state: TokenState::Leaving {
                flows: None,
                due: None,
            },
            iteration: false,
        });
        Ok(())
    }
}
