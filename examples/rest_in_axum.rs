//! The DSF FHIR REST API and websocket endpoint mounted under `/fhir` in an axum application
//! of yours, next to routes of its own, served over mutual TLS from your own accept loop.
//!
//! Three things are yours when you embed instead of calling `FhirServer::serve`:
//! - the TLS handshake, after which you put the client certificate into each request's
//!   extensions as a [`PeerCertificate`] (and the [`PeerAddress`], which forwarded
//!   certificates from a reverse proxy need);
//! - starting the background work once ([`FhirServer::start_background`]: built-in
//!   Subscriptions, the websocket change dispatcher) and stopping it ([`FhirServer::shut_down`]);
//! - connection limits: the server's per-address and idle limits belong to its own accept
//!   loop; the per-organisation fair share of requests still applies inside the service.
//!
//! `cargo run -p dsf-examples --example rest_in_axum`

use axum::routing::get;
use axum::Router;
use dsf_core::DevPki;
use dsf_examples::BoxError;
use dsf_fhir::server::{AllowListEntry, PeerAddress, PeerCertificate};
use dsf_fhir::{FhirClient, FhirServer, ResourceStore, ServerConfig};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const ORGANIZATION: &str = "example.org";

/// Accepts mutual-TLS connections and serves `app` on each, telling it who is calling.
async fn accept_loop(listener: TcpListener, tls: TlsAcceptor, app: Router) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let tls = tls.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|der| PeerCertificate::from_der(der));
            let service =
                hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                    if let Some(certificate) = &certificate {
                        request.extensions_mut().insert(certificate.clone());
                    }
                    request.extensions_mut().insert(PeerAddress(peer));
                    let mut app = app.clone();
                    tower_service::Service::call(&mut app, request)
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                // The websocket endpoint upgrades its connection.
                .with_upgrades()
                .await;
        });
    }
}

async fn run() -> Result<(), BoxError> {
    let pki = DevPki::generate("dsf-rs axum example CA")?;
    let server_certificate = pki.issue_server("localhost")?;
    let bpe_certificate = pki.issue_client("bpe.example.org")?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("https://localhost:{}/fhir", listener.local_addr()?.port());

    let store = ResourceStore::open("sqlite::memory:", &base_url).await?;
    let fhir = FhirServer::new(store, ServerConfig::new(&base_url, ORGANIZATION));
    fhir.load_allow_list(&[AllowListEntry {
        identifier: ORGANIZATION.into(),
        name: "Example Organization".into(),
        thumbprints: vec![bpe_certificate.thumbprint()],
        base_url: base_url.clone(),
    }])
    .await?;
    let fhir = Arc::new(fhir);
    fhir.start_background().await?;

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        // axum strips "/fhir" before the service sees the path, hence `nested()`.
        .nest_service("/fhir", fhir.service().nested());
    let tls = TlsAcceptor::from(Arc::new(pki.server_config(&server_certificate)?));
    let serving = tokio::spawn(accept_loop(listener, tls, app));

    // A client of the mounted API, holding the organisation's certificate: a FHIR read.
    let client = FhirClient::new(&base_url, Arc::new(pki.client_config(&bpe_certificate)?))?;
    let bundle = client
        .search(
            "Organization",
            &format!("identifier=http://dsf.dev/sid/organization-identifier|{ORGANIZATION}"),
        )
        .await?;
    let id = bundle["entry"][0]["resource"]["id"]
        .as_str()
        .ok_or("the organisation is on its allow list")?;
    let organization: Value = client.read("Organization", id).await?;
    println!(
        "read Organization/{id} through axum: {}",
        organization["name"]
    );
    assert_eq!(organization["name"], "Example Organization");

    // A certificate the allow list does not know gets 401 from the mounted API.
    let stranger = pki.issue_client("stranger")?;
    let stranger = FhirClient::new(&base_url, Arc::new(pki.client_config(&stranger)?))?;
    let refused = stranger.read::<Value>("Organization", id).await;
    println!(
        "a stranger's read: {:?}",
        refused.as_ref().err().map(|e| e.to_string())
    );
    assert!(refused.is_err());

    fhir.shut_down();
    serving.abort();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    run().await
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs() {
        super::run().await.expect("the example runs");
    }
}
