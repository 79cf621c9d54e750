//! The REST API at `/fhir` over mutual TLS (hyper 1 + tokio-rustls).

pub mod authorization;
mod binary;
mod body;
mod bootstrap;
mod bundles;
pub mod caller;
mod capability;
mod conformance;
mod connections;
pub mod identity;
mod init_bundle;
mod memory;
mod reply;
mod rest;
pub mod role_config;
mod roles;
mod service;
mod transaction;
pub mod websocket;

pub use crate::access::{ORGANIZATION_IDENTIFIER_SYSTEM, READ_ACCESS_TAG_SYSTEM};
pub use authorization::{AuthorizationPolicy, DsfRules, PolicyContext};
pub use body::ResponseBody;
pub use bootstrap::{
    endpoint_identifier, AllowListEntry, BUILT_IN_SUBSCRIPTIONS, ENDPOINT_IDENTIFIER_SYSTEM,
};
pub use caller::{AddressRange, ForwardedCertificates, PeerAddress, PeerCertificate};
pub use connections::ConnectionLimits;
pub use identity::{Identity, IdentityKind, LocalUser, DSF_ADMIN};
pub use role_config::{RoleConfig, RoleRule};
pub use roles::{DsfRole, Role};
pub use service::FhirService;
pub use websocket::WEBSOCKET_PATH;

use crate::format::Format;
use crate::search::parse_query_string;
use crate::store::ResourceStore;
use crate::{Error, Result};
use bytes::Bytes;
use dsf_core::ErrorChain;
use dsf_core::Thumbprint;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use reply::Reply;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Settings of one FHIR server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// External base URL, e.g. `https://dsf.example.org/fhir`; its path is where the API lives.
    pub base_url: String,
    /// Value of the local organisation's `http://dsf.dev/sid/organization-identifier`.
    pub organization_identifier: String,
    /// Default `_count` of searches (the Java DSF's `DEV_DSF_FHIR_SERVER_PAGE_COUNT`).
    pub page_count: usize,
    /// Largest request body accepted, but for a raw Binary upload.
    pub max_body_bytes: usize,
    /// Largest Binary a raw `POST` may upload; stored a part at a time, never held whole.
    pub max_binary_bytes: u64,
    /// Local users, by certificate thumbprint.
    pub users: Vec<LocalUser>,
    /// How websocket connections are kept alive.
    pub websocket: WebsocketSettings,
    /// How many connections, and from where, the server holds.
    pub connections: ConnectionLimits,
    /// Client certificates forwarded by TLS-terminating reverse proxies; none believed by
    /// default (see [`caller`]).
    pub forwarded_certificates: Option<ForwardedCertificates>,
}

/// How websocket connections are kept alive and how much they may fall behind.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WebsocketSettings {
    /// Time between pings; a ping still unanswered at the next one closes the connection.
    /// 28 s in the Java DSF.
    pub ping_interval: Duration,
    /// Events that may wait for one connection; one more closes it as too slow.
    pub queue_capacity: usize,
    /// How long one frame may take to leave; longer closes the connection as not reading.
    pub write_timeout: Duration,
}

impl Default for WebsocketSettings {
    fn default() -> Self {
        WebsocketSettings {
            ping_interval: Duration::from_secs(28),
            queue_capacity: 4096,
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    /// Settings for the server at `base_url` of the organisation `organization_identifier`; the
    /// rest at their defaults.
    pub fn new(base_url: &str, organization_identifier: &str) -> Self {
        ServerConfig {
            base_url: base_url.trim_end_matches('/').to_owned(),
            organization_identifier: organization_identifier.to_owned(),
            page_count: 20,
            max_body_bytes: 16 * 1024 * 1024,
            max_binary_bytes: 8 * 1024 * 1024 * 1024,
            users: Vec::new(),
            websocket: WebsocketSettings::default(),
            connections: ConnectionLimits::default(),
            forwarded_certificates: None,
        }
    }

    /// The path part of the base URL (`/fhir`).
    fn context_path(&self) -> String {
        let without_scheme = self
            .base_url
            .split_once("://")
            .map_or(self.base_url.as_str(), |(_, r)| r);
        match without_scheme.find('/') {
            Some(pos) => without_scheme[pos..].trim_end_matches('/').to_owned(),
            None => String::new(),
        }
    }
}

/// A FHIR server: a store and its settings. Serve it with [`FhirServer::serve`].
pub struct FhirServer {
    store: ResourceStore,
    config: ServerConfig,
    context_path: String,
    identities: identity::IdentityCache,
    hub: websocket::Hub,
    connections: Arc<connections::OpenConnections>,
    peer_turns: connections::PeerTurns,
    /// Turns true when [`FhirServer::serve`] stops: open connections then close.
    closing: tokio::sync::watch::Sender<bool>,
    /// Gives memory back to the system after requests that allocated much.
    trimmer: memory::Trimmer,
    /// Turns for parsing large bodies, so that parsing never occupies every core.
    large_parses: tokio::sync::Semaphore,
    policy: Arc<dyn authorization::AuthorizationPolicy>,
    /// The store's outbox, until `serve` hands it to the dispatcher.
    changes: std::sync::Mutex<Option<crate::store::ChangeReceiver>>,
    /// The conformance resources profile validation reads.
    conformance: conformance::ConformanceCache,
}

/// What one request carries after transport: who sent it and the parsed URL.
pub(crate) struct Call<'a> {
    pub identity: &'a Identity,
    pub method: Method,
    /// Path below the context path, without leading or trailing '/'.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Call<'_> {
    pub fn header(&self, name: http::header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Prefer: return=…` (`representation` by default).
    pub fn prefer_return(&self) -> &str {
        self.prefer("return").unwrap_or("representation")
    }

    /// `Prefer: handling=strict` (lenient by default, as the Java DSF).
    pub fn strict(&self) -> bool {
        self.prefer("handling") == Some("strict")
    }

    fn prefer(&self, key: &str) -> Option<&str> {
        self.headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|part| part.trim().split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().trim_matches('"'))
    }

    /// The request body's format from `Content-Type`.
    pub fn body_format(&self) -> Result<Format> {
        let content_type = self
            .header(http::header::CONTENT_TYPE)
            .ok_or_else(|| Error::UnsupportedMediaType("Content-Type header missing".into()))?;
        Format::from_mime(content_type).ok_or_else(|| {
            Error::UnsupportedMediaType(format!("Content-Type '{content_type}' is not supported"))
        })
    }
}

impl FhirServer {
    /// A server on `store`; its allow list is empty until loaded.
    pub fn new(store: ResourceStore, config: ServerConfig) -> Self {
        FhirServer {
            context_path: config.context_path(),
            changes: std::sync::Mutex::new(Some(store.changes())),
            store,
            config,
            policy: Arc::new(authorization::DsfRules),
            identities: identity::IdentityCache::default(),
            hub: websocket::Hub::default(),
            connections: Arc::default(),
            trimmer: memory::Trimmer::default(),
            peer_turns: connections::PeerTurns::default(),
            large_parses: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            ),
            closing: tokio::sync::watch::Sender::new(false),
            conformance: conformance::ConformanceCache::default(),
        }
    }

    /// The same server deciding authorization with `policy` instead of the DSF's rules
    /// alone (see [`AuthorizationPolicy`]).
    pub fn with_authorization(mut self, policy: impl AuthorizationPolicy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// Who holds `certificate` (cached per allow-list generation).
    async fn identity_of(&self, certificate: &PeerCertificate) -> Result<Arc<Identity>> {
        self.identities
            .resolve(
                &self.store,
                &self.config.organization_identifier,
                &self.config.users,
                certificate,
            )
            .await
    }

    /// Open websocket connections.
    pub fn websocket_connections(&self) -> usize {
        self.hub.sessions().len()
    }

    /// Open client connections, websockets included.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// The store it serves.
    pub fn store(&self) -> &ResourceStore {
        &self.store
    }

    /// Its settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Starts the work that runs beside request handling: the DSF base conformance
    /// resources (profiles, code systems, value sets, naming systems) and the built-in
    /// Subscriptions are created if missing, the websocket hub loads the stored Subscriptions,
    /// Binary content left by uploads a stop broke off is removed, and the change
    /// dispatcher (which tells websocket sessions of new resources) is spawned on the current
    /// tokio runtime. [`FhirServer::serve`] calls it; an embedder mounting [`FhirService`] in
    /// its own application calls it once before serving. Calling it again does nothing.
    pub async fn start_background(self: &Arc<Self>) -> Result<()> {
        let changes = self
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(changes) = changes {
            self.ensure_base_definitions().await?;
            self.ensure_built_in_subscriptions().await?;
            self.hub.reload(&self.store).await?;
            match self.store.remove_unclaimed_content().await {
                Ok(0) => {}
                Ok(parts) => tracing::info!(parts, "removed Binary content no upload finished"),
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "cannot remove unclaimed Binary content")
                }
            }
            tokio::spawn(
                self.clone()
                    .dispatch_changes(changes, self.closing.subscribe()),
            );
            let server = self.clone();
            let closing = self.closing.subscribe();
            tokio::spawn(async move { server.trimmer.run(closing).await });
        }
        Ok(())
    }

    /// Stops the background work and closes open websocket sessions (1001 "server shutting
    /// down"). [`FhirServer::serve`] does this when its `shutdown` completes.
    pub fn shut_down(&self) {
        self.closing.send_replace(true);
    }

    /// The REST API and the websocket endpoint as a service for an application of the
    /// embedder's (axum, hyper, tower). Requests must carry a [`PeerCertificate`] (and, for
    /// forwarded certificates, a [`PeerAddress`]) in their extensions.
    pub fn service(self: &Arc<Self>) -> FhirService {
        FhirService::new(self.clone())
    }

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
    /// that forwards client certificates ([`ServerConfig::forwarded_certificates`]). A request
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
        if certificate.is_none() {
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
                None => false,
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
        tokio::pin!(connection);
        let result = tokio::select! {
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
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %ErrorChain(&e), "connection ended with error");
        }
    }

    /// Answers one request whose extensions say who sent it (see [`caller`]): a websocket
    /// upgrade on the websocket path, the REST API elsewhere.
    pub(crate) async fn respond<B>(
        self: Arc<Self>,
        req: Request<B>,
        slot: Option<Arc<connections::Slot>>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let certificate = match caller::client_certificate(
            self.config.forwarded_certificates.as_ref(),
            req.headers(),
            req.extensions(),
        ) {
            Ok(certificate) => certificate,
            Err(e) => return refused(req.headers(), &e),
        };
        if self.is_websocket_request(req.uri().path()) {
            self.upgrade(certificate, req, slot).await
        } else {
            self.handle_from(&certificate, req).await
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

    fn is_binary_path(&self, path: &str) -> bool {
        path.strip_prefix(self.context_path.as_str())
            .and_then(|rest| rest.strip_prefix("/Binary/"))
            .is_some()
    }

    fn is_websocket_request(&self, path: &str) -> bool {
        path.strip_prefix(self.context_path.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| rest.trim_end_matches('/') == websocket::WEBSOCKET_PATH)
    }

    /// Answers a request to the websocket path: 101 and a session for a known caller asking
    /// for an upgrade, an OperationOutcome otherwise.
    async fn upgrade<B>(
        self: Arc<Self>,
        certificate: PeerCertificate,
        mut req: Request<B>,
        slot: Option<Arc<connections::Slot>>,
    ) -> Response<ResponseBody> {
        let identity = match self.identity_of(&certificate).await {
            Ok(identity) => identity,
            Err(e) => return Reply::error(&e).render(Format::Json, false),
        };
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

    /// Handles one request from the holder of `thumbprint`. The body may be hyper's
    /// incoming body or any other (e.g. `Full<Bytes>` when there is no transport). Role
    /// configuration rules matching by e-mail need the certificate: see
    /// [`FhirServer::handle_from`].
    pub async fn handle<B>(
        &self,
        thumbprint: &Thumbprint,
        req: Request<B>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        self.handle_from(&PeerCertificate::new(thumbprint.clone()), req)
            .await
    }

    /// Handles one request from the holder of `certificate`.
    pub async fn handle_from<B>(
        &self,
        certificate: &PeerCertificate,
        req: Request<B>,
    ) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (parts, body) = req.into_parts();
        let accept = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        // Who asks, and their turn, come before any work on the request: a remote
        // organisation's requests beyond its share wait here at no cost.
        let admitted = match self.admit(certificate, parts.uri.query()).await {
            Ok(admitted) => admitted,
            Err(e) => return refused(&parts.headers, &e),
        };
        let query = parse_query_string(parts.uri.query().unwrap_or(""));
        let format_param = query
            .iter()
            .find(|(k, _)| k == "_format")
            .map(|(_, v)| v.clone());
        let pretty = query.iter().any(|(k, v)| k == "_pretty" && v == "true");
        let format = match Format::negotiate(format_param.as_deref(), accept) {
            Ok(f) => f,
            // A Binary is also read as its raw content, in whatever type it has: the read
            // decides (see `binary`), and errors go out as JSON.
            Err(_) if format_param.is_none() && self.is_binary_path(parts.uri.path()) => {
                Format::Json
            }
            Err(e) => return Reply::error(&e).render(Format::Json, pretty),
        };
        let reply = match self.dispatch(&admitted.identity, parts, body, query).await {
            Ok(reply) => reply,
            Err(e) => {
                if e.status() >= 500 {
                    tracing::error!(error = %ErrorChain(&e), "request failed");
                }
                Reply::error(&e)
            }
        };
        if reply.status.is_client_error() {
            admitted.hold_turn(self.config.connections.refusal_penalty);
        } else if let Some(turn) = &admitted.turn {
            turn.succeeded();
        }
        let response = reply.render(format, pretty);
        if hyper::body::Body::size_hint(response.body())
            .exact()
            .is_some_and(|len| len > LARGE_RESPONSE_BYTES)
        {
            self.trimmer.note_large_allocation();
        }
        response
    }

    /// Resolves the caller and waits for its turn; then refuses, before decoding anything, a
    /// query string with more parts than any search may use.
    async fn admit(&self, certificate: &PeerCertificate, query: Option<&str>) -> Result<Admitted> {
        let identity = self.identity_of(certificate).await?;
        let turn = match identity.kind {
            IdentityKind::RemoteOrganization => {
                self.peer_turns
                    .take(
                        &identity.organization_identifier,
                        self.config.connections.max_requests_per_peer,
                    )
                    .await
            }
            IdentityKind::LocalOrganization | IdentityKind::Practitioner => None,
        };
        let admitted = Admitted { identity, turn };
        let mut parts = query.unwrap_or("").split('&').filter(|p| !p.is_empty());
        if let Some(excess) = parts.nth(MAX_QUERY_PARTS) {
            admitted.hold_turn(self.config.connections.refusal_penalty);
            // Named as sent (not decoded): this check runs before any decoding.
            let name: String = excess
                .split('=')
                .next()
                .unwrap_or("")
                .chars()
                .take(64)
                .collect();
            return Err(Error::Invalid(format!(
                "search parameter {name}: more than {MAX_QUERY_PARTS} query parameters in one request"
            )));
        }
        Ok(admitted)
    }

    async fn dispatch<B>(
        &self,
        identity: &Identity,
        parts: http::request::Parts,
        mut body: B,
        query: Vec<(String, String)>,
    ) -> Result<Reply>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let path = parts.uri.path();
        let Some(path) = path
            .strip_prefix(self.context_path.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        else {
            return Err(Error::NotFound(format!("no FHIR API at {path}")));
        };
        let path = path.trim_matches('/').to_owned();
        match self
            .raw_upload(identity, &parts, &path, &query, &mut body)
            .await?
        {
            Some(binary::UploadStart::Done(reply)) => return Ok(reply),
            Some(binary::UploadStart::Small(call)) => return self.route(&call).await,
            None => {}
        }
        let body = read_body(body, self.config.max_body_bytes)
            .await
            .inspect_err(|e| {
                if matches!(e, Error::PayloadTooLarge(_)) {
                    self.trimmer.note_large_allocation();
                }
            })?;
        if body.len() > INLINE_PARSE_BYTES {
            self.trimmer.note_large_allocation();
        }
        // HEAD is answered as GET; hyper sends the headers (Content-Length included) and
        // leaves the body out.
        let method = if parts.method == Method::HEAD {
            Method::GET
        } else {
            parts.method
        };
        let call = Call {
            identity,
            method,
            path,
            query,
            headers: parts.headers,
            body,
        };
        tracing::debug!(identity = identity.name(), method = %call.method, path = %call.path, "request");
        self.route(&call).await
    }
}

/// The answer to a request refused before its URL is parsed: in the format `Accept` asks for,
/// JSON when it asks for none this server writes.
fn refused(headers: &http::HeaderMap, error: &Error) -> Response<ResponseBody> {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Format::negotiate(None, accept).unwrap_or(Format::Json);
    Reply::error(error).render(format, false)
}

/// Most `&`-separated parts a query string may have: the search limits
/// ([`crate::search::MAX_PARAMETERS`]) plus result and format parameters, with room to spare.
const MAX_QUERY_PARTS: usize = 64;

/// A caller allowed to proceed, holding its turn until the request is answered.
struct Admitted {
    identity: Arc<Identity>,
    turn: Option<connections::Turn>,
}

impl Admitted {
    /// Keeps the caller's turn taken after a refused answer goes out: `base`, doubled for
    /// each refusal in a row before (see [`connections::Turn::penalty`]).
    fn hold_turn(self, base: Duration) {
        if let Some(turn) = self.turn {
            let penalty = turn.penalty(base);
            tokio::spawn(async move {
                tokio::time::sleep(penalty).await;
                drop(turn);
            });
        }
    }
}

/// Answers larger than this (search pages of big resources) count as large allocations for
/// the memory trimmer.
const LARGE_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Bodies up to this size are parsed where the request runs; larger ones on the blocking
/// pool, a few at a time (see [`FhirServer::parse_body`]).
const INLINE_PARSE_BYTES: usize = 32 * 1024;

impl FhirServer {
    /// Parses the request body as a resource. A large body is parsed on the blocking pool,
    /// at most half as many at once as there are cores, so that requests with large bodies
    /// wait for each other rather than hold up the async workers everyone else needs.
    pub(crate) async fn parse_body(&self, call: &Call<'_>) -> Result<serde_json::Value> {
        let format = call.body_format()?;
        if call.body.len() <= INLINE_PARSE_BYTES {
            return crate::format::parse_resource(&call.body, format);
        }
        let _turn = self.large_parses.acquire().await.map_err(Error::storage)?;
        let body = call.body.clone();
        tokio::task::spawn_blocking(move || crate::format::parse_resource(&body, format))
            .await
            .map_err(|e| Error::storage_fault(format!("parser task failed: {e}")))?
    }
}

/// How much of an oversized body is read and thrown away so that the client, still sending,
/// receives the 413 instead of a connection reset.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Collects a request body of at most `max` bytes.
async fn read_body<B>(mut body: B, max: usize) -> Result<Bytes>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut collected = bytes::BytesMut::new();
    let mut too_large = body.size_hint().exact().is_some_and(|len| len > max as u64);
    let mut drained = 0usize;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
        .await
        .map_err(|_| Error::Invalid("request body not received in time".into()))?
    {
        let frame = frame.map_err(|e| Error::Invalid(format!("cannot read request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if too_large || collected.len() + data.len() > max {
            too_large = true;
            drained += data.len();
            if drained > DRAIN_LIMIT {
                break;
            }
        } else {
            collected.extend_from_slice(&data);
        }
    }
    if too_large {
        return Err(Error::PayloadTooLarge(max));
    }
    Ok(collected.freeze())
}

/// Reads and throws away what is left of a refused request's body (at most [`DRAIN_LIMIT`]
/// within [`DRAIN_TIME`]), so that the client, still sending, receives the answer instead
/// of a connection reset.
pub(crate) async fn drain<B>(body: &mut B)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut drained = 0;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        drained += frame.data_ref().map_or(0, Bytes::len);
        if drained > DRAIN_LIMIT {
            break;
        }
    }
}

pub(crate) fn method_not_allowed(allow: &str) -> Reply {
    Reply::error(&Error::MethodNotAllowed(format!(
        "method not allowed here; allowed: {allow}"
    )))
    .header(http::header::ALLOW, allow)
}

pub(crate) fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
