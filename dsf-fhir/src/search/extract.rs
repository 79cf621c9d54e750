//! Turns a resource's JSON into the index rows its search parameters are answered from.

use super::params::{
    public_params, ParamKind, SearchParam, THUMBPRINT_EXTENSION, THUMBPRINT_PARAM,
};
use crate::date::parse_date_range;
use crate::reference::normalise_reference;
use serde_json::Value;

/// One searchable value of one parameter. Which columns are set depends on the kind:
/// tokens use `system` and `value`; strings `value` and `norm` (lower case); uris, canonicals
/// and references `value`; dates `low` and `high`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRow {
    /// The search parameter's name.
    pub param: String,
    /// A token's system.
    pub system: Option<String>,
    /// The value: a token's code, a string, uri or reference.
    pub value: Option<String>,
    /// A string's value in lower case, for case-insensitive matching.
    pub norm: Option<String>,
    /// A date's first millisecond.
    pub low: Option<i64>,
    /// The first millisecond after a date.
    pub high: Option<i64>,
}

impl IndexRow {
    fn text(param: &str, value: String) -> Self {
        IndexRow {
            param: param.to_owned(),
            system: None,
            value: Some(value),
            norm: None,
            low: None,
            high: None,
        }
    }

    fn token(param: &str, system: Option<&str>, code: &str) -> Self {
        IndexRow {
            system: system.map(str::to_owned),
            ..IndexRow::text(param, code.to_owned())
        }
    }
}

/// Walks a dotted path through objects and arrays, yielding every value at its end.
pub(crate) fn values_at<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = vec![root];
    for step in path.split('.') {
        let mut next = Vec::new();
        for v in current {
            match v.get(step) {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(Value::Null) | None => {}
                Some(other) => next.push(other),
            }
        }
        current = next;
    }
    current
}

fn token_rows(param: &str, v: &Value, out: &mut Vec<IndexRow>) {
    match v {
        Value::String(code) => out.push(IndexRow::token(param, None, code)),
        Value::Bool(b) => out.push(IndexRow::token(
            param,
            None,
            if *b { "true" } else { "false" },
        )),
        Value::Object(map) => {
            if let Some(Value::Array(codings)) = map.get("coding") {
                for coding in codings {
                    token_rows(param, coding, out);
                }
            } else if let Some(Value::String(code)) = map.get("code").or_else(|| map.get("value")) {
                let system = map.get("system").and_then(Value::as_str);
                out.push(IndexRow::token(param, system, code));
            }
        }
        _ => {}
    }
}

fn param_rows(param: &SearchParam, resource: &Value, base_url: &str, out: &mut Vec<IndexRow>) {
    for path in param.paths {
        for v in values_at(resource, path) {
            match param.kind {
                ParamKind::Token => token_rows(param.name, v, out),
                ParamKind::String => {
                    if let Some(s) = v.as_str() {
                        out.push(IndexRow {
                            norm: Some(s.to_lowercase()),
                            ..IndexRow::text(param.name, s.to_owned())
                        });
                    }
                }
                ParamKind::Uri => {
                    if let Some(s) = v.as_str() {
                        out.push(IndexRow::text(param.name, s.to_owned()));
                    }
                }
                ParamKind::Canonical => {
                    if let Some(s) = v.as_str() {
                        // A definitional resource's own url is versioned by its `version`.
                        let canonical = match (param.name, resource.get("version")) {
                            ("url", Some(Value::String(version))) if !s.contains('|') => {
                                format!("{s}|{version}")
                            }
                            _ => s.to_owned(),
                        };
                        out.push(IndexRow::text(param.name, canonical));
                    }
                }
                ParamKind::Reference => {
                    if let Some(reference) = v.get("reference").and_then(Value::as_str) {
                        out.push(IndexRow::text(
                            param.name,
                            normalise_reference(reference, base_url),
                        ));
                    }
                    if let Some(identifier) = v.get("identifier") {
                        token_rows(&format!("{}:identifier", param.name), identifier, out);
                    }
                }
                ParamKind::Date => {
                    let ranges = match v {
                        Value::String(s) => parse_date_range(s).into_iter().collect(),
                        Value::Object(period) => {
                            let start = period.get("start").and_then(Value::as_str);
                            let end = period.get("end").and_then(Value::as_str);
                            let low = start.and_then(parse_date_range).map_or(i64::MIN, |r| r.low);
                            let high = end.and_then(parse_date_range).map_or(i64::MAX, |r| r.high);
                            vec![crate::date::DateRange { low, high }]
                        }
                        _ => Vec::new(),
                    };
                    for range in ranges {
                        out.push(IndexRow {
                            param: param.name.to_owned(),
                            system: None,
                            value: None,
                            norm: None,
                            low: Some(range.low),
                            high: Some(range.high),
                        });
                    }
                }
            }
        }
    }
}

/// All index rows of a resource of type `resource_type`. `base_url` is this server's base,
/// used to make absolute references to itself relative.
pub fn index_rows(resource_type: &str, resource: &Value, base_url: &str) -> Vec<IndexRow> {
    let mut out = Vec::new();
    for param in public_params(resource_type) {
        param_rows(param, resource, base_url, &mut out);
    }
    if resource_type == "Organization" {
        for ext in values_at(resource, "extension") {
            if ext.get("url").and_then(Value::as_str) == Some(THUMBPRINT_EXTENSION) {
                if let Some(t) = ext.get("valueString").and_then(Value::as_str) {
                    out.push(IndexRow::token(
                        THUMBPRINT_PARAM,
                        None,
                        &t.to_ascii_lowercase(),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find<'a>(rows: &'a [IndexRow], param: &str) -> Vec<&'a IndexRow> {
        rows.iter().filter(|r| r.param == param).collect()
    }

    #[test]
    fn task_rows() {
        let task = json!({
            "resourceType": "Task", "status": "requested", "authoredOn": "2024-05-01T10:00:00Z",
            "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0"], "lastUpdated": "2024-05-01T10:00:00.123Z"},
            "requester": {"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "org-a"}},
            "identifier": [{"system": "http://dsf.dev/sid/task-identifier", "value": "x"}]
        });
        let rows = index_rows("Task", &task, "https://a.test/fhir");
        assert_eq!(find(&rows, "status")[0].value.as_deref(), Some("requested"));
        let id = find(&rows, "requester:identifier");
        assert_eq!(
            id[0].system.as_deref(),
            Some("http://dsf.dev/sid/organization-identifier")
        );
        assert_eq!(find(&rows, "identifier")[0].value.as_deref(), Some("x"));
        assert_eq!(
            find(&rows, "_profile")[0].value.as_deref(),
            Some("http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0")
        );
        let lu = find(&rows, "_lastUpdated")[0];
        assert_eq!(lu.high.unwrap() - lu.low.unwrap(), 1);
        assert_eq!(find(&rows, "authored-on").len(), 1);
    }

    #[test]
    fn organisation_rows_include_alias_thumbprint_and_relative_endpoints() {
        let org = json!({
            "resourceType": "Organization", "active": true, "name": "Org A", "alias": ["Alpha"],
            "endpoint": [{"reference": "https://a.test/fhir/Endpoint/e1/_history/2"}],
            "extension": [{"url": THUMBPRINT_EXTENSION, "valueString": "ABC"}]
        });
        let rows = index_rows("Organization", &org, "https://a.test/fhir/");
        let names: Vec<_> = find(&rows, "name")
            .iter()
            .map(|r| r.norm.clone().unwrap())
            .collect();
        assert_eq!(names, ["org a", "alpha"]);
        assert_eq!(
            find(&rows, "endpoint")[0].value.as_deref(),
            Some("Endpoint/e1")
        );
        assert_eq!(
            find(&rows, THUMBPRINT_PARAM)[0].value.as_deref(),
            Some("abc")
        );
        assert_eq!(find(&rows, "active")[0].value.as_deref(), Some("true"));
    }

    #[test]
    fn definitional_url_carries_version() {
        let ad = json!({"resourceType": "ActivityDefinition", "url": "http://dsf.dev/bpe/Process/ping", "version": "1.0"});
        let rows = index_rows("ActivityDefinition", &ad, "https://a.test/fhir");
        assert_eq!(
            find(&rows, "url")[0].value.as_deref(),
            Some("http://dsf.dev/bpe/Process/ping|1.0")
        );
        assert_eq!(find(&rows, "version")[0].value.as_deref(), Some("1.0"));
    }
}
