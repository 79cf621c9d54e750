//! One organisation's DSF BPE (business process engine). It runs the plugin files of its
//! plugin directory, each an executable it starts and talks to; adding a process is adding a
//! file and configuring it. Configured by environment variables with the Java DSF's names (or
//! the equivalent flags).

use clap::Parser;
use dsf_bin::{init_logging, shutdown_signal, start_bpe, BpeSettings};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "DSF BPE (dsf-rs): runs the process plugin files of its plugin directory"
)]
struct Args {
    /// Base URL of the local organisation's DSF FHIR server, e.g. https://dsf.example.org/fhir
    #[arg(long, env = "DEV_DSF_BPE_FHIR_SERVER_BASE_URL")]
    fhir_server_base_url: String,
    /// Client certificate (PEM) for the local and the remote FHIR servers
    #[arg(long, env = "DEV_DSF_BPE_FHIR_CLIENT_CERTIFICATE")]
    client_certificate: PathBuf,
    /// Private key (PEM, unencrypted) of the client certificate
    #[arg(long, env = "DEV_DSF_BPE_FHIR_CLIENT_CERTIFICATE_PRIVATE_KEY")]
    client_certificate_private_key: PathBuf,
    /// CA certificates (PEM) server certificates must chain to
    #[arg(long, env = "DEV_DSF_BPE_FHIR_CLIENT_TRUST_SERVER_CERTIFICATE_CAS")]
    trust_server_certificate_cas: PathBuf,
    /// The BPE's state: sqlite:<path> (default sqlite:bpe.sqlite, one BPE), sqlite::memory:
    /// or postgresql://user:password@host:port/database (several BPEs may share it)
    #[arg(long, env = "DEV_DSF_BPE_DB_URL", default_value = "sqlite:bpe.sqlite")]
    db_url: String,
    /// How long this BPE's lease on a shared state database lasts without renewal (ISO 8601):
    /// a BPE that dies has its work taken over after this and a third of it
    #[arg(long, env = "DEV_DSF_BPE_DB_LEASE", default_value = "PT3S")]
    db_lease: String,
    /// Tasks, timers and user tasks handled at once
    #[arg(long, env = "DEV_DSF_BPE_PROCESS_THREADS")]
    process_threads: Option<usize>,
    /// Read time-out of requests to the local FHIR server (ISO 8601, e.g. PT60S)
    #[arg(
        long,
        env = "DEV_DSF_BPE_FHIR_CLIENT_LOCAL_TIMEOUT_READ",
        default_value = "PT60S"
    )]
    local_timeout_read: String,
    /// Directory of the process plugin files: every executable in it is started and deployed
    #[arg(
        long,
        env = "DEV_DSF_BPE_PROCESS_PLUGIN_DIRECTORY",
        default_value = "process"
    )]
    process_plugin_directory: PathBuf,
    /// Processes not to run, `<process id>|<major.minor>` separated by commas or white space
    /// (their FHIR resources are removed; running instances go on)
    #[arg(long, env = "DEV_DSF_BPE_PROCESS_EXCLUDED", default_value = "")]
    process_excluded: String,
    /// Processes that start no new instances, `<process id>|<major.minor>` (their FHIR
    /// resources stay, retired; running instances go on)
    #[arg(long, env = "DEV_DSF_BPE_PROCESS_RETIRED", default_value = "")]
    process_retired: String,
    /// Longest one handler call of a plugin file may take (ISO 8601); a plugin process that
    /// exceeds it is restarted
    #[arg(
        long,
        env = "DEV_DSF_BPE_PROCESS_PLUGIN_CALL_TIMEOUT",
        default_value = "PT2M"
    )]
    process_plugin_call_timeout: String,
    #[command(flatten)]
    status: dsf_bin::StatusArgs,
}

use dsf_bin::iso_duration as duration;

fn plugin_file_settings(call_timeout: &str) -> Result<dsf_engine::PluginFileSettings, String> {
    let mut settings = dsf_engine::PluginFileSettings::default();
    settings.call_timeout = duration(call_timeout, "DEV_DSF_BPE_PROCESS_PLUGIN_CALL_TIMEOUT")?;
    settings.environment_removed = dsf_bin::bpe_secret_variables();
    Ok(settings)
}

#[tokio::main]
async fn main() -> Result<(), dsf_bin::Failure> {
    if let Some(code) = dsf_bin::status::health_check_if_asked() {
        std::process::exit(code);
    }
    init_logging();
    let args = Args::parse();
    let settings = BpeSettings {
        fhir_base_url: args.fhir_server_base_url,
        tls: dsf_core::TlsFiles {
            certificate: args.client_certificate,
            private_key: args.client_certificate_private_key,
            trusted_cas: args.trust_server_certificate_cas,
        }
        .client_config()?,
        db_url: args.db_url,
        db_lease: Some(duration(&args.db_lease, "DEV_DSF_BPE_DB_LEASE")?),
        process_threads: args.process_threads,
        local_timeout: duration(
            &args.local_timeout_read,
            "DEV_DSF_BPE_FHIR_CLIENT_LOCAL_TIMEOUT_READ",
        )?,
        plugin_directory: args.process_plugin_directory,
        excluded: args.process_excluded,
        retired: args.process_retired,
        plugin_files: plugin_file_settings(&args.process_plugin_call_timeout)?,
        plugin_config: Vec::new(),
        status: args.status.address()?,
    };
    let bpe = start_bpe(settings).await?;
    tracing::info!(organization = bpe.organization(), processes = ?bpe.report().deployed, "BPE running");
    shutdown_signal().await;
    bpe.shutdown().await;
    Ok(())
}
