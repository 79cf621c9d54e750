//! A client of a DSF FHIR server, as a tool or an engine of yours would use it: search with
//! paging, read, and a websocket subscription that reconnects and catches up by itself. Build
//! with `dsf-fhir`'s `client` feature only (`default-features = false, features = ["client"]`):
//! no database and no server code are linked.
//!
//! `cargo run -p dsf-examples --example client_alone` starts a server in-process to talk to;
//! against a real one, take the TLS settings from files:
//!
//! ```no_run
//! # fn tls() -> Result<(), dsf_core::Error> {
//! let tls = dsf_core::TlsFiles {
//!     certificate: "client.crt".into(),
//!     private_key: "client.key".into(),
//!     trusted_cas: "ca.crt".into(),
//! }
//! .client_config()?;
//! # Ok(()) }
//! ```

use dsf_examples::{BoxError, LocalServer};
use dsf_fhir::client::SubscriptionSettings;
use dsf_fhir::FhirClient;
use serde_json::Value;
use std::time::Duration;

async fn run(client: &FhirClient) -> Result<(), BoxError> {
    // Every page of a search, following the Bundle's next links.
    let mut pages = client.search_pages("Endpoint", "status=active&_count=1");
    let mut endpoints = Vec::new();
    while let Some(bundle) = pages.next_page().await? {
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            if entry["search"]["mode"] == "match" {
                endpoints.push(
                    entry["resource"]["address"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                );
            }
        }
    }
    println!("active endpoints: {endpoints:?}");
    if endpoints.is_empty() {
        return Err("the allow list has an active Endpoint".into());
    }

    // A read by id.
    let organizations = client.search("Organization", "active=true").await?;
    let id = organizations["entry"][0]["resource"]["id"]
        .as_str()
        .ok_or("an Organization on the allow list")?;
    let organization: Value = client.read("Organization", id).await?;
    println!("organization: {}", organization["name"]);

    // The built-in subscription the BPE listens on, over the websocket.
    let subscription = client.find_subscription("Task?status=requested").await?;
    let mut stream = client
        .subscribe(&subscription, None, SubscriptionSettings::default())
        .await?;
    let connected =
        tokio::time::timeout(Duration::from_secs(10), stream.wait_for(|s| s.connected)).await;
    if connected.is_err() {
        return Err("the subscription did not bind".into());
    }
    println!("subscribed to Task?status=requested");
    Ok(())
}

async fn run_against_local_server() -> Result<(), BoxError> {
    let server = LocalServer::start("example.org").await?;
    run(&server.organization_client()?).await?;
    server.stop().await
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    run_against_local_server().await
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs() {
        super::run_against_local_server()
            .await
            .expect("the example runs");
    }
}
