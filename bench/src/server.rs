//! The FHIR server the REST scenarios load: one organisation in this process on a loopback
//! port, with generated certificates, on SQLite or a PostgreSQL schema of its own.

use dsf_core::{DevPki, IssuedCert};
use dsf_fhir::server::AllowListEntry;
use dsf_fhir::{FhirClient, FhirServer, ResourceStore, ServerConfig};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::net::TcpListener;

/// A draft start message of the local organisation: the Task the local BPE keeps and updates
/// most, and one that carries a searchable identifier.
pub fn bench_task(identifier: &str) -> Value {
    json!({
        "resourceType": "Task",
        "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0"]},
        "identifier": [{"system": "http://dsf.dev/sid/task-identifier", "value": identifier}],
        "instantiatesCanonical": "http://dsf.dev/bpe/Process/ping|1.0",
        "status": "draft",
        "intent": "order",
        "authoredOn": "2026-11-25T10:00:00+01:00",
        "requester": {"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "bench.test"}},
        "restriction": {"recipient": [{"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "bench.test"}}]},
        "input": [
            {"type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "message-name"}]}, "valueString": "startPing"}
        ]
    })
}

/// The bench organisation's certificates, from a CA of their own.
pub(crate) struct Certs {
    pub(crate) pki: DevPki,
    pub(crate) server: IssuedCert,
    /// The local organisation (its BPE's client certificate).
    pub(crate) local: IssuedCert,
    /// A remote organisation on the allow list.
    peer: IssuedCert,
}

pub(crate) fn certs() -> Result<Certs, dsf_core::Error> {
    let pki = DevPki::generate("dsf-rs bench CA")?;
    Ok(Certs {
        server: pki.issue_server("localhost")?,
        local: pki.issue_client("bench-bpe")?,
        peer: pki.issue_client("bench-peer")?,
        pki,
    })
}

/// An in-process FHIR server of one organisation on a loopback port, its database in a
/// temporary directory (SQLite) or a schema of its own (PostgreSQL).
pub struct BenchServer {
    /// `https://localhost:<port>/fhir`.
    pub base_url: String,
    /// The server's store, for loading data past the REST API.
    pub store: ResourceStore,
    /// The backend's description, for reports.
    pub backend_name: &'static str,
    schema: String,
    /// The SQLite database file (unused on PostgreSQL).
    pub db: std::path::PathBuf,
    dir: std::path::PathBuf,
    postgres: Option<String>,
    certs: Certs,
    /// The server's TLS settings, for a baseline served the same way.
    pub tls: Arc<dsf_core::rustls::ServerConfig>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BenchServer {
    /// `postgres`: a PostgreSQL URL, used with a pool as large as `concurrency` (at least 4);
    /// SQLite when absent.
    pub async fn start(
        postgres: Option<&str>,
        concurrency: usize,
    ) -> Result<BenchServer, Box<dyn std::error::Error + Send + Sync>> {
        let certs = certs()?;
        let tls = Arc::new(certs.pki.server_config(&certs.server)?);
        let dir = std::env::temp_dir().join(format!("dsf-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let db = dir.join("fhir.sqlite");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("https://localhost:{}/fhir", listener.local_addr()?.port());
        let schema = format!("dsf_bench_{}", uuid::Uuid::new_v4().simple());
        let (store, backend_name) = match postgres {
            Some(url) => {
                let backend = dsf_fhir::store::PostgresBackend::connect(
                    url,
                    Some(&schema),
                    concurrency.max(4),
                )
                .await?;
                (
                    ResourceStore::new(Arc::new(backend), &base_url),
                    "PostgreSQL",
                )
            }
            None => (
                ResourceStore::open(&format!("sqlite:{}", db.display()), &base_url).await?,
                "SQLite (file, WAL, synchronous=FULL)",
            ),
        };
        let server = FhirServer::new(store.clone(), ServerConfig::new(&base_url, "bench.test"));
        server
            .load_allow_list(&[
                AllowListEntry {
                    identifier: "bench.test".into(),
                    name: "Bench".into(),
                    thumbprints: vec![certs.local.thumbprint()],
                    base_url: base_url.clone(),
                },
                AllowListEntry {
                    identifier: "peer.test".into(),
                    name: "Bench peer".into(),
                    thumbprints: vec![certs.peer.thumbprint()],
                    base_url: "https://peer.test/fhir".into(),
                },
            ])
            .await?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(Arc::new(server).serve(listener, tls.clone(), async {
            let _ = stop_rx.await;
        }));
        Ok(BenchServer {
            base_url,
            store,
            backend_name,
            schema,
            db,
            dir,
            postgres: postgres.map(str::to_owned),
            certs,
            tls,
            stop: Some(stop),
        })
    }

    /// A client holding the local organisation's certificate.
    pub fn client(&self) -> Result<FhirClient, Box<dyn std::error::Error + Send + Sync>> {
        Ok(FhirClient::new(&self.base_url, self.client_tls()?)?)
    }

    /// Client TLS with the local organisation's certificate.
    pub fn client_tls(
        &self,
    ) -> Result<Arc<dsf_core::rustls::ClientConfig>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Arc::new(self.certs.pki.client_config(&self.certs.local)?))
    }

    /// A client holding the certificate of a remote organisation on the allow list.
    pub fn peer_client(&self) -> Result<FhirClient, Box<dyn std::error::Error + Send + Sync>> {
        let tls = self.certs.pki.client_config(&self.certs.peer)?;
        Ok(FhirClient::new(&self.base_url, Arc::new(tls))?)
    }

    /// Client TLS with a certificate from the server's CA that is on no allow list.
    pub fn stranger_tls(
        &self,
    ) -> Result<Arc<dsf_core::rustls::ClientConfig>, Box<dyn std::error::Error + Send + Sync>> {
        let stranger = self.certs.pki.issue_client("stranger")?;
        Ok(Arc::new(self.certs.pki.client_config(&stranger)?))
    }

    /// Stops serving and removes the SQLite directory, or the PostgreSQL schema.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(url) = &self.postgres {
            match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
                    if let Err(e) = client.batch_execute(&drop).await {
                        eprintln!("could not drop bench schema {}: {e}", self.schema);
                    }
                }
                Err(e) => eprintln!("could not drop bench schema {}: {e}", self.schema),
            }
        }
    }
}
