//! The status port (`DEV_DSF_SERVER_STATUS_PORT`): plain HTTP on an address of its own, for
//! load balancers, container health checks and Prometheus. Never on the API's port, so that
//! it needs no certificate and exposes nothing of the API.
//!
//! - `GET /health/live`: 200 while the process answers at all;
//! - `GET /health/ready`: 200 when every readiness check passes, else 503 with the reasons
//!   (the FHIR server: its database; the BPE: its state database and both websocket
//!   subscriptions);
//! - `GET <context path>/status` (and `/status`): the same as ready, at the Java DSF's path
//!   (`/fhir/status`, `/bpe/status`);
//! - `GET /metrics`: the Prometheus registry in the OpenMetrics text format.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Check = Arc<dyn Fn() -> BoxFuture<Result<(), String>> + Send + Sync>;
type Refresh = Arc<dyn Fn() -> BoxFuture<()> + Send + Sync>;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the status port serves: readiness checks, metrics and the refreshes that run before
/// each scrape.
pub struct StatusEndpoint {
    context_path: String,
    registry: Registry,
    checks: Vec<(&'static str, Check)>,
    refreshes: Vec<Refresh>,
}

impl StatusEndpoint {
    /// An endpoint answering the Java DSF's status path below `context_path` (`/fhir`,
    /// `/bpe`), with an empty registry and no checks.
    pub fn new(context_path: &str) -> Self {
        StatusEndpoint {
            context_path: context_path.trim_end_matches('/').to_owned(),
            registry: Registry::default(),
            checks: Vec::new(),
            refreshes: Vec::new(),
        }
    }

    /// The registry to register metrics into before serving.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Adds a readiness check named `name`.
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()) as BoxFuture<_>)));
        self
    }

    /// Adds work run before each scrape (metrics read from a database).
    pub fn refresh<F, Fut>(mut self, refresh: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.refreshes
            .push(Arc::new(move || Box::pin(refresh()) as BoxFuture<_>));
        self
    }

    /// Binds `address` and serves until the process ends; returns the bound address.
    pub async fn start(self, address: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("status port {address}: {e}")))?;
        let bound = listener.local_addr()?;
        tracing::info!(%bound, "status port listening");
        let endpoint = Arc::new(self);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let endpoint = endpoint.clone();
                        async move { Ok::<_, std::convert::Infallible>(endpoint.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(5))
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(bound)
    }

    async fn answer<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
        }
        let path = req.uri().path();
        let java_status = format!("{}/status", self.context_path);
        match path {
            "/health/live" => reply(StatusCode::OK, JSON, "{\"status\":\"live\"}\n"),
            "/health/ready" | "/status" => self.readiness().await,
            _ if path == java_status => self.readiness().await,
            "/metrics" => self.metrics().await,
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    async fn readiness(&self) -> Response<Full<Bytes>> {
        let runs = self.checks.iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
            };
            (*name, outcome)
        });
        let outcomes = futures_util::future::join_all(runs).await;
        let ready = outcomes.iter().all(|(_, o)| o.is_ok());
        let checks: serde_json::Map<String, serde_json::Value> = outcomes
            .into_iter()
            .map(|(name, outcome)| {
                let value = match outcome {
                    Ok(()) => "ok".to_owned(),
                    Err(reason) => reason,
                };
                (name.to_owned(), serde_json::Value::String(value))
            })
            .collect();
        let body = serde_json::json!({
            "status": if ready { "ready" } else { "not ready" },
            "checks": checks,
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        reply(status, JSON, format!("{body}\n"))
    }

    async fn metrics(&self) -> Response<Full<Bytes>> {
        futures_util::future::join_all(self.refreshes.iter().map(|refresh| refresh())).await;
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            Ok(()) => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "metrics not encodable\n",
            ),
        }
    }
}

const JSON: &str = "application/json";

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// The address of the status port from `DEV_DSF_SERVER_STATUS_HOST` (default 127.0.0.1) and
/// `DEV_DSF_SERVER_STATUS_PORT`; `None` when no port is set.
pub fn address_from(host: &str, port: Option<u16>) -> Result<Option<SocketAddr>, String> {
    let Some(port) = port else {
        return Ok(None);
    };
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| format!("DEV_DSF_SERVER_STATUS_HOST: '{host}' is not an IP address"))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// `<binary> health-check`: asks the status port of this container's server whether it is
/// ready (`/health/ready`) and exits 0 if so, 1 otherwise, printing why. What the images'
/// `HEALTHCHECK` runs: the runtime image has no curl.
pub fn health_check_if_asked() -> Option<i32> {
    if std::env::args().nth(1).as_deref() != Some("health-check") {
        return None;
    }
    let port = std::env::var("DEV_DSF_SERVER_STATUS_PORT").ok();
    let Some(port) = port.and_then(|p| p.trim().parse::<u16>().ok()) else {
        eprintln!("health-check: DEV_DSF_SERVER_STATUS_PORT is not set to a port");
        return Some(1);
    };
    let host = std::env::var("DEV_DSF_SERVER_STATUS_HOST").unwrap_or_default();
    // A status port bound to every address is asked on loopback.
    let host = match host.trim() {
        "" | "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" | "[::]" => "::1".to_owned(),
        other => other.to_owned(),
    };
    let Ok(Some(address)) = address_from(&host, Some(port)) else {
        eprintln!("health-check: DEV_DSF_SERVER_STATUS_HOST '{host}' is not an IP address");
        return Some(1);
    };
    match probe(address, "/health/ready") {
        Ok((200, _)) => Some(0),
        Ok((status, body)) => {
            eprintln!("health-check: {status} {}", body.trim());
            Some(1)
        }
        Err(e) => {
            eprintln!("health-check: {address}: {e}");
            Some(1)
        }
    }
}

/// One plain HTTP/1.1 GET of `path` at `address`: the status code and body.
pub fn probe(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = Duration::from_secs(5);
    let mut tcp = std::net::TcpStream::connect_timeout(&address, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    tcp.take(1 << 20).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_fails_with_the_reason_of_each_failing_check() {
        let endpoint = StatusEndpoint::new("/fhir/")
            .check("database", || async { Ok(()) })
            .check("subscriptions", || async {
                Err("the Task subscription is not connected".to_owned())
            });
        let address = endpoint
            .start(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind");
        let (ready, java) = tokio::task::spawn_blocking(move || {
            (
                probe(address, "/health/ready"),
                probe(address, "/fhir/status"),
            )
        })
        .await
        .expect("probe");
        let (ready, java) = (ready.expect("ready"), java.expect("status"));
        assert_eq!(ready.0, 503);
        let answer: serde_json::Value = serde_json::from_str(&ready.1).expect("JSON");
        assert_eq!(answer["status"], "not ready");
        assert_eq!(answer["checks"]["database"], "ok");
        assert_eq!(
            answer["checks"]["subscriptions"],
            "the Task subscription is not connected"
        );
        assert_eq!(java.0, 503, "the Java DSF's path answers as ready does");
    }

    #[tokio::test]
    async fn a_check_that_hangs_counts_as_failed_and_liveness_stays_up() {
        let endpoint = StatusEndpoint::new("/bpe").check("database", || async {
            std::future::pending::<()>().await;
            Ok(())
        });
        let address = endpoint
            .start(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind");
        let (ready, live) = tokio::task::spawn_blocking(move || {
            (
                probe(address, "/health/ready"),
                probe(address, "/health/live"),
            )
        })
        .await
        .expect("probe");
        let ready = ready.expect("ready");
        assert_eq!(ready.0, 503);
        assert!(ready.1.contains("no answer within"), "{}", ready.1);
        assert_eq!(live.expect("live").0, 200);
    }

    #[test]
    fn the_status_address_needs_an_ip() {
        assert_eq!(address_from("127.0.0.1", None), Ok(None));
        assert_eq!(
            address_from("0.0.0.0", Some(10000)),
            Ok(Some(([0, 0, 0, 0], 10000).into()))
        );
        assert!(address_from("status.example", Some(1)).is_err());
    }
}
