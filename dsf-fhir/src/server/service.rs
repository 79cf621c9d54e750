//! The REST API and the websocket endpoint as a service an embedder mounts in an application
//! of its own, instead of calling [`FhirServer::serve`].
//!
//! The embedder owns the listener and the TLS handshake, so it puts what the handshake told
//! into each request's extensions ([`super::PeerCertificate`], and [`super::PeerAddress`] when
//! forwarded certificates are believed), and starts the background work once with
//! [`FhirServer::start_background`]. Connection limits and per-address rates are the
//! embedder's business then; the per-organisation fair share of requests still applies.

use super::FhirServer;
use super::ResponseBody;
use bytes::Bytes;
use http::{Request, Response, Uri};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A cheap handle on a [`FhirServer`] that answers requests: a `tower::Service` (axum's
/// `Router::nest_service`, `route_service`) and a `hyper::service::Service`, generic over the
/// request body.
#[derive(Clone)]
pub struct FhirService {
    server: Arc<FhirServer>,
    nested: bool,
}

impl FhirService {
    pub(crate) fn new(server: Arc<FhirServer>) -> Self {
        FhirService {
            server,
            nested: false,
        }
    }

    /// For a mount that strips its prefix before calling the service, as axum's
    /// `nest_service` does: request paths are then taken as relative to the base URL's path.
    pub fn nested(mut self) -> Self {
        self.nested = true;
        self
    }

    /// Answers one request.
    pub async fn call<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let req = match self.nested {
            true => self.with_context_path(req),
            false => req,
        };
        self.server.clone().respond(req, None).await
    }

    fn boxed_call<B>(&self, req: Request<B>) -> ResponseFuture
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let service = self.clone();
        Box::pin(async move { Ok(FhirService::call(&service, req).await) })
    }

    fn with_context_path<B>(&self, req: Request<B>) -> Request<B> {
        let (mut parts, body) = req.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let separator = if path_and_query.starts_with('/') {
            ""
        } else {
            "/"
        };
        let full = format!("{}{separator}{path_and_query}", self.server.context_path);
        if let Ok(uri) = full.parse::<Uri>() {
            parts.uri = uri;
        }
        Request::from_parts(parts, body)
    }
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

impl<B> tower_service::Service<Request<B>> for FhirService
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        self.boxed_call(req)
    }
}

impl<B> hyper::service::Service<Request<B>> for FhirService
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<B>) -> ResponseFuture {
        self.boxed_call(req)
    }
}
