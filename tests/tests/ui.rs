//! Browser pages over HTTPS: what a browser's `Accept` gets from the real server, under the
//! same authorization as FHIR clients, with peer content escaped.

use dsf_core::DevPki;
use dsf_fhir::server::{LocalUser, Role, UiTheme};
use dsf_fhir::FhirClient;
use dsf_tests::{fixtures, BackendKind, TestServer, ADMIN_IDENTIFIER, LOCAL_ORG};
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

/// The value of the first `name="csrf"` field of a page.
fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(html[at..].split('"').next()?.to_owned())
}

/// Posts a form as a browser on the server's own page would.
async fn post_form(
    client: &FhirClient,
    server: &TestServer,
    path: &str,
    fields: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let body = fields
        .iter()
        .map(|(n, v)| {
            format!(
                "{}={}",
                n,
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let origin = format!("https://localhost:{}", server.port);
    let response = client
        .request(
            Method::POST,
            path,
            &[
                ("accept", BROWSER_ACCEPT),
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &origin),
            ],
            Some(body.into()),
        )
        .await
        .expect("answered");
    let text = String::from_utf8(response.body.to_vec()).expect("UTF-8");
    (response.status.as_u16(), response.headers, text)
}

async fn requested_tasks(server: &TestServer) -> u64 {
    let bundle = server
        .local
        .search("Task", "status=requested&_summary=count")
        .await
        .expect("searched");
    bundle["total"].as_u64().expect("total")
}

async fn the_start_form_creates_the_task_a_client_would() {
    let pki = DevPki::generate("ui test CA").expect("CA");
    let creator = pki.issue_client("creator").expect("cert");
    let thumbprint = creator.thumbprint();
    let server = TestServer::start_with_pki(BackendKind::Sqlite, pki, |config| {
        // May create and read Tasks, but is no DSF administrator: the ping's process
        // authorization does not name them.
        config.users.push(
            LocalUser::new("creator", thumbprint, &[Role::Create, Role::Read])
                .with_practitioner_identifier("creator@local.test"),
        );
    })
    .await;
    server.authorize_ping().await;
    let draft: Value = server
        .local
        .create(&fixtures::draft_task(
            "ui-start",
            "2026-12-06T10:00:00+00:00",
        ))
        .await
        .expect("draft");
    let id = draft["id"].as_str().expect("id");
    let path = format!("Task/{id}");

    let (status, _, html) = page(&server.admin, &path).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("id=\"start-process\""), "{html}");
    assert!(html.contains("startPing"), "the message is shown: {html}");
    let token = csrf_of(&html).expect("the form carries a token");
    let action = format!("_ui/start/{id}");

    // A forged token, a token of another caller, and none at all are refused; nothing is
    // created.
    for forged in ["00ff", "", &"a".repeat(64)] {
        let (status, _, html) =
            post_form(&server.admin, &server, &action, &[("csrf", forged)]).await;
        assert_eq!(status, 403, "{html}");
        assert!(html.contains("CSRF"), "{html}");
    }
    let (status, _, _) = post_form(&server.local, &server, &action, &[("csrf", &token)]).await;
    assert_eq!(status, 403, "a token is its caller's only");
    // Another site's page is refused even with a valid token.
    let response = server
        .admin
        .request(
            Method::POST,
            &action,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", "https://evil.example"),
            ],
            Some(format!("csrf={token}").into()),
        )
        .await
        .expect("answered");
    assert_eq!(response.status.as_u16(), 403);
    assert_eq!(requested_tasks(&server).await, 0);

    // The real submission creates the requested Task, requested by the administrator.
    let (status, headers, html) =
        post_form(&server.admin, &server, &action, &[("csrf", &token)]).await;
    assert_eq!(status, 303, "{html}");
    let location = headers["location"].to_str().expect("location").to_owned();
    assert!(location.contains("/Task/"), "{location}");
    assert!(
        !location.contains("_history"),
        "the current version: {location}"
    );
    assert_eq!(requested_tasks(&server).await, 1);
    let tasks = server
        .local
        .search("Task", "status=requested")
        .await
        .expect("searched");
    let task = &tasks["entry"][0]["resource"];
    assert_eq!(task["requester"]["type"], "Practitioner");
    assert_eq!(task["requester"]["identifier"]["value"], ADMIN_IDENTIFIER);
    assert_eq!(task["input"][0]["valueString"], "startPing");
    assert!(task.get("identifier").is_none());

    // A reader sees the draft without a form; a creator the ping does not authorize gets
    // the form, but the create is refused as a client's would be.
    let (_, _, html) = page(&server.user, &path).await;
    assert!(!html.contains("start-process"), "{html}");
    let creator = server.client_for(&creator);
    let (_, _, html) = page(&creator, &path).await;
    let token = csrf_of(&html).expect("the creator gets the form");
    let (status, _, html) = post_form(&creator, &server, &action, &[("csrf", &token)]).await;
    assert_eq!(status, 403, "{html}");
    assert_eq!(requested_tasks(&server).await, 1);
}

async fn the_answer_form_completes_a_user_task() {
    let server = start().await;
    let tag = json!([{"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": "ALL"}]);
    server
        .local
        .create(&json!({"resourceType": "Questionnaire", "meta": {"tag": tag},
            "url": "http://test.org/fhir/Questionnaire/hello", "version": "1.0", "date": "2026-12-06",
            "status": "active",
            "item": [
                {"linkId": "business-key", "type": "string", "text": "The business-key of the process execution", "required": true},
                {"linkId": "user-task-id", "type": "string", "text": "The user-task-id of the process execution", "required": true},
                {"linkId": "greeting", "type": "string", "text": "Greeting", "required": true},
                {"linkId": "approved", "type": "boolean", "text": "Approve?", "required": true},
                {"linkId": "count", "type": "integer", "text": "How many?", "required": false}]}))
        .await
        .expect("questionnaire");
    let response: Value = server
        .local
        .create(&json!({"resourceType": "QuestionnaireResponse",
            "meta": {"tag": [{"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": "LOCAL"}]},
            "questionnaire": "http://test.org/fhir/Questionnaire/hello|1.0",
            "status": "in-progress", "authored": "2026-12-06T10:00:00+00:00",
            "author": {"type": "Organization", "identifier": {"system": fixtures::ORG_SYSTEM, "value": LOCAL_ORG}},
            "item": [
                {"linkId": "business-key", "text": "The business-key of the process execution", "answer": [{"valueString": "bk-1"}]},
                {"linkId": "user-task-id", "text": "The user-task-id of the process execution", "answer": [{"valueString": "ut-1"}]},
                {"linkId": "greeting", "text": "Greeting", "answer": [{"valueString": "placeholder"}]},
                {"linkId": "approved", "text": "Approve?", "answer": [{"valueBoolean": false}]},
                {"linkId": "count", "text": "How many?", "answer": [{"valueInteger": 0}]}]}))
        .await
        .expect("response");
    let id = response["id"].as_str().expect("id");
    let path = format!("QuestionnaireResponse/{id}");

    let (status, _, html) = page(&server.admin, &path).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("id=\"answer-user-task\""), "{html}");
    assert!(html.contains("bk-1"), "{html}");
    assert!(html.contains("type=\"number\" name=\"item-4\""), "{html}");
    let token = csrf_of(&html).expect("token");
    let action = format!("_ui/answer/{id}");

    // Required questions unanswered: refused, nothing changed.
    let (status, _, html) = post_form(
        &server.admin,
        &server,
        &action,
        &[("csrf", &token), ("item-2", ""), ("item-4", "3")],
    )
    .await;
    assert_eq!(status, 400, "{html}");
    assert!(html.contains("Greeting, Approve?"), "{html}");
    let unchanged: Value = server
        .local
        .read("QuestionnaireResponse", id)
        .await
        .expect("read");
    assert_eq!(unchanged["status"], "in-progress");

    let (status, headers, html) = post_form(
        &server.admin,
        &server,
        &action,
        &[
            ("csrf", &token),
            ("item-2", "Hello <b>"),
            ("item-3", "yes"),
            ("item-4", "3"),
        ],
    )
    .await;
    assert_eq!(status, 303, "{html}");
    assert!(headers["location"]
        .to_str()
        .expect("location")
        .ends_with(&path));
    let answered: Value = server
        .local
        .read("QuestionnaireResponse", id)
        .await
        .expect("read");
    assert_eq!(answered["status"], "completed");
    assert_eq!(answered["item"][2]["answer"][0]["valueString"], "Hello <b>");
    assert_eq!(answered["item"][3]["answer"][0]["valueBoolean"], true);
    assert_eq!(answered["item"][4]["answer"][0]["valueInteger"], 3);
    assert_eq!(answered["author"]["identifier"]["value"], ADMIN_IDENTIFIER);

    // Answered once: the form is gone, and posting again is refused.
    let (_, _, html) = page(&server.admin, &path).await;
    assert!(!html.contains("answer-user-task"), "{html}");
    let (status, _, _) = post_form(
        &server.admin,
        &server,
        &action,
        &[("csrf", &token), ("item-2", "again"), ("item-3", "no")],
    )
    .await;
    assert_eq!(status, 400);
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
    let suite = suite.test(
        "the_start_form_creates_the_task_a_client_would",
        the_start_form_creates_the_task_a_client_would,
    );
    let suite = suite.test(
        "the_answer_form_completes_a_user_task",
        the_answer_form_completes_a_user_task,
    );
    suite.run()
}
