//! A development network of DSF organisations on loopback: generated certificates, allow
//! lists by topology, and per organisation a FHIR server and a BPE in this process, each BPE
//! running the plugin files of one plugin directory (ping-pong, hello-world and allow-list by
//! default; the first organisation is the allow-list management site).
//! `dsf dev up` runs it; `dsf-bench --network-only` measures it.

use crate::{start_bpe, start_fhir_server, BpeSettings, FhirServerSettings};
use dsf_core::{DevPki, IssuedCert};
use dsf_fhir::server::{AllowListEntry, LocalUser, Role, UiTheme, DSF_ADMIN};
use dsf_fhir::{FhirClient, ServerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who is on whose allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// Every organisation allows every other one
    Mesh,
    /// The first organisation is the hub; the others allow only the hub
    Star,
}

impl Topology {
    /// Whether organisation `index` has `other` on its allow list (itself aside).
    pub fn allows(self, index: usize, other: usize) -> bool {
        index != other && (self == Topology::Mesh || index == 0 || other == 0)
    }

    /// `mesh` or `star`, as `network.json` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Topology::Mesh => "mesh",
            Topology::Star => "star",
        }
    }
}

/// One organisation of the network: identifier, base URL and certificates.
pub struct DevOrganization {
    /// The organisation's identifier value (`org-a.dsf.test`).
    pub identifier: String,
    /// Its FHIR server's base URL.
    pub base_url: String,
    /// Its FHIR server's certificate.
    pub server: IssuedCert,
    /// The organisation's own certificate (its BPE's).
    pub client: IssuedCert,
    /// A local user with every role and the DSF_ADMIN practitioner role.
    pub admin: IssuedCert,
}

/// `dev-network/network.json`: what scripts and tests need to reach the network.
#[derive(Serialize, Deserialize)]
pub struct NetworkDescription {
    /// The dev CA's certificate, which every client and server trusts.
    pub ca_certificate: PathBuf,
    /// `mesh` or `star`.
    pub topology: String,
    /// The organisations, the first being the star's centre.
    pub organizations: Vec<NetworkOrganization>,
}

/// One organisation in `network.json`.
#[derive(Serialize, Deserialize)]
pub struct NetworkOrganization {
    /// Its identifier value.
    pub identifier: String,
    /// Its FHIR server's base URL.
    pub fhir_base_url: String,
    /// Its websocket endpoint (`wss://…/fhir/ws`).
    pub websocket_url: String,
    /// The organisation's own certificate: its BPE's, and what starts processes.
    pub client_certificate: PathBuf,
    /// The key of `client_certificate`.
    pub client_key: PathBuf,
    /// The client certificate's thumbprint.
    pub thumbprint: String,
    /// A local administrator's certificate (every role and DSF_ADMIN).
    pub admin_certificate: PathBuf,
    /// The key of `admin_certificate`.
    pub admin_key: PathBuf,
    /// The BPE's state database.
    pub bpe_state: PathBuf,
    /// The FHIR server's audit log (JSON lines).
    pub audit_log: PathBuf,
    /// The FHIR server's status port (`/health/ready`, `/metrics`), when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_status_url: Option<String>,
    /// The BPE's status port, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpe_status_url: Option<String>,
    /// The identifiers of the organisations on its allow list.
    pub allows: Vec<String>,
}

/// How to start a network.
pub struct DevNetworkSettings {
    /// Where certificates, databases and `network.json` go.
    pub dir: PathBuf,
    /// How many organisations.
    pub organizations: usize,
    /// The first organisation's port; the others follow.
    pub base_port: u16,
    /// Who may reach whom.
    pub topology: Topology,
    /// FHIR servers on PostgreSQL at this URL (a schema each) instead of SQLite files.
    pub postgres: Option<String>,
    /// The plugin files every BPE runs.
    pub plugin_directory: PathBuf,
    /// Plugin configuration (e.g. `DEV_DSF_BPE_PING_PONG_TIMEOUT`), for every BPE's plugins.
    pub plugin_config: Vec<(String, String)>,
    /// Status ports on loopback: organisation `i`'s FHIR server at this port plus `2i`, its
    /// BPE at plus `2i + 1`; none when `None`.
    pub status_base_port: Option<u16>,
}

/// The status port of organisation `i`'s FHIR server (`bpe` false) or BPE, from
/// `status_base_port`.
fn status_port(base: Option<u16>, i: usize, bpe: bool) -> Option<u16> {
    let offset = u16::try_from(2 * i + usize::from(bpe)).ok()?;
    base?.checked_add(offset)
}

/// A running network; dropping it stops the BPEs, [`DevNetwork::stop`] also the servers.
pub struct DevNetwork {
    /// The dev CA.
    pub pki: DevPki,
    /// The organisations, in order.
    pub organizations: Vec<DevOrganization>,
    /// Who may reach whom.
    pub topology: Topology,
    /// See [`DevNetworkSettings::status_base_port`].
    pub status_base_port: Option<u16>,
    /// The BPEs, one per organisation, in the same order.
    pub bpes: Vec<dsf_engine::Bpe>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// Writes `<dir>/<identifier>/{server,client,admin}.{crt,key}`.
pub fn write_certificates(
    pki: &DevPki,
    dir: &Path,
    identifier: &str,
) -> Result<DevOrganization, BoxError> {
    let files = dir.join(identifier);
    std::fs::create_dir_all(&files)?;
    let server = pki.issue_server("localhost")?;
    let client = pki.issue_client(identifier)?;
    let admin = pki.issue_client(&format!("admin@{identifier}"))?;
    server.write(&files, "server")?;
    client.write(&files, "client")?;
    admin.write(&files, "admin")?;
    Ok(DevOrganization {
        identifier: identifier.to_owned(),
        base_url: String::new(),
        server,
        client,
        admin,
    })
}

/// The identifier of organisation `i`: `org-a.dsf.test`, … `org-z.dsf.test`, then
/// `org-a1.dsf.test` …
pub fn organization_identifier(i: usize) -> String {
    let letter = (b'a' + (i % 26) as u8) as char;
    match i / 26 {
        0 => format!("org-{letter}.dsf.test"),
        round => format!("org-{letter}{round}.dsf.test"),
    }
}

/// The FHIR server of organisation `i`: its allow list by topology, a local administrator,
/// and its database (a SQLite file in its directory, or a PostgreSQL schema of its own).
fn server_settings(
    settings: &DevNetworkSettings,
    pki: &DevPki,
    organizations: &[DevOrganization],
    i: usize,
) -> Result<FhirServerSettings, BoxError> {
    let org = &organizations[i];
    let peers = organizations
        .iter()
        .enumerate()
        .filter(|(j, _)| settings.topology.allows(i, *j))
        .map(|(_, peer)| AllowListEntry {
            identifier: peer.identifier.clone(),
            name: peer.identifier.clone(),
            thumbprints: vec![peer.client.thumbprint()],
            base_url: peer.base_url.clone(),
        })
        .collect();
    let mut config = ServerConfig::new(&org.base_url, &org.identifier);
    config.ui_theme = Some(UiTheme::Dev);
    config.audit = Some(dsf_fhir::server::AuditLog::open(vec![
        dsf_fhir::server::AuditTarget::File(
            settings.dir.join(&org.identifier).join("fhir-audit.log"),
        ),
    ])?);
    config.users.push(
        LocalUser::new("admin", org.admin.thumbprint(), &Role::ALL)
            .with_practitioner_role(DSF_ADMIN.0, DSF_ADMIN.1),
    );
    let (db_url, postgres_schema) = match &settings.postgres {
        Some(url) => (
            url.clone(),
            Some(format!(
                "dsf_dev_{}",
                org.identifier.replace(['.', '-'], "_")
            )),
        ),
        None => (
            format!(
                "sqlite:{}",
                settings
                    .dir
                    .join(&org.identifier)
                    .join("fhir.sqlite")
                    .display()
            ),
            None,
        ),
    };
    Ok(FhirServerSettings {
        config,
        db_url,
        postgres_schema,
        bind: ([127, 0, 0, 1], settings.base_port + i as u16).into(),
        tls: Some(pki.server_config(&org.server)?),
        local_thumbprints: vec![org.client.thumbprint()],
        peers,
        organization_name: org.identifier.clone(),
        init_bundle: None,
        status: status_port(settings.status_base_port, i, false)
            .map(|port| ([127, 0, 0, 1], port).into()),
    })
}

/// The BPE of `org`; only the allow-list management site (`manages_allow_list`) runs the
/// process that publishes the allow list.
fn bpe_settings(
    settings: &DevNetworkSettings,
    org: &DevOrganization,
    index: usize,
    tls: dsf_core::rustls::ClientConfig,
    plugin_config: &[(String, String)],
) -> BpeSettings {
    BpeSettings {
        fhir_base_url: org.base_url.clone(),
        tls,
        db_url: format!(
            "sqlite:{}",
            settings
                .dir
                .join(&org.identifier)
                .join("bpe.sqlite")
                .display()
        ),
        db_lease: None,
        process_threads: None,
        local_timeout: Duration::from_secs(60),
        plugin_directory: settings.plugin_directory.clone(),
        // The first organisation manages the allow list.
        excluded: if index == 0 {
            String::new()
        } else {
            "dsfdev_updateAllowList|1.0".to_owned()
        },
        retired: String::new(),
        plugin_files: dsf_engine::PluginFileSettings::default(),
        plugin_config: plugin_config.to_vec(),
        status: status_port(settings.status_base_port, index, true)
            .map(|port| ([127, 0, 0, 1], port).into()),
    }
}

/// Fails if `bpe` refused any plugin file: a dev network runs all of them or none.
fn check_plugin_files(bpe: &dsf_engine::Bpe, organization: &str) -> Result<(), BoxError> {
    let refused: Vec<String> = bpe
        .report()
        .plugin_files
        .iter()
        .filter_map(|f| {
            f.outcome
                .as_ref()
                .err()
                .map(|reason| format!("{}: {reason}", f.file.display()))
        })
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{organization}'s BPE refused plugin files: {}",
            refused.join("; ")
        )
        .into())
    }
}

impl DevNetwork {
    /// Generates certificates, starts every FHIR server and BPE and writes `network.json`.
    pub async fn start(settings: DevNetworkSettings) -> Result<DevNetwork, BoxError> {
        if settings.organizations == 0 {
            return Err("at least one organisation is needed".into());
        }
        let dir = &settings.dir;
        std::fs::create_dir_all(dir)?;
        let pki = DevPki::generate("dsf-rs dev network CA")?;
        pki.write_ca(dir)?;
        let mut organizations = Vec::new();
        for i in 0..settings.organizations {
            let mut org = write_certificates(&pki, dir, &organization_identifier(i))?;
            let port = settings
                .base_port
                .checked_add(u16::try_from(i)?)
                .ok_or("ports beyond 65535")?;
            org.base_url = format!("https://localhost:{port}/fhir");
            organizations.push(org);
        }
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut servers = Vec::new();
        for i in 0..organizations.len() {
            let mut stop = stop_rx.clone();
            servers.push(
                start_fhir_server(
                    server_settings(&settings, &pki, &organizations, i)?,
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )
                .await?,
            );
        }
        // The first organisation is the allow-list management site: it alone publishes the
        // allow list, which the others may download (the allow-list plugin's configuration).
        let mut plugin_config = settings.plugin_config.clone();
        plugin_config.push((
            "dev.dsf.bpe.allow.list.organization".to_owned(),
            organizations[0].identifier.clone(),
        ));
        let mut bpes = Vec::new();
        for (i, org) in organizations.iter().enumerate() {
            let tls = pki.client_config(&org.client)?;
            bpes.push(start_bpe(bpe_settings(&settings, org, i, tls, &plugin_config)).await?);
        }
        for (bpe, org) in bpes.iter().zip(&organizations) {
            bpe.wait_connected().await;
            check_plugin_files(bpe, &org.identifier)?;
        }
        Ok(DevNetwork {
            pki,
            organizations,
            topology: settings.topology,
            status_base_port: settings.status_base_port,
            bpes,
            servers,
            stop,
        })
    }

    /// A client of organisation `i`'s server with its own certificate.
    pub fn client(&self, i: usize) -> Result<FhirClient, BoxError> {
        let org = &self.organizations[i];
        Ok(FhirClient::new(
            &org.base_url,
            Arc::new(self.pki.client_config(&org.client)?),
        )?)
    }

    /// The description `network.json` holds, with file paths under `dir`.
    pub fn description(&self, dir: &Path) -> NetworkDescription {
        let orgs = &self.organizations;
        NetworkDescription {
            ca_certificate: dir.join("ca.crt"),
            topology: self.topology.name().to_owned(),
            organizations: orgs
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let files = dir.join(&o.identifier);
                    NetworkOrganization {
                        identifier: o.identifier.clone(),
                        fhir_base_url: o.base_url.clone(),
                        websocket_url: format!(
                            "{}/ws",
                            o.base_url.replacen("https://", "wss://", 1)
                        ),
                        client_certificate: files.join("client.crt"),
                        client_key: files.join("client.key"),
                        thumbprint: o.client.thumbprint().to_string(),
                        admin_certificate: files.join("admin.crt"),
                        admin_key: files.join("admin.key"),
                        bpe_state: files.join("bpe.sqlite"),
                        audit_log: files.join("fhir-audit.log"),
                        fhir_status_url: status_port(self.status_base_port, i, false)
                            .map(|p| format!("http://127.0.0.1:{p}")),
                        bpe_status_url: status_port(self.status_base_port, i, true)
                            .map(|p| format!("http://127.0.0.1:{p}")),
                        allows: orgs
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| self.topology.allows(i, *j))
                            .map(|(_, p)| p.identifier.clone())
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// Stops the BPEs, then the servers, and waits for them.
    pub async fn stop(mut self) {
        self.bpes.clear();
        let _ = self.stop.send(true);
        for server in self.servers.drain(..) {
            let _ = server.await;
        }
    }
}
