//! One in-memory FHIR server shared by the inputs of a fuzz run, with the local
//! organisation's certificate on its allow list.

use dsf_core::{DevPki, Thumbprint};
use dsf_fhir::server::AllowListEntry;
use dsf_fhir::store::SqliteBackend;
use dsf_fhir::{FhirServer, ResourceStore, ServerConfig};
use std::sync::{Arc, OnceLock};

pub struct Fixture {
    pub runtime: tokio::runtime::Runtime,
    pub server: Arc<FhirServer>,
    pub local: Thumbprint,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let base_url = "https://fuzz.test/fhir";
        let pki = DevPki::generate("fuzz CA").expect("CA");
        let local = pki.issue_client("fuzz-local").expect("cert").thumbprint();
        let server = runtime.block_on(async {
            let backend = Arc::new(SqliteBackend::in_memory().expect("SQLite"));
            let store = ResourceStore::new(backend, base_url);
            let server = FhirServer::new(store, ServerConfig::new(base_url, "fuzz.test"));
            server
                .load_allow_list(&[AllowListEntry {
                    identifier: "fuzz.test".into(),
                    name: "Fuzz".into(),
                    thumbprints: vec![local.clone()],
                    base_url: base_url.into(),
                }])
                .await
                .expect("allow list");
            Arc::new(server)
        });
        Fixture {
            runtime,
            server,
            local,
        }
    })
}
