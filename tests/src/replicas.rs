//! Organisations run as replicas: per organisation, several FHIR server processes on one
//! PostgreSQL schema behind one base URL (a round-robin TCP relay, as a load balancer passes
//! TLS through), and several BPEs sharing one PostgreSQL state schema. Replicas are killed
//! (their connections cut, as a process death does) and restarted.

use crate::network::organization_identifier;
use crate::postgres_url;
use dsf_core::{DevPki, IssuedCert};
use dsf_engine::{Bpe, BpeConfig, StateDatabase};
use dsf_fhir::server::AllowListEntry;
use dsf_fhir::store::PostgresBackend;
use dsf_fhir::{FhirClient, FhirServer, ResourceStore, ServerConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A round-robin TCP relay: each connection goes to the next backend that is up and
/// accepts it. Killing a backend cuts the connections relayed to it.
pub struct RoundRobin {
    /// The port clients connect to.
    pub port: u16,
    state: Arc<Mutex<Relayed>>,
    accept: AbortHandle,
}

#[derive(Default)]
struct Relayed {
    backends: Vec<u16>,
    down: Vec<u16>,
    connections: HashMap<u16, Vec<AbortHandle>>,
}

impl RoundRobin {
    /// Relays a loopback port of its own to `backends` (ports on loopback).
    pub async fn start(backends: Vec<u16>) -> RoundRobin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(Mutex::new(Relayed {
            backends,
            ..Relayed::default()
        }));
        let next = Arc::new(AtomicUsize::new(0));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (state, next) = (shared.clone(), next.clone());
                tokio::spawn(async move { relay(client, state, next).await });
            }
        })
        .abort_handle();
        RoundRobin {
            port,
            state,
            accept,
        }
    }

    /// `backend` is down: no new connections, and the ones it had are cut.
    pub fn kill(&self, backend: u16) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.down.push(backend);
        for connection in state.connections.remove(&backend).unwrap_or_default() {
            connection.abort();
        }
    }

    /// `backend` is up again.
    pub fn revive(&self, backend: u16) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.down.retain(|b| *b != backend);
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.accept.abort();
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for connection in state.connections.values().flatten() {
            connection.abort();
        }
    }
}

async fn relay(mut client: TcpStream, state: Arc<Mutex<Relayed>>, next: Arc<AtomicUsize>) {
    let candidates: Vec<u16> = {
        let state = state.lock().unwrap_or_else(|p| p.into_inner());
        let up: Vec<u16> = state
            .backends
            .iter()
            .copied()
            .filter(|b| !state.down.contains(b))
            .collect();
        let start = next.fetch_add(1, Ordering::Relaxed);
        (0..up.len()).map(|i| up[(start + i) % up.len()]).collect()
    };
    for backend in candidates {
        let Ok(mut server) = TcpStream::connect(("127.0.0.1", backend)).await else {
            continue;
        };
        let piping = tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        if state.down.contains(&backend) {
            piping.abort();
            return;
        }
        let connections = state.connections.entry(backend).or_default();
        connections.retain(|c| !c.is_finished());
        connections.push(piping.abort_handle());
        return;
    }
}

/// One FHIR server process of an organisation.
pub struct ServerReplica {
    /// The loopback port it listens on.
    pub port: u16,
    running: Option<(Arc<FhirServer>, ResourceStore, crate::Serving)>,
}

impl ServerReplica {
    /// The running server, `None` while killed.
    pub fn server(&self) -> Option<&Arc<FhirServer>> {
        self.running.as_ref().map(|(server, _, _)| server)
    }
}

/// An organisation run as replicas.
pub struct ReplicatedOrganization {
    /// The organisation's identifier value.
    pub identifier: String,
    /// The base URL all replicas share (the relay's).
    pub base_url: String,
    /// The relay in front of the servers.
    pub relay: RoundRobin,
    /// The FHIR server processes.
    pub servers: Vec<ServerReplica>,
    /// The BPEs, `None` while killed.
    pub bpes: Vec<Option<Bpe>>,
    /// A client with the organisation's own certificate, through the relay.
    pub client: FhirClient,
    /// The TLS configuration of the organisation's BPEs.
    pub bpe_tls: Arc<rustls::ClientConfig>,
    /// The organisation's own certificate.
    pub certificate: IssuedCert,
    /// The PostgreSQL schema of the servers' store.
    pub fhir_schema: String,
    /// The PostgreSQL schema of the BPEs' state.
    pub bpe_schema: String,
    config: ServerConfig,
    tls: Arc<rustls::ServerConfig>,
    allow_list: Vec<AllowListEntry>,
    bpe_config: BpeConfig,
    plugins: fn() -> Vec<dsf_plugin_api::PluginDefinition>,
}

impl ReplicatedOrganization {
    /// A client with the organisation's certificate that talks to server replica `i` alone.
    pub fn client_of(&self, i: usize) -> FhirClient {
        FhirClient::new(
            &format!("https://localhost:{}/fhir", self.servers[i].port),
            self.bpe_tls.clone(),
        )
        .expect("client")
    }

    /// Kills server replica `i`: its connections are cut and its store closed.
    pub async fn kill_server(&mut self, i: usize) {
        self.relay.kill(self.servers[i].port);
        if let Some((_, _, serving)) = self.servers[i].running.take() {
            crate::Serving::stop(&mut Some(serving)).await;
        }
    }

    /// Starts server replica `i` again on its port, as a restarted process would.
    pub async fn start_server(&mut self, i: usize) {
        let listener = crate::bind_again(self.servers[i].port).await;
        let (server, store) = replica(&self.fhir_schema, &self.config, &self.allow_list).await;
        let serving = crate::serve(server.clone(), listener, self.tls.clone());
        self.servers[i].running = Some((server, store, serving));
        self.relay.revive(self.servers[i].port);
    }

    /// Kills BPE `i` without a word to the others: they take over when its lease runs out.
    pub fn kill_bpe(&mut self, i: usize) {
        if let Some(bpe) = self.bpes[i].take() {
            bpe.stop();
        }
    }

    /// Starts BPE `i` (again), and waits until its subscriptions are bound.
    pub async fn start_bpe(&mut self, i: usize) {
        self.start_bpe_with(i, |_| {}).await;
    }

    /// Starts BPE `i` with its settings changed by `configure`.
    pub async fn start_bpe_with(&mut self, i: usize, configure: impl FnOnce(&mut BpeConfig)) {
        let mut config = self.bpe_config.clone();
        configure(&mut config);
        let bpe = Bpe::start(config, (self.plugins)())
            .await
            .expect("BPE starts");
        assert!(bpe.report().refused.is_empty(), "{:?}", bpe.report());
        tokio::time::timeout(Duration::from_secs(60), bpe.wait_connected())
            .await
            .expect("BPE subscriptions bound");
        self.bpes[i] = Some(bpe);
    }
}

/// A server process on the organisation's schema with its allow list loaded.
async fn replica(
    schema: &str,
    config: &ServerConfig,
    allow_list: &[AllowListEntry],
) -> (Arc<FhirServer>, ResourceStore) {
    let backend = PostgresBackend::connect(&postgres_url(), Some(schema), 8)
        .await
        .expect("PostgreSQL");
    let store = ResourceStore::new(Arc::new(backend), &config.base_url);
    let server = FhirServer::new(store.clone(), config.clone());
    server
        .load_allow_list(allow_list)
        .await
        .expect("allow list");
    (Arc::new(server), store)
}

/// Organisations that all allow each other, each with `servers` FHIR server replicas and
/// `bpes` BPEs running `plugins`, configured by `configure`.
pub async fn start(
    count: usize,
    servers: usize,
    bpes: usize,
    plugins: fn() -> Vec<dsf_plugin_api::PluginDefinition>,
    configure: impl Fn(&mut BpeConfig),
) -> (DevPki, Vec<ReplicatedOrganization>) {
    let pki = DevPki::generate("dsf-rs replica test CA").expect("CA");
    let server_cert = pki.issue_server("localhost").expect("server certificate");
    let tls = Arc::new(pki.server_config(&server_cert).expect("server TLS"));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut relays = Vec::new();
    let mut listeners = Vec::new();
    let mut certificates = Vec::new();
    for i in 0..count {
        let mut mine = Vec::new();
        for _ in 0..servers {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            mine.push(listener);
        }
        let ports = mine
            .iter()
            .map(|l| l.local_addr().expect("address").port())
            .collect();
        relays.push(RoundRobin::start(ports).await);
        listeners.push(mine);
        certificates.push(
            pki.issue_client(&format!("bpe-{}", organization_identifier(i)))
                .expect("client certificate"),
        );
    }
    let entries: Vec<AllowListEntry> = (0..count)
        .map(|i| AllowListEntry {
            identifier: organization_identifier(i),
            name: format!("Organization {i}"),
            thumbprints: vec![certificates[i].thumbprint()],
            base_url: format!("https://localhost:{}/fhir", relays[i].port),
        })
        .collect();
    let mut organizations = Vec::new();
    for (i, (relay, listeners)) in relays.into_iter().zip(listeners).enumerate() {
        let identifier = organization_identifier(i);
        let base_url = format!("https://localhost:{}/fhir", relay.port);
        let config = ServerConfig::new(&base_url, &identifier);
        let fhir_schema = format!("dsf_rep_{run}_{i}");
        let bpe_schema = format!("dsf_rep_bpe_{run}_{i}");
        let mut replicas = Vec::new();
        for listener in listeners {
            let port = listener.local_addr().expect("address").port();
            let (server, store) = replica(&fhir_schema, &config, &entries).await;
            let serving = crate::serve(server.clone(), listener, tls.clone());
            replicas.push(ServerReplica {
                port,
                running: Some((server, store, serving)),
            });
        }
        let bpe_tls = Arc::new(pki.client_config(&certificates[i]).expect("client TLS"));
        let mut bpe_config = BpeConfig::new(&base_url, bpe_tls.clone());
        bpe_config.state = StateDatabase::Postgres {
            url: postgres_url(),
            schema: Some(bpe_schema.clone()),
        };
        configure(&mut bpe_config);
        let mut organization = ReplicatedOrganization {
            identifier,
            client: FhirClient::new(&base_url, bpe_tls.clone()).expect("client"),
            base_url,
            relay,
            servers: replicas,
            bpes: (0..bpes).map(|_| None).collect(),
            bpe_tls,
            certificate: certificates[i].clone(),
            fhir_schema,
            bpe_schema,
            config,
            tls: tls.clone(),
            allow_list: entries.clone(),
            bpe_config,
            plugins,
        };
        for b in 0..bpes {
            organization.start_bpe(b).await;
        }
        organizations.push(organization);
    }
    (pki, organizations)
}
