//! What the FHIR server is given at start: local users from the Java DSF's YAML role
//! configuration, and the operator's init bundle with its placeholders filled.

use dsf_core::DevPki;
use dsf_fhir::server::RoleConfig;
use dsf_tests::fixtures::{organization, tag_all, ORG_SYSTEM};
use dsf_tests::{send_json, BackendKind, TestServer, LOCAL_ORG};
use http::Method;
use serde_json::json;

async fn role_configuration_makes_local_users(kind: BackendKind) {
    let pki = DevPki::generate("role config CA").expect("CA");
    let admin = pki.issue_client("yaml-admin").expect("cert");
    let reader = pki.issue_client("yaml-reader").expect("cert");
    // Matched by the e-mail address their certificates name, whatever their thumbprints.
    let researcher = pki
        .issue_personal_client("yaml-researcher", "Researcher@DSF.test")
        .expect("cert");
    let colleague = pki
        .issue_personal_client("yaml-colleague", "researcher@dsf.test")
        .expect("cert");
    let stranger = pki
        .issue_personal_client("yaml-stranger", "someone@dsf.test")
        .expect("cert");
    let yaml = format!(
        "- admin:\n    thumbprint: {}\n    email: admin@dsf.test\n    dsf-role: [CREATE, READ, UPDATE, DELETE, SEARCH, HISTORY]\n    practitioner-role: http://dsf.dev/fhir/CodeSystem/practitioner-role|DSF_ADMIN\n\
         - reader:\n    thumbprint: {}\n    dsf-role:\n      - READ: [Organization]\n      - SEARCH\n\
         - researcher:\n    email: [researcher@dsf.test, other@dsf.test]\n    dsf-role: [READ, SEARCH]\n",
        admin.thumbprint().as_str(),
        reader.thumbprint().as_str()
    );
    let config = RoleConfig::parse(&yaml).expect("role configuration");
    let server = TestServer::start_with_pki(kind, pki, |server_config| {
        server_config.users.extend(config.users());
    })
    .await;
    let admin = server.client_for(&admin);
    let reader = server.client_for(&reader);
    for certificate in [&researcher, &colleague] {
        let client = server.client_for(certificate);
        let (status, found) = send_json(&client, Method::GET, "Organization", None).await;
        assert_eq!(status, 200, "{found}");
        let (status, _) = send_json(
            &client,
            Method::POST,
            "Organization",
            Some(&organization("research.test", "Research")),
        )
        .await;
        assert_eq!(status, 403, "reads and searches only");
    }
    let (status, _) = send_json(
        &server.client_for(&stranger),
        Method::GET,
        "Organization",
        None,
    )
    .await;
    assert_eq!(status, 401, "an address no rule names");

    // The administrator may create drafts, as DSF_ADMIN.
    let draft = dsf_tests::fixtures::draft_task("http://yaml.test/draft", "2026-12-04T10:00:00Z");
    let (status, body) = send_json(&admin, Method::POST, "Task", Some(&draft)).await;
    assert_eq!(status, 201, "{body}");

    // The reader reads and searches Organizations, nothing else, and writes nothing.
    let (status, found) = send_json(&reader, Method::GET, "Organization", None).await;
    assert_eq!(status, 200, "{found}");
    let id = found["entry"][0]["resource"]["id"].as_str().expect("id");
    let (status, _) = send_json(&reader, Method::GET, &format!("Organization/{id}"), None).await;
    assert_eq!(status, 200);
    let (status, _) = send_json(&reader, Method::GET, "Task/x", None).await;
    assert_eq!(status, 403);
    let (status, _) = send_json(
        &reader,
        Method::POST,
        "Organization",
        Some(&organization("nope.test", "Nope")),
    )
    .await;
    assert_eq!(status, 403);
}

async fn init_bundle_runs_as_the_local_organisation(server: TestServer) {
    let local = server.organization_reference(LOCAL_ORG).await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f0c1a52-1111-4111-8111-111111111111",
            "resource": organization("parent.test", "Parent"),
            "request": {"method": "PUT", "url": format!("Organization?identifier={ORG_SYSTEM}|parent.test")}},
        {"fullUrl": "urn:uuid:6f0c1a52-2222-4222-8222-222222222222",
            "resource": {"resourceType": "OrganizationAffiliation", "meta": {"tag": tag_all()},
                "active": true,
                "organization": {"reference": "urn:uuid:6f0c1a52-1111-4111-8111-111111111111"},
                "participatingOrganization": {"reference": local},
                "endpoint": [{"reference": "Endpoint/x"}],
                "code": [{"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/organization-role", "code": "DIC"}]}]},
            "request": {"method": "POST", "url": "OrganizationAffiliation",
                "ifNoneExist": "role=http://dsf.dev/fhir/CodeSystem/organization-role|DIC"}},
    ]});
    let text = bundle.to_string();
    // Twice: the same resources afterwards, as at every restart.
    for _ in 0..2 {
        server
            .server
            .load_init_bundle(&text)
            .await
            .expect("init bundle");
    }
    for (t, query) in [
        (
            "Organization",
            format!("identifier={ORG_SYSTEM}|parent.test"),
        ),
        ("OrganizationAffiliation", "role=DIC".to_owned()),
    ] {
        let found = server.local.search(t, &query).await.expect("search");
        assert_eq!(found["total"], 1, "{t}: {found}");
    }

    // XML works too; a Bundle whose entry a rule refuses stops with the reason, and stores
    // nothing.
    let refused = r#"<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/><entry><resource><Organization><identifier><system value="http://dsf.dev/sid/organization-identifier"/><value value="untagged.test"/></identifier><active value="true"/></Organization></resource><request><method value="POST"/><url value="Organization"/></request></entry></Bundle>"#;
    let error = server
        .server
        .load_init_bundle(refused)
        .await
        .expect_err("no read-access tag")
        .to_string();
    assert!(error.contains("init bundle"), "{error}");
    let found = server
        .local
        .search(
            "Organization",
            &format!("identifier={ORG_SYSTEM}|untagged.test"),
        )
        .await
        .expect("search");
    assert_eq!(found["total"], 0);
    assert!(server.server.load_init_bundle("{not json").await.is_err());
    assert!(server
        .server
        .load_init_bundle(r#"{"resourceType": "Organization"}"#)
        .await
        .is_err());
}

fn main() {
    let suite = dsf_tests::Suite::new().on_both_backends(
        "role_configuration_makes_local_users",
        role_configuration_makes_local_users,
    );
    let suite = dsf_tests::server_tests!(suite, init_bundle_runs_as_the_local_organisation);
    suite.run()
}
