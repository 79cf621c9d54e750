//! Process instances per second of the dsf-bpmn engine, in memory and with the instance
//! serialised after every step, and parse time of a 500-element file; then the same BPMN
//! files on bpmn-engine (Node.js) and SpiffWorkflow (Python) in the same run, as ratios.
//!
//!     (cd dsf-bpmn/benches/compare && npm install && python3 -m venv .venv && .venv/bin/pip install SpiffWorkflow)
//!     cargo bench -p dsf-bpmn --bench compare
//!
//! `DSF_BENCH_SECONDS` sets the time per measurement (default 3). Engines that are not installed
//! are reported as skipped.

use dsf_bpmn::engine::{Engine, Instance, Registry, Step, VirtualClock};
use serde_json::Map;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HEADER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="d" targetNamespace="http://dsf.dev/bench">
  <bpmn:process id="p" isExecutable="true">"#;
const FOOTER: &str = r#"  </bpmn:process>
  <bpmn:message id="MsgGo" name="go" />
</bpmn:definitions>"#;

fn flow(id: &str, from: &str, to: &str) -> String {
    format!("    <bpmn:sequenceFlow id=\"{id}\" sourceRef=\"{from}\" targetRef=\"{to}\" />\n")
}

fn task(id: &str) -> String {
    format!("    <bpmn:serviceTask id=\"{id}\" camunda:class=\"Noop\" implementation=\"${{environment.services.noop}}\" />\n")
}

/// start, `n` service tasks in a row, end.
fn chain(n: usize) -> String {
    let mut body = String::from("    <bpmn:startEvent id=\"s\" />\n");
    for i in 0..n {
        body.push_str(&task(&format!("t{i}")));
    }
    body.push_str("    <bpmn:endEvent id=\"e\" />\n");
    let ids: Vec<String> = std::iter::once("s".to_owned())
        .chain((0..n).map(|i| format!("t{i}")))
        .chain(std::iter::once("e".to_owned()))
        .collect();
    for (i, pair) in ids.windows(2).enumerate() {
        body.push_str(&flow(&format!("f{i}"), &pair[0], &pair[1]));
    }
    format!("{HEADER}\n{body}{FOOTER}")
}

/// start, parallel fork into 10 service tasks, parallel join, end.
fn fan_out(n: usize) -> String {
    let mut body = String::from("    <bpmn:startEvent id=\"s\" />\n    <bpmn:parallelGateway id=\"fork\" />\n    <bpmn:parallelGateway id=\"join\" />\n    <bpmn:endEvent id=\"e\" />\n");
    body.push_str(&flow("f0", "s", "fork"));
    body.push_str(&flow("f1", "join", "e"));
    for i in 0..n {
        body.push_str(&task(&format!("t{i}")));
        body.push_str(&flow(&format!("a{i}"), "fork", &format!("t{i}")));
        body.push_str(&flow(&format!("b{i}"), &format!("t{i}"), "join"));
    }
    format!("{HEADER}\n{body}{FOOTER}")
}

/// start, a message catch event, end.
fn message_wait() -> String {
    let body = [
        "    <bpmn:startEvent id=\"s\" />\n".to_owned(),
        "    <bpmn:intermediateCatchEvent id=\"wait\"><bpmn:messageEventDefinition messageRef=\"MsgGo\" /></bpmn:intermediateCatchEvent>\n".to_owned(),
        "    <bpmn:endEvent id=\"e\" />\n".to_owned(),
        flow("f1", "s", "wait"),
        flow("f2", "wait", "e"),
    ]
    .concat();
    format!("{HEADER}\n{body}{FOOTER}")
}

fn engine(xml: &str) -> Engine {
    let definitions = dsf_bpmn::parse(xml.as_bytes(), "bench.bpmn").expect("bench BPMN parses");
    let mut registry = Registry::new();
    registry.bind_fn("Noop", |_| Ok(()));
    Engine::deploy(definitions, registry, Arc::new(VirtualClock::at(0))).expect("deploys")
}

/// Runs one instance to its end (delivering the message when it waits); with `persist`, the
/// instance goes through JSON after every step, as a BPE storing it would do.
async fn one(engine: &Engine, persist: bool) {
    let mut instance = engine.start("p", Some("bk"), Map::new()).expect("start");
    let mut delivered = false;
    loop {
        let step = engine.step(&mut instance).await.expect("step");
        if persist {
            let stored = serde_json::to_vec(&instance).expect("serialise");
            instance = serde_json::from_slice::<Instance>(&stored).expect("deserialise");
        }
        match step {
            Step::Progressed => {}
            Step::Finished => break,
            Step::Waiting if !delivered => {
                delivered = engine
                    .deliver(&mut instance, "go", None, &Map::new())
                    .expect("deliver");
                assert!(delivered, "waits for the message");
            }
            other => panic!("instance stuck: {other:?}"),
        }
    }
    assert!(instance.state == dsf_bpmn::engine::InstanceState::Completed);
}

fn per_second(duration: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up, then count.
    let warm = Instant::now();
    while warm.elapsed() < duration / 10 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A file of about 500 elements: 249 service tasks, start and end events, 250 flows.
fn five_hundred_elements() -> String {
    chain(249)
}

fn external(program: &Path, args: &[&str], dir: &Path) -> Option<f64> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "{} {:?} failed: {}",
            program.display(),
            args,
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    value.get("per_second").and_then(serde_json::Value::as_f64)
}

fn main() {
    let seconds: u64 = std::env::var("DSF_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let compare_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/compare");
    let work = std::env::temp_dir().join(format!("dsf-bpmn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("temp dir");

    let scenarios = [
        ("chain", "chain of 10 service tasks", chain(10)),
        (
            "fanout",
            "parallel fan-out/fan-in of 10 branches",
            fan_out(10),
        ),
        ("message", "message wait and correlate", message_wait()),
    ];
    let node = compare_dir
        .join("node_modules/bpmn-engine")
        .exists()
        .then(|| PathBuf::from("node"));
    let python = compare_dir.join(".venv/bin/python");
    let python = python.exists().then_some(python);

    println!("| scenario | dsf-bpmn in memory | dsf-bpmn, serialised every step | bpmn-engine | ratio | SpiffWorkflow | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (key, label, xml) in &scenarios {
        let file = work.join(format!("{key}.bpmn"));
        std::fs::write(&file, xml).expect("write BPMN");
        let engine = engine(xml);
        let memory = per_second(duration, || runtime.block_on(one(&engine, false)));
        let persisted = per_second(duration, || runtime.block_on(one(&engine, true)));
        let file_arg = file.to_string_lossy().into_owned();
        let secs = seconds.to_string();
        let js = node
            .as_ref()
            .and_then(|n| external(n, &["bench.js", &file_arg, key, &secs], &compare_dir));
        let py = python
            .as_ref()
            .and_then(|p| external(p, &["bench.py", &file_arg, key, &secs], &compare_dir));
        println!(
            "| {label} | {memory:.0}/s | {persisted:.0}/s | {} | {} | {} | {} |",
            js.map_or("skipped".into(), |v| format!("{v:.0}/s")),
            js.map_or("–".into(), |v| format!("**{:.0}x**", memory / v)),
            py.map_or("skipped".into(), |v| format!("{v:.0}/s")),
            py.map_or("–".into(), |v| format!("**{:.0}x**", memory / v)),
        );
    }

    let big = five_hundred_elements();
    let file = work.join("parse.bpmn");
    std::fs::write(&file, &big).expect("write BPMN");
    let elements = big.matches("<bpmn:").count();
    let parses = per_second(duration, || {
        dsf_bpmn::parse(big.as_bytes(), "parse.bpmn").expect("parses");
    });
    let file_arg = file.to_string_lossy().into_owned();
    let secs = seconds.to_string();
    let js = node
        .as_ref()
        .and_then(|n| external(n, &["bench.js", &file_arg, "parse", &secs], &compare_dir));
    let py = python
        .as_ref()
        .and_then(|p| external(p, &["bench.py", &file_arg, "parse", &secs], &compare_dir));
    let ms = |per_second: f64| format!("{:.2} ms", 1000.0 / per_second);
    println!(
        "| parse a {elements}-element file | {} | – | {} | {} | {} | {} |",
        ms(parses),
        js.map_or("skipped".into(), ms),
        js.map_or("–".into(), |v| format!("**{:.0}x**", parses / v)),
        py.map_or("skipped".into(), ms),
        py.map_or("–".into(), |v| format!("**{:.0}x**", parses / v)),
    );
    let _ = std::fs::remove_dir_all(&work);
}
