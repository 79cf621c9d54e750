//! The messages a BPE and a plugin file exchange over the plugin's standard input and output
//! (`docs/plugin-protocol.md` is the specification, for plugins written in any language).
//!
//! Each message is one JSON object in a frame: a 4-byte big-endian length, then that many
//! bytes of UTF-8 JSON ([`codec`]). The BPE speaks first ([`Hello`]), the plugin answers with
//! its [`Definition`]; then the BPE sends [`Call`]s, the plugin answers each with a
//! [`CallResult`], and while it works on a call it may ask the BPE to carry FHIR requests
//! ([`FhirRequest`] / [`FhirResponse`]). Calls and requests carry ids, so several run at once.

use crate::{BusinessKeyStrategy, EndpointInfo, SendContext, SendError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::codec::LengthDelimitedCodec;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame either side accepts (64 MiB): a frame announcing more is a protocol
/// error, not an allocation.
pub const MAX_FRAME_LENGTH: usize = 64 * 1024 * 1024;

/// Length-prefixed frames as the protocol defines them.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME_LENGTH)
        .new_codec()
}

/// What the BPE sends. Read one with [`ToPlugin::decode`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ToPlugin {
    /// The first message (`"type": "hello"`).
    Hello(Hello),
    /// Run a handler (`"type": "call"`).
    Call(Box<Call>),
    /// The answer to one of the plugin's FHIR requests (`"type": "fhirResponse"`).
    FhirResponse(FhirResponse),
}

/// What the plugin sends. Read one with [`FromPlugin::decode`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum FromPlugin {
    /// The answer to [`Hello`] (`"type": "definition"`).
    Definition(Definition),
    /// The end of a call (`"type": "result"`).
    Result(CallResult),
    /// A FHIR request for the BPE to carry (`"type": "fhir"`).
    Fhir(FhirRequest),
}

/// The `type` of a message, read without the rest (other fields are skipped, not stored).
#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

fn tag(frame: &[u8]) -> serde_json::Result<std::borrow::Cow<'_, str>> {
    serde_json::from_slice::<Tag<'_>>(frame).map(|t| t.kind)
}

fn unknown_type(kind: &str) -> serde_json::Error {
    serde::de::Error::custom(format_args!("unknown message type '{kind}'"))
}

// Decoding by the tag first, then the message's own type from the same bytes: serde's
// internally tagged enums buffer the whole message in an intermediate tree before they know
// the type, which doubled the cost of every call.
impl ToPlugin {
    /// One message from its frame's JSON.
    pub fn decode(frame: &[u8]) -> serde_json::Result<ToPlugin> {
        Ok(match &*tag(frame)? {
            "hello" => ToPlugin::Hello(serde_json::from_slice(frame)?),
            "call" => ToPlugin::Call(Box::new(serde_json::from_slice(frame)?)),
            "fhirResponse" => ToPlugin::FhirResponse(serde_json::from_slice(frame)?),
            other => return Err(unknown_type(other)),
        })
    }
}

impl FromPlugin {
    /// One message from its frame's JSON.
    pub fn decode(frame: &[u8]) -> serde_json::Result<FromPlugin> {
        Ok(match &*tag(frame)? {
            "definition" => FromPlugin::Definition(serde_json::from_slice(frame)?),
            "result" => FromPlugin::Result(serde_json::from_slice(frame)?),
            "fhir" => FromPlugin::Fhir(serde_json::from_slice(frame)?),
            other => return Err(unknown_type(other)),
        })
    }
}

/// The BPE's first message: the protocol version and who the plugin works for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// The BPE's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The local organisation's identifier value.
    pub organization: String,
    /// The local organisation's Endpoint.
    pub endpoint: EndpointInfo,
    /// The local FHIR server's base URL.
    pub fhir_base_url: String,
}

/// The plugin's answer to [`Hello`]: everything the BPE deploys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Definition {
    /// The plugin's [`PROTOCOL_VERSION`]; the BPE refuses one it does not speak.
    pub protocol: u32,
    /// The plugin's name, as [`crate::PluginDefinition::name`].
    pub name: String,
    /// `major.minor.patch.build`, optionally with a draft suffix (`-SNAPSHOT`).
    pub version: String,
    /// `yyyy-mm-dd`.
    pub release_date: String,
    /// The BPMN files, each with one or more processes.
    pub bpmn: Vec<File>,
    /// The FHIR resources the BPE publishes on its FHIR server, per process.
    pub fhir: Vec<FhirFile>,
    /// Every name the BPMN files may use for a handler of the plugin.
    pub handlers: Vec<HandlerDeclaration>,
    /// How many calls the plugin takes at once (absent: no limit); a plugin that handles
    /// one message at a time says 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_calls: Option<u32>,
}

/// A BPMN file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct File {
    /// Where the file is in the plugin (`bpe/ping.bpmn`), for messages.
    pub path: String,
    /// The XML.
    pub contents: String,
}

/// A FHIR resource file (XML or JSON, by the path's ending) and the process that needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FhirFile {
    /// The process id (`dsfdev_ping`) the resource belongs to.
    pub process: String,
    /// Where the file is in the plugin (`fhir/ActivityDefinition-ping.json`).
    pub path: String,
    /// The resource's text, its placeholders not yet filled.
    pub contents: String,
}

/// One name a BPMN file uses for a handler, and what kind of handler it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandlerDeclaration {
    /// The name (a `camunda:class` value or a delegate expression's bean name).
    pub name: String,
    /// Which hooks the handler answers.
    pub kind: HandlerKind,
    /// For message sends: which business key the sent Task carries (default `same`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_key_strategy: Option<BusinessKeyStrategy>,
}

/// The kinds of handler, each with its own [`Hook`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HandlerKind {
    /// [`crate::ServiceTask`]: [`Hook::Execute`].
    ServiceTask,
    /// [`crate::MessageSend`]: [`Hook::AdditionalInputs`], [`Hook::AfterSend`],
    /// [`Hook::OnSendError`].
    MessageSend,
    /// [`crate::ExecutionListener`]: [`Hook::Notify`].
    ExecutionListener,
    /// [`crate::UserTaskListener`]: [`Hook::BeforeCreate`], [`Hook::AfterCreate`].
    UserTaskListener,
}

/// Which method of a handler a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Hook {
    /// A service task.
    Execute,
    /// An execution listener.
    Notify,
    /// A message send: inputs to add to the Task (answered in [`CallResult::inputs`]).
    AdditionalInputs,
    /// A message send: the target stored the Task.
    AfterSend,
    /// A message send: the target refused the Task or was not reached ([`Call::send_error`]).
    OnSendError,
    /// A user task listener: the QuestionnaireResponse before it is created (answered,
    /// possibly changed, in [`CallResult::questionnaire_response`]).
    BeforeCreate,
    /// A user task listener: the QuestionnaireResponse as created.
    AfterCreate,
}

/// The BPE asks the plugin to run a handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Call {
    /// Unique among the calls in flight; the [`CallResult`] and the call's FHIR requests name it.
    pub id: u64,
    /// The name the BPMN file uses (one of the declared names).
    pub handler: String,
    /// Which of the handler's methods to run.
    pub hook: Hook,
    /// Where the call runs.
    pub context: CallContext,
    /// Message sends: the message, its target and the Task's instantiatesCanonical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<SendContext>,
    /// [`Hook::OnSendError`]: why the send failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_error: Option<SendError>,
    /// User task listeners: the QuestionnaireResponse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub questionnaire_response: Option<Value>,
}

/// Where a call runs: the instance, the element, its fields and every variable visible there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallContext {
    /// The process instance.
    pub instance_id: String,
    /// The BPMN element whose handler runs.
    pub element_id: String,
    /// The instance's business key, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_key: Option<String>,
    /// The element's `camunda:field` values, by name.
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// Every variable visible at the element, inner scopes over outer.
    #[serde(default)]
    pub variables: Map<String, Value>,
}

/// The plugin's answer to a [`Call`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallResult {
    /// The [`Call::id`] answered.
    pub id: u64,
    /// The variables the handler set, in order.
    #[serde(default)]
    pub changes: Vec<VariableChange>,
    /// How the handler ended other than normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
    /// [`Hook::AdditionalInputs`]: the Task inputs to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<Value>>,
    /// [`Hook::BeforeCreate`]: the QuestionnaireResponse to create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub questionnaire_response: Option<Value>,
}

/// One variable a handler set: on the element's own scope (`local`) or where the name
/// already lives, else on the instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariableChange {
    /// The variable's name.
    pub name: String,
    /// Its new value (JSON, as the variable holds it).
    pub value: Value,
    /// Set on the element's own scope.
    #[serde(default)]
    pub local: bool,
}

/// A handler's error: a BPMN error (caught by an error boundary event) or a failure (the
/// instance ends and its Tasks in progress fail with the message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum CallError {
    /// A BPMN error with its error code.
    Bpmn {
        /// The error code an error boundary event catches by.
        code: String,
        /// What happened, for the log.
        message: String,
    },
    /// A failure.
    Failed {
        /// The reason, with its causes; the failed Tasks carry it.
        message: String,
    },
}

/// The plugin asks the BPE to send a FHIR request with the organisation's certificate, on
/// behalf of the running call `call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FhirRequest {
    /// Unique among the plugin's requests in flight; the [`FhirResponse`] names it.
    pub id: u64,
    /// The [`Call::id`] the request is made for.
    pub call: u64,
    /// The FHIR server: the local one or another organisation's (`https://…/fhir`).
    pub base_url: String,
    /// The HTTP method (`GET`, `POST`, `PUT`, `DELETE`).
    pub method: String,
    /// Below the base URL, with the query: `Task?status=requested`.
    pub path: String,
    /// Request headers, name and value (`accept`, `content-type`, `if-match` …).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// The answer to a [`FhirRequest`]: the server's answer, or why there is none.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FhirResponse {
    /// The [`FhirRequest::id`] answered.
    pub id: u64,
    /// The HTTP status, when the server answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The response headers, name and value.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Set when the server was not reached or the request was refused by the BPE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<crate::ProcessError> for CallError {
    fn from(error: crate::ProcessError) -> Self {
        match error {
            crate::ProcessError::Bpmn { code, message } => CallError::Bpmn { code, message },
            other => CallError::Failed {
                message: other.describe(),
            },
        }
    }
}

impl From<CallError> for crate::ProcessError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Bpmn { code, message } => crate::ProcessError::Bpmn { code, message },
            CallError::Failed { message } => crate::ProcessError::failed(message),
        }
    }
}

/// Starts the plugin file `file`, greets it as a BPE would (for the organisation `test.org`)
/// and returns the definition it answers with; the process is then told to stop. For plugin
/// authors' tests of their plugin file, and for tools that inspect plugin files.
pub fn definition_of_file(file: &std::path::Path) -> Result<Definition, String> {
    use std::io::{Read, Write};
    let mut child = std::process::Command::new(file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", file.display()))?;
    let hello = ToPlugin::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        organization: "test.org".into(),
        endpoint: EndpointInfo {
            identifier: "test.org".into(),
            address: "https://test.org/fhir".into(),
            organization: Some("test.org".into()),
        },
        fhir_base_url: "https://test.org/fhir".into(),
    });
    let answer = (|| {
        let hello = serde_json::to_vec(&hello).map_err(|e| e.to_string())?;
        let mut stdin = child.stdin.take().ok_or("no standard input")?;
        let mut stdout = child.stdout.take().ok_or("no standard output")?;
        stdin
            .write_all(&(hello.len() as u32).to_be_bytes())
            .and_then(|()| stdin.write_all(&hello))
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("cannot greet the plugin: {e}"))?;
        let mut length = [0u8; 4];
        stdout
            .read_exact(&mut length)
            .map_err(|e| format!("no answer from the plugin: {e}"))?;
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_FRAME_LENGTH {
            return Err(format!("the plugin announced a frame of {length} bytes"));
        }
        let mut frame = vec![0u8; length];
        stdout
            .read_exact(&mut frame)
            .map_err(|e| format!("the plugin's answer ended early: {e}"))?;
        drop(stdin);
        match FromPlugin::decode(&frame) {
            Ok(FromPlugin::Definition(definition)) => Ok(definition),
            Ok(_) => Err("the plugin's first message is not its definition".to_owned()),
            Err(e) => Err(format!("the plugin's answer is not the protocol: {e}")),
        }
    })();
    match &answer {
        Ok(_) => {
            // Standard input is closed: a plugin stops on its own.
            let _ = child.wait();
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The wire form is what docs/plugin-protocol.md shows; a change here is a protocol change.
    #[test]
    fn messages_have_the_documented_shape() {
        let call = ToPlugin::Call(Box::new(Call {
            id: 7,
            handler: "org.example.Greet".into(),
            hook: Hook::Execute,
            context: CallContext {
                instance_id: "task-1".into(),
                element_id: "Greet".into(),
                business_key: Some("bk".into()),
                fields: Map::new(),
                variables: json!({"n": 1}).as_object().cloned().unwrap_or_default(),
            },
            send: None,
            send_error: None,
            questionnaire_response: None,
        }));
        assert_eq!(
            serde_json::to_value(&call).unwrap(),
            json!({"type": "call", "id": 7, "handler": "org.example.Greet", "hook": "execute",
                   "context": {"instanceId": "task-1", "elementId": "Greet", "businessKey": "bk",
                               "fields": {}, "variables": {"n": 1}}})
        );
        let result = FromPlugin::decode(
            json!({
                "type": "result", "id": 7,
                "changes": [{"name": "greeting", "value": "hi"}],
                "error": {"kind": "bpmn", "code": "c", "message": "m"}})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let FromPlugin::Result(result) = result else {
            panic!("a result");
        };
        assert_eq!(result.changes[0].name, "greeting");
        assert!(!result.changes[0].local);
        assert_eq!(
            crate::ProcessError::from(result.error.unwrap()),
            crate::ProcessError::bpmn("c", "m")
        );
        let request = FromPlugin::decode(
            json!({
                "type": "fhir", "id": 1, "call": 7, "baseUrl": "https://a/fhir", "method": "GET",
                "path": "Task?status=requested", "headers": [["accept", "application/fhir+json"]]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert!(matches!(request, FromPlugin::Fhir(r) if r.headers.len() == 1 && r.body.is_none()));
        // Decoding by the tag reads what serde's own reading of the enum reads.
        let bytes = serde_json::to_vec(&call).unwrap();
        assert_eq!(ToPlugin::decode(&bytes).unwrap(), call);
        assert!(ToPlugin::decode(br#"{"type": "nonsense"}"#).is_err());
        assert!(ToPlugin::decode(br#"{"id": 1}"#).is_err());
        assert!(FromPlugin::decode(b"[1, 2]").is_err());
    }
}
