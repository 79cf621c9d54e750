//! Plugin handlers seen through dsf-bpmn's handler interface: variables mapped onto the running
//! instance, message sends performed by the engine, user task QuestionnaireResponses created.

use crate::outgoing;
use crate::scope::{now_instant, with_vars};
use crate::services::Services;
use async_trait::async_trait;
use dsf_bpmn::engine::{HandlerContext, HandlerError};
use dsf_plugin_api::{constants, Handler, ProcessError, UserTaskListener};
use serde_json::{json, Value};
use std::sync::Arc;

/// The name the engine's own user task listener is bound to.
pub(crate) const DEFAULT_USER_TASK_LISTENER: &str = "dsf.engine.DefaultUserTaskListener";

/// The field the engine gives every user task's `create` listener: the task's
/// `camunda:formKey` (the Questionnaire's `url|version`).
pub(crate) const FORM_KEY_FIELD: &str = "formKey";

pub(crate) fn to_handler_error(error: ProcessError) -> HandlerError {
    match error {
        ProcessError::Bpmn { code, message } => HandlerError::Bpmn { code, message },
        other => HandlerError::Failed(other.describe()),
    }
}

struct Adapter {
    handler: Handler,
    services: Arc<Services>,
}

pub(crate) fn adapter(
    handler: Handler,
    services: Arc<Services>,
) -> impl dsf_bpmn::engine::ElementHandler {
    Adapter { handler, services }
}

#[async_trait]
impl dsf_bpmn::engine::ElementHandler for Adapter {
    /// Plugin code that panics fails the instance like any other failure (its Tasks become
    /// failed with the reason) instead of leaving them in progress for ever.
    async fn execute(&self, context: &mut HandlerContext<'_>) -> Result<(), HandlerError> {
        use futures_util::FutureExt;
        let element = context.element_id.to_owned();
        let started = std::time::Instant::now();
        let called = std::panic::AssertUnwindSafe(self.run(context))
            .catch_unwind()
            .await;
        let outcome = match &called {
            Ok(Ok(())) => "ok",
            Ok(Err(HandlerError::Bpmn { .. })) => "bpmn_error",
            Ok(Err(_)) => "failed",
            Err(_) => "panicked",
        };
        self.services
            .metrics
            .plugin_call(self.handler.kind(), outcome, started.elapsed());
        match called {
            Ok(result) => result,
            Err(panic) => {
                let message = dsf_plugin_api::panic_message(panic.as_ref());
                tracing::error!(%element, handler = self.handler.kind(), %message, "plugin handler panicked");
                Err(HandlerError::Failed(format!(
                    "{} handler of '{element}' panicked: {message}",
                    self.handler.kind()
                )))
            }
        }
    }
}

impl Adapter {
    async fn run(&self, context: &mut HandlerContext<'_>) -> Result<(), HandlerError> {
        let api = &self.services.api;
        match &self.handler {
            Handler::ServiceTask(h) => with_vars!(context, vars => h.execute(api, &mut vars).await)
                .map_err(to_handler_error),
            Handler::ExecutionListener(h) => {
                with_vars!(context, vars => h.notify(api, &mut vars).await)
                    .map_err(to_handler_error)
            }
            Handler::MessageSend(h) => outgoing::send(&self.services, h.as_ref(), context)
                .await
                .map_err(to_handler_error),
            Handler::UserTaskListener(h) => {
                create_questionnaire_response(&self.services, h.as_ref(), context)
                    .await
                    .map_err(to_handler_error)
            }
            _ => Err(HandlerError::Failed(format!(
                "handler kind {} is not supported by this engine",
                self.handler.kind()
            ))),
        }
    }
}

struct NoHooks;

impl UserTaskListener for NoHooks {}

pub(crate) fn default_user_task_listener(
    services: Arc<Services>,
) -> impl dsf_bpmn::engine::ElementHandler {
    Adapter {
        handler: Handler::UserTaskListener(Arc::new(NoHooks)),
        services,
    }
}

/// The user task's QuestionnaireResponse, created on the local FHIR server with status
/// `in-progress`: the `business-key` and `user-task-id` items, then one item per question of
/// the Questionnaire the task's `camunda:formKey` names.
async fn create_questionnaire_response(
    services: &Services,
    hooks: &dyn UserTaskListener,
    context: &mut HandlerContext<'_>,
) -> Result<(), ProcessError> {
    let instance_id = context.instance_id.to_owned();
    let node = context.element_id.to_owned();
    if services
        .state
        .has_user_task(&instance_id, &node)
        .await
        .map_err(fail)?
    {
        return Ok(());
    }
    let form_key = context
        .fields
        .get(FORM_KEY_FIELD)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            ProcessError::failed(format!("user task '{node}' has no camunda:formKey"))
        })?;
    let (url, version) = form_key.split_once('|').unwrap_or((&form_key, ""));
    let query = if version.is_empty() {
        format!("url={url}")
    } else {
        format!("url={url}&version={version}")
    };
    let bundle = services
        .api
        .local_client()
        .search("Questionnaire", &query)
        .await?;
    let questionnaire = bundle
        .pointer("/entry/0/resource")
        .cloned()
        .ok_or_else(|| {
            ProcessError::failed(format!(
                "no Questionnaire {form_key} on the local FHIR server"
            ))
        })?;
    let user_task_id = format!("{instance_id}/{node}");
    let mut items = vec![
        json!({"linkId": "business-key", "text": "The business-key of the process execution",
               "answer": [{"valueString": context.business_key.unwrap_or_default()}]}),
        json!({"linkId": "user-task-id", "text": "The user-task-id of the process execution",
               "answer": [{"valueString": user_task_id}]}),
    ];
    for item in questionnaire["item"].as_array().into_iter().flatten() {
        let link = item["linkId"].as_str().unwrap_or_default();
        if link == "business-key" || link == "user-task-id" {
            continue;
        }
        let mut answer_item = json!({"linkId": link});
        if let Some(text) = item.get("text") {
            answer_item["text"] = text.clone();
        }
        if item["type"] != "display" {
            if let Some(placeholder) = placeholder_answer(item["type"].as_str().unwrap_or_default())
            {
                answer_item["answer"] = json!([placeholder]);
            }
        }
        items.push(answer_item);
    }
    let mut response = json!({
        "resourceType": "QuestionnaireResponse",
        "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/questionnaire-response"],
                 "tag": [dsf_plugin_api::task::tag_local()]},
        "questionnaire": form_key,
        "status": "in-progress",
        "authored": now_instant(),
        "author": {"type": "Organization", "identifier": {
            "system": constants::ORGANIZATION_IDENTIFIER, "value": services.api.local_organization()}},
        "item": items,
    });
    with_vars!(context, vars => {
        hooks.before_create(&services.api, &mut vars, &mut response).await?;
        let created: Value = services.api.local_client().create(&response).await?;
        let id = created["id"].as_str().unwrap_or_default().to_owned();
        services
            .state
            .add_user_task(&id, &instance_id, &node)
            .await
            .map_err(fail)?;
        hooks.after_create(&services.api, &mut vars, &created).await
    })
}

/// A placeholder answer of the type a question asks for, as the Java BPE fills them.
fn placeholder_answer(question_type: &str) -> Option<Value> {
    Some(match question_type {
        "string" | "text" => json!({"valueString": "placeholder"}),
        "integer" => json!({"valueInteger": 0}),
        "decimal" => json!({"valueDecimal": 0}),
        "boolean" => json!({"valueBoolean": false}),
        "date" => json!({"valueDate": "1900-01-01"}),
        "dateTime" => json!({"valueDateTime": "1900-01-01T00:00:00.000Z"}),
        "time" => json!({"valueTime": "00:00:00"}),
        "url" => json!({"valueUri": "http://example.org/fhir/placeholder"}),
        "reference" => {
            json!({"valueReference": {"reference": "http://example.org/fhir/Placeholder/id"}})
        }
        "choice" | "open-choice" | "coding" => {
            json!({"valueCoding": {"system": "http://example.org/fhir/CodeSystem/placeholder", "code": "placeholder"}})
        }
        _ => return None,
    })
}

fn fail(error: crate::Error) -> ProcessError {
    ProcessError::failed_by("BPE", error)
}
