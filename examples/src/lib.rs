//! What the examples share: one organisation's DSF FHIR server started in-process on a
//! loopback port, with a development PKI and the organisation on its own allow list, so that
//! an example about a client or a plugin has a server to talk to. The examples that are
//! about the server itself (`rest_in_axum`, `custom_authorization`) build theirs in full.

use dsf_core::{DevPki, IssuedCert};
use dsf_fhir::server::AllowListEntry;
use dsf_fhir::{FhirClient, FhirServer, ResourceStore, ServerConfig};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The error type of the examples: anything, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running FHIR server of organisation `identifier` on `https://localhost:<port>/fhir`.
pub struct LocalServer {
    /// The server's base URL.
    pub base_url: String,
    /// The organisation's identifier value.
    pub identifier: String,
    /// The dev CA that issued the certificates.
    pub pki: DevPki,
    /// The organisation's client certificate (its BPE's).
    pub organization_certificate: IssuedCert,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LocalServer {
    /// Starts the server on SQLite in memory.
    pub async fn start(identifier: &str) -> Result<LocalServer, BoxError> {
        let pki = DevPki::generate("dsf-rs examples CA")?;
        let server_certificate = pki.issue_server("localhost")?;
        let organization_certificate = pki.issue_client(identifier)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("https://localhost:{}/fhir", listener.local_addr()?.port());
        let store = ResourceStore::open("sqlite::memory:", &base_url).await?;
        let server = FhirServer::new(store, ServerConfig::new(&base_url, identifier));
        server
            .load_allow_list(&[AllowListEntry {
                identifier: identifier.to_owned(),
                name: format!("Organization {identifier}"),
                thumbprints: vec![organization_certificate.thumbprint()],
                base_url: base_url.clone(),
            }])
            .await?;
        let tls = Arc::new(pki.server_config(&server_certificate)?);
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(Arc::new(server).serve(listener, tls, async {
            let _ = stopped.await;
        }));
        Ok(LocalServer {
            base_url,
            identifier: identifier.to_owned(),
            pki,
            organization_certificate,
            stop,
            serving,
        })
    }

    /// TLS settings of a client holding the organisation's certificate.
    pub fn organization_tls(&self) -> Result<Arc<rustls::ClientConfig>, BoxError> {
        Ok(Arc::new(
            self.pki.client_config(&self.organization_certificate)?,
        ))
    }

    /// A client of this server holding the organisation's certificate.
    pub fn organization_client(&self) -> Result<FhirClient, BoxError> {
        Ok(FhirClient::new(&self.base_url, self.organization_tls()?)?)
    }

    /// Stops serving and waits for the accept loop to end.
    pub async fn stop(self) -> Result<(), BoxError> {
        let _ = self.stop.send(());
        self.serving.await??;
        Ok(())
    }
}
