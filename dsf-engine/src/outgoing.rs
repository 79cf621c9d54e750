//! Sending a message: the Task is built from the element's fields and the target, created on
//! the target's FHIR server, and recorded in the state database before and after, so that a
//! BPE restarted mid-send finds out whether the Task went out instead of sending it again.

use crate::scope::{now_instant, with_vars};
use crate::services::Services;
use crate::state::SendMark;
use dsf_bpmn::engine::HandlerContext;
use dsf_core::ErrorChain;
use dsf_plugin_api::constants::{
    ALTERNATIVE_BUSINESS_KEY, BPMN_MESSAGE, BUSINESS_KEY, CORRELATION_KEY, MESSAGE_NAME,
    ORGANIZATION_IDENTIFIER, TARGET,
};
use dsf_plugin_api::task::{correlation_key, input_string, message_name, parameter};
use dsf_plugin_api::{
    BusinessKeyStrategy, MessageSend, ProcessError, SendContext, SendError, Target,
};
use serde_json::{json, Value};

/// The instance variable counting the sends of an instance: with the instance id it names
/// each send, and replaying an instance from its stored state counts the same way.
const SEND_SEQUENCE: &str = "dsf.sendSequence";

/// Runs a message send: builds the Task, records it before posting it so that a restart
/// neither loses nor repeats it, posts it to the target and calls the handler's hook for the
/// outcome.
pub(crate) async fn send(
    services: &Services,
    handler: &dyn MessageSend,
    context: &mut HandlerContext<'_>,
) -> Result<(), ProcessError> {
    let send = send_context(context)?;
    let key = next_send_key(context);
    let mark = services
        .state
        .send_mark(&key)
        .await
        .map_err(|e| ProcessError::failed_by("BPE state", e))?;
    let outcome = match mark {
        Some((SendMark::Sent, task)) => {
            tracing::info!(send = %key, "Task was sent before a restart; not sending it again");
            restore_alternative_key(handler, context, &task);
            Ok(())
        }
        Some((SendMark::Pending, task)) => {
            restore_alternative_key(handler, context, &task);
            let stored: Value = serde_json::from_str(&task)?;
            if arrived(services, &send, &stored).await {
                tracing::info!(send = %key, "Task reached its target before a restart; not sending it again");
                mark_sent(services, &key).await
            } else {
                post(services, &key, &send, &stored).await
            }
        }
        None => {
            let business_key = business_key_for(handler, context);
            let extra = with_vars!(context, vars => handler.additional_inputs(&services.api, &vars, &send).await)?;
            let task = build_task(services, &send, business_key.as_deref(), extra);
            services
                .state
                .mark_pending(&key, &task.to_string(), &send.target.endpoint_url)
                .await
                .map_err(|e| ProcessError::failed_by("BPE state", e))?;
            services.step_boundary("send-recorded").await;
            post(services, &key, &send, &task).await
        }
    };
    services.metrics.sent(outcome.is_ok());
    match outcome {
        Ok(()) => {
            with_vars!(context, vars => handler.after_send(&services.api, &mut vars, &send).await)
        }
        Err(error) => {
            tracing::warn!(
                send = %key,
                target = %send.target.organization_identifier_value,
                endpoint = %send.target.endpoint_url,
                status = ?error.status,
                error = %error.message,
                "sending Task failed"
            );
            with_vars!(context, vars => handler.on_send_error(&services.api, &mut vars, &send, &error).await)
        }
    }
}

/// The message, its target and the Task's profile and process, from the element's fields
/// and the `target` variable.
fn send_context(context: &HandlerContext<'_>) -> Result<SendContext, ProcessError> {
    let field = |name: &str| -> Result<String, ProcessError> {
        context
            .field(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                ProcessError::failed(format!(
                    "message send '{}' has no string field '{name}'",
                    context.element_id
                ))
            })
    };
    let target: Target = context
        .variable(TARGET)
        .cloned()
        .ok_or_else(|| {
            ProcessError::failed(format!(
                "message send '{}': no variable 'target'",
                context.element_id
            ))
        })
        .and_then(|v| {
            serde_json::from_value(v).map_err(|e| {
                ProcessError::failed(format!("variable 'target' is not a Target: {e}"))
            })
        })?;
    Ok(SendContext {
        instantiates_canonical: field("instantiatesCanonical")?,
        message_name: field("messageName")?,
        profile: field("profile")?,
        target,
    })
}

/// The name of this send, `<instance id>/<n>` for the instance's n-th send, counted in an
/// instance variable so that a replay from stored state names it the same.
fn next_send_key(context: &mut HandlerContext<'_>) -> String {
    let sequence = context
        .variable(SEND_SEQUENCE)
        .and_then(Value::as_i64)
        .unwrap_or(0)
        + 1;
    context.set(SEND_SEQUENCE, json!(sequence));
    format!("{}/{sequence}", context.instance_id)
}

/// The business key the sent Task carries, as the handler's strategy says; an alternative
/// key is remembered in the instance for correlating the reply.
fn business_key_for(handler: &dyn MessageSend, context: &mut HandlerContext<'_>) -> Option<String> {
    match handler.business_key_strategy() {
        BusinessKeyStrategy::Same => context.business_key.map(str::to_owned),
        BusinessKeyStrategy::Alternative => {
            let key = uuid::Uuid::new_v4().to_string();
            context.set(ALTERNATIVE_BUSINESS_KEY, json!(key));
            Some(key)
        }
        _ => Some(uuid::Uuid::new_v4().to_string()),
    }
}

/// With [`BusinessKeyStrategy::Alternative`], the key the Task already carries is the one
/// replies come back with.
fn restore_alternative_key(
    handler: &dyn MessageSend,
    context: &mut HandlerContext<'_>,
    task: &str,
) {
    if handler.business_key_strategy() == BusinessKeyStrategy::Alternative {
        if let Ok(task) = serde_json::from_str::<Value>(task) {
            if let Some(key) = input_string(&task, BPMN_MESSAGE, BUSINESS_KEY) {
                context.set(ALTERNATIVE_BUSINESS_KEY, json!(key));
            }
        }
    }
}

fn build_task(
    services: &Services,
    send: &SendContext,
    business_key: Option<&str>,
    extra: Vec<Value>,
) -> Value {
    let mut inputs = vec![parameter(
        BPMN_MESSAGE,
        MESSAGE_NAME,
        "valueString",
        json!(send.message_name),
    )];
    if let Some(key) = business_key {
        inputs.push(parameter(
            BPMN_MESSAGE,
            BUSINESS_KEY,
            "valueString",
            json!(key),
        ));
    }
    if let Some(key) = &send.target.correlation_key {
        inputs.push(parameter(
            BPMN_MESSAGE,
            CORRELATION_KEY,
            "valueString",
            json!(key),
        ));
    }
    inputs.extend(extra);
    let organization = |value: &str| json!({"type": "Organization", "identifier": {"system": ORGANIZATION_IDENTIFIER, "value": value}});
    json!({
        "resourceType": "Task",
        "meta": {"profile": [send.profile]},
        "instantiatesCanonical": send.instantiates_canonical,
        "status": "requested",
        "intent": "order",
        "authoredOn": now_instant(),
        "requester": organization(services.api.local_organization()),
        "restriction": {"recipient": [organization(&send.target.organization_identifier_value)]},
        "input": inputs,
    })
}

async fn post(
    services: &Services,
    key: &str,
    send: &SendContext,
    task: &Value,
) -> Result<(), SendError> {
    let client = services
        .api
        .client_for(&send.target.endpoint_url)
        .map_err(|e| SendError {
            status: None,
            message: e.describe(),
        })?;
    let mut attempt = 0;
    loop {
        let (error, not_there) = match client.create(task).await {
            Ok(_) => {
                services.step_boundary("sent").await;
                return mark_sent(services, key).await;
            }
            // Nobody listens at the target: it is down, not changing hands.
            Err(error) => (
                send_error(&error),
                matches!(&error, dsf_fhir::Error::Transport { message, .. } if message.starts_with("connect ")),
            ),
        };
        // The target answered: it did not store the Task, so the send is not pending.
        if error.status.is_some_and(|s| (400..500).contains(&s)) {
            let _ = services.state.forget_send(key).await;
            return Err(error);
        }
        // No answer, or the target is busy or being replaced (one replica behind a load
        // balancer going down): a few more tries, each after making sure the last did not
        // arrive after all, so that the Task is created once.
        let unanswered = error.status.is_none_or(|s| matches!(s, 502..=504));
        if !unanswered || not_there || attempt >= SEND_RETRIES {
            return Err(error);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250 << attempt)).await;
        attempt += 1;
        if arrived(services, send, task).await {
            tracing::info!(send = %key, "Task reached its target though its answer was lost");
            return mark_sent(services, key).await;
        }
        tracing::info!(send = %key, attempt, error = %error.message, "sending Task again");
    }
}

/// Further tries of a send that got no answer (after 0.25, 0.5 and 1 s).
const SEND_RETRIES: u32 = 3;

async fn mark_sent(services: &Services, key: &str) -> Result<(), SendError> {
    services.state.mark_sent(key).await.map_err(|e| SendError {
        status: None,
        message: format!("Task sent, but recording it failed: {}", ErrorChain(&e)),
    })
}

/// Whether the target already has the Task `task` (sent before the BPE stopped): a Task of
/// ours authored at the same instant with the same message, business key and correlation key.
async fn arrived(services: &Services, send: &SendContext, task: &Value) -> bool {
    let Ok(client) = services.api.client_for(&send.target.endpoint_url) else {
        return false;
    };
    let Some(authored) = task["authoredOn"].as_str() else {
        return false;
    };
    let query = format!(
        "authored-on={}&requester:identifier={ORGANIZATION_IDENTIFIER}|{}",
        authored.replace('+', "%2B"),
        services.api.local_organization()
    );
    let Ok(found) = client.search_pages("Task", &query).collect().await else {
        return false;
    };
    let business_key = |t: &Value| input_string(t, BPMN_MESSAGE, BUSINESS_KEY).map(str::to_owned);
    found.iter().any(|t| {
        t["instantiatesCanonical"] == task["instantiatesCanonical"]
            && message_name(t) == message_name(task)
            && business_key(t) == business_key(task)
            && correlation_key(t) == correlation_key(task)
    })
}

fn send_error(error: &dsf_fhir::Error) -> SendError {
    use dsf_fhir::Error as E;
    let status = match error {
        E::Forbidden(_) => Some(403),
        E::Unauthenticated(_) => Some(401),
        E::Invalid(_) => Some(400),
        E::NotFound(_) => Some(404),
        E::PreconditionFailed(_) => Some(412),
        E::Duplicate(_) | E::VersionConflict(_) => Some(409),
        E::UnsupportedMediaType(_) => Some(415),
        E::PayloadTooLarge(_) => Some(413),
        E::Unavailable(_) => Some(503),
        E::Server { status, .. } => Some(*status),
        _ => None,
    };
    SendError {
        status,
        message: ErrorChain(error).to_string(),
    }
}
