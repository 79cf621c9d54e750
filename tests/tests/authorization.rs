//! Authorization rules the matrix cannot show: allow-list changes, process authorization
//! variants, Task transitions, filtered includes, paging and history, and what errors say.

use dsf_tests::fixtures::{
    activity_definition, endpoint, organization, party, party_organization, party_role, ping_task,
    remote_ping, tag_all, tag_local, tag_organization, with_tags, PING_TASK_PROFILE,
};
use dsf_tests::{diagnostics, send_json, TestServer, LOCAL_ORG, REMOTE_ORG};
use http::Method;
use serde_json::{json, Value};

const ROLE_SYSTEM: &str = "http://dsf.dev/fhir/CodeSystem/organization-role";

fn ids(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn id(resource: &Value) -> String {
    resource["id"].as_str().expect("id").to_owned()
}

async fn allow_list_changes_apply_on_the_next_request(server: TestServer) {
    let newcomer_cert = server.pki.issue_client("newcomer").expect("cert");
    let newcomer = server.client_with(
        server
            .pki
            .client_config(&newcomer_cert)
            .expect("client TLS"),
    );
    let (status, body) = send_json(&newcomer, Method::GET, "metadata", None).await;
    assert_eq!(status, 401);
    assert!(diagnostics(&body).contains("allow list"));

    // Added: accepted on the next request.
    let mut org = organization("newcomer.test", "Newcomer");
    org["extension"] = json!([{
        "url": "http://dsf.dev/fhir/StructureDefinition/extension-certificate-thumbprint",
        "valueString": newcomer_cert.thumbprint().as_str()
    }]);
    let org = server.local.create(&org).await.expect("organization");
    assert_eq!(
        send_json(&newcomer, Method::GET, "metadata", None).await.0,
        200
    );
    assert_eq!(send_json(&newcomer, Method::GET, "Task", None).await.0, 200);

    // Deactivated: refused at once.
    let mut inactive = org.clone();
    inactive["active"] = json!(false);
    server.local.update(&inactive).await.expect("deactivate");
    assert_eq!(
        send_json(&newcomer, Method::GET, "metadata", None).await.0,
        401
    );

    // Active again, then deleted: refused at once.
    let mut active = inactive.clone();
    active["active"] = json!(true);
    server.local.update(&active).await.expect("reactivate");
    assert_eq!(
        send_json(&newcomer, Method::GET, "metadata", None).await.0,
        200
    );
    let path = format!("Organization/{}", id(&org));
    assert_eq!(
        send_json(&server.local, Method::DELETE, &path, None)
            .await
            .0,
        200
    );
    assert_eq!(
        send_json(&newcomer, Method::GET, "metadata", None).await.0,
        401
    );

    // A remote organisation may not change the allow list.
    let (status, body) = send_json(
        &server.remote,
        Method::POST,
        "Organization",
        Some(&organization("evil.test", "Evil")),
    )
    .await;
    assert_eq!(status, 403);
    assert!(diagnostics(&body).contains("remote.test"));
}

/// Publishes (or replaces) the ping ActivityDefinition and lets the remote organisation send
/// `task`; returns the status of that create.
async fn remote_sends(
    server: &TestServer,
    ad_id: &mut Option<String>,
    ad: Value,
    task: &Value,
) -> u16 {
    let ad = match ad_id {
        Some(existing) => {
            let mut ad = ad;
            ad["id"] = json!(existing);
            server.local.update(&ad).await.expect("ActivityDefinition")
        }
        None => server.local.create(&ad).await.expect("ActivityDefinition"),
    };
    *ad_id = Some(id(&ad));
    send_json(&server.remote, Method::POST, "Task", Some(task))
        .await
        .0
}

async fn process_authorization_variants(server: TestServer) {
    let local = [party("LOCAL_ALL")];
    let ping = remote_ping("2026-11-25T10:00:00Z");
    let mut ad = None;

    // No ActivityDefinition for the process: refused.
    let (status, body) = send_json(&server.remote, Method::POST, "Task", Some(&ping)).await;
    assert_eq!(status, 403);
    assert!(diagnostics(&body).contains("ping"), "{body}");

    let cases: Vec<(&str, Value, u16)> = vec![
        (
            "all remote organisations",
            activity_definition(&[party("REMOTE_ALL")], &local),
            201,
        ),
        (
            "only local organisations",
            activity_definition(&[party("LOCAL_ALL")], &local),
            403,
        ),
        (
            "the remote organisation by identifier",
            activity_definition(
                &[party_organization("REMOTE_ORGANIZATION", REMOTE_ORG)],
                &local,
            ),
            201,
        ),
        (
            "another organisation by identifier",
            activity_definition(
                &[party_organization("REMOTE_ORGANIZATION", "other.test")],
                &local,
            ),
            403,
        ),
        (
            "a role the remote organisation holds",
            activity_definition(
                &[party_role("REMOTE_ROLE", "parent.test", ROLE_SYSTEM, "DIC")],
                &local,
            ),
            201,
        ),
        (
            "a role it does not hold",
            activity_definition(
                &[party_role("REMOTE_ROLE", "parent.test", ROLE_SYSTEM, "TTP")],
                &local,
            ),
            403,
        ),
        (
            "this organisation is not a recipient",
            activity_definition(
                &[party("REMOTE_ALL")],
                &[party_organization("LOCAL_ORGANIZATION", "other.test")],
            ),
            403,
        ),
        (
            "recipient by a role this organisation holds",
            activity_definition(
                &[party("REMOTE_ALL")],
                &[party_role("LOCAL_ROLE", "parent.test", ROLE_SYSTEM, "HRP")],
            ),
            201,
        ),
        (
            "another message name",
            {
                let mut ad = activity_definition(&[party("REMOTE_ALL")], &local);
                ad["extension"][0]["extension"][0]["valueString"] = json!("startPong");
                ad
            },
            403,
        ),
        (
            "another task profile",
            {
                let mut ad = activity_definition(&[party("REMOTE_ALL")], &local);
                ad["extension"][0]["extension"][1]["valueCanonical"] =
                    json!("http://dsf.dev/fhir/StructureDefinition/task-start-pong|1.0");
                ad
            },
            403,
        ),
        (
            "retired",
            {
                let mut ad = activity_definition(&[party("REMOTE_ALL")], &local);
                ad["status"] = json!("retired");
                ad
            },
            403,
        ),
    ];
    // The remote organisation is a DIC and this one an HRP in parent.test.
    server
        .local
        .create(&organization("parent.test", "Parent"))
        .await
        .expect("setup");
    let parent = server.organization_reference("parent.test").await;
    for (member, role) in [(REMOTE_ORG, "DIC"), (LOCAL_ORG, "HRP")] {
        let affiliation = json!({
            "resourceType": "OrganizationAffiliation", "active": true,
            "meta": {"tag": tag_all()},
            "organization": {"reference": parent},
            "participatingOrganization": {"reference": server.organization_reference(member).await},
            "endpoint": [{"reference": "Endpoint/x"}],
            "code": [{"coding": [{"system": ROLE_SYSTEM, "code": role}]}]
        });
        server.local.create(&affiliation).await.expect("setup");
    }
    for (what, definition, expected) in cases {
        let status = remote_sends(&server, &mut ad, definition, &ping).await;
        assert_eq!(status, expected, "{what}");
    }

    // A Task of another version of the process is not covered.
    let all = activity_definition(&[party("REMOTE_ALL")], &local);
    assert_eq!(remote_sends(&server, &mut ad, all, &ping).await, 201);
    let mut other_version = ping.clone();
    other_version["instantiatesCanonical"] = json!("http://dsf.dev/bpe/Process/ping|2.0");
    assert_eq!(
        send_json(&server.remote, Method::POST, "Task", Some(&other_version))
            .await
            .0,
        403
    );
    // A Task claiming the authorized profile without its version is covered; another
    // version of the profile is not.
    let mut unversioned = ping.clone();
    unversioned["meta"]["profile"] = json!([PING_TASK_PROFILE]);
    assert_eq!(
        send_json(&server.remote, Method::POST, "Task", Some(&unversioned))
            .await
            .0,
        201
    );
    let mut other_profile = ping.clone();
    other_profile["meta"]["profile"] = json!([format!("{PING_TASK_PROFILE}|2.0")]);
    assert_eq!(
        send_json(&server.remote, Method::POST, "Task", Some(&other_profile))
            .await
            .0,
        403
    );

    // An ActivityDefinition without a valid authorization is refused on write.
    let mut invalid = activity_definition(&[party("NOBODY")], &local);
    invalid["url"] = json!("http://dsf.dev/bpe/Process/invalid");
    let (status, body) = send_json(
        &server.local,
        Method::POST,
        "ActivityDefinition",
        Some(&invalid),
    )
    .await;
    assert_eq!(status, 403);
    assert!(diagnostics(&body).contains("NOBODY"), "{body}");
}

async fn task_rules_and_transitions(server: TestServer) {
    server.authorize_ping().await;
    let remote = &server.remote;
    let local = &server.local;

    // What a remote organisation may not send.
    let mut cases = Vec::new();
    let mut in_progress = remote_ping("2026-11-25T10:00:00Z");
    in_progress["status"] = json!("in-progress");
    cases.push(("status in-progress", in_progress));
    cases.push((
        "another requester",
        ping_task("requested", "2026-11-25T10:00:00Z", "other.test"),
    ));
    let mut elsewhere = remote_ping("2026-11-25T10:00:00Z");
    elsewhere["restriction"]["recipient"][0]["identifier"]["value"] = json!("other.test");
    cases.push(("another recipient", elsewhere));
    let mut unnamed = remote_ping("2026-11-25T10:00:00Z");
    unnamed.as_object_mut().expect("object").remove("input");
    cases.push(("no message name", unnamed));
    let mut bad_canonical = remote_ping("2026-11-25T10:00:00Z");
    bad_canonical["instantiatesCanonical"] = json!("http://dsf.dev/bpe/Process/ping");
    cases.push(("no process version", bad_canonical));
    let mut draft = remote_ping("2026-11-25T10:00:00Z");
    draft["status"] = json!("draft");
    cases.push(("a draft", draft));
    for (what, task) in cases {
        let (status, body) = send_json(remote, Method::POST, "Task", Some(&task)).await;
        assert_eq!(status, 403, "{what}: {body}");
        assert!(!diagnostics(&body).is_empty());
    }

    let task = remote
        .create(&remote_ping("2026-11-25T10:00:00Z"))
        .await
        .expect("remote Task");
    let path = format!("Task/{}", id(&task));
    let with_status = |task: &Value, status: &str| {
        let mut next = task.clone();
        next["status"] = json!(status);
        next
    };
    // Only the local side moves it on.
    assert_eq!(
        send_json(
            remote,
            Method::PUT,
            &path,
            Some(&with_status(&task, "in-progress"))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        send_json(
            local,
            Method::PUT,
            &path,
            Some(&with_status(&task, "completed"))
        )
        .await
        .0,
        403,
        "requested -> completed skips in-progress"
    );
    let mut taken = with_status(&task, "in-progress");
    taken["input"].as_array_mut().expect("inputs").push(json!({
        "type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "business-key"}]},
        "valueString": "bk-1"
    }));
    let (status, taken) = send_json(local, Method::PUT, &path, Some(&taken)).await;
    assert_eq!(status, 200, "{taken}");
    let mut rerouted = with_status(&taken, "completed");
    rerouted["requester"]["identifier"]["value"] = json!("other.test");
    assert_eq!(
        send_json(local, Method::PUT, &path, Some(&rerouted))
            .await
            .0,
        403
    );
    let mut done = with_status(&taken, "completed");
    done["output"] = json!([{
        "type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/ping", "code": "pong-status"}]},
        "valueString": "ok"
    }]);
    let (status, done) = send_json(local, Method::PUT, &path, Some(&done)).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        send_json(
            local,
            Method::PUT,
            &path,
            Some(&with_status(&done, "failed"))
        )
        .await
        .0,
        403,
        "completed is final"
    );
    assert_eq!(send_json(local, Method::DELETE, &path, None).await.0, 403);
    // The requester still reads its message, with the outcome.
    let (status, read) = send_json(remote, Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(read["status"], "completed");
}

async fn includes_paging_and_history_show_only_what_is_readable(server: TestServer) {
    let local = &server.local;
    let org = local
        .create(&organization("hub.test", "Hub"))
        .await
        .expect("organization");
    let reference = format!("Organization/{}", id(&org));
    let tagged_endpoint = |n: u32, tags: Value| {
        with_tags(
            endpoint(
                &format!("ep{n}.test"),
                &format!("https://ep{n}.test/fhir"),
                &reference,
            ),
            tags,
        )
    };
    let visible = local
        .create(&tagged_endpoint(1, tag_all()))
        .await
        .expect("endpoint");
    let for_remote = local
        .create(&tagged_endpoint(2, tag_organization(REMOTE_ORG)))
        .await
        .expect("endpoint");
    let hidden = local
        .create(&tagged_endpoint(3, tag_local()))
        .await
        .expect("endpoint");

    let rev = server
        .remote
        .search(
            "Organization",
            &format!("_id={}&_revinclude=Endpoint:organization", id(&org)),
        )
        .await
        .expect("search");
    let mut expected = vec![id(&org), id(&visible), id(&for_remote)];
    expected.sort();
    assert_eq!(ids(&rev), expected);
    let rev_local = local
        .search(
            "Organization",
            &format!("_id={}&_revinclude=Endpoint:organization", id(&org)),
        )
        .await
        .expect("search");
    assert_eq!(ids(&rev_local).len(), 4);

    // An included resource the caller may not read is left out.
    let private_org = local
        .create(&with_tags(
            organization("private.test", "Private"),
            tag_local(),
        ))
        .await
        .expect("organization");
    let pointing = local
        .create(&with_tags(
            endpoint(
                "ep4.test",
                "https://ep4.test/fhir",
                &format!("Organization/{}", id(&private_org)),
            ),
            tag_all(),
        ))
        .await
        .expect("endpoint");
    let inc = server
        .remote
        .search(
            "Endpoint",
            &format!("_id={}&_include=Endpoint:organization", id(&pointing)),
        )
        .await
        .expect("search");
    assert_eq!(ids(&inc), vec![id(&pointing)]);

    // Counts and pages are of what the caller may read.
    for n in 0..5 {
        let tags = if n < 3 { tag_all() } else { tag_local() };
        local
            .create(&with_tags(
                json!({"resourceType": "Library", "status": "active", "name": format!("lib{n}"),
                       "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "logic-library"}]}}),
                tags,
            ))
            .await
            .expect("library");
    }
    let page1 = server
        .remote
        .search("Library", "_count=2")
        .await
        .expect("search");
    assert_eq!(page1["total"], 3);
    assert_eq!(ids(&page1).len(), 2);
    let page2 = server
        .remote
        .search("Library", "_count=2&_page=2")
        .await
        .expect("search");
    assert_eq!(ids(&page2).len(), 1);
    assert_eq!(
        local.search("Library", "_count=2").await.expect("search")["total"],
        5
    );

    // History: of the type, of the system and of one resource.
    let (_, typed) = send_json(&server.remote, Method::GET, "Library/_history", None).await;
    assert_eq!(typed["total"], 3);
    let (_, system) = send_json(&server.remote, Method::GET, "_history?_count=500", None).await;
    assert!(system["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .all(|e| e["resource"]["id"] != json!(id(&hidden))));
    let (status, _) = send_json(
        &server.remote,
        Method::GET,
        &format!("Endpoint/{}/_history", id(&hidden)),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

async fn errors_do_not_tell_hidden_from_missing(server: TestServer) {
    let hidden = server
        .local
        .create(&with_tags(
            organization("secret.test", "Secret"),
            tag_local(),
        ))
        .await
        .expect("organization");
    let missing_id = "7f1b2c3d-0000-4000-8000-000000000000";
    let (hidden_status, hidden_body) = send_json(
        &server.remote,
        Method::GET,
        &format!("Organization/{}", id(&hidden)),
        None,
    )
    .await;
    let (missing_status, missing_body) = send_json(
        &server.remote,
        Method::GET,
        &format!("Organization/{missing_id}"),
        None,
    )
    .await;
    assert_eq!((hidden_status, missing_status), (404, 404));
    assert_eq!(
        diagnostics(&hidden_body).replace(&id(&hidden), "<id>"),
        diagnostics(&missing_body).replace(missing_id, "<id>")
    );
    for version in ["1", "2"] {
        let path = format!("Organization/{}/_history/{version}", id(&hidden));
        assert_eq!(
            send_json(&server.remote, Method::GET, &path, None).await.0,
            404
        );
    }

    // Bad read-access tags are refused before anything is stored.
    let before = server
        .local
        .search("Organization", "_summary=count")
        .await
        .expect("count")["total"]
        .clone();
    let naming_unknown = with_tags(
        organization("tagged.test", "Tagged"),
        tag_organization("nobody.test"),
    );
    let mixed = with_tags(
        organization("mixed.test", "Mixed"),
        json!([{"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": "ALL"},
               {"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": "LOCAL"}]),
    );
    let unknown_code = with_tags(
        organization("odd.test", "Odd"),
        json!([{"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": "EVERYONE"}]),
    );
    for bad in [naming_unknown, mixed, unknown_code] {
        let (status, body) =
            send_json(&server.local, Method::POST, "Organization", Some(&bad)).await;
        assert_eq!(status, 400, "{bad}");
        assert!(diagnostics(&body).contains("tag"), "{body}");
    }
    let mut both = json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGk=",
                          "securityContext": {"reference": format!("Organization/{}", id(&hidden))}});
    both["meta"] = json!({"tag": tag_all()});
    assert_eq!(
        send_json(&server.local, Method::POST, "Binary", Some(&both))
            .await
            .0,
        400
    );
    assert_eq!(
        server
            .local
            .search("Organization", "_summary=count")
            .await
            .expect("count")["total"],
        before
    );
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = dsf_tests::server_tests!(
        suite,
        allow_list_changes_apply_on_the_next_request,
        process_authorization_variants,
        task_rules_and_transitions,
        includes_paging_and_history_show_only_what_is_readable,
        errors_do_not_tell_hidden_from_missing
    );
    suite.run()
}
