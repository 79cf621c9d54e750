use crate::constants::{
    ALTERNATIVE_BUSINESS_KEY, QUESTIONNAIRE_RESPONSE, RECEIVED_TASKS, START_TASK, TARGET, TARGETS,
};
use crate::ProcessError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a message goes: an organisation and one of its endpoints, and the correlation key
/// its reply will carry (multi-instance sends). Serialised with the Java DSF's field names,
/// so BPMN expressions such as `${target.correlationKey}` work unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The organisation's identifier value (`http://dsf.dev/sid/organization-identifier`).
    pub organization_identifier_value: String,
    /// The endpoint's identifier value (`http://dsf.dev/sid/endpoint-identifier`).
    pub endpoint_identifier_value: String,
    /// The endpoint's FHIR base URL, where the Task is created.
    pub endpoint_url: String,
    /// Set for multi-instance sends: the reply carries it, so it reaches this target's branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_key: Option<String>,
}

impl Target {
    /// A target without a correlation key.
    pub fn new(organization: &str, endpoint: &str, endpoint_url: &str) -> Self {
        Target {
            organization_identifier_value: organization.to_owned(),
            endpoint_identifier_value: endpoint.to_owned(),
            endpoint_url: endpoint_url.to_owned(),
            correlation_key: None,
        }
    }

    /// The same target with a fresh random correlation key.
    pub fn with_new_correlation_key(mut self) -> Self {
        self.correlation_key = Some(uuid::Uuid::new_v4().to_string());
        self
    }
}

/// The targets of a multi-instance send; BPMN iterates them with
/// `camunda:collection="${targets.entries}" camunda:elementVariable="target"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// The targets, in the order the sends run.
    pub entries: Vec<Target>,
}

/// Where variables live: the engine implements it over a running instance. Reads see the
/// element's scope and its parents; `set` writes where the name already lives (else on the
/// instance), `set_local` on the element's own scope.
pub trait VariableScope: Send + Sync {
    /// The variable `name` as seen from here, inner scopes over outer.
    fn get(&self, name: &str) -> Option<Value>;
    /// Every variable visible here (what a handler in another process is handed).
    fn variables(&self) -> Map<String, Value>;
    /// Sets `name` where it already lives, else on the instance.
    fn set(&mut self, name: &str, value: Value);
    /// Sets `name` on the element's own scope.
    fn set_local(&mut self, name: &str, value: Value);
}

/// A handler's typed view of the instance's variables, its Tasks and its fields.
pub struct Variables<'a> {
    scope: &'a mut dyn VariableScope,
    business_key: Option<&'a str>,
    instance_id: &'a str,
    element_id: &'a str,
    fields: &'a Map<String, Value>,
}

impl<'a> Variables<'a> {
    /// For the engine, and for plugin authors testing a handler with a scope of their own.
    pub fn new(
        scope: &'a mut dyn VariableScope,
        business_key: Option<&'a str>,
        instance_id: &'a str,
        element_id: &'a str,
        fields: &'a Map<String, Value>,
    ) -> Self {
        Variables {
            scope,
            business_key,
            instance_id,
            element_id,
            fields,
        }
    }

    /// The instance's business key, once it has one.
    pub fn business_key(&self) -> Option<&str> {
        self.business_key
    }

    /// The process instance the handler runs in.
    pub fn instance_id(&self) -> &str {
        self.instance_id
    }

    /// The BPMN element the handler runs for.
    pub fn element_id(&self) -> &str {
        self.element_id
    }

    /// A `camunda:field` value of the element (expressions already evaluated).
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// A `camunda:field` value that is text.
    pub fn field_str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// Every `camunda:field` value of the element.
    pub fn fields(&self) -> &Map<String, Value> {
        self.fields
    }

    /// Every variable visible to the handler, by name.
    pub fn all(&self) -> Map<String, Value> {
        self.scope.variables()
    }

    /// The variable `name`, inner scopes over outer.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.scope.get(name)
    }

    /// Sets `name` where it already lives, else on the instance.
    pub fn set(&mut self, name: &str, value: Value) {
        self.scope.set(name, value);
    }

    /// Sets `name` on the element's own scope: it is gone when the element ends.
    pub fn set_local(&mut self, name: &str, value: Value) {
        self.scope.set_local(name, value);
    }

    /// The variable `name` if it is text.
    pub fn get_string(&self, name: &str) -> Option<String> {
        match self.scope.get(name)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Sets `name` to text, as [`Variables::set`].
    pub fn set_string(&mut self, name: &str, value: &str) {
        self.set(name, Value::String(value.to_owned()));
    }

    /// The variable `name` if it is a boolean.
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        self.scope.get(name)?.as_bool()
    }

    /// Sets `name` to a boolean, as [`Variables::set`].
    pub fn set_bool(&mut self, name: &str, value: bool) {
        self.set(name, Value::Bool(value));
    }

    /// The variable `name` if it is an integer.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.scope.get(name)?.as_i64()
    }

    /// Sets `name` to an integer, as [`Variables::set`].
    pub fn set_i64(&mut self, name: &str, value: i64) {
        self.set(name, Value::from(value));
    }

    /// The variable `name` if it is a number.
    pub fn get_f64(&self, name: &str) -> Option<f64> {
        self.scope.get(name)?.as_f64()
    }

    /// Sets `name` to a number, as [`Variables::set`].
    pub fn set_f64(&mut self, name: &str, value: f64) {
        self.set(name, Value::from(value));
    }

    /// A date-time, stored as RFC 3339 text (what BPMN timer expressions read).
    pub fn get_date_time(&self, name: &str) -> Option<time::OffsetDateTime> {
        let text = self.get_string(name)?;
        time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).ok()
    }

    /// Sets `name` to a date-time as RFC 3339 text, as [`Variables::set`].
    pub fn set_date_time(&mut self, name: &str, value: time::OffsetDateTime) {
        if let Ok(text) = value.format(&time::format_description::well_known::Rfc3339) {
            self.set(name, Value::String(text));
        }
    }

    /// Any serde value, e.g. a struct of the plugin's own.
    pub fn get_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ProcessError> {
        match self.scope.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v).map(Some).map_err(|e| {
                ProcessError::failed(format!("variable '{name}' has the wrong shape: {e}"))
            }),
        }
    }

    /// Sets `name` to any serde value, as [`Variables::set`]; fails if it does not serialise.
    pub fn set_json<T: Serialize>(&mut self, name: &str, value: &T) -> Result<(), ProcessError> {
        let value = serde_json::to_value(value)?;
        self.set(name, value);
        Ok(())
    }

    /// A FHIR resource kept in a variable (JSON).
    pub fn get_resource(&self, name: &str) -> Option<Value> {
        self.scope
            .get(name)
            .filter(|v| v.get("resourceType").is_some())
    }

    /// Keeps a FHIR resource (JSON) in `name`, as [`Variables::set`].
    pub fn set_resource(&mut self, name: &str, resource: Value) {
        self.set(name, resource);
    }

    /// The `target` variable: where the next message send goes.
    pub fn target(&self) -> Result<Option<Target>, ProcessError> {
        self.get_json(TARGET)
    }

    /// Sets the `target` variable.
    pub fn set_target(&mut self, target: &Target) -> Result<(), ProcessError> {
        self.set_json(TARGET, target)
    }

    /// The `targets` variable of a multi-instance send (empty when unset).
    pub fn targets(&self) -> Result<Targets, ProcessError> {
        Ok(self.get_json(TARGETS)?.unwrap_or_default())
    }

    /// Sets the `targets` variable.
    pub fn set_targets(&mut self, targets: &Targets) -> Result<(), ProcessError> {
        self.set_json(TARGETS, targets)
    }

    /// Replies to messages this instance sends are then correlated by `key` instead of the
    /// business key (the Java DSF's `alternativeBusinessKey`).
    pub fn set_alternative_business_key(&mut self, key: &str) {
        self.set_string(ALTERNATIVE_BUSINESS_KEY, key);
    }

    /// The Task that started the instance, as the engine will write it back.
    pub fn start_task(&self) -> Option<Value> {
        self.get_resource(START_TASK)
    }

    /// The start Task, or the failure a handler that needs one ends with.
    pub fn start_task_or_fail(&self) -> Result<Value, ProcessError> {
        self.start_task()
            .ok_or_else(|| ProcessError::failed("the instance has no start Task"))
    }

    /// Tasks received by message catch events and receive tasks, oldest first.
    pub fn received_tasks(&self) -> Vec<Value> {
        match self.scope.get(RECEIVED_TASKS) {
            Some(Value::Array(tasks)) => tasks,
            _ => Vec::new(),
        }
    }

    /// The most recently received Task, else the start Task.
    pub fn latest_task(&self) -> Option<Value> {
        self.received_tasks().pop().or_else(|| self.start_task())
    }

    /// Replaces the stored copy of a Task (same id) after the handler changed it, e.g. added
    /// outputs: the engine writes that copy when it completes the Task.
    pub fn update_task(&mut self, task: Value) -> Result<(), ProcessError> {
        let id = task.get("id").and_then(Value::as_str).map(str::to_owned);
        let Some(id) = id else {
            return Err(ProcessError::failed("update_task: the Task has no id"));
        };
        if self
            .start_task()
            .is_some_and(|t| t.get("id").and_then(Value::as_str) == Some(id.as_str()))
        {
            self.set(START_TASK, task);
            return Ok(());
        }
        let mut received = self.received_tasks();
        match received
            .iter_mut()
            .find(|t| t.get("id").and_then(Value::as_str) == Some(id.as_str()))
        {
            Some(slot) => *slot = task,
            None => {
                return Err(ProcessError::failed(format!(
                    "update_task: Task/{id} is not a Task of this instance"
                )))
            }
        }
        self.set(RECEIVED_TASKS, Value::Array(received));
        Ok(())
    }

    /// The QuestionnaireResponse that completed the latest user task.
    pub fn questionnaire_response(&self) -> Option<Value> {
        self.get_resource(QUESTIONNAIRE_RESPONSE)
    }
}

/// A scope over a plain map, for tests of handlers and for tools.
impl VariableScope for Map<String, Value> {
    fn get(&self, name: &str) -> Option<Value> {
        Map::get(self, name).cloned()
    }

    fn variables(&self) -> Map<String, Value> {
        self.clone()
    }

    fn set(&mut self, name: &str, value: Value) {
        self.insert(name.to_owned(), value);
    }

    fn set_local(&mut self, name: &str, value: Value) {
        self.insert(name.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_serialise_as_the_java_dsf_does() {
        let t = Target::new("org.a", "ep.a", "https://a/fhir");
        let v = serde_json::to_value(Targets { entries: vec![t] }).unwrap();
        assert_eq!(
            v,
            json!({"entries": [{"organizationIdentifierValue": "org.a",
                "endpointIdentifierValue": "ep.a", "endpointUrl": "https://a/fhir"}]})
        );
    }

    #[test]
    fn typed_variables_and_task_updates() {
        let mut map = Map::new();
        map.insert(
            START_TASK.into(),
            json!({"resourceType": "Task", "id": "1"}),
        );
        let fields = Map::new();
        let mut vars = Variables::new(&mut map, Some("bk"), "i", "e", &fields);
        vars.set_i64("n", 3);
        vars.set_bool("b", true);
        assert_eq!(vars.get_i64("n"), Some(3));
        assert_eq!(vars.get_bool("b"), Some(true));
        assert_eq!(vars.get_string("n"), None);
        let mut task = vars.start_task().unwrap();
        task["output"] = json!([]);
        vars.update_task(task.clone()).unwrap();
        assert_eq!(vars.start_task(), Some(task));
        assert!(vars
            .update_task(json!({"resourceType": "Task", "id": "2"}))
            .is_err());
        assert!(vars.get_json::<Target>("n").is_err());
        let now = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        vars.set_date_time("d", now);
        assert_eq!(vars.get_date_time("d"), Some(now));
    }
}
