//! The DSF's uniqueness rules (the Java DSF's ParallelCreateIntegrationTest and unique
//! triggers): a duplicate is refused with 403 one after the other, inside one transaction,
//! inside one batch and in parallel, where exactly one of the racing creates wins.

use dsf_tests::fixtures::{
    activity_definition, draft_task, endpoint, organization, party, tag_all, ORG_SYSTEM,
};
use dsf_tests::{send_json, TestServer};
use http::Method;
use serde_json::{json, Value};

const ROLE_SYSTEM: &str = "http://dsf.dev/fhir/CodeSystem/organization-role";
const THUMBPRINT: &str = "http://dsf.dev/fhir/StructureDefinition/extension-certificate-thumbprint";

fn thumbprint(digit: char) -> String {
    std::iter::repeat_n(digit, 128).collect()
}

fn member(identifier: &str, thumbprint: &str) -> Value {
    let mut org = organization(identifier, identifier);
    org["meta"]["profile"] = json!(["http://dsf.dev/fhir/StructureDefinition/organization"]);
    org["extension"] = json!([{"url": THUMBPRINT, "valueString": thumbprint}]);
    org["endpoint"] = json!([{"reference": "Endpoint/x"}]);
    org
}

fn parent(identifier: &str) -> Value {
    // The fixture's organisation is a parent organisation already.
    organization(identifier, identifier)
}

fn definition(resource_type: &str, url: &str, version: &str) -> Value {
    let mut resource = match resource_type {
        "ActivityDefinition" => activity_definition(&[party("LOCAL_ALL")], &[party("LOCAL_ALL")]),
        _ => json!({"resourceType": resource_type, "meta": {"tag": tag_all()},
            "status": "active", "name": "Unique"}),
    };
    match resource_type {
        "CodeSystem" => resource["content"] = json!("complete"),
        "StructureDefinition" => {
            resource["kind"] = json!("resource");
            resource["abstract"] = json!(false);
            resource["type"] = json!("Task");
        }
        _ => {}
    }
    resource["url"] = json!(url);
    resource["version"] = json!(version);
    resource["date"] = json!("2026-12-04");
    resource
}

fn naming_system(name: &str, unique_id: &str) -> Value {
    json!({"resourceType": "NamingSystem", "meta": {"tag": tag_all()}, "name": name,
        "status": "active", "kind": "identifier", "date": "2026-12-04",
        "uniqueId": [{"type": "other", "value": unique_id}]})
}

fn affiliation(parent: &str, member: &str, endpoint: &str, role: &str) -> Value {
    json!({"resourceType": "OrganizationAffiliation", "meta": {"tag": tag_all()}, "active": true,
        "organization": {"reference": parent},
        "participatingOrganization": {"reference": member},
        "endpoint": [{"reference": endpoint}],
        "code": [{"coding": [{"system": ROLE_SYSTEM, "code": role}]}]})
}

fn subscription(criteria: &str, payload: Option<&str>) -> Value {
    let mut s = json!({"resourceType": "Subscription", "meta": {"tag": tag_all()},
        "status": "active", "reason": "uniqueness", "criteria": criteria,
        "channel": {"type": "websocket"}});
    if let Some(p) = payload {
        s["channel"]["payload"] = json!(p);
    }
    s
}

/// A resource, a duplicate of it, and a resource that differs in the key only.
struct Case {
    name: &'static str,
    first: Value,
    duplicate: Value,
    different: Value,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for t in [
        "ActivityDefinition",
        "CodeSystem",
        "StructureDefinition",
        "ValueSet",
    ] {
        let url = format!("http://unique.test/{t}");
        let mut duplicate = definition(t, &url, "1.0");
        duplicate["name"] = json!("Other");
        cases.push(Case {
            name: t,
            first: definition(t, &url, "1.0"),
            duplicate,
            different: definition(t, &url, "1.1"),
        });
    }
    cases.push(Case {
        name: "NamingSystem by name",
        first: naming_system("Unique", "http://unique.test/sid/a"),
        duplicate: naming_system("Unique", "http://unique.test/sid/b"),
        different: naming_system("Unique2", "http://unique.test/sid/c"),
    });
    cases.push(Case {
        name: "NamingSystem by uniqueId",
        first: naming_system("Id1", "http://unique.test/sid/x"),
        duplicate: naming_system("Id2", "http://unique.test/sid/x"),
        different: naming_system("Id3", "http://unique.test/sid/y"),
    });
    cases.push(Case {
        name: "Endpoint by identifier",
        first: endpoint(
            "e1.test",
            "https://e1.test/fhir",
            "https://other.test/fhir/Organization/x",
        ),
        duplicate: endpoint(
            "e1.test",
            "https://other.test/fhir",
            "https://other.test/fhir/Organization/x",
        ),
        different: endpoint(
            "e2.test",
            "https://e2.test/fhir",
            "https://other.test/fhir/Organization/x",
        ),
    });
    cases.push(Case {
        name: "Endpoint by address",
        first: endpoint(
            "a1.test",
            "https://a.test/fhir",
            "https://other.test/fhir/Organization/x",
        ),
        duplicate: endpoint(
            "a2.test",
            "https://a.test/fhir",
            "https://other.test/fhir/Organization/x",
        ),
        different: endpoint(
            "a3.test",
            "https://a3.test/fhir",
            "https://other.test/fhir/Organization/x",
        ),
    });
    cases.push(Case {
        name: "Organization by identifier",
        first: member("m1.test", &thumbprint('1')),
        duplicate: member("m1.test", &thumbprint('2')),
        different: member("m2.test", &thumbprint('3')),
    });
    cases.push(Case {
        name: "Organization by thumbprint",
        first: member("t1.test", &thumbprint('4')),
        duplicate: member("t2.test", &thumbprint('4')),
        different: member("t3.test", &thumbprint('5')),
    });
    cases.push(Case {
        name: "parent Organization",
        first: parent("p1.test"),
        duplicate: parent("p1.test"),
        different: parent("p2.test"),
    });
    cases.push(Case {
        name: "OrganizationAffiliation by endpoint",
        first: affiliation("Organization/p", "Organization/m", "Endpoint/1", "DIC"),
        duplicate: affiliation("Organization/p", "Organization/m", "Endpoint/1", "HRP"),
        different: affiliation("Organization/p", "Organization/m2", "Endpoint/1", "DIC"),
    });
    cases.push(Case {
        name: "OrganizationAffiliation by role",
        first: affiliation("Organization/q", "Organization/m", "Endpoint/1", "DIC"),
        duplicate: affiliation("Organization/q", "Organization/m", "Endpoint/2", "DIC"),
        different: affiliation("Organization/q", "Organization/m", "Endpoint/3", "TTP"),
    });
    cases.push(Case {
        name: "Subscription with payload",
        first: subscription("Task?status=completed", Some("application/fhir+json")),
        duplicate: subscription("Task?status=completed", Some("application/fhir+json")),
        different: subscription("Task?status=completed", Some("application/fhir+xml")),
    });
    cases.push(Case {
        name: "Subscription without payload",
        first: subscription("Task?status=failed", None),
        duplicate: subscription("Task?status=failed", None),
        different: subscription("Task?status=failed", Some("application/fhir+json")),
    });
    cases.push(Case {
        name: "draft Task",
        first: draft_task("http://unique.test/draft/1", "2026-12-04T10:00:00Z"),
        duplicate: draft_task("http://unique.test/draft/1", "2026-12-04T11:00:00Z"),
        different: draft_task("http://unique.test/draft/2", "2026-12-04T10:00:00Z"),
    });
    cases
}

fn type_of(resource: &Value) -> &str {
    resource["resourceType"].as_str().expect("resourceType")
}

async fn count(server: &TestServer, resource_type: &str) -> i64 {
    server
        .local
        .search(resource_type, "_summary=count")
        .await
        .expect("count")["total"]
        .as_i64()
        .expect("total")
}

async fn post(server: &TestServer, resource: &Value) -> (u16, Value) {
    send_json(
        &server.local,
        Method::POST,
        type_of(resource),
        Some(resource),
    )
    .await
}

fn entry(resource: &Value) -> Value {
    json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": resource,
        "request": {"method": "POST", "url": type_of(resource)}})
}

fn bundle(kind: &str, resources: &[&Value]) -> Value {
    json!({"resourceType": "Bundle", "type": kind,
        "entry": resources.iter().map(|r| entry(r)).collect::<Vec<_>>()})
}

fn entry_status(response: &Value, index: usize) -> String {
    response["entry"][index]["response"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn duplicates_are_refused_one_after_the_other(server: TestServer) {
    for case in cases() {
        let t = type_of(&case.first).to_owned();
        let (status, body) = post(&server, &case.first).await;
        assert_eq!(status, 201, "{}: first {body}", case.name);
        let before = count(&server, &t).await;
        let (status, body) = post(&server, &case.duplicate).await;
        assert_eq!(status, 403, "{}: duplicate {body}", case.name);
        assert_eq!(body["resourceType"], "OperationOutcome", "{}", case.name);
        assert_eq!(count(&server, &t).await, before, "{}", case.name);
        let (status, body) = post(&server, &case.different).await;
        assert_eq!(status, 201, "{}: different {body}", case.name);

        // Updating a resource keeps its own key; updating it into another's is refused.
        let stored = body.clone();
        let path = format!("{t}/{}", stored["id"].as_str().expect("id"));
        let (status, body) = send_json(&server.local, Method::PUT, &path, Some(&stored)).await;
        assert_eq!(status, 200, "{}: update of itself {body}", case.name);
        let mut clash = case.duplicate.clone();
        clash["id"] = stored["id"].clone();
        let (status, body) = send_json(&server.local, Method::PUT, &path, Some(&clash)).await;
        assert!(
            status == 403 || status == 400,
            "{}: update into a duplicate {status} {body}",
            case.name
        );
    }
}

async fn a_thumbprint_cannot_be_taken_over_by_update(server: TestServer) {
    let (status, _) = post(&server, &member("owner.test", &thumbprint('a'))).await;
    assert_eq!(status, 201);
    let (status, other) = post(&server, &member("taker.test", &thumbprint('b'))).await;
    assert_eq!(status, 201);
    let mut taker = other.clone();
    taker["extension"][0]["valueString"] = json!(thumbprint('a'));
    let path = format!("Organization/{}", other["id"].as_str().expect("id"));
    let (status, body) = send_json(&server.local, Method::PUT, &path, Some(&taker)).await;
    assert_eq!(status, 403, "{body}");
    // Once the owner is deleted, the thumbprint is free.
    let owner = server
        .local
        .search(
            "Organization",
            &format!("identifier={ORG_SYSTEM}|owner.test"),
        )
        .await
        .expect("owner");
    let owner_id = owner["entry"][0]["resource"]["id"].as_str().expect("id");
    server
        .local
        .delete("Organization", owner_id)
        .await
        .expect("delete");
    let (status, body) = send_json(&server.local, Method::PUT, &path, Some(&taker)).await;
    assert_eq!(status, 200, "{body}");
}

async fn duplicates_in_one_transaction_or_batch(server: TestServer) {
    for case in cases() {
        let t = type_of(&case.first).to_owned();
        let before = count(&server, &t).await;
        let (status, body) = send_json(
            &server.local,
            Method::POST,
            "",
            Some(&bundle("transaction", &[&case.first, &case.duplicate])),
        )
        .await;
        assert_eq!(status, 403, "{}: transaction {body}", case.name);
        assert_eq!(count(&server, &t).await, before, "{}", case.name);

        let (status, body) = send_json(
            &server.local,
            Method::POST,
            "",
            Some(&bundle("batch", &[&case.first, &case.duplicate])),
        )
        .await;
        assert_eq!(status, 200, "{}: batch {body}", case.name);
        assert!(
            entry_status(&body, 0).starts_with("201"),
            "{}: {body}",
            case.name
        );
        assert!(
            entry_status(&body, 1).starts_with("403"),
            "{}: {body}",
            case.name
        );
        assert_eq!(count(&server, &t).await, before + 1, "{}", case.name);
    }
}

/// `requests` copies of `resource` sent at once, each as a create, in a transaction or in a
/// batch; returns how many were stored.
async fn race(server: &TestServer, resource: &Value, how: &str, requests: usize) -> usize {
    let sends = (0..requests).map(|_| {
        let client = server.local.clone();
        let resource = resource.clone();
        let how = how.to_owned();
        tokio::spawn(async move {
            let (path, body) = match how.as_str() {
                "direct" => (type_of(&resource).to_owned(), resource.clone()),
                kind => (String::new(), bundle(kind, &[&resource])),
            };
            let (status, answer) = send_json(&client, Method::POST, &path, Some(&body)).await;
            let stored = match how.as_str() {
                "direct" | "transaction" => status == 201 || status == 200,
                _ => entry_status(&answer, 0).starts_with("201"),
            };
            let refused = match how.as_str() {
                "direct" | "transaction" => status == 403,
                _ => entry_status(&answer, 0).starts_with("403"),
            };
            assert!(stored || refused, "{how}: {status} {answer}");
            stored
        })
    });
    let mut stored = 0;
    for send in sends.collect::<Vec<_>>() {
        if send.await.expect("request task") {
            stored += 1;
        }
    }
    stored
}

async fn exactly_one_of_parallel_duplicates_wins(server: TestServer) {
    for (round, how) in ["direct", "transaction", "batch"].into_iter().enumerate() {
        for (index, case) in cases().into_iter().enumerate() {
            let mut resource = case.first.clone();
            // A fresh key per round, so each round races on its own.
            match type_of(&resource) {
                "Organization" | "Endpoint" => {
                    let value = format!("r{round}-{}", resource["identifier"][0]["value"]);
                    resource["identifier"][0]["value"] = json!(value);
                    if let Some(address) = resource["address"].as_str() {
                        resource["address"] = json!(format!("{address}/r{round}"));
                    }
                    if resource["extension"][0]["valueString"].is_string() {
                        resource["extension"][0]["valueString"] =
                            json!(format!("{:0128x}", 100 * round + index + 1));
                    }
                }
                "NamingSystem" => {
                    resource["name"] = json!(format!("{}-r{round}", resource["name"]));
                    resource["uniqueId"][0]["value"] =
                        json!(format!("{}-r{round}", resource["uniqueId"][0]["value"]));
                }
                "OrganizationAffiliation" => {
                    resource["participatingOrganization"]["reference"] =
                        json!(format!("Organization/r{round}"));
                }
                "Subscription" => {
                    resource["criteria"] = json!(format!(
                        "{}&_id=r{round}",
                        resource["criteria"].as_str().expect("criteria")
                    ));
                }
                "Task" => {
                    resource["identifier"][0]["value"] =
                        json!(format!("http://unique.test/race/{round}"));
                }
                _ => {
                    resource["version"] = json!(format!("9.{round}"));
                }
            }
            let t = type_of(&resource).to_owned();
            let before = count(&server, &t).await;
            let stored = race(&server, &resource, how, 8).await;
            assert_eq!(stored, 1, "{how} {}", case.name);
            assert_eq!(count(&server, &t).await, before + 1, "{how} {}", case.name);
        }
    }
}

async fn conditional_writes_in_one_transaction_see_each_other(server: TestServer) {
    let org = organization("conditional.test", "Conditional");
    let criteria = format!("identifier={ORG_SYSTEM}|conditional.test");
    let create = |full_url: &str| {
        json!({"fullUrl": full_url, "resource": org,
            "request": {"method": "POST", "url": "Organization", "ifNoneExist": criteria}})
    };
    let mut renamed = org.clone();
    renamed["name"] = json!("Renamed");
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        create("urn:uuid:11111111-1111-4111-8111-111111111111"),
        create("urn:uuid:22222222-2222-4222-8222-222222222222"),
        {"fullUrl": "urn:uuid:33333333-3333-4333-8333-333333333333", "resource": renamed,
            "request": {"method": "PUT", "url": format!("Organization?{criteria}")}},
    ]});
    let response = server
        .local
        .transaction(&transaction)
        .await
        .expect("transaction");
    assert!(entry_status(&response, 0).starts_with("201"), "{response}");
    assert!(entry_status(&response, 1).starts_with("200"), "{response}");
    assert!(entry_status(&response, 2).starts_with("200"), "{response}");
    let location = |i: usize| {
        response["entry"][i]["response"]["location"]
            .as_str()
            .unwrap_or_default()
            .split("/_history")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(location(0), location(1), "{response}");
    assert_eq!(location(0), location(2), "{response}");
    let found = server
        .local
        .search("Organization", &criteria)
        .await
        .expect("search");
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["entry"][0]["resource"]["name"], "Renamed");
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = dsf_tests::server_tests!(
        suite,
        duplicates_are_refused_one_after_the_other,
        a_thumbprint_cannot_be_taken_over_by_update,
        duplicates_in_one_transaction_or_batch,
        exactly_one_of_parallel_duplicates_wins,
        conditional_writes_in_one_transaction_see_each_other
    );
    suite.run()
}
