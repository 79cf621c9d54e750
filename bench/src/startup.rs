//! Start-up time and idle memory of the `dsf-fhir-server` binary.

use crate::bpe::free_port;
use crate::server::{certs, Certs};
use dsf_fhir::FhirClient;
use http::Method;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Start-up time to the first served request, and resident memory once idle, of the
/// `dsf-fhir-server` binary at `binary` on a fresh SQLite database.
pub async fn startup_and_memory(
    binary: &Path,
) -> Result<(Duration, u64), Box<dyn std::error::Error + Send + Sync>> {
    let certs = certs()?;
    let dir = std::env::temp_dir().join(format!("dsf-startup-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let base_url = format!("https://localhost:{port}/fhir");
    let started = Instant::now();
    // As operators start it: the audit log on (its default), to a file.
    let mut child = fhir_server(binary, &certs, &dir, port, &base_url)?
        .env("DEV_DSF_LOG_AUDIT_FILE_ENABLED", "true")
        .env("DEV_DSF_LOG_AUDIT_FILE", dir.join("fhir-audit.log"))
        .env("RUST_LOG", "warn")
        .spawn()?;
    let client = FhirClient::new(&base_url, Arc::new(certs.pki.client_config(&certs.local)?))?;
    answering(&client).await?;
    let startup = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().ok_or("server exited")?;
    let rss_kib = dsf_bin::proc_status_kib(&pid.to_string(), "VmRSS:").ok_or("no VmRSS")?;
    child.kill().await.ok();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((startup, rss_kib))
}

/// `binary` (`dsf-fhir-server`) configured as the bench organisation, `bench.test`: its API
/// on `port`, its SQLite database, certificates and CA in `dir` (written here), known to
/// itself as `base_url`. The audit log is off and there is no status port; callers add them.
pub(crate) fn fhir_server(
    binary: &Path,
    certs: &Certs,
    dir: &Path,
    port: u16,
    base_url: &str,
) -> std::io::Result<tokio::process::Command> {
    certs.server.write(dir, "server")?;
    certs.local.write(dir, "client")?;
    certs.pki.write_ca(dir)?;
    let mut command = tokio::process::Command::new(binary);
    command
        .env("DEV_DSF_FHIR_SERVER_BASE_URL", base_url)
        .env(
            "DEV_DSF_FHIR_SERVER_ORGANIZATION_IDENTIFIER_VALUE",
            "bench.test",
        )
        .env("DEV_DSF_FHIR_CLIENT_CERTIFICATE", dir.join("client.crt"))
        .env(
            "DEV_DSF_FHIR_DB_URL",
            format!("sqlite:{}", dir.join("fhir.sqlite").display()),
        )
        .env("DEV_DSF_SERVER_API_PORT", port.to_string())
        .env("DEV_DSF_SERVER_CERTIFICATE", dir.join("server.crt"))
        .env("DEV_DSF_SERVER_CERTIFICATE_KEY", dir.join("server.key"))
        .env(
            "DEV_DSF_SERVER_AUTH_TRUST_CLIENT_CERTIFICATE_CAS",
            dir.join("ca.crt"),
        )
        .env("DEV_DSF_LOG_AUDIT_FILE_ENABLED", "false")
        .kill_on_drop(true);
    Ok(command)
}

/// Waits until the server `client` talks to answers `metadata`, for at most 30 s.
pub(crate) async fn answering(
    client: &FhirClient,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    loop {
        if let Ok(r) = client.json(Method::GET, "metadata", None).await {
            if r.status == 200 {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("server did not answer within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
