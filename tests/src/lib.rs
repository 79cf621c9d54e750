//! Harness for dsf-rs integration tests: FHIR servers started in-process on loopback ports
//! with generated certificates, on SQLite or on the PostgreSQL server of the machine.
//!
//! PostgreSQL tests read `DSF_TEST_POSTGRES_URL` (default
//! `postgresql://postgres@127.0.0.1:5432/test`) and isolate themselves in a schema of their own.
//! Without a reachable server they are skipped with a message, except under `CI=true`, where
//! they fail.

use dsf_core::{DevPki, IssuedCert};
use dsf_fhir::server::{AllowListEntry, LocalUser};
use dsf_fhir::store::{Backend, PostgresBackend, SqliteBackend};
use dsf_fhir::{FhirClient, FhirServer, ResourceStore, ServerConfig};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const LOCAL_ORG: &str = "local.test";
pub const REMOTE_ORG: &str = "remote.test";
pub const TEST_MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

pub fn postgres_url() -> String {
    std::env::var("DSF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh, empty backend; `None` when PostgreSQL is unreachable outside CI.
pub async fn backend(kind: BackendKind) -> Option<Arc<dyn Backend>> {
    match kind {
        BackendKind::Sqlite => Some(Arc::new(
            SqliteBackend::in_memory().expect("in-memory SQLite"),
        )),
        BackendKind::Postgres => {
            let schema = format!("dsf_test_{}", uuid::Uuid::new_v4().simple());
            match PostgresBackend::connect(&postgres_url(), Some(&schema), 8).await {
                Ok(backend) => Some(Arc::new(backend)),
                Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                    eprintln!("skipped: PostgreSQL at {} unreachable: {e}", postgres_url());
                    None
                }
                Err(e) => panic!("PostgreSQL at {} unreachable under CI: {e}", postgres_url()),
            }
        }
    }
}

/// One FHIR server with the local organisation, one remote organisation, one local user with
/// READ and SEARCH roles, and clients holding each certificate plus one the server does not know.
pub struct TestServer {
    pub base_url: String,
    pub port: u16,
    pub pki: DevPki,
    pub store: ResourceStore,
    pub local: FhirClient,
    pub remote: FhirClient,
    pub user: FhirClient,
    pub stranger: FhirClient,
    pub local_cert: IssuedCert,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(kind: BackendKind) -> Option<TestServer> {
        Self::start_with(kind, |_| {}).await
    }

    pub async fn start_with(
        kind: BackendKind,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Option<TestServer> {
        let backend = backend(kind).await?;
        let pki = DevPki::generate("dsf-rs test CA").expect("CA");
        let server_cert = pki.issue_server("localhost").expect("server cert");
        let local_cert = pki.issue_client("local-bpe").expect("client cert");
        let remote_cert = pki.issue_client("remote-bpe").expect("client cert");
        let user_cert = pki.issue_client("local-user").expect("client cert");
        let stranger_cert = pki.issue_client("stranger").expect("client cert");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let base_url = format!("https://localhost:{port}/fhir");
        let mut config = ServerConfig::new(&base_url, LOCAL_ORG);
        // Small, so that an oversized body fits the loopback socket buffers and the client
        // reads the 413 instead of failing mid-write.
        config.max_body_bytes = TEST_MAX_BODY_BYTES;
        config.users.push(LocalUser {
            name: "reader".into(),
            thumbprint: user_cert.thumbprint(),
            roles: vec!["READ".into(), "SEARCH".into()],
        });
        configure(&mut config);
        let store = ResourceStore::new(backend, &base_url);
        let server = FhirServer::new(store.clone(), config);
        server
            .load_allow_list(&[
                AllowListEntry {
                    identifier: LOCAL_ORG.into(),
                    name: "Local Test Organization".into(),
                    thumbprints: vec![local_cert.thumbprint()],
                    base_url: base_url.clone(),
                },
                AllowListEntry {
                    identifier: REMOTE_ORG.into(),
                    name: "Remote Test Organization".into(),
                    thumbprints: vec![remote_cert.thumbprint()],
                    base_url: "https://remote.test/fhir".into(),
                },
            ])
            .await
            .expect("allow list");
        let tls = Arc::new(pki.server_config(&server_cert).expect("server TLS"));
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(Arc::new(server).serve(listener, tls, async {
            let _ = rx.await;
        }));
        let client = |cert: &IssuedCert| {
            FhirClient::new(
                &base_url,
                Arc::new(pki.client_config(cert).expect("client TLS")),
            )
            .expect("client")
        };
        Some(TestServer {
            local: client(&local_cert),
            remote: client(&remote_cert),
            user: client(&user_cert),
            stranger: client(&stranger_cert),
            local_cert,
            base_url: base_url.clone(),
            port,
            store,
            pki,
            shutdown: Some(tx),
        })
    }

    /// A client with an arbitrary TLS configuration, for transport-level tests.
    pub fn client_with(&self, tls: rustls_config::ClientConfig) -> FhirClient {
        FhirClient::new(&self.base_url, Arc::new(tls)).expect("client")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// rustls, as re-exported by dsf-core.
pub use dsf_core::rustls as rustls_config;

/// Runs each named async test function (taking a [`TestServer`]) once per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(server) = $crate::TestServer::start($crate::BackendKind::Sqlite).await {
                        super::$name(server).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(server) = $crate::TestServer::start($crate::BackendKind::Postgres).await {
                        super::$name(server).await;
                    }
                }
            )*
        }
    };
}
