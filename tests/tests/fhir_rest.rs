//! The REST API over real mutual-TLS connections, on SQLite and on PostgreSQL.

use bytes::Bytes;
use dsf_fhir::client::RawResponse;
use dsf_fhir::FhirClient;
use dsf_tests::fixtures::{
    draft_task, endpoint, organization, ping_task, remote_ping, ORG_SYSTEM, PING_PROCESS,
};
use dsf_tests::{TestServer, LOCAL_ORG, REMOTE_ORG};
use http::Method;
use serde_json::{json, Value};

/// A ping start message the local organisation sends itself.
fn task(status: &str, authored: &str) -> Value {
    ping_task(status, authored, LOCAL_ORG)
}

async fn send(
    client: &FhirClient,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> RawResponse {
    let mut all = vec![
        ("accept", "application/fhir+json"),
        ("content-type", "application/fhir+json"),
    ];
    all.extend_from_slice(headers);
    client
        .request(
            method,
            path,
            &all,
            body.map(|b| Bytes::from(serde_json::to_vec(&b).unwrap())),
        )
        .await
        .unwrap()
}

async fn create(client: &FhirClient, resource: Value) -> Value {
    let t = resource["resourceType"].as_str().unwrap().to_owned();
    let r = send(client, Method::POST, &t, &[], Some(resource)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json().unwrap()
}

fn diagnostics(r: &RawResponse) -> String {
    let oo = r.json().unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn search_ids(client: &FhirClient, resource_type: &str, query: &str) -> Vec<String> {
    ids(&client.search(resource_type, query).await.unwrap())
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn count(server: &TestServer, query: &str) -> i64 {
    server
        .local
        .search(
            query.split('?').next().unwrap(),
            &format!(
                "{}&_summary=count",
                query.split_once('?').map_or("", |q| q.1)
            ),
        )
        .await
        .unwrap()["total"]
        .as_i64()
        .unwrap()
}

async fn metadata_lists_what_is_supported(server: TestServer) {
    let r = send(&server.local, Method::GET, "metadata", &[], None).await;
    assert_eq!(r.status, 200);
    let cs = r.json().unwrap();
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 26);
    let task = resources.iter().find(|r| r["type"] == "Task").unwrap();
    let params: Vec<&str> = task["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "_id",
        "_lastUpdated",
        "_profile",
        "authored-on",
        "identifier",
        "modified",
        "requester",
        "status",
    ] {
        assert!(params.contains(&p), "{p} missing in {params:?}");
    }
    assert!(!params.contains(&"_thumbprint"));
    // Without an Accept header the Java DSF answers in XML.
    let xml = server
        .local
        .request(Method::GET, "metadata", &[], None)
        .await
        .unwrap();
    assert!(xml
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+xml"));
    assert!(String::from_utf8_lossy(&xml.body).contains("<CapabilityStatement"));
}

async fn create_read_update_delete_history(server: TestServer) {
    let c = &server.local;
    let r = send(
        c,
        Method::POST,
        "Task",
        &[],
        Some(draft_task("crud-1", "2024-05-01T10:00:00Z")),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert!(r.header("last-modified").is_some());
    let created = r.json().unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location").unwrap(),
        format!("{}/Task/{id}/_history/1", server.base_url)
    );
    assert_eq!(created["meta"]["versionId"], "1");

    let read = send(c, Method::GET, &format!("Task/{id}"), &[], None).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json().unwrap(), created);

    // Drafts are the Tasks that may be changed in place and deleted.
    let mut changed = created.clone();
    changed["authoredOn"] = json!("2024-05-02T10:00:00Z");
    let r = send(
        c,
        Method::PUT,
        &format!("Task/{id}"),
        &[("if-match", "W/\"1\"")],
        Some(changed.clone()),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let stale = send(
        c,
        Method::PUT,
        &format!("Task/{id}"),
        &[("if-match", "W/\"1\"")],
        Some(changed.clone()),
    )
    .await;
    assert_eq!(stale.status, 412);
    assert!(diagnostics(&stale).contains("expected version 1"));

    let v1 = send(c, Method::GET, &format!("Task/{id}/_history/1"), &[], None).await;
    assert_eq!(v1.json().unwrap()["authoredOn"], "2024-05-01T10:00:00Z");
    assert_eq!(
        send(c, Method::GET, &format!("Task/{id}/_history/9"), &[], None)
            .await
            .status,
        404
    );

    let del = send(c, Method::DELETE, &format!("Task/{id}"), &[], None).await;
    assert_eq!(del.status, 200);
    let gone = send(c, Method::GET, &format!("Task/{id}"), &[], None).await;
    assert_eq!(gone.status, 410);
    assert_eq!(gone.header("etag"), Some("W/\"3\""));
    assert_eq!(
        send(c, Method::GET, &format!("Task/{id}/_history/3"), &[], None)
            .await
            .status,
        410
    );
    assert_eq!(
        send(c, Method::GET, &format!("Task/{id}/_history/2"), &[], None)
            .await
            .status,
        200
    );
    assert_eq!(
        send(c, Method::DELETE, &format!("Task/{id}"), &[], None)
            .await
            .status,
        200
    );

    let history = send(c, Method::GET, &format!("Task/{id}/_history"), &[], None)
        .await
        .json()
        .unwrap();
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], 3);
    let methods: Vec<&str> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);
    assert!(history["entry"][0].get("resource").is_none());

    // An update after a delete brings the resource back with the next version.
    let back = send(c, Method::PUT, &format!("Task/{id}"), &[], Some(changed)).await;
    assert_eq!(back.status, 200);
    assert_eq!(back.header("etag"), Some("W/\"4\""));
    assert_eq!(
        send(c, Method::GET, &format!("Task/{id}"), &[], None)
            .await
            .status,
        200
    );

    let missing = send(
        c,
        Method::GET,
        "Task/00000000-0000-0000-0000-000000000000",
        &[],
        None,
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        send(c, Method::GET, "Task/not%20an%20id", &[], None)
            .await
            .status,
        404
    );
}

async fn conditional_reads_and_prefer(server: TestServer) {
    server.authorize_ping().await;
    let c = &server.local;
    let r = send(
        c,
        Method::POST,
        "Task",
        &[("prefer", "return=minimal")],
        Some(task("requested", "2024-05-01")),
    )
    .await;
    assert_eq!(r.status, 201);
    assert!(r.body.is_empty());
    let location = r.header("location").unwrap().to_owned();
    let id = location.split('/').rev().nth(2).unwrap().to_owned();
    let r = send(
        c,
        Method::POST,
        "Task",
        &[("prefer", "return=OperationOutcome")],
        Some(task("requested", "2024-05-01")),
    )
    .await;
    assert_eq!(r.json().unwrap()["resourceType"], "OperationOutcome");

    let path = format!("Task/{id}");
    assert_eq!(
        send(c, Method::GET, &path, &[("if-none-match", "W/\"1\"")], None)
            .await
            .status,
        304
    );
    assert_eq!(
        send(c, Method::GET, &path, &[("if-none-match", "W/\"7\"")], None)
            .await
            .status,
        200
    );
    assert_eq!(
        send(
            c,
            Method::GET,
            &path,
            &[("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")],
            None
        )
        .await
        .status,
        304
    );
    assert_eq!(
        send(
            c,
            Method::GET,
            &path,
            &[("if-modified-since", "Fri, 01 Jan 2010 00:00:00 GMT")],
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        send(c, Method::GET, &path, &[("if-match", "W/\"2\"")], None)
            .await
            .status,
        412
    );
}

async fn conditional_create_update_delete(server: TestServer) {
    let c = &server.local;
    let criteria = format!("identifier={ORG_SYSTEM}|cond.test");
    let first = send(
        c,
        Method::POST,
        "Organization",
        &[("if-none-exist", &criteria)],
        Some(organization("cond.test", "A")),
    )
    .await;
    assert_eq!(first.status, 201);
    let second = send(
        c,
        Method::POST,
        "Organization",
        &[("if-none-exist", &criteria)],
        Some(organization("cond.test", "B")),
    )
    .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.json().unwrap()["resourceType"], "OperationOutcome");
    assert_eq!(second.header("location"), first.header("location"));
    let bad = send(
        c,
        Method::POST,
        "Organization",
        &[("if-none-exist", "nonsense=1")],
        Some(organization("x", "x")),
    )
    .await;
    assert_eq!(bad.status, 400);

    let put = format!("Organization?identifier={ORG_SYSTEM}%7Ccond2.test");
    let created = send(
        c,
        Method::PUT,
        &put,
        &[],
        Some(organization("cond2.test", "C")),
    )
    .await;
    assert_eq!(created.status, 201);
    let updated = send(
        c,
        Method::PUT,
        &put,
        &[],
        Some(organization("cond2.test", "C2")),
    )
    .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.header("etag"), Some("W/\"2\""));
    assert_eq!(updated.json().unwrap()["name"], "C2");

    // Two matches: neither update nor delete may pick one. (Patients: Organizations with one
    // identifier cannot be stored twice.)
    let twin = |name: &str| {
        json!({"resourceType": "Patient", "meta": {"tag": dsf_tests::fixtures::tag_all()},
            "identifier": [{"system": "http://twin.test/sid", "value": "twin"}],
            "name": [{"text": name}]})
    };
    create(c, twin("T1")).await;
    create(c, twin("T2")).await;
    let twins = "Patient?identifier=http://twin.test/sid%7Ctwin".to_owned();
    assert_eq!(
        send(c, Method::PUT, &twins, &[], Some(twin("T")))
            .await
            .status,
        412
    );
    assert_eq!(send(c, Method::DELETE, &twins, &[], None).await.status, 412);
    assert_eq!(
        send(
            c,
            Method::DELETE,
            "Organization?identifier=none%7Cnone",
            &[],
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(send(c, Method::DELETE, &put, &[], None).await.status, 200);
    assert_eq!(
        count(
            &server,
            &format!("Organization?identifier={ORG_SYSTEM}|cond2.test")
        )
        .await,
        0
    );
}

async fn search_parameters(server: TestServer) {
    let c = &server.local;
    let ad = server.authorize_ping().await;
    let t1 = create(c, task("requested", "2024-01-15T08:00:00Z")).await;
    // Tasks the local organisation could not create itself.
    let mut t3 = ping_task("requested", "2024-03-10T08:00:00Z", "other.test");
    t3["identifier"] =
        json!([{"system": "http://dsf.dev/sid/task-identifier", "value": "draft-1"}]);
    let [t2, t3] = <[Value; 2]>::try_from(
        server
            .seed(vec![task("completed", "2024-02-20T08:00:00Z"), t3])
            .await,
    )
    .unwrap();
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();

    let mut requested = search_ids(c, "Task", "status=requested").await;
    requested.sort();
    let mut expected = vec![id(&t1), id(&t3)];
    expected.sort();
    assert_eq!(requested, expected);
    assert_eq!(
        search_ids(c, "Task", "status:not=requested").await,
        vec![id(&t2)]
    );
    assert_eq!(
        search_ids(c, "Task", "status=completed,failed").await,
        vec![id(&t2)]
    );
    assert_eq!(
        search_ids(
            c,
            "Task",
            "identifier=http://dsf.dev/sid/task-identifier|draft-1"
        )
        .await,
        vec![id(&t3)]
    );
    assert_eq!(
        search_ids(c, "Task", "identifier=|draft-1").await,
        Vec::<String>::new()
    );
    assert_eq!(
        search_ids(c, "Task", "authored-on=2024-02").await,
        vec![id(&t2)]
    );
    assert_eq!(
        search_ids(c, "Task", "authored-on=ge2024-02-01&authored-on=lt2024-03").await,
        vec![id(&t2)]
    );
    assert_eq!(
        search_ids(
            c,
            "Task",
            "requester:identifier=http://dsf.dev/sid/organization-identifier|other.test"
        )
        .await,
        vec![id(&t3)]
    );
    assert_eq!(
        search_ids(c, "Task", &format!("_id={}", id(&t2))).await,
        vec![id(&t2)]
    );
    assert_eq!(
        search_ids(
            c,
            "Task",
            "_profile=http://dsf.dev/fhir/StructureDefinition/task-start-ping"
        )
        .await
        .len(),
        3
    );
    assert_eq!(
        search_ids(
            c,
            "Task",
            "_profile=http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0"
        )
        .await
        .len(),
        3
    );
    assert_eq!(
        search_ids(
            c,
            "Task",
            "_profile=http://dsf.dev/fhir/StructureDefinition/task-start-ping|2.0"
        )
        .await
        .len(),
        0
    );
    assert_eq!(
        search_ids(c, "Task", "_lastUpdated=gt2000-01-01")
            .await
            .len(),
        3
    );
    assert_eq!(
        search_ids(c, "Task", "_lastUpdated=lt2000-01-01")
            .await
            .len(),
        0
    );
    assert_eq!(
        search_ids(c, "Task", "_sort=-authored-on").await,
        vec![id(&t3), id(&t2), id(&t1)]
    );
    assert_eq!(
        search_ids(c, "Task", "_sort=authored-on").await,
        vec![id(&t1), id(&t2), id(&t3)]
    );

    // Paging.
    let page1 = c
        .search("Task", "_count=2&_sort=authored-on")
        .await
        .unwrap();
    assert_eq!(page1["total"], 3);
    assert_eq!(ids(&page1), vec![id(&t1), id(&t2)]);
    let links: Vec<&str> = page1["link"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["relation"].as_str().unwrap())
        .collect();
    assert_eq!(links, ["self", "first", "next", "last"]);
    let next = page1["link"][2]["url"].as_str().unwrap();
    let next_path = next.strip_prefix(&format!("{}/", server.base_url)).unwrap();
    let page2 = send(c, Method::GET, next_path, &[], None)
        .await
        .json()
        .unwrap();
    assert_eq!(ids(&page2), vec![id(&t3)]);
    assert!(page2["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["relation"] == "previous"));
    let counted = c
        .search("Task", "status=requested&_summary=count")
        .await
        .unwrap();
    assert_eq!(counted["total"], 2);
    assert!(counted.get("entry").is_none());

    // Strings, uris, references, include and revinclude.
    let org = create(c, organization("search.test", "Universitätsklinikum Alpha")).await;
    let endpoint = create(
        c,
        endpoint(
            "alpha.test",
            "https://alpha.test/fhir",
            &format!("Organization/{}", id(&org)),
        ),
    )
    .await;
    assert_eq!(
        search_ids(c, "Organization", "name=universit%C3%A4tsklinikum").await,
        vec![id(&org)]
    );
    assert_eq!(
        search_ids(c, "Organization", "name:contains=ALPHA").await,
        vec![id(&org)]
    );
    assert_eq!(
        search_ids(c, "Organization", "name:exact=Universit%C3%A4tsklinikum").await,
        Vec::<String>::new()
    );
    let eps = c
        .search(
            "Endpoint",
            &format!(
                "address=https://alpha.test/fhir&organization={}&_include=Endpoint:organization",
                id(&org)
            ),
        )
        .await
        .unwrap();
    assert_eq!(ids(&eps), vec![id(&endpoint)]);
    let included: Vec<&Value> = eps["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .collect();
    assert_eq!(included.len(), 1);
    assert_eq!(included[0]["resource"]["id"], org["id"]);
    let absolute = c
        .search(
            "Endpoint",
            &format!("organization={}/Organization/{}", server.base_url, id(&org)),
        )
        .await
        .unwrap();
    assert_eq!(ids(&absolute), vec![id(&endpoint)]);
    let rev = c
        .search(
            "Organization",
            &format!("_id={}&_revinclude=Endpoint:organization", id(&org)),
        )
        .await
        .unwrap();
    assert_eq!(rev["entry"].as_array().unwrap().len(), 2);
    for q in [
        format!("url={PING_PROCESS}"),
        format!("url={PING_PROCESS}|1.0"),
        "version=1.0".to_owned(),
    ] {
        assert_eq!(
            ids(&c.search("ActivityDefinition", &q).await.unwrap()),
            vec![id(&ad)],
            "{q}"
        );
    }
    assert!(ids(&c
        .search(
            "ActivityDefinition",
            "url=http://dsf.dev/bpe/Process/ping|2.0"
        )
        .await
        .unwrap())
    .is_empty());

    // POST _search with a form body.
    let r = server
        .local
        .request(
            Method::POST,
            "Task/_search",
            &[
                ("accept", "application/fhir+json"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(Bytes::from("status=completed")),
        )
        .await
        .unwrap();
    assert_eq!(ids(&r.json().unwrap()), vec![id(&t2)]);
}

async fn unknown_search_parameters(server: TestServer) {
    let lenient = send(&server.local, Method::GET, "Task?foo=bar", &[], None).await;
    assert_eq!(lenient.status, 200);
    let bundle = lenient.json().unwrap();
    let outcome = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .unwrap();
    assert!(outcome["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("foo=bar"));
    let strict = send(
        &server.local,
        Method::GET,
        "Task?foo=bar",
        &[("prefer", "handling=strict")],
        None,
    )
    .await;
    assert_eq!(strict.status, 400);
    assert!(diagnostics(&strict).contains("foo=bar"));
    assert_eq!(
        send(
            &server.local,
            Method::GET,
            "Task?authored-on=yesterday",
            &[],
            None
        )
        .await
        .status,
        400
    );
    assert_eq!(
        send(&server.local, Method::GET, "Task?_count=x", &[], None)
            .await
            .status,
        400
    );
}

async fn history_of_type_and_system(server: TestServer) {
    server.authorize_ping().await;
    let c = &server.local;
    let before = send(c, Method::GET, "_history?_count=0", &[], None)
        .await
        .json()
        .unwrap()["total"]
        .as_i64()
        .unwrap();
    let t = create(c, task("requested", "2024-01-01")).await;
    create(c, task("requested", "2024-01-02")).await;
    let mut changed = t.clone();
    changed["status"] = json!("in-progress");
    send(
        c,
        Method::PUT,
        &format!("Task/{}", t["id"].as_str().unwrap()),
        &[],
        Some(changed),
    )
    .await;
    let typed = send(c, Method::GET, "Task/_history", &[], None)
        .await
        .json()
        .unwrap();
    assert_eq!(typed["total"], 3);
    let system = send(c, Method::GET, "_history?_count=2", &[], None)
        .await
        .json()
        .unwrap();
    assert_eq!(system["total"].as_i64().unwrap(), before + 3);
    assert_eq!(system["entry"].as_array().unwrap().len(), 2);
    assert!(system["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["relation"] == "next"));
    let future = send(
        c,
        Method::GET,
        "Task/_history?_since=2100-01-01T00:00:00Z",
        &[],
        None,
    )
    .await
    .json()
    .unwrap();
    assert_eq!(future["total"], 0);
    let past = send(c, Method::GET, "Task/_history?_at=2000-01-01", &[], None)
        .await
        .json()
        .unwrap();
    assert_eq!(past["total"], 0);
    let now = send(c, Method::GET, "Task/_history?_at=2100-01-01", &[], None)
        .await
        .json()
        .unwrap();
    assert_eq!(now["total"], 2, "only the current version of each Task");
    assert_eq!(
        send(c, Method::GET, "Task/_history?bogus=1", &[], None)
            .await
            .status,
        400
    );
}

fn entry(method: &str, url: &str, full_url: Option<&str>, resource: Option<Value>) -> Value {
    let mut e = json!({"request": {"method": method, "url": url}});
    if let Some(f) = full_url {
        e["fullUrl"] = json!(f);
    }
    if let Some(r) = resource {
        e["resource"] = r;
    }
    e
}

async fn transaction_bundles(server: TestServer) {
    server.authorize_ping().await;
    let c = &server.local;
    let org_urn = "urn:uuid:0b8d3c1e-5d6a-4b0f-9c57-000000000001";
    let ep_urn = "urn:uuid:0b8d3c1e-5d6a-4b0f-9c57-000000000002";
    let mut org = organization("tx.test", "Tx");
    org["endpoint"] = json!([{"reference": ep_urn}]);
    let ep = endpoint("tx.test", "https://tx.test/fhir", org_urn);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry("PUT", &format!("Organization?identifier={ORG_SYSTEM}|tx.test"), Some(org_urn), Some(org)),
        entry("POST", "Endpoint", Some(ep_urn), Some(ep)),
        entry("GET", "Organization?identifier=tx.test", None, None),
    ]});
    let r = send(c, Method::POST, "", &[], Some(bundle)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let response = r.json().unwrap();
    assert_eq!(response["type"], "transaction-response");
    assert_eq!(response["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(response["entry"][1]["response"]["status"], "201 Created");
    let stored_org = &response["entry"][0]["resource"];
    let stored_ep = &response["entry"][1]["resource"];
    assert_eq!(
        stored_org["endpoint"][0]["reference"],
        format!("Endpoint/{}", stored_ep["id"].as_str().unwrap())
    );
    assert_eq!(
        stored_ep["managingOrganization"]["reference"],
        format!("Organization/{}", stored_org["id"].as_str().unwrap())
    );
    assert_eq!(response["entry"][2]["resource"]["total"], 1);

    // All or nothing: a failing entry leaves no trace of the others.
    let tasks_before = count(&server, "Task?_id:missing=x").await;
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry("POST", "Task", None, Some(task("requested", "2024-01-01"))),
        entry("PUT", "Task/00000000-0000-0000-0000-000000000000", None, Some({let mut t = task("requested", "2024-01-01"); t["id"] = json!("00000000-0000-0000-0000-000000000000"); t})),
    ]});
    // 405 alone; a transaction that fails but by a rule's refusal answers 400, as the Java
    // DSF does.
    let r = send(c, Method::POST, "", &[], Some(failing)).await;
    assert_eq!(r.status, 400);
    assert!(diagnostics(&r).contains("entry 1"));
    assert_eq!(count(&server, "Task?_id:missing=x").await, tasks_before);
    let dangling = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry("POST", "Endpoint", None, Some(endpoint("x.test", "https://x.test", "urn:uuid:00000000-0000-0000-0000-00000000dead"))),
    ]});
    assert_eq!(
        send(c, Method::POST, "", &[], Some(dangling)).await.status,
        400
    );
}

async fn batch_bundles(server: TestServer) {
    server.authorize_ping().await;
    let c = &server.local;
    let t = create(c, draft_task("batch-1", "2024-01-01")).await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry("POST", "Task", None, Some(task("requested", "2024-01-02"))),
        entry("GET", &format!("Task/{}", t["id"].as_str().unwrap()), None, None),
        entry("GET", "Task/00000000-0000-0000-0000-000000000000", None, None),
        entry("DELETE", &format!("Task/{}", t["id"].as_str().unwrap()), None, None),
        entry("PATCH", "Task", None, None),
    ]});
    let r = send(c, Method::POST, "", &[], Some(bundle)).await;
    assert_eq!(r.status, 200);
    let b = r.json().unwrap();
    assert_eq!(b["type"], "batch-response");
    let statuses: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "200 OK",
            "404 Not Found",
            "200 OK",
            "400 Bad Request"
        ]
    );
    assert_eq!(
        b["entry"][2]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
}

async fn bad_input_is_rejected_and_changes_nothing(server: TestServer) {
    server.authorize_ping().await;
    let c = &server.local;
    let t = create(c, task("requested", "2024-01-01")).await;
    let id = t["id"].as_str().unwrap().to_owned();
    let raw = |method: Method, path: String, ct: &'static str, body: &'static str| {
        let c = &server.local;
        async move {
            c.request(
                method,
                &path,
                &[("accept", "application/fhir+json"), ("content-type", ct)],
                Some(Bytes::from(body)),
            )
            .await
            .unwrap()
        }
    };
    let json = "application/fhir+json";
    let cases = [
        (raw(Method::POST, "Task".into(), json, "{not json").await, 400),
        (raw(Method::POST, "Task".into(), json, "{\"resourceType\":\"Task\",\"status\":\"requested\",\"intent\":\"order\",\"bogus\":1}").await, 400),
        (raw(Method::POST, "Task".into(), "application/fhir+xml", "<Task xmlns=\"http://hl7.org/fhir\"><status value=\"requested\"/>").await, 400),
        (raw(Method::POST, "Task".into(), "text/plain", "hello").await, 415),
        (raw(Method::POST, "Task".into(), json, "{\"resourceType\":\"Task\",\"status\":\"requested\",\"intent\":\"order\",\"input\":[]}").await, 400),
        (raw(Method::POST, "Organization".into(), json, "{\"resourceType\":\"Task\",\"status\":\"requested\",\"intent\":\"order\"}").await, 400),
        (raw(Method::PUT, format!("Task/{id}"), json, "{\"resourceType\":\"Task\",\"id\":\"other\",\"status\":\"failed\",\"intent\":\"order\"}").await, 400),
        (raw(Method::PUT, format!("Task/{id}"), json, "{\"resourceType\":\"Task\",\"status\":\"failed\",\"intent\":\"order\"}").await, 400),
        (raw(Method::PUT, format!("Task/{id}"), json, "[]").await, 400),
        (raw(Method::PUT, "Task/4a0e9c2e-8f7b-4a7e-9d0b-000000000000".into(), json, "{\"resourceType\":\"Task\",\"id\":\"4a0e9c2e-8f7b-4a7e-9d0b-000000000000\",\"status\":\"failed\",\"intent\":\"order\"}").await, 405),
        (raw(Method::POST, "Patient2".into(), json, "{}").await, 404),
        (raw(Method::GET, "Observation".into(), json, "").await, 404),
        (raw(Method::POST, "".into(), json, "{\"resourceType\":\"Bundle\",\"type\":\"collection\"}").await, 400),
        (raw(Method::POST, "".into(), json, "{\"resourceType\":\"Task\",\"status\":\"requested\",\"intent\":\"order\"}").await, 400),
        (raw(Method::GET, "".into(), json, "").await, 405),
        (raw(Method::PATCH, format!("Task/{id}"), json, "{}").await, 405),
        (raw(Method::PUT, format!("Task/{id}"), json, "{\"resourceType\":\"Task\",\"id\":\"x\"}").await, 400),
        (raw(Method::GET, "Task?_format=yaml".into(), json, "").await, 415),
    ];
    for (i, (r, expected)) in cases.iter().enumerate() {
        assert_eq!(
            r.status,
            *expected,
            "case {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if r.status != 415 {
            assert_eq!(
                r.json().unwrap()["resourceType"],
                "OperationOutcome",
                "case {i}"
            );
        }
    }
    let not_acceptable = c
        .request(Method::GET, "metadata", &[("accept", "text/plain")], None)
        .await
        .unwrap();
    assert_eq!(not_acceptable.status, 406);
    let huge = format!("{{\"resourceType\":\"Task\",\"status\":\"requested\",\"intent\":\"order\",\"description\":\"{}\"}}", "x".repeat(300 * 1024));
    let r = c
        .request(
            Method::POST,
            "Task",
            &[("content-type", json)],
            Some(Bytes::from(huge)),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    // The stored Task is untouched by all of the above.
    let now: Value = c.read("Task", &id).await.unwrap();
    assert_eq!(now, t);
    assert_eq!(count(&server, "Task?_id:missing=x").await, 1);
}

async fn identities_from_certificates(server: TestServer) {
    server.authorize_ping().await;
    let r = send(&server.stranger, Method::GET, "metadata", &[], None).await;
    assert_eq!(r.status, 401);
    assert!(diagnostics(&r).contains("allow list"));
    // Remote organisation: may create Tasks and read, nothing else.
    assert_eq!(
        send(
            &server.remote,
            Method::POST,
            "Task",
            &[],
            Some(remote_ping("2024-01-01"))
        )
        .await
        .status,
        201
    );
    let r = send(
        &server.remote,
        Method::POST,
        "Organization",
        &[],
        Some(organization("evil.test", "Evil")),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        send(&server.remote, Method::GET, "Task", &[], None)
            .await
            .status,
        200
    );
    // Local user with READ and SEARCH only.
    assert_eq!(
        send(&server.user, Method::GET, "Task", &[], None)
            .await
            .status,
        200
    );
    assert_eq!(
        send(
            &server.user,
            Method::POST,
            "Task",
            &[],
            Some(task("requested", "2024-01-01"))
        )
        .await
        .status,
        403
    );
    // Deactivating an organisation removes its access on the next request.
    let bundle = server
        .local
        .search(
            "Organization",
            &format!("identifier={ORG_SYSTEM}|{REMOTE_ORG}"),
        )
        .await
        .unwrap();
    let mut remote = bundle["entry"][0]["resource"].clone();
    remote["active"] = json!(false);
    server.local.update(&remote).await.unwrap();
    assert_eq!(
        send(&server.remote, Method::GET, "Task", &[], None)
            .await
            .status,
        401
    );
}

async fn xml_on_the_wire(server: TestServer) {
    let c = &server.local;
    let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<!-- licence header -->
<Organization xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <meta><profile value="http://dsf.dev/fhir/StructureDefinition/organization-parent"/><tag><system value="http://dsf.dev/fhir/CodeSystem/read-access-tag"/><code value="ALL"/></tag></meta>
  <identifier><system value="http://dsf.dev/sid/organization-identifier"/><value value="xml.test"/></identifier>
  <active value="true"/>
  <name value="XML Org"/>
</Organization>"#;
    let r = c
        .request(
            Method::POST,
            "Organization",
            &[("content-type", "application/fhir+xml")],
            Some(Bytes::from(xml)),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+xml"));
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.contains("<name value=\"XML Org\"/>"), "{body}");
    let location = r.header("location").unwrap().to_owned();
    let id = location.split('/').rev().nth(2).unwrap();
    let as_json = c
        .request(
            Method::GET,
            &format!("Organization/{id}?_format=json&_pretty=true"),
            &[],
            None,
        )
        .await
        .unwrap();
    assert!(as_json
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+json"));
    assert!(String::from_utf8_lossy(&as_json.body).contains("\n"));
    assert_eq!(as_json.json().unwrap()["name"], "XML Org");
    let search = c
        .request(
            Method::GET,
            "Organization?identifier=xml.test",
            &[("accept", "application/fhir+xml")],
            None,
        )
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&search.body).contains("<Bundle"));
}

/// What one request of [`audit_records_and_metrics_name_requests_as_the_router_took_them`]
/// sends, and what its audit record must say.
struct Asked {
    method: Method,
    path: String,
    body: Option<Value>,
    interaction: &'static str,
    /// The record's `resource` (`None`: the record has none).
    resource: Option<String>,
}

/// The audit record of each request names its interaction and resource as the router took
/// the request, down to the requests refused before it and the odd paths; a server with the
/// metrics alone (which reads the path itself) labels them all alike.
async fn audit_records_and_metrics_name_requests_as_the_router_took_them() {
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("audit.log");
    let audited = TestServer::start_with(dsf_tests::BackendKind::Sqlite, |config| {
        config.audit = Some(
            dsf_fhir::server::AuditLog::open(vec![dsf_fhir::server::AuditTarget::File(
                audit_file.clone(),
            )])
            .unwrap(),
        );
    })
    .await;
    let metrics_only = TestServer::start(dsf_tests::BackendKind::Sqlite).await;
    let mut registries = Vec::new();
    for server in [&audited, &metrics_only] {
        let mut registry = prometheus_client::registry::Registry::default();
        server.server.register_metrics(&mut registry);
        registries.push(registry);
    }
    let asked =
        |method: Method, path: &str, body: Option<Value>, interaction, resource: Option<&str>| {
            Asked {
                method,
                path: path.to_owned(),
                body,
                interaction,
                resource: resource.map(str::to_owned),
            }
        };
    let batch = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Task?status=draft"}}],
    });
    let mut records_wanted = Vec::new();
    for (n, server) in [&audited, &metrics_only].into_iter().enumerate() {
        let c = &server.local;
        let created = create(
            c,
            draft_task(&format!("labels-{n}"), "2024-05-01T10:00:00Z"),
        )
        .await;
        let id = created["id"].as_str().unwrap().to_owned();
        let task = format!("Task/{id}");
        let mut changed = created.clone();
        changed["authoredOn"] = json!("2024-05-02T10:00:00Z");
        let requests = [
            asked(Method::GET, "metadata", None, "capabilities", None),
            asked(Method::GET, &task, None, "read", Some(&task)),
            asked(Method::HEAD, &task, None, "read", Some(&task)),
            asked(
                Method::GET,
                &format!("{task}/_history/1"),
                None,
                "vread",
                Some(&format!("{task}/_history/1")),
            ),
            asked(
                Method::GET,
                &format!("{task}/_history"),
                None,
                "history-instance",
                Some(&task),
            ),
            asked(
                Method::GET,
                "Task/_history",
                None,
                "history-type",
                Some("Task"),
            ),
            asked(Method::GET, "_history", None, "history-system", None),
            asked(
                Method::GET,
                "Task?status=draft",
                None,
                "search-type",
                Some("Task"),
            ),
            asked(
                Method::PUT,
                &task,
                Some(changed),
                "update",
                Some(&format!("{task}/_history/2")),
            ),
            // Read as the router reads it: an id, not an operation (and not a valid one).
            asked(
                Method::GET,
                "Task/$everything",
                None,
                "read",
                Some("Task/$everything"),
            ),
            asked(
                Method::POST,
                "StructureDefinition/$snapshot",
                Some(json!({"resourceType": "Parameters"})),
                "operation",
                Some("StructureDefinition"),
            ),
            asked(
                Method::POST,
                "",
                Some(batch.clone()),
                "batch-transaction",
                None,
            ),
            // Refused by the router, or never routed: the path read again.
            asked(Method::GET, "NoSuchType/1", None, "other", None),
            asked(
                Method::GET,
                "Task/1/_history/2/x",
                None,
                "other",
                Some("Task"),
            ),
            asked(Method::PATCH, &task, None, "other", Some("Task")),
            // A path's id is kept up to a bound.
            asked(
                Method::GET,
                &format!("Task/{}", "x".repeat(300)),
                None,
                "read",
                Some(&format!("Task/{}", "x".repeat(251))),
            ),
            asked(Method::DELETE, &task, None, "delete", Some(&task)),
        ];
        for request in requests {
            // Answered however it is: the records and labels are what is checked.
            send(
                c,
                request.method.clone(),
                &request.path,
                &[],
                request.body.clone(),
            )
            .await;
            if n == 0 {
                records_wanted.push(request);
            }
        }
    }
    let records = loop {
        let text = std::fs::read_to_string(&audit_file).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // The create, then the table.
        if records.len() > records_wanted.len() {
            break records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(records[0]["interaction"], "create");
    for (record, wanted) in records[1..].iter().zip(&records_wanted) {
        let what = format!("{} {}: {record}", wanted.method, wanted.path);
        assert_eq!(record["interaction"], wanted.interaction, "{what}");
        assert_eq!(record["method"], wanted.method.as_str(), "{what}");
        match &wanted.resource {
            Some(resource) => assert_eq!(record["resource"], resource.as_str(), "{what}"),
            None => assert!(record.get("resource").is_none(), "{what}"),
        }
    }
    // Each label counted alike by both servers.
    let counts: Vec<Vec<String>> = registries
        .iter()
        .map(|registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
            let mut counts: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("dsf_fhir_request_duration_seconds_count"))
                .map(str::to_owned)
                .collect();
            counts.sort();
            counts
        })
        .collect();
    assert!(counts[0].len() > 5, "{:?}", counts[0]);
    assert_eq!(counts[0], counts[1]);
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = dsf_tests::server_tests!(
        suite,
        metadata_lists_what_is_supported,
        create_read_update_delete_history,
        conditional_reads_and_prefer,
        conditional_create_update_delete,
        search_parameters,
        unknown_search_parameters,
        history_of_type_and_system,
        transaction_bundles,
        batch_bundles,
        bad_input_is_rejected_and_changes_nothing,
        identities_from_certificates,
        xml_on_the_wire
    )
    .test(
        "audit_records_and_metrics_name_requests_as_the_router_took_them",
        audit_records_and_metrics_name_requests_as_the_router_took_them,
    );
    suite.run()
}
