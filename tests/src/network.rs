//! Several DSF organisations in one process: a FHIR server each on its own loopback port,
//! one development PKI, allow lists by topology, and for each organisation the TLS
//! configuration its BPE uses.

use crate::{serve, serve_again, Serving};
use dsf_core::{DevPki, IssuedCert, Thumbprint};
use dsf_fhir::server::AllowListEntry;
use dsf_fhir::store::SqliteBackend;
use dsf_fhir::{FhirClient, FhirServer, ResourceStore, ServerConfig};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Who is on whose allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Every organisation allows every other.
    Mesh,
    /// Organisation 0 is the hub and allows all; the others allow only the hub.
    Star,
}

/// One organisation: its server and the certificate its BPE (and tests) use.
pub struct Organization {
    /// The organisation's identifier value.
    pub identifier: String,
    /// Its FHIR server's base URL.
    pub base_url: String,
    /// The loopback port it listens on.
    pub port: u16,
    /// Its FHIR server's store.
    pub store: ResourceStore,
    /// The server now serving.
    pub server: Arc<FhirServer>,
    /// A client with the organisation's own certificate (the BPE's).
    pub client: FhirClient,
    /// The TLS configuration of the organisation's BPE.
    pub bpe_tls: Arc<rustls::ClientConfig>,
    /// The organisation's own certificate.
    pub certificate: IssuedCert,
    config: ServerConfig,
    tls: Arc<rustls::ServerConfig>,
    serving: Option<Serving>,
}

impl Organization {
    /// Stops serving (connections close); the store stays.
    pub async fn stop(&mut self) {
        Serving::stop(&mut self.serving).await;
    }

    /// Serves again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (server, serving) = serve_again(self.port, &self.store, &self.config, &self.tls).await;
        self.server = server;
        self.serving = Some(serving);
    }
}

/// Several organisations on loopback, with certificates from one CA and allow lists by topology.
pub struct Network {
    /// The CA.
    pub pki: DevPki,
    /// The organisations, in order.
    pub organizations: Vec<Organization>,
}

/// The identifier of organisation `i`: `org0.test`, `org1.test` …
pub fn organization_identifier(i: usize) -> String {
    format!("org{i}.test")
}

/// An allow-list entry for an organisation that does not exist: its endpoint is a loopback
/// port nobody listens on.
pub fn unreachable_entry(identifier: &str, port: u16) -> AllowListEntry {
    AllowListEntry {
        identifier: identifier.to_owned(),
        name: identifier.to_owned(),
        thumbprints: vec![Thumbprint::of_der(identifier.as_bytes())],
        base_url: format!("https://localhost:{port}/fhir"),
    }
}

impl Network {
    /// `count` organisations on SQLite (in memory), allowing each other as `topology` says.
    pub async fn start(count: usize, topology: Topology) -> Network {
        Self::start_allowing(count, |i, j| match topology {
            Topology::Mesh => true,
            Topology::Star => i == 0 || j == 0,
        })
        .await
    }

    /// `count` organisations on SQLite (in memory); organisation `i` has `j` on its allow
    /// list when `allows(i, j)` (and itself always).
    pub async fn start_allowing(count: usize, allows: impl Fn(usize, usize) -> bool) -> Network {
        let pki = DevPki::generate("dsf-rs network test CA").expect("CA");
        Self::start_configured(pki, count, allows, |_, _| {}).await
    }

    /// `count` organisations as [`Network::start`] says, with certificates of `pki`,
    /// organisation `i`'s server settings changed by `configure(i, …)`. Servers let clients
    /// without a certificate connect when any uses OpenID Connect.
    pub async fn start_with(
        pki: DevPki,
        count: usize,
        topology: Topology,
        configure: impl Fn(usize, &mut ServerConfig),
    ) -> Network {
        Self::start_configured(
            pki,
            count,
            |i, j| match topology {
                Topology::Mesh => true,
                Topology::Star => i == 0 || j == 0,
            },
            configure,
        )
        .await
    }

    async fn start_configured(
        pki: DevPki,
        count: usize,
        allows: impl Fn(usize, usize) -> bool,
        configure: impl Fn(usize, &mut ServerConfig),
    ) -> Network {
        let server_cert = pki.issue_server("localhost").expect("server certificate");
        let mut listeners = Vec::new();
        let mut certificates = Vec::new();
        for i in 0..count {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("address").port();
            listeners.push((listener, port));
            certificates.push(
                pki.issue_client(&format!("bpe-{}", organization_identifier(i)))
                    .expect("client certificate"),
            );
        }
        let ports: Vec<u16> = listeners.iter().map(|(_, port)| *port).collect();
        let configs: Vec<ServerConfig> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let base_url = format!("https://localhost:{port}/fhir");
                let mut config = ServerConfig::new(&base_url, &organization_identifier(i));
                configure(i, &mut config);
                config
            })
            .collect();
        let tls = Arc::new(
            if configs.iter().any(|c| c.oidc.is_some()) {
                pki.server_config_optional_client(&server_cert)
            } else {
                pki.server_config(&server_cert)
            }
            .expect("server TLS"),
        );
        let entry = |i: usize| AllowListEntry {
            identifier: organization_identifier(i),
            name: format!("Organization {i}"),
            thumbprints: vec![certificates[i].thumbprint()],
            base_url: format!("https://localhost:{}/fhir", ports[i]),
        };
        let allows = |i: usize, j: usize| i == j || allows(i, j);
        let mut organizations = Vec::new();
        for (i, (listener, port)) in listeners.into_iter().enumerate() {
            let identifier = organization_identifier(i);
            let config = configs[i].clone();
            let base_url = config.base_url.clone();
            let backend = Arc::new(SqliteBackend::in_memory().expect("SQLite"));
            let store = ResourceStore::new(backend, &base_url);
            let server = FhirServer::new(store.clone(), config.clone());
            let entries: Vec<AllowListEntry> =
                (0..count).filter(|&j| allows(i, j)).map(entry).collect();
            server.load_allow_list(&entries).await.expect("allow list");
            let server = Arc::new(server);
            let serving = serve(server.clone(), listener, tls.clone());
            let bpe_tls = Arc::new(pki.client_config(&certificates[i]).expect("client TLS"));
            let client = FhirClient::new(&base_url, bpe_tls.clone()).expect("client");
            organizations.push(Organization {
                identifier,
                base_url,
                port,
                store,
                server,
                client,
                bpe_tls,
                certificate: certificates[i].clone(),
                config,
                tls: tls.clone(),
                serving: Some(serving),
            });
        }
        Network { pki, organizations }
    }

    /// Organisation `i`.
    pub fn organization(&self, i: usize) -> &Organization {
        &self.organizations[i]
    }
}
