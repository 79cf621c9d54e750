//! Events: start, end, throw and catch events; what an instance waits for (messages, timers,
//! signals, conditions, user tasks) and what fires when it arrives; boundary events; signals
//! between instances; BPMN errors and where they are caught.

use super::*;

impl Engine {
    /// Runs an event: a throw goes on (signals are heard first), a catch waits, an end event
    /// consumes its token, terminates its scope or throws its error.
    pub(super) fn execute_event(
        &self,
        process: &Process,
        instance: &mut Instance,
        token: Token,
        node: &Node,
    ) -> Result<()> {
        match &node.kind {
            NodeKind::StartEvent(_) | NodeKind::IntermediateThrowEvent(Trigger::None) => {
                self.set_leaving(instance, &token, None)
            }
            NodeKind::EndEvent(Trigger::None) => self.consume(process, instance, token.id),
            NodeKind::IntermediateThrowEvent(Trigger::Signal(id))
            | NodeKind::EndEvent(Trigger::Signal(id)) => {
                let name = self.signal_name(instance, node, id)?;
                instance.signals.push(name.clone());
                self.hear_signal(instance, &name)?;
                if matches!(node.kind, NodeKind::EndEvent(_)) {
                    // The token may already be gone if its own scope caught the signal.
                    if instance.token(token.id).is_some() {
                        self.consume(process, instance, token.id)?;
                    }
                    Ok(())
                } else {
                    match instance.token(token.id).cloned() {
                        Some(t) => self.set_leaving(instance, &t, None),
                        None => Ok(()),
                    }
                }
            }
            NodeKind::EndEvent(Trigger::Terminate) => {
                self.terminate(process, instance, token.scope)
            }
            NodeKind::EndEvent(Trigger::Error(id)) => {
                let code = id
                    .as_ref()
                    .and_then(|id| self.definitions.errors.get(id))
                    .and_then(|e| e.code.clone())
                    .unwrap_or_default();
                self.throw_error(instance, &token, &code, "error end event")
            }
            NodeKind::IntermediateCatchEvent(trigger) => {
                let event = self.event_of(instance, token.scope, node, trigger)?;
                if let Event::Condition { condition, .. } = &event {
                    // A condition that already holds does not wait.
                    if self.condition(instance, token.scope, &node.id, condition)? {
                        return self.set_leaving(instance, &token, None);
                    }
                }
                self.wait(
                    process,
                    instance,
                    &token,
                    vec![(node.id.clone(), event, Effect::Complete)],
                )
            }
            other => Err(runtime(
                instance,
                &node.id,
                format!("{other:?} is not executed by this engine"),
            )),
        }
    }

    /// Fires the conditional events whose condition holds now that variables changed; true if
    /// any fired.
    pub(super) fn fire_conditions(&self, instance: &mut Instance) -> Result<bool> {
        let changed = std::mem::take(&mut instance.changed);
        let candidates: Vec<Subscription> = instance
            .subscriptions
            .iter()
            .filter(|s| match &s.event {
                Event::Condition {
                    variable, events, ..
                } => changed.iter().any(|(name, created)| {
                    let kind = if *created { "create" } else { "update" };
                    variable.as_ref().is_none_or(|v| v == name)
                        && events
                            .as_deref()
                            .is_none_or(|e| e.split(',').any(|k| k.trim() == kind))
                }),
                _ => false,
            })
            .cloned()
            .collect();
        let mut fired = false;
        for subscription in candidates {
            if !instance
                .subscriptions
                .iter()
                .any(|s| s.id == subscription.id)
            {
                continue;
            }
            let Event::Condition { condition, .. } = &subscription.event else {
                continue;
            };
            let scope = match subscription.effect {
                Effect::EventSubProcess { scope, .. } => scope,
                _ => match instance.token(subscription.token) {
                    Some(t) => t.scope,
                    None => continue,
                },
            };
            if self.condition(instance, scope, &subscription.node, condition)? {
                self.fire(instance, subscription)?;
                fired = true;
            }
        }
        Ok(fired)
    }

    pub(super) fn event_of(
        &self,
        instance: &Instance,
        scope: u64,
        node: &Node,
        trigger: &Trigger,
    ) -> Result<Event> {
        match trigger {
            Trigger::Message(Some(id)) => {
                let name = self
                    .definitions
                    .messages
                    .get(id)
                    .map(|m| m.name.clone())
                    .ok_or_else(|| {
                        runtime(instance, &node.id, format!("message '{id}' is not defined"))
                    })?;
                let correlation_key = instance
                    .visible(scope)
                    .get("correlationKey")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                Ok(Event::Message {
                    name,
                    correlation_key,
                })
            }
            Trigger::Timer(timer) => {
                let text = match timer {
                    Timer::Duration(t) | Timer::Date(t) | Timer::Cycle(t) => t,
                };
                let value = crate::expr::to_text(&self.evaluate(instance, scope, &node.id, text)?);
                let schedule = schedule(timer, &value, self.clock.now())
                    .map_err(|m| runtime(instance, &node.id, m))?;
                Ok(Event::Timer {
                    due: schedule.first,
                    every: schedule.every,
                    repeats: schedule.repeats,
                })
            }
            Trigger::Signal(id) => Ok(Event::Signal {
                name: self.signal_name(instance, node, id)?,
            }),
            Trigger::Conditional {
                condition,
                variable_name,
                variable_events,
            } => Ok(Event::Condition {
                condition: condition.clone(),
                variable: variable_name.clone(),
                events: variable_events.clone(),
            }),
            other => Err(runtime(
                instance,
                &node.id,
                format!("cannot wait for {other:?}"),
            )),
        }
    }

    pub(super) fn signal_name(&self, instance: &Instance, node: &Node, id: &str) -> Result<String> {
        self.definitions
            .signals
            .get(id)
            .map(|s| s.name.clone())
            .ok_or_else(|| runtime(instance, &node.id, format!("signal '{id}' is not defined")))
    }

    /// Fires every subscription of `instance` waiting for the signal `name`.
    pub(super) fn hear_signal(&self, instance: &mut Instance, name: &str) -> Result<usize> {
        let waiting: Vec<Subscription> = instance
            .subscriptions
            .iter()
            .filter(|s| matches!(&s.event, Event::Signal { name: n } if n == name))
            .cloned()
            .collect();
        let mut heard = 0;
        for subscription in waiting {
            // An earlier one may have cancelled this one (an interrupting boundary).
            if instance
                .subscriptions
                .iter()
                .any(|s| s.id == subscription.id)
            {
                self.fire(instance, subscription)?;
                heard += 1;
            }
        }
        Ok(heard)
    }

    /// Broadcasts the signal `name` to `instances`: every catch waiting for it fires, and
    /// every process with a signal start event of that name starts a new instance (returned).
    pub fn signal(&self, instances: &mut [Instance], name: &str) -> Result<Vec<Instance>> {
        for instance in instances.iter_mut().filter(|i| !i.is_finished()) {
            self.hear_signal(instance, name)?;
        }
        let mut started = Vec::new();
        for process in &self.definitions.processes {
            for start in process.nodes.iter().filter(|n| {
                n.parent.is_none()
                    && matches!(&n.kind, NodeKind::StartEvent(Trigger::Signal(id))
                        if self.definitions.signals.get(id).is_some_and(|s| s.name == name))
            }) {
                started.push(self.new_instance(process, &start.id, None, Map::new())?);
            }
        }
        Ok(started)
    }

    /// The token waits for `events` and for the boundary events of its node.
    pub(super) fn wait(
        &self,
        process: &Process,
        instance: &mut Instance,
        token: &Token,
        events: Vec<(String, Event, Effect)>,
    ) -> Result<()> {
        if let Some(t) = instance.token_mut(token.id) {
            t.state = TokenState::Waiting;
        }
        for (node, event, effect) in events {
            let id = instance.fresh_id();
            instance.subscriptions.push(Subscription {
                id,
                token: token.id,
                node,
                event,
                effect,
            });
        }
        for boundary in process.nodes.iter() {
            let NodeKind::BoundaryEvent {
                attached_to,
                cancel_activity,
                trigger,
                ..
            } = &boundary.kind
            else {
                continue;
            };
            if attached_to != &token.node
                || token.iteration
                    && process
                        .node(attached_to)
                        .is_some_and(|n| n.multi_instance.is_some())
            {
                continue;
            }
            if matches!(trigger, Trigger::Error(_)) {
                continue;
            }
            let event = self.event_of(instance, token.scope, boundary, trigger)?;
            let id = instance.fresh_id();
            instance.subscriptions.push(Subscription {
                id,
                token: token.id,
                node: boundary.id.clone(),
                event,
                effect: Effect::Boundary {
                    interrupting: *cancel_activity,
                },
            });
        }
        Ok(())
    }

    /// A subscription fires: a message arrived, a timer is due, a user task was completed.
    pub(super) fn fire(&self, instance: &mut Instance, subscription: Subscription) -> Result<()> {
        let owner = match subscription.effect {
            Effect::EventSubProcess {
                scope,
                interrupting,
            } => {
                if !interrupting {
                    rearm(instance, &subscription);
                }
                let process = self.process(instance.process_of(scope))?;
                return self.start_event_subprocess(
                    process,
                    instance,
                    scope,
                    &subscription.node,
                    interrupting,
                );
            }
            _ => instance.token(subscription.token).cloned(),
        };
        let Some(owner) = owner else {
            instance.subscriptions.retain(|s| s.id != subscription.id);
            return Ok(());
        };
        match subscription.effect {
            // Answered above: it has no owning token.
            Effect::EventSubProcess { .. } => Ok(()),
            Effect::Complete => {
                instance.subscriptions.retain(|s| s.token != owner.id);
                self.set_leaving(instance, &owner, None)
            }
            Effect::Race => {
                instance.subscriptions.retain(|s| s.token != owner.id);
                instance.entered(&subscription.node);
                if let Some(t) = instance.token_mut(owner.id) {
                    t.node = subscription.node.clone();
                    t.state = TokenState::Leaving {
                        flows: None,
                        due: None,
                    };
                }
                Ok(())
            }
            Effect::Boundary { interrupting } => {
                if interrupting {
                    instance.remove_token_tree(owner.id);
                } else {
                    rearm(instance, &subscription);
                }
                instance.entered(&subscription.node);
                let id = instance.fresh_id();
                let token = Token {
                    id,
                    scope: owner.scope,
                    node: subscription.node.clone(),
                    state: TokenState::Leaving {
                        flows: None,
                        due: None,
                    },
                    iteration: false,
                };
                instance.tokens.push(token);
                Ok(())
            }
        }
    }

    /// A BPMN error from `token`'s node: caught by the nearest error boundary event (on the
    /// node itself, then on each enclosing subprocess or multi-instance activity) whose error
    /// code matches or that catches all; uncaught, the instance fails.
    pub(super) fn throw_error(
        &self,
        instance: &mut Instance,
        token: &Token,
        code: &str,
        message: &str,
    ) -> Result<()> {
        for catcher in error_catchers(instance, token) {
            match catcher {
                ErrorCatcher::EventSubProcesses(scope, scope_node) => {
                    let process = self.process(instance.process_of(scope))?;
                    if let Some(start) =
                        self.error_start_event(process, scope_node.as_deref(), code)
                    {
                        return self
                            .start_event_subprocess(process, instance, scope, &start.id, true);
                    }
                }
                ErrorCatcher::Boundary(owner, node_id) => {
                    let Some(owner) = instance.token(owner).cloned() else {
                        continue;
                    };
                    let process = self.process(instance.process_of(owner.scope))?;
                    if let Some(boundary) = self.error_boundary(process, &node_id, code) {
                        let boundary = boundary.clone();
                        catch_at_boundary(instance, &owner, &boundary, code, message);
                        return Ok(());
                    }
                }
            }
        }
        instance.state = InstanceState::Failed {
            element: token.node.clone(),
            reason: format!("unhandled BPMN error '{code}': {message}"),
        };
        Ok(())
    }

    /// Whether an error event for `error` (an error id; `None` catches all) catches `code`.
    fn catches_error(&self, error: Option<&String>, code: &str) -> bool {
        match error {
            None => true,
            Some(id) => {
                self.definitions
                    .errors
                    .get(id)
                    .and_then(|e| e.code.as_deref())
                    == Some(code)
            }
        }
    }

    /// The error boundary event on `node_id` that catches `code`.
    fn error_boundary<'p>(
        &self,
        process: &'p Process,
        node_id: &str,
        code: &str,
    ) -> Option<&'p Node> {
        process.nodes.iter().find(|b| match &b.kind {
            NodeKind::BoundaryEvent {
                attached_to,
                trigger: Trigger::Error(error),
                ..
            } => attached_to == node_id && self.catches_error(error.as_ref(), code),
            _ => false,
        })
    }

    /// The error start event catching `code` of an event subprocess directly in the scope
    /// of `scope_node` (the subprocess; `None` for the process itself).
    fn error_start_event<'p>(
        &self,
        process: &'p Process,
        scope_node: Option<&str>,
        code: &str,
    ) -> Option<&'p Node> {
        process.nodes.iter().find(|start| {
            let in_scope = start
                .parent
                .as_deref()
                .and_then(|p| process.node(p))
                .is_some_and(|sub| {
                    sub.kind
                        == (NodeKind::SubProcess {
                            triggered_by_event: true,
                        })
                        && sub.parent.as_deref() == scope_node
                });
            in_scope
                && match &start.kind {
                    NodeKind::StartEvent(Trigger::Error(error)) => {
                        self.catches_error(error.as_ref(), code)
                    }
                    _ => false,
                }
        })
    }
}

/// Where a thrown error may be caught.
enum ErrorCatcher {
    /// The error boundary events on `node` (the token's node or the activity owning a scope),
    /// whose token is `owner`.
    Boundary(u64, String),
    /// The error event subprocesses of `scope`, whose subprocess node is the second (`None`
    /// for the process scope).
    EventSubProcesses(u64, Option<String>),
}

/// The places that may catch an error thrown from `token`, innermost first: the node itself
/// (unless the token is one iteration of a multi-instance, whose boundary belongs to the
/// whole activity), then for each enclosing scope its error event subprocesses and the
/// boundary of the activity that owns it.
fn error_catchers(instance: &Instance, token: &Token) -> Vec<ErrorCatcher> {
    let mut catchers = Vec::new();
    if !token.iteration {
        catchers.push(ErrorCatcher::Boundary(token.id, token.node.clone()));
    }
    for scope in instance.chain(token.scope) {
        let Some(s) = instance.scope(scope) else {
            continue;
        };
        let owner = s.owner.and_then(|o| instance.token(o));
        match (&s.kind, owner) {
            (ScopeKind::Process | ScopeKind::Called { .. }, _) => {
                catchers.push(ErrorCatcher::EventSubProcesses(scope, None))
            }
            (ScopeKind::SubProcess, Some(owner)) => catchers.push(ErrorCatcher::EventSubProcesses(
                scope,
                Some(owner.node.clone()),
            )),
            _ => {}
        }
        if let Some(owner) = owner {
            catchers.push(ErrorCatcher::Boundary(owner.id, owner.node.clone()));
        }
    }
    catchers
}

/// Ends `owner`'s activity and leaves by `boundary`, with the error's code and message in
/// the variables the boundary event names.
fn catch_at_boundary(
    instance: &mut Instance,
    owner: &Token,
    boundary: &Node,
    code: &str,
    message: &str,
) {
    if let NodeKind::BoundaryEvent {
        error_code_variable,
        error_message_variable,
        ..
    } = &boundary.kind
    {
        if let Some(name) = error_code_variable {
            instance.set_variable(owner.scope, name, Value::String(code.to_owned()), false);
        }
        if let Some(name) = error_message_variable {
            instance.set_variable(owner.scope, name, Value::String(message.to_owned()), false);
        }
    }
    instance.remove_token_tree(owner.id);
    instance.entered(&boundary.id);
    let id = instance.fresh_id();
    instance.tokens.push(Token {
        id,
        scope: owner.scope,
        node: boundary.id.clone(),
        state: TokenState::Leaving {
            flows: None,
            due: None,
        },
        iteration: false,
    });
}
