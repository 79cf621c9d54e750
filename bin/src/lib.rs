//! Wiring shared by the reference binaries: logging set-up and starting a FHIR server from
//! plain settings. Everything of substance lives in the library crates.

pub mod hostile_load;
pub mod load;
pub mod websocket_load;

use dsf_core::Thumbprint;
use dsf_fhir::server::AllowListEntry;
use dsf_fhir::{FhirServer, ResourceStore, ServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// Everything needed to run one organisation's FHIR server.
pub struct FhirServerSettings {
    pub config: ServerConfig,
    pub db_url: String,
    pub bind: SocketAddr,
    pub tls: dsf_core::rustls::ServerConfig,
    /// The local organisation's certificate thumbprints (its BPE's client certificate).
    pub local_thumbprints: Vec<Thumbprint>,
    /// Other organisations to put on the allow list.
    pub peers: Vec<AllowListEntry>,
    pub organization_name: String,
}

/// Opens the store, loads the allow list, binds, and returns the serving future.
pub async fn start_fhir_server(
    settings: FhirServerSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, Box<dyn std::error::Error + Send + Sync>>
{
    let store = ResourceStore::open(&settings.db_url, &settings.config.base_url).await?;
    let local = AllowListEntry {
        identifier: settings.config.organization_identifier.clone(),
        name: settings.organization_name.clone(),
        thumbprints: settings.local_thumbprints.clone(),
        base_url: settings.config.base_url.clone(),
    };
    let server = FhirServer::new(store, settings.config);
    let mut allow_list = vec![local];
    allow_list.extend(settings.peers);
    server.load_allow_list(&allow_list).await?;
    let listener = TcpListener::bind(settings.bind).await?;
    tracing::info!(bind = %settings.bind, base_url = %server.config().base_url, "FHIR server listening");
    Ok(tokio::spawn(Arc::new(server).serve(
        listener,
        Arc::new(settings.tls),
        shutdown,
    )))
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
