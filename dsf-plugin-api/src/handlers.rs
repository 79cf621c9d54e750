use crate::{ProcessApi, ProcessError, SendError, Target, Variables};
use async_trait::async_trait;
use serde_json::Value;
use std::sync::Arc;

/// The code of a service task (`serviceTask camunda:class=…`).
#[async_trait]
pub trait ServiceTask: Send + Sync {
    /// Runs when a token reaches the task.
    async fn execute(&self, api: &ProcessApi, vars: &mut Variables<'_>)
        -> Result<(), ProcessError>;
}

/// Which business key a sent Task carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum BusinessKeyStrategy {
    /// The instance's own business key: replies continue this instance (the default).
    #[default]
    Same,
    /// A new key kept as the instance's `alternativeBusinessKey`: replies still reach this
    /// instance, but the receiver cannot link the message to the instance's other messages.
    Alternative,
    /// A new key nothing remembers: no reply can come back.
    New,
}

/// What one message send is about, from the element's three fields and its target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendContext {
    /// `instantiatesCanonical` of the Task, e.g. `http://dsf.dev/bpe/Process/pong|1.0`.
    pub instantiates_canonical: String,
    /// The `message-name` input: the receiving process's message event name.
    pub message_name: String,
    /// The Task profile (`meta.profile`), e.g. `http://dsf.dev/fhir/StructureDefinition/task-ping|1.0`.
    pub profile: String,
    /// Where the Task goes.
    pub target: Target,
}

/// A send task, message intermediate throw event or message end event: the engine builds the
/// Task from the element's fields (`instantiatesCanonical`, `messageName`, `profile`) and the
/// `target` variable and creates it on the target's FHIR server. The hooks add inputs and
/// decide what a failed send means; [`DefaultMessageSend`] keeps every default.
#[async_trait]
pub trait MessageSend: Send + Sync {
    /// Inputs added after the `message-name`, `business-key` and `correlation-key` inputs.
    async fn additional_inputs(
        &self,
        _api: &ProcessApi,
        _vars: &Variables<'_>,
        _send: &SendContext,
    ) -> Result<Vec<Value>, ProcessError> {
        Ok(Vec::new())
    }

    /// Which business key the sent Task carries.
    fn business_key_strategy(&self) -> BusinessKeyStrategy {
        BusinessKeyStrategy::Same
    }

    /// After the target stored the Task.
    async fn after_send(
        &self,
        _api: &ProcessApi,
        _vars: &mut Variables<'_>,
        _send: &SendContext,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    /// When the target refused the Task or could not be reached. The default fails the
    /// instance (its Tasks in progress become failed with the reason); return `Ok` to let
    /// the process go on, e.g. after recording the status in a variable for a gateway.
    async fn on_send_error(
        &self,
        _api: &ProcessApi,
        _vars: &mut Variables<'_>,
        send: &SendContext,
        error: &SendError,
    ) -> Result<(), ProcessError> {
        Err(ProcessError::failed(format!(
            "Task {} send failed [recipient: {}, endpoint: {}, message: {}, error: {error}]",
            send.instantiates_canonical,
            send.target.organization_identifier_value,
            send.target.endpoint_identifier_value,
            send.message_name
        )))
    }
}

/// A message send with no code of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultMessageSend;

impl MessageSend for DefaultMessageSend {}

/// `camunda:executionListener` code, run on the `start` or `end` of an element.
#[async_trait]
pub trait ExecutionListener: Send + Sync {
    /// Runs on the listener's event.
    async fn notify(&self, api: &ProcessApi, vars: &mut Variables<'_>) -> Result<(), ProcessError>;
}

/// Hooks around the QuestionnaireResponse the engine creates for a user task
/// (`userTask camunda:formKey="<Questionnaire url>|<version>"`).
#[async_trait]
pub trait UserTaskListener: Send + Sync {
    /// Before it is created: the response has status `in-progress`, the `business-key` and
    /// `user-task-id` items and one item per question; change it as needed.
    async fn before_create(
        &self,
        _api: &ProcessApi,
        _vars: &mut Variables<'_>,
        _questionnaire_response: &mut Value,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    /// After it was created on the local FHIR server (with its id).
    async fn after_create(
        &self,
        _api: &ProcessApi,
        _vars: &mut Variables<'_>,
        _questionnaire_response: &Value,
    ) -> Result<(), ProcessError> {
        Ok(())
    }
}

/// A handler of one of the four kinds, as registered in a plugin.
#[derive(Clone)]
#[non_exhaustive]
pub enum Handler {
    /// A service task's code.
    ServiceTask(Arc<dyn ServiceTask>),
    /// A message send's hooks.
    MessageSend(Arc<dyn MessageSend>),
    /// An execution listener.
    ExecutionListener(Arc<dyn ExecutionListener>),
    /// A user task listener.
    UserTaskListener(Arc<dyn UserTaskListener>),
}

impl Handler {
    /// `service task`, `message send`, … for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Handler::ServiceTask(_) => "service task",
            Handler::MessageSend(_) => "message send",
            Handler::ExecutionListener(_) => "execution listener",
            Handler::UserTaskListener(_) => "user task listener",
        }
    }
}
