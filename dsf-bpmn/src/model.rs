//! What a BPMN file says, in the terms the engine executes.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Definitions {
    pub processes: Vec<Process>,
    /// By id.
    pub messages: BTreeMap<String, Message>,
    pub errors: BTreeMap<String, ErrorDefinition>,
    pub signals: BTreeMap<String, Signal>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: String,
    /// Correlation uses the name, not the id. Empty when the file gives none (allowed for a
    /// message no event references).
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ErrorDefinition {
    pub id: String,
    pub name: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub id: String,
    pub executable: bool,
    /// `camunda:versionTag`.
    pub version_tag: Option<String>,
    /// All flow nodes, including those inside subprocesses (see [`Node::parent`]).
    pub nodes: Vec<Node>,
    pub flows: Vec<SequenceFlow>,
}

impl Process {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn outgoing<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a SequenceFlow> + 'a {
        self.flows.iter().filter(move |f| f.source == id)
    }

    pub fn incoming<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a SequenceFlow> + 'a {
        self.flows.iter().filter(move |f| f.target == id)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SequenceFlow {
    pub id: String,
    pub source: String,
    pub target: String,
    /// `${…}` expression of a `conditionExpression`.
    pub condition: Option<String>,
    pub line: u64,
}

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Timer {
    Duration(String),
    Date(String),
    Cycle(String),
}

/// What an event waits for or throws.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Trigger {
    None,
    /// A message id (see [`Definitions::messages`]); `None` for a throwing message event that
    /// names its message through a field instead.
    Message(Option<String>),
    Timer(Timer),
    Signal(String),
    /// An error id; `None` catches every error.
    Error(Option<String>),
    Conditional {
        condition: String,
        variable_name: Option<String>,
        variable_events: Option<String>,
    },
    Terminate,
}

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NodeKind {
    StartEvent(Trigger),
    EndEvent(Trigger),
    IntermediateCatchEvent(Trigger),
    IntermediateThrowEvent(Trigger),
    BoundaryEvent {
        attached_to: String,
        cancel_activity: bool,
        trigger: Trigger,
        error_code_variable: Option<String>,
        error_message_variable: Option<String>,
    },
    ServiceTask,
    SendTask,
    ReceiveTask {
        message: Option<String>,
    },
    UserTask {
        form_key: Option<String>,
    },
    ExclusiveGateway,
    InclusiveGateway,
    ParallelGateway,
    EventBasedGateway,
    SubProcess {
        triggered_by_event: bool,
    },
    CallActivity {
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

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FieldValue {
    String(String),
    Expression(String),
}

/// `camunda:field`: a value injected into the behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: FieldValue,
}

/// `camunda:executionListener` or `camunda:taskListener`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub event: String,
    pub behaviour: Behaviour,
    pub fields: Vec<Field>,
}

/// `camunda:inputParameter` / `camunda:outputParameter` (text values; `${…}` evaluated).
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    pub name: String,
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
        source: Option<String>,
        source_expression: Option<String>,
        target: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct MultiInstance {
    pub sequential: bool,
    pub collection: Option<String>,
    pub element_variable: Option<String>,
    pub loop_cardinality: Option<String>,
    pub completion_condition: Option<String>,
    /// `camunda:asyncBefore`, `camunda:asyncAfter`, `camunda:exclusive` and
    /// `camunda:failedJobRetryTimeCycle` of the loop characteristics. Kept as written; the
    /// engine starts every iteration in the step that reaches the activity (a caller that
    /// persists per step sees the same states as with Camunda's per-iteration jobs), and
    /// retries come from the activity's own `failedJobRetryTimeCycle`.
    pub async_before: bool,
    pub async_after: bool,
    pub exclusive: bool,
    pub retry_cycle: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub name: Option<String>,
    pub kind: NodeKind,
    /// The enclosing subprocess, if any.
    pub parent: Option<String>,
    pub line: u64,
    pub behaviour: Option<Behaviour>,
    pub fields: Vec<Field>,
    pub execution_listeners: Vec<Listener>,
    pub task_listeners: Vec<Listener>,
    pub inputs: Vec<Parameter>,
    pub outputs: Vec<Parameter>,
    pub properties: Vec<(String, String)>,
    pub async_before: bool,
    pub async_after: bool,
    /// `camunda:failedJobRetryTimeCycle`, e.g. `R3/PT5S`.
    pub retry_cycle: Option<String>,
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
