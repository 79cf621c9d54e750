//! What the browser pages do beyond reading: a page rendered for its viewer (with the forms
//! they may use), and the forms' submissions (`POST <base>/_ui/…`). A submission runs the
//! same FHIR interactions a client would (read, create, update with `If-Match`), as the same
//! identity under the same authorization; only its CSRF token and origin are checked first.

use super::form;
use super::{PageRequest, Viewer};
use crate::search::parse_query_string;
use crate::server::caller::Principal;
use crate::server::reply::{Body, Reply};
use crate::server::request_body::read_body;
use crate::server::{Call, FhirServer, Identity, ResponseBody, Role};
use crate::{Error, Result};
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::Value;

/// Largest form submission.
const MAX_FORM_BYTES: usize = 256 * 1024;

/// A form's outcome: where to go next, or the answer to show instead.
type Outcome = std::result::Result<Response<ResponseBody>, Reply>;

/// The JSON of a successful reply; an unsuccessful one is the outcome.
fn success_json(reply: Reply) -> std::result::Result<Value, Reply> {
    if !reply.status.is_success() {
        return Err(reply);
    }
    let value = match reply.body {
        Body::Value(value) => value,
        Body::Stored(json) => serde_json::from_str(&json).map_err(|e| {
            Reply::error(&Error::storage_fault(format!(
                "stored resource unreadable: {e}"
            )))
        })?,
        _ => Value::Null,
    };
    Ok(value)
}

fn see_other(location: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::try_from(location) {
        response.headers_mut().insert(http::header::LOCATION, value);
    }
    response
}

fn now() -> String {
    crate::date::format_instant(crate::date::unix_millis_now())
}

impl FhirServer {
    /// One FHIR interaction as `identity`, its error as a reply.
    async fn interact(
        &self,
        identity: &Identity,
        method: Method,
        path: String,
        query: Vec<(String, String)>,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> Reply {
        let call = Call {
            identity,
            method,
            path,
            query,
            headers,
            body,
        };
        self.route(&call).await.unwrap_or_else(|e| Reply::error(&e))
    }

    /// Who looks at a page, and which forms their roles allow.
    fn viewer(&self, identity: &Identity, principal: &Principal<'_>) -> Viewer {
        Viewer {
            name: identity.name().to_owned(),
            csrf: principal
                .csrf_subject()
                .map(|subject| self.pages.csrf_token(&subject)),
            can_start: identity.has_role(Role::Create, "Task"),
            can_answer: identity.has_role(Role::Update, "QuestionnaireResponse"),
            logout: matches!(principal, Principal::Session(_)),
        }
    }

    /// `path` read as `identity`: the resource, or the refusal to show.
    async fn read_as(
        &self,
        identity: &Identity,
        path: String,
    ) -> std::result::Result<Value, Reply> {
        let reply = self
            .interact(
                identity,
                Method::GET,
                path,
                Vec::new(),
                http::HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        success_json(reply)
    }

    /// The page of `reply` for the caller: with the start form on a draft Task and the answer
    /// form on a user task waiting for an answer, where the caller's roles allow them.
    pub(crate) async fn page(
        &self,
        reply: Reply,
        identity: &Identity,
        principal: &Principal<'_>,
        path: &str,
        query: &[(String, String)],
    ) -> Response<ResponseBody> {
        let viewer = self.viewer(identity, principal);
        let questionnaire = if viewer.can_answer
            && reply.status == StatusCode::OK
            && path.starts_with("QuestionnaireResponse/")
        {
            self.questionnaire_for_page(identity, &reply).await
        } else {
            None
        };
        let mut request = PageRequest::new(&self.config, path, query, &viewer);
        request.questionnaire = questionnaire.as_ref();
        self.pages.render(reply, &request)
    }

    /// The Questionnaire of an in-progress QuestionnaireResponse the reply holds.
    async fn questionnaire_for_page(&self, identity: &Identity, reply: &Reply) -> Option<Value> {
        let response = match &reply.body {
            Body::Value(value) => value.clone(),
            Body::Stored(json) => serde_json::from_str(json).ok()?,
            _ => return None,
        };
        if response.get("status").and_then(Value::as_str) != Some("in-progress") {
            return None;
        }
        self.questionnaire_of(identity, &response).await.ok()
    }

    /// The Questionnaire a QuestionnaireResponse answers (`questionnaire`, `url|version`), as
    /// `identity` may read it.
    async fn questionnaire_of(
        &self,
        identity: &Identity,
        response: &Value,
    ) -> std::result::Result<Value, Reply> {
        let canonical = response
            .get("questionnaire")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (url, version) = canonical.split_once('|').unwrap_or((canonical, ""));
        let mut query = vec![("url".to_owned(), url.to_owned())];
        if !version.is_empty() {
            query.push(("version".to_owned(), version.to_owned()));
        }
        let reply = self
            .interact(
                identity,
                Method::GET,
                "Questionnaire".into(),
                query,
                http::HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        let bundle = success_json(reply)?;
        bundle.pointer("/entry/0/resource").cloned().ok_or_else(|| {
            Reply::error(&Error::NotFound(format!(
                "Questionnaire {canonical} not found"
            )))
        })
    }

    /// A form's submission: checked for its CSRF token and origin, then carried out.
    pub(crate) async fn ui_action<B>(
        &self,
        identity: &Identity,
        principal: &Principal<'_>,
        action: &str,
        parts: http::request::Parts,
        body: B,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let outcome = match self.checked_form(principal, &parts, body).await {
            Ok(form) => self.carry_out(identity, principal, action, &form).await,
            Err(e) => Err(Reply::error(&e)),
        };
        match outcome {
            Ok(response) => response,
            Err(reply) => {
                let viewer = self.viewer(identity, principal);
                self.pages
                    .render(reply, &PageRequest::new(&self.config, "", &[], &viewer))
            }
        }
    }

    /// The submitted form, once it is a form posted from this server's own page.
    async fn checked_form<B>(
        &self,
        principal: &Principal<'_>,
        parts: &http::request::Parts,
        body: B,
    ) -> Result<Vec<(String, String)>>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        if parts.method != Method::POST {
            return Err(Error::MethodNotAllowed("forms are posted".into()));
        }
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return Err(Error::UnsupportedMediaType(
                "forms are application/x-www-form-urlencoded".into(),
            ));
        }
        // A browser names the page's origin on every form post; another site's page is
        // refused even before its (missing) token is.
        if let Some(origin) = parts.headers.get(http::header::ORIGIN) {
            if origin.to_str().ok() != Some(self.pages.origin(&self.config.base_url)) {
                return Err(Error::Forbidden("form posted from another site".into()));
            }
        }
        let body = read_body(body, MAX_FORM_BYTES).await?;
        let text =
            std::str::from_utf8(&body).map_err(|_| Error::Invalid("form is not UTF-8".into()))?;
        let form = parse_query_string(text);
        let subject = principal
            .csrf_subject()
            .ok_or_else(|| Error::Forbidden("forms are for browsers, not bearer tokens".into()))?;
        let token = form
            .iter()
            .find(|(name, _)| name == "csrf")
            .map_or("", |(_, v)| v.as_str());
        if !self.pages.csrf_valid(&subject, token) {
            tracing::warn!(caller = %subject.split(':').next().unwrap_or(""), "form refused: CSRF token invalid");
            return Err(Error::Forbidden("CSRF token invalid".into()));
        }
        Ok(form)
    }

    async fn carry_out(
        &self,
        identity: &Identity,
        principal: &Principal<'_>,
        action: &str,
        form: &form::Submitted,
    ) -> Outcome {
        let mut segments = action.split('/');
        match (segments.next(), segments.next(), segments.next()) {
            (Some("logout"), None, None) => match principal {
                Principal::Session(id) => Ok(self.logout(id).await),
                _ => Err(Reply::error(&Error::Invalid(
                    "only a login session logs out".into(),
                ))),
            },
            (Some("start"), Some(id), None) => self.start_process(identity, id, form).await,
            (Some("answer"), Some(id), None) => self.answer_user_task(identity, id, form).await,
            _ => Err(Reply::error(&Error::NotFound(format!("no form {action}")))),
        }
    }

    /// `resource` written to `path` as `identity` (a create or an update, `If-Match` the
    /// version when given): the stored resource, or the refusal to show.
    async fn submit_as(
        &self,
        identity: &Identity,
        method: Method,
        path: String,
        resource: &Value,
        if_match: Option<&str>,
    ) -> std::result::Result<Value, Reply> {
        let body = serde_json::to_vec(resource)
            .map_err(|e| Reply::error(&Error::storage_fault(e.to_string())))?;
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json"),
        );
        if let Some(Ok(version)) = if_match.map(|v| HeaderValue::try_from(format!("W/\"{v}\""))) {
            headers.insert(http::header::IF_MATCH, version);
        }
        let reply = self
            .interact(
                identity,
                method,
                path,
                Vec::new(),
                headers,
                Bytes::from(body),
            )
            .await;
        success_json(reply)
    }

    /// Starts a process: the draft Task `id`, filled in from the form, created as a
    /// requested Task of the caller's.
    async fn start_process(
        &self,
        identity: &Identity,
        id: &str,
        form: &form::Submitted,
    ) -> Outcome {
        let draft = self.read_as(identity, format!("Task/{id}")).await?;
        if draft.get("status").and_then(Value::as_str) != Some("draft") {
            return Err(Reply::error(&Error::Invalid(
                "only a draft Task starts a process".into(),
            )));
        }
        let task = form::task_from_form(&draft, form, identity.reference(), &now())
            .map_err(|e| Reply::error(&e))?;
        let task = self
            .submit_as(identity, Method::POST, "Task".into(), &task, None)
            .await?;
        tracing::info!(identity = identity.name(), draft = id, task = %task["id"], "process started from the browser pages");
        Ok(see_other(&self.created_page(&task, "Task")))
    }

    /// The page of a created resource: its current version, which the process changes next
    /// (not the `Location`, which names version 1).
    fn created_page(&self, resource: &Value, resource_type: &str) -> String {
        format!(
            "{}/{resource_type}/{}",
            self.config.base_url,
            resource["id"].as_str().unwrap_or_default()
        )
    }

    /// Answers a user task: the QuestionnaireResponse `id`, completed with the form's answers
    /// by the caller, updated if no one changed it meanwhile.
    async fn answer_user_task(
        &self,
        identity: &Identity,
        id: &str,
        form: &form::Submitted,
    ) -> Outcome {
        let response = self
            .read_as(identity, format!("QuestionnaireResponse/{id}"))
            .await?;
        if response.get("status").and_then(Value::as_str) != Some("in-progress") {
            return Err(Reply::error(&Error::Invalid(
                "this user task is answered already".into(),
            )));
        }
        let version = response
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let questionnaire = self.questionnaire_of(identity, &response).await?;
        let completed = form::response_from_form(
            &questionnaire,
            &response,
            form,
            identity.reference(),
            &now(),
        )
        .map_err(|e| Reply::error(&e))?;
        self.submit_as(
            identity,
            Method::PUT,
            format!("QuestionnaireResponse/{id}"),
            &completed,
            Some(&version),
        )
        .await?;
        tracing::info!(
            identity = identity.name(),
            questionnaire_response = id,
            "user task answered from the browser pages"
        );
        Ok(see_other(&format!(
            "{}/QuestionnaireResponse/{id}",
            self.config.base_url
        )))
    }
}
