//! Harness for dsf-rs integration tests: FHIR servers started in-process on loopback ports
//! with generated certificates, on SQLite or on the PostgreSQL server of the machine.
//!
//! PostgreSQL tests read `DSF_TEST_POSTGRES_URL` (default
//! `postgresql://postgres@127.0.0.1:5432/test`) and isolate themselves in a schema of their own.
//! Whether they run is decided by the [`harness`] when a suite starts: without a reachable
//! server they are reported as ignored, with the reason, except under `CI=true`, where they
//! run and fail.

pub mod harness;
pub mod network;
pub mod plugin_files;
pub mod relay;
pub mod replicas;
pub mod tasks;
pub use harness::Suite;

use dsf_core::{DevPki, IssuedCert};
use dsf_fhir::server::{AllowListEntry, LocalUser, Role, DSF_ADMIN};
use dsf_fhir::store::{Backend, PostgresBackend, SqliteBackend, WriteOp, WriteOutcome};
use dsf_fhir::{FhirClient, FhirServer, ResourceStore, ServerConfig};
use serde_json::Value;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The local organisation's identifier value.
pub const LOCAL_ORG: &str = "local.test";
/// The remote organisation's identifier value.
pub const REMOTE_ORG: &str = "remote.test";
/// The test servers' body limit, small so that oversized bodies are cheap to send.
pub const TEST_MAX_BODY_BYTES: usize = 256 * 1024;

/// The first of `len` consecutive loopback ports, for binaries that take a base port and
/// count up from it: starts at a port the system just handed out and released, so it is
/// likely free; a test whose port was taken meanwhile fails loudly rather than hangs.
pub fn free_port_range(len: u16) -> u16 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port");
    port.min(u16::MAX - len)
}

/// The name of the test user holding only `role`.
pub fn role_user_name(role: Role) -> String {
    format!("user-{}", role.name().to_lowercase())
}

/// The practitioner identifier (an e-mail address) of the test user holding only `role`.
pub fn role_user_identifier(role: Role) -> String {
    format!("{}@local.test", role_user_name(role))
}

/// The practitioner identifier of the test administrator.
pub const ADMIN_IDENTIFIER: &str = "admin@local.test";

/// Which storage backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// SQLite in memory.
    Sqlite,
    /// A private schema on the PostgreSQL of [`postgres_url`].
    Postgres,
}

/// `DSF_TEST_POSTGRES_URL`, else the local PostgreSQL's `test` database.
pub fn postgres_url() -> String {
    std::env::var("DSF_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

fn postgres_config() -> tokio_postgres::Config {
    postgres_url().parse().expect("PostgreSQL URL")
}

/// The TCP address of the test database (for proxies placed in front of it).
pub fn postgres_address() -> std::net::SocketAddr {
    let config = postgres_config();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) if host != "localhost" => host.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
        .parse()
        .expect("PostgreSQL address")
}

/// `postgresql://user@address/db` for the configured user and database.
pub fn postgres_url_at(address: std::net::SocketAddr) -> String {
    let config = postgres_config();
    format!(
        "postgresql://{}@{address}/{}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("test")
    )
}

/// A fresh, empty backend (on PostgreSQL, in a schema of its own).
pub async fn backend(kind: BackendKind) -> Arc<dyn Backend> {
    match kind {
        BackendKind::Sqlite => Arc::new(SqliteBackend::in_memory().expect("in-memory SQLite")),
        BackendKind::Postgres => {
            let schema = format!("dsf_test_{}", uuid::Uuid::new_v4().simple());
            match PostgresBackend::connect(&postgres_url(), Some(&schema), 8).await {
                Ok(backend) => Arc::new(backend),
                Err(e) => panic!("PostgreSQL at {} unreachable: {e}", postgres_url()),
            }
        }
    }
}

/// One FHIR server with the local organisation, one remote organisation, a local reader and
/// a local administrator, and clients holding each certificate plus one the server does not know.
pub struct TestServer {
    /// `https://localhost:<port>/fhir`.
    pub base_url: String,
    /// The loopback port it listens on.
    pub port: u16,
    /// The CA of every certificate the test uses.
    pub pki: DevPki,
    /// The server's store, for checks past the REST API.
    pub store: ResourceStore,
    /// A client with the local organisation's certificate.
    pub local: FhirClient,
    /// A client with the remote organisation's certificate.
    pub remote: FhirClient,
    /// A local user with the READ and SEARCH roles only.
    pub user: FhirClient,
    /// A local user with every role and the DSF_ADMIN practitioner role.
    pub admin: FhirClient,
    /// One local user per DSF role, holding only that role, with a practitioner identifier
    /// ([`role_user_identifier`]) but no practitioner role.
    pub role_users: Vec<(Role, FhirClient)>,
    /// A client whose certificate is on no allow list.
    pub stranger: FhirClient,
    /// The local organisation's certificate.
    pub local_cert: IssuedCert,
    /// The server now serving; replaced by [`TestServer::restart`].
    pub server: Arc<FhirServer>,
    config: ServerConfig,
    tls: Arc<rustls_config::ServerConfig>,
    serving: Option<Serving>,
}

/// A server's accept loop. Dropping it (with the test server or organisation that holds it)
/// stops the loop as [`Serving::stop`] does, without waiting: the loop's shutdown future ends
/// when the sender is gone, sent to or not.
pub(crate) struct Serving {
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `port` on loopback again once the previous listener has let go of it.
pub(crate) async fn bind_again(port: u16) -> TcpListener {
    for _ in 0..50 {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(e) => {
                eprintln!("port {port} not free yet: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    panic!("cannot bind port {port} again");
}

pub(crate) fn serve(
    server: Arc<FhirServer>,
    listener: TcpListener,
    tls: Arc<rustls_config::ServerConfig>,
) -> Serving {
    let (shutdown, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, tls, async {
        let _ = rx.await;
    }));
    Serving { shutdown, task }
}

impl Serving {
    /// Stops the accept loop in `serving`, if one runs, and waits for it to end.
    pub(crate) async fn stop(serving: &mut Option<Serving>) {
        if let Some(serving) = serving.take() {
            let _ = serving.shutdown.send(());
            let _ = serving.task.await;
        }
    }
}

/// A new server on `store` with `config`, serving on `port` again once the previous listener
/// has let go of it: what a restarted server process does.
pub(crate) async fn serve_again(
    port: u16,
    store: &ResourceStore,
    config: &ServerConfig,
    tls: &Arc<rustls_config::ServerConfig>,
) -> (Arc<FhirServer>, Serving) {
    let listener = bind_again(port).await;
    let server = Arc::new(FhirServer::new(store.clone(), config.clone()));
    let serving = serve(server.clone(), listener, tls.clone());
    (server, serving)
}

impl TestServer {
    /// A server on `kind` with the default test settings.
    pub async fn start(kind: BackendKind) -> TestServer {
        Self::start_with(kind, |_| {}).await
    }

    /// A server on `kind` with the settings `configure` changes.
    pub async fn start_with(
        kind: BackendKind,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let pki = DevPki::generate("dsf-rs test CA").expect("CA");
        Self::start_with_pki(kind, pki, configure).await
    }

    /// [`TestServer::start_with`] on a given PKI, so that a test can issue certificates for
    /// users it configures (see [`TestServer::client_for`]).
    pub async fn start_with_pki(
        kind: BackendKind,
        pki: DevPki,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        Self::start_on(backend(kind).await, pki, configure).await
    }

    /// [`TestServer::start_with_pki`] on a given backend (e.g. one with short time limits).
    pub async fn start_on(
        backend: Arc<dyn Backend>,
        pki: DevPki,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let server_cert = pki.issue_server("localhost").expect("server cert");
        let local_cert = pki.issue_client("local-bpe").expect("client cert");
        let remote_cert = pki.issue_client("remote-bpe").expect("client cert");
        let user_cert = pki.issue_client("local-user").expect("client cert");
        let admin_cert = pki.issue_client("local-admin").expect("client cert");
        let role_certs: Vec<(Role, IssuedCert)> = Role::ALL
            .iter()
            .map(|role| {
                let cert = pki
                    .issue_client(&format!("user-{}", role.name().to_lowercase()))
                    .expect("client cert");
                (*role, cert)
            })
            .collect();
        let stranger_cert = pki.issue_client("stranger").expect("client cert");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let base_url = format!("https://localhost:{port}/fhir");
        let mut config = ServerConfig::new(&base_url, LOCAL_ORG);
        // Small, so that an oversized body fits the loopback socket buffers and the client
        // reads the 413 instead of failing mid-write.
        config.max_body_bytes = TEST_MAX_BODY_BYTES;
        config.users.push(LocalUser::new(
            "reader",
            user_cert.thumbprint(),
            &[Role::Read, Role::Search],
        ));
        config.users.push(
            LocalUser::new("admin", admin_cert.thumbprint(), &Role::ALL)
                .with_practitioner_role(DSF_ADMIN.0, DSF_ADMIN.1)
                .with_practitioner_identifier(ADMIN_IDENTIFIER),
        );
        for (role, cert) in &role_certs {
            config.users.push(
                LocalUser::new(&role_user_name(*role), cert.thumbprint(), &[*role])
                    .with_practitioner_identifier(&role_user_identifier(*role)),
            );
        }
        configure(&mut config);
        let store = ResourceStore::new(backend, &base_url);
        let server = FhirServer::new(store.clone(), config.clone());
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
        let server = Arc::new(server);
        let serving = serve(server.clone(), listener, tls.clone());
        let client = |cert: &IssuedCert| {
            FhirClient::new(
                &base_url,
                Arc::new(pki.client_config(cert).expect("client TLS")),
            )
            .expect("client")
        };
        TestServer {
            local: client(&local_cert),
            remote: client(&remote_cert),
            user: client(&user_cert),
            admin: client(&admin_cert),
            role_users: role_certs
                .iter()
                .map(|(role, cert)| (*role, client(cert)))
                .collect(),
            stranger: client(&stranger_cert),
            local_cert,
            base_url: base_url.clone(),
            port,
            store,
            pki,
            server,
            config,
            tls,
            serving: Some(serving),
        }
    }

    /// The local user holding only `role`.
    pub fn role_user(&self, role: Role) -> &FhirClient {
        self.role_users
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, c)| c)
            .expect("a user per role")
    }

    /// A client holding `cert` (issued by this server's PKI).
    pub fn client_for(&self, cert: &IssuedCert) -> FhirClient {
        self.client_with(self.pki.client_config(cert).expect("client TLS"))
    }

    /// The literal reference (`Organization/<id>`) of the stored organisation with
    /// `identifier`, as the DSF profiles want OrganizationAffiliations to name theirs.
    pub async fn organization_reference(&self, identifier: &str) -> String {
        let found = self
            .local
            .search(
                "Organization",
                &format!("identifier={}|{identifier}", fixtures::ORG_SYSTEM),
            )
            .await
            .expect("organization search");
        let id = found["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no organization {identifier}: {found}"));
        format!("Organization/{id}")
    }

    /// A client with an arbitrary TLS configuration, for transport-level tests.
    pub fn client_with(&self, tls: rustls_config::ClientConfig) -> FhirClient {
        FhirClient::new(&self.base_url, Arc::new(tls)).expect("client")
    }
}

impl TestServer {
    /// Stops serving: the accept loop ends and open connections close (websockets with
    /// 1001). The store stays.
    pub async fn stop(&mut self) {
        Serving::stop(&mut self.serving).await;
    }

    /// Serves again on the same port with the same store, certificates and settings, as a
    /// restarted server process would.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (server, serving) = serve_again(self.port, &self.store, &self.config, &self.tls).await;
        self.server = server;
        self.serving = Some(serving);
    }
}

impl TestServer {
    /// Writes `resources` straight into the store, past authorization: fixtures a test needs
    /// but whose creation is not what it tests (a completed Task, another organisation's
    /// resources). Returns them as stored.
    pub async fn seed(&self, resources: Vec<Value>) -> Vec<Value> {
        let ops = resources
            .into_iter()
            .map(|resource| WriteOp::Create {
                resource,
                if_none_exist: None,
                full_url: None,
            })
            .collect();
        self.store
            .transaction(ops)
            .await
            .expect("seed")
            .into_iter()
            .map(|outcome| match outcome {
                WriteOutcome::Created(stored) => stored.json().expect("stored JSON"),
                other => panic!("seed: {other:?}"),
            })
            .collect()
    }

    /// Publishes [`fixtures::ping_activity_definition`] as the local organisation.
    pub async fn authorize_ping(&self) -> Value {
        self.local
            .create(&fixtures::ping_activity_definition())
            .await
            .expect("ping ActivityDefinition")
    }
}

/// Resources as DSF tests need them: tagged, with the identifiers and profiles the rules ask for.
pub mod fixtures {
    use super::{LOCAL_ORG, REMOTE_ORG};
    use serde_json::{json, Value};

    /// Identifier system of organisations.
    pub const ORG_SYSTEM: &str = "http://dsf.dev/sid/organization-identifier";
    /// CodeSystem of read-access tags.
    pub const READ_ACCESS: &str = "http://dsf.dev/fhir/CodeSystem/read-access-tag";
    /// The ping process's URL.
    pub const PING_PROCESS: &str = "http://dsf.dev/bpe/Process/ping";
    /// The ping start Task's profile.
    pub const PING_TASK_PROFILE: &str = "http://dsf.dev/fhir/StructureDefinition/task-start-ping";
    /// The ping process's start message.
    pub const PING_MESSAGE: &str = "startPing";
    /// Extension of an ActivityDefinition's process authorization.
    pub const AUTHORIZATION: &str =
        "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization";
    /// CodeSystem of process-authorization codes.
    pub const AUTHORIZATION_SYSTEM: &str = "http://dsf.dev/fhir/CodeSystem/process-authorization";

    /// `meta.tag` granting read access to everybody.
    pub fn tag_all() -> Value {
        json!([{"system": READ_ACCESS, "code": "ALL"}])
    }

    /// `meta.tag` granting read access to the local side and to one organisation.
    pub fn tag_organization(identifier: &str) -> Value {
        json!([
            {"system": READ_ACCESS, "code": "LOCAL"},
            {"system": READ_ACCESS, "code": "ORGANIZATION", "extension": [{
                "url": "http://dsf.dev/fhir/StructureDefinition/extension-read-access-organization",
                "valueIdentifier": {"system": ORG_SYSTEM, "value": identifier}
            }]}
        ])
    }

    /// `meta.tag` granting read access to the local side and to members of a parent
    /// organisation holding a role.
    pub fn tag_role(parent: &str, system: &str, code: &str) -> Value {
        json!([
            {"system": READ_ACCESS, "code": "LOCAL"},
            {"system": READ_ACCESS, "code": "ROLE", "extension": [{
                "url": "http://dsf.dev/fhir/StructureDefinition/extension-read-access-parent-organization-role",
                "extension": [
                    {"url": "parent-organization", "valueIdentifier": {"system": ORG_SYSTEM, "value": parent}},
                    {"url": "organization-role", "valueCoding": {"system": system, "code": code}}
                ]
            }]}
        ])
    }

    /// `meta.tag` granting read access to the local side only.
    pub fn tag_local() -> Value {
        json!([{"system": READ_ACCESS, "code": "LOCAL"}])
    }

    /// `resource` with `tags` as its `meta.tag`.
    pub fn with_tags(mut resource: Value, tags: Value) -> Value {
        resource["meta"]["tag"] = tags;
        resource
    }

    /// An organisation without certificate or endpoint of its own: as the DSF profiles go,
    /// a parent organisation (`organization-parent`).
    pub fn organization(identifier: &str, name: &str) -> Value {
        json!({
            "resourceType": "Organization",
            "meta": {"tag": tag_all(), "profile": ["http://dsf.dev/fhir/StructureDefinition/organization-parent"]},
            "identifier": [{"system": ORG_SYSTEM, "value": identifier}],
            "active": true,
            "name": name,
        })
    }

    /// An Endpoint of `organization` at `address`.
    pub fn endpoint(identifier: &str, address: &str, organization: &str) -> Value {
        json!({
            "resourceType": "Endpoint",
            "meta": {"tag": tag_all()},
            "identifier": [{"system": "http://dsf.dev/sid/endpoint-identifier", "value": identifier}],
            "status": "active",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
            "payloadType": [{"coding": [{"system": "http://hl7.org/fhir/resource-types", "code": "Task"}]}],
            "payloadMimeType": ["application/fhir+json", "application/fhir+xml"],
            "address": address,
            "managingOrganization": {"reference": organization},
        })
    }

    /// A ping start message from `requester` (an organisation identifier) to the local
    /// organisation.
    pub fn ping_task(status: &str, authored: &str, requester: &str) -> Value {
        json!({
            "resourceType": "Task",
            "meta": {"profile": [format!("{PING_TASK_PROFILE}|1.0")]},
            "instantiatesCanonical": format!("{PING_PROCESS}|1.0"),
            "status": status,
            "intent": "order",
            "authoredOn": authored,
            "requester": {"type": "Organization", "identifier": {"system": ORG_SYSTEM, "value": requester}},
            "restriction": {"recipient": [{"type": "Organization", "identifier": {"system": ORG_SYSTEM, "value": LOCAL_ORG}}]},
            "input": [{
                "type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "message-name"}]},
                "valueString": PING_MESSAGE
            }]
        })
    }

    /// A draft of a ping start message, as the local organisation keeps them to start
    /// processes from.
    pub fn draft_task(identifier: &str, authored: &str) -> Value {
        let mut task = ping_task("draft", authored, LOCAL_ORG);
        task["identifier"] =
            json!([{"system": "http://dsf.dev/sid/task-identifier", "value": identifier}]);
        task
    }

    /// A process-authorization requester or recipient coding.
    pub fn party(code: &str) -> Value {
        json!({"system": AUTHORIZATION_SYSTEM, "code": code})
    }

    /// A requester coding naming one organisation (`LOCAL_ORGANIZATION` or
    /// `REMOTE_ORGANIZATION`).
    pub fn party_organization(code: &str, identifier: &str) -> Value {
        json!({"system": AUTHORIZATION_SYSTEM, "code": code, "extension": [{
            "url": "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization-organization",
            "valueIdentifier": {"system": ORG_SYSTEM, "value": identifier}
        }]})
    }

    /// A requester or recipient coding naming a role in a parent organisation (`LOCAL_ROLE`
    /// or `REMOTE_ROLE`).
    pub fn party_role(code: &str, parent: &str, system: &str, role: &str) -> Value {
        json!({"system": AUTHORIZATION_SYSTEM, "code": code, "extension": [{
            "url": "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization-parent-organization-role",
            "extension": [
                {"url": "parent-organization", "valueIdentifier": {"system": ORG_SYSTEM, "value": parent}},
                {"url": "organization-role", "valueCoding": {"system": system, "code": role}}
            ]
        }]})
    }

    /// A practitioner requester coding (`LOCAL_ALL_PRACTITIONER`) for one practitioner role.
    pub fn party_practitioner(system: &str, role: &str) -> Value {
        json!({"system": AUTHORIZATION_SYSTEM, "code": "LOCAL_ALL_PRACTITIONER", "extension": [{
            "url": "http://dsf.dev/fhir/StructureDefinition/extension-process-authorization-practitioner",
            "valueCoding": {"system": system, "code": role}
        }]})
    }

    /// The ping process (version 1.0) with the given requesters and recipients of its start
    /// message.
    pub fn activity_definition(requesters: &[Value], recipients: &[Value]) -> Value {
        let mut authorization = vec![
            json!({"url": "message-name", "valueString": PING_MESSAGE}),
            json!({"url": "task-profile", "valueCanonical": format!("{PING_TASK_PROFILE}|1.0")}),
        ];
        authorization.extend(
            requesters
                .iter()
                .map(|c| json!({"url": "requester", "valueCoding": c})),
        );
        authorization.extend(
            recipients
                .iter()
                .map(|c| json!({"url": "recipient", "valueCoding": c})),
        );
        json!({
            "resourceType": "ActivityDefinition",
            "meta": {"tag": tag_all()},
            "extension": [{"url": AUTHORIZATION, "extension": authorization}],
            "url": PING_PROCESS,
            "version": "1.0",
            "name": "Ping",
            "date": "2026-01-01",
            "status": "active",
            "kind": "Task",
        })
    }

    /// Every local and remote organisation and every DSF administrator may send the ping
    /// start message to the local organisation.
    pub fn ping_activity_definition() -> Value {
        activity_definition(
            &[
                party("LOCAL_ALL"),
                party("REMOTE_ALL"),
                party_practitioner(
                    "http://dsf.dev/fhir/CodeSystem/practitioner-role",
                    "DSF_ADMIN",
                ),
            ],
            &[party("LOCAL_ALL")],
        )
    }

    /// A ping start message from the remote test organisation.
    pub fn remote_ping(authored: &str) -> Value {
        ping_task("requested", authored, REMOTE_ORG)
    }
}

/// The diagnostics of an answer's first issue; the answer must be an OperationOutcome.
pub fn diagnostics(outcome: &Value) -> String {
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Sends one JSON request and returns the status and the JSON body (`Null` when there is
/// none).
pub async fn send_json(
    client: &FhirClient,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let r = client
        .request(
            method,
            path,
            &[
                ("accept", "application/fhir+json"),
                ("content-type", "application/fhir+json"),
            ],
            body.map(|b| bytes::Bytes::from(serde_json::to_vec(b).expect("JSON"))),
        )
        .await
        .expect("request");
    (r.status.as_u16(), r.json().unwrap_or(Value::Null))
}

/// rustls, as re-exported by dsf-core.
pub use dsf_core::rustls as rustls_config;
