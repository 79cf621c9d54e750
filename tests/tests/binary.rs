//! Binary resources as the Java DSF serves them (its BinaryIntegrationTest): raw create with
//! `X-Security-Context`, raw read when `Accept` admits the content type, 406 when it admits
//! neither it nor FHIR, `Range`, `HEAD`, and read access through the security context; and
//! Binaries larger than one stored part, streamed in and out a part at a time.

use base64::Engine;
use bytes::Bytes;
use dsf_core::DevPki;
use dsf_fhir::client::{FhirClient, RawResponse};
use dsf_fhir::store::{Backend, SqliteBackend, PART_BYTES};
use dsf_tests::fixtures::{tag_all, tag_local, with_tags};
use dsf_tests::BackendKind;
use dsf_tests::TestServer;
use http::Method;
use serde_json::{json, Value};
use std::sync::Arc;

const CONTENT: &[u8] = b"%PDF-1.7 not really a PDF, but ten and more bytes";

async fn send(
    client: &FhirClient,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> RawResponse {
    client
        .request(method, path, headers, body.map(Bytes::copy_from_slice))
        .await
        .expect("request")
}

/// A DocumentReference with `tags`, as the security context of Binaries.
async fn context(server: &TestServer, tags: Value) -> String {
    let doc = json!({"resourceType": "DocumentReference", "status": "current",
        "content": [{"attachment": {"url": "Binary/x"}}]});
    let stored = server
        .local
        .create(&with_tags(doc, tags))
        .await
        .expect("DocumentReference");
    format!("DocumentReference/{}", stored["id"].as_str().expect("id"))
}

async fn raw_create(server: &TestServer, security_context: &str) -> String {
    let created = send(
        &server.local,
        Method::POST,
        "Binary",
        &[
            ("content-type", "application/pdf"),
            ("x-security-context", security_context),
            ("accept", "application/fhir+json"),
        ],
        Some(CONTENT),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let binary = created.json().expect("JSON");
    assert_eq!(binary["contentType"], "application/pdf");
    assert_eq!(binary["securityContext"]["reference"], security_context);
    binary["id"].as_str().expect("id").to_owned()
}

async fn raw_create_and_read(server: TestServer) {
    let context = context(&server, tag_all()).await;
    let id = raw_create(&server, &context).await;
    let path = format!("Binary/{id}");

    // Without the security context header: 400, nothing stored.
    let refused = send(
        &server.local,
        Method::POST,
        "Binary",
        &[("content-type", "application/pdf")],
        Some(CONTENT),
    )
    .await;
    assert_eq!(refused.status, 400);

    for accept in [
        "application/pdf",
        "*/*",
        "application/*",
        "text/plain, application/pdf;q=0.5",
    ] {
        let raw = send(
            &server.local,
            Method::GET,
            &path,
            &[("accept", accept)],
            None,
        )
        .await;
        assert_eq!(raw.status, 200, "{accept}");
        assert_eq!(raw.body.as_ref(), CONTENT, "{accept}");
        assert_eq!(raw.header("content-type"), Some("application/pdf"));
        assert_eq!(raw.header("etag"), Some("W/\"1\""));
        assert_eq!(raw.header("accept-ranges"), Some("bytes"));
        assert_eq!(raw.header("x-security-context"), Some(context.as_str()));
    }
    let versioned = send(
        &server.local,
        Method::GET,
        &format!("{path}/_history/1"),
        &[("accept", "application/pdf")],
        None,
    )
    .await;
    assert_eq!(versioned.body.as_ref(), CONTENT);

    // FHIR asked for: the resource, its data base64.
    let resource = send(
        &server.local,
        Method::GET,
        &path,
        &[("accept", "application/fhir+json")],
        None,
    )
    .await;
    assert_eq!(resource.status, 200);
    let resource = resource.json().expect("JSON");
    assert_eq!(resource["resourceType"], "Binary");
    assert!(resource["data"].is_string());
    let xml = send(
        &server.local,
        Method::GET,
        &format!("{path}?_format=xml"),
        &[],
        None,
    )
    .await;
    assert!(xml
        .header("content-type")
        .is_some_and(|t| t.contains("xml")));

    // Neither FHIR nor the content type: 406.
    let refused = send(
        &server.local,
        Method::GET,
        &path,
        &[("accept", "text/plain")],
        None,
    )
    .await;
    assert_eq!(refused.status, 406);

    // In a Bundle, a read is the resource.
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": path}}]});
    let answer = server.local.transaction(&bundle).await.expect("batch");
    assert_eq!(
        answer["entry"][0]["resource"]["resourceType"], "Binary",
        "{answer}"
    );
}

async fn ranges_and_head(server: TestServer) {
    let context = context(&server, tag_all()).await;
    let id = raw_create(&server, &context).await;
    let path = format!("Binary/{id}");
    let size = CONTENT.len();
    let get = |range: String| {
        let client = server.local.clone();
        let path = path.clone();
        async move {
            send(
                &client,
                Method::GET,
                &path,
                &[("accept", "application/pdf"), ("range", &range)],
                None,
            )
            .await
        }
    };
    let first = get("bytes=0-3".into()).await;
    assert_eq!(first.status, 206);
    assert_eq!(first.body.as_ref(), &CONTENT[..4]);
    assert_eq!(
        first.header("content-range"),
        Some(format!("bytes 0-3/{size}").as_str())
    );
    let suffix = get("bytes=-5".into()).await;
    assert_eq!(suffix.status, 206);
    assert_eq!(suffix.body.as_ref(), &CONTENT[size - 5..]);
    let open = get(format!("bytes={}-", size - 2)).await;
    assert_eq!(open.body.as_ref(), &CONTENT[size - 2..]);
    let beyond = get(format!("bytes={size}-")).await;
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    let several = get("bytes=0-1,3-4".into()).await;
    assert_eq!(several.status, 200);
    assert_eq!(several.body.as_ref(), CONTENT);

    let head = send(
        &server.local,
        Method::HEAD,
        &path,
        &[("accept", "application/pdf")],
        None,
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(head.header("etag"), Some("W/\"1\""));
}

async fn read_access_follows_the_security_context(server: TestServer) {
    let shared = context(&server, tag_all()).await;
    let local_only = context(&server, tag_local()).await;
    let shared_binary = raw_create(&server, &shared).await;
    let local_binary = raw_create(&server, &local_only).await;
    let read = |id: String| {
        let client = server.remote.clone();
        async move {
            send(
                &client,
                Method::GET,
                &format!("Binary/{id}"),
                &[("accept", "application/pdf")],
                None,
            )
            .await
        }
    };
    let allowed = read(shared_binary).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.body.as_ref(), CONTENT);
    let hidden = read(local_binary.clone()).await;
    assert_eq!(hidden.status, 404);
    // HEAD tells no more than GET.
    let head = send(
        &server.remote,
        Method::HEAD,
        &format!("Binary/{local_binary}"),
        &[("accept", "application/pdf")],
        None,
    )
    .await;
    assert_eq!(head.status, 404);
}

/// A GET of `path` with `accept`.
async fn get(client: &FhirClient, path: &str, accept: &str) -> RawResponse {
    send(client, Method::GET, path, &[("accept", accept)], None).await
}

/// A raw upload of `content` with the security context `context`, answered in JSON.
async fn upload(client: &FhirClient, context: &str, content: &[u8]) -> RawResponse {
    send(
        client,
        Method::POST,
        "Binary",
        &[
            ("content-type", "application/octet-stream"),
            ("x-security-context", context),
            ("accept", "application/fhir+json"),
        ],
        Some(content),
    )
    .await
}

/// Content over several stored parts, of a length that fills neither a part nor a base64
/// quantum, with a different byte at every position of a part.
fn large_content() -> Vec<u8> {
    let size = 3 * PART_BYTES + PART_BYTES / 2 + 7;
    (0..size)
        .map(|i| (i % 251) as u8 ^ (i / PART_BYTES) as u8)
        .collect()
}

const LIMIT: u64 = 4 * PART_BYTES as u64;

async fn large_binaries_stream_in_parts(kind: BackendKind) {
    large_binaries_stream(dsf_tests::backend(kind).await).await;
}

/// On a SQLite database file, content is kept in files beside it: one per upload, gone with
/// a refused upload and with the Binary's permanent delete.
async fn large_binaries_stream_from_files() {
    let directory = tempfile::tempdir().expect("directory");
    let backend =
        Arc::new(SqliteBackend::open(&directory.path().join("fhir.sqlite")).expect("SQLite file"));
    let files = backend
        .content_directory()
        .expect("a content directory")
        .to_owned();
    let count = move || {
        std::fs::read_dir(&files)
            .expect("content directory")
            .count()
    };
    large_binaries_stream_checking(backend, &count).await;
    assert_eq!(count(), 0, "no content left");
}

async fn large_binaries_stream(backend: Arc<dyn Backend>) {
    large_binaries_stream_checking(backend, &|| 0).await
}

/// Waits until `count` gives `expected`, failing after ten seconds.
async fn settles(count: &dyn Fn() -> usize, expected: usize, what: &str) {
    for _ in 0..500 {
        if count() == expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(count(), expected, "{what}");
}

/// The large-Binary scenario; `files` counts the content files, if the backend keeps any.
async fn large_binaries_stream_checking(backend: Arc<dyn Backend>, files: &dyn Fn() -> usize) {
    let keeps_files = backend.content_directory().is_some();
    let server = TestServer::start_on(backend, DevPki::generate("CA").expect("CA"), |config| {
        config.max_binary_bytes = LIMIT;
        // Bundles embed Binaries up to the body limit.
        config.max_body_bytes = 8 * PART_BYTES;
    })
    .await;
    let context = context(&server, tag_all()).await;
    let content = large_content();
    let created = upload(&server.local, &context, &content).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let binary = created
        .json()
        .unwrap_or_else(|e| panic!("{e}: {:?}", created.body));
    let id = binary["id"].as_str().expect("id").to_owned();
    let path = format!("Binary/{id}");
    let stored = server.store.binary_content(&id, 1).await.expect("content");
    assert_eq!(
        stored.map(|c| c.size),
        Some(content.len() as u64),
        "kept apart from the resource"
    );
    assert_eq!(files(), usize::from(keeps_files), "one file per upload");

    // Raw: whole, ranges across part boundaries, the suffix, HEAD.
    let raw = |range: Option<String>| {
        let client = server.remote.clone();
        let path = path.clone();
        async move {
            let mut headers = vec![("accept", "*/*".to_owned())];
            headers.extend(range.map(|r| ("range", r)));
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(&client, Method::GET, &path, &headers, None).await
        }
    };
    let whole = raw(None).await;
    assert_eq!(whole.status, 200);
    assert_eq!(
        whole.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(whole.body.as_ref() == content.as_slice(), "whole content");
    let (first, last) = (PART_BYTES - 5, 2 * PART_BYTES + 3);
    let part = raw(Some(format!("bytes={first}-{last}"))).await;
    assert_eq!(part.status, 206);
    assert!(
        part.body.as_ref() == &content[first..=last],
        "range over parts"
    );
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes {first}-{last}/{}", content.len()).as_str())
    );
    let suffix = raw(Some("bytes=-10".into())).await;
    assert!(suffix.body.as_ref() == &content[content.len() - 10..]);
    let head = send(
        &server.local,
        Method::HEAD,
        &path,
        &[("accept", "*/*")],
        None,
    )
    .await;
    assert_eq!(
        head.header("content-length"),
        Some(content.len().to_string().as_str())
    );

    // As a FHIR resource, in JSON and XML, and in a search Bundle: the data in base64.
    let encoded = base64::engine::general_purpose::STANDARD.encode(&content);
    let json = get(&server.local, &path, "application/fhir+json").await;
    assert_eq!(json.status, 200);
    let resource = json.json().expect("Binary as JSON");
    assert_eq!(resource["id"], id.as_str());
    assert_eq!(resource["securityContext"]["reference"], context.as_str());
    assert!(resource["data"].as_str() == Some(encoded.as_str()), "data");
    let xml = get(&server.local, &path, "application/fhir+xml").await;
    assert_eq!(xml.status, 200);
    let parsed =
        dsf_fhir::format::parse_resource(&xml.body, dsf_fhir::Format::Xml).expect("Binary as XML");
    assert!(
        parsed["data"].as_str() == Some(encoded.as_str()),
        "XML data"
    );
    let search = server
        .local
        .search("Binary", &format!("_id={id}"))
        .await
        .expect("search");
    assert!(
        search["entry"][0]["resource"]["data"].as_str() == Some(encoded.as_str()),
        "data in a search Bundle"
    );

    // Larger than the limit: 413, and the next upload still works.
    let too_large = vec![1u8; LIMIT as usize + 1];
    let refused = upload(&server.local, &context, &too_large).await;
    assert_eq!(refused.status, 413, "{:?}", refused.body);

    // Refused before the body is stored: a remote organisation may not create Binaries.
    let forbidden = upload(&server.remote, &context, &content).await;
    assert_eq!(forbidden.status, 403, "{:?}", forbidden.body);
    // The upload refused at the limit removes its file in the background.
    settles(
        files,
        usize::from(keeps_files),
        "refused uploads leave no file",
    )
    .await;

    // Deleted permanently: the content goes with the resource.
    let deleted = send(&server.local, Method::DELETE, &path, &[], None).await;
    assert_eq!(deleted.status, 200);
    let purged = send(
        &server.local,
        Method::POST,
        &format!("{path}/$permanent-delete"),
        &[],
        None,
    )
    .await;
    assert_eq!(purged.status, 200, "{:?}", purged.body);
    assert_eq!(
        server.store.binary_content(&id, 1).await.expect("content"),
        None
    );
    assert_eq!(files(), 0, "the file goes with the Binary");
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = suite.on_both_backends(
        "large_binaries_stream_in_parts",
        large_binaries_stream_in_parts,
    );
    let suite = suite.test(
        "large_binaries_stream_from_files",
        large_binaries_stream_from_files,
    );
    let suite = dsf_tests::server_tests!(
        suite,
        raw_create_and_read,
        ranges_and_head,
        read_access_follows_the_security_context
    );
    suite.run()
}
