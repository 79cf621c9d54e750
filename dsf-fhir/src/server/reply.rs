//! Responses before rendering: a status, headers and a body that is stored JSON, a built
//! JSON value, or nothing; rendered in the negotiated format in one place.

use super::body::ResponseBody;
use crate::format::{render_stored, render_value, Format};
use crate::store::StoredResource;
use crate::{Error, IssueType, OperationOutcome};
use bytes::Bytes;
use dsf_core::ErrorChain;
use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::Value;
use std::sync::Arc;

pub enum Body {
    Empty,
    Stored(Arc<str>),
    Value(Value),
    /// Content that is not FHIR (a Binary's data), sent as it is whatever was negotiated.
    Raw {
        content_type: String,
        data: Bytes,
    },
    /// `length` bytes sent as they come from the store (a large Binary's content): of
    /// `content_type`, or of the negotiated FHIR format when `None`.
    Streamed {
        content_type: Option<String>,
        parts: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
        length: u64,
    },
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Body,
}

/// Stored JSON as a response body's bytes.
struct SharedJson(Arc<str>);

impl AsRef<[u8]> for SharedJson {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Stored JSON as a body in `format`: JSON without `_pretty` goes out as it is kept, shared
/// with the store's copy; anything else is rendered.
pub(crate) fn stored_body(json: &Arc<str>, format: Format, pretty: bool) -> crate::Result<Bytes> {
    if format == Format::Json && !pretty {
        return Ok(Bytes::from_owner(SharedJson(json.clone())));
    }
    render_stored(json.as_bytes(), format, pretty).map(Bytes::from)
}

/// What a 503 asks the client to wait before it tries again.
pub const RETRY_AFTER_SECONDS: u64 = 5;

/// `W/"n"`.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

pub fn http_date(millis: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis.max(0) as u64);
    httpdate::fmt_http_date(t)
}

impl Reply {
    pub fn new(status: StatusCode, body: Body) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub fn outcome(status: StatusCode, outcome: OperationOutcome) -> Self {
        Reply::new(status, Body::Value(outcome.to_json()))
    }

    pub fn error(error: &Error) -> Self {
        super::trace::refused(error);
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut reply = Reply::outcome(status, error.to_outcome());
        match error {
            Error::Gone { version, .. } => reply = reply.header(http::header::ETAG, etag(*version)),
            Error::Unavailable(_) => {
                reply = reply.header(http::header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string())
            }
            _ => {}
        }
        reply
    }

    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// ETag and Last-Modified of a stored version.
    pub fn version_headers(self, stored: &StoredResource) -> Self {
        self.header(http::header::ETAG, etag(stored.version))
            .header(http::header::LAST_MODIFIED, http_date(stored.last_updated))
    }

    pub fn render(self, format: Format, pretty: bool) -> Response<ResponseBody> {
        let mut raw_type = None;
        let rendered: crate::Result<Option<ResponseBody>> = match self.body {
            Body::Empty => Ok(None),
            Body::Raw { content_type, data } => {
                raw_type = Some(content_type);
                Ok(Some(ResponseBody::whole(data)))
            }
            Body::Streamed {
                content_type,
                parts,
                length,
            } => {
                raw_type = content_type;
                Ok(Some(ResponseBody::streamed(parts, length)))
            }
            Body::Stored(json) => stored_body(&json, format, pretty)
                .map(ResponseBody::whole)
                .map(Some),
            Body::Value(value) => {
                render_value(&value, format, pretty).map(|b| Some(ResponseBody::whole(b.into())))
            }
        };
        let (status, headers, bytes, format) = match rendered {
            Ok(bytes) => (self.status, self.headers, bytes, format),
            Err(e) => {
                if e.status() >= 500 {
                    tracing::error!(error = %ErrorChain(&e), "cannot render response");
                }
                // The outcome goes out as JSON, whatever was asked for: the asked-for
                // format may be what failed.
                let fallback = serde_json::to_vec(&e.to_outcome().to_json()).unwrap_or_default();
                (
                    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    Vec::new(),
                    Some(ResponseBody::whole(Bytes::from(fallback))),
                    Format::Json,
                )
            }
        };
        let has_body = bytes.is_some();
        let mut response = Response::new(bytes.unwrap_or_default());
        *response.status_mut() = status;
        let h = response.headers_mut();
        for (name, value) in headers {
            // Taken over, not copied.
            if let Ok(v) = HeaderValue::try_from(value) {
                h.append(name, v);
            }
        }
        match raw_type.and_then(|t| HeaderValue::try_from(t).ok()) {
            Some(content_type) => {
                h.insert(http::header::CONTENT_TYPE, content_type);
            }
            None if has_body => {
                h.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(format.content_type()),
                );
            }
            None => {}
        }
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-transform, private"),
        );
        h.insert(http::header::VARY, HeaderValue::from_static("Accept"));
        response
    }
}

/// How the server answers each error: HTTP status, issue type, the outcome a client sees.
impl Error {
    /// The HTTP status the server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            Error::Invalid(_) => 400,
            Error::NotSupported(_) => 400,
            Error::NotFound(_) => 404,
            Error::Gone { .. } => 410,
            Error::VersionConflict(_) => 412,
            Error::PreconditionFailed(_) => 412,
            Error::MethodNotAllowed(_) => 405,
            Error::UnsupportedMediaType(_) => 415,
            Error::NotAcceptable(_) => 406,
            Error::PayloadTooLarge(_) => 413,
            Error::Unauthenticated(_) => 401,
            Error::Forbidden(_) => 403,
            // The Java DSF answers a unique-constraint violation with 403.
            Error::Duplicate(_) | Error::ProfileViolation(_) => 403,
            Error::Storage { .. } | Error::Transport { .. } => 500,
            Error::Server { status, .. } => *status,
            Error::Timeout(_) => 504,
            Error::Unavailable(_) => 503,
        }
    }

    /// The OperationOutcome issue type the server reports this error with.
    pub fn issue_type(&self) -> IssueType {
        match self {
            Error::Invalid(_) => IssueType::Invalid,
            Error::NotSupported(_) | Error::MethodNotAllowed(_) => IssueType::NotSupported,
            Error::NotFound(_) => IssueType::NotFound,
            Error::Gone { .. } => IssueType::Deleted,
            Error::VersionConflict(_) | Error::PreconditionFailed(_) => IssueType::Conflict,
            Error::UnsupportedMediaType(_) | Error::NotAcceptable(_) => IssueType::NotSupported,
            Error::PayloadTooLarge(_) => IssueType::TooCostly,
            Error::Unauthenticated(_) => IssueType::Login,
            Error::Forbidden(_) => IssueType::Forbidden,
            Error::Duplicate(_) => IssueType::Duplicate,
            Error::ProfileViolation(_) => IssueType::Processing,
            Error::Storage { .. } | Error::Transport { .. } | Error::Server { .. } => {
                IssueType::Exception
            }
            Error::Timeout(_) => IssueType::Timeout,
            Error::Unavailable(_) => IssueType::Transient,
        }
    }

    /// The OperationOutcome a client is shown. Storage faults say no more than that they
    /// happened; their detail goes to the log.
    pub fn to_outcome(&self) -> OperationOutcome {
        let text = match self {
            Error::Storage { .. } => {
                "the server could not complete the request; see its log".into()
            }
            other => other.to_string(),
        };
        OperationOutcome::error(self.issue_type(), text)
    }
}

/// The answer to a request refused before its URL is parsed: in the format `Accept` asks for,
/// JSON when it asks for none this server writes.
pub(crate) fn refused(headers: &http::HeaderMap, error: &Error) -> Response<ResponseBody> {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Format::negotiate(None, accept).unwrap_or(Format::Json);
    Reply::error(error).render(format, false)
}

/// 405 with the methods the path allows.
pub(crate) fn method_not_allowed(allow: &str) -> Reply {
    Reply::error(&Error::MethodNotAllowed(format!(
        "method not allowed here; allowed: {allow}"
    )))
    .header(http::header::ALLOW, allow)
}

/// A status from its number; 500 for one that is none.
pub(crate) fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body_of(response: Response<ResponseBody>) -> Bytes {
        let collected = block_on(response.into_body().collect());
        collected.map(|c| c.to_bytes()).unwrap_or_default()
    }

    fn content_type(response: &Response<ResponseBody>) -> &str {
        response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn stored_json_is_sent_without_a_copy() {
        let stored: Arc<str> = Arc::from(r#"{"resourceType":"Task","id":"a"}"#);
        let response =
            Reply::new(StatusCode::OK, Body::Stored(stored.clone())).render(Format::Json, false);
        assert_eq!(
            content_type(&response),
            "application/fhir+json;charset=UTF-8"
        );
        let body = body_of(response);
        assert_eq!(&body[..], stored.as_bytes());
        assert_eq!(body.as_ptr(), stored.as_ptr(), "the body was copied");
    }

    #[test]
    fn stored_json_asked_for_pretty_or_as_xml_is_rendered() {
        let stored: Arc<str> =
            Arc::from(r#"{"resourceType":"Task","id":"a","status":"draft","intent":"order"}"#);
        let pretty = body_of(
            Reply::new(StatusCode::OK, Body::Stored(stored.clone())).render(Format::Json, true),
        );
        assert!(pretty.contains(&b'\n'));
        let response = Reply::new(StatusCode::OK, Body::Stored(stored)).render(Format::Xml, false);
        assert_eq!(
            content_type(&response),
            "application/fhir+xml;charset=UTF-8"
        );
        let xml = body_of(response);
        assert!(xml.windows(5).any(|w| w == b"<Task"), "{xml:?}");
    }
}
