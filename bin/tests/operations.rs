//! What an operator meets when running the servers: the status ports (liveness, readiness,
//! the Java DSF's status path, Prometheus metrics) of a FHIR server and a BPE, the images'
//! `health-check` command, and the audit log of requests allowed and refused, on a dev
//! network of two organisations that pinged each other.

use dsf_bin::dev_network::{DevNetwork, DevNetworkSettings, Topology};
use dsf_bin::status::probe;
use dsf_fhir::FhirClient;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A search value and a name that must never reach the audit log.
const SECRET_SEARCH_VALUE: &str = "search-value-4711";
const SECRET_CONTENT: &str = "content-name-0815";

/// The value of the sample `name` (with its labels, as the text format writes them).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn get(address: SocketAddr, path: &str) -> (u16, String) {
    probe(address, path).unwrap_or_else(|e| panic!("GET {path} at {address}: {e}"))
}

/// The audit records once `wanted` holds for them (they are written by a thread of their own).
fn audit_records(path: &Path, wanted: impl Fn(&[Value]) -> bool) -> (Vec<Value>, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
            .collect();
        if wanted(&records) || Instant::now() > deadline {
            return (records, text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_the_secret_search(record: &Value) -> bool {
    record["interaction"] == "search-type" && record["parameters"] == json!(["identifier"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_ports_metrics_and_audit_log_of_a_running_network() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dsf_tests::plugin_files::reference_directory();
    let status_base = dsf_tests::free_port_range(8);
    let network = DevNetwork::start(DevNetworkSettings {
        dir: dir.path().to_owned(),
        organizations: 2,
        base_port: dsf_tests::free_port_range(4),
        topology: Topology::Mesh,
        postgres: None,
        plugin_directory: plugins.path().to_owned(),
        plugin_config: Vec::new(),
        status_base_port: Some(status_base),
    })
    .await
    .expect("network");
    let (org_a, org_b) = (&network.organizations[0], &network.organizations[1]);

    // A ping from org-a: org-b creates its pong Task on org-a's server.
    let outcome = dsf_bin::ping::ping(
        &network.client(0).unwrap(),
        &org_a.identifier,
        &[],
        Duration::from_secs(60),
    )
    .await
    .expect("ping");
    assert_eq!(outcome.statuses[0].status, "pong-received");

    // Refused: a certificate of the dev CA that no allow list holds, and org-b creating an
    // Organization (remote organisations may create Tasks only).
    let stranger = network.pki.issue_client("stranger.dsf.test").unwrap();
    let strangers_client = FhirClient::new(
        &org_a.base_url,
        Arc::new(network.pki.client_config(&stranger).unwrap()),
    )
    .unwrap();
    assert!(strangers_client
        .read::<Value>("Organization", "x")
        .await
        .is_err());
    let org_b_at_a = FhirClient::new(
        &org_a.base_url,
        Arc::new(network.pki.client_config(&org_b.client).unwrap()),
    )
    .unwrap();
    let refused = org_b_at_a
        .create(&json!({"resourceType": "Organization", "name": SECRET_CONTENT, "active": true}))
        .await
        .expect_err("remote organisations create Tasks only");
    assert!(refused.to_string().contains("CREATE"), "{refused}");
    // A search whose value must not be logged.
    let client_a = network.client(0).unwrap();
    client_a
        .search("Task", &format!("identifier={SECRET_SEARCH_VALUE}"))
        .await
        .expect("search");

    // The FHIR server's status port.
    let fhir_status: SocketAddr = ([127, 0, 0, 1], status_base).into();
    assert_eq!(get(fhir_status, "/health/live").0, 200);
    let (status, body) = get(fhir_status, "/health/ready");
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["checks"]["database"], "ok", "{body}");
    assert_eq!(
        get(fhir_status, "/fhir/status").0,
        200,
        "the Java DSF's path"
    );
    assert_eq!(get(fhir_status, "/nothing").0, 404);
    let (status, metrics) = get(fhir_status, "/metrics");
    assert_eq!(status, 200);
    let created = sample(
        &metrics,
        r#"dsf_fhir_request_duration_seconds_count{interaction="create",status="201"}"#,
    );
    assert!(created >= Some(1.0), "the pong's create:\n{metrics}");
    let forbidden = sample(
        &metrics,
        r#"dsf_fhir_request_duration_seconds_count{interaction="create",status="403"}"#,
    );
    assert_eq!(forbidden, Some(1.0), "{metrics}");
    assert!(
        sample(
            &metrics,
            r#"dsf_fhir_request_duration_seconds_bucket{le="10.0",interaction="create",status="201"}"#
        )
        .is_some()
            || metrics.contains(r#"interaction="create",status="201",le="10.0""#),
        "latency buckets:\n{metrics}"
    );
    assert_eq!(
        sample(&metrics, "dsf_fhir_websocket_sessions"),
        Some(2.0),
        "the BPE's two subscriptions:\n{metrics}"
    );
    assert!(
        sample(&metrics, "dsf_fhir_connections") >= Some(2.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, r#"dsf_fhir_db_connections{state="idle"}"#).is_some(),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "dsf_fhir_db_connections_max") >= Some(1.0),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "OpenMetrics text");

    // The BPE's status port.
    let bpe_status: SocketAddr = ([127, 0, 0, 1], status_base + 1).into();
    let (status, body) = get(bpe_status, "/health/ready");
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(bpe_status, "/bpe/status").0, 200);
    let (_, metrics) = get(bpe_status, "/metrics");
    assert!(
        sample(
            &metrics,
            r#"dsf_bpe_tasks_claimed_total{process="dsfdev_ping|1.0"}"#
        ) >= Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            r#"dsf_bpe_tasks_completed_total{process="dsfdev_ping|1.0"}"#
        ) >= Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, r#"dsf_bpe_sends_total{outcome="sent"}"#) >= Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"dsf_bpe_subscription_connected{resource="Task"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("dsf_bpe_plugin_call_duration_seconds_count{kind="),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "dsf_bpe_instances_waiting").is_some(),
        "{metrics}"
    );

    // The images' HEALTHCHECK command.
    let health = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dsf-fhir-server"))
            .arg("health-check")
            .env("DEV_DSF_SERVER_STATUS_PORT", port.to_string())
            .env_remove("DEV_DSF_SERVER_STATUS_HOST")
            .output()
            .unwrap()
    };
    assert!(health(status_base).status.success());
    let nobody = dsf_tests::free_port_range(1);
    let failed = health(nobody);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("health-check"));

    // The audit log of org-a's server.
    let audit = dir.path().join(&org_a.identifier).join("fhir-audit.log");
    let stranger_thumbprint = stranger.thumbprint().to_string();
    // The record of a request is queued after its response went out, so wait for each one
    // the checks below look at, not only for the first few.
    let (records, text) = audit_records(&audit, |records| {
        records.iter().any(|r| r["status"] == 401)
            && records.iter().any(|r| r["status"] == 403)
            && records.iter().any(is_the_secret_search)
    });
    let pong = records
        .iter()
        .find(|r| {
            r["interaction"] == "create"
                && r["status"] == 201
                && r["identity"]["kind"] == "remote-organization"
        })
        .unwrap_or_else(|| panic!("the pong's create:\n{text}"));
    assert_eq!(pong["identity"]["organization"], org_b.identifier.as_str());
    assert_eq!(
        pong["identity"]["thumbprint"],
        org_b.client.thumbprint().to_string()
    );
    assert_eq!(pong["outcome"], "allowed");
    // The new Task as the answer's Location names it, version included.
    let created = pong["resource"].as_str().unwrap_or("");
    assert!(
        created.starts_with("Task/") && created.ends_with("/_history/1"),
        "{pong}"
    );
    let reasons = pong["allowed"].to_string();
    assert!(reasons.contains("role CREATE for Task"), "{pong}");
    assert!(
        reasons.contains(
            "process authorization of http://dsf.dev/bpe/Process/ping|1.0 for message 'pong'"
        ),
        "{pong}"
    );
    let unknown = records
        .iter()
        .find(|r| r["status"] == 401)
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(unknown["identity"]["kind"], "unknown");
    assert_eq!(
        unknown["identity"]["thumbprint"],
        stranger_thumbprint.as_str()
    );
    assert_eq!(unknown["outcome"], "refused");
    assert!(
        !unknown["refused"][0].as_str().unwrap_or("").is_empty(),
        "{unknown}"
    );
    let denied = records
        .iter()
        .find(|r| r["status"] == 403)
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(denied["interaction"], "create");
    assert_eq!(denied["resource"], "Organization");
    assert!(
        denied["refused"].to_string().contains("no role CREATE"),
        "{denied}"
    );
    let search = records
        .iter()
        .find(|r| is_the_secret_search(r))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(search["resource"], "Task");
    assert_eq!(search["identity"]["kind"], "local-organization");
    // Never contents, never search values.
    assert!(!text.contains(SECRET_CONTENT), "{text}");
    assert!(!text.contains(SECRET_SEARCH_VALUE), "{text}");

    network.stop().await;
}
