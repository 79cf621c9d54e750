//! Accepting connections: TCP, mutual TLS (or plain HTTP behind a proxy), HTTP/1.1 with its
//! limits, the websocket upgrade, and shutting down what is open.

use super::caller::{PeerAddress, PeerCertificate};
use super::reply::Reply;
use super::{connections, websocket};
use super::{FhirServer, ResponseBody};
use crate::format::Format;
use crate::Error;
use dsf_core::{ErrorChain, Thumbprint};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

impl FhirServer {
    /// Accepts mutual-TLS connections until `shutdown` completes, then closes the open ones
    /// (websockets with 1001 "server shutting down", HTTP connections after their current
    /// request). Each connection must present a client certificate the TLS configuration
    /// trusts; its thumbprint is computed once per connection.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.accept_loop(listener, Some(TlsAcceptor::from(tls)), shutdown)
            .await
    }

    /// Accepts plain HTTP connections, for a server behind a TLS-terminating reverse proxy
    /// that forwards client certificates ([`ServerConfig::forwarded_certificates`](super::ServerConfig::forwarded_certificates)). A request
    /// from an address that is not a trusted proxy has no certificate and is answered 401.
    pub async fn serve_behind_proxy(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.accept_loop(listener, None, shutdown).await
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        acceptor: Option<TlsAcceptor>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.start_background()
            .await
            .map_err(std::io::Error::other)?;
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => {
                    self.shut_down();
                    return Ok(());
                }
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %ErrorChain(&e), "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let slot = match self.connections.admit(peer.ip(), &self.config.connections) {
                Ok(slot) => slot,
                Err(refused) => {
                    tracing::debug!(%peer, ?refused, "connection refused");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let server = self.clone();
            match acceptor.clone() {
                Some(acceptor) => {
                    tokio::spawn(
                        async move { server.tls_connection(acceptor, tcp, peer, slot).await },
                    );
                }
                None => {
                    tokio::spawn(async move { server.connection(tcp, peer, None, slot).await });
                }
            }
        }
    }

    async fn tls_connection(
        self: Arc<Self>,
        acceptor: TlsAcceptor,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        slot: Arc<connections::Slot>,
    ) {
        let limits = &self.config.connections;
        let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %ErrorChain(&e), "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = slot.evicted() => return,
        };
        let certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| PeerCertificate::from_der(cert));
        // Without a certificate only users who log in with OpenID Connect have any business.
        if certificate.is_none() && self.oidc.is_none() {
            return;
        }
        self.connection(tls, peer, certificate, slot).await;
    }

    /// Serves HTTP/1.1 over one accepted connection.
    async fn connection<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        certificate: Option<PeerCertificate>,
        slot: Arc<connections::Slot>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let limits = &self.config.connections;
        // A caller nobody allowed gets its 401 and the connection closes; it may not hold a
        // connection open meanwhile. A trusted proxy speaks for many callers.
        let from_proxy = self
            .config
            .forwarded_certificates
            .as_ref()
            .is_some_and(|f| f.trusts(peer.ip()));
        let known = from_proxy
            || match &certificate {
                Some(certificate) => !matches!(
                    self.identity_of(certificate).await,
                    Err(Error::Unauthenticated(_))
                ),
                // A browser or API client of an OpenID Connect user.
                None => self.oidc.is_some(),
            };
        slot.set_known(known);
        let header_timeout = match known {
            true => limits.header_timeout,
            false => limits.unknown_client_header_timeout,
        };
        let mut closing = self.closing.subscribe();
        let server = self.clone();
        let request_slot = slot.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let server = server.clone();
            let slot = request_slot.clone();
            if let Some(certificate) = &certificate {
                req.extensions_mut().insert(certificate.clone());
            }
            req.extensions_mut().insert(PeerAddress(peer));
            async move {
                let _busy = slot.busy();
                Ok::<_, std::convert::Infallible>(server.respond(req, Some(slot)).await)
            }
        });
        let io = connections::StallLimited::new(stream, limits.header_timeout);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(known)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let serving = async move {
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => result,
                _ = websocket::shut_down(&mut closing) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                _ = slot.evicted() => {
                    tracing::debug!(%peer, "idle connection closed to make room");
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        };
        // The audit log notes each request: one trace for the connection's life rather
        // than one per request (HTTP/1.1 answers one request at a time).
        let result = match self.config.audit {
            Some(_) => super::trace::for_connection(serving).await,
            None => serving.await,
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %ErrorChain(&e), "connection ended with error");
        }
    }

    /// Serves a websocket session over `stream` (after its handshake) for the holder of
    /// `thumbprint`: the `/fhir/ws` protocol without HTTP, for the fuzz targets.
    #[doc(hidden)]
    pub async fn websocket_over<S>(self: Arc<Self>, stream: S, thumbprint: Thumbprint)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(identity) = self
            .identity_of(&PeerCertificate::new(thumbprint.clone()))
            .await
        else {
            return;
        };
        let ws = fastwebsockets::WebSocket::after_handshake(stream, fastwebsockets::Role::Server);
        self.websocket_session(ws, identity, Arc::new(PeerCertificate::new(thumbprint)))
            .await;
    }

    /// Answers a request to the websocket path: 101 and a session for a known caller asking
    /// for an upgrade, an OperationOutcome otherwise.
    pub(super) async fn upgrade<B>(
        self: Arc<Self>,
        certificate: PeerCertificate,
        mut req: Request<B>,
        slot: Option<Arc<connections::Slot>>,
    ) -> Response<ResponseBody> {
        let identity = match self.identity_of(&certificate).await {
            Ok(identity) => identity,
            Err(e) => return Reply::error(&e).render(Format::Json, false),
        };
        super::trace::identity(&identity);
        if websocket::may_connect(&identity) {
            super::trace::allowed(|| "holds the role WEBSOCKET".into());
        } else {
            super::trace::refused(&Error::Forbidden(
                "no role WEBSOCKET: the session is closed at once (1008)".into(),
            ));
        }
        if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            return Reply::error(&Error::Invalid(
                "this path only takes websocket upgrade requests".into(),
            ))
            .render(Format::Json, false);
        }
        let (response, upgraded) = match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(accepted) => accepted,
            Err(e) => {
                return Reply::error(&Error::Invalid(format!("websocket handshake: {e}")))
                    .render(Format::Json, false)
            }
        };
        tokio::spawn(async move {
            // A websocket is never idle in the registry's sense: it waits for events.
            let _busy = slot.as_ref().map(|slot| slot.busy());
            match upgraded.await {
                Ok(ws) => {
                    self.websocket_session(ws, identity, Arc::new(certificate))
                        .await
                }
                Err(e) => {
                    tracing::debug!(error = %ErrorChain(&e), "websocket upgrade failed")
                }
            }
        });
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, ResponseBody::empty())
    }
}
