//! Memory comes back after a burst, the way an operator sees it: a running `dsf dev up` that
//! parsed several large Task bodies at once is, shortly after, close to its idle resident size
//! again. Whatever keeps it there (the binaries' allocator, the server's trimming) must not
//! regress to holding the burst's memory for the life of the process.

use dsf_bin::dev_network::NetworkDescription;
use dsf_bin::proc_status_kib;
use dsf_core::TlsFiles;
use dsf_fhir::{FhirClient, Format};
use http::Method;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Inputs per Task: a body of about 15 MiB, under the 16 MiB limit, that the server parses.
const INPUTS: usize = 380_000;
const CONCURRENT_BODIES: usize = 4;
/// How far above idle the burst must take the server for the test to mean something (the
/// server parses one large body at a time on two cores, about 80 MiB above idle).
const BURST_ABOVE_IDLE_KIB: u64 = 48 * 1024;
/// What may stay above idle once the burst is over (connection buffers, caches, SQLite).
const ALLOWED_ABOVE_IDLE_KIB: u64 = 16 * 1024;

/// A Task with `inputs` inputs: a large body of many small values.
fn task_with_inputs(inputs: usize) -> Vec<u8> {
    let input = r#"{"type":{"text":"x"},"valueString":"y"}"#;
    let inputs = vec![input; inputs].join(",");
    format!(r#"{{"resourceType":"Task","status":"requested","intent":"order","input":[{inputs}]}}"#)
        .into_bytes()
}

/// Kills the network when the test ends, passed or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn anonymous_kib(pid: u32) -> u64 {
    proc_status_kib(&pid.to_string(), "RssAnon:").unwrap_or(0)
}

/// Starts a one-organisation network and waits until it says it runs.
fn start_network(dir: &std::path::Path, plugins: &std::path::Path) -> Running {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dsf"))
        .args(["dev", "up", "--organizations", "1", "--base-port"])
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir)
        .arg("--plugins")
        .arg(plugins)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.any(|line| line.is_ok_and(|l| l.starts_with("Running;")));
    assert!(ready, "dsf dev up ended before it ran");
    // Keep reading so that the network never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_memory_returns_near_idle_after_a_burst_of_large_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dsf_tests::plugin_files::reference_directory();
    let network = start_network(dir.path(), plugins.path());
    let pid = network.0.id();
    let description: NetworkDescription =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("network.json")).unwrap())
            .unwrap();
    let org = &description.organizations[0];
    let tls = TlsFiles {
        certificate: org.client_certificate.clone(),
        private_key: org.client_key.clone(),
        trusted_cas: description.ca_certificate.clone(),
    }
    .client_config()
    .unwrap();
    let client = FhirClient::new(&org.fhir_base_url, Arc::new(tls)).unwrap();
    client.search("Task", "_count=1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = anonymous_kib(pid);

    // The highest anonymous size during the burst, sampled from a thread of its own.
    let peak = Arc::new(AtomicU64::new(idle));
    let burst_over = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, burst_over) = (peak.clone(), burst_over.clone());
        std::thread::spawn(move || {
            while !burst_over.load(Ordering::Relaxed) {
                peak.fetch_max(anonymous_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let body = bytes::Bytes::from(task_with_inputs(INPUTS));
    let sends = (0..CONCURRENT_BODIES).map(|_| {
        let (client, body) = (client.clone(), body.clone());
        tokio::spawn(async move {
            client
                .send(Method::POST, "Task", Format::Json, &[], Some(body))
                .await
        })
    });
    for send in futures_util::future::join_all(sends).await {
        // Which status does not matter (the write rules refuse such a Task); the body was
        // read and parsed either way.
        send.unwrap().unwrap();
    }
    burst_over.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak > idle + BURST_ABOVE_IDLE_KIB,
        "the burst should have allocated much: idle {idle} KiB, peak {peak} KiB"
    );

    let quiet_since = Instant::now();
    let deadline = quiet_since + Duration::from_secs(30);
    let mut now = anonymous_kib(pid);
    while now > idle + ALLOWED_ABOVE_IDLE_KIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        now = anonymous_kib(pid);
    }
    assert!(
        now <= idle + ALLOWED_ABOVE_IDLE_KIB,
        "30 s after the burst: {now} KiB anonymous, idle {idle} KiB, peak {peak} KiB"
    );
    eprintln!(
        "anonymous memory: idle {idle} KiB, peak {peak} KiB, {now} KiB {:.1} s after the burst",
        quiet_since.elapsed().as_secs_f64()
    );
}
