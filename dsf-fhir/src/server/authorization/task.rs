//! Task rules. A Task is a message: remote organisations may only create it in status
//! `requested`, as its requester, for this organisation as recipient, and only if the
//! process authorizes them; only the local organisation (its BPE) or a DSF administrator moves
//! it on to `in-progress`, `completed` or `failed`. Drafts are the local organisation's own.

use super::forbidden;
use super::process::ProcessRequest;
use crate::access::{
    array_at, coding_of, identifier_of, str_at, ORGANIZATION_IDENTIFIER_SYSTEM,
    PRACTITIONER_IDENTIFIER_SYSTEM,
};
use crate::server::identity::{Identity, IdentityKind};
use crate::{Error, Result};
use serde_json::Value;

pub const TASK_IDENTIFIER_SYSTEM: &str = "http://dsf.dev/sid/task-identifier";
pub const BPMN_MESSAGE_SYSTEM: &str = "http://dsf.dev/fhir/CodeSystem/bpmn-message";

fn refuse(identity: &Identity, why: impl std::fmt::Display) -> Error {
    forbidden("Task", identity, why)
}

/// `http[s]://<domain>/bpe/Process/<name>|<major>.<minor>`, split into url and version.
fn parse_instantiates(canonical: &str) -> Option<(&str, &str)> {
    let (url, version) = canonical.split_once('|')?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let (domain, name) = rest.split_once("/bpe/Process/")?;
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let (major, minor) = version.split_once('.')?;
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (labels.len() >= 2 && labels.iter().all(label_ok) && name_ok && number(major) && number(minor))
        .then_some((url, version))
}

/// Inputs of type `bpmn-message|code` with their string values.
fn message_inputs<'a>(task: &'a Value, code: &'a str) -> impl Iterator<Item = Option<&'a str>> {
    array_at(task, "input").iter().filter_map(move |input| {
        let typed = input
            .get("type")
            .map(|t| array_at(t, "coding"))
            .unwrap_or(&[])
            .iter()
            .filter_map(coding_of)
            .any(|c| c == (BPMN_MESSAGE_SYSTEM, code));
        typed.then(|| str_at(input, "valueString"))
    })
}

fn requester_identifier(task: &Value) -> Option<(&str, &str)> {
    task.get("requester")?
        .get("identifier")
        .and_then(identifier_of)
}

fn recipients(task: &Value) -> Vec<Option<(&str, &str)>> {
    task.get("restriction")
        .map(|r| array_at(r, "recipient"))
        .unwrap_or(&[])
        .iter()
        .map(|r| r.get("identifier").and_then(identifier_of))
        .collect()
}

/// Rules shared by drafts and requested Tasks; returns the message they carry.
fn check_message(identity: &Identity, local: &str, task: &Value) -> Result<ProcessRequest> {
    match recipients(task).as_slice() {
        [Some((ORGANIZATION_IDENTIFIER_SYSTEM, org))] if *org == local => {}
        _ => {
            return Err(refuse(
                identity,
                format!("Task.restriction.recipient must be exactly this organization ({local}) by identifier"),
            ))
        }
    }
    let canonical = str_at(task, "instantiatesCanonical").unwrap_or("");
    let (process_url, process_version) = parse_instantiates(canonical).ok_or_else(|| {
        refuse(
            identity,
            format!("Task.instantiatesCanonical '{canonical}' is not of the form http[s]://domain/bpe/Process/name|major.minor"),
        )
    })?;
    let names: Vec<Option<&str>> = message_inputs(task, "message-name").collect();
    let message_name = match names.as_slice() {
        [Some(name)] if !name.trim().is_empty() => *name,
        _ => {
            return Err(refuse(
                identity,
                "Task needs exactly one input bpmn-message|message-name with a string value",
            ))
        }
    };
    if !array_at(task, "output").is_empty() {
        return Err(refuse(identity, "a new Task has no output"));
    }
    Ok(ProcessRequest {
        process_url: process_url.to_owned(),
        process_version: process_version.to_owned(),
        message_name: message_name.to_owned(),
        task_profiles: profiles(task),
    })
}

/// `Task.meta.profile`.
fn profiles(task: &Value) -> Vec<String> {
    task.get("meta")
        .map(|m| array_at(m, "profile"))
        .unwrap_or(&[])
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn task_identifiers(task: &Value) -> Vec<&str> {
    array_at(task, "identifier")
        .iter()
        .filter_map(identifier_of)
        .filter(|(s, _)| *s == TASK_IDENTIFIER_SYSTEM)
        .map(|(_, v)| v)
        .collect()
}

/// The create rules. Returns what the process must authorize for a requested Task; a draft
/// needs no authorization.
pub(super) fn check_create(
    identity: &Identity,
    local: &str,
    task: &Value,
) -> Result<Option<ProcessRequest>> {
    match str_at(task, "status") {
        Some("draft") => {
            if !identity.is_local_organization_or_admin() {
                return Err(refuse(
                    identity,
                    "only the local organization or an administrator creates drafts",
                ));
            }
            match task_identifiers(task).as_slice() {
                [value] if !value.is_empty() => {}
                _ => {
                    return Err(refuse(
                        identity,
                        format!(
                            "a draft Task needs exactly one identifier of {TASK_IDENTIFIER_SYSTEM}"
                        ),
                    ))
                }
            }
            if requester_identifier(task) != Some((ORGANIZATION_IDENTIFIER_SYSTEM, local)) {
                return Err(refuse(
                    identity,
                    "a draft Task's requester is the local organization",
                ));
            }
            check_message(identity, local, task)?;
            Ok(None)
        }
        Some("requested") => {
            if !task_identifiers(task).is_empty() {
                return Err(refuse(
                    identity,
                    format!("a requested Task has no identifier of {TASK_IDENTIFIER_SYSTEM}"),
                ));
            }
            let caller = match identity.kind {
                IdentityKind::Practitioner => identity
                    .practitioner_identifier
                    .as_deref()
                    .map(|p| (PRACTITIONER_IDENTIFIER_SYSTEM, p)),
                _ => Some((
                    ORGANIZATION_IDENTIFIER_SYSTEM,
                    identity.organization_identifier.as_str(),
                )),
            };
            if caller.is_none() || requester_identifier(task) != caller {
                return Err(refuse(identity, "Task.requester must identify the caller"));
            }
            check_message(identity, local, task).map(Some)
        }
        other => Err(refuse(
            identity,
            format!(
                "a Task is created in status draft or requested, not {}",
                other.unwrap_or("(none)")
            ),
        )),
    }
}

/// For a Task being completed: the message whose recipient authorization is re-checked.
pub(super) fn completion_request(task: &Value) -> Option<ProcessRequest> {
    if str_at(task, "status") != Some("completed") {
        return None;
    }
    let canonical = str_at(task, "instantiatesCanonical")?;
    let (process_url, process_version) = parse_instantiates(canonical)?;
    let message_name = message_inputs(task, "message-name").next()??;
    Some(ProcessRequest {
        process_url: process_url.to_owned(),
        process_version: process_version.to_owned(),
        message_name: message_name.to_owned(),
        task_profiles: profiles(task),
    })
}

/// Inputs the BPE adds when it takes a Task on.
fn added_by_engine(input: &Value) -> bool {
    input
        .get("type")
        .map(|t| array_at(t, "coding"))
        .unwrap_or(&[])
        .iter()
        .filter_map(coding_of)
        .any(|c| {
            c == (BPMN_MESSAGE_SYSTEM, "business-key")
                || c == (BPMN_MESSAGE_SYSTEM, "correlation-key")
        })
}

pub(super) fn check_update(identity: &Identity, old: &Value, new: &Value) -> Result<()> {
    if !identity.is_local_organization_or_admin() {
        return Err(refuse(
            identity,
            "only the local organization or an administrator updates Tasks",
        ));
    }
    let from = str_at(old, "status").unwrap_or("");
    let to = str_at(new, "status").unwrap_or("");
    let outputs_allowed = match (from, to) {
        ("draft", "draft") => {
            if task_identifiers(old) != task_identifiers(new) {
                return Err(refuse(identity, "a draft's task identifier cannot change"));
            }
            // Administrators act for the local organisation: its identifier is theirs.
            return check_create(identity, &identity.organization_identifier, new).map(|_| ());
        }
        ("requested", "in-progress") | ("in-progress", "in-progress") => false,
        ("in-progress", "completed") | ("requested" | "in-progress", "failed") => true,
        _ => {
            return Err(refuse(
                identity,
                format!("status change {from} -> {to} is not allowed"),
            ))
        }
    };
    for field in [
        "requester",
        "restriction",
        "instantiatesCanonical",
        "identifier",
    ] {
        if old.get(field) != new.get(field) {
            return Err(refuse(identity, format!("Task.{field} cannot change")));
        }
    }
    let old_inputs = array_at(old, "input");
    let new_inputs = array_at(new, "input");
    let inputs_ok = if from == "requested" && to == "in-progress" {
        new_inputs.starts_with(old_inputs)
            && new_inputs[old_inputs.len()..].iter().all(added_by_engine)
    } else {
        old_inputs == new_inputs
    };
    if !inputs_ok {
        return Err(refuse(
            identity,
            "Task.input cannot change, but for the business and correlation keys the engine adds",
        ));
    }
    if !outputs_allowed && !array_at(new, "output").is_empty() {
        return Err(refuse(
            identity,
            format!("a Task in status {to} has no output"),
        ));
    }
    Ok(())
}

pub(super) fn check_delete(identity: &Identity, old: &Value) -> Result<()> {
    if !identity.is_local_organization_or_admin() {
        return Err(refuse(
            identity,
            "only the local organization or an administrator deletes Tasks",
        ));
    }
    if str_at(old, "status") != Some("draft") {
        return Err(refuse(identity, "only draft Tasks can be deleted"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instantiates_canonical_form() {
        assert_eq!(
            parse_instantiates("http://dsf.dev/bpe/Process/ping|1.0"),
            Some(("http://dsf.dev/bpe/Process/ping", "1.0"))
        );
        assert!(parse_instantiates("https://a-b.example.org/bpe/Process/data-send|12.3").is_some());
        for bad in [
            "http://dsf.dev/bpe/Process/ping",
            "http://dsf.dev/bpe/Process/ping|1",
            "http://dsf.dev/bpe/Process/ping|1.0.0",
            "http://localhost/bpe/Process/ping|1.0",
            "ftp://dsf.dev/bpe/Process/ping|1.0",
            "http://dsf.dev/Process/ping|1.0",
            "http://dsf.dev/bpe/Process/pi ng|1.0",
        ] {
            assert!(parse_instantiates(bad).is_none(), "{bad}");
        }
    }
}
