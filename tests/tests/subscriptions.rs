//! Websocket subscriptions end to end over mutual TLS: the Java DSF text protocol, events for
//! committed matching writes only, read access per connection, slow subscribers cut off,
//! malformed frames and unknown ids closed with a reason, allow-list changes, and the client
//! SDK's reconnect with catch-up across a server restart.

use dsf_fhir::client::subscription::{close_of, RawWebSocket};
use dsf_fhir::client::SubscriptionSettings;
use dsf_fhir::server::{LocalUser, Role};
use dsf_fhir::store::WriteOp;
use dsf_fhir::FhirClient;
use dsf_tests::fixtures::{self, tag_local};
use dsf_tests::{BackendKind, TestServer, LOCAL_ORG};
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);
const REQUESTED: &str = "Task?status=requested";

fn id_of(resource: &Value) -> String {
    resource["id"].as_str().expect("id").to_owned()
}

/// Opens a websocket, binds it to `subscription` and checks the server's `bound` answer.
async fn bound(client: &FhirClient, subscription: &str) -> RawWebSocket {
    let mut ws = client.websocket().await.expect("websocket");
    ws.write_frame(Frame::text(Payload::Owned(
        format!("bind {subscription}").into_bytes(),
    )))
    .await
    .expect("send bind");
    assert_eq!(next_text(&mut ws).await, format!("bound {subscription}"));
    ws
}

/// The next text message; pings are answered by fastwebsockets while reading.
async fn next_text(ws: &mut RawWebSocket) -> String {
    let frame = tokio::time::timeout(WAIT, async {
        loop {
            let frame = ws.read_frame().await.expect("frame");
            match frame.opcode {
                OpCode::Text => return String::from_utf8(frame.payload.to_vec()).expect("UTF-8"),
                OpCode::Close => panic!("closed: {:?}", close_of(&frame.payload)),
                _ => {}
            }
        }
    })
    .await;
    frame.expect("a message in time")
}

async fn next_resource(ws: &mut RawWebSocket) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("JSON event")
}

/// The close frame the server ends the connection with.
async fn close_frame(ws: &mut RawWebSocket) -> (u16, String) {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.read_frame().await {
                Ok(frame) if frame.opcode == OpCode::Close => return close_of(&frame.payload),
                Ok(_) => {}
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
    })
    .await
    .expect("closed in time")
}

async fn create_subscription(server: &TestServer, criteria: &str, payload: Option<&str>) -> String {
    let mut channel = json!({"type": "websocket"});
    if let Some(payload) = payload {
        channel["payload"] = json!(payload);
    }
    let subscription = json!({
        "resourceType": "Subscription", "status": "active", "reason": "test",
        "criteria": criteria, "channel": channel, "meta": {"tag": fixtures::tag_all()}
    });
    let created: Value = server
        .local
        .create(&subscription)
        .await
        .expect("Subscription");
    id_of(&created)
}

async fn remote_ping(server: &TestServer, authored: &str) -> Value {
    server
        .remote
        .create(&fixtures::remote_ping(authored))
        .await
        .expect("remote Task")
}

/// The built-in Subscription the BPE binds to delivers exactly the committed writes that
/// match it, in the payload each Subscription asks for.
async fn events_for_matching_writes_only(server: TestServer) {
    server.authorize_ping().await;
    let requested = server
        .local
        .find_subscription(REQUESTED)
        .await
        .expect("built-in");
    let in_progress_ids = create_subscription(&server, "Task?status=in-progress", None).await;
    let in_progress_xml = create_subscription(
        &server,
        "Task?status=in-progress",
        Some("application/fhir+xml"),
    )
    .await;
    let mut ws = bound(&server.local, &requested).await;
    let mut ids_only = bound(&server.local, &in_progress_ids).await;
    let mut xml = bound(&server.local, &in_progress_xml).await;

    let first = remote_ping(&server, "2024-05-01T10:00:00Z").await;
    let event = next_resource(&mut ws).await;
    assert_eq!(event["id"], first["id"]);
    assert_eq!(event["meta"]["versionId"], "1");
    assert_eq!(event["status"], "requested");

    // Not matching: a draft, and the first Task moving on to in-progress.
    server
        .local
        .create(&fixtures::draft_task("d-1", "2024-05-01T10:00:01Z"))
        .await
        .expect("draft");
    let mut task = first.clone();
    task["status"] = json!("in-progress");
    server.local.update(&task).await.expect("in-progress");
    // A transaction that fails stores and announces nothing.
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
         "resource": fixtures::ping_task("requested", "2024-05-01T10:00:02Z", LOCAL_ORG),
         "request": {"method": "POST", "url": "Task"}},
        {"resource": {"resourceType": "Library", "status": "active"},
         "request": {"method": "POST", "url": "Library"}}
    ]});
    assert!(server.local.transaction(&failing).await.is_err());
    let second = remote_ping(&server, "2024-05-01T10:00:03Z").await;
    assert_eq!(
        next_resource(&mut ws).await["id"],
        second["id"],
        "the next event is the next matching write"
    );

    assert_eq!(
        next_text(&mut ids_only).await,
        format!("ping {in_progress_ids}")
    );
    let xml_event = next_text(&mut xml).await;
    assert!(
        xml_event.contains("<Task xmlns=\"http://hl7.org/fhir\""),
        "{xml_event}"
    );
    assert!(
        xml_event.contains(&format!("<id value=\"{}\"/>", id_of(&first))),
        "{xml_event}"
    );
    assert!(
        xml_event.contains("<status value=\"in-progress\"/>"),
        "{xml_event}"
    );
    assert_eq!(server.server.websocket_connections(), 3);
}

/// Each connection only hears of what its identity may read, and only with the READ role.
async fn read_access_respected() {
    let pki = dsf_core::DevPki::generate("read access CA").expect("CA");
    let alice_cert = pki.issue_client("alice").expect("cert");
    let bob_cert = pki.issue_client("bob").expect("cert");
    let server = TestServer::start_with_pki(BackendKind::Sqlite, pki, |config| {
        for (name, cert) in [("alice", &alice_cert), ("bob", &bob_cert)] {
            config.users.push(
                LocalUser::new(
                    name,
                    cert.thumbprint(),
                    &[Role::Read, Role::Search, Role::Websocket],
                )
                .with_practitioner_identifier(&format!("{name}@local.test")),
            );
        }
    })
    .await;
    let alice = server.client_for(&alice_cert);
    let bob = server.client_for(&bob_cert);
    let subscription = create_subscription(
        &server,
        "QuestionnaireResponse?status=in-progress",
        Some("application/fhir+json"),
    )
    .await;
    let mut alice_ws = bound(&alice, &subscription).await;
    let mut bob_ws = bound(&bob, &subscription).await;
    let mut no_read = bound(server.role_user(Role::Websocket), &subscription).await;

    let response = |authorized: Option<&str>, key: &str| {
        let mut r = json!({
            "resourceType": "QuestionnaireResponse", "status": "in-progress",
            "questionnaire": "http://dsf.dev/fhir/Questionnaire/approve|1.0",
            "item": [{"linkId": "business-key", "answer": [{"valueString": key}]},
                     {"linkId": "user-task-id", "answer": [{"valueString": key}]}]
        });
        if let Some(who) = authorized {
            r["extension"] = json!([{"url": "http://dsf.dev/fhir/StructureDefinition/extension-questionnaire-authorization",
                "extension": [{"url": "practitioner", "valueIdentifier": {"system": "http://dsf.dev/sid/practitioner-identifier", "value": who}}]}]);
        }
        r
    };
    let for_alice = server
        .seed(vec![response(Some("alice@local.test"), "a")])
        .await;
    let for_all = server.seed(vec![response(None, "b")]).await;
    assert_eq!(next_resource(&mut alice_ws).await["id"], for_alice[0]["id"]);
    assert_eq!(next_resource(&mut alice_ws).await["id"], for_all[0]["id"]);
    assert_eq!(
        next_resource(&mut bob_ws).await["id"],
        for_all[0]["id"],
        "Bob may not read Alice's response, so his first event is the open one"
    );
    let nothing = tokio::time::timeout(Duration::from_millis(500), no_read.read_frame()).await;
    assert!(
        nothing.is_err(),
        "without READ a connection receives nothing"
    );
}

/// Who may open a websocket: the local organisation and users with the WEBSOCKET role; a
/// remote organisation is refused with 1008, an unknown certificate before the upgrade.
async fn websocket_roles(server: TestServer) {
    let mut remote = server.remote.websocket().await.expect("handshake");
    assert_eq!(close_frame(&mut remote).await, (1008, "Forbidden".into()));
    let mut reader = server.user.websocket().await.expect("handshake");
    assert_eq!(close_frame(&mut reader).await.0, 1008);
    assert!(matches!(
        server.stranger.websocket().await,
        Err(dsf_fhir::Error::Unauthenticated(_))
    ));
    let plain = server
        .local
        .request(
            http::Method::GET,
            "ws",
            &[("accept", "application/fhir+json")],
            None,
        )
        .await
        .expect("GET");
    assert_eq!(
        plain.status.as_u16(),
        400,
        "a GET without upgrade gets an OperationOutcome"
    );
    assert_eq!(
        plain.json().expect("JSON")["resourceType"],
        "OperationOutcome"
    );
}

/// A masked client frame with the given first header byte (FIN, RSV, opcode) and payload.
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![first];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    // An all-zero mask leaves the payload as it is.
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Sends raw bytes on a fresh websocket and returns the close frame the server answers with.
async fn close_after(client: &FhirClient, bytes: &[u8]) -> (u16, String) {
    let ws = client.websocket().await.expect("websocket");
    let mut io = ws.into_inner();
    io.write_all(bytes).await.expect("write");
    io.flush().await.expect("flush");

    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        loop {
            // Server frames are unmasked: [0x88, len, code, reason] for a short close.
            if received.len() >= 2 && received[0] == 0x88 {
                let len = usize::from(received[1] & 0x7f);
                if received.len() >= 2 + len {
                    return close_of(&received[2..2 + len]);
                }
            }
            let mut buf = [0u8; 1024];
            let n = io.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "connection ended without a close frame; got {received:?}"
            );
            received.extend_from_slice(&buf[..n]);
        }
    });
    read.await.expect("close frame in time")
}

/// Malformed frames and unknown ids end the connection with a code and a reason that says
/// what was wrong; nothing is stored or announced.
async fn malformed_frames_and_unknown_ids(server: TestServer) {
    let c = &server.local;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            raw_frame(0x81, b"bind 7f1c0c8e-0000-4000-8000-000000000000"),
            1003,
            "Subscription with 7f1c0c8e-0000-4000-8000-000000000000 not found",
        ),
        (
            raw_frame(0xC1, b"bind x"),
            1002,
            "malformed frame: Reserved bits are not zero",
        ),
        (
            raw_frame(0x81, &[b'b', 0xff, 0xfe]),
            1007,
            "text message is not valid UTF-8",
        ),
        (
            raw_frame(0x82, b"bind x"),
            1003,
            "binary messages are not supported; send 'bind <subscription id>' as text",
        ),
        (
            raw_frame(0x80, b"x"),
            1002,
            "continuation frame without a message to continue",
        ),
        (raw_frame(0x8F, b""), 1002, "malformed frame: Invalid value"),
        (
            raw_frame(0x09, b"fragmented ping"),
            1002,
            "malformed frame: Control frame must not be fragmented",
        ),
        // Only the header of a 70 KiB frame: the length alone is refused.
        (
            raw_frame(0x81, &vec![b'a'; 70 * 1024])[..14].to_vec(),
            1009,
            "malformed frame: Frame too large",
        ),
    ];
    for (bytes, code, reason) in cases {
        assert_eq!(
            close_after(c, &bytes).await,
            (code, reason.to_owned()),
            "{:x?}",
            &bytes[..2]
        );
    }
    // A fragmented bind is one message.
    let id = c.find_subscription(REQUESTED).await.expect("built-in");
    let mut ws = c.websocket().await.expect("websocket");
    let message = format!("bind {id}");
    let (first, rest) = message.split_at(4);
    ws.write_frame(Frame::new(
        false,
        OpCode::Text,
        None,
        Payload::Owned(first.as_bytes().to_vec()),
    ))
    .await
    .expect("first fragment");
    ws.write_frame(Frame::new(
        true,
        OpCode::Continuation,
        None,
        Payload::Owned(rest.as_bytes().to_vec()),
    ))
    .await
    .expect("last fragment");
    assert_eq!(next_text(&mut ws).await, format!("bound {id}"));
    // A client closing is answered with its code.
    ws.write_frame(Frame::close(1000, b"bye"))
        .await
        .expect("close");
    assert_eq!(close_frame(&mut ws).await.0, 1000);
}

/// A subscriber that stops reading is cut off; writers and the other subscriber carry on.
async fn slow_subscriber_cut_off() {
    let server = TestServer::start_with(BackendKind::Sqlite, |config| {
        config.websocket.queue_capacity = 8;
        config.websocket.write_timeout = Duration::from_secs(2);
    })
    .await;
    let subscription = create_subscription(&server, "Binary?", Some("application/fhir+json")).await;
    let _stalled = bound(&server.local, &subscription).await;
    let mut reading = bound(&server.admin, &subscription).await;
    assert_eq!(server.server.websocket_connections(), 2);

    // ~40 MB of events: more than loopback socket buffers hold for the stalled reader.
    let data = "QUJD".repeat(32 * 1024);
    let writes = 320;
    let writer = {
        let client = server.local.clone();
        tokio::spawn(async move {
            for i in 0..writes {
                let binary = json!({"resourceType": "Binary", "contentType": "text/plain",
                    "data": data, "meta": {"tag": tag_local()}, "id": format!("ignored-{i}")});
                client.create(&binary).await.expect("writes go on");
            }
        })
    };
    let mut received = 0;
    while received < writes {
        let event = next_resource(&mut reading).await;
        assert_eq!(event["resourceType"], "Binary");
        received += 1;
    }
    writer.await.expect("writer");
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.server.websocket_connections() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled subscriber still connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connections close when their certificate leaves the allow list, and when the
/// Subscription they are bound to stops being active.
async fn allow_list_and_subscription_changes_close_connections(server: TestServer) {
    let subscription = create_subscription(&server, "Library?", None).await;
    let mut bound_ws = bound(&server.admin, &subscription).await;
    let mut stored: Value = server
        .local
        .read("Subscription", &subscription)
        .await
        .expect("read");
    stored["status"] = json!("off");
    server.local.update(&stored).await.expect("off");
    assert_eq!(
        close_frame(&mut bound_ws).await,
        (
            1000,
            format!("Subscription {subscription} is no longer active")
        )
    );

    let requested = server
        .local
        .find_subscription(REQUESTED)
        .await
        .expect("built-in");
    let mut local = bound(&server.local, &requested).await;
    let org: Value = server
        .local
        .search(
            "Organization",
            &format!("identifier={}|{LOCAL_ORG}", fixtures::ORG_SYSTEM),
        )
        .await
        .expect("search")["entry"][0]["resource"]
        .clone();
    let mut inactive = org.clone();
    inactive["active"] = json!(false);
    server
        .store
        .write(WriteOp::Update {
            resource_type: "Organization",
            id: id_of(&org),
            resource: inactive,
            if_match: None,
            full_url: None,
        })
        .await
        .expect("deactivate");
    assert_eq!(
        close_frame(&mut local).await,
        (
            1008,
            "Forbidden: client certificate no longer on the allow list".into()
        )
    );
}

/// The client SDK: events and catch-up reach the caller once each, across a server restart
/// with writes made while the server was down.
async fn reconnect_catches_up_without_loss_or_duplicates(mut server: TestServer) {
    server.authorize_ping().await;
    let id = server
        .local
        .find_subscription(REQUESTED)
        .await
        .expect("built-in");
    let before: Vec<Value> =
        remote_pings(&server, &["2024-06-01T08:00:00Z", "2024-06-01T08:00:01Z"]).await;
    let mut settings = SubscriptionSettings::default();
    settings.reconnect_backoff = Duration::from_millis(50);
    settings.max_reconnect_backoff = Duration::from_millis(500);
    let mut stream = server
        .local
        .subscribe(&id, None, settings)
        .await
        .expect("subscribe");
    let mut got: Vec<(String, i64, bool)> = Vec::new();
    got.extend(take(&mut stream, 2).await);
    assert!(
        got.iter().all(|(_, _, catch_up)| *catch_up),
        "existing Tasks come from the first catch-up"
    );
    let live = remote_ping(&server, "2024-06-01T08:00:02Z").await;
    got.extend(take(&mut stream, 1).await);
    assert_eq!(got[2], (id_of(&live), 1, false));

    server.stop().await;
    stream.wait_for(|s| !s.connected).await;
    // Written while the server is down: two new Tasks and a new version of an old one.
    let while_down = server
        .seed(vec![
            fixtures::remote_ping("2024-06-01T08:00:03Z"),
            fixtures::remote_ping("2024-06-01T08:00:04Z"),
        ])
        .await;
    let mut changed = before[0].clone();
    changed["authoredOn"] = json!("2024-06-01T07:59:59Z");
    server
        .store
        .write(WriteOp::Update {
            resource_type: "Task",
            id: id_of(&changed),
            resource: changed.clone(),
            if_match: None,
            full_url: None,
        })
        .await
        .expect("update while down");
    server.restart().await;
    stream
        .wait_for(|s| s.connects >= 2 && s.catch_ups >= 2)
        .await;
    got.extend(take(&mut stream, 3).await);
    let after = remote_ping(&server, "2024-06-01T08:00:05Z").await;
    got.extend(take(&mut stream, 1).await);

    let expected: BTreeSet<(String, i64)> = before
        .iter()
        .chain([&live])
        .map(|t| (id_of(t), 1))
        .chain(while_down.iter().map(|t| (id_of(t), 1)))
        .chain([(id_of(&changed), 2), (id_of(&after), 1)])
        .collect();
    let delivered: Vec<(String, i64)> = got.iter().map(|(i, v, _)| (i.clone(), *v)).collect();
    let unique: BTreeSet<(String, i64)> = delivered.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "no duplicates: {delivered:?}"
    );
    assert_eq!(unique, expected);
    let extra = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(extra.is_err(), "nothing more: {extra:?}");
}

/// The next `n` notifications as (id, version, from catch-up).
async fn take(
    stream: &mut dsf_fhir::client::SubscriptionStream,
    n: usize,
) -> Vec<(String, i64, bool)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let next = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a notification in time")
            .expect("stream open");
        out.push((next.id, next.version, next.from_catch_up));
    }
    out
}

async fn remote_pings(server: &TestServer, authored: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for at in authored {
        out.push(remote_ping(server, at).await);
    }
    out
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = dsf_tests::server_tests!(
        suite,
        events_for_matching_writes_only,
        websocket_roles,
        malformed_frames_and_unknown_ids,
        allow_list_and_subscription_changes_close_connections,
        reconnect_catches_up_without_loss_or_duplicates
    );
    let suite = suite.test("read_access_respected", read_access_respected);
    let suite = suite.test("slow_subscriber_cut_off", slow_subscriber_cut_off);
    suite.run()
}
