//! What a request asks for, named as FHIR names its RESTful interactions: the label of the
//! request metrics and the `interaction` of audit records. With the audit log on, the router
//! notes the interaction it chose (see [`trace::routed`](super::trace::routed)); the path is
//! read here, from the method and the path alone, for the requests that did not reach the
//! router (refused early, websockets, pages) and where only the metrics are on, so that a
//! refused or malformed request is labelled like any other.

use crate::resource_type::supported_type;
use http::Method;

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `GET [type]/[id]` (and `HEAD`).
    Read,
    /// `GET [type]/[id]/_history/[version]`.
    Vread,
    /// `PUT [type]/[id]` or a conditional update.
    Update,
    /// `DELETE [type]/[id]`, a conditional delete or `$permanent-delete`.
    Delete,
    /// `POST [type]`.
    Create,
    /// `GET [type]?…` or `POST [type]/_search`.
    SearchType,
    /// `GET [type]/[id]/_history`.
    HistoryInstance,
    /// `GET [type]/_history`.
    HistoryType,
    /// `GET _history`.
    HistorySystem,
    /// `GET metadata`.
    Capabilities,
    /// `POST` of a batch or transaction Bundle to the base.
    Bundle,
    /// An operation (`$snapshot`).
    Operation,
    /// The websocket endpoint.
    Websocket,
    /// Actions of the browser pages (start a process, answer a questionnaire, log in or out).
    Page,
    /// Anything else: an unknown path or resource type, a method no interaction has.
    Other,
}

impl Interaction {
    /// How many interactions there are: `interaction as usize` is below it.
    pub const COUNT: usize = Interaction::Other as usize + 1;

    /// The name in metrics labels and audit records (FHIR's code where FHIR has one).
    pub fn name(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Capabilities => "capabilities",
            Interaction::Bundle => "batch-transaction",
            Interaction::Operation => "operation",
            Interaction::Websocket => "websocket",
            Interaction::Page => "page",
            Interaction::Other => "other",
        }
    }
}

/// What a request is about: its interaction, and the resource type and id its path names
/// (only a supported resource type, so that arbitrary text from the path never reaches a
/// label or a record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    pub interaction: Interaction,
    pub resource_type: Option<&'static str>,
    /// The id (and version) the path gives, borrowed from it: a request's record costs no
    /// allocation for it.
    pub id: Option<PathId<'a>>,
}

/// An id named in a path, and the version for `id/_history/version`; each at most
/// [`MAX_ID`] characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathId<'a> {
    pub id: &'a str,
    pub version: Option<&'a str>,
}

/// Longest id kept from a path: FHIR ids have at most 64 characters.
const MAX_ID: usize = 64;

/// Classifies a request to `path` (below the base URL's path, no '/' at either end; `None`
/// outside the API).
pub(crate) fn classify<'a>(method: &Method, path: Option<&'a str>, websocket: bool) -> Target<'a> {
    let other = Target {
        interaction: Interaction::Other,
        resource_type: None,
        id: None,
    };
    if websocket {
        return Target {
            interaction: Interaction::Websocket,
            ..other
        };
    }
    let Some(path) = path else {
        return other;
    };
    // The browser pages, their actions included (`ui::ACTION_PREFIX`, `_ui/`).
    if path.starts_with("_ui") {
        return Target {
            interaction: Interaction::Page,
            ..other
        };
    }
    let mut parts = [""; 5];
    let segments = split_segments(path, &mut parts);
    let get = method == Method::GET || method == Method::HEAD;
    let id = |id: &'a str, version: Option<&'a str>| {
        Some(PathId {
            id: clipped(id),
            version: version.map(clipped),
        })
    };
    let Some(first) = segments.first() else {
        return Target {
            interaction: if method == Method::POST {
                Interaction::Bundle
            } else {
                Interaction::Other
            },
            ..other
        };
    };
    if segments.len() == 1 && *first == "metadata" && get {
        return Target {
            interaction: Interaction::Capabilities,
            ..other
        };
    }
    if segments.len() == 1 && *first == "_history" && get {
        return Target {
            interaction: Interaction::HistorySystem,
            ..other
        };
    }
    let Some(resource_type) = supported_type(first) else {
        return other;
    };
    let on_type = |interaction, id| Target {
        interaction,
        resource_type: Some(resource_type),
        id,
    };
    // As the router reads the path (see `FhirServer::route`), so that a server with the
    // metrics alone names requests as one with the audit log does.
    let snapshot = resource_type == "StructureDefinition" && (get || method == Method::POST);
    let interaction = match (&segments[1..], method) {
        ([], _) if get => Interaction::SearchType,
        ([], &Method::POST) => Interaction::Create,
        ([], &Method::PUT) => Interaction::Update,
        ([], &Method::DELETE) => Interaction::Delete,
        (["$snapshot"], _) if snapshot => Interaction::Operation,
        (["_search"], &Method::POST) => Interaction::SearchType,
        (["_history"], _) if get => Interaction::HistoryType,
        ([i], _) if get => return on_type(Interaction::Read, id(i, None)),
        ([i], &Method::PUT) => return on_type(Interaction::Update, id(i, None)),
        ([i], &Method::DELETE) => return on_type(Interaction::Delete, id(i, None)),
        ([i, "$permanent-delete"], &Method::POST) => {
            return on_type(Interaction::Delete, id(i, None))
        }
        ([i, "$snapshot"], _) if snapshot => return on_type(Interaction::Operation, id(i, None)),
        ([i, "_history"], _) if get => return on_type(Interaction::HistoryInstance, id(i, None)),
        ([i, "_history", v], _) if get => return on_type(Interaction::Vread, id(i, Some(v))),
        _ => Interaction::Other,
    };
    on_type(interaction, None)
}

/// The first segments of `path` (split at '/'; none for an empty path), as many as `parts`
/// holds. No FHIR path has more than four segments, so a fifth slot only has to spoil every
/// match. Every request of a server with metrics or the audit log on is split here, so the
/// slashes are found with `memchr`, many bytes at a time.
fn split_segments<'a, 'p>(path: &'a str, parts: &'p mut [&'a str; 5]) -> &'p [&'a str] {
    if path.is_empty() {
        return &parts[..0];
    }
    let mut rest = path;
    let mut count = 0;
    while count < parts.len() {
        match memchr::memchr(b'/', rest.as_bytes()) {
            Some(slash) => {
                // A '/' is a character of its own: both sides are whole characters.
                let (segment, after) = rest.split_at(slash);
                parts[count] = segment;
                rest = &after[1..];
                count += 1;
            }
            None => {
                parts[count] = rest;
                count += 1;
                break;
            }
        }
    }
    &parts[..count]
}

/// At most [`MAX_ID`] characters of `text`.
fn clipped(text: &str) -> &str {
    // Bytes are at least as many as characters: most ids need no counting.
    if text.len() <= MAX_ID {
        return text;
    }
    match text.char_indices().nth(MAX_ID) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(method: Method, path: &str) -> (&'static str, Option<&'static str>, Option<String>) {
        let t = classify(&method, Some(path), false);
        let id = t.id.map(|PathId { id, version }| match version {
            Some(version) => format!("{id}/_history/{version}"),
            None => id.to_owned(),
        });
        (t.interaction.name(), t.resource_type, id)
    }

    #[test]
    fn requests_are_named_as_fhir_names_interactions() {
        assert_eq!(name(Method::GET, "Task").0, "search-type");
        assert_eq!(name(Method::HEAD, "Task/1").0, "read");
        assert_eq!(name(Method::POST, "Task"), ("create", Some("Task"), None));
        assert_eq!(name(Method::POST, "Task/_search").0, "search-type");
        assert_eq!(name(Method::PUT, "Task/7").2.as_deref(), Some("7"));
        assert_eq!(name(Method::PUT, "Task").0, "update");
        assert_eq!(name(Method::DELETE, "Task").0, "delete");
        assert_eq!(name(Method::POST, "Task/7/$permanent-delete").0, "delete");
        assert_eq!(name(Method::GET, "Task/_history").0, "history-type");
        assert_eq!(name(Method::GET, "Task/7/_history").0, "history-instance");
        assert_eq!(
            name(Method::GET, "Task/7/_history/3"),
            ("vread", Some("Task"), Some("7/_history/3".into()))
        );
        assert_eq!(name(Method::GET, "_history").0, "history-system");
        assert_eq!(name(Method::GET, "metadata").0, "capabilities");
        assert_eq!(name(Method::POST, "").0, "batch-transaction");
        assert_eq!(
            name(Method::POST, "StructureDefinition/$snapshot").0,
            "operation"
        );
        assert_eq!(name(Method::POST, "_ui/start/x").0, "page");
        assert_eq!(
            classify(&Method::GET, Some("ws"), true).interaction,
            Interaction::Websocket
        );
    }

    #[test]
    fn paths_split_as_str_split_does_up_to_five_segments() {
        for path in [
            "",
            "Task",
            "Task/1",
            "/",
            "Task//1",
            "a/b/c/d",
            "a/b/c/d/e/f",
            "ä/€/😀/",
        ] {
            let mut parts = [""; 5];
            let expected: Vec<&str> = match path {
                "" => Vec::new(),
                _ => path.split('/').take(5).collect(),
            };
            assert_eq!(split_segments(path, &mut parts), expected, "{path}");
        }
    }

    #[test]
    fn unknown_types_and_paths_leave_nothing_of_the_path_in_the_label() {
        assert_eq!(
            name(Method::GET, "Patient%3Cscript%3E/1"),
            ("other", None, None)
        );
        assert_eq!(name(Method::PATCH, "Task/1").0, "other");
        assert_eq!(
            classify(&Method::GET, None, false).interaction,
            Interaction::Other
        );
        assert_eq!(name(Method::GET, "Task/1/_history/2/x/y").0, "other");
        let long = "x".repeat(500);
        assert_eq!(
            name(Method::GET, &format!("Task/{long}"))
                .2
                .map(|i| i.len()),
            Some(64)
        );
        // Characters, not bytes: a cut never splits one.
        let wide = "ä".repeat(100);
        assert_eq!(
            name(Method::GET, &format!("Task/{wide}"))
                .2
                .map(|i| i.chars().count()),
            Some(64)
        );
    }
}
