//! Systems, codes and variable names of the DSF wire format.

/// CodeSystem of the Task inputs and outputs the BPE itself reads and writes.
pub const BPMN_MESSAGE: &str = "http://dsf.dev/fhir/CodeSystem/bpmn-message";
pub const MESSAGE_NAME: &str = "message-name";
pub const BUSINESS_KEY: &str = "business-key";
pub const CORRELATION_KEY: &str = "correlation-key";
/// Output code of a failed Task's reason.
pub const ERROR: &str = "error";

pub const ORGANIZATION_IDENTIFIER: &str = "http://dsf.dev/sid/organization-identifier";
pub const ENDPOINT_IDENTIFIER: &str = "http://dsf.dev/sid/endpoint-identifier";
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
