//! QuestionnaireResponse rules: the answer to a user task. The local organisation (its BPE)
//! creates it `in-progress`; a person answers it by completing it, or the organisation stops
//! it. Who may answer is the local organisation, a DSF administrator, or the practitioners
//! the questionnaire-authorization extension names (every practitioner when it is absent).

use super::forbidden;
use crate::access::{
    array_at, coding_of, extensions, identifier_of, str_at, EXTENSION_QUESTIONNAIRE_AUTHORIZATION,
    ORGANIZATION_IDENTIFIER_SYSTEM, PRACTITIONER_IDENTIFIER_SYSTEM,
};
use crate::server::identity::{Identity, IdentityKind};
use crate::{Error, Result};
use serde_json::Value;

fn refuse(identity: &Identity, why: impl std::fmt::Display) -> Error {
    forbidden("QuestionnaireResponse", identity, why)
}

/// The string answer of the item with `link_id`.
fn item_answer<'a>(response: &'a Value, link_id: &str) -> Option<&'a str> {
    array_at(response, "item")
        .iter()
        .find(|item| str_at(item, "linkId") == Some(link_id))
        .and_then(|item| array_at(item, "answer").first())
        .and_then(|answer| str_at(answer, "valueString"))
}

fn check_content(identity: &Identity, response: &Value) -> Result<()> {
    if str_at(response, "questionnaire").is_none_or(str::is_empty) {
        return Err(refuse(
            identity,
            "QuestionnaireResponse.questionnaire missing",
        ));
    }
    if item_answer(response, "user-task-id").is_none() {
        return Err(refuse(
            identity,
            "item user-task-id with a string answer missing",
        ));
    }
    for authorization in extensions(response, EXTENSION_QUESTIONNAIRE_AUTHORIZATION) {
        let valid = array_at(authorization, "extension")
            .iter()
            .all(|e| match str_at(e, "url") {
                Some("practitioner") => e.get("valueIdentifier").and_then(identifier_of).is_some(),
                Some("practitioner-role") => e.get("valueCoding").and_then(coding_of).is_some(),
                _ => true,
            });
        if !valid {
            return Err(refuse(
                identity,
                "questionnaire-authorization extension invalid",
            ));
        }
    }
    Ok(())
}

pub(super) fn check_create(identity: &Identity, response: &Value) -> Result<()> {
    if !identity.is_local_organization_or_admin() {
        return Err(refuse(
            identity,
            "only the local organization or an administrator creates QuestionnaireResponses",
        ));
    }
    if str_at(response, "status") != Some("in-progress") {
        return Err(refuse(
            identity,
            "a QuestionnaireResponse is created in status in-progress",
        ));
    }
    check_content(identity, response)
}

/// A practitioner the stored version's questionnaire-authorization extension admits.
fn practitioner_authorized(identity: &Identity, old: &Value) -> bool {
    if identity.kind != IdentityKind::Practitioner {
        return false;
    }
    let mut authorizations = extensions(old, EXTENSION_QUESTIONNAIRE_AUTHORIZATION).peekable();
    if authorizations.peek().is_none() {
        return true;
    }
    authorizations.any(|authorization| {
        array_at(authorization, "extension")
            .iter()
            .any(|e| match str_at(e, "url") {
                Some("practitioner") => {
                    e.get("valueIdentifier").and_then(identifier_of)
                        == identity
                            .practitioner_identifier
                            .as_deref()
                            .map(|p| (PRACTITIONER_IDENTIFIER_SYSTEM, p))
                }
                Some("practitioner-role") => e
                    .get("valueCoding")
                    .and_then(coding_of)
                    .is_some_and(|(s, c)| identity.has_practitioner_role(s, c)),
                _ => false,
            })
    })
}

/// The author of a completed response is the caller.
fn check_author(identity: &Identity, response: &Value) -> Result<()> {
    let author = response
        .get("author")
        .and_then(|a| a.get("identifier"))
        .and_then(identifier_of);
    let expected = match identity.kind {
        IdentityKind::Practitioner => identity
            .practitioner_identifier
            .as_deref()
            .map(|p| (PRACTITIONER_IDENTIFIER_SYSTEM, p)),
        _ => Some((
            ORGANIZATION_IDENTIFIER_SYSTEM,
            identity.organization_identifier.as_str(),
        )),
    };
    if author.is_none() || author != expected {
        return Err(refuse(
            identity,
            "QuestionnaireResponse.author must identify the caller",
        ));
    }
    if response.get("authored").is_none() {
        return Err(refuse(identity, "QuestionnaireResponse.authored missing"));
    }
    Ok(())
}

/// Everything but status, author, authored, answers and meta, which answering changes.
fn without_answers(response: &Value) -> Value {
    let mut copy = response.clone();
    if let Some(map) = copy.as_object_mut() {
        for field in ["status", "author", "authored", "meta", "item", "text"] {
            map.remove(field);
        }
    }
    copy
}

pub(super) fn check_update(identity: &Identity, old: &Value, new: &Value) -> Result<()> {
    let from = str_at(old, "status").unwrap_or("");
    let to = str_at(new, "status").unwrap_or("");
    match (from, to) {
        ("in-progress", "completed") => {
            if !identity.is_local_organization_or_admin() && !practitioner_authorized(identity, old)
            {
                return Err(refuse(
                    identity,
                    "not authorized to answer this questionnaire",
                ));
            }
            check_content(identity, new)?;
            check_author(identity, new)?;
            let fixed = ["user-task-id", "business-key"];
            if without_answers(old) != without_answers(new)
                || fixed
                    .iter()
                    .any(|id| item_answer(old, id) != item_answer(new, id))
            {
                return Err(refuse(
                    identity,
                    "only the answers, status, author and authored may change",
                ));
            }
            Ok(())
        }
        ("in-progress", "stopped") => {
            if !identity.is_local_organization_or_admin() {
                return Err(refuse(
                    identity,
                    "only the local organization or an administrator stops a questionnaire",
                ));
            }
            let mut old_stopped = old.clone();
            old_stopped["status"] = Value::String("stopped".into());
            if old_stopped.get("item") != new.get("item")
                || without_answers(old) != without_answers(new)
            {
                return Err(refuse(identity, "stopping changes only the status"));
            }
            Ok(())
        }
        _ => Err(refuse(
            identity,
            format!("status change {from} -> {to} is not allowed"),
        )),
    }
}

pub(super) fn check_delete(identity: &Identity) -> Result<()> {
    if identity.is_local_organization_or_admin() {
        Ok(())
    } else {
        Err(refuse(
            identity,
            "only the local organization or an administrator deletes QuestionnaireResponses",
        ))
    }
}
