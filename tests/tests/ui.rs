//! Browser pages over HTTPS: what a browser's `Accept` gets from the real server, under the
//! same authorization as FHIR clients, with peer content escaped.

use dsf_fhir::server::UiTheme;
use dsf_fhir::FhirClient;
use dsf_tests::{fixtures, BackendKind, TestServer, LOCAL_ORG};
use http::Method;
use serde_json::{json, Value};

/// What Firefox sends for a page.
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

async fn page(client: &FhirClient, path: &str) -> (u16, http::HeaderMap, String) {
    let response = client
        .request(Method::GET, path, &[("accept", BROWSER_ACCEPT)], None)
        .await
        .expect("answered");
    let body = String::from_utf8(response.body.to_vec()).expect("UTF-8");
    (response.status.as_u16(), response.headers, body)
}

async fn start() -> TestServer {
    TestServer::start_with(BackendKind::Sqlite, |config| {
        config.ui_theme = Some(UiTheme::Test);
    })
    .await
}

async fn a_task_page_shows_its_outputs_escaped_and_links_its_history() {
    let server = start().await;
    server.authorize_ping().await;
    let task = fixtures::ping_task("requested", "2026-12-05T10:00:00+00:00", LOCAL_ORG);
    let mut task: Value = server.local.create(&task).await.expect("created");
    task["status"] = json!("in-progress");
    let mut task: Value = server.local.update(&task).await.expect("in progress");
    task["status"] = json!("completed");
    task["output"] = json!([{
        "type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/ping", "code": "ping-status"}]},
        "valueCoding": {"system": "http://dsf.dev/fhir/CodeSystem/ping-status", "code": "pong-received"},
        "extension": [{"url": "http://dsf.dev/fhir/StructureDefinition/extension-ping-status",
                       "extension": [{"url": "error-message", "valueString": "<img src=x onerror=alert(1)>"}]}]
    }]);
    let completed: Value = server.local.update(&task).await.expect("completed");
    let id = completed["id"].as_str().expect("id");

    let (status, headers, html) = page(&server.local, &format!("Task/{id}")).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(headers["content-type"], "text/html;charset=UTF-8");
    assert_eq!(
        headers["etag"], "W/\"h3\"",
        "a page's entity tag differs from the JSON's"
    );
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap_or_default()
        .contains("default-src 'none'"));
    assert!(html.contains("pong-received"), "{html}");
    assert!(html.contains("Test</span>"), "the theme is shown: {html}");
    assert!(!html.contains("<img"), "peer content is escaped: {html}");
    assert!(html.contains("&lt;img"), "{html}");
    assert!(
        html.contains(&format!("Task&#x2f;{id}&#x2f;_history")),
        "{html}"
    );

    // A FHIR client asking for JSON still gets JSON.
    let json = server
        .local
        .request(
            Method::GET,
            &format!("Task/{id}"),
            &[("accept", "application/fhir+json")],
            None,
        )
        .await
        .expect("answered");
    assert_eq!(json.status.as_u16(), 200);
    assert!(json.json().is_ok());
}

async fn search_pages_list_entries_and_page_on() {
    let server = start().await;
    for i in 0..3 {
        let task = fixtures::draft_task(&format!("ui-{i}"), "2026-12-05T10:00:00+00:00");
        server.local.create(&task).await.expect("created");
    }
    let (status, _, html) = page(&server.local, "Task?_count=2&_sort=-_lastUpdated").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("3 found"), "{html}");
    assert!(html.contains("rel=\"next\""), "{html}");
    assert_eq!(html.matches("<tr><td><a href=").count(), 2, "{html}");
    assert!(
        html.contains("Task?status=requested&amp;_sort=-_lastUpdated"),
        "Tasks by status: {html}"
    );

    let (_, _, html) = page(&server.local, "Task?status=draft&_sort=-_lastUpdated").await;
    assert!(html.contains("3 found"), "{html}");
    assert!(
        html.contains("aria-current=\"page\">draft<"),
        "the status shown is marked: {html}"
    );

    let (status, _, html) = page(&server.local, "Task?_format=html&_count=1").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("_format=json"),
        "format links keep the query: {html}"
    );
}

async fn pages_answer_under_the_same_rules() {
    let server = start().await;
    let (status, _, html) = page(&server.remote, "Task/does-not-exist").await;
    assert_eq!(status, 404, "{html}");
    assert!(
        html.contains("Issues"),
        "the OperationOutcome is a page too: {html}"
    );
    let (status, _, html) = page(&server.stranger, "Task").await;
    assert_eq!(status, 401, "{html}");
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = suite.test(
        "a_task_page_shows_its_outputs_escaped_and_links_its_history",
        a_task_page_shows_its_outputs_escaped_and_links_its_history,
    );
    let suite = suite.test(
        "search_pages_list_entries_and_page_on",
        search_pages_list_entries_and_page_on,
    );
    let suite = suite.test(
        "pages_answer_under_the_same_rules",
        pages_answer_under_the_same_rules,
    );
    suite.run()
}
