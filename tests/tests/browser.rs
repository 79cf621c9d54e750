//! The browser pages in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver, users logging in at a real OpenID provider
//! (node-oidc-provider, `tests/oidc-provider`), two organisations with BPEs running the
//! ping-pong and hello-world plugins. `.ci/run` installs the browser and the provider; without
//! them the test says it is skipped, and under `CI=true` it fails.
//!
//! Screenshots of each page go to `target/ui-screenshots/` (docs/ui.md shows them).

use dsf_engine::{Bpe, BpeConfig};
use dsf_fhir::server::{OidcConfig, RoleConfig};
use dsf_fhir::FhirClient;
use dsf_plugin_ping_pong as ping_pong;
use dsf_tests::network::{Network, Organization, Topology};
use dsf_tests::tasks::WAIT;
use fantoccini::{Client, ClientBuilder, Locator};
use http::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const CLIENT_ID: &str = "dsf-fhir";
const CLIENT_SECRET: &str = "browser-test-secret";

const ROLES: &str = "
- admins:
    token-role: dsf-admin
    dsf-role: [CREATE, READ, UPDATE, DELETE, SEARCH, HISTORY]
    practitioner-role: http://dsf.dev/fhir/CodeSystem/practitioner-role|DSF_ADMIN
- readers:
    token-group: /readers
    dsf-role: [READ, SEARCH, HISTORY]
- api:
    token-role: dsf-api
    dsf-role: [READ, SEARCH]
";

fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider")
}

fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots")
}

/// Why the browser test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        return Some("Debian's chromium and chromium-driver are not installed".into());
    }
    if !provider_dir().join("node_modules/oidc-provider").exists() {
        return Some("the OpenID provider is not installed (npm ci in tests/oidc-provider)".into());
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process that prints `ready` when it is.
async fn spawn_until(command: &mut Command, ready: &str) -> Child {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("reads") {
            if line.contains(ready) {
                break;
            }
        }
    })
    .await
    .expect("ready in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

struct Setup {
    network: Network,
    _bpes: Vec<Bpe>,
    _provider: Child,
    _driver: Child,
    driver_port: u16,
    provider_url: String,
    /// Anonymous TLS trusting the network's CA: the provider's and the servers' certificates.
    anonymous_tls: Arc<rustls::ClientConfig>,
    _files: tempfile::TempDir,
}

async fn start_bpe(org: &Organization) -> Bpe {
    let mut config = BpeConfig::new(&org.base_url, org.bpe_tls.clone());
    config
        .plugin_config
        .push((ping_pong::PONG_TIMEOUT_PROPERTY.into(), "PT5S".into()));
    let bpe = Bpe::start(
        config,
        vec![ping_pong::plugin(), dsf_plugin_hello_world::plugin()],
    )
    .await
    .expect("BPE starts");
    tokio::time::timeout(WAIT, bpe.wait_connected())
        .await
        .expect("BPE subscriptions bound");
    bpe
}

async fn setup() -> Setup {
    let files = tempfile::tempdir().expect("temp dir");
    let pki = dsf_core::DevPki::generate("dsf-rs browser test CA").expect("CA");
    let provider_cert = pki.issue_server("localhost").expect("provider certificate");
    provider_cert
        .write(files.path(), "provider")
        .expect("provider certificate written");
    pki.write_ca(files.path()).expect("CA written");
    let anonymous_tls = Arc::new(pki.anonymous_client_config().expect("TLS"));
    let provider_port = free_port();
    let provider_url = format!("https://localhost:{provider_port}");
    let users = RoleConfig::parse(ROLES).expect("roles").users();
    let network = Network::start_with(pki, 2, Topology::Mesh, |i, config| {
        if i != 0 {
            return;
        }
        config.users.extend(users.clone());
        config.ui_theme = Some(dsf_fhir::server::UiTheme::Test);
        let mut oidc = OidcConfig::new(
            &provider_url,
            CLIENT_ID,
            CLIENT_SECRET,
            anonymous_tls.clone(),
        )
        .expect("OIDC settings");
        oidc.authorization_code_flow = true;
        oidc.bearer_token = true;
        oidc.back_channel_logout = true;
        config.oidc = Some(oidc);
    })
    .await;
    let base = network.organization(0).base_url.clone();
    let provider = spawn_until(
        Command::new("node")
            .arg(provider_dir().join("server.mjs"))
            .env("OIDC_PORT", provider_port.to_string())
            .env("OIDC_CLIENT_ID", CLIENT_ID)
            .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
            .env("OIDC_REDIRECT_URI", format!("{base}/_oidc/callback"))
            .env(
                "OIDC_BACK_CHANNEL_LOGOUT_URI",
                format!("{base}/back-channel-logout"),
            )
            .env("OIDC_POST_LOGOUT_REDIRECT_URI", format!("{base}/"))
            .env("OIDC_TLS_CERT", files.path().join("provider.crt"))
            .env("OIDC_TLS_KEY", files.path().join("provider.key"))
            // The provider posts back-channel logouts to the FHIR server.
            .env("NODE_EXTRA_CA_CERTS", files.path().join("ca.crt")),
        "listening",
    )
    .await;
    let driver_port = free_port();
    let driver = spawn_until(
        Command::new(CHROMEDRIVER).arg(format!("--port={driver_port}")),
        "started successfully",
    )
    .await;
    let mut bpes = Vec::new();
    for org in &network.organizations {
        bpes.push(start_bpe(org).await);
    }
    Setup {
        network,
        _bpes: bpes,
        _provider: provider,
        _driver: driver,
        driver_port,
        provider_url,
        anonymous_tls,
        _files: files,
    }
}

impl Setup {
    fn base(&self) -> &str {
        &self.network.organization(0).base_url
    }

    /// A fresh browser (no cookies), phone-sized when `narrow`.
    async fn browser(&self, narrow: bool) -> Client {
        let size = if narrow { "390,844" } else { "1280,1000" };
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--ignore-certificate-errors",
                         format!("--window-size={size}")]
            }
        });
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.driver_port))
            .await
            .expect("a WebDriver session")
    }
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot written");
}

async fn source(browser: &Client) -> String {
    browser.source().await.expect("page source")
}

/// Waits until the page's source satisfies `done`, reloading it between looks.
async fn until_page(browser: &Client, what: &str, done: impl Fn(&str) -> bool) -> String {
    watch_page(browser, what, done, true).await
}

/// Waits until the page that a submitted form leads to satisfies `done`. It never reloads:
/// a click returns before the browser has navigated, and a reload then would show (or post)
/// the old page again.
async fn until_submitted(browser: &Client, what: &str, done: impl Fn(&str) -> bool) -> String {
    watch_page(browser, what, done, false).await
}

async fn watch_page(
    browser: &Client,
    what: &str,
    done: impl Fn(&str) -> bool,
    reload: bool,
) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let html = source(browser).await;
        if done(&html) {
            return html;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never showed: {html}"
        );
        if reload {
            tokio::time::sleep(Duration::from_millis(300)).await;
            browser.refresh().await.expect("reload");
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The browser's URL once it has left `url`.
async fn away_from(browser: &Client, url: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = browser.current_url().await.expect("url").to_string();
        if now != url {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "still at {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Logs `user` in at the provider's login page the browser was sent to, and consents.
async fn log_in(browser: &Client, user: &str) {
    let login = browser
        .wait()
        .for_element(Locator::Css("input[name=login]"))
        .await
        .expect("the provider's login page");
    screenshot(browser, "01-provider-login").await;
    login.send_keys(user).await.expect("typed");
    browser
        .find(Locator::Css("input[name=password]"))
        .await
        .expect("password field")
        .send_keys("any")
        .await
        .expect("typed");
    let login_page = browser.current_url().await.expect("url").to_string();
    browser
        .find(Locator::Css("button[type=submit]"))
        .await
        .expect("login button")
        .click()
        .await
        .expect("submitted");
    // The provider asks for consent the first time, on a page of its own.
    let next = away_from(browser, &login_page).await;
    if next.contains("/interaction/") {
        browser
            .wait()
            .for_element(Locator::Css("button[type=submit]"))
            .await
            .expect("consent page")
            .click()
            .await
            .expect("consented");
        away_from(browser, &next).await;
    }
}

/// The first `href` on the page that contains `part`.
fn link_with(html: &str, part: &str) -> Option<String> {
    html.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|href| href.replace("&#x2f;", "/").replace("&amp;", "&"))
        .find(|href| href.contains(part))
}

async fn draft_task_page(setup: &Setup, browser: &Client, profile: &str) -> String {
    browser
        .goto(&format!(
            "{}/Task?status=draft&_profile={profile}",
            setup.base()
        ))
        .await
        .expect("opened");
    let html = source(browser).await;
    let draft = link_with(&html, "/Task/").unwrap_or_else(|| panic!("a draft Task: {html}"));
    browser.goto(&draft).await.expect("opened");
    draft
}

async fn people_start_processes_answer_user_tasks_and_log_out(setup: &Setup) {
    let org = setup.network.organization(0);
    let browser = setup.browser(false).await;
    // Not logged in: the page sends the browser to the provider, and back after login.
    browser
        .goto(&format!("{}/Task?_sort=-_lastUpdated", setup.base()))
        .await
        .expect("opened");
    log_in(&browser, "alice").await;
    let html = until_page(&browser, "the Task list", |h| h.contains("found")).await;
    assert!(html.contains("Alice Admin"), "{html}");
    assert!(html.contains("Log out"), "{html}");
    screenshot(&browser, "02-task-list").await;

    // Start a ping from its draft Task: the pong statuses appear on the new Task's page.
    let ping_draft = draft_task_page(
        setup,
        &browser,
        "http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0",
    )
    .await;
    browser
        .wait()
        .for_element(Locator::Id("start-process"))
        .await
        .expect("the start form");
    screenshot(&browser, "03-start-ping").await;
    browser
        .find(Locator::Id("start-process"))
        .await
        .expect("button")
        .click()
        .await
        .expect("started");
    away_from(&browser, &ping_draft).await;
    let html = until_page(&browser, "the pong status", |h| {
        h.contains("pong-received") && h.contains(">completed<")
    })
    .await;
    assert!(
        html.contains("alice@local.test"),
        "requested by Alice: {html}"
    );
    screenshot(&browser, "04-ping-completed").await;

    // Start the hello-world user process; answer its user task in the form; the process
    // goes on and records the answer.
    let draft = draft_task_page(
        setup,
        &browser,
        "http://example.org/fhir/StructureDefinition/task-hello-user|1.0",
    )
    .await;
    browser
        .wait()
        .for_element(Locator::Id("start-process"))
        .await
        .expect("the start form")
        .click()
        .await
        .expect("started");
    let started = away_from(&browser, &draft).await;
    let task_id = started
        .split("/Task/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the new Task's id")
        .to_owned();
    browser
        .goto(&format!(
            "{}/QuestionnaireResponse?status=in-progress&_sort=-_lastUpdated",
            setup.base()
        ))
        .await
        .expect("opened");
    let html = until_page(&browser, "the user task", |h| {
        link_with(h, "/QuestionnaireResponse/").is_some()
    })
    .await;
    screenshot(&browser, "05-user-tasks").await;
    let response = link_with(&html, "/QuestionnaireResponse/").expect("a user task");
    browser.goto(&response).await.expect("opened");
    let greeting = browser
        .wait()
        .for_element(Locator::Css("input[name=item-2]"))
        .await
        .expect("the answer form");
    greeting.send_keys("Moin").await.expect("typed");
    browser
        .find(Locator::Css("input[name=item-3]"))
        .await
        .expect("repeat field")
        .send_keys("2")
        .await
        .expect("typed");
    screenshot(&browser, "06-answer-user-task").await;
    browser
        .find(Locator::Id("answer-user-task"))
        .await
        .expect("button")
        .click()
        .await
        .expect("answered");
    until_submitted(&browser, "the answered user task", |h| {
        !h.contains("answer-user-task")
    })
    .await;
    browser
        .goto(&format!("{}/Task/{task_id}", setup.base()))
        .await
        .expect("opened");
    let html = until_page(&browser, "the recorded greeting", |h| {
        h.contains("Moin Moin") && h.contains(">completed<")
    })
    .await;
    assert!(html.contains("user-greeting"), "{html}");
    screenshot(&browser, "07-user-process-completed").await;

    // A forged CSRF token is refused, and nothing is created.
    let before = requested_tasks(org).await;
    draft_task_page(
        setup,
        &browser,
        "http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0",
    )
    .await;
    browser
        .wait()
        .for_element(Locator::Id("start-process"))
        .await
        .expect("the start form");
    browser
        .execute(
            "document.querySelector('#start ~ form input[name=csrf]').value = 'f0f0f0'; \
             document.querySelector('#start-process').click();",
            vec![],
        )
        .await
        .expect("forged and submitted");
    let html = until_submitted(&browser, "the refusal", |h| h.contains("CSRF")).await;
    assert!(html.contains("HTTP 403"), "{html}");
    screenshot(&browser, "08-forged-csrf-refused").await;
    assert_eq!(requested_tasks(org).await, before);

    // The provider ends the session (back-channel logout): the session cookie no longer
    // works here.
    let cookie = browser
        .get_named_cookie("__Host-dsf-session")
        .await
        .expect("session cookie")
        .value()
        .to_owned();
    assert_eq!(with_session(setup, &cookie).await, 200);
    browser
        .goto(&format!("{}/session/end", setup.provider_url))
        .await
        .expect("opened");
    browser
        .wait()
        .for_element(Locator::Css("button[value=yes], button[name=logout]"))
        .await
        .expect("the provider's logout page")
        .click()
        .await
        .expect("logged out");
    let deadline = tokio::time::Instant::now() + WAIT;
    while with_session(setup, &cookie).await != 401 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the back-channel logout ended no session"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.close().await.expect("closed");
}

async fn requested_tasks(org: &Organization) -> usize {
    org.client
        .search(
            "Task",
            "status=requested,in-progress,completed,failed&_summary=count",
        )
        .await
        .expect("searched")["total"]
        .as_u64()
        .unwrap_or_default() as usize
}

/// One request, answered.
async fn send(
    client: &FhirClient,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<bytes::Bytes>,
) -> dsf_fhir::client::RawResponse {
    client
        .request(method, path, headers, body)
        .await
        .expect("answered")
}

/// A FHIR JSON request with the session cookie and no certificate: its status.
async fn with_session(setup: &Setup, session: &str) -> u16 {
    let client = FhirClient::new(setup.base(), setup.anonymous_tls.clone()).expect("client");
    let cookie = format!("__Host-dsf-session={session}");
    send(
        &client,
        Method::GET,
        "Task?_count=1",
        &[("accept", "application/fhir+json"), ("cookie", &cookie)],
        None,
    )
    .await
    .status
    .as_u16()
}

async fn a_user_without_the_role_gets_no_start_form_and_is_refused(setup: &Setup) {
    let browser = setup.browser(true).await;
    browser
        .goto(&format!("{}/Task?status=draft", setup.base()))
        .await
        .expect("opened");
    log_in(&browser, "bob").await;
    let html = until_page(&browser, "the draft list", |h| h.contains("found")).await;
    assert!(html.contains("Bob Reader"), "{html}");
    let draft = draft_task_page(
        setup,
        &browser,
        "http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0",
    )
    .await;
    let html = source(&browser).await;
    assert!(
        !html.contains("start-process"),
        "no start form for a reader: {html}"
    );
    screenshot(&browser, "09-reader-phone-width").await;
    // Posted anyway, with Bob's own valid token (from the logout form): the create is
    // refused as a FHIR client's would be.
    let id = draft.rsplit('/').next().expect("id").to_owned();
    let action = format!("{}/_ui/start/{id}", setup.base());
    browser
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0]; \
             const t = document.createElement('input'); t.name = 'csrf'; \
             t.value = document.querySelector('form.logout input[name=csrf]').value; \
             f.appendChild(t); document.body.appendChild(f); f.submit();",
            vec![json!(action)],
        )
        .await
        .expect("posted");
    let html = until_submitted(&browser, "the refusal", |h| h.contains("HTTP 403")).await;
    assert!(
        !html.contains("CSRF"),
        "refused by authorization, not the token: {html}"
    );
    screenshot(&browser, "10-reader-refused").await;
    // Log out: the session ends here, and the browser goes on to the provider's logout.
    let cookie = browser
        .get_named_cookie("__Host-dsf-session")
        .await
        .expect("session cookie")
        .value()
        .to_owned();
    let here = browser.current_url().await.expect("url").to_string();
    browser
        .find(Locator::Css("form.logout button"))
        .await
        .expect("logout button")
        .click()
        .await
        .expect("logged out");
    let next = away_from(&browser, &here).await;
    assert!(next.starts_with(&setup.provider_url), "{next}");
    assert_eq!(with_session(setup, &cookie).await, 401);
    browser.close().await.expect("closed");
}

async fn api_clients_use_bearer_tokens(setup: &Setup) {
    // A JWT access token from the provider (client credentials, resource urn:dsf:fhir).
    let provider =
        FhirClient::new(&setup.provider_url, setup.anonymous_tls.clone()).expect("client");
    let credentials = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{CLIENT_ID}:{CLIENT_SECRET}"),
    );
    let authorization = format!("Basic {credentials}");
    let answer = send(
        &provider,
        Method::POST,
        "token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &authorization),
        ],
        Some("grant_type=client_credentials&scope=api&resource=urn%3Adsf%3Afhir".into()),
    )
    .await;
    let token: Value = answer.json().expect("JSON");
    let access = token["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("an access token: {token}"));
    let server = FhirClient::new(setup.base(), setup.anonymous_tls.clone()).expect("client");
    let bearer = format!("Bearer {access}");
    let read = send(
        &server,
        Method::GET,
        "Task?_count=1",
        &[
            ("accept", "application/fhir+json"),
            ("authorization", &bearer),
        ],
        None,
    )
    .await;
    assert_eq!(read.status.as_u16(), 200, "{:?}", read.body);
    // The api rule grants no CREATE.
    let create = send(
        &server,
        Method::POST,
        "Task",
        &[
            ("content-type", "application/fhir+json"),
            ("authorization", &bearer),
        ],
        Some(json!({"resourceType": "Task"}).to_string().into()),
    )
    .await;
    assert_eq!(create.status.as_u16(), 403);
    // A token with a changed signature is refused.
    let forged = format!("Bearer {}x", access.trim_end_matches('x'));
    let refused = send(
        &server,
        Method::GET,
        "Task",
        &[
            ("accept", "application/fhir+json"),
            ("authorization", &forged),
        ],
        None,
    )
    .await;
    assert_eq!(refused.status.as_u16(), 401);

    // Without certificate, session or token: a FHIR client is refused, a browser sent to log
    // in (with PKCE), and made-up login answers and logout tokens are refused.
    let anonymous = send(
        &server,
        Method::GET,
        "Task",
        &[("accept", "application/fhir+json")],
        None,
    )
    .await;
    assert_eq!(anonymous.status.as_u16(), 401);
    let page = send(
        &server,
        Method::GET,
        "Task",
        &[("accept", "text/html")],
        None,
    )
    .await;
    assert_eq!(page.status.as_u16(), 302);
    let location = page.headers["location"].to_str().expect("location");
    assert!(location.starts_with(&setup.provider_url), "{location}");
    assert!(
        location.contains("code_challenge_method=S256"),
        "{location}"
    );
    assert!(page.headers["set-cookie"]
        .to_str()
        .expect("cookie")
        .contains("Secure; HttpOnly; SameSite=Lax"));
    let callback = send(
        &server,
        Method::GET,
        "_oidc/callback?code=made-up&state=made-up",
        &[("accept", "text/html")],
        None,
    )
    .await;
    assert_eq!(callback.status.as_u16(), 401);
    let logout = send(
        &server,
        Method::POST,
        "back-channel-logout",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some("logout_token=not.a.token".into()),
    )
    .await;
    assert_eq!(logout.status.as_u16(), 400);
    let unknown_session = send(
        &server,
        Method::GET,
        "Task",
        &[
            ("accept", "application/fhir+json"),
            ("cookie", "__Host-dsf-session=guess"),
        ],
        None,
    )
    .await;
    assert_eq!(unknown_session.status.as_u16(), 401);
}

fn main() {
    if let Some(why) = missing_tools() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("browser test cannot run under CI: {why}");
        }
        println!("browser test skipped: {why}");
        return;
    }
    // RUST_LOG=dsf_engine=debug shows what the servers and BPEs do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let setup = setup().await;
        println!("test api_clients_use_bearer_tokens ...");
        api_clients_use_bearer_tokens(&setup).await;
        println!("test people_start_processes_answer_user_tasks_and_log_out ...");
        people_start_processes_answer_user_tasks_and_log_out(&setup).await;
        println!("test a_user_without_the_role_gets_no_start_form_and_is_refused ...");
        a_user_without_the_role_gets_no_start_form_and_is_refused(&setup).await;
        println!(
            "browser tests passed; screenshots in {}",
            screenshots_dir().display()
        );
    });
}
