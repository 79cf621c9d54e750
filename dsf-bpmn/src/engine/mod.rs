//! The token engine: runs parsed processes against handlers bound by name, one step at a time.
//!
//! [`Engine::step`] moves one token one node on (or fires one due timer or job) and returns;
//! the caller may persist the [`Instance`] after any step, and continue from the persisted copy
//! after a restart. [`Engine::run`] steps until the instance waits or ends.

mod clock;
mod handler;
mod instance;
mod timer;

pub use clock::{Clock, SystemClock, VirtualClock};
pub use handler::{handler_name, FnHandler, Handler, HandlerContext, HandlerError, Registry};
pub use instance::{Instance, InstanceState, Waiting, PATH_LIMIT};
pub use timer::{parse_cycle, parse_date, parse_duration, Schedule};

use crate::expr::Expression;
use crate::model::*;
use crate::{Error, Result};
use instance::{Effect, Event, Join, Scope, ScopeKind, Subscription, Token, TokenState};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The instance variable a message's business key may match instead of the business key.
pub const ALTERNATIVE_BUSINESS_KEY: &str = "alternativeBusinessKey";

/// The token the next step moves: the first that arrives, leaves or runs a job now.
fn ready_token(instance: &Instance, now: i64) -> Option<&Token> {
    instance.tokens.iter().find(|t| match &t.state {
        TokenState::Arriving => true,
        TokenState::Leaving { due, .. } => due.is_none_or(|d| d <= now),
        TokenState::Job { due, .. } => *due <= now,
        TokenState::Waiting => false,
    })
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Something moved; step again.
    Progressed,
    /// Nothing can move until a message, a user task completion or a later time.
    Waiting,
    /// The instance has ended (see [`Instance::state`]).
    Finished,
}

/// A deployment: processes, their handlers, and the clock their timers run on.
pub struct Engine {
    definitions: Definitions,
    registry: Registry,
    clock: Arc<dyn Clock>,
    expressions: HashMap<String, Expression>,
}

impl Engine {
    /// Checks that every behaviour the processes name is bound in `registry`, that every
    /// expression parses and every literal timer is valid ISO 8601, and that every called
    /// process is part of the deployment.
    pub fn deploy(
        definitions: Definitions,
        registry: Registry,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine> {
        let mut expressions = HashMap::new();
        for process in &definitions.processes {
            let fail = |element: &str, message: String| Error::Deploy {
                process: process.id.clone(),
                element: element.to_owned(),
                message,
            };
            let compile = |expressions: &mut HashMap<String, Expression>,
                           element: &str,
                           text: &str|
             -> Result<()> {
                if !expressions.contains_key(text) {
                    let parsed =
                        Expression::parse(text).map_err(|e| fail(element, e.to_string()))?;
                    expressions.insert(text.to_owned(), parsed);
                }
                Ok(())
            };
            for flow in &process.flows {
                if let Some(condition) = &flow.condition {
                    compile(&mut expressions, &flow.id, condition)?;
                }
            }
            for node in &process.nodes {
                if let NodeKind::CallActivity { called_element } = &node.kind {
                    if !definitions
                        .processes
                        .iter()
                        .any(|p| &p.id == called_element)
                    {
                        return Err(fail(
                            &node.id,
                            format!(
                                "called process '{called_element}' is not part of this deployment"
                            ),
                        ));
                    }
                }
                for mapping in node.call_inputs.iter().chain(node.call_outputs.iter()) {
                    if let VariableMapping::One {
                        source_expression: Some(text),
                        ..
                    } = mapping
                    {
                        compile(&mut expressions, &node.id, text)?;
                    }
                }
                let behaviours = node
                    .behaviour
                    .iter()
                    .chain(node.execution_listeners.iter().map(|l| &l.behaviour))
                    .chain(node.task_listeners.iter().map(|l| &l.behaviour));
                for behaviour in behaviours {
                    let name = behaviour_name(behaviour);
                    if registry.get(name).is_none() {
                        return Err(fail(&node.id, format!("no handler bound to '{name}'")));
                    }
                }
                let fields = node
                    .fields
                    .iter()
                    .chain(
                        node.execution_listeners
                            .iter()
                            .flat_map(|l| l.fields.iter()),
                    )
                    .chain(node.task_listeners.iter().flat_map(|l| l.fields.iter()));
                for field in fields {
                    if let FieldValue::Expression(text) = &field.value {
                        compile(&mut expressions, &node.id, text)?;
                    }
                }
                for parameter in node.inputs.iter().chain(node.outputs.iter()) {
                    compile(&mut expressions, &node.id, &parameter.value)?;
                }
                if let Some(mi) = &node.multi_instance {
                    for text in [
                        &mi.collection,
                        &mi.loop_cardinality,
                        &mi.completion_condition,
                    ]
                    .into_iter()
                    .flatten()
                    {
                        compile(&mut expressions, &node.id, text)?;
                    }
                }
                if let Some(Trigger::Conditional { condition, .. }) = trigger_of(&node.kind) {
                    compile(&mut expressions, &node.id, condition)?;
                }
                if let Some(Trigger::Timer(timer)) = trigger_of(&node.kind) {
                    let text = match timer {
                        Timer::Duration(t) | Timer::Date(t) | Timer::Cycle(t) => t,
                    };
                    compile(&mut expressions, &node.id, text)?;
                    if let Some(literal) = expressions.get(text).filter(|e| e.is_literal()) {
                        schedule(timer, literal.source(), 0).map_err(|m| fail(&node.id, m))?;
                    }
                }
            }
        }
        Ok(Engine {
            definitions,
            registry,
            clock,
            expressions,
        })
    }

    pub fn definitions(&self) -> &Definitions {
        &self.definitions
    }

    fn process(&self, id: &str) -> Result<&Process> {
        self.definitions
            .processes
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| Error::NoMatch(format!("no process '{id}' is deployed")))
    }

    /// A random (v4) UUID: unique across deployments, engines and restarts, so that a
    /// caller may key stored instances by it.
    fn instance_id(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// The schedules of the processes' timer start events with literal timers, computed from
    /// `now`: the caller starts an instance with [`Engine::start`] whenever one is due.
    pub fn timer_starts(&self, now: i64) -> Result<Vec<(String, Schedule)>> {
        let mut out = Vec::new();
        for process in &self.definitions.processes {
            for start in process.nodes.iter().filter(|n| n.parent.is_none()) {
                let NodeKind::StartEvent(Trigger::Timer(timer)) = &start.kind else {
                    continue;
                };
                let text = match timer {
                    Timer::Duration(t) | Timer::Date(t) | Timer::Cycle(t) => t,
                };
                let schedule = schedule(timer, text, now).map_err(|message| Error::Deploy {
                    process: process.id.clone(),
                    element: start.id.clone(),
                    message,
                })?;
                out.push((process.id.clone(), schedule));
            }
        }
        Ok(out)
    }

    /// A new instance of `process_id` at its none start event, or at its timer start event
    /// (the caller keeps the timer's schedule and starts instances when it is due).
    pub fn start(
        &self,
        process_id: &str,
        business_key: Option<&str>,
        variables: Map<String, Value>,
    ) -> Result<Instance> {
        let process = self.process(process_id)?;
        let start = process
            .nodes
            .iter()
            .find(|n| {
                n.parent.is_none()
                    && matches!(
                        n.kind,
                        NodeKind::StartEvent(Trigger::None | Trigger::Timer(_))
                    )
            })
            .ok_or_else(|| {
                Error::NoMatch(format!(
                    "process '{process_id}' has no none or timer start event"
                ))
            })?;
        self.new_instance(process, &start.id, business_key, variables)
    }

    fn new_instance(
        &self,
        process: &Process,
        start: &str,
        business_key: Option<&str>,
        variables: Map<String, Value>,
    ) -> Result<Instance> {
        let mut instance = Instance::new(
            self.instance_id(),
            &process.id,
            business_key.map(str::to_owned),
            variables,
        );
        let id = instance.fresh_id();
        instance.tokens.push(Token {
            id,
            scope: 0,
            node: start.to_owned(),
            state: TokenState::Arriving,
            iteration: false,
        });
        self.arm_event_subprocesses(process, &mut instance, 0, None)?;
        Ok(instance)
    }

    /// Delivers a message by name. To a waiting instance when one of `instances` has this
    /// business key (or this [`ALTERNATIVE_BUSINESS_KEY`] variable) and a token waiting for the message (with this correlation key, when one
    /// is given); otherwise it starts a new instance at a message start event of that name,
    /// returned as `Ok(Some(instance))`. Message variables are set on the instance. A message
    /// nobody takes is [`Error::NoMatch`].
    pub fn correlate(
        &self,
        instances: &mut [Instance],
        message: &str,
        business_key: Option<&str>,
        correlation_key: Option<&str>,
        variables: Map<String, Value>,
    ) -> Result<Option<Instance>> {
        for instance in instances.iter_mut().filter(|i| !i.is_finished()) {
            if let Some(key) = business_key {
                // The Java BPE also matches an instance's `alternativeBusinessKey` variable
                // (processes that answer under a key of their own).
                let alternative = instance
                    .variable(ALTERNATIVE_BUSINESS_KEY)
                    .and_then(Value::as_str);
                if instance.business_key.as_deref() != Some(key) && alternative != Some(key) {
                    continue;
                }
            }
            if self.deliver(instance, message, correlation_key, &variables)? {
                return Ok(None);
            }
        }
        for process in &self.definitions.processes {
            let start = process.nodes.iter().find(|n| {
                n.parent.is_none()
                    && matches!(&n.kind, NodeKind::StartEvent(Trigger::Message(Some(id)))
                        if self.definitions.messages.get(id).is_some_and(|m| m.name == message))
            });
            if let Some(start) = start {
                return self
                    .new_instance(process, &start.id, business_key, variables)
                    .map(Some);
            }
        }
        Err(Error::NoMatch(format!(
            "message '{message}' (business key {}, correlation key {}) matches no waiting instance and no start event",
            business_key.unwrap_or("none"),
            correlation_key.unwrap_or("none")
        )))
    }

    /// Delivers a message to one instance; false if it does not wait for it.
    pub fn deliver(
        &self,
        instance: &mut Instance,
        message: &str,
        correlation_key: Option<&str>,
        variables: &Map<String, Value>,
    ) -> Result<bool> {
        let found = instance.subscriptions.iter().find(|s| match &s.event {
            Event::Message {
                name,
                correlation_key: waiting,
            } => {
                name == message
                    && (correlation_key.is_none() || waiting.as_deref() == correlation_key)
            }
            _ => false,
        });
        let Some(subscription) = found.cloned() else {
            return Ok(false);
        };
        for (k, v) in variables {
            instance.set_variable(0, k, v.clone(), false);
        }
        self.fire(instance, subscription)?;
        Ok(true)
    }

    /// Completes the open user task at `node`, setting `variables` first.
    pub fn complete_user_task(
        &self,
        instance: &mut Instance,
        node: &str,
        variables: &Map<String, Value>,
    ) -> Result<()> {
        let subscription = instance
            .subscriptions
            .iter()
            .find(|s| s.node == node && s.event == Event::UserTask)
            .cloned()
            .ok_or_else(|| {
                Error::NoMatch(format!(
                    "no open user task '{node}' in instance {}",
                    instance.id
                ))
            })?;
        let scope = instance.token(subscription.token).map_or(0, |t| t.scope);
        for (k, v) in variables {
            instance.set_variable(scope, k, v.clone(), false);
        }
        self.fire(instance, subscription)
    }

    /// Steps until the instance waits or ends.
    pub async fn run(&self, instance: &mut Instance) -> Result<Step> {
        loop {
            match self.step(instance).await? {
                Step::Progressed => continue,
                other => return Ok(other),
            }
        }
    }

    /// The node whose behaviour the next [`Engine::step`] runs, if it runs one: a token
    /// entering a node, or a due job. A caller that must persist the instance before some
    /// behaviours (the BPE before a message send) checks this before stepping.
    pub fn next_node<'i>(&self, instance: &'i Instance) -> Option<&'i str> {
        if instance.is_finished() {
            return None;
        }
        let ready = ready_token(instance, self.clock.now())?;
        match ready.state {
            TokenState::Arriving | TokenState::Job { .. } => Some(ready.node.as_str()),
            _ => None,
        }
    }

    /// Moves one token one node on, or runs one due job, or fires one due timer.
    /// A runtime error (an expression failing, no gateway flow matching) also ends the
    /// instance: its state becomes [`InstanceState::Failed`] with the element and the reason,
    /// never left `Running` with a token that cannot move.
    pub async fn step(&self, instance: &mut Instance) -> Result<Step> {
        let result = self.step_once(instance).await;
        if let Err(error @ Error::Runtime { element, .. }) = &result {
            if !instance.is_finished() {
                instance.state = InstanceState::Failed {
                    element: element.clone(),
                    reason: error.to_string(),
                };
            }
        }
        result
    }

    async fn step_once(&self, instance: &mut Instance) -> Result<Step> {
        if instance.is_finished() {
            return Ok(Step::Finished);
        }
        if !instance.changed.is_empty() && self.fire_conditions(instance)? {
            return Ok(if instance.is_finished() {
                Step::Finished
            } else {
                Step::Progressed
            });
        }
        let now = self.clock.now();
        if let Some(token) = ready_token(instance, now).cloned() {
            let process = self.process(instance.process_of(token.scope))?;
            match token.state.clone() {
                TokenState::Arriving => self.arrive(process, instance, token).await?,
                TokenState::Job {
                    retries_left,
                    interval,
                    ..
                } => {
                    self.execute(process, instance, token, Some((retries_left, interval)))
                        .await?
                }
                TokenState::Leaving { flows, .. } => {
                    self.leave(process, instance, token, flows).await?
                }
                TokenState::Waiting => {}
            }
            return Ok(if instance.is_finished() {
                Step::Finished
            } else {
                Step::Progressed
            });
        }
        let due = instance
            .subscriptions
            .iter()
            .find(|s| matches!(s.event, Event::Timer { due, .. } if due <= now))
            .cloned();
        if let Some(subscription) = due {
            self.fire(instance, subscription)?;
            return Ok(if instance.is_finished() {
                Step::Finished
            } else {
                Step::Progressed
            });
        }
        Ok(Step::Waiting)
    }

    /// The variables `mappings` (`camunda:in` / `camunda:out`) take from `scope`.
    fn map_variables(
        &self,
        instance: &Instance,
        scope: u64,
        mappings: &[VariableMapping],
        element: &str,
    ) -> Result<Vec<(String, Value)>> {
        let visible = instance.visible(scope);
        let mut out = Vec::new();
        for mapping in mappings {
            match mapping {
                VariableMapping::All => {
                    out.extend(visible.iter().map(|(k, v)| (k.clone(), v.clone())))
                }
                VariableMapping::One {
                    source,
                    source_expression,
                    target,
                } => {
                    let value = match (source, source_expression) {
                        (Some(source), _) => visible.get(source).cloned().unwrap_or(Value::Null),
                        (None, Some(expression)) => {
                            self.evaluate(instance, scope, element, expression)?
                        }
                        (None, None) => Value::Null,
                    };
                    out.push((target.clone(), value));
                }
            }
        }
        Ok(out)
    }

    /// Fires the conditional events whose condition holds now that variables changed; true if
    /// any fired.
    fn fire_conditions(&self, instance: &mut Instance) -> Result<bool> {
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

    fn expression(&self, text: &str) -> Result<std::borrow::Cow<'_, Expression>> {
        match self.expressions.get(text) {
            Some(e) => Ok(std::borrow::Cow::Borrowed(e)),
            None => Expression::parse(text)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| Error::NoMatch(e.to_string())),
        }
    }

    fn evaluate(
        &self,
        instance: &Instance,
        scope: u64,
        element: &str,
        text: &str,
    ) -> Result<Value> {
        let visible = instance.visible(scope);
        self.expression(text)?
            .evaluate(&visible)
            .map_err(|e| runtime(instance, element, e.to_string()))
    }

    fn condition(
        &self,
        instance: &Instance,
        scope: u64,
        element: &str,
        text: &str,
    ) -> Result<bool> {
        let visible = instance.visible(scope);
        self.expression(text)?
            .evaluate_bool(&visible)
            .map_err(|e| runtime(instance, element, e.to_string()))
    }

    /// A token enters its node.
    async fn arrive(&self, process: &Process, instance: &mut Instance, token: Token) -> Result<()> {
        let node = node(process, &token.node)?;
        instance.entered(&node.id);
        if let (Some(mi), false) = (&node.multi_instance, token.iteration) {
            return self.start_multi_instance(process, instance, node, mi, token);
        }
        for parameter in &node.inputs {
            let value = self.evaluate(instance, token.scope, &node.id, &parameter.value)?;
            instance.set_variable(token.scope, &parameter.name, value, true);
        }
        self.listeners(instance, node, &token, "start").await?;
        if node.async_before {
            let (retries_left, interval) = retry_policy(node);
            if let Some(t) = instance.token_mut(token.id) {
                t.state = TokenState::Job {
                    due: self.clock.now(),
                    retries_left,
                    interval,
                };
            }
            return Ok(());
        }
        self.execute(process, instance, token, None).await
    }

    /// Runs what a node does once entered: its handler, its wait, its gateway decision.
    async fn execute(
        &self,
        process: &Process,
        instance: &mut Instance,
        token: Token,
        job: Option<(Option<u32>, i64)>,
    ) -> Result<()> {
        let node = node(process, &token.node)?;
        match &node.kind {
            NodeKind::StartEvent(_) | NodeKind::IntermediateThrowEvent(Trigger::None) => {
                self.set_leaving(instance, &token, None)
            }
            NodeKind::ServiceTask
            | NodeKind::SendTask
            | NodeKind::IntermediateThrowEvent(Trigger::Message(_))
            | NodeKind::EndEvent(Trigger::Message(_)) => {
                if let Some(behaviour) = &node.behaviour {
                    match self
                        .call(instance, node, &token, behaviour, &node.fields, None)
                        .await
                    {
                        Ok(()) => {}
                        Err(HandlerError::Bpmn { code, message }) => {
                            return self.throw_error(instance, &token, &code, &message)
                        }
                        Err(HandlerError::Failed(reason)) => {
                            return self.handler_failed(instance, node, &token, job, reason)
                        }
                    }
                }
                if matches!(node.kind, NodeKind::EndEvent(_)) {
                    self.consume(process, instance, token.id)
                } else {
                    self.set_leaving(instance, &token, None)
                }
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
            NodeKind::ReceiveTask { message } => {
                let event = self.event_of(
                    instance,
                    token.scope,
                    node,
                    &Trigger::Message(message.clone()),
                )?;
                self.wait(
                    process,
                    instance,
                    &token,
                    vec![(node.id.clone(), event, Effect::Complete)],
                )
            }
            NodeKind::UserTask { .. } => {
                for listener in node.task_listeners.iter().filter(|l| l.event == "create") {
                    self.call(
                        instance,
                        node,
                        &token,
                        &listener.behaviour,
                        &listener.fields,
                        Some("create"),
                    )
                    .await
                    .map_err(|e| runtime(instance, &node.id, e.to_string()))?;
                }
                self.wait(
                    process,
                    instance,
                    &token,
                    vec![(node.id.clone(), Event::UserTask, Effect::Complete)],
                )
            }
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
                    let target = self::node(process, &flow.target)?;
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
    fn open_scope(
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

    fn start_multi_instance(
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

    fn start_iteration(
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

    fn adjust_active(&self, instance: &mut Instance, body: u64, delta: i64) {
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

    /// Calls a bound handler with the token's visible variables and writes back what it set.
    async fn call(
        &self,
        instance: &mut Instance,
        node: &Node,
        token: &Token,
        behaviour: &Behaviour,
        fields: &[Field],
        listener_event: Option<&str>,
    ) -> std::result::Result<(), HandlerError> {
        let name = behaviour_name(behaviour);
        let handler = self
            .registry
            .get(name)
            .ok_or_else(|| HandlerError::Failed(format!("no handler bound to '{name}'")))?;
        let visible = instance.visible(token.scope);
        let mut values = Map::new();
        for field in fields {
            let value = match &field.value {
                FieldValue::String(s) => Value::String(s.clone()),
                FieldValue::Expression(text) => self
                    .expression(text)
                    .map_err(|e| HandlerError::Failed(e.to_string()))?
                    .evaluate(&visible)
                    .map_err(|e| HandlerError::Failed(e.to_string()))?,
            };
            values.insert(field.name.clone(), value);
        }
        let mut context = HandlerContext {
            process_id: &instance.process_id,
            instance_id: &instance.id,
            business_key: instance.business_key.as_deref(),
            element_id: &node.id,
            listener_event,
            fields: &values,
            visible: &visible,
            writes: Vec::new(),
        };
        let result = handler.execute(&mut context).await;
        let writes = std::mem::take(&mut context.writes);
        for (name, value, local) in writes {
            instance.set_variable(token.scope, &name, value, local);
        }
        result
    }

    async fn listeners(
        &self,
        instance: &mut Instance,
        node: &Node,
        token: &Token,
        event: &str,
    ) -> Result<()> {
        for listener in node.execution_listeners.iter().filter(|l| l.event == event) {
            self.call(
                instance,
                node,
                token,
                &listener.behaviour,
                &listener.fields,
                Some(event),
            )
            .await
            .map_err(|e| runtime(instance, &node.id, format!("{event} listener: {e}")))?;
        }
        Ok(())
    }

    fn handler_failed(
        &self,
        instance: &mut Instance,
        node: &Node,
        token: &Token,
        job: Option<(Option<u32>, i64)>,
        reason: String,
    ) -> Result<()> {
        if let Some((Some(retries_left), interval)) = job {
            if retries_left > 0 {
                if let Some(t) = instance.token_mut(token.id) {
                    t.state = TokenState::Job {
                        due: self.clock.now() + interval,
                        retries_left: Some(retries_left - 1),
                        interval,
                    };
                }
                return Ok(());
            }
        }
        instance.state = InstanceState::Failed {
            element: node.id.clone(),
            reason,
        };
        Ok(())
    }

    fn event_of(
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

    fn signal_name(&self, instance: &Instance, node: &Node, id: &str) -> Result<String> {
        self.definitions
            .signals
            .get(id)
            .map(|s| s.name.clone())
            .ok_or_else(|| runtime(instance, &node.id, format!("signal '{id}' is not defined")))
    }

    /// Fires every subscription of `instance` waiting for the signal `name`.
    fn hear_signal(&self, instance: &mut Instance, name: &str) -> Result<usize> {
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
    fn wait(
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
    fn fire(&self, instance: &mut Instance, subscription: Subscription) -> Result<()> {
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

    fn set_leaving(
        &self,
        instance: &mut Instance,
        token: &Token,
        flows: Option<Vec<String>>,
    ) -> Result<()> {
        let process = self.process(instance.process_of(token.scope))?;
        let node = node(process, &token.node)?;
        let due = node.async_after.then(|| self.clock.now());
        if let Some(t) = instance.token_mut(token.id) {
            t.state = TokenState::Leaving { flows, due };
        }
        Ok(())
    }

    /// The token leaves its node by the chosen or the node's outgoing flows.
    async fn leave(
        &self,
        process: &Process,
        instance: &mut Instance,
        token: Token,
        flows: Option<Vec<String>>,
    ) -> Result<()> {
        let node = node(process, &token.node)?;
        for parameter in &node.outputs {
            let value = self.evaluate(instance, token.scope, &node.id, &parameter.value)?;
            instance.set_variable(token.scope, &parameter.name, value, false);
        }
        self.listeners(instance, node, &token, "end").await?;
        if token.iteration {
            // One iteration of a multi-instance activity is done.
            return self.consume(process, instance, token.id);
        }
        let flows = match flows {
            Some(flows) => flows,
            None => {
                let mut chosen = self.true_flows(process, instance, node, token.scope)?;
                if chosen.is_empty() {
                    chosen.extend(node.default_flow.clone());
                }
                chosen
            }
        };
        if flows.is_empty() {
            return self.consume(process, instance, token.id);
        }
        for (i, flow_id) in flows.iter().enumerate() {
            let flow = process
                .flows
                .iter()
                .find(|f| &f.id == flow_id)
                .ok_or_else(|| {
                    runtime(instance, &node.id, format!("no sequence flow '{flow_id}'"))
                })?;
            if i == 0 {
                if let Some(t) = instance.token_mut(token.id) {
                    t.node = flow.target.clone();
                    t.state = TokenState::Arriving;
                }
            } else {
                let id = instance.fresh_id();
                instance.tokens.push(Token {
                    id,
                    scope: token.scope,
                    node: flow.target.clone(),
                    state: TokenState::Arriving,
                    iteration: false,
                });
            }
        }
        Ok(())
    }

    /// The outgoing flows of `node`, other than its default, that have no condition or whose
    /// condition holds.
    fn true_flows(
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

    fn join(&self, instance: &mut Instance, token: Token, incoming: usize) -> Result<()> {
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
    fn inclusive_join_ready(&self, process: &Process, instance: &Instance, token: &Token) -> bool {
        let target = &token.node;
        instance
            .tokens
            .iter()
            .filter(|t| t.id != token.id && t.scope == token.scope && &t.node != target)
            .all(|t| !reaches(process, &t.node, target))
    }

    /// A token ends; when its scope has no tokens left, the scope completes.
    fn consume(&self, process: &Process, instance: &mut Instance, token: u64) -> Result<()> {
        let scope = instance.token(token).map_or(0, |t| t.scope);
        instance.remove_token_tree(token);
        self.complete_if_empty(process, instance, scope)
    }

    fn complete_if_empty(
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

    fn finish_scope(&self, instance: &mut Instance, scope: u64) -> Result<()> {
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

    fn iteration_done(&self, instance: &mut Instance, body: u64) -> Result<()> {
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

    fn terminate(&self, process: &Process, instance: &mut Instance, scope: u64) -> Result<()> {
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
    fn arm_event_subprocesses(
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
    fn start_event_subprocess(
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

    /// A BPMN error from `token`'s node: caught by the nearest error boundary event (on the
    /// node itself, then on each enclosing subprocess or multi-instance activity) whose error
    /// code matches or that catches all; uncaught, the instance fails.
    fn throw_error(
        &self,
        instance: &mut Instance,
        token: &Token,
        code: &str,
        message: &str,
    ) -> Result<()> {
        let catches = |process: &'_ Process, node_id: &str| -> Option<Node> {
            process
                .nodes
                .iter()
                .find(|b| match &b.kind {
                    NodeKind::BoundaryEvent {
                        attached_to,
                        trigger: Trigger::Error(error),
                        ..
                    } if attached_to == node_id => match error {
                        None => true,
                        Some(id) => {
                            self.definitions
                                .errors
                                .get(id)
                                .and_then(|e| e.code.as_deref())
                                == Some(code)
                        }
                    },
                    _ => false,
                })
                .cloned()
        };
        // Candidates, innermost first: the node itself (when not one iteration of a
        // multi-instance, whose boundary belongs to the whole activity), then for each
        // enclosing scope its error event subprocesses and the boundary of its activity.
        enum Candidate {
            Boundary(u64, String),
            EventSubProcesses(u64, Option<String>),
        }
        let mut candidates: Vec<Candidate> = Vec::new();
        if !token.iteration {
            candidates.push(Candidate::Boundary(token.id, token.node.clone()));
        }
        for scope in instance.chain(token.scope) {
            let Some(s) = instance.scope(scope) else {
                continue;
            };
            let owner = s.owner.and_then(|o| instance.token(o));
            match (&s.kind, owner) {
                (ScopeKind::Process | ScopeKind::Called { .. }, _) => {
                    candidates.push(Candidate::EventSubProcesses(scope, None))
                }
                (ScopeKind::SubProcess, Some(owner)) => candidates.push(
                    Candidate::EventSubProcesses(scope, Some(owner.node.clone())),
                ),
                _ => {}
            }
            if let Some(owner) = owner {
                candidates.push(Candidate::Boundary(owner.id, owner.node.clone()));
            }
        }
        for candidate in candidates {
            let (owner, node_id) = match candidate {
                Candidate::Boundary(owner, node_id) => (Some(owner), node_id),
                Candidate::EventSubProcesses(scope, scope_node) => {
                    let process = self.process(instance.process_of(scope))?;
                    let start = process.nodes.iter().find(|start| {
                        let in_scope = start
                            .parent
                            .as_deref()
                            .and_then(|p| process.node(p))
                            .is_some_and(|sub| {
                                sub.kind
                                    == (NodeKind::SubProcess {
                                        triggered_by_event: true,
                                    })
                                    && sub.parent == scope_node
                            });
                        in_scope
                            && match &start.kind {
                                NodeKind::StartEvent(Trigger::Error(None)) => true,
                                NodeKind::StartEvent(Trigger::Error(Some(id))) => {
                                    self.definitions
                                        .errors
                                        .get(id)
                                        .and_then(|e| e.code.as_deref())
                                        == Some(code)
                                }
                                _ => false,
                            }
                    });
                    if let Some(start) = start {
                        return self
                            .start_event_subprocess(process, instance, scope, &start.id, true);
                    }
                    continue;
                }
            };
            let Some(owner) = owner.and_then(|o| instance.token(o).cloned()) else {
                continue;
            };
            let Some(boundary) = catches(self.process(instance.process_of(owner.scope))?, &node_id)
            else {
                continue;
            };
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
                    instance.set_variable(
                        owner.scope,
                        name,
                        Value::String(message.to_owned()),
                        false,
                    );
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
            return Ok(());
        }
        instance.state = InstanceState::Failed {
            element: token.node.clone(),
            reason: format!("unhandled BPMN error '{code}': {message}"),
        };
        Ok(())
    }
}

/// After a non-interrupting event fired: a timer with repetitions left is due again one
/// interval later, a one-off timer is done, message and signal waits go on listening.
fn rearm(instance: &mut Instance, fired: &Subscription) {
    let next = match fired.event {
        Event::Timer {
            due,
            every: Some(every),
            repeats,
        } if repeats != Some(0) => Some(Event::Timer {
            due: due + every,
            every: Some(every),
            repeats: repeats.map(|r| r - 1),
        }),
        Event::Timer { .. } => None,
        ref other => Some(other.clone()),
    };
    match (
        next,
        instance.subscriptions.iter_mut().find(|s| s.id == fired.id),
    ) {
        (Some(event), Some(s)) => s.event = event,
        _ => instance.subscriptions.retain(|s| s.id != fired.id),
    }
}

fn node<'a>(process: &'a Process, id: &str) -> Result<&'a Node> {
    process.node(id).ok_or_else(|| Error::Deploy {
        process: process.id.clone(),
        element: id.to_owned(),
        message: "no such element".into(),
    })
}

fn runtime(instance: &Instance, element: &str, message: String) -> Error {
    Error::Runtime {
        instance: instance.id.clone(),
        element: element.to_owned(),
        message,
    }
}

/// The name a behaviour is bound by.
fn behaviour_name(behaviour: &Behaviour) -> &str {
    match behaviour {
        Behaviour::Class(name)
        | Behaviour::Expression(name)
        | Behaviour::DelegateExpression(name) => name,
    }
}

fn trigger_of(kind: &NodeKind) -> Option<&Trigger> {
    match kind {
        NodeKind::StartEvent(t)
        | NodeKind::EndEvent(t)
        | NodeKind::IntermediateCatchEvent(t)
        | NodeKind::IntermediateThrowEvent(t) => Some(t),
        NodeKind::BoundaryEvent { trigger, .. } => Some(trigger),
        _ => None,
    }
}

fn retry_policy(node: &Node) -> (Option<u32>, i64) {
    match node
        .retry_cycle
        .as_deref()
        .and_then(|c| parse_cycle(c, 0).ok())
    {
        Some(schedule) => (
            Some(schedule.repeats.map_or(u32::MAX, |r| r + 1)),
            schedule.every.unwrap_or(0),
        ),
        None => (None, 0),
    }
}

fn schedule(timer: &Timer, text: &str, now: i64) -> std::result::Result<Schedule, String> {
    match timer {
        Timer::Duration(_) => Ok(Schedule {
            first: now + parse_duration(text)?,
            every: None,
            repeats: Some(0),
        }),
        Timer::Date(_) => Ok(Schedule {
            first: parse_date(text)?,
            every: None,
            repeats: Some(0),
        }),
        Timer::Cycle(_) => parse_cycle(text, now),
    }
}

/// Whether a path of sequence flows leads from `from` to `to`.
fn reaches(process: &Process, from: &str, to: &str) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(current) = stack.pop() {
        if current == to {
            return true;
        }
        if seen.insert(current.clone()) {
            stack.extend(process.outgoing(&current).map(|f| f.target.clone()));
        }
    }
    false
}
