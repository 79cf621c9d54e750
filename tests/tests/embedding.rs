//! The FHIR server inside someone else's service: the REST API as a service with identities
//! from request extensions, and client certificates forwarded by a reverse proxy, believed
//! only from trusted proxy addresses.

use base64::Engine as _;
use bytes::Bytes;
use dsf_core::IssuedCert;
use dsf_fhir::server::{AddressRange, ForwardedCertificates, PeerAddress, PeerCertificate};
use dsf_tests::{BackendKind, TestServer};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn pem(cert: &IssuedCert) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.cert_der());
    format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
}

/// As Apache's `RequestHeader set X-ClientCert "%{SSL_CLIENT_CERT}s"` forwards it.
fn apache_header(cert: &IssuedCert) -> String {
    pem(cert).trim_end().replace('\n', " ")
}

async fn trusting(proxies: &str) -> TestServer {
    let proxies: Vec<AddressRange> =
        dsf_fhir::server::caller::parse_address_ranges(proxies).unwrap();
    TestServer::start_with(BackendKind::Sqlite, |config| {
        config.forwarded_certificates = Some(ForwardedCertificates::from_proxies(proxies));
    })
    .await
}

/// One plain HTTP/1.1 request over a fresh connection; the status code.
async fn plain_get(address: SocketAddr, path: &str, certificate_header: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(value) = certificate_header {
        request.push_str(&format!("X-ClientCert: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer}"))
}

/// The test server's API also served over plain HTTP on loopback, as behind a proxy.
struct PlainHttp {
    address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl PlainHttp {
    async fn start(server: &TestServer) -> PlainHttp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.server.clone().serve_behind_proxy(listener, async {
            let _ = stopped.await;
        }));
        PlainHttp {
            address,
            stop,
            serving,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.serving.await.unwrap().unwrap();
    }
}

/// The server behind a TLS-terminating proxy on the same host: plain HTTP on loopback, the
/// proxy's header names the caller.
async fn plain_http_behind_a_trusted_proxy() {
    let server = trusting("127.0.0.1").await;
    let plain = PlainHttp::start(&server).await;
    let address = plain.address;

    let local = apache_header(&server.local_cert);
    assert_eq!(
        plain_get(address, "/fhir/Organization", Some(&local)).await,
        200
    );
    // nginx's $ssl_client_escaped_cert.
    let escaped = pem(&server.local_cert)
        .bytes()
        .map(|b| match b.is_ascii_alphanumeric() {
            true => (b as char).to_string(),
            false => format!("%{b:02X}"),
        })
        .collect::<String>();
    assert_eq!(
        plain_get(address, "/fhir/Organization", Some(&escaped)).await,
        200
    );
    // No header: nobody.
    assert_eq!(plain_get(address, "/fhir/Organization", None).await, 401);
    // A header that holds no certificate.
    assert_eq!(
        plain_get(address, "/fhir/Organization", Some("garbage")).await,
        401
    );
    // A certificate nobody allowed.
    let stranger = server.pki.issue_client("stranger-behind-proxy").unwrap();
    assert_eq!(
        plain_get(
            address,
            "/fhir/Organization",
            Some(&apache_header(&stranger))
        )
        .await,
        401
    );

    plain.stop().await;
}

/// Plain HTTP from an address that is not a trusted proxy: the header is ignored, so a
/// forged one gets nowhere.
async fn forged_header_from_an_untrusted_address_is_ignored() {
    let server = trusting("10.0.0.0/8, fd00::/8").await;
    let plain = PlainHttp::start(&server).await;
    let address = plain.address;
    let local = apache_header(&server.local_cert);
    assert_eq!(
        plain_get(address, "/fhir/Organization", Some(&local)).await,
        401
    );
    plain.stop().await;
}

async fn answer(
    server: &TestServer,
    peer: &str,
    certificate: Option<&IssuedCert>,
    header: Option<&IssuedCert>,
) -> StatusCode {
    let mut request = Request::get("/fhir/Organization");
    if let Some(cert) = header {
        request = request.header("X-ClientCert", apache_header(cert));
    }
    let mut request = request.body(Full::new(Bytes::new())).unwrap();
    request
        .extensions_mut()
        .insert(PeerAddress(peer.parse().unwrap()));
    if let Some(cert) = certificate {
        request
            .extensions_mut()
            .insert(PeerCertificate::from_der(cert.cert_der()));
    }
    let response = server.server.service().call(request).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    if status != StatusCode::OK {
        assert!(
            String::from_utf8_lossy(&body).contains("OperationOutcome"),
            "{status} without an OperationOutcome"
        );
    }
    status
}

/// The same rules through the embeddable service, where the embedder's transport fills in
/// the request extensions: the TLS peer certificate is the default; a proxy's header wins
/// only from a trusted address.
async fn identity_sources_through_the_service() {
    let server = trusting("192.0.2.0/24").await;
    let stranger = server.pki.issue_client("stranger-through-service").unwrap();
    let local = &server.local_cert;
    let proxy = "192.0.2.7:40000";
    let elsewhere = "198.51.100.1:40000";

    // The TLS peer certificate alone, from anywhere.
    assert_eq!(answer(&server, elsewhere, Some(local), None).await, 200);
    // A trusted proxy (its own certificate unknown) speaking for the local organisation.
    assert_eq!(
        answer(&server, proxy, Some(&stranger), Some(local)).await,
        200
    );
    assert_eq!(answer(&server, proxy, None, Some(local)).await, 200);
    // The same header from elsewhere is ignored: the unknown TLS certificate decides.
    assert_eq!(
        answer(&server, elsewhere, Some(&stranger), Some(local)).await,
        401
    );
    assert_eq!(answer(&server, elsewhere, None, Some(local)).await, 401);
    // No certificate at all.
    assert_eq!(answer(&server, proxy, None, None).await, 401);

    // Without forwarded certificates configured the header means nothing, even from a
    // proxy's address.
    let plain = TestServer::start(BackendKind::Sqlite).await;
    assert_eq!(
        answer(&plain, proxy, Some(&stranger), Some(&plain.local_cert)).await,
        401
    );
}

/// Mounted below a prefix that the host application strips (axum's `nest_service`), the
/// service still finds its API and its websocket path.
async fn nested_service_takes_relative_paths() {
    let server = TestServer::start(BackendKind::Sqlite).await;
    let service = server.server.service().nested();
    let mut request = Request::get("/Organization?_count=1")
        .header("Accept", "application/fhir+json")
        .body(Full::new(Bytes::new()))
        .unwrap();
    request
        .extensions_mut()
        .insert(PeerCertificate::from_der(server.local_cert.cert_der()));
    let response = service.call(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let bundle: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
}

fn main() {
    dsf_tests::Suite::new()
        .test(
            "plain_http_behind_a_trusted_proxy",
            plain_http_behind_a_trusted_proxy,
        )
        .test(
            "forged_header_from_an_untrusted_address_is_ignored",
            forged_header_from_an_untrusted_address_is_ignored,
        )
        .test(
            "identity_sources_through_the_service",
            identity_sources_through_the_service,
        )
        .test(
            "nested_service_takes_relative_paths",
            nested_service_takes_relative_paths,
        )
        .run()
}
