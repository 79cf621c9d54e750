//! Transport: only clients with a certificate from a trusted CA get as far as HTTP.

use dsf_core::{crypto_provider, DevPki};
use dsf_tests::rustls_config::{ClientConfig, RootCertStore};
use dsf_tests::{BackendKind, TestServer};
use http::Method;
use std::time::Duration;

fn roots(server: &TestServer) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for ca in server.pki.ca_certs().unwrap() {
        roots.add(ca).unwrap();
    }
    roots
}

/// Trusted clients are still answered.
async fn assert_still_serving(server: &TestServer) {
    let ok = server
        .local
        .json(Method::GET, "metadata", None)
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
}

async fn handshake_requires_a_client_certificate_from_a_trusted_ca() {
    let server = TestServer::start(BackendKind::Sqlite).await;

    let anonymous = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&server))
        .with_no_client_auth();
    let err = server
        .client_with(anonymous)
        .request(Method::GET, "metadata", &[], None)
        .await
        .unwrap_err();
    assert!(matches!(err, dsf_fhir::Error::Transport { .. }), "{err}");

    let foreign_ca = DevPki::generate("someone else's CA").unwrap();
    let foreign = foreign_ca.issue_client("intruder").unwrap();
    let foreign_config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&server))
        .with_client_auth_cert(foreign.chain().unwrap(), foreign.key().unwrap())
        .unwrap();
    let err = server
        .client_with(foreign_config)
        .request(Method::GET, "metadata", &[], None)
        .await
        .unwrap_err();
    assert!(matches!(err, dsf_fhir::Error::Transport { .. }), "{err}");

    assert_still_serving(&server).await;
}

async fn broken_http_does_not_disturb_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(BackendKind::Sqlite, |config| {
        config.connections.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let port = server.port;
    // Plain text on the TLS port: no HTTP answer, at most a TLS alert, then the end.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    plain
        .write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection at once")
        .ok();
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "expected nothing or a TLS alert record, got {:?}",
        String::from_utf8_lossy(&answer)
    );
    // A handshake that never starts is cut after the handshake time-out.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(4), idle.read_to_end(&mut rest)).await;
    assert!(cut.is_ok(), "the silent connection was not closed");
    assert!(rest.is_empty());
    assert_still_serving(&server).await;
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = suite.test(
        "handshake_requires_a_client_certificate_from_a_trusted_ca",
        handshake_requires_a_client_certificate_from_a_trusted_ca,
    );
    let suite = suite.test(
        "broken_http_does_not_disturb_the_server",
        broken_http_does_not_disturb_the_server,
    );
    suite.run()
}
