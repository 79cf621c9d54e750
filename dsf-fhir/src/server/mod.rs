//! The REST API at `/fhir` over mutual TLS (hyper 1 + tokio-rustls).

mod audit;
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
mod interaction;
mod listen;
mod memory;
mod metrics;
pub mod oidc;
mod reply;
mod request;
mod request_body;
mod rest;
pub mod role_config;
mod roles;
mod service;
mod trace;
mod transaction;
mod ui;
pub mod websocket;

pub use crate::access::{ORGANIZATION_IDENTIFIER_SYSTEM, READ_ACCESS_TAG_SYSTEM};
pub use audit::{AuditLog, AuditTarget};
pub use authorization::{AuthorizationPolicy, DsfRules, PolicyContext};
pub use body::ResponseBody;
pub use bootstrap::{
    endpoint_identifier, AllowListEntry, BUILT_IN_SUBSCRIPTIONS, ENDPOINT_IDENTIFIER_SYSTEM,
};
pub use caller::{AddressRange, ForwardedCertificates, PeerAddress, PeerCertificate};
pub use connections::ConnectionLimits;
pub use identity::{Identity, IdentityKind, LocalUser, DSF_ADMIN};
pub use interaction::Interaction;
pub use oidc::OidcConfig;
pub use role_config::{RoleConfig, RoleRule};
pub use roles::{DsfRole, Role};
pub use service::FhirService;
pub use ui::UiTheme;
pub use websocket::WEBSOCKET_PATH;

pub(crate) use reply::{method_not_allowed, status};
pub(crate) use request_body::drain;

use crate::format::Format;
use crate::store::ResourceStore;
use crate::{Error, Result};
use bytes::Bytes;
use dsf_core::ErrorChain;
use http::Method;
use std::sync::Arc;
use std::time::Duration;

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
    /// Which system the browser pages say this is (`DEV_DSF_FHIR_SERVER_UI_THEME`); none
    /// by default.
    pub ui_theme: Option<UiTheme>,
    /// OpenID Connect for local users without a certificate; off by default.
    pub oidc: Option<OidcConfig>,
    /// Where each request's audit record goes; none by default.
    pub audit: Option<AuditLog>,
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
            ui_theme: None,
            oidc: None,
            audit: None,
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
    /// The HTML pages browsers get.
    pages: ui::Pages,
    /// OpenID Connect, when configured.
    oidc: Option<oidc::Oidc>,
    /// Request metrics, once registered ([`FhirServer::register_metrics`]).
    metrics: std::sync::OnceLock<metrics::RequestMetrics>,
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
        let oidc = config.oidc.as_ref().and_then(|settings| {
            oidc::Oidc::new(settings)
                .inspect_err(|e| {
                    tracing::error!(error = %ErrorChain(e), "OpenID Connect settings unusable; no one logs in with it")
                })
                .ok()
        });
        let pages = ui::Pages::new(
            config
                .oidc
                .as_ref()
                .map(|o| ui::origin(&o.provider_realm_base_url)),
        );
        FhirServer {
            oidc,
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
            pages,
            metrics: std::sync::OnceLock::new(),
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

    /// Whether it can serve: its database answers (what a readiness check asks).
    pub async fn check_ready(&self) -> Result<()> {
        self.store.check_database().await
    }

    /// The path part of its base URL (`/fhir`), where the API lives.
    pub fn context_path(&self) -> &str {
        &self.context_path
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
}
