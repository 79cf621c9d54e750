//! HTML pages for people with a browser, as the Java DSF serves them: a request whose
//! `_format` is `html`, or whose `Accept` prefers `text/html`, gets the resource (or search
//! result, history, OperationOutcome) as a page instead of FHIR JSON or XML. The same
//! interactions run under the same authorization; only the rendering differs.
//!
//! Pages are rendered on the server from one template embedded in the binary (minijinja,
//! every value autoescaped: resource content is the peer's), with the style sheet inlined.
//! The theme ([`UiTheme`]) marks which system people are on.
//!
//! Two forms write: starting a process from a draft Task, and answering a user task (see
//! `form` and `actions`). Each carries a CSRF token bound to its caller's certificate or
//! login session.

mod actions;
mod form;

use super::reply::{Body, Reply};
use super::{ResponseBody, ServerConfig};
use crate::Error;
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

const PAGE: &str = include_str!("page.html");
const STYLE: &str = include_str!("style.css");

/// Which system a page belongs to, shown in every page's header
/// (`DEV_DSF_FHIR_SERVER_UI_THEME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UiTheme {
    /// A development system.
    Dev,
    /// A test system.
    Test,
    /// The production system.
    Prod,
}

impl UiTheme {
    /// `dev`, `test` or `prod`, as the Java DSF's setting writes it.
    pub fn parse(text: &str) -> Option<UiTheme> {
        match text.trim().to_ascii_lowercase().as_str() {
            "dev" => Some(UiTheme::Dev),
            "test" => Some(UiTheme::Test),
            "prod" => Some(UiTheme::Prod),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            UiTheme::Dev => "dev",
            UiTheme::Test => "test",
            UiTheme::Prod => "prod",
        }
    }

    fn label(self) -> &'static str {
        match self {
            UiTheme::Dev => "Development",
            UiTheme::Test => "Test",
            UiTheme::Prod => "Production",
        }
    }
}

/// Whether the answer should be a page: `_format=html` (or `text/html`), or, without
/// `_format`, an `Accept` header whose most preferred known type is `text/html` (what a
/// browser sends).
pub(crate) fn wants_html(format_param: Option<&str>, accept: Option<&str>) -> bool {
    if let Some(param) = format_param {
        return is_html(param);
    }
    let Some(accept) = accept else {
        return false;
    };
    crate::format::media_ranges(accept)
        .into_iter()
        .find(|mime| is_html(mime) || crate::format::Format::from_mime(mime).is_some())
        .is_some_and(is_html)
}

fn is_html(mime: &str) -> bool {
    let essence = mime.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("html") || essence.eq_ignore_ascii_case("text/html")
}

/// Where form submissions go, below the base URL.
pub(crate) const ACTION_PREFIX: &str = "_ui/";

/// Who looks at a page, and so which forms it offers.
pub(crate) struct Viewer {
    pub name: String,
    /// The token the page's forms carry; none for callers that use no forms.
    pub csrf: Option<String>,
    /// May create Tasks: the start form is offered.
    pub can_start: bool,
    /// May update QuestionnaireResponses: the answer form is offered.
    pub can_answer: bool,
    /// Logged in with OpenID Connect: a logout button is offered.
    pub logout: bool,
}

static NOBODY: Viewer = Viewer {
    name: String::new(),
    csrf: None,
    can_start: false,
    can_answer: false,
    logout: false,
};

impl Viewer {
    /// A viewer offered no forms (an error before anyone is known).
    pub(crate) fn anonymous() -> &'static Viewer {
        &NOBODY
    }
}

/// What a page needs to know beyond the answer: where it is, whose server it is, and who
/// looks.
pub(crate) struct PageRequest<'a> {
    /// The server's base URL.
    pub base_url: &'a str,
    /// The local organisation's identifier value.
    pub organization: &'a str,
    pub theme: Option<UiTheme>,
    /// The request's path below the base URL, without leading '/'.
    pub path: &'a str,
    /// The request's query parameters.
    pub query: &'a [(String, String)],
    pub viewer: &'a Viewer,
    /// The Questionnaire of a user task shown, for its answer form.
    pub questionnaire: Option<&'a Value>,
}

impl<'a> PageRequest<'a> {
    pub(crate) fn new(
        config: &'a ServerConfig,
        path: &'a str,
        query: &'a [(String, String)],
        viewer: &'a Viewer,
    ) -> PageRequest<'a> {
        PageRequest {
            base_url: &config.base_url,
            organization: &config.organization_identifier,
            theme: config.ui_theme,
            path,
            query,
            viewer,
            questionnaire: None,
        }
    }

    /// A page for nobody in particular (a failed login).
    pub(crate) fn anonymous(config: &'a ServerConfig, path: &'a str) -> PageRequest<'a> {
        PageRequest::new(config, path, &[], Viewer::anonymous())
    }
}

/// The page template, parsed once, and the key CSRF tokens are made with.
pub(crate) struct Pages {
    env: minijinja::Environment<'static>,
    csrf_key: ring::hmac::Key,
    content_security_policy: HeaderValue,
}

impl Pages {
    /// Pages whose forms post to this server only, and, for the logout that continues there,
    /// to the OpenID provider at `provider_origin`.
    pub(crate) fn new(provider_origin: Option<&str>) -> Pages {
        let mut env = minijinja::Environment::new();
        // The template is ours and fixed at build time; a test renders it, so a mistake in
        // it fails the tests rather than a request.
        if let Err(e) = env.add_template("page.html", PAGE) {
            tracing::error!(error = %e, "the page template does not parse");
        }
        // A key per process: tokens of pages served before a restart are refused after it,
        // and a page reloaded gets a fresh one.
        let rng = ring::rand::SystemRandom::new();
        let csrf_key =
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
                tracing::error!("the system's random source failed; CSRF tokens use a fixed key");
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"dsf-rs")
            });
        // Browsers apply `form-action` to a form's redirects too: the logout's redirect to
        // the provider must be allowed.
        let form_action = match provider_origin {
            Some(origin) => format!("'self' {origin}"),
            None => "'self'".to_owned(),
        };
        let content_security_policy = HeaderValue::try_from(format!(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action {form_action}; frame-ancestors 'none'"
        ))
        .unwrap_or_else(|_| {
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
            )
        });
        Pages {
            env,
            csrf_key,
            content_security_policy,
        }
    }

    /// The CSRF token of the caller `subject` (a certificate or session).
    pub(crate) fn csrf_token(&self, subject: &str) -> String {
        let tag = ring::hmac::sign(&self.csrf_key, subject.as_bytes());
        hex::encode(tag.as_ref())
    }

    /// Whether `token` is the CSRF token of `subject` (compared in constant time).
    pub(crate) fn csrf_valid(&self, subject: &str, token: &str) -> bool {
        hex::decode(token)
            .is_ok_and(|tag| ring::hmac::verify(&self.csrf_key, subject.as_bytes(), &tag).is_ok())
    }

    /// `scheme://host[:port]` of the base URL, as browsers send it in `Origin`.
    pub(crate) fn origin<'u>(&self, base_url: &'u str) -> &'u str {
        origin(base_url)
    }

    fn html(&self, view: &PageView) -> Result<String, minijinja::Error> {
        self.env.get_template("page.html")?.render(view)
    }

    /// The answer as a page; a body that is not a resource (raw Binary content, none) is
    /// answered as it is.
    pub(crate) fn render(&self, reply: Reply, request: &PageRequest<'_>) -> Response<ResponseBody> {
        let Reply {
            status,
            headers: reply_headers,
            body,
        } = reply;
        let resource = match body {
            Body::Value(value) => value,
            Body::Stored(json) => match serde_json::from_str::<Value>(&json) {
                Ok(value) => value,
                Err(_) => return as_is(status, reply_headers, Body::Stored(json)),
            },
            // Raw Binary content, or none.
            other => return as_is(status, reply_headers, other),
        };
        let html = match self.html(&PageView::new(&resource, status, request)) {
            Ok(html) => html,
            Err(e) => {
                let error = Error::storage_fault(format!("cannot render the page: {e}"));
                tracing::error!(error = %e, "cannot render page");
                return Reply::error(&error).render(crate::format::Format::Json, false);
            }
        };
        let mut response = Response::new(ResponseBody::whole(html.into()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        for (name, value) in reply_headers {
            // A page is another representation of the version: its entity tag differs (the
            // Java DSF prefixes an `h`), so that caches keep the two apart.
            let value = if name == http::header::ETAG {
                value.replacen("W/\"", "W/\"h", 1)
            } else {
                value
            };
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.append(name, v);
            }
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html;charset=UTF-8"),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-transform, private"),
        );
        headers.insert(http::header::VARY, HeaderValue::from_static("Accept"));
        headers.insert(
            http::header::CONTENT_SECURITY_POLICY,
            self.content_security_policy.clone(),
        );
        headers.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

/// `scheme://host[:port]` of a URL.
pub(crate) fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |p| p + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

/// An answer that is no resource, rendered as it would be without a page.
fn as_is(
    status: StatusCode,
    headers: Vec<(http::HeaderName, String)>,
    body: Body,
) -> Response<ResponseBody> {
    let reply = Reply {
        status,
        headers,
        body,
    };
    reply.render(crate::format::Format::Json, false)
}

#[derive(Serialize)]
struct PageView {
    title: String,
    organization: String,
    theme: &'static str,
    theme_label: &'static str,
    style: &'static str,
    base_url: String,
    status: u16,
    version: Option<String>,
    last_updated: Option<String>,
    history_url: Option<String>,
    json_url: String,
    xml_url: String,
    issues: Vec<IssueView>,
    task: Option<TaskView>,
    bundle: Option<BundleView>,
    references: Vec<Link>,
    /// On a Task search: the same list by status, newest first.
    status_filters: Vec<StatusFilter>,
    json: String,
    user: String,
    /// The logout form's token, for a viewer logged in with OpenID Connect.
    logout_csrf: Option<String>,
    start_form: Option<FormView>,
    answer_form: Option<FormView>,
}

#[derive(Serialize)]
struct FormView {
    action: String,
    csrf: String,
    fields: Vec<form::Field>,
}

/// The start form of a draft Task, for a viewer who may create Tasks.
fn start_form(resource: &Value, request: &PageRequest<'_>) -> Option<FormView> {
    let viewer = request.viewer;
    let is_draft_task =
        text(resource, "resourceType") == "Task" && text(resource, "status") == "draft";
    if !is_draft_task || !viewer.can_start {
        return None;
    }
    Some(FormView {
        action: format!(
            "{}/{ACTION_PREFIX}start/{}",
            request.base_url,
            text(resource, "id")
        ),
        csrf: viewer.csrf.clone()?,
        fields: form::start_fields(resource),
    })
}

/// The answer form of a user task waiting for an answer, for a viewer who may answer.
fn answer_form(resource: &Value, request: &PageRequest<'_>) -> Option<FormView> {
    let viewer = request.viewer;
    let waiting = text(resource, "resourceType") == "QuestionnaireResponse"
        && text(resource, "status") == "in-progress";
    if !waiting || !viewer.can_answer {
        return None;
    }
    Some(FormView {
        action: format!(
            "{}/{ACTION_PREFIX}answer/{}",
            request.base_url,
            text(resource, "id")
        ),
        csrf: viewer.csrf.clone()?,
        fields: form::answer_fields(request.questionnaire?, resource),
    })
}

#[derive(Serialize)]
struct StatusFilter {
    label: &'static str,
    url: String,
    current: bool,
}

/// The Task statuses people look for, in the order a Task goes through them.
const TASK_STATUSES: [&str; 5] = ["draft", "requested", "in-progress", "completed", "failed"];

/// Links to the Tasks of each status (and all of them), newest first, on a Task search.
fn status_filters(request: &PageRequest<'_>, is_search: bool) -> Vec<StatusFilter> {
    if !is_search || request.path.trim_matches('/') != "Task" {
        return Vec::new();
    }
    let current = request
        .query
        .iter()
        .find(|(name, _)| name == "status")
        .map(|(_, value)| value.as_str());
    std::iter::once(("all", None))
        .chain(TASK_STATUSES.into_iter().map(|s| (s, Some(s))))
        .map(|(label, status)| StatusFilter {
            label,
            url: match status {
                Some(status) => format!(
                    "{}/Task?status={status}&_sort=-_lastUpdated",
                    request.base_url
                ),
                None => format!("{}/Task?_sort=-_lastUpdated", request.base_url),
            },
            current: current == status,
        })
        .collect()
}

#[derive(Serialize)]
struct IssueView {
    severity: String,
    code: String,
    diagnostics: String,
}

#[derive(Serialize)]
struct TaskView {
    status: String,
    process: String,
    requester: String,
    recipient: String,
    business_key: Option<String>,
    parts: Vec<TaskPart>,
}

#[derive(Serialize)]
struct TaskPart {
    name: &'static str,
    rows: Vec<ParameterRow>,
}

#[derive(Serialize)]
struct ParameterRow {
    code: String,
    value: String,
    details: String,
}

#[derive(Serialize)]
struct BundleView {
    heading: String,
    entries: Vec<EntryView>,
    links: Vec<Link>,
}

#[derive(Serialize)]
struct EntryView {
    label: String,
    url: Option<String>,
    status: String,
    last_updated: String,
}

#[derive(Serialize)]
struct Link {
    relation: String,
    label: String,
    url: String,
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl PageView {
    fn new(resource: &Value, status: StatusCode, request: &PageRequest<'_>) -> PageView {
        let resource_type = text(resource, "resourceType");
        let id = text(resource, "id");
        let title = match (resource_type.as_str(), id.is_empty()) {
            ("Bundle", _) | (_, true) => {
                let path = request.path.trim_matches('/');
                if path.is_empty() {
                    resource_type.clone()
                } else {
                    path.to_owned()
                }
            }
            _ => format!("{resource_type}/{id}"),
        };
        let meta = resource.get("meta");
        let history_url = (!id.is_empty() && resource_type != "Bundle")
            .then(|| format!("{}/{resource_type}/{id}/_history", request.base_url));
        let (theme, theme_label) = request
            .theme
            .map_or(("none", ""), |t| (t.name(), t.label()));
        PageView {
            title,
            organization: request.organization.to_owned(),
            theme,
            theme_label,
            style: STYLE,
            base_url: request.base_url.to_owned(),
            status: status.as_u16(),
            version: meta.map(|m| text(m, "versionId")).filter(|v| !v.is_empty()),
            last_updated: meta
                .map(|m| text(m, "lastUpdated"))
                .filter(|v| !v.is_empty()),
            history_url,
            json_url: format_url(request, "json"),
            xml_url: format_url(request, "xml"),
            issues: issues(resource),
            task: (resource_type == "Task").then(|| task_view(resource)),
            bundle: (resource_type == "Bundle").then(|| bundle_view(resource, request)),
            references: references(resource, request.base_url),
            status_filters: status_filters(request, resource_type == "Bundle"),
            json: serde_json::to_string_pretty(resource).unwrap_or_default(),
            user: request.viewer.name.clone(),
            logout_csrf: request
                .viewer
                .logout
                .then(|| request.viewer.csrf.clone())
                .flatten(),
            start_form: start_form(resource, request),
            answer_form: answer_form(resource, request),
        }
    }
}

/// The same request with `_format` set: the resource as JSON or XML.
fn format_url(request: &PageRequest<'_>, format: &str) -> String {
    let mut url = format!("{}/{}?", request.base_url, request.path.trim_matches('/'));
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    for (name, value) in request.query.iter().filter(|(n, _)| n != "_format") {
        url.push_str(&format!("{}={}&", encode(name), encode(value)));
    }
    url.push_str("_format=");
    url.push_str(format);
    url
}

fn issues(resource: &Value) -> Vec<IssueView> {
    if resource.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome") {
        return Vec::new();
    }
    crate::access::array_at(resource, "issue")
        .iter()
        .map(|issue| IssueView {
            severity: text(issue, "severity"),
            code: text(issue, "code"),
            diagnostics: text(issue, "diagnostics"),
        })
        .collect()
}

/// A reference or identifier as people read it: `Organization/x`, or `system|value`.
fn reference_text(reference: &Value) -> String {
    if let Some(r) = reference.get("reference").and_then(Value::as_str) {
        return r.to_owned();
    }
    match reference.get("identifier") {
        Some(identifier) => format!(
            "{}|{}",
            text(identifier, "system"),
            text(identifier, "value")
        ),
        None => String::new(),
    }
}

fn task_view(task: &Value) -> TaskView {
    let recipients =
        crate::access::array_at(task.get("restriction").unwrap_or(&Value::Null), "recipient");
    let parts = |key: &str| -> Vec<ParameterRow> {
        crate::access::array_at(task, key)
            .iter()
            .map(parameter_row)
            .collect()
    };
    let business_key = parts("input")
        .into_iter()
        .find(|row| row.code.ends_with("|business-key"))
        .map(|row| row.value);
    TaskView {
        status: text(task, "status"),
        process: text(task, "instantiatesCanonical"),
        requester: task
            .get("requester")
            .map(reference_text)
            .unwrap_or_default(),
        recipient: recipients
            .iter()
            .map(reference_text)
            .collect::<Vec<_>>()
            .join(", "),
        business_key,
        parts: vec![
            TaskPart {
                name: "Inputs",
                rows: parts("input"),
            },
            TaskPart {
                name: "Outputs",
                rows: parts("output"),
            },
        ],
    }
}

/// One Task input or output: its type's coding, its value, and what its extensions say
/// (the ping-pong plugin's statuses name their target there).
fn parameter_row(parameter: &Value) -> ParameterRow {
    let coding = parameter
        .get("type")
        .map(|t| crate::access::array_at(t, "coding"))
        .and_then(|codings| codings.first());
    let code = coding.map_or(String::new(), |c| {
        format!("{}|{}", text(c, "system"), text(c, "code"))
    });
    let value = parameter
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
        .map(|(_, v)| value_text(v))
        .unwrap_or_default();
    let details = crate::access::array_at(parameter, "extension")
        .iter()
        .flat_map(|e| std::iter::once(e).chain(crate::access::array_at(e, "extension").iter()))
        .filter_map(|e| {
            let name = text(e, "url");
            let value = e
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
                .map(|(_, v)| value_text(v))?;
            Some(format!(
                "{}: {value}",
                name.rsplit('/').next().unwrap_or(&name)
            ))
        })
        .collect::<Vec<_>>()
        .join("; ");
    ParameterRow {
        code,
        value,
        details,
    }
}

/// A FHIR value as people read it.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) if o.contains_key("code") => {
            format!("{}|{}", text(value, "system"), text(value, "code"))
        }
        Value::Object(o) if o.contains_key("reference") || o.contains_key("identifier") => {
            reference_text(value)
        }
        Value::Object(o) if o.contains_key("value") => {
            format!("{}|{}", text(value, "system"), value_text(&o["value"]))
        }
        other => other.to_string(),
    }
}

fn bundle_view(bundle: &Value, request: &PageRequest<'_>) -> BundleView {
    let entries = crate::access::array_at(bundle, "entry")
        .iter()
        .map(|entry| {
            let resource = entry.get("resource").unwrap_or(&Value::Null);
            let resource_type = text(resource, "resourceType");
            let id = text(resource, "id");
            let full_url = text(entry, "fullUrl");
            EntryView {
                label: if id.is_empty() {
                    full_url.clone()
                } else {
                    format!("{resource_type}/{id}")
                },
                url: page_link(&full_url, request.base_url),
                status: text(resource, "status"),
                last_updated: resource
                    .get("meta")
                    .map(|m| text(m, "lastUpdated"))
                    .unwrap_or_default(),
            }
        })
        .collect();
    let links = crate::access::array_at(bundle, "link")
        .iter()
        .filter_map(|link| {
            let relation = text(link, "relation");
            let url = page_link(&text(link, "url"), request.base_url)?;
            (relation != "self").then(|| Link {
                label: relation.clone(),
                relation,
                url,
            })
        })
        .collect();
    let heading = match bundle.get("total").and_then(Value::as_u64) {
        Some(1) => "1 found".to_owned(),
        Some(total) => format!("{total} found"),
        None => "Entries".to_owned(),
    };
    BundleView {
        heading,
        entries,
        links,
    }
}

/// Every literal reference in `resource`, as links to their pages.
fn references(resource: &Value, base_url: &str) -> Vec<Link> {
    let mut found = Vec::new();
    collect_references(resource, &mut found);
    found.sort();
    found.dedup();
    found
        .into_iter()
        .filter_map(|reference| {
            let url = page_link(&reference, base_url)?;
            Some(Link {
                relation: "reference".into(),
                label: reference,
                url,
            })
        })
        .collect()
}

fn collect_references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, value) in object {
                match value {
                    Value::String(s) if key == "reference" => found.push(s.clone()),
                    _ => collect_references(value, found),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|v| collect_references(v, found)),
        _ => {}
    }
}

/// A link a page may carry: a reference relative to this server made absolute, or an
/// absolute `https`/`http` URL; anything else (`javascript:`, `urn:uuid:`, a fragment) is no
/// link.
fn page_link(reference: &str, base_url: &str) -> Option<String> {
    let reference = reference.trim();
    if reference.starts_with("https://") || reference.starts_with("http://") {
        return Some(reference.to_owned());
    }
    let mut segments = reference.split('/');
    let (resource_type, id) = (segments.next()?, segments.next()?);
    let known = crate::resource_type::supported_type(resource_type).is_some();
    (known && super::rest::valid_id(id)).then(|| format!("{base_url}/{reference}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_below_the_path_that_metrics_and_audit_records_name_pages() {
        // `interaction::classify` names every path under `_ui` a page's.
        assert!(ACTION_PREFIX.starts_with("_ui"));
    }

    #[test]
    fn browsers_get_pages_and_fhir_clients_do_not() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wants_html(None, Some(firefox)));
        assert!(wants_html(Some("html"), Some("application/fhir+json")));
        assert!(wants_html(Some("text/html"), None));
        assert!(!wants_html(Some("json"), Some(firefox)));
        assert!(!wants_html(None, Some("application/fhir+json")));
        assert!(!wants_html(
            None,
            Some("application/fhir+json, text/html;q=0.5")
        ));
        assert!(!wants_html(None, Some("*/*")));
        assert!(!wants_html(None, None));
    }

    #[test]
    fn only_safe_links_are_made() {
        let base = "https://dsf.example.org/fhir";
        assert_eq!(
            page_link("Organization/abc-1", base).as_deref(),
            Some("https://dsf.example.org/fhir/Organization/abc-1")
        );
        assert_eq!(page_link("javascript:alert(1)", base), None);
        assert_eq!(page_link("urn:uuid:1234", base), None);
        assert_eq!(page_link("Nonsense/1", base), None);
        assert_eq!(page_link("Task/\"onmouseover=x", base), None);
    }

    #[test]
    fn the_template_renders_and_escapes() {
        let pages = Pages::new(None);
        let task = serde_json::json!({
            "resourceType": "Task", "id": "t1", "status": "completed",
            "meta": {"versionId": "3", "lastUpdated": "2026-12-05T10:00:00.000Z"},
            "output": [{"type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/ping", "code": "ping-status"}]},
                        "valueCoding": {"system": "http://dsf.dev/fhir/CodeSystem/ping-status", "code": "<script>alert(1)</script>"}}]
        });
        let request = PageRequest {
            base_url: "https://dsf.example.org/fhir",
            organization: "example.org",
            theme: Some(UiTheme::Test),
            path: "Task/t1",
            query: &[],
            viewer: Viewer::anonymous(),
            questionnaire: None,
        };
        let html = pages
            .html(&PageView::new(&task, StatusCode::OK, &request))
            .expect("the template renders");
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("class=\"theme\" role=\"note\">Test<"),
            "{html}"
        );
        assert!(html.contains("ping-status"), "{html}");
        // minijinja escapes `/` too; the browser reads the entity back.
        assert!(html.contains("Task&#x2f;t1&#x2f;_history"), "{html}");
    }
}
