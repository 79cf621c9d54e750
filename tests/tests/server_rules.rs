//! Server rules the Java DSF's integration tests pin down: `$permanent-delete`, transactions
//! that fail or read nothing, immutable Subscription criteria, and input that only looks
//! wrong (identifier values like dates) or is wrong (NUL in a search value), and conditional
//! references (`Organization?identifier=…`) resolved to the one resource they name.

use dsf_tests::fixtures::{draft_task, organization, tag_all, ORG_SYSTEM};
use dsf_tests::{diagnostics, send_json, TestServer};
use http::Method;
use serde_json::{json, Value};

fn id(resource: &Value) -> String {
    resource["id"].as_str().expect("id").to_owned()
}

async fn permanent_delete_removes_every_version(server: TestServer) {
    let org = server
        .local
        .create(&organization("purge.test", "Purge"))
        .await
        .expect("create");
    let path = format!("Organization/{}", id(&org));
    let mut renamed = org.clone();
    renamed["name"] = json!("Renamed");
    server.local.update(&renamed).await.expect("update");
    let operation = format!("{path}/$permanent-delete");

    // Not deleted yet: 400, and nothing changes.
    let (status, body) = send_json(&server.local, Method::POST, &operation, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        send_json(&server.local, Method::GET, &path, None).await.0,
        200
    );

    // Only the local organisation, or a local user with the role, may.
    let (status, body) = send_json(&server.remote, Method::POST, &operation, None).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = send_json(&server.user, Method::POST, &operation, None).await;
    assert_eq!(status, 403, "{body}");

    server
        .local
        .delete("Organization", &id(&org))
        .await
        .expect("delete");
    assert_eq!(
        send_json(&server.local, Method::GET, &path, None).await.0,
        410
    );
    let (status, body) = send_json(&server.local, Method::POST, &operation, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");

    // Afterwards no version, no history, no search hit.
    assert_eq!(
        send_json(&server.local, Method::GET, &path, None).await.0,
        404
    );
    for version in 1..=3 {
        let (status, body) = send_json(
            &server.local,
            Method::GET,
            &format!("{path}/_history/{version}"),
            None,
        )
        .await;
        assert_eq!(status, 404, "version {version}: {body}");
    }
    let (status, history) = send_json(
        &server.local,
        Method::GET,
        &format!("{path}/_history"),
        None,
    )
    .await;
    assert!(
        status == 404 || history["entry"].as_array().is_none_or(Vec::is_empty),
        "{status} {history}"
    );
    let found = server
        .local
        .search(
            "Organization",
            &format!("identifier={ORG_SYSTEM}|purge.test"),
        )
        .await
        .expect("search");
    assert_eq!(found["total"], 0, "{found}");

    // Gone for good: a second permanent delete finds nothing, and the identifier is free.
    let (status, _) = send_json(&server.local, Method::POST, &operation, None).await;
    assert_eq!(status, 404);
    server
        .local
        .create(&organization("purge.test", "Again"))
        .await
        .expect("identifier free again");

    // Draft Tasks too (every type has the operation).
    let task = server
        .local
        .create(&draft_task(
            "http://purge.test/draft",
            "2026-12-04T10:00:00Z",
        ))
        .await
        .expect("draft");
    server
        .local
        .delete("Task", &id(&task))
        .await
        .expect("delete");
    let (status, body) = send_json(
        &server.local,
        Method::POST,
        &format!("Task/{}/$permanent-delete", id(&task)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        send_json(
            &server.local,
            Method::GET,
            &format!("Task/{}", id(&task)),
            None
        )
        .await
        .0,
        404
    );
}

async fn transactions_fail_whole_with_400_and_reads_answer_per_entry(server: TestServer) {
    let org = server
        .local
        .create(&organization("tx.test", "Tx"))
        .await
        .expect("create");
    // A delete and an update of an id that does not exist (405 alone): the transaction
    // answers 400 and the delete is rolled back.
    let mut ghost = organization("ghost.test", "Ghost");
    ghost["id"] = json!("8b0a6d3c-0000-4000-8000-000000000000");
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("Organization/{}", id(&org))}},
        {"fullUrl": "Organization/8b0a6d3c-0000-4000-8000-000000000000", "resource": ghost,
            "request": {"method": "PUT", "url": "Organization/8b0a6d3c-0000-4000-8000-000000000000"}},
    ]});
    let (status, body) = send_json(&server.local, Method::POST, "", Some(&failing)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let path = format!("Organization/{}", id(&org));
    assert_eq!(
        send_json(&server.local, Method::GET, &path, None).await.0,
        200
    );

    // As a batch, each entry answers for itself.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": failing["entry"]});
    let (status, body) = send_json(&server.local, Method::POST, "", Some(&batch)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["entry"][0]["response"]["status"]
        .as_str()
        .is_some_and(|s| s.starts_with("200")));
    assert!(body["entry"][1]["response"]["status"]
        .as_str()
        .is_some_and(|s| s.starts_with("405")));

    // A read that finds nothing answers its entry 404; the write beside it stands.
    let reading = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b3f7e52-1111-4111-8111-111111111111",
            "resource": organization("read.test", "Read"),
            "request": {"method": "POST", "url": "Organization"}},
        {"request": {"method": "GET", "url": "Organization/0b3f7e52-0000-4000-8000-000000000000"}},
        {"request": {"method": "GET", "url": format!("Organization?identifier={ORG_SYSTEM}|read.test")}},
    ]});
    let (status, body) = send_json(&server.local, Method::POST, "", Some(&reading)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["entry"][0]["response"]["status"]
        .as_str()
        .is_some_and(|s| s.starts_with("201")));
    assert!(
        body["entry"][1]["response"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("404")),
        "{body}"
    );
    assert_eq!(body["entry"][2]["resource"]["total"], 1, "{body}");
}

async fn subscription_criteria_and_channel_cannot_change(server: TestServer) {
    let subscription = json!({"resourceType": "Subscription", "meta": {"tag": tag_all()},
        "status": "active", "reason": "rules", "criteria": "Task?status=completed",
        "channel": {"type": "websocket", "payload": "application/fhir+json"}});
    let stored = server.local.create(&subscription).await.expect("create");
    let path = format!("Subscription/{}", id(&stored));
    for (field, change) in [
        ("criteria", json!({"criteria": "Task?status=failed"})),
        (
            "payload",
            json!({"channel": {"type": "websocket", "payload": "application/fhir+xml"}}),
        ),
        ("no payload", json!({"channel": {"type": "websocket"}})),
    ] {
        let mut changed = stored.clone();
        for (key, value) in change.as_object().expect("object") {
            changed[key] = value.clone();
        }
        let (status, body) = send_json(&server.local, Method::PUT, &path, Some(&changed)).await;
        assert_eq!(status, 403, "{field}: {body}");
    }
    let mut reason = stored.clone();
    reason["reason"] = json!("another reason");
    let (status, body) = send_json(&server.local, Method::PUT, &path, Some(&reason)).await;
    assert_eq!(status, 200, "{body}");
}

async fn values_that_look_like_dates_and_nul_in_search(server: TestServer) {
    let mut org = organization("20240115", "Digits");
    org["identifier"].as_array_mut().expect("identifiers").push(
        json!({"system": "http://other.test/sid", "value": "2024abcd-0000-4000-8000-000000000000"}),
    );
    org["telecom"] = json!([{"system": "phone", "value": "2024-99-99"}]);
    let (status, body) = send_json(&server.local, Method::POST, "Organization", Some(&org)).await;
    assert_eq!(status, 201, "{body}");
    let found = server
        .local
        .search("Organization", &format!("identifier={ORG_SYSTEM}|20240115"))
        .await
        .expect("search");
    assert_eq!(found["total"], 1);

    // A real date element still has to be a date.
    let mut task = draft_task("http://dates.test/draft", "2026-12-04T10:00:00Z");
    task["authoredOn"] = json!("2026-13-45");
    let (status, body) = send_json(&server.local, Method::POST, "Task", Some(&task)).await;
    assert!(status == 400 || status == 403, "{status} {body}");

    for query in [
        "Organization?name=a%00b",
        "Organization?identifier=x%00",
        "Task?_profile=http://x%00",
    ] {
        let (status, body) = send_json(&server.local, Method::GET, query, None).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(diagnostics(&body).contains("control character"), "{body}");
    }
}

async fn endpoints_and_responses_reference_only_what_exists(server: TestServer) {
    let org = server
        .local
        .create(&organization("referenced.test", "Referenced"))
        .await
        .expect("organization");
    let missing = "Organization/6a1f0000-0000-4000-8000-000000000000".to_owned();
    let cases = [
        (missing.clone(), 403),
        (format!("{}/{missing}", server.base_url), 403),
        ("Nonsense/1".to_owned(), 403),
        ("https://elsewhere.test/fhir/Organization/1".to_owned(), 201),
        (format!("Organization/{}", id(&org)), 201),
    ];
    for (n, (reference, expected)) in cases.into_iter().enumerate() {
        let endpoint = dsf_tests::fixtures::endpoint(
            &format!("ref{n}.test"),
            &format!("https://ref{n}.test/fhir"),
            &reference,
        );
        let (status, body) =
            send_json(&server.local, Method::POST, "Endpoint", Some(&endpoint)).await;
        assert_eq!(status, expected, "{reference}: {body}");
    }

    // A deleted target counts as missing.
    let gone = server
        .local
        .create(&organization("gone.test", "Gone"))
        .await
        .expect("organization");
    server
        .local
        .delete("Organization", &id(&gone))
        .await
        .expect("delete");
    let endpoint = dsf_tests::fixtures::endpoint(
        "gone.test",
        "https://gone.test/fhir",
        &format!("Organization/{}", id(&gone)),
    );
    let (status, body) = send_json(&server.local, Method::POST, "Endpoint", Some(&endpoint)).await;
    assert_eq!(status, 403, "{body}");

    let response = |subject: &str| {
        json!({"resourceType": "QuestionnaireResponse",
        "questionnaire": "http://dsf.dev/fhir/Questionnaire/rules|1.0",
        "status": "in-progress",
        "subject": {"reference": subject},
        "item": [
            {"linkId": "business-key", "text": "The business-key of the process execution", "answer": [{"valueString": "bk"}]},
            {"linkId": "user-task-id", "text": "The user-task-id of the process execution", "answer": [{"valueString": "ut"}]}
        ]})
    };
    let (status, body) = send_json(
        &server.local,
        Method::POST,
        "QuestionnaireResponse",
        Some(&response("Task/6a1f0000-0000-4000-8000-000000000000")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let task = server
        .local
        .create(&draft_task(
            "http://rules.test/draft",
            "2026-12-04T10:00:00Z",
        ))
        .await
        .expect("task");
    let (status, body) = send_json(
        &server.local,
        Method::POST,
        "QuestionnaireResponse",
        Some(&response(&format!("Task/{}", id(&task)))),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

async fn conditional_references_name_exactly_one_resource(server: TestServer) {
    let by_identifier = |value: &str| format!("Organization?identifier={ORG_SYSTEM}|{value}");
    // An existing resource, named by a single create.
    let org = server
        .local
        .create(&organization("cond.test", "Conditional"))
        .await
        .expect("organization");
    let endpoint = dsf_tests::fixtures::endpoint(
        "cond.test",
        "https://cond.test/fhir",
        &by_identifier("cond.test"),
    );
    let (status, body) = send_json(&server.local, Method::POST, "Endpoint", Some(&endpoint)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["managingOrganization"]["reference"],
        format!("Organization/{}", id(&org)).as_str()
    );

    // A resource written by the same transaction, after the entry that names it (as in an
    // init bundle): conditional updates of both, the Endpoint first.
    let later = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": dsf_tests::fixtures::endpoint("later.test", "https://later.test/fhir", &by_identifier("later.test")),
            "request": {"method": "PUT", "url": "Endpoint?identifier=http://dsf.dev/sid/endpoint-identifier|later.test"}},
        {"resource": organization("later.test", "Later"),
            "request": {"method": "PUT", "url": by_identifier("later.test")}},
    ]});
    let (status, body) = send_json(&server.local, Method::POST, "", Some(&later)).await;
    assert_eq!(status, 200, "{body}");
    let written = server
        .local
        .search(
            "Endpoint",
            "identifier=http://dsf.dev/sid/endpoint-identifier|later.test",
        )
        .await
        .expect("search");
    let organization_id = server
        .local
        .search(
            "Organization",
            &format!("identifier={ORG_SYSTEM}|later.test"),
        )
        .await
        .expect("search")["entry"][0]["resource"]["id"]
        .as_str()
        .map(str::to_owned)
        .expect("organization");
    assert_eq!(
        written["entry"][0]["resource"]["managingOrganization"]["reference"],
        format!("Organization/{organization_id}").as_str()
    );

    // None, or several: 403, nothing stored.
    let nowhere = dsf_tests::fixtures::endpoint(
        "nowhere.test",
        "https://nowhere.test/fhir",
        &by_identifier("nowhere.test"),
    );
    let (status, body) = send_json(&server.local, Method::POST, "Endpoint", Some(&nowhere)).await;
    assert_eq!(status, 403, "{body}");
    let several = dsf_tests::fixtures::endpoint(
        "several.test",
        "https://several.test/fhir",
        "Organization?active=true",
    );
    let (status, body) = send_json(&server.local, Method::POST, "Endpoint", Some(&several)).await;
    assert_eq!(status, 403, "{body}");
    let stored = server
        .local
        .search("Endpoint", "address=https://nowhere.test/fhir")
        .await
        .expect("search");
    assert_eq!(stored["total"], 0, "{stored}");
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = dsf_tests::server_tests!(
        suite,
        permanent_delete_removes_every_version,
        transactions_fail_whole_with_400_and_reads_answer_per_entry,
        subscription_criteria_and_channel_cannot_change,
        values_that_look_like_dates_and_nul_in_search,
        endpoints_and_responses_reference_only_what_exists,
        conditional_references_name_exactly_one_resource
    );
    suite.run()
}
