//! An async HTTPS client for DSF FHIR servers, authenticated by a client certificate: the
//! REST interactions (typed CRUD, conditional operations, search with paging, transactions),
//! OperationOutcomes turned into [`Error`] variants, retries with backoff for idempotent
//! calls, timeouts, and websocket subscriptions with REST catch-up ([`subscription`]).
//! Used by the BPE, the dev CLI, tests and embedders.

mod pages;
pub mod subscription;

pub use pages::SearchPages;
pub use subscription::{Notification, SubscriptionSettings, SubscriptionStream};

use crate::format::Format;
use crate::{Error, Result};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A response as received.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as received.
    pub body: Bytes,
}

impl RawResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::transport_in("response is not JSON", e))
    }

    /// A header's value, if it is there and is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The response as an error unless its status is a success; the OperationOutcome's
    /// diagnostics become the message and the status picks the variant.
    pub fn error_for_status(self) -> Result<Self> {
        if self.status.is_success() {
            return Ok(self);
        }
        let message = self
            .json()
            .ok()
            .and_then(|oo| {
                oo.pointer("/issue/0/diagnostics")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| self.status.to_string());
        let status = self.status.as_u16();
        Err(match status {
            400 | 422 => Error::Invalid(message),
            401 => Error::Unauthenticated(message),
            403 => Error::Forbidden(message),
            404 => Error::NotFound(message),
            405 => Error::MethodNotAllowed(message),
            406 => Error::NotAcceptable(message),
            409 => Error::VersionConflict(message),
            410 => Error::Gone {
                resource: message,
                version: 0,
            },
            412 => Error::PreconditionFailed(message),
            413 => Error::PayloadTooLarge(0),
            415 => Error::UnsupportedMediaType(message),
            500..=599 => Error::Server { status, message },
            _ => Error::transport_fault(format!("{}: {message}", self.status)),
        })
    }
}

/// How a [`FhirClient`] waits and retries.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientSettings {
    /// Limit of one attempt: connecting, sending and receiving the whole answer.
    pub timeout: Duration,
    /// Further attempts of an idempotent call (GET, HEAD, PUT, DELETE) after a transport
    /// error, a timeout, 429, 502, 503 or 504. Other calls are never repeated.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one, with jitter.
    pub backoff: Duration,
    /// The longest wait between retries.
    pub max_backoff: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// `delay` (doubled `attempt` times, capped) with up to 25% taken off at random, so that
/// many clients retrying at once spread out.
pub(crate) fn backoff(first: Duration, max: Duration, attempt: u32) -> Duration {
    let full = first.saturating_mul(1u32 << attempt.min(16)).min(max);
    let jitter = f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 255.0 * 0.25;
    full.mul_f64(1.0 - jitter)
}

/// One request as a [`Transport`] carries it: the method, the path below the client's base
/// URL (`Task?status=requested`), the headers and the body.
#[derive(Debug, Clone)]
pub struct TransportRequest {
    /// The HTTP method.
    pub method: Method,
    /// Below the client's base URL, with the query.
    pub path: String,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// The body, if any.
    pub body: Option<Bytes>,
}

/// Carries a client's requests when the client does not hold the TLS identity itself: a
/// process plugin's client hands each request to the BPE, which sends it with the
/// organisation's certificate. Websocket subscriptions are not available through one.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// Sends `request` to the FHIR server at `base_url` and returns its whole answer.
    async fn send(&self, base_url: &str, request: TransportRequest) -> Result<RawResponse>;
}

/// How a client reaches its server.
enum Route {
    /// Its own connections over mutual TLS.
    Tls {
        authority: String,
        server_name: ServerName<'static>,
        connector: TlsConnector,
        idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    },
    /// Another component's ([`Transport`]).
    Transport(Arc<dyn Transport>),
}

struct Inner {
    base_url: String,
    path_prefix: String,
    route: Route,
    settings: ClientSettings,
}

/// A client of one FHIR server. Cheap to clone; clones share their connections.
#[derive(Clone)]
pub struct FhirClient {
    inner: Arc<Inner>,
}

/// What a write answered: the resource as stored (when the server returned it), and where.
#[derive(Debug, Clone)]
pub struct Written {
    /// The HTTP status (201 created, 200 updated or found).
    pub status: StatusCode,
    /// `Location` (`…/Type/id/_history/n`).
    pub location: Option<String>,
    /// The resource as stored, when the server returned it.
    pub resource: Option<Value>,
    /// An OperationOutcome answered instead of the resource (e.g. when a conditional create
    /// found an existing one).
    pub outcome: Option<Value>,
}

impl Written {
    /// The id and version the `Location` names.
    pub fn id_and_version(&self) -> Option<(String, i64)> {
        let location = self.location.as_deref()?;
        let mut parts = location.rsplit('/');
        let version = parts.next()?.parse().ok()?;
        if parts.next()? != "_history" {
            return None;
        }
        Some((parts.next()?.to_owned(), version))
    }
}

impl FhirClient {
    /// `base_url` like `https://host:port/fhir`; `tls` carries the client certificate.
    pub fn new(base_url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self> {
        Self::with_settings(base_url, tls, ClientSettings::default())
    }

    /// A client as [`FhirClient::new`], with its own timeouts and retries.
    pub fn with_settings(
        base_url: &str,
        tls: Arc<rustls::ClientConfig>,
        settings: ClientSettings,
    ) -> Result<Self> {
        let (base_url, authority, path) = split_base_url(base_url)?;
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| Error::Invalid(format!("invalid host {host}: {e}")))?;
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:443")
        };
        let path_prefix = path.to_owned();
        Ok(FhirClient {
            inner: Arc::new(Inner {
                base_url,
                path_prefix,
                route: Route::Tls {
                    authority,
                    server_name,
                    connector: TlsConnector::from(tls),
                    idle: Mutex::new(Vec::new()),
                },
                settings,
            }),
        })
    }

    /// A client whose requests `transport` carries (see [`Transport`]); the same API as a
    /// client with its own connections, but for websocket subscriptions.
    pub fn with_transport(
        base_url: &str,
        transport: Arc<dyn Transport>,
        settings: ClientSettings,
    ) -> Result<Self> {
        let (base_url, _, path) = split_base_url(base_url)?;
        let path_prefix = path.to_owned();
        Ok(FhirClient {
            inner: Arc::new(Inner {
                base_url,
                path_prefix,
                route: Route::Transport(transport),
                settings,
            }),
        })
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The timeouts and retries in use.
    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// A TLS connection to the server, for HTTP or a websocket.
    pub(crate) async fn connect_tls(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let Route::Tls {
            authority,
            server_name,
            connector,
            ..
        } = &self.inner.route
        else {
            return Err(Error::transport_fault(format!(
                "the client of {} has no connections of its own (its requests go through a transport)",
                self.inner.base_url
            )));
        };
        let tcp = TcpStream::connect(authority)
            .await
            .map_err(|e| Error::transport_in(format!("connect {authority}"), e))?;
        let _ = tcp.set_nodelay(true);
        connector
            .connect(server_name.clone(), tcp)
            .await
            .map_err(|e| Error::transport_in(format!("TLS handshake with {authority}"), e))
    }

    /// `host:port` of a client with its own connections (the base URL otherwise).
    pub(crate) fn authority(&self) -> &str {
        match &self.inner.route {
            Route::Tls { authority, .. } => authority,
            Route::Transport(_) => &self.inner.base_url,
        }
    }

    /// Idle HTTP connections of a client with its own connections.
    fn idle(&self) -> Option<&Mutex<Vec<SendRequest<Full<Bytes>>>>> {
        match &self.inner.route {
            Route::Tls { idle, .. } => Some(idle),
            Route::Transport(_) => None,
        }
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>> {
        loop {
            let candidate = self
                .idle()
                .and_then(|idle| idle.lock().unwrap_or_else(|p| p.into_inner()).pop());
            match candidate {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                None => break,
            }
        }
        let tls = self.connect_tls().await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(Error::transport)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// The path of `url` below the base URL when `url` is absolute (a `next` link, a
    /// `Location`), else `url` itself.
    pub(crate) fn relative<'a>(&self, url: &'a str) -> &'a str {
        if let Some(rest) = url.strip_prefix(self.inner.base_url.as_str()) {
            return rest.trim_start_matches('/');
        }
        // The server may name itself differently (an external base URL): take what follows
        // the API path.
        if let Some(after_scheme) = url.split_once("://").map(|(_, r)| r) {
            let path = after_scheme.find('/').map_or("", |p| &after_scheme[p..]);
            if let Some(rest) = path.strip_prefix(self.inner.path_prefix.as_str()) {
                return rest.trim_start_matches('/');
            }
        }
        url
    }

    /// Sends a request to `path` below the base URL (e.g. `Task?status=requested`); idempotent
    /// methods are retried as [`ClientSettings`] say, but for conditional writes (`If-Match`).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<RawResponse> {
        let settings = &self.inner.settings;
        // A conditional write is not repeated: had the first attempt changed the resource
        // and lost only its answer, the repeat would be refused (412) for that very change,
        // telling the caller the opposite of what happened. Its caller reads what became of it.
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE
        ) && !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("if-match"));
        let mut attempt = 0;
        loop {
            let result = self
                .attempt(method.clone(), path, headers, body.clone())
                .await;
            let retry = match &result {
                Err(Error::Transport { .. } | Error::Timeout(_)) => true,
                Ok(response) => matches!(response.status.as_u16(), 429 | 502 | 503 | 504),
                Err(_) => false,
            };
            if !(retry && idempotent && attempt < settings.retries) {
                return result;
            }
            let wait = backoff(settings.backoff, settings.max_backoff, attempt);
            tracing::debug!(%method, path, attempt, ?wait, "retrying FHIR request");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<RawResponse> {
        let inner = &self.inner;
        let authority = match &inner.route {
            Route::Tls { authority, .. } => authority,
            Route::Transport(transport) => {
                let request = TransportRequest {
                    method,
                    path: path.trim_start_matches('/').to_owned(),
                    headers: headers
                        .iter()
                        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                        .collect(),
                    body,
                };
                return tokio::time::timeout(
                    inner.settings.timeout,
                    transport.send(&inner.base_url, request),
                )
                .await
                .map_err(|_| self.timed_out())?;
            }
        };
        let uri = format!("{}/{}", inner.path_prefix, path.trim_start_matches('/'));
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, authority);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let exchange = async {
            let mut sender = self.connection().await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(Error::transport)?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(Error::transport)?.to_bytes();
            if let Some(idle) = self.idle() {
                idle.lock().unwrap_or_else(|p| p.into_inner()).push(sender);
            }
            Ok(RawResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(inner.settings.timeout, exchange)
            .await
            .map_err(|_| self.timed_out())?
    }

    fn timed_out(&self) -> Error {
        Error::Timeout(format!(
            "request to {} timed out after {:?}",
            self.inner.base_url, self.inner.settings.timeout
        ))
    }

    /// A request with a FHIR body in `format` and an answer asked for in the same format.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        format: Format,
        extra_headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<RawResponse> {
        let mut headers = vec![("accept", format.mime()), ("content-type", format.mime())];
        headers.extend_from_slice(extra_headers);
        self.request(method, path, &headers, body).await
    }

    /// A JSON request with a JSON answer (`Accept` and `Content-Type` set to FHIR JSON).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<RawResponse> {
        self.json_with(method, path, &[], body).await
    }

    async fn json_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<RawResponse> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        self.send(method, path, Format::Json, headers, bytes).await
    }

    async fn write(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Written> {
        let mut all = vec![("prefer", "return=representation")];
        all.extend_from_slice(headers);
        let response = self
            .json_with(method, path, &all, body)
            .await?
            .error_for_status()?;
        let body = if response.body.is_empty() {
            None
        } else {
            Some(response.json()?)
        };
        let (resource, outcome) = match body {
            Some(b)
                if b.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome") =>
            {
                (None, Some(b))
            }
            other => (other, None),
        };
        Ok(Written {
            status: response.status,
            location: response.header("location").map(str::to_owned),
            resource,
            outcome,
        })
    }

    /// Creates `resource`; the answer is the resource as stored (id and meta set).
    pub async fn create<T: Serialize + DeserializeOwned>(&self, resource: &T) -> Result<T> {
        let value = to_value(resource)?;
        let t = type_of(&value)?;
        let written = self.write(Method::POST, t, &[], Some(&value)).await?;
        from_written(written)
    }

    /// Creates `resource` unless a resource matches `criteria` (`If-None-Exist`, e.g.
    /// `identifier=http://sys|v`); the answer says which happened (201 or 200) and holds the
    /// resource created or found.
    pub async fn create_if_none_exist(&self, resource: &Value, criteria: &str) -> Result<Written> {
        let t = type_of(resource)?;
        self.write(
            Method::POST,
            t,
            &[("if-none-exist", criteria)],
            Some(resource),
        )
        .await
    }

    /// The current version of `Type/id`.
    pub async fn read<T: DeserializeOwned>(&self, resource_type: &str, id: &str) -> Result<T> {
        let value = self
            .json(Method::GET, &format!("{resource_type}/{id}"), None)
            .await?
            .error_for_status()?
            .json()?;
        from_value(value)
    }

    /// One version of `Type/id`.
    pub async fn vread<T: DeserializeOwned>(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<T> {
        let value = self
            .json(
                Method::GET,
                &format!("{resource_type}/{id}/_history/{version}"),
                None,
            )
            .await?
            .error_for_status()?
            .json()?;
        from_value(value)
    }

    /// Updates `resource` (its `resourceType` and `id` say which).
    pub async fn update<T: Serialize + DeserializeOwned>(&self, resource: &T) -> Result<T> {
        self.update_if_match(resource, None).await
    }

    /// Updates `resource` only if its current version is `version` (`If-Match`), else
    /// [`Error::PreconditionFailed`].
    pub async fn update_if_match<T: Serialize + DeserializeOwned>(
        &self,
        resource: &T,
        version: Option<i64>,
    ) -> Result<T> {
        let value = to_value(resource)?;
        let t = type_of(&value)?;
        let id = value
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Invalid("resource to update has no id".into()))?;
        let etag = version.map(|v| format!("W/\"{v}\""));
        let headers: Vec<(&str, &str)> = etag.iter().map(|e| ("if-match", e.as_str())).collect();
        let written = self
            .write(Method::PUT, &format!("{t}/{id}"), &headers, Some(&value))
            .await?;
        from_written(written)
    }

    /// Conditional update: `PUT Type?criteria` (creates when nothing matches).
    pub async fn update_conditional(&self, resource: &Value, criteria: &str) -> Result<Written> {
        let t = type_of(resource)?;
        self.write(Method::PUT, &format!("{t}?{criteria}"), &[], Some(resource))
            .await
    }

    /// Deletes `resource_type/id`.
    pub async fn delete(&self, resource_type: &str, id: &str) -> Result<()> {
        self.json(Method::DELETE, &format!("{resource_type}/{id}"), None)
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Conditional delete: `DELETE Type?criteria`.
    pub async fn delete_conditional(&self, resource_type: &str, criteria: &str) -> Result<()> {
        self.json(Method::DELETE, &format!("{resource_type}?{criteria}"), None)
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// One searchset Bundle for `Type?query`.
    pub async fn search(&self, resource_type: &str, query: &str) -> Result<Value> {
        self.get_bundle(&format!("{resource_type}?{query}")).await
    }

    /// Every match of `Type?query`, page after page (following the `next` links).
    pub fn search_pages(&self, resource_type: &str, query: &str) -> SearchPages {
        SearchPages::new(self.clone(), format!("{resource_type}?{query}"))
    }

    pub(crate) async fn get_bundle(&self, path: &str) -> Result<Value> {
        self.json(Method::GET, path, None)
            .await?
            .error_for_status()?
            .json()
    }

    /// Posts a `transaction` or `batch` Bundle; the answer is the response Bundle.
    pub async fn transaction(&self, bundle: &Value) -> Result<Value> {
        self.json(Method::POST, "", Some(bundle))
            .await?
            .error_for_status()?
            .json()
    }

    /// The id of the active websocket Subscription with exactly these criteria, e.g.
    /// `Task?status=requested`, as the BPE looks up the one it binds to.
    pub async fn find_subscription(&self, criteria: &str) -> Result<String> {
        let encoded: String =
            percent_encoding::utf8_percent_encode(criteria, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let bundle = self
            .search(
                "Subscription",
                &format!("criteria:exact={encoded}&status=active&type=websocket"),
            )
            .await?;
        bundle
            .pointer("/entry/0/resource/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::NotFound(format!("no active Subscription for {criteria}")))
    }
}

/// `https://host:port/path` as (the URL without a trailing slash, `host:port`, `/path`).
fn split_base_url(base_url: &str) -> Result<(String, &str, &str)> {
    let trimmed = base_url.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .ok_or_else(|| Error::Invalid(format!("base URL {trimmed} is not https")))?;
    let (authority, path) = match rest.find('/') {
        Some(pos) => (&rest[..pos], &rest[pos..]),
        None => (rest, ""),
    };
    Ok((trimmed.to_owned(), authority, path))
}

fn to_value<T: Serialize>(resource: &T) -> Result<Value> {
    serde_json::to_value(resource).map_err(|e| Error::Invalid(format!("cannot serialise: {e}")))
}

fn from_value<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|e| Error::transport_in("unexpected resource in response", e))
}

fn from_written<T: DeserializeOwned>(written: Written) -> Result<T> {
    let resource = written
        .resource
        .ok_or_else(|| Error::transport_fault("the server returned no resource"))?;
    from_value(resource)
}

fn type_of(resource: &Value) -> Result<&str> {
    resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Invalid("resource has no resourceType".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let first = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 0..8 {
            let wait = backoff(first, max, attempt);
            let full = first.saturating_mul(1 << attempt).min(max);
            assert!(
                wait <= full && wait >= full.mul_f64(0.75),
                "{attempt}: {wait:?}"
            );
        }
    }

    #[test]
    fn error_statuses_become_variants() {
        let response = |status: u16, diagnostics: &str| {
            RawResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            body: Bytes::from(
                serde_json::json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x", "diagnostics": diagnostics}]})
                    .to_string(),
            ),
        }
        };
        assert!(
            matches!(response(404, "no Task/x").error_for_status(), Err(Error::NotFound(m)) if m == "no Task/x")
        );
        assert!(matches!(
            response(412, "v").error_for_status(),
            Err(Error::PreconditionFailed(_))
        ));
        assert!(matches!(
            response(503, "busy").error_for_status(),
            Err(Error::Server { status: 503, .. })
        ));
        assert!(response(201, "").error_for_status().is_ok());
    }
}
