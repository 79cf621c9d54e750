//! What a BPMN file says, in the terms the engine executes.

use std::collections::BTreeMap;

/// A BPMN file: its processes and the messages, errors and signals they refer to by id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Definitions {
    /// The processes, in file order.
    pub processes: Vec<Process>,
    /// By id.
    pub messages: BTreeMap<String, Message>,
    /// By id.
    pub errors: BTreeMap<String, ErrorDefinition>,
    /// By id.
    pub signals: BTreeMap<String, Signal>,
}

/// A `bpmn:message`.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The message's id.
    pub id: String,
    /// Correlation uses the name, not the id. Empty when the file gives none (allowed for a
    /// message no event references).
    pub name: String,
}

/// A `bpmn:error`.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorDefinition {
    /// The error's id.
    pub id: String,
    /// The error's name.
    pub name: Option<String>,
    /// `errorCode`: what a BPMN error thrown by code is matched against.
    pub code: Option<String>,
}

/// A `bpmn:signal`.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// The signal's id.
    pub id: String,
    /// The signal's name, which throwing and catching events share.
    pub name: String,
}

/// A `bpmn:process`.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    /// The process id, which Tasks' `instantiatesCanonical` names.
    pub id: String,
    /// `isExecutable`.
    pub executable: bool,
    /// `camunda:versionTag`.
    pub version_tag: Option<String>,
    /// All flow nodes, including those inside subprocesses (see [`Node::parent`]).
    pub nodes: Vec<Node>,
    /// All sequence flows, including those inside subprocesses.
    pub flows: Vec<SequenceFlow>,
}

impl Process {
    /// The flow node with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The sequence flows leaving node `id`.
    pub fn outgoing<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a SequenceFlow> + 'a {
        self.flows.iter().filter(move |f| f.source == id)
    }

    /// The sequence flows entering node `id`.
    pub fn incoming<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a SequenceFlow> + 'a {
        self.flows.iter().filter(move |f| f.target == id)
    }
}

/// A `bpmn:sequenceFlow`.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceFlow {
    /// The flow's id.
    pub id: String,
    /// The id of the node it leaves.
    pub source: String,
    /// The id of the node it enters.
    pub target: String,
    /// `${…}` expression of a `conditionExpression`.
    pub condition: Option<String>,
    /// The line in the file, for messages.
    pub line: u64,
}

/// A timer event's definition, its expression as written (`${…}` allowed).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Timer {
    /// `timeDuration`: an ISO 8601 duration (`PT20S`).
    Duration(String),
    /// `timeDate`: an ISO 8601 date-time.
    Date(String),
    /// `timeCycle`: a repeating interval such as `R3/PT10M`.
    Cycle(String),
}

/// What an event waits for or throws.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Trigger {
    /// No event definition: a plain start, end or intermediate event.
    None,
    /// A message id (see [`Definitions::messages`]); `None` for a throwing message event that
    /// names its message through a field instead.
    Message(Option<String>),
    /// A timer.
    Timer(Timer),
    /// A signal id (see [`Definitions::signals`]).
    Signal(String),
    /// An error id; `None` catches every error.
    Error(Option<String>),
    /// A condition, checked when variables change.
    Conditional {
        /// The `${…}` expression.
        condition: String,
        /// `camunda:variableName`: only changes of this variable are checked.
        variable_name: Option<String>,
        /// `camunda:variableEvents`: only these kinds of change are checked (`create, update`).
        variable_events: Option<String>,
    },
    /// A terminate end event: ends the whole instance.
    Terminate,
}

/// What a flow node is, with what only that kind has.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NodeKind {
    /// A start event and what starts it.
    StartEvent(Trigger),
    /// An end event and what it throws.
    EndEvent(Trigger),
    /// An intermediate event that waits.
    IntermediateCatchEvent(Trigger),
    /// An intermediate event that throws.
    IntermediateThrowEvent(Trigger),
    /// An event attached to an activity.
    BoundaryEvent {
        /// The activity's id.
        attached_to: String,
        /// Whether it interrupts the activity (`cancelActivity`, true unless set to false).
        cancel_activity: bool,
        /// What it catches.
        trigger: Trigger,
        /// `camunda:errorCodeVariable`: where a caught error's code goes.
        error_code_variable: Option<String>,
        /// `camunda:errorMessageVariable`: where a caught error's message goes.
        error_message_variable: Option<String>,
    },
    /// A service task.
    ServiceTask,
    /// A send task.
    SendTask,
    /// A receive task.
    ReceiveTask {
        /// The message id it waits for.
        message: Option<String>,
    },
    /// A user task.
    UserTask {
        /// `camunda:formKey`: the Questionnaire to answer.
        form_key: Option<String>,
    },
    /// An exclusive gateway.
    ExclusiveGateway,
    /// An inclusive gateway.
    InclusiveGateway,
    /// A parallel gateway.
    ParallelGateway,
    /// An event-based gateway.
    EventBasedGateway,
    /// A subprocess.
    SubProcess {
        /// An event subprocess (`triggeredByEvent`).
        triggered_by_event: bool,
    },
    /// A call activity.
    CallActivity {
        /// The id of the process it calls.
        called_element: String,
    },
}

/// How a task, listener or message event calls out to code.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Behaviour {
    /// `camunda:class`
    Class(String),
    /// `camunda:expression`
    Expression(String),
    /// `camunda:delegateExpression`
    DelegateExpression(String),
}

impl Behaviour {
    /// The class name or expression, as written in the file.
    pub fn text(&self) -> &str {
        match self {
            Behaviour::Class(text)
            | Behaviour::Expression(text)
            | Behaviour::DelegateExpression(text) => text,
        }
    }
}

/// A `camunda:field`'s value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FieldValue {
    /// `camunda:string` or `stringValue`: text as written.
    String(String),
    /// `camunda:expression`: evaluated where the behaviour runs.
    Expression(String),
}

/// `camunda:field`: a value injected into the behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The field's name, as the code reads it.
    pub name: String,
    /// Its value.
    pub value: FieldValue,
}

/// `camunda:executionListener` or `camunda:taskListener`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// When it runs: `start`, `end` or `take` (execution), `create`, `complete` … (task).
    pub event: String,
    /// What it calls.
    pub behaviour: Behaviour,
    /// Its `camunda:field`s.
    pub fields: Vec<Field>,
}

/// `camunda:inputParameter` / `camunda:outputParameter` (text values; `${…}` evaluated).
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    /// The variable's name.
    pub name: String,
    /// Its value, `${…}` evaluated.
    pub value: String,
}

/// `camunda:in` / `camunda:out` of a call activity: which variables cross into the called
/// process and back.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum VariableMapping {
    /// `variables="all"`.
    All,
    /// `source` (a variable) or `sourceExpression` to `target`.
    One {
        /// The variable copied (`source`).
        source: Option<String>,
        /// An expression evaluated for the value (`sourceExpression`).
        source_expression: Option<String>,
        /// The variable it is copied to (`target`).
        target: String,
    },
}

/// `multiInstanceLoopCharacteristics`: an activity run once per element or a number of times.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiInstance {
    /// `isSequential`: one iteration after the other instead of all at once.
    pub sequential: bool,
    /// `camunda:collection`: the expression of the collection iterated.
    pub collection: Option<String>,
    /// `camunda:elementVariable`: the local variable holding each iteration's element.
    pub element_variable: Option<String>,
    /// `loopCardinality`: how many iterations, when there is no collection.
    pub loop_cardinality: Option<String>,
    /// `completionCondition`: ends the loop early when true.
    pub completion_condition: Option<String>,
    /// `camunda:asyncBefore`, `camunda:asyncAfter`, `camunda:exclusive` and
    /// `camunda:failedJobRetryTimeCycle` of the loop characteristics. Kept as written; the
    /// engine starts every iteration in the step that reaches the activity (a caller that
    /// persists per step sees the same states as with Camunda's per-iteration jobs), and
    /// retries come from the activity's own `failedJobRetryTimeCycle`.
    pub async_before: bool,
    /// See `async_before`.
    pub async_after: bool,
    /// See `async_before`.
    pub exclusive: bool,
    /// See `async_before`.
    pub retry_cycle: Option<String>,
}

/// A flow node: an event, activity or gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The node's id.
    pub id: String,
    /// The node's name, for people.
    pub name: Option<String>,
    /// What it is.
    pub kind: NodeKind,
    /// The enclosing subprocess, if any.
    pub parent: Option<String>,
    /// The line in the file, for messages.
    pub line: u64,
    /// The code a task or message event calls.
    pub behaviour: Option<Behaviour>,
    /// `camunda:field`s of its behaviour.
    pub fields: Vec<Field>,
    /// `camunda:executionListener`s.
    pub execution_listeners: Vec<Listener>,
    /// `camunda:taskListener`s (user tasks).
    pub task_listeners: Vec<Listener>,
    /// `camunda:inputParameter`s, set as local variables when the node starts.
    pub inputs: Vec<Parameter>,
    /// `camunda:outputParameter`s, set on the parent scope when the node ends.
    pub outputs: Vec<Parameter>,
    /// `camunda:property` names and values.
    pub properties: Vec<(String, String)>,
    /// `camunda:asyncBefore`: the caller commits before the node starts.
    pub async_before: bool,
    /// `camunda:asyncAfter`: the caller commits after the node ends.
    pub async_after: bool,
    /// `camunda:failedJobRetryTimeCycle`, e.g. `R3/PT5S`.
    pub retry_cycle: Option<String>,
    /// Loop characteristics, for an activity that runs several times.
    pub multi_instance: Option<MultiInstance>,
    /// Default flow of a gateway or activity.
    pub default_flow: Option<String>,
    /// `isInterrupting` of a start event (of an event subprocess); true unless set to false.
    pub interrupting: bool,
    /// `camunda:in` of a call activity.
    pub call_inputs: Vec<VariableMapping>,
    /// `camunda:out` of a call activity.
    pub call_outputs: Vec<VariableMapping>,
}
