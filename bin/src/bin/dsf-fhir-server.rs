//! One organisation's DSF FHIR server. Configured by environment variables with the Java
//! DSF's names (or the equivalent flags).

use clap::Parser;
use dsf_bin::{init_logging, shutdown_signal, start_fhir_server, FhirServerSettings};
use dsf_core::{load_certs, Thumbprint, TlsFiles};
use dsf_fhir::ServerConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "DSF FHIR server (dsf-rs)")]
struct Args {
    /// External base URL, e.g. https://dsf.example.org/fhir
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_BASE_URL")]
    base_url: String,
    /// Identifier value of the local organisation (http://dsf.dev/sid/organization-identifier)
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_ORGANIZATION_IDENTIFIER_VALUE")]
    organization_identifier: String,
    /// SHA-512 thumbprint of the local organisation's client certificate; derived from
    /// --client-certificate when absent
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_ORGANIZATION_THUMBPRINT")]
    organization_thumbprint: Option<String>,
    /// The local organisation's client certificate (PEM), used by its BPE
    #[arg(long, env = "DEV_DSF_FHIR_CLIENT_CERTIFICATE")]
    client_certificate: Option<PathBuf>,
    /// sqlite:<path>, sqlite::memory: or postgresql://user@host:port/db
    #[arg(
        long,
        env = "DEV_DSF_FHIR_DB_URL",
        default_value = "sqlite:fhir.sqlite"
    )]
    db_url: String,
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_PAGE_COUNT", default_value_t = 20)]
    page_count: usize,
    #[arg(long, env = "DEV_DSF_FHIR_SERVER_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body_bytes: usize,
    #[arg(long, env = "DEV_DSF_SERVER_API_HOST", default_value = "127.0.0.1")]
    host: String,
    #[arg(long, env = "DEV_DSF_SERVER_API_PORT", default_value_t = 8443)]
    port: u16,
    /// Server certificate chain (PEM)
    #[arg(long, env = "DEV_DSF_SERVER_CERTIFICATE")]
    server_certificate: PathBuf,
    /// Server private key (PEM)
    #[arg(long, env = "DEV_DSF_SERVER_CERTIFICATE_KEY")]
    server_certificate_key: PathBuf,
    /// CA certificates client certificates must chain to (PEM)
    #[arg(long, env = "DEV_DSF_SERVER_AUTH_TRUST_CLIENT_CERTIFICATE_CAS")]
    trust_client_certificate_cas: PathBuf,
}

fn local_thumbprints(args: &Args) -> Result<Vec<Thumbprint>, String> {
    if let Some(text) = &args.organization_thumbprint {
        return Thumbprint::parse(text)
            .map(|t| vec![t])
            .ok_or_else(|| format!("organization thumbprint '{text}' is not 128 hex digits"));
    }
    let path = args.client_certificate.as_ref().ok_or(
        "set DEV_DSF_FHIR_SERVER_ORGANIZATION_THUMBPRINT or DEV_DSF_FHIR_CLIENT_CERTIFICATE",
    )?;
    let certs = load_certs(path).map_err(|e| e.to_string())?;
    Ok(certs
        .first()
        .map(|c| Thumbprint::of_der(c))
        .into_iter()
        .collect())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    init_logging();
    let args = Args::parse();
    let tls = TlsFiles {
        certificate: args.server_certificate.clone(),
        private_key: args.server_certificate_key.clone(),
        trusted_cas: args.trust_client_certificate_cas.clone(),
    }
    .server_config()?;
    let mut config = ServerConfig::new(&args.base_url, &args.organization_identifier);
    config.page_count = args.page_count;
    config.max_body_bytes = args.max_body_bytes;
    let settings = FhirServerSettings {
        local_thumbprints: local_thumbprints(&args)?,
        organization_name: args.organization_identifier.clone(),
        bind: format!("{}:{}", args.host, args.port).parse()?,
        db_url: args.db_url.clone(),
        postgres_schema: None,
        config,
        tls,
        peers: Vec::new(),
    };
    start_fhir_server(settings, shutdown_signal())
        .await?
        .await??;
    Ok(())
}
