//! Start-up time and idle memory of the `dsf-fhir-server` binary.

use crate::server::certs;
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
    certs.server.write(&dir, "server")?;
    certs.local.write(&dir, "client")?;
    certs.pki.write_ca(&dir)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let base_url = format!("https://localhost:{port}/fhir");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env("DEV_DSF_FHIR_SERVER_BASE_URL", &base_url)
        .env(
            "DEV_DSF_FHIR_SERVER_ORGANIZATION_IDENTIFIER_VALUE",
            "startup.test",
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
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let client = FhirClient::new(&base_url, Arc::new(certs.pki.client_config(&certs.local)?))?;
    let startup = loop {
        if let Ok(r) = client.json(Method::GET, "metadata", None).await {
            if r.status == 200 {
                break started.elapsed();
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("server did not answer within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().ok_or("server exited")?;
    let rss_kib = dsf_bin::proc_status_kib(&pid.to_string(), "VmRSS:").ok_or("no VmRSS")?;
    child.kill().await.ok();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((startup, rss_kib))
}
