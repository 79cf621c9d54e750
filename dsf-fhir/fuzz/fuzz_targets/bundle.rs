//! Arbitrary bytes as a batch or transaction Bundle posted to the base URL by the local
//! organisation, in JSON (first byte even) or XML (odd): every answer is an OperationOutcome
//! or a Bundle with a 2xx or 4xx status, never a panic or a 500.
#![no_main]

mod common;

use bytes::Bytes;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = if selector % 2 == 0 {
        "application/fhir+json"
    } else {
        "application/fhir+xml"
    };
    let fixture = common::fixture();
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri("/fhir")
        .header("content-type", content_type)
        .header("accept", "application/fhir+json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let response = fixture
        .runtime
        .block_on(fixture.server.handle(&fixture.local, request));
    assert_ne!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR, "{response:?}");
});
