//! Reading and writing Task inputs and outputs, and the read-access tags of resources.

use crate::constants::{BPMN_MESSAGE, BUSINESS_KEY, CORRELATION_KEY, MESSAGE_NAME};
use serde_json::{json, Value};

/// Each input coded `system|code`, whole (type and value).
pub fn inputs<'a>(task: &'a Value, system: &str, code: &str) -> Vec<&'a Value> {
    parameters(task, "input", system, code)
}

/// The first input coded `system|code` with a `valueString`.
pub fn input_string<'a>(task: &'a Value, system: &str, code: &str) -> Option<&'a str> {
    inputs(task, system, code)
        .into_iter()
        .find_map(|p| p["valueString"].as_str())
}

/// The first output coded `system|code` with a `valueString`.
pub fn output_string<'a>(task: &'a Value, system: &str, code: &str) -> Option<&'a str> {
    parameters(task, "output", system, code)
        .into_iter()
        .find_map(|p| p["valueString"].as_str())
}

/// Each output coded `system|code`, whole (type, value and extensions).
pub fn outputs<'a>(task: &'a Value, system: &str, code: &str) -> Vec<&'a Value> {
    parameters(task, "output", system, code)
}

fn parameters<'a>(task: &'a Value, kind: &str, system: &str, code: &str) -> Vec<&'a Value> {
    task[kind]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["type"]["coding"].as_array().is_some_and(|codings| {
                codings.iter().any(|c| {
                    c["system"].as_str() == Some(system) && c["code"].as_str() == Some(code)
                })
            })
        })
        .collect()
}

/// An input or output coded `system|code` with one value, e.g.
/// `parameter(sys, code, "valueString", json!("x"))`.
pub fn parameter(system: &str, code: &str, value_key: &str, value: Value) -> Value {
    let mut p = json!({"type": {"coding": [{"system": system, "code": code}]}});
    p[value_key] = value;
    p
}

/// Adds an output to the Task.
pub fn add_output(task: &mut Value, output: Value) {
    match task.get_mut("output").and_then(Value::as_array_mut) {
        Some(outputs) => outputs.push(output),
        None => task["output"] = Value::Array(vec![output]),
    }
}

/// The Task's `message-name` input.
pub fn message_name(task: &Value) -> Option<&str> {
    input_string(task, BPMN_MESSAGE, MESSAGE_NAME)
}

/// The Task's `business-key` input.
pub fn business_key(task: &Value) -> Option<&str> {
    input_string(task, BPMN_MESSAGE, BUSINESS_KEY)
}

/// The Task's `correlation-key` input.
pub fn correlation_key(task: &Value) -> Option<&str> {
    input_string(task, BPMN_MESSAGE, CORRELATION_KEY)
}

/// The identifier value of `Task.requester` (the sending organisation).
pub fn requester(task: &Value) -> Option<&str> {
    task["requester"]["identifier"]["value"].as_str()
}

/// The read-access tag system of the DSF.
pub const READ_ACCESS_TAG: &str = "http://dsf.dev/fhir/CodeSystem/read-access-tag";

/// `meta.tag` read-access tag `ALL`: every allow-listed organisation may read the resource.
pub fn tag_all() -> Value {
    json!({"system": READ_ACCESS_TAG, "code": "ALL"})
}

/// `meta.tag` read-access tag `LOCAL`: only the local organisation may read it.
pub fn tag_local() -> Value {
    json!({"system": READ_ACCESS_TAG, "code": "LOCAL"})
}

/// `meta.tag` read-access tag `ORGANIZATION` for one organisation.
pub fn tag_organization(organization: &str) -> Value {
    json!({
        "system": READ_ACCESS_TAG,
        "code": "ORGANIZATION",
        "extension": [{
            "url": "http://dsf.dev/fhir/StructureDefinition/extension-read-access-organization",
            "valueIdentifier": {"system": crate::constants::ORGANIZATION_IDENTIFIER, "value": organization},
        }],
    })
}

/// Adds a tag to `meta.tag`.
pub fn add_tag(resource: &mut Value, tag: Value) {
    match resource
        .pointer_mut("/meta/tag")
        .and_then(Value::as_array_mut)
    {
        Some(tags) => tags.push(tag),
        None => resource["meta"]["tag"] = Value::Array(vec![tag]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_outputs() {
        let mut task = json!({"resourceType": "Task", "input": [
            parameter(BPMN_MESSAGE, MESSAGE_NAME, "valueString", json!("ping")),
            parameter(BPMN_MESSAGE, BUSINESS_KEY, "valueString", json!("bk")),
        ]});
        assert_eq!(message_name(&task), Some("ping"));
        assert_eq!(business_key(&task), Some("bk"));
        assert_eq!(correlation_key(&task), None);
        add_output(&mut task, parameter("s", "c", "valueString", json!("v")));
        assert_eq!(output_string(&task, "s", "c"), Some("v"));
        let mut resource = json!({"resourceType": "Binary"});
        add_tag(&mut resource, tag_local());
        add_tag(&mut resource, tag_organization("org.a"));
        assert_eq!(resource["meta"]["tag"].as_array().map(Vec::len), Some(2));
    }
}
