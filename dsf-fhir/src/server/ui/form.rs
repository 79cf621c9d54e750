//! The two forms of the browser pages, as fields to render and as the FHIR resource a
//! submitted form becomes: starting a process from its draft Task (one field per input, by
//! its value type) and answering a user task (one field per question of the Questionnaire
//! behind the QuestionnaireResponse, required questions enforced).

use crate::Error;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// One field of a form.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Field {
    /// The form field's name (`input-<n>`, `item-<n>`).
    pub name: String,
    pub label: String,
    /// `text`, `textarea`, `number`, `date`, `url`, `checkbox`, `yes-no` or `fixed` (shown, not
    /// editable).
    pub kind: &'static str,
    /// The `step` of a number field: `1` or `any`.
    pub step: &'static str,
    pub value: String,
    pub required: bool,
    /// A hint at the expected form (`system|value`, `Type/id`).
    pub hint: &'static str,
}

/// Draft Task inputs that carry the message, not data: shown, never edited.
const FIXED_INPUTS: [&str; 3] = ["message-name", "business-key", "correlation-key"];

/// Questionnaire items the BPE fills in itself.
const FIXED_ITEMS: [&str; 2] = ["business-key", "user-task-id"];

fn value_entry(parameter: &Value) -> Option<(&str, &Value)> {
    parameter
        .as_object()?
        .iter()
        .find(|(k, _)| k.starts_with("value"))
        .map(|(k, v)| (k.as_str(), v))
}

fn code_of(parameter: &Value) -> String {
    parameter
        .pointer("/type/coding/0/code")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `system|value` of an identifier (or `system|code` of a coding).
fn pair(value: &Value, second: &str) -> String {
    format!(
        "{}|{}",
        value
            .get("system")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        value
            .get(second)
            .and_then(Value::as_str)
            .unwrap_or_default()
    )
}

/// The kind, step and hint of a field for a FHIR value type (`String`, `Boolean`, …).
fn kind_of(value_type: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match value_type {
        "String" | "Id" | "Code" | "Oid" | "Markdown" => ("text", "", ""),
        "Boolean" => ("checkbox", "", ""),
        "Integer" | "PositiveInt" | "UnsignedInt" => ("number", "1", ""),
        "Decimal" => ("number", "any", ""),
        "Date" => ("date", "", ""),
        "DateTime" | "Instant" => ("text", "", "2026-12-31T12:00:00Z"),
        "Url" | "Uri" | "Canonical" => ("url", "", ""),
        "Reference" => ("text", "", "Type/id or system|value"),
        "Identifier" | "Coding" => ("text", "", "system|value"),
        _ => return None,
    })
}

/// The fields of the start form of a draft Task: its inputs in order.
pub(crate) fn start_fields(task: &Value) -> Vec<Field> {
    crate::access::array_at(task, "input")
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let code = code_of(input);
            let (key, value) = value_entry(input).unwrap_or(("value", &Value::Null));
            let value_type = key.trim_start_matches("value");
            let shown = match (value_type, value) {
                (_, Value::String(s)) => s.clone(),
                (_, Value::Bool(b)) => b.to_string(),
                (_, Value::Number(n)) => n.to_string(),
                ("Reference", v) if v.get("reference").is_some() => v
                    .get("reference")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                ("Reference", v) => v
                    .get("identifier")
                    .map_or(String::new(), |i| pair(i, "value")),
                ("Coding", v) => pair(v, "code"),
                ("Identifier", v) => pair(v, "value"),
                (_, v) => v.to_string(),
            };
            let (kind, step, hint) = if FIXED_INPUTS.contains(&code.as_str()) {
                ("fixed", "", "")
            } else {
                kind_of(value_type).unwrap_or(("fixed", "", ""))
            };
            Field {
                name: format!("input-{index}"),
                label: code,
                kind,
                step,
                value: shown,
                required: kind != "checkbox" && kind != "fixed",
                hint,
            }
        })
        .collect()
}

/// A submitted form's fields.
pub(crate) type Submitted = [(String, String)];

fn submitted<'a>(form: &'a Submitted, name: &str) -> Option<&'a str> {
    form.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim())
}

fn invalid(label: &str, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{label}: {why}"))
}

/// The FHIR value `text` is for type `value_type`.
fn parse_value(value_type: &str, text: &str, label: &str) -> Result<Value, Error> {
    Ok(match value_type {
        "Boolean" => Value::Bool(matches!(text, "on" | "true" | "yes")),
        "Integer" | "PositiveInt" | "UnsignedInt" => json!(text
            .parse::<i64>()
            .map_err(|_| invalid(label, "not a whole number"))?),
        "Decimal" => {
            let number: f64 = text.parse().map_err(|_| invalid(label, "not a number"))?;
            if !number.is_finite() {
                return Err(invalid(label, "not a number"));
            }
            json!(number)
        }
        "Date" => {
            crate::date::parse_date_range(text).ok_or_else(|| invalid(label, "not a date"))?;
            json!(text)
        }
        "DateTime" | "Instant" => {
            crate::date::parse_date_range(text)
                .ok_or_else(|| invalid(label, "not a date and time"))?;
            json!(text)
        }
        "Url" | "Uri" | "Canonical" => {
            if text.contains(char::is_whitespace) {
                return Err(invalid(label, "a URL has no spaces"));
            }
            json!(text)
        }
        "Reference" => match text.split_once('|') {
            Some((system, value)) => {
                json!({"identifier": {"system": system, "value": value}})
            }
            None => json!({"reference": text}),
        },
        "Identifier" => {
            let (system, value) = text
                .split_once('|')
                .ok_or_else(|| invalid(label, "write system|value"))?;
            json!({"system": system, "value": value})
        }
        "Coding" => {
            let (system, code) = text
                .split_once('|')
                .ok_or_else(|| invalid(label, "write system|code"))?;
            json!({"system": system, "code": code})
        }
        _ => json!(text),
    })
}

/// The Task a start form asks for: the draft's copy, `requested` by `requester` now, with
/// the submitted input values (an emptied one left out), no id and no draft identifier.
pub(crate) fn task_from_form(
    draft: &Value,
    form: &Submitted,
    requester: Value,
    now: &str,
) -> Result<Value, Error> {
    let mut task = draft.clone();
    let object = task
        .as_object_mut()
        .ok_or_else(|| Error::Invalid("the draft Task is no object".into()))?;
    for key in ["id", "identifier", "text"] {
        object.remove(key);
    }
    if let Some(meta) = object.get_mut("meta").and_then(Value::as_object_mut) {
        meta.retain(|k, _| k == "profile" || k == "tag");
    }
    object.insert("status".into(), json!("requested"));
    object.insert("authoredOn".into(), json!(now));
    object.insert("requester".into(), requester);
    let inputs = crate::access::array_at(draft, "input");
    let mut filled = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let code = code_of(input);
        let Some((key, _)) = value_entry(input) else {
            filled.push(input.clone());
            continue;
        };
        let value_type = key.trim_start_matches("value");
        if FIXED_INPUTS.contains(&code.as_str()) || kind_of(value_type).is_none() {
            filled.push(input.clone());
            continue;
        }
        let text = submitted(form, &format!("input-{index}")).unwrap_or("");
        if text.is_empty() && value_type != "Boolean" {
            continue;
        }
        let mut input = input.clone();
        if let Some(map) = input.as_object_mut() {
            map.remove(key);
            map.insert(key.to_owned(), parse_value(value_type, text, &code)?);
        }
        filled.push(input);
    }
    object.insert("input".into(), Value::Array(filled));
    Ok(task)
}

/// The answer type of a questionnaire item type.
fn answer_type(item_type: &str) -> Option<&'static str> {
    Some(match item_type {
        "string" => "String",
        "text" => "String",
        "boolean" => "Boolean",
        "integer" => "Integer",
        "decimal" => "Decimal",
        "date" => "Date",
        "dateTime" => "DateTime",
        "time" => "Time",
        "url" => "Uri",
        "reference" => "Reference",
        _ => return None,
    })
}

fn answer_text(response: &Value, link_id: &str) -> String {
    crate::access::array_at(response, "item")
        .iter()
        .find(|i| i.get("linkId").and_then(Value::as_str) == Some(link_id))
        .and_then(|i| i.pointer("/answer/0"))
        .and_then(value_entry)
        .map(|(_, v)| match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Object(_) if v.get("reference").is_some() => {
                v["reference"].as_str().unwrap_or_default().to_owned()
            }
            Value::Object(_) => v
                .get("identifier")
                .map_or(String::new(), |i| pair(i, "value")),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// The fields of a user task's form: the Questionnaire's questions, the answers the
/// response holds as their values, except the BPE's placeholders.
pub(crate) fn answer_fields(questionnaire: &Value, response: &Value) -> Vec<Field> {
    crate::access::array_at(questionnaire, "item")
        .iter()
        .enumerate()
        .filter_map(|(index, item)| {
            let link_id = item.get("linkId").and_then(Value::as_str)?;
            let label = item
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or(link_id)
                .to_owned();
            let item_type = item.get("type").and_then(Value::as_str).unwrap_or_default();
            let required = item.get("required").and_then(Value::as_bool) == Some(true);
            let current = answer_text(response, link_id);
            let fixed = FIXED_ITEMS.contains(&link_id) || item_type == "display";
            let (kind, step, hint) = match (fixed, item_type) {
                (true, _) => ("fixed", "", ""),
                (false, "text") => ("textarea", "", ""),
                (false, "boolean") => ("yes-no", "", ""),
                (false, t) => answer_type(t)
                    .and_then(kind_of)
                    .unwrap_or(("fixed", "", "")),
            };
            // The BPE fills every question with a placeholder; people should not have to
            // delete it.
            let value = match current.as_str() {
                "placeholder" | "0" | "false" | "1970-01-01" | "http://example.org" if !fixed => {
                    String::new()
                }
                _ => current,
            };
            Some(Field {
                name: format!("item-{index}"),
                label,
                kind,
                step,
                value,
                required: required && kind != "fixed",
                hint,
            })
        })
        .collect()
}

/// The completed QuestionnaireResponse an answer form makes: every question's answer from the
/// form (an unanswered optional one without answer), `author` the caller, `authored` now.
/// Unanswered required questions are refused together.
pub(crate) fn response_from_form(
    questionnaire: &Value,
    response: &Value,
    form: &Submitted,
    author: Value,
    now: &str,
) -> Result<Value, Error> {
    let mut answers: Map<String, Value> = Map::new();
    let mut missing = Vec::new();
    for (index, item) in crate::access::array_at(questionnaire, "item")
        .iter()
        .enumerate()
    {
        let Some(link_id) = item.get("linkId").and_then(Value::as_str) else {
            continue;
        };
        let item_type = item.get("type").and_then(Value::as_str).unwrap_or_default();
        if FIXED_ITEMS.contains(&link_id) || item_type == "display" {
            continue;
        }
        let Some(value_type) = answer_type(item_type) else {
            continue;
        };
        let label = item.get("text").and_then(Value::as_str).unwrap_or(link_id);
        let text = submitted(form, &format!("item-{index}")).unwrap_or("");
        if text.is_empty() {
            if item.get("required").and_then(Value::as_bool) == Some(true) {
                missing.push(label.to_owned());
            }
            answers.insert(link_id.to_owned(), Value::Null);
            continue;
        }
        let value = match value_type {
            "Boolean" => match text {
                "true" | "yes" => json!(true),
                "false" | "no" => json!(false),
                _ => return Err(invalid(label, "answer yes or no")),
            },
            other => parse_value(other, text, label)?,
        };
        answers.insert(
            link_id.to_owned(),
            json!([{ format!("value{value_type}"): value }]),
        );
    }
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "required questions not answered: {}",
            missing.join(", ")
        )));
    }
    let mut completed = response.clone();
    let object = completed
        .as_object_mut()
        .ok_or_else(|| Error::Invalid("the QuestionnaireResponse is no object".into()))?;
    let mut items: Vec<Value> = crate::access::array_at(response, "item").to_vec();
    for item in &mut items {
        let Some(link_id) = item
            .get("linkId")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            continue;
        };
        if let (Some(answer), Some(map)) = (answers.remove(&link_id), item.as_object_mut()) {
            match answer {
                Value::Null => map.remove("answer"),
                answer => map.insert("answer".into(), answer),
            };
        }
    }
    // Questions the response lacked (a Questionnaire changed since) are added at the end.
    for (link_id, answer) in answers {
        if !answer.is_null() {
            items.push(json!({"linkId": link_id, "answer": answer}));
        }
    }
    object.insert("item".into(), Value::Array(items));
    object.insert("status".into(), json!("completed"));
    object.insert("author".into(), author);
    object.insert("authored".into(), json!(now));
    Ok(completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn questionnaire() -> Value {
        json!({"resourceType": "Questionnaire", "item": [
            {"linkId": "business-key", "type": "string", "required": true},
            {"linkId": "user-task-id", "type": "string", "required": true},
            {"linkId": "greeting", "type": "string", "text": "Greeting", "required": true},
            {"linkId": "approve", "type": "boolean", "text": "Approve?", "required": true},
            {"linkId": "count", "type": "integer", "text": "Count"},
            {"linkId": "when", "type": "date", "text": "When"},
            {"linkId": "note", "type": "display", "text": "Read this"}
        ]})
    }

    fn response() -> Value {
        json!({"resourceType": "QuestionnaireResponse", "id": "r1", "status": "in-progress",
        "item": [
            {"linkId": "business-key", "answer": [{"valueString": "bk"}]},
            {"linkId": "user-task-id", "answer": [{"valueString": "u"}]},
            {"linkId": "greeting", "answer": [{"valueString": "placeholder"}]},
            {"linkId": "approve", "answer": [{"valueBoolean": false}]},
            {"linkId": "count", "answer": [{"valueInteger": 0}]},
            {"linkId": "when", "answer": [{"valueDate": "1970-01-01"}]}
        ]})
    }

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn answer_fields_follow_the_questionnaire_without_placeholders() {
        let fields = answer_fields(&questionnaire(), &response());
        let kinds: Vec<_> = fields.iter().map(|f| (f.name.as_str(), f.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("item-0", "fixed"),
                ("item-1", "fixed"),
                ("item-2", "text"),
                ("item-3", "yes-no"),
                ("item-4", "number"),
                ("item-5", "date"),
                ("item-6", "fixed")
            ]
        );
        assert_eq!(fields[0].value, "bk");
        assert_eq!(fields[2].value, "");
        assert!(fields[2].required && !fields[0].required && !fields[4].required);
    }

    #[test]
    fn required_questions_are_enforced_and_answers_typed() {
        let author = json!({"type": "Practitioner"});
        let missing = response_from_form(
            &questionnaire(),
            &response(),
            &form(&[("item-2", " "), ("item-4", "3")]),
            author.clone(),
            "2026-12-06T00:00:00Z",
        )
        .expect_err("required questions unanswered");
        assert!(
            missing.to_string().contains("Greeting, Approve?"),
            "{missing}"
        );
        let bad = response_from_form(
            &questionnaire(),
            &response(),
            &form(&[("item-2", "hi"), ("item-3", "yes"), ("item-4", "three")]),
            author.clone(),
            "2026-12-06T00:00:00Z",
        )
        .expect_err("not a number");
        assert!(bad.to_string().contains("Count"), "{bad}");
        let done = response_from_form(
            &questionnaire(),
            &response(),
            &form(&[
                ("item-2", "Hello"),
                ("item-3", "yes"),
                ("item-4", "3"),
                ("item-5", ""),
            ]),
            author,
            "2026-12-06T00:00:00Z",
        )
        .expect("answered");
        assert_eq!(done["status"], "completed");
        assert_eq!(done["item"][2]["answer"][0]["valueString"], "Hello");
        assert_eq!(done["item"][3]["answer"][0]["valueBoolean"], true);
        assert_eq!(done["item"][4]["answer"][0]["valueInteger"], 3);
        assert!(done["item"][5].get("answer").is_none());
        assert_eq!(done["item"][0]["answer"][0]["valueString"], "bk");
    }

    #[test]
    fn a_start_form_fills_the_draft_inputs() {
        let draft = json!({"resourceType": "Task", "id": "d", "status": "draft",
        "meta": {"versionId": "1", "profile": ["p"]},
        "identifier": [{"system": "http://dsf.dev/sid/task-identifier", "value": "x"}],
        "input": [
            {"type": {"coding": [{"code": "message-name"}]}, "valueString": "startPing"},
            {"type": {"coding": [{"code": "target"}]}, "valueReference": {"identifier": {"system": "s", "value": "v"}}},
            {"type": {"coding": [{"code": "size"}]}, "valueDecimal": 1.5},
            {"type": {"coding": [{"code": "flag"}]}, "valueBoolean": true}
        ]});
        let fields = start_fields(&draft);
        assert_eq!(fields[0].kind, "fixed");
        assert_eq!(fields[1].value, "s|v");
        assert_eq!((fields[2].kind, fields[2].step), ("number", "any"));
        let task = task_from_form(
            &draft,
            &form(&[
                ("input-0", "evil"),
                ("input-1", "Organization/o1"),
                ("input-2", "2.5"),
            ]),
            json!({"type": "Organization"}),
            "2026-12-06T00:00:00Z",
        )
        .expect("task");
        assert_eq!(task["status"], "requested");
        assert!(task.get("id").is_none() && task.get("identifier").is_none());
        assert_eq!(task["meta"], json!({"profile": ["p"]}));
        assert_eq!(task["input"][0]["valueString"], "startPing");
        assert_eq!(
            task["input"][1]["valueReference"]["reference"],
            "Organization/o1"
        );
        assert_eq!(task["input"][2]["valueDecimal"], 2.5);
        // An unticked box is false.
        assert_eq!(task["input"][3]["valueBoolean"], false);
        assert!(task_from_form(&draft, &form(&[("input-2", "NaN")]), json!({}), "t").is_err());
    }
}
