//! The FHIR server as a hostile allow-listed organisation meets it: bodies built to crash or
//! exhaust it, resources built to poison later reads, searches built to stall the database,
//! probes for hidden resources, floods of connections, and a database that goes away.
//! Each test failed before the bound or check it is named after existed.

use dsf_fhir::client::ClientSettings;
use dsf_fhir::server::ConnectionLimits;
use dsf_fhir::store::{Backend, Dialect, PostgresBackend, PostgresOptions, Sql};
use dsf_fhir::FhirClient;
use dsf_tests::fixtures::{draft_task, ping_task, remote_ping};
use dsf_tests::relay::{ConnectionTap, Direction, Tap, TcpRelay, Verdict};
use dsf_tests::{
    postgres_address, postgres_url, postgres_url_at, send_json, BackendKind, TestServer, REMOTE_ORG,
};
use http::Method;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const JSON: &str = "application/fhir+json";
const XML: &str = "application/fhir+xml";

async fn post(client: &FhirClient, path: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let r = client
        .request(
            Method::POST,
            path,
            &[("content-type", content_type), ("accept", JSON)],
            Some(body.into()),
        )
        .await
        .expect("request");
    (
        r.status.as_u16(),
        String::from_utf8_lossy(&r.body).into_owned(),
    )
}

async fn get(client: &FhirClient, path: &str, accept: &str) -> (u16, String) {
    let r = client
        .request(Method::GET, path, &[("accept", accept)], None)
        .await
        .expect("request");
    (
        r.status.as_u16(),
        String::from_utf8_lossy(&r.body).into_owned(),
    )
}

/// A draft Task in XML whose first element nests `levels` extensions.
fn nested_xml_task(levels: usize) -> Vec<u8> {
    let mut xml = String::from("<Task xmlns=\"http://hl7.org/fhir\">");
    for _ in 0..levels {
        xml.push_str("<extension url=\"http://test/x\">");
    }
    xml.push_str("<valueString value=\"deep\"/>");
    for _ in 0..levels {
        xml.push_str("</extension>");
    }
    xml.push_str(&format!(
        "<identifier><system value=\"http://dsf.dev/sid/task-identifier\"/><value value=\"deep-{levels}\"/></identifier>"
    ));
    xml.push_str("<status value=\"draft\"/><intent value=\"order\"/></Task>");
    xml.into_bytes()
}

/// `levels` nested extensions as JSON (two JSON levels each).
fn nested_extension(levels: usize) -> Value {
    let mut inner = json!({"url": "http://test/x", "valueString": "deep"});
    for _ in 1..levels {
        inner = json!({"url": "http://test/x", "extension": [inner]});
    }
    inner
}

async fn still_serving(server: &TestServer) {
    let (status, _) = send_json(&server.local, Method::GET, "metadata", None).await;
    assert_eq!(status, 200, "the server stopped answering");
}

/// Deep XML is refused before the recursive parser runs, directly and inside a
/// transaction; so is deep JSON; nothing is stored and the server keeps running.
async fn deep_nesting_is_refused_before_parsing(server: TestServer) {
    for levels in [65, 100, 700, 5_000] {
        let (status, body) = post(&server.local, "Task", XML, nested_xml_task(levels)).await;
        assert_eq!(status, 400, "{levels} levels: {body}");
        assert!(body.contains("nested deeper"), "{body}");
    }
    // 40 levels pass, in JSON and in XML, and can then be served in every format.
    let mut task = draft_task("deep-json", "2024-05-01T10:00:00Z");
    task["extension"] = json!([nested_extension(40)]);
    let (status, body) = send_json(&server.local, Method::POST, "Task", Some(&task)).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    for accept in [XML, JSON] {
        let (status, _) = get(&server.local, &format!("Task/{id}?_pretty=true"), accept).await;
        assert_eq!(status, 200);
    }
    let (_, as_xml) = get(&server.local, &format!("Task/{id}"), XML).await;
    let again = as_xml.replace("deep-json", "deep-xml");
    let (status, body) = post(&server.local, "Task", XML, again.into_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let task = String::from_utf8(nested_xml_task(700)).unwrap();
    let bundle = format!(
        "<Bundle xmlns=\"http://hl7.org/fhir\"><type value=\"transaction\"/><entry><fullUrl value=\"urn:uuid:0a6e2ea4-3b4d-4d5e-9c8e-6d6f0b1e2a3c\"/><resource>{}</resource><request><method value=\"POST\"/><url value=\"Task\"/></request></entry></Bundle>",
        task.replace(" xmlns=\"http://hl7.org/fhir\"", "")
    );
    let (status, body) = post(&server.local, "", XML, bundle.into_bytes()).await;
    assert_eq!(status, 400, "{body}");
    let mut json_body = String::new();
    for _ in 0..150 {
        json_body.push_str("{\"url\":\"http://test/x\",\"extension\":[");
    }
    let (status, body) = post(&server.local, "Task", JSON, json_body.into_bytes()).await;
    assert_eq!(status, 400, "{body}");
    let (_, search) = send_json(&server.local, Method::GET, "Task?_summary=count", None).await;
    assert_eq!(search["total"], 2, "only the 40-level Tasks are stored");
    still_serving(&server).await;
}

/// Resources stored before the bounds existed (planted here past the edge) do not break
/// searches in XML, can be read as JSON, and can be updated and deleted.
async fn poisoned_resources_are_served_updated_and_deleted(server: TestServer) {
    let mut deep_request = remote_ping("2024-05-01T10:00:00Z");
    deep_request["extension"] = json!([nested_extension(80)]);
    let mut deep_draft = draft_task("poisoned-draft", "2024-05-01T10:00:00Z");
    deep_draft["extension"] = json!([nested_extension(80)]);
    let seeded = server
        .seed(vec![
            deep_request,
            remote_ping("2024-05-02T10:00:00Z"),
            deep_draft,
        ])
        .await;
    let (bad_id, good_id, draft_id) = (
        seeded[0]["id"].as_str().unwrap(),
        seeded[1]["id"].as_str().unwrap(),
        seeded[2]["id"].as_str().unwrap(),
    );
    // The BPE's query, in XML (the default format): the good Task is served, the bad one
    // is reported.
    let (status, page) = get(&server.local, "Task?status=requested", XML).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(good_id), "{page}");
    assert!(page.contains("<OperationOutcome"), "{page}");
    assert!(page.contains(&format!("Task/{bad_id}")), "{page}");
    let (status, page) = get(&server.local, "Task?status=requested&_pretty=true", JSON).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(good_id), "{page}");
    // As JSON it is served as stored; as XML it is refused with a reason, not a 500.
    let (status, _) = get(&server.local, &format!("Task/{bad_id}"), JSON).await;
    assert_eq!(status, 200);
    let (status, body) = get(&server.local, &format!("Task/{bad_id}"), XML).await;
    assert_eq!(status, 406, "{body}");
    // The local organisation can replace its draft with a sound one, then delete it.
    let mut sound = draft_task("poisoned-draft", "2024-05-01T10:00:00Z");
    sound["id"] = json!(draft_id);
    let (status, body) = send_json(
        &server.local,
        Method::PUT,
        &format!("Task/{draft_id}"),
        Some(&sound),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut deep_again = draft_task("poisoned-2", "2024-05-01T10:00:00Z");
    deep_again["extension"] = json!([nested_extension(80)]);
    let id = server.seed(vec![deep_again]).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) =
        send_json(&server.local, Method::DELETE, &format!("Task/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
}

/// Searches are bounded in parameters, values and pages, with a 400 naming the parameter
/// and never a database message.
async fn search_bounds(server: TestServer) {
    let repeated = |n: usize| {
        let mut q = String::from("Task?");
        for i in 0..n {
            q.push_str(&format!("identifier=x{i}&"));
        }
        q
    };
    let (status, _) = send_json(&server.local, Method::GET, &repeated(24), None).await;
    assert_eq!(status, 200);
    for n in [25, 200, 1_000] {
        let (status, body) = send_json(&server.local, Method::GET, &repeated(n), None).await;
        assert_eq!(status, 400, "{n}: {body}");
        let text = body.to_string();
        assert!(text.contains("identifier"), "{text}");
        assert!(!text.to_lowercase().contains("sql"), "{text}");
    }
    let values: Vec<String> = (0..101).map(|i| format!("v{i}")).collect();
    let (status, body) = send_json(
        &server.local,
        Method::GET,
        &format!("Task?identifier={}", values.join(",")),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    for page in ["99999999999999999999999", "1000000", "0", "-1"] {
        let (status, body) = send_json(
            &server.local,
            Method::GET,
            &format!("Task?_page={page}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "_page={page}: {body}");
        assert!(body.to_string().contains("_page"), "{body}");
    }
    let (status, body) = send_json(&server.local, Method::GET, "Task?_page=10000", None).await;
    assert_eq!(status, 200, "{body}");
    for date in [
        "2024-01-01T10:00--128:00",
        "2024-01-01T10:00+99:00",
        "2024-02-30",
    ] {
        let (status, body) = send_json(
            &server.local,
            Method::GET,
            &format!("Task?authored-on={}", date.replace('+', "%2B")),
            None,
        )
        .await;
        assert_eq!(status, 400, "{date}: {body}");
        assert!(body.to_string().contains("authored-on"), "{body}");
    }
    let long_id = "a".repeat(65);
    let mut task = draft_task("long", "2024-05-01T10:00:00Z");
    task["id"] = json!(long_id);
    let (status, body) = send_json(
        &server.local,
        Method::PUT,
        &format!("Task/{long_id}"),
        Some(&task),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = send_json(
        &server.local,
        Method::DELETE,
        &format!("Task/{long_id}"),
        None,
    )
    .await;
    assert_eq!(status, 400);
}

/// What the server stores it can write as well-formed XML: no control characters, real
/// calendar dates, one value per JSON key.
async fn ill_formed_content_is_refused(server: TestServer) {
    let task = |extra: &str| {
        format!(r#"{{"resourceType":"Task","status":"draft","intent":"order"{extra}}}"#)
            .into_bytes()
    };
    for (what, body) in [
        ("NUL in JSON", task(r#","description":"a\u0000b""#)),
        ("vertical tab in JSON", task(r#","description":"a\u000bb""#)),
        ("impossible date", task(r#","authoredOn":"2024-02-30""#)),
        (
            "impossible time zone",
            task(r#","authoredOn":"2024-02-01T10:00:00+25:00""#),
        ),
        ("duplicate status", task(r#","status":"requested""#)),
        (
            "duplicate meta",
            task(r#","meta":{"tag":[]},"meta":{"profile":["http://x"]}"#),
        ),
        ("escaped duplicate", task(r#","\u0073tatus":"requested""#)),
    ] {
        let (status, body) = post(&server.local, "Task", JSON, body).await;
        assert_eq!(status, 400, "{what}: {body}");
    }
    let xml = |inner: &str| {
        format!(
            "<Task xmlns=\"http://hl7.org/fhir\">{inner}<status value=\"draft\"/><intent value=\"order\"/></Task>"
        )
        .into_bytes()
    };
    for (what, body) in [
        ("raw NUL in XML", xml("<description value=\"a\0b\"/>")),
        (
            "character reference to NUL",
            xml("<description value=\"a&#0;b\"/>"),
        ),
        (
            "impossible date in XML",
            xml("").into_iter().collect::<Vec<u8>>(),
        ),
        (
            "document type declaration",
            [b"<!DOCTYPE Task [<!ENTITY x \"y\">]>".to_vec(), xml("")].concat(),
        ),
    ] {
        let body = if what == "impossible date in XML" {
            String::from_utf8(body)
                .unwrap()
                .replace(
                    "<intent value=\"order\"/>",
                    "<intent value=\"order\"/><authoredOn value=\"2023-02-29\"/>",
                )
                .into_bytes()
        } else {
            body
        };
        let (status, text) = post(&server.local, "Task", XML, body).await;
        assert_eq!(status, 400, "{what}: {text}");
    }
    let (_, search) = send_json(&server.local, Method::GET, "Task?_summary=count", None).await;
    assert_eq!(search["total"], 0, "nothing ill-formed was stored");
}

/// Bodies with more values than the node limit are refused before the parser builds them.
async fn huge_bodies_are_refused_before_parsing(server: TestServer) {
    let input = r#"{"type":{"text":"x"},"valueString":"y"},"#;
    let count = dsf_fhir::bounds::MAX_NODES / 5 + 1;
    let mut body =
        String::from(r#"{"resourceType":"Task","status":"draft","intent":"order","input":["#);
    for _ in 0..count {
        body.push_str(input);
    }
    body.pop();
    body.push_str("]}");
    let r = server
        .admin
        .request(
            Method::POST,
            "Task",
            &[("content-type", JSON), ("accept", JSON)],
            Some(body.into_bytes().into()),
        )
        .await
        .expect("request");
    // The test server's body limit is small; a body within it is refused by the node limit,
    // a larger one by its size: never parsed either way.
    assert!(
        matches!(r.status.as_u16(), 400 | 413),
        "{}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}

/// Bytes that can only be for the node counter: within the body limit, many values.
fn node_limit_applies_within_the_body_limit() {
    let body = format!(
        r#"{{"resourceType":"Task","status":"draft","intent":"order","input":[{}1]}}"#,
        "1,".repeat(dsf_fhir::bounds::MAX_NODES)
    );
    let err =
        dsf_fhir::format::parse_resource(body.as_bytes(), dsf_fhir::Format::Json).unwrap_err();
    assert!(err.to_string().contains("values in one body"), "{err}");
}

/// A conditional create tells a remote organisation nothing about resources it cannot read,
/// and neither does a vread.
async fn conditional_writes_and_vreads_reveal_nothing(server: TestServer) {
    let probe = || async {
        let r = server
            .remote
            .request(
                Method::POST,
                "Task",
                &[
                    ("content-type", JSON),
                    ("accept", JSON),
                    ("if-none-exist", "status=draft"),
                ],
                Some(
                    serde_json::to_vec(&ping_task("draft", "2024-05-01T10:00:00Z", REMOTE_ORG))
                        .unwrap()
                        .into(),
                ),
            )
            .await
            .expect("request");
        (r.status.as_u16(), r.header("location").map(str::to_owned))
    };
    let before = probe().await;
    let hidden = server
        .seed(vec![draft_task("hidden", "2024-05-01T10:00:00Z")])
        .await;
    let hidden_id = hidden[0]["id"].as_str().unwrap();
    let after = probe().await;
    assert_eq!(
        before, after,
        "the answer must not depend on the hidden draft"
    );
    assert_eq!(after.0, 403);
    assert_eq!(after.1, None);

    let (hidden_status, hidden_body) = send_json(
        &server.remote,
        Method::GET,
        &format!("Task/{hidden_id}/_history/1"),
        None,
    )
    .await;
    let missing_id = "0e9f4b4c-0000-4000-8000-000000000000";
    let (missing_status, missing_body) = send_json(
        &server.remote,
        Method::GET,
        &format!("Task/{missing_id}/_history/1"),
        None,
    )
    .await;
    assert_eq!(hidden_status, 404);
    assert_eq!(missing_status, 404);
    let text = |body: &Value, id: &str| {
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .replace(id, "ID")
    };
    assert_eq!(
        text(&hidden_body, hidden_id),
        text(&missing_body, missing_id)
    );
    // The local organisation (which can read it) still finds it conditionally.
    let (_, search) = send_json(
        &server.local,
        Method::GET,
        "Task?status=draft&_summary=count",
        None,
    )
    .await;
    assert_eq!(search["total"], 1);
}

/// A TCP connection from `source` to the server.
async fn connect_from(source: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// Whether the server closed `stream` within `within` (end of stream or reset).
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Idle and unknown connections cannot exhaust the server: per-address and total limits,
/// header and idle time-outs, and an allowed organisation still served throughout.
async fn connection_floods_are_refused() {
    let pki = dsf_core::DevPki::generate("flood CA").expect("CA");
    let stranger = pki.issue_client("flooder").expect("cert");
    let server = TestServer::start_with_pki(BackendKind::Sqlite, pki, |config| {
        config.connections = {
            let mut limits = ConnectionLimits::default();
            limits.max_connections = 120;
            limits.max_per_address = 40;
            limits.handshake_timeout = Duration::from_secs(2);
            limits.header_timeout = Duration::from_secs(3);
            limits.unknown_client_header_timeout = Duration::from_secs(1);
            limits
        };
    })
    .await;
    let port = server.port;
    // 1. Plain TCP connections that never start TLS, all from one address: the first 40
    //    are admitted until their handshake times out, the rest are closed at once.
    let flooder: IpAddr = "127.0.0.2".parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(connect_from(flooder, port).await.expect("connect"));
    }
    let mut closed_at_once = 0;
    for stream in idle.iter_mut().skip(40) {
        if closed_within(stream, Duration::from_millis(500)).await {
            closed_at_once += 1;
        }
    }
    assert_eq!(closed_at_once, 60, "connections over the per-address limit");
    still_serving(&server).await;
    for stream in idle.iter_mut().take(40) {
        assert!(
            closed_within(stream, Duration::from_secs(4)).await,
            "handshake time-out"
        );
    }
    drop(idle);

    // 2. Completed handshakes with a certificate nobody allowed, from three addresses
    //    (filling the server): closed after a second without a request; meanwhile the
    //    local organisation's requests still get through, evicting them if need be.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        server.pki.client_config(&stranger).expect("TLS"),
    ));
    let mut strangers = Vec::new();
    for source in ["127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        for _ in 0..40 {
            let tcp = connect_from(source.parse().unwrap(), port)
                .await
                .expect("connect");
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
            if let Ok(tls) = connector.connect(name, tcp).await {
                strangers.push(tls);
            }
        }
    }
    assert!(strangers.len() >= 100, "{} handshakes", strangers.len());
    let fresh = server.client_for(&server.local_cert);
    let (status, _) = send_json(&fresh, Method::GET, "metadata", None).await;
    assert_eq!(
        status, 200,
        "an allowed caller gets in while the server is full"
    );
    let started = Instant::now();
    for tls in strangers.iter_mut() {
        assert!(
            closed_within(tls, Duration::from_secs(3)).await,
            "unknown client kept"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));

    // 3. An allowed caller that goes idle is closed after the header time-out.
    let tcp = connect_from("127.0.0.6".parse().unwrap(), port)
        .await
        .expect("connect");
    let local_connector = tokio_rustls::TlsConnector::from(Arc::new(
        server.pki.client_config(&server.local_cert).expect("TLS"),
    ));
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = local_connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(
        b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nAccept: application/fhir+json\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(
        closed_within(&mut tls, Duration::from_secs(5)).await,
        "idle time-out"
    );
    still_serving(&server).await;
    assert!(server.server.open_connections() <= 2);
}

/// A relay between the server and PostgreSQL that the test can cut and freeze, or stall the
/// connections open at one moment for good while new ones pass.
struct DatabaseLink {
    address: SocketAddr,
    state: Arc<LinkState>,
}

struct LinkState {
    up: AtomicBool,
    frozen: AtomicBool,
    /// One flag per connection ever opened: set, that connection holds its bytes forever.
    stalls: std::sync::Mutex<Vec<Arc<Stall>>>,
}

/// One connection of the link: its bytes pass while the link is up, and are held while it is
/// frozen or this connection is stalled.
struct Stall {
    link: Arc<LinkState>,
    stalled: AtomicBool,
}

/// The link's [`Tap`]: refuses connections while the link is down.
struct LinkTap(Arc<LinkState>);

impl Tap for LinkTap {
    fn connection(&self) -> Option<Arc<dyn ConnectionTap>> {
        if !self.0.up.load(Ordering::SeqCst) {
            return None;
        }
        let stall = Arc::new(Stall {
            link: self.0.clone(),
            stalled: AtomicBool::new(false),
        });
        self.0.stalls.lock().unwrap().push(stall.clone());
        Some(stall)
    }
}

impl ConnectionTap for Stall {
    fn passing(&self, _: Direction, _: &[u8]) -> Verdict {
        if !self.link.up.load(Ordering::SeqCst) {
            Verdict::Close
        } else if self.link.frozen.load(Ordering::SeqCst) || self.stalled.load(Ordering::SeqCst) {
            Verdict::Hold
        } else {
            Verdict::Pass
        }
    }

    fn idle(&self, _: Direction) -> bool {
        self.link.up.load(Ordering::SeqCst)
    }
}

impl DatabaseLink {
    async fn start(target: SocketAddr) -> DatabaseLink {
        let state = Arc::new(LinkState {
            up: AtomicBool::new(true),
            frozen: AtomicBool::new(false),
            stalls: std::sync::Mutex::new(Vec::new()),
        });
        let relay = TcpRelay::start(target, Arc::new(LinkTap(state.clone()))).await;
        DatabaseLink {
            address: relay.address,
            state,
        }
    }

    fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    fn set_frozen(&self, frozen: bool) {
        self.state.frozen.store(frozen, Ordering::SeqCst);
    }

    /// Every connection open now stops answering, without closing; later ones pass.
    fn stall_open_connections(&self) {
        for stall in self.state.stalls.lock().unwrap().iter() {
            stall.stalled.store(true, Ordering::SeqCst);
        }
    }
}

fn client_without_retries(server: &TestServer, timeout: Duration) -> FhirClient {
    let tls = server.pki.client_config(&server.local_cert).expect("TLS");
    let mut settings = ClientSettings::default();
    settings.retries = 0;
    settings.timeout = timeout;
    FhirClient::with_settings(&server.base_url, Arc::new(tls), settings).expect("client")
}

/// Status, Retry-After and body of one GET of `path`, and how long it took.
async fn timed_get(client: &FhirClient, path: &str) -> (u16, Option<String>, String, Duration) {
    let started = Instant::now();
    let r = client
        .request(Method::GET, path, &[("accept", JSON)], None)
        .await
        .expect("the server answers");
    (
        r.status.as_u16(),
        r.header("retry-after").map(str::to_owned),
        String::from_utf8_lossy(&r.body).into_owned(),
        started.elapsed(),
    )
}

/// One search (on a pooled connection of its own).
async fn timed_search(client: &FhirClient) -> (u16, Option<String>, String, Duration) {
    timed_get(client, "Task?status=requested").await
}

/// One read by id (a point lookup, which goes over a connection such reads share).
async fn timed_read(client: &FhirClient, id: &str) -> (u16, Option<String>, String, Duration) {
    timed_get(client, &format!("Task/{id}")).await
}

/// Waits until both a search and a read by id of `id` succeed again.
async fn until_ok(client: &FhirClient, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body, _) = timed_search(client).await;
        let (read_status, _, read_body, _) = timed_read(client, id).await;
        if status == 200 && read_status == 200 {
            return;
        }
        let (status, body) = match status {
            200 => (read_status, read_body),
            _ => (status, body),
        };
        assert!(Instant::now() < deadline, "no recovery: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// PostgreSQL down or hung: a quick 503 with Retry-After and no database text; recovery
/// without a restart.
async fn database_faults_answer_503_and_recover() {
    let link = DatabaseLink::start(postgres_address()).await;
    let schema = format!("dsf_test_{}", uuid::Uuid::new_v4().simple());
    let options = PostgresOptions::new(4)
        .connect_timeout(Duration::from_secs(1))
        .statement_timeout(Duration::from_secs(1));
    let backend =
        PostgresBackend::connect_with(&postgres_url_at(link.address), Some(&schema), options)
            .await
            .expect("PostgreSQL through the link");
    let pki = dsf_core::DevPki::generate("fault CA").expect("CA");
    let server = TestServer::start_on(Arc::new(backend), pki, |_| {}).await;
    let client = client_without_retries(&server, Duration::from_secs(20));
    let id = loop {
        let created = client
            .request(
                Method::POST,
                "Task",
                &[("content-type", JSON)],
                Some(
                    serde_json::to_vec(&draft_task("fault", "2024-05-01T10:00:00Z"))
                        .unwrap()
                        .into(),
                ),
            )
            .await
            .expect("the server answers");
        if created.status == 201 {
            break created
                .header("location")
                .and_then(|l| l.split('/').rev().nth(2))
                .expect("location")
                .to_owned();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    until_ok(&client, &id).await;

    link.set_up(false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (status, retry_after, body, took) in
        [timed_search(&client).await, timed_read(&client, &id).await]
    {
        assert_eq!(status, 503, "{body}");
        assert!(retry_after.is_some());
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert!(!body.contains("error connecting"), "{body}");
    }
    link.set_up(true);
    until_ok(&client, &id).await;

    link.set_frozen(true);
    for (status, retry_after, body, took) in
        [timed_search(&client).await, timed_read(&client, &id).await]
    {
        assert_eq!(status, 503, "{body}");
        assert!(retry_after.is_some());
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    link.set_frozen(false);
    until_ok(&client, &id).await;

    // A connection that stops answering without closing (a lost network path) is given up
    // after one timed-out read: reads by id, which share a connection, come back at once
    // on a new one rather than failing until TCP notices.
    link.stall_open_connections();
    let (status, _, body, _) = timed_read(&client, &id).await;
    assert_eq!(status, 503, "{body}");
    let (status, _, body, took) = timed_read(&client, &id).await;
    assert_eq!(status, 200, "the next read uses a new connection: {body}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A statement whose HTTP client went away is cancelled on the server, not left running.
async fn abandoned_statements_are_cancelled() {
    let schema = format!("dsf_test_{}", uuid::Uuid::new_v4().simple());
    let backend: Arc<dyn Backend> = Arc::new(
        PostgresBackend::connect(&postgres_url(), Some(&schema), 8)
            .await
            .expect("PostgreSQL"),
    );
    let pki = dsf_core::DevPki::generate("cancel CA").expect("CA");
    let server = TestServer::start_on(backend.clone(), pki, |_| {}).await;
    let (observer, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("observer");
    tokio::spawn(connection);
    let lock_key = format!("{schema}:Task");
    let waiting = || async {
        observer
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND objid::bigint = (hashtext($1)::bigint & 4294967295)",
                &[&lock_key],
            )
            .await
            .expect("pg_locks")
            .get::<_, i64>(0)
    };
    // Hold the lock that conditional creates on Task take, so the next one waits for it.
    let mut holder = backend.write().await.expect("session");
    holder.lock("Task").await.expect("lock");
    // The lock goes out with the session's next statement.
    let mut flush = Sql::new(Dialect::Postgres);
    flush.push("SELECT count(*) FROM resources");
    holder.count(&flush).await.expect("lock taken");
    let client = client_without_retries(&server, Duration::from_millis(800));
    let body = serde_json::to_vec(&draft_task("cancel", "2024-05-01T10:00:00Z")).unwrap();
    let request = tokio::spawn(async move {
        client
            .request(
                Method::POST,
                "Task",
                &[
                    ("content-type", JSON),
                    (
                        "if-none-exist",
                        "identifier=http://dsf.dev/sid/task-identifier|cancel",
                    ),
                ],
                Some(body.into()),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        waiting().await,
        1,
        "the conditional create waits for the lock"
    );
    assert!(request.await.unwrap().is_err(), "the client gave up");
    let deadline = Instant::now() + Duration::from_secs(3);
    while waiting().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned statement still waits"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(holder);
    still_serving(&server).await;
}

fn main() {
    let suite = dsf_tests::Suite::new();
    let suite = dsf_tests::server_tests!(
        suite,
        deep_nesting_is_refused_before_parsing,
        poisoned_resources_are_served_updated_and_deleted,
        search_bounds,
        ill_formed_content_is_refused,
        huge_bodies_are_refused_before_parsing,
        conditional_writes_and_vreads_reveal_nothing,
    );
    suite
        .sync_test(
            "node_limit_applies_within_the_body_limit",
            node_limit_applies_within_the_body_limit,
        )
        .test(
            "connection_floods_are_refused",
            connection_floods_are_refused,
        )
        .postgres_test(
            "database_faults_answer_503_and_recover",
            database_faults_answer_503_and_recover,
        )
        .postgres_test(
            "abandoned_statements_are_cancelled",
            abandoned_statements_are_cancelled,
        )
        .run()
}
