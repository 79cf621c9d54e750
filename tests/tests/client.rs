//! The FHIR client SDK against a real server: typed CRUD, conditional operations,
//! transactions, paging, OperationOutcomes as typed errors; and against a misbehaving HTTPS
//! server: retries with backoff for idempotent calls only, and timeouts.

use bytes::Bytes;
use dsf_fhir::client::ClientSettings;
use dsf_fhir::{Error, FhirClient};
use dsf_tests::fixtures::{self, tag_all};
use dsf_tests::TestServer;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A plugin author's own view of a resource: only the fields it cares about.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Library {
    resource_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    status: String,
    name: String,
    #[serde(rename = "type")]
    kind: Value,
    meta: Value,
}

fn logic_library() -> Value {
    json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "logic-library"}]})
}

async fn typed_crud_and_errors(server: TestServer) {
    let c = &server.local;
    let created = c
        .create(&Library {
            resource_type: "Library".into(),
            id: None,
            status: "draft".into(),
            name: "typed".into(),
            kind: logic_library(),
            meta: json!({"tag": tag_all()}),
        })
        .await
        .expect("create");
    let id = created.id.clone().expect("id assigned");
    assert_eq!(created.meta["versionId"], "1");
    let mut read: Library = c.read("Library", &id).await.expect("read");
    assert_eq!(read.name, "typed");
    read.status = "active".into();
    let updated = c.update(&read).await.expect("update");
    assert_eq!(updated.meta["versionId"], "2");
    let first: Library = c.vread("Library", &id, 1).await.expect("vread");
    assert_eq!(first.status, "draft");

    // A stale If-Match is a typed precondition failure; nothing changes.
    let stale = c.update_if_match(&read, Some(1)).await;
    assert!(
        matches!(stale, Err(Error::PreconditionFailed(_))),
        "{stale:?}"
    );
    assert!(matches!(
        c.read::<Value>("Library", "does-not-exist").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        c.create(
            &json!({"resourceType": "Library", "status": "nonsense", "type": logic_library()})
        )
        .await,
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        server.stranger.read::<Value>("Library", &id).await,
        Err(Error::Unauthenticated(_))
    ));
    c.delete("Library", &id).await.expect("delete");
    assert!(matches!(
        c.read::<Value>("Library", &id).await,
        Err(Error::Gone { .. })
    ));
}

async fn conditional_operations_and_transactions(server: TestServer) {
    let c = &server.local;
    let library = json!({"resourceType": "Library", "status": "active", "meta": {"tag": tag_all()},
        "type": logic_library(), "url": "http://dsf.test/Library/cond", "version": "1.0"});
    let criteria = "url=http://dsf.test/Library/cond&version=1.0";
    let first = c
        .create_if_none_exist(&library, criteria)
        .await
        .expect("create");
    assert_eq!(first.status.as_u16(), 201);
    let again = c
        .create_if_none_exist(&library, criteria)
        .await
        .expect("exists");
    assert_eq!(again.status.as_u16(), 200);
    let id = first.resource.as_ref().expect("resource")["id"].clone();
    assert!(
        again.resource.is_none() && again.outcome.is_some(),
        "{again:?}"
    );
    assert_eq!(
        again.id_and_version(),
        Some((id.as_str().expect("id").to_owned(), 1))
    );

    let mut changed = library.clone();
    changed["name"] = json!("conditionally-updated");
    let updated = c
        .update_conditional(&changed, criteria)
        .await
        .expect("update");
    assert_eq!(updated.resource.as_ref().expect("resource")["id"], id);
    assert_eq!(
        updated.resource.as_ref().expect("resource")["meta"]["versionId"],
        "2"
    );
    c.delete_conditional("Library", criteria)
        .await
        .expect("delete");
    assert!(matches!(
        c.read::<Value>("Library", id.as_str().expect("id")).await,
        Err(Error::Gone { .. })
    ));

    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7c1a6f3e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Library", "status": "active", "name": "in-tx", "type": logic_library(), "meta": {"tag": tag_all()}},
         "request": {"method": "POST", "url": "Library"}},
        {"resource": fixtures::with_tags(json!({"resourceType": "Library", "status": "draft", "type": logic_library(),
            "relatedArtifact": [{"type": "depends-on", "resource": "urn:uuid:7c1a6f3e-0000-4000-8000-000000000001"}]}), tag_all()),
         "request": {"method": "POST", "url": "Library"}}
    ]});
    let response = c.transaction(&bundle).await.expect("transaction");
    assert_eq!(response["type"], "transaction-response");
    assert_eq!(response["entry"].as_array().map(Vec::len), Some(2));
}

async fn paging_iterates_every_match(server: TestServer) {
    let libraries: Vec<Value> = (0..45)
        .map(|i| json!({"resourceType": "Library", "status": "active", "name": format!("page-{i}"), "meta": {"tag": tag_all()}}))
        .collect();
    server.seed(libraries).await;
    let mut pages = server
        .local
        .search_pages("Library", "status=active&_count=10");
    let mut names = BTreeSet::new();
    let mut count = 0;
    while let Some(library) = pages.next().await.expect("page") {
        names.insert(library["name"].as_str().expect("name").to_owned());
        count += 1;
    }
    assert_eq!(count, 45, "each match once");
    assert_eq!(names.len(), 45);
    assert_eq!(pages.total(), Some(45));
    let bundles = {
        let mut pages = server
            .local
            .search_pages("Library", "status=active&_count=20");
        let mut n = 0;
        while pages.next_page().await.expect("page").is_some() {
            n += 1;
        }
        n
    };
    assert_eq!(bundles, 3);
}

/// An HTTPS server (with the test PKI) that answers 503 to the first `failures` requests and
/// then 200, or never answers when `hang` is set; counts the requests it saw.
async fn misbehaving_server(
    failures: usize,
    hang: bool,
) -> (FhirClient, Arc<AtomicUsize>, ClientSettings) {
    let pki = dsf_core::DevPki::generate("client test CA").expect("CA");
    let server_cert = pki.issue_server("localhost").expect("server cert");
    let client_cert = pki.issue_client("client").expect("client cert");
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config(&server_cert).expect("TLS")));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if hang {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let (status, body) = if n < failures {
                            (
                                503,
                                r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"busy"}]}"#,
                            )
                        } else {
                            (
                                200,
                                r#"{"resourceType":"Library","id":"x","status":"active"}"#,
                            )
                        };
                        let mut response =
                            http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        *response.status_mut() =
                            http::StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let mut settings = ClientSettings::default();
    settings.timeout = Duration::from_millis(300);
    settings.retries = 3;
    settings.backoff = Duration::from_millis(20);
    settings.max_backoff = Duration::from_millis(100);
    let client = FhirClient::with_settings(
        &format!("https://localhost:{port}/fhir"),
        Arc::new(pki.client_config(&client_cert).expect("client TLS")),
        settings.clone(),
    )
    .expect("client");
    (client, seen, settings)
}

async fn idempotent_calls_are_retried_until_they_succeed() {
    let (client, seen, _) = misbehaving_server(2, false).await;
    let library: Value = client
        .read("Library", "x")
        .await
        .expect("third attempt succeeds");
    assert_eq!(library["id"], "x");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

async fn retries_give_up_with_the_server_error() {
    let (client, seen, settings) = misbehaving_server(100, false).await;
    let result = client.read::<Value>("Library", "x").await;
    assert!(
        matches!(result, Err(Error::Server { status: 503, ref message }) if message == "busy"),
        "{result:?}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1 + settings.retries as usize);
}

async fn creates_are_never_repeated() {
    let (client, seen, _) = misbehaving_server(1, false).await;
    let result = client
        .create(&json!({"resourceType": "Library", "status": "active"}))
        .await;
    assert!(
        matches!(result, Err(Error::Server { status: 503, .. })),
        "{result:?}"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "a POST may have been applied: not repeated"
    );
}

async fn calls_time_out() {
    let (client, seen, settings) = misbehaving_server(0, true).await;
    let started = std::time::Instant::now();
    let result = client.read::<Value>("Library", "x").await;
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1 + settings.retries as usize,
        "each attempt timed out"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = dsf_tests::server_tests!(
        suite,
        typed_crud_and_errors,
        conditional_operations_and_transactions,
        paging_iterates_every_match
    );
    let suite = suite.test(
        "idempotent_calls_are_retried_until_they_succeed",
        idempotent_calls_are_retried_until_they_succeed,
    );
    let suite = suite.test(
        "retries_give_up_with_the_server_error",
        retries_give_up_with_the_server_error,
    );
    let suite = suite.test("creates_are_never_repeated", creates_are_never_repeated);
    let suite = suite.test("calls_time_out", calls_time_out);
    suite.run()
}
