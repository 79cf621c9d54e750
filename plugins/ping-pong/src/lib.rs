//! The DSF ping-pong process plugin on `dsf-plugin-api`: an organisation pings others (a Task
//! to each), each answers with a pong, and the pinging organisation records per target whether
//! the pong came back, the ping was refused, or the target could not be reached.
//!
//! Process ids, canonical URLs, Task profiles, codes, message names and Task inputs/outputs
//! are the DSF ping-pong plugin's (version 1.0), so a Java DSF organisation can answer our
//! pings and ours answer theirs. Handlers are registered under our names (`pingpong.*`) and
//! under the Java class names the DSF's own BPMN files use, so those files run unchanged.
//!
//! The crate builds as a library (linked into a BPE in-process) and as the plugin file
//! `dsf-process-ping-pong` (an executable for a BPE's plugin directory). How long a ping waits
//! for each pong is configured with `DEV_DSF_BPE_PING_PONG_TIMEOUT` (ISO 8601, default `PT20S`).
//!
//! ```
//! let plugin = dsf_plugin_ping_pong::plugin();
//! assert_eq!(plugin.name(), "dsf-process-ping-pong");
//! assert_eq!(plugin.version().resource_version(), "1.0");
//! ```

use dsf_plugin_api::constants::{
    BPMN_MESSAGE, CORRELATION_KEY, ENDPOINT_IDENTIFIER, ORGANIZATION_IDENTIFIER,
};
use dsf_plugin_api::task::{add_output, input_string, inputs, parameter, requester};
use dsf_plugin_api::{
    async_trait, json, ExecutionListener, Handler, MessageSend, PluginDefinition, ProcessApi,
    ProcessError, SendContext, SendError, ServiceTask, Target, Targets, Value, Variables,
};
use std::sync::Arc;
use std::time::Duration;

/// CodeSystem of the ping-pong inputs and outputs.
pub const PING: &str = "http://dsf.dev/fhir/CodeSystem/ping";
/// CodeSystem of the ping and pong statuses.
pub const PING_STATUS: &str = "http://dsf.dev/fhir/CodeSystem/ping-status";
/// Extension holding a status's target details.
pub const EXTENSION_PING_STATUS: &str =
    "http://dsf.dev/fhir/StructureDefinition/extension-ping-status";

/// The target refused the ping (403).
pub const STATUS_NOT_ALLOWED: &str = "not-allowed";
/// The ping did not reach the target.
pub const STATUS_NOT_REACHABLE: &str = "not-reachable";
/// No pong came back in time.
pub const STATUS_PONG_MISSING: &str = "pong-missing";
/// The pong came back.
pub const STATUS_PONG_RECEIVED: &str = "pong-received";
/// The target sent its pong (the pong side's status).
pub const STATUS_PONG_SEND: &str = "pong-send";

/// The process that pings other organisations (start it with a Task to this URL).
pub const PING_PROCESS: &str = "http://dsf.dev/bpe/Process/ping";
/// The process that answers a ping.
pub const PONG_PROCESS: &str = "http://dsf.dev/bpe/Process/pong";
/// The process that pings repeatedly until stopped.
pub const PING_AUTOSTART_PROCESS: &str = "http://dsf.dev/bpe/Process/pingAutostart";

/// The configuration property of how long a ping waits for each pong (ISO 8601 duration,
/// environment variable `DEV_DSF_BPE_PING_PONG_TIMEOUT`).
pub const PONG_TIMEOUT_PROPERTY: &str = "dev.dsf.bpe.ping.pong.timeout";

/// How long a ping waits for its pong by default (the DSF's value).
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(20);

/// The plugin.
pub fn plugin() -> PluginDefinition {
    let definition = PluginDefinition::new("dsf-process-ping-pong", "1.0.1.0", "2023-09-12")
        .unwrap_or_else(|e| unreachable!("the plugin's own metadata is valid: {e}"))
        .bpmn("bpe/ping.bpmn", include_str!("../bpe/ping.bpmn"))
        .bpmn("bpe/pong.bpmn", include_str!("../bpe/pong.bpmn"))
        .bpmn(
            "bpe/ping-autostart.bpmn",
            include_str!("../bpe/ping-autostart.bpmn"),
        );
    // (process, path in the plugin, content) of every FHIR resource the plugin deploys.
    macro_rules! fhir_file {
        ($process:literal, $file:literal) => {
            (
                $process,
                concat!("fhir/", $file),
                include_str!(concat!("../fhir/", $file)),
            )
        };
    }
    let fhir: [(&str, &str, &'static str); 21] = [
        fhir_file!("dsfdev_ping", "ActivityDefinition-dsf-ping.json"),
        fhir_file!("dsfdev_ping", "CodeSystem-dsf-ping.json"),
        fhir_file!("dsfdev_ping", "CodeSystem-dsf-ping-status.json"),
        fhir_file!("dsfdev_ping", "ValueSet-dsf-ping.json"),
        fhir_file!("dsfdev_ping", "ValueSet-dsf-ping-status.json"),
        fhir_file!("dsfdev_ping", "Task-start-ping.json"),
        fhir_file!("dsfdev_ping", "StructureDefinition-task-start-ping.json"),
        fhir_file!("dsfdev_ping", "StructureDefinition-task-pong.json"),
        fhir_file!(
            "dsfdev_ping",
            "StructureDefinition-extension-ping-status.json"
        ),
        fhir_file!("dsfdev_pong", "ActivityDefinition-dsf-pong.json"),
        fhir_file!("dsfdev_pong", "CodeSystem-dsf-ping.json"),
        fhir_file!("dsfdev_pong", "CodeSystem-dsf-ping-status.json"),
        fhir_file!("dsfdev_pong", "ValueSet-dsf-ping.json"),
        fhir_file!("dsfdev_pong", "ValueSet-dsf-pong-status.json"),
        fhir_file!("dsfdev_pong", "StructureDefinition-task-ping.json"),
        fhir_file!(
            "dsfdev_pingAutostart",
            "ActivityDefinition-dsf-ping-autostart.json"
        ),
        fhir_file!("dsfdev_pingAutostart", "Task-start-ping-autostart.json"),
        fhir_file!("dsfdev_pingAutostart", "Task-stop-ping-autostart.json"),
        fhir_file!(
            "dsfdev_pingAutostart",
            "StructureDefinition-task-start-ping-autostart.json"
        ),
        fhir_file!(
            "dsfdev_pingAutostart",
            "StructureDefinition-task-stop-ping-autostart.json"
        ),
        fhir_file!("dsfdev_pingAutostart", "ValueSet-dsf-ping.json"),
    ];
    let definition = fhir
        .into_iter()
        .fold(definition, |d, (process, path, text)| {
            d.fhir(process, path, text)
        });
    handlers()
        .into_iter()
        .fold(definition, |d, (name, java, handler)| {
            d.handler_named(&[&format!("pingpong.{name}"), java], handler)
        })
}

/// The handlers: our name (registered as `pingpong.<name>`), the Java class name the DSF's own
/// BPMN files name, and the handler.
fn handlers() -> [(&'static str, &'static str, Handler); 12] {
    [
        (
            "SelectPingTargets",
            "dev.dsf.bpe.service.SelectPingTargets",
            Handler::ServiceTask(Arc::new(SelectPingTargets)),
        ),
        (
            "SendPing",
            "dev.dsf.bpe.message.SendPing",
            Handler::MessageSend(Arc::new(SendPing)),
        ),
        (
            "SetCorrelationKey",
            "dev.dsf.bpe.listener.SetCorrelationKeyListener",
            Handler::ExecutionListener(Arc::new(SetCorrelationKey)),
        ),
        (
            "LogPong",
            "dev.dsf.bpe.service.LogPong",
            Handler::ServiceTask(Arc::new(RecordStatus(StatusSource::Fixed(
                STATUS_PONG_RECEIVED,
            )))),
        ),
        (
            "LogNoResponse",
            "dev.dsf.bpe.service.LogNoResponse",
            Handler::ServiceTask(Arc::new(RecordStatus(StatusSource::Fixed(
                STATUS_PONG_MISSING,
            )))),
        ),
        (
            "LogSendError",
            "dev.dsf.bpe.service.LogSendError",
            Handler::ServiceTask(Arc::new(RecordStatus(StatusSource::SendError))),
        ),
        (
            "SaveResults",
            "dev.dsf.bpe.service.SaveResults",
            Handler::ServiceTask(Arc::new(SaveResults)),
        ),
        (
            "LogPing",
            "dev.dsf.bpe.service.LogPing",
            Handler::ServiceTask(Arc::new(LogPing)),
        ),
        (
            "SelectPongTarget",
            "dev.dsf.bpe.service.SelectPongTarget",
            Handler::ServiceTask(Arc::new(SelectPongTarget)),
        ),
        (
            "SendPong",
            "dev.dsf.bpe.message.SendPong",
            Handler::MessageSend(Arc::new(SendPong)),
        ),
        (
            "SetTargetAndConfigureTimer",
            "dev.dsf.bpe.service.SetTargetAndConfigureTimer",
            Handler::ServiceTask(Arc::new(SetTargetAndConfigureTimer)),
        ),
        (
            "SendStartPing",
            "dev.dsf.bpe.message.SendStartPing",
            Handler::MessageSend(Arc::new(SendStartPing)),
        ),
    ]
}

fn target(vars: &Variables<'_>) -> Result<Target, ProcessError> {
    vars.target()?
        .ok_or_else(|| ProcessError::failed("no variable 'target'"))
}

/// The endpoints to ping: those the start Task's `target-endpoints` search selects (else every
/// active endpoint), without the local one and without endpoints of no known organisation,
/// each with a fresh correlation key.
struct SelectPingTargets;

#[async_trait]
impl ServiceTask for SelectPingTargets {
    async fn execute(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let task = vars.start_task_or_fail()?;
        let query = match input_string(&task, PING, "target-endpoints") {
            Some(search) => {
                let (resource_type, query) = search.split_once('?').unwrap_or((search, ""));
                if resource_type.rsplit('/').next() != Some("Endpoint") {
                    return Err(ProcessError::failed(format!(
                        "target-endpoints must search Endpoint resources, not '{resource_type}'"
                    )));
                }
                query.to_owned()
            }
            None => format!("status=active&identifier={ENDPOINT_IDENTIFIER}|"),
        };
        let local = api.local_endpoint();
        let mut targets: Vec<Target> = api
            .endpoints(&query)
            .await?
            .into_iter()
            .filter(|e| e.address != local.address && e.identifier != local.identifier)
            .filter(|e| {
                e.organization
                    .as_deref()
                    .is_some_and(|o| o != api.local_organization())
            })
            .filter_map(|e| e.target())
            .map(Target::with_new_correlation_key)
            .collect();
        targets.sort_by(|a, b| {
            a.endpoint_identifier_value
                .cmp(&b.endpoint_identifier_value)
        });
        tracing::info!(targets = targets.len(), "pinging");
        vars.set_targets(&Targets { entries: targets })?;
        vars.set_string("pongTimeout", &pong_timeout(api)?);
        Ok(())
    }
}

/// The configured pong timeout, checked to be an ISO 8601 duration so that a mistake shows
/// here, with the property's name, rather than at the timer.
fn pong_timeout(api: &ProcessApi) -> Result<String, ProcessError> {
    let Some(configured) = api.config(PONG_TIMEOUT_PROPERTY) else {
        return Ok(iso_duration(DEFAULT_PONG_TIMEOUT));
    };
    let configured = configured.trim().to_owned();
    let looks_iso = configured.starts_with('P')
        && configured.len() > 1
        && configured[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b"YMWDTHS.".contains(&b));
    if looks_iso {
        Ok(configured)
    } else {
        Err(ProcessError::failed(format!(
            "{PONG_TIMEOUT_PROPERTY} (DEV_DSF_BPE_PING_PONG_TIMEOUT) is '{configured}', not an ISO 8601 duration such as PT20S"
        )))
    }
}

fn iso_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("PT{}S", millis / 1000)
    } else {
        format!("PT{}.{:03}S", millis / 1000, millis % 1000)
    }
}

/// The ping carries the local endpoint's identifier, where the pong is to go. A ping that
/// cannot be delivered is recorded (not-allowed or not-reachable) and the process goes on.
struct SendPing;

#[async_trait]
impl MessageSend for SendPing {
    async fn additional_inputs(
        &self,
        api: &ProcessApi,
        _vars: &Variables<'_>,
        _send: &SendContext,
    ) -> Result<Vec<Value>, ProcessError> {
        Ok(vec![parameter(
            PING,
            "endpoint-identifier",
            "valueReference",
            json!({"type": "Endpoint", "identifier": {"system": ENDPOINT_IDENTIFIER, "value": api.local_endpoint().identifier}}),
        )])
    }

    async fn on_send_error(
        &self,
        _api: &ProcessApi,
        vars: &mut Variables<'_>,
        _send: &SendContext,
        error: &SendError,
    ) -> Result<(), ProcessError> {
        let status = if error.is_not_allowed() {
            STATUS_NOT_ALLOWED
        } else {
            STATUS_NOT_REACHABLE
        };
        vars.set_local("statusCode", json!(status));
        vars.set_local("errorMessage", json!(error.message));
        Ok(())
    }
}

/// The catch event waiting for a target's pong matches its correlation key.
struct SetCorrelationKey;

#[async_trait]
impl ExecutionListener for SetCorrelationKey {
    async fn notify(
        &self,
        _api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let key = target(vars)?.correlation_key.unwrap_or_default();
        vars.set_local("correlationKey", json!(key));
        Ok(())
    }
}

enum StatusSource {
    Fixed(&'static str),
    /// The local `statusCode` and `errorMessage` a failed send left.
    SendError,
}

/// Records one target's status under its correlation key, for [`SaveResults`].
struct RecordStatus(StatusSource);

#[async_trait]
impl ServiceTask for RecordStatus {
    async fn execute(
        &self,
        _api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let target = target(vars)?;
        let key = target.correlation_key.clone().unwrap_or_default();
        let status = match &self.0 {
            StatusSource::Fixed(status) => (*status).to_owned(),
            StatusSource::SendError => {
                let error = vars.get_string("errorMessage").unwrap_or_default();
                vars.set_string(&format!("errorMessage_{key}"), &error);
                vars.get_string("statusCode")
                    .unwrap_or_else(|| STATUS_NOT_REACHABLE.to_owned())
            }
        };
        tracing::info!(
            organization = %target.organization_identifier_value,
            endpoint = %target.endpoint_identifier_value, %status, "ping status"
        );
        vars.set_string(&format!("statusCode_{key}"), &status);
        Ok(())
    }
}

/// A status output as the DSF writes it: the status coding, and an extension naming the
/// target (and the error, if any).
pub fn status_output(kind: &str, target: &Target, status: &str, error: Option<&str>) -> Value {
    let mut details = vec![
        json!({"url": "correlation-key", "valueString": target.correlation_key.clone().unwrap_or_default()}),
        json!({"url": "organization-identifier", "valueIdentifier": {"system": ORGANIZATION_IDENTIFIER, "value": target.organization_identifier_value}}),
        json!({"url": "endpoint-identifier", "valueIdentifier": {"system": ENDPOINT_IDENTIFIER, "value": target.endpoint_identifier_value}}),
    ];
    if let Some(error) = error {
        details.push(json!({"url": "error-message", "valueString": error}));
    }
    let mut output = parameter(
        PING,
        kind,
        "valueCoding",
        json!({"system": PING_STATUS, "code": status}),
    );
    output["extension"] = json!([{"url": EXTENSION_PING_STATUS, "extension": details}]);
    output
}

/// One `ping-status` output per target on the start Task.
struct SaveResults;

#[async_trait]
impl ServiceTask for SaveResults {
    async fn execute(
        &self,
        _api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let mut task = vars.start_task_or_fail()?;
        let mut targets = vars.targets()?.entries;
        targets.sort_by(|a, b| {
            a.endpoint_identifier_value
                .cmp(&b.endpoint_identifier_value)
        });
        for target in &targets {
            let key = target.correlation_key.clone().unwrap_or_default();
            let status = vars
                .get_string(&format!("statusCode_{key}"))
                .unwrap_or_else(|| STATUS_PONG_MISSING.to_owned());
            let error = (status == STATUS_NOT_ALLOWED || status == STATUS_NOT_REACHABLE)
                .then(|| vars.get_string(&format!("errorMessage_{key}")))
                .flatten();
            add_output(
                &mut task,
                status_output("ping-status", target, &status, error.as_deref()),
            );
        }
        vars.update_task(task)
    }
}

struct LogPing;

#[async_trait]
impl ServiceTask for LogPing {
    async fn execute(
        &self,
        _api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let task = vars.start_task_or_fail()?;
        tracing::info!(from = requester(&task).unwrap_or("?"), "ping received");
        Ok(())
    }
}

/// The pong goes to the pinging organisation's endpoint named in the ping, if the allow list
/// has it; else the BPMN error `target_not_allowed` ends the process without a pong.
struct SelectPongTarget;

#[async_trait]
impl ServiceTask for SelectPongTarget {
    async fn execute(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let task = vars.start_task_or_fail()?;
        let correlation_key = input_string(&task, BPMN_MESSAGE, CORRELATION_KEY).map(str::to_owned);
        let organization = requester(&task)
            .ok_or_else(|| ProcessError::failed("the ping names no requester"))?
            .to_owned();
        let endpoint_identifier = inputs(&task, PING, "endpoint-identifier")
            .into_iter()
            .find_map(|p| p["valueReference"]["identifier"]["value"].as_str())
            .ok_or_else(|| ProcessError::failed("the ping has no endpoint-identifier input"))?
            .to_owned();
        let Some(endpoint) = api.endpoint(&endpoint_identifier).await? else {
            tracing::warn!(%organization, endpoint = %endpoint_identifier, "pong target not on the allow list; not sending a pong");
            return Err(ProcessError::bpmn(
                "target_not_allowed",
                "pong target not found or not active",
            ));
        };
        let mut target = Target::new(&organization, &endpoint_identifier, &endpoint.address);
        target.correlation_key = correlation_key;
        vars.set_target(&target)
    }
}

/// After the pong went out, the ping Task records `pong-send`; if it could not, the status
/// and error are recorded and the ping Task fails.
struct SendPong;

#[async_trait]
impl MessageSend for SendPong {
    async fn after_send(
        &self,
        _api: &ProcessApi,
        vars: &mut Variables<'_>,
        send: &SendContext,
    ) -> Result<(), ProcessError> {
        let mut task = vars.start_task_or_fail()?;
        add_output(
            &mut task,
            status_output("pong-status", &send.target, STATUS_PONG_SEND, None),
        );
        vars.update_task(task)
    }

    async fn on_send_error(
        &self,
        _api: &ProcessApi,
        vars: &mut Variables<'_>,
        send: &SendContext,
        error: &SendError,
    ) -> Result<(), ProcessError> {
        let status = if error.is_not_allowed() {
            STATUS_NOT_ALLOWED
        } else {
            STATUS_NOT_REACHABLE
        };
        let mut task = vars.start_task_or_fail()?;
        add_output(
            &mut task,
            status_output("pong-status", &send.target, status, Some(&error.message)),
        );
        vars.update_task(task)?;
        Err(ProcessError::failed(format!("pong not delivered: {error}")))
    }
}

/// The autostart loop pings from the local organisation at the start Task's `timer-interval`
/// (default PT24H).
struct SetTargetAndConfigureTimer;

#[async_trait]
impl ServiceTask for SetTargetAndConfigureTimer {
    async fn execute(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let task = vars.start_task_or_fail()?;
        let interval = input_string(&task, PING, "timer-interval")
            .unwrap_or("PT24H")
            .to_owned();
        vars.set_string("timerInterval", &interval);
        let local = api.local_endpoint();
        vars.set_target(&Target::new(
            api.local_organization(),
            &local.identifier,
            &local.address,
        ))
    }
}

/// The ping each interval starts carries the autostart Task's `target-endpoints`.
struct SendStartPing;

#[async_trait]
impl MessageSend for SendStartPing {
    async fn additional_inputs(
        &self,
        _api: &ProcessApi,
        vars: &Variables<'_>,
        _send: &SendContext,
    ) -> Result<Vec<Value>, ProcessError> {
        let task = vars.start_task_or_fail()?;
        Ok(inputs(&task, PING, "target-endpoints")
            .into_iter()
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_iso_8601() {
        assert_eq!(iso_duration(Duration::from_secs(20)), "PT20S");
        assert_eq!(iso_duration(Duration::from_millis(1500)), "PT1.500S");
    }

    #[test]
    fn every_bpmn_handler_is_registered_under_both_names() {
        let plugin = plugin();
        for java in [
            "dev.dsf.bpe.service.SelectPingTargets",
            "dev.dsf.bpe.message.SendPong",
            "dev.dsf.bpe.listener.SetCorrelationKeyListener",
        ] {
            assert!(plugin.handlers().iter().any(|(n, _)| n == java), "{java}");
        }
        assert_eq!(plugin.handlers().len(), 24);
    }
}
