//! Systems, codes and variable names of the DSF wire format.

/// CodeSystem of the Task inputs and outputs the BPE itself reads and writes.
pub const BPMN_MESSAGE: &str = "http://dsf.dev/fhir/CodeSystem/bpmn-message";
/// Input code of the message a Task delivers (the receiving process's message event name).
pub const MESSAGE_NAME: &str = "message-name";
/// Input code of the business key, which relates the Tasks of one conversation.
pub const BUSINESS_KEY: &str = "business-key";
/// Input code of the correlation key, which picks the branch of a multi-instance send a reply is for.
pub const CORRELATION_KEY: &str = "correlation-key";
/// Output code of a failed Task's reason.
pub const ERROR: &str = "error";

/// Identifier system of organisations.
pub const ORGANIZATION_IDENTIFIER: &str = "http://dsf.dev/sid/organization-identifier";
/// Identifier system of endpoints.
pub const ENDPOINT_IDENTIFIER: &str = "http://dsf.dev/sid/endpoint-identifier";
/// Identifier system of draft Tasks (the start-process templates a plugin publishes).
pub const TASK_IDENTIFIER: &str = "http://dsf.dev/sid/task-identifier";

/// Process variable holding the single target of a message send.
pub const TARGET: &str = "target";
/// Process variable holding the targets of a multi-instance message send.
pub const TARGETS: &str = "targets";
/// Local variable a message catch event's correlation key is read from.
pub const CORRELATION_KEY_VARIABLE: &str = "correlationKey";
/// Process variable a reply may be correlated by instead of the business key.
pub const ALTERNATIVE_BUSINESS_KEY: &str = "alternativeBusinessKey";

/// Process variable with the Task that started the instance.
pub const START_TASK: &str = "dsf.startTask";
/// Process variable with the Tasks received by message catch events, oldest first.
pub const RECEIVED_TASKS: &str = "dsf.receivedTasks";
/// Process variable with the latest completed QuestionnaireResponse of a user task.
pub const QUESTIONNAIRE_RESPONSE: &str = "dsf.questionnaireResponse";
