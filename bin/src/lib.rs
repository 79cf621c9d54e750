//! Wiring shared by the reference binaries: logging set-up and starting a FHIR server from
//! plain settings. Everything of substance lives in the library crates.

pub mod allocator;
pub mod dev_network;
pub mod ping;
pub mod status;

use dsf_core::Thumbprint;
use dsf_fhir::server::AllowListEntry;
use dsf_fhir::{FhirServer, ResourceStore, ServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What a binary's `main` returns on failure: printed as the error with all its causes on one
/// line (`Error: cannot read server.pem: No such file or directory`) instead of the error's
/// `Debug` form.
pub struct Failure(Box<dyn std::error::Error + Send + Sync>);

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure(error.into())
    }
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", dsf_core::ErrorChain(self.0.as_ref()))
    }
}

/// A `kB` field (`VmRSS:`, `VmHWM:` …) of `/proc/<process>/status`; `process` is a pid or
/// `self`.
pub fn proc_status_kib(process: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Logs at `info` unless `RUST_LOG` says otherwise (the servers).
pub fn init_logging() {
    init_logging_at("info");
}

/// Logs at `level` unless `RUST_LOG` says otherwise; the dev CLI uses `warn` so that its own
/// output (tables, statuses) stays readable.
pub fn init_logging_at(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// Everything needed to run one organisation's FHIR server.
pub struct FhirServerSettings {
    /// The server's settings.
    pub config: ServerConfig,
    /// `sqlite:<path>`, `sqlite::memory:` or `postgresql://…`.
    pub db_url: String,
    /// With a PostgreSQL `db_url`: the schema of this server's tables (created if missing).
    pub postgres_schema: Option<String>,
    /// Where to listen.
    pub bind: SocketAddr,
    /// Mutual TLS; `None` serves plain HTTP for a TLS-terminating reverse proxy that
    /// forwards client certificates (`config.forwarded_certificates`).
    pub tls: Option<dsf_core::rustls::ServerConfig>,
    /// The local organisation's certificate thumbprints (its BPE's client certificate).
    pub local_thumbprints: Vec<Thumbprint>,
    /// Other organisations to put on the allow list.
    pub peers: Vec<AllowListEntry>,
    /// The local organisation's name, for its Organization resource.
    pub organization_name: String,
    /// The init bundle's text, its placeholders filled ([`fill_init_bundle`]), run as the
    /// local organisation after the allow list is loaded.
    pub init_bundle: Option<String>,
    /// Where the status port listens (liveness, readiness, metrics); none when `None`.
    pub status: Option<SocketAddr>,
}

/// Fills the placeholders of an init bundle as the Java DSF does: the local organisation's
/// identifier and thumbprint and its endpoint's address and identifier from the settings,
/// every other `${name}` from its environment variable, else its default.
pub fn fill_init_bundle(
    text: &str,
    config: &ServerConfig,
    local_thumbprints: &[Thumbprint],
) -> Result<String, dsf_core::Error> {
    let value = |name: &str| match name {
        "dev.dsf.fhir.server.organization.identifier.value" => {
            Some(config.organization_identifier.clone())
        }
        "dev.dsf.fhir.server.organization.thumbprint" => {
            local_thumbprints.first().map(|t| t.as_str().to_owned())
        }
        "dev.dsf.fhir.server.endpoint.address" => Some(config.base_url.clone()),
        "dev.dsf.fhir.server.endpoint.identifier.value" => {
            Some(dsf_fhir::server::endpoint_identifier(&config.base_url))
        }
        name => std::env::var(dsf_core::environment_variable(name)).ok(),
    };
    dsf_core::fill_placeholders(text, &["${"], &value)
}

/// Opens the store, loads the allow list, binds, and returns the serving future.
pub async fn start_fhir_server(
    settings: FhirServerSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, Box<dyn std::error::Error + Send + Sync>>
{
    let store = match &settings.postgres_schema {
        Some(schema) => {
            let backend =
                dsf_fhir::store::PostgresBackend::connect(&settings.db_url, Some(schema), 16)
                    .await?;
            ResourceStore::new(Arc::new(backend), &settings.config.base_url)
        }
        None => ResourceStore::open(&settings.db_url, &settings.config.base_url).await?,
    };
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
    if let Some(bundle) = &settings.init_bundle {
        server.load_init_bundle(bundle).await?;
        tracing::info!("init bundle loaded");
    }
    let listener = TcpListener::bind(settings.bind).await?;
    tracing::info!(bind = %settings.bind, base_url = %server.config().base_url, "FHIR server listening");
    let server = Arc::new(server);
    if let Some(address) = settings.status {
        let ready = server.clone();
        let mut endpoint =
            status::StatusEndpoint::new(server.context_path()).check("database", move || {
                let server = ready.clone();
                async move {
                    server
                        .check_ready()
                        .await
                        .map_err(|e| dsf_core::ErrorChain(&e).to_string())
                }
            });
        server.register_metrics(endpoint.registry());
        endpoint.start(address).await?;
    }
    Ok(match settings.tls {
        Some(tls) => tokio::spawn(server.serve(listener, Arc::new(tls), shutdown)),
        None => tokio::spawn(server.serve_behind_proxy(listener, shutdown)),
    })
}

/// Everything needed to run one organisation's BPE with the plugin files of a directory.
pub struct BpeSettings {
    /// The local FHIR server's base URL.
    pub fhir_base_url: String,
    /// The BPE's client certificate and the CAs it trusts.
    pub tls: dsf_core::rustls::ClientConfig,
    /// `sqlite:<path>`, `sqlite::memory:` or `postgresql://…` (shared by several BPEs).
    pub db_url: String,
    /// How long the BPE's lease on a shared state database lasts; the engine's default when
    /// `None`.
    pub db_lease: Option<std::time::Duration>,
    /// Tasks, timers and user tasks handled at once; the engine's default when `None`.
    pub process_threads: Option<usize>,
    /// Time-out of one request to the local FHIR server.
    pub local_timeout: std::time::Duration,
    /// The plugin directory: every executable in it is a plugin file.
    pub plugin_directory: std::path::PathBuf,
    /// `<process id>|<version>` entries (comma or white space separated).
    pub excluded: String,
    /// `<process id>|<version>` entries to retire, as `excluded`.
    pub retired: String,
    /// Time-outs and restarts of plugin processes.
    pub plugin_files: dsf_engine::PluginFileSettings,
    /// Plugin configuration set in plugin processes' environment (several BPEs in one
    /// process, as `dsf dev up` runs them, cannot share one environment).
    pub plugin_config: Vec<(String, String)>,
    /// Where the status port listens (liveness, readiness, metrics); none when `None`.
    pub status: Option<SocketAddr>,
}

/// Starts a BPE: starts and deploys the plugin files, catches up and follows the FHIR server.
pub async fn start_bpe(
    settings: BpeSettings,
) -> Result<dsf_engine::Bpe, Box<dyn std::error::Error + Send + Sync>> {
    let mut config = dsf_engine::BpeConfig::new(&settings.fhir_base_url, Arc::new(settings.tls));
    config.state = dsf_engine::StateDatabase::from_url(&settings.db_url)
        .map_err(|e| format!("DEV_DSF_BPE_DB_URL: {e}"))?;
    if let Some(lease) = settings.db_lease {
        config.lease = lease;
    }
    if let Some(threads) = settings.process_threads {
        config.max_concurrent = threads.max(1);
    }
    config.client.timeout = settings.local_timeout;
    config.plugin_directory = Some(settings.plugin_directory);
    config.plugin_files = settings.plugin_files;
    config.plugin_config = settings.plugin_config;
    config.excluded = dsf_engine::parse_process_list(&settings.excluded)?;
    config.retired = dsf_engine::parse_process_list(&settings.retired)?;
    let bpe = dsf_engine::Bpe::start(config, Vec::new()).await?;
    if let Some(address) = settings.status {
        let (ready, refresh) = (bpe.monitor(), bpe.monitor());
        let mut endpoint = status::StatusEndpoint::new("/bpe")
            .check("bpe", move || {
                let monitor = ready.clone();
                async move { monitor.check_ready().await }
            })
            .refresh(move || {
                let monitor = refresh.clone();
                async move {
                    if let Err(e) = monitor.refresh_metrics().await {
                        tracing::warn!(error = %dsf_core::ErrorChain(&e), "cannot read the metrics from the state database");
                    }
                }
            });
        bpe.register_metrics(endpoint.registry());
        endpoint.start(address).await?;
    }
    for file in &bpe.report().plugin_files {
        match &file.outcome {
            Ok(processes) => {
                tracing::info!(file = %file.file.display(), plugin = file.plugin.as_deref().unwrap_or_default(), ?processes, "plugin file deployed")
            }
            Err(reason) => {
                tracing::error!(file = %file.file.display(), plugin = file.plugin.as_deref().unwrap_or_default(), %reason, "plugin file refused")
            }
        }
    }
    Ok(bpe)
}

/// The reference plugin files, next to the running executable (`target/release/` after
/// `cargo build --release --bins`), for `dsf dev up` and the benchmarks when no directory is
/// named.
pub fn reference_plugin_files() -> Result<Vec<std::path::PathBuf>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .ok_or("the executable has no directory")?
        .to_owned();
    REFERENCE_PLUGINS
        .iter()
        .map(|(_, name)| {
            let file = dir.join(name);
            if file.is_file() {
                Ok(file)
            } else {
                Err(format!(
                    "the plugin file {name} is not next to {}: build the workspace's executables with `cargo build --release --bins`",
                    exe.display()
                ))
            }
        })
        .collect()
}

/// The plugin files this workspace builds: (package, executable).
pub const REFERENCE_PLUGINS: [(&str, &str); 3] = [
    ("dsf-plugin-ping-pong", "dsf-process-ping-pong"),
    ("dsf-plugin-hello-world", "dsf-process-hello-world"),
    ("dsf-plugin-allow-list", "dsf-process-allow-list"),
];

/// A plugin directory at `dir` holding links to `files` (the directory is emptied first).
pub fn plugin_directory(
    dir: &std::path::Path,
    files: &[std::path::PathBuf],
) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    for file in files {
        let Some(name) = file.file_name() else {
            continue;
        };
        let target = std::fs::canonicalize(file)?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, dir.join(name))?;
        #[cfg(not(unix))]
        std::fs::copy(&target, dir.join(name))?;
    }
    Ok(())
}

/// The environment variables of the BPE's own secrets, which its plugin processes do not
/// inherit: its key and certificate files and every password.
pub fn bpe_secret_variables() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            name.starts_with("DEV_DSF_BPE_FHIR_CLIENT_CERTIFICATE")
                || name.contains("PASSWORD")
                || name.starts_with("DEV_DSF_BPE_DB_")
        })
        .collect()
}

/// The status port's settings, shared by both servers (the Java DSF's names).
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Address the status port listens on (liveness, readiness, metrics)
    #[arg(long, env = "DEV_DSF_SERVER_STATUS_HOST", default_value = "127.0.0.1")]
    pub status_host: String,
    /// Port of the status port: /health/live, /health/ready, <context>/status, /metrics;
    /// none when unset
    #[arg(long, env = "DEV_DSF_SERVER_STATUS_PORT")]
    pub status_port: Option<u16>,
}

impl StatusArgs {
    /// The status port's address, when one is configured.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        status::address_from(&self.status_host, self.status_port)
    }
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

/// An ISO 8601 duration setting (`PT30M`), as the Java DSF writes them; `what` names the
/// setting in the error.
pub fn iso_duration(text: &str, what: &str) -> Result<std::time::Duration, String> {
    dsf_bpmn::engine::parse_duration(text)
        .ok()
        .and_then(|millis| u64::try_from(millis).ok())
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("{what}: '{text}' is not an ISO 8601 duration such as PT60S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_bundle_placeholders_come_from_the_settings_then_the_environment() {
        let config = ServerConfig::new("https://dsf.test:8443/fhir", "org.test");
        let thumbprint = Thumbprint::parse(&"ab".repeat(64)).expect("thumbprint");
        let text = r#"{"a": "${dev.dsf.fhir.server.organization.identifier.value}",
            "b": "${dev.dsf.fhir.server.organization.thumbprint}",
            "c": "${dev.dsf.fhir.server.endpoint.address}",
            "d": "${dev.dsf.fhir.server.endpoint.identifier.value}",
            "e": "${dev.dsf.test.unset.placeholder:fallback}"}"#;
        let filled: serde_json::Value = serde_json::from_str(
            &fill_init_bundle(text, &config, std::slice::from_ref(&thumbprint)).expect("filled"),
        )
        .expect("JSON");
        assert_eq!(filled["a"], "org.test");
        assert_eq!(filled["b"], thumbprint.as_str());
        assert_eq!(filled["c"], "https://dsf.test:8443/fhir");
        assert_eq!(filled["d"], "dsf.test_8443");
        assert_eq!(filled["e"], "fallback");
        let missing = fill_init_bundle("${dev.dsf.test.unset.placeholder}", &config, &[])
            .expect_err("no value")
            .to_string();
        assert!(
            missing.contains("DEV_DSF_TEST_UNSET_PLACEHOLDER"),
            "{missing}"
        );
    }
}
