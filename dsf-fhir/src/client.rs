//! An HTTPS client for DSF FHIR servers with a client certificate: raw requests over a small
//! keep-alive pool, and JSON helpers on top. Used by the BPE, the dev CLI and tests.

use crate::{Error, Result};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A response as received.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Transport(format!("response is not JSON: {e}")))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The response as an error unless its status is a success; the OperationOutcome's
    /// diagnostics become the message.
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
        Err(match self.status.as_u16() {
            400 => Error::Invalid(message),
            401 => Error::Unauthenticated(message),
            403 => Error::Forbidden(message),
            404 => Error::NotFound(message),
            405 => Error::MethodNotAllowed(message),
            410 => Error::Gone {
                resource: message,
                version: 0,
            },
            412 => Error::PreconditionFailed(message),
            _ => Error::Transport(format!("{}: {message}", self.status)),
        })
    }
}

pub struct FhirClient {
    base_url: String,
    authority: String,
    path_prefix: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    timeout: Duration,
}

impl FhirClient {
    /// `base_url` like `https://host:port/fhir`; `tls` carries the client certificate.
    pub fn new(base_url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let rest = base_url
            .strip_prefix("https://")
            .ok_or_else(|| Error::Invalid(format!("base URL {base_url} is not https")))?;
        let (authority, path) = match rest.find('/') {
            Some(pos) => (&rest[..pos], &rest[pos..]),
            None => (rest, ""),
        };
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:443")
        };
        let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| Error::Invalid(format!("invalid host {host}: {e}")))?;
        Ok(FhirClient {
            path_prefix: path.to_owned(),
            base_url,
            authority,
            server_name,
            connector: TlsConnector::from(tls),
            idle: Mutex::new(Vec::new()),
            timeout: Duration::from_secs(30),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>> {
        loop {
            let candidate = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match candidate {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                None => break,
            }
        }
        let tcp = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| Error::Transport(format!("connect {}: {e}", self.authority)))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| Error::Transport(format!("TLS handshake with {}: {e}", self.authority)))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends a request to `path` below the base URL (e.g. `Task?status=requested`).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<RawResponse> {
        let uri = format!("{}/{}", self.path_prefix, path.trim_start_matches('/'));
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, &self.authority);
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
                .map_err(|e| Error::Transport(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| Error::Transport(e.to_string()))?
                .to_bytes();
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(sender);
            Ok(RawResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Transport(format!("request to {} timed out", self.base_url)))?
    }

    /// A JSON request with a JSON answer (`Accept` and `Content-Type` set to FHIR JSON).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<RawResponse> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        self.request(
            method,
            path,
            &[
                ("accept", "application/fhir+json"),
                ("content-type", "application/fhir+json"),
            ],
            bytes,
        )
        .await
    }

    pub async fn create(&self, resource: &Value) -> Result<Value> {
        let t = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Invalid("resource has no resourceType".into()))?;
        self.json(Method::POST, t, Some(resource))
            .await?
            .error_for_status()?
            .json()
    }

    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Value> {
        self.json(Method::GET, &format!("{resource_type}/{id}"), None)
            .await?
            .error_for_status()?
            .json()
    }

    pub async fn update(&self, resource: &Value) -> Result<Value> {
        let t = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let id = resource.get("id").and_then(Value::as_str).unwrap_or("");
        self.json(Method::PUT, &format!("{t}/{id}"), Some(resource))
            .await?
            .error_for_status()?
            .json()
    }

    /// A searchset Bundle for `Type?query`.
    pub async fn search(&self, resource_type: &str, query: &str) -> Result<Value> {
        self.json(Method::GET, &format!("{resource_type}?{query}"), None)
            .await?
            .error_for_status()?
            .json()
    }
}
