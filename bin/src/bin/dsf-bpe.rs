//! One organisation's DSF BPE (business process engine) with the plugins this binary links
//! (ping-pong). Configured by environment variables with the Java DSF's names (or the
//! equivalent flags).

use clap::Parser;
use dsf_bin::{init_logging, shutdown_signal, start_bpe, BpeSettings};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "DSF BPE (dsf-rs) with the ping-pong plugin")]
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
    /// The BPE's state: sqlite:<path> (default sqlite:bpe.sqlite) or sqlite::memory:
    #[arg(long, env = "DEV_DSF_BPE_DB_URL", default_value = "sqlite:bpe.sqlite")]
    db_url: String,
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
    /// How long a ping waits for its pong (ISO 8601)
    #[arg(long, env = "DEV_DSF_BPE_PING_PONG_TIMEOUT", default_value = "PT20S")]
    pong_timeout: String,
}

fn duration(text: &str, what: &str) -> Result<Duration, String> {
    dsf_bpmn::engine::parse_duration(text)
        .ok()
        .and_then(|millis| u64::try_from(millis).ok())
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{what}: '{text}' is not an ISO 8601 duration such as PT60S"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
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
        process_threads: args.process_threads,
        local_timeout: duration(
            &args.local_timeout_read,
            "DEV_DSF_BPE_FHIR_CLIENT_LOCAL_TIMEOUT_READ",
        )?,
        pong_timeout: duration(&args.pong_timeout, "DEV_DSF_BPE_PING_PONG_TIMEOUT")?,
    };
    let bpe = start_bpe(settings).await?;
    tracing::info!(organization = bpe.organization(), processes = ?bpe.report().deployed, "BPE running");
    shutdown_signal().await;
    bpe.stop();
    Ok(())
}
