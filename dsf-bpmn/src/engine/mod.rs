//! The token engine: runs parsed processes against handlers bound by name, one step at a time.
//!
//! [`Engine::step`] moves one token one node on (or fires one due timer or job) and returns;
//! the caller may persist the [`Instance`] after any step, and continue from the persisted copy
//! after a restart. [`Engine::run`] steps until the instance waits or ends.

mod activities;
mod clock;
mod events;
mod gateways;
mod handler;
mod instance;
mod scopes;
mod timer;

pub use clock::{Clock, SystemClock, VirtualClock};
pub use handler::{
    handler_name, ElementHandler, FnHandler, HandlerContext, HandlerError, Registry,
};
pub use instance::{Instance, InstanceState, Waiting, PATH_LIMIT};
pub use timer::{parse_cycle, parse_date, parse_duration, Schedule};

use crate::expr::{ExprError, Expression};
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
#[non_exhaustive]
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
                    let name = behaviour.text();
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

    /// The deployed BPMN file.
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

    /// The parsed expression `text`: parsed at deployment for the texts a process holds,
    /// parsed here for any other.
    fn expression(
        &self,
        text: &str,
    ) -> std::result::Result<std::borrow::Cow<'_, Expression>, ExprError> {
        match self.expressions.get(text) {
            Some(e) => Ok(std::borrow::Cow::Borrowed(e)),
            None => Expression::parse(text).map(std::borrow::Cow::Owned),
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
        self.expression(text)
            .and_then(|expression| expression.evaluate(&visible))
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
        self.expression(text)
            .and_then(|expression| expression.evaluate_bool(&visible))
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

    /// Runs what a node does once entered, by element family: [`activities`], [`events`],
    /// [`gateways`], [`scopes`].
    async fn execute(
        &self,
        process: &Process,
        instance: &mut Instance,
        token: Token,
        job: Option<(Option<u32>, i64)>,
    ) -> Result<()> {
        let node = node(process, &token.node)?;
        match &node.kind {
            NodeKind::ServiceTask
            | NodeKind::SendTask
            | NodeKind::ReceiveTask { .. }
            | NodeKind::UserTask { .. }
            | NodeKind::IntermediateThrowEvent(Trigger::Message(_))
            | NodeKind::EndEvent(Trigger::Message(_)) => {
                self.execute_activity(process, instance, token, node, job)
                    .await
            }
            NodeKind::StartEvent(_)
            | NodeKind::IntermediateThrowEvent(_)
            | NodeKind::IntermediateCatchEvent(_)
            | NodeKind::EndEvent(_) => self.execute_event(process, instance, token, node),
            NodeKind::ExclusiveGateway
            | NodeKind::ParallelGateway
            | NodeKind::InclusiveGateway
            | NodeKind::EventBasedGateway => self.execute_gateway(process, instance, token, node),
            NodeKind::SubProcess { .. } | NodeKind::CallActivity { .. } => {
                self.enter_scope(process, instance, token, node)
            }
            other => Err(runtime(
                instance,
                &node.id,
                format!("{other:?} is not executed by this engine"),
            )),
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
