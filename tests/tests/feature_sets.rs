//! Each cargo feature set of dsf-fhir builds on its own, and the crates that promise to stay
//! small keep their dependency trees free of what they do not use. The workspace build unifies
//! features, so a `#[cfg]` forgotten in one set would otherwise only show for an embedder.
//!
//! The checks run `cargo check` in a target directory of their own (`target/feature-sets`),
//! so they neither wait for nor disturb the build that runs the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = workspace();
    let output = Command::new(cargo)
        .args(args)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", root.join("target").join("feature-sets"))
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "cargo {} failed:\n{stderr}",
        args.join(" ")
    );
    assert!(
        !stderr.contains("warning:"),
        "cargo {} warned:\n{stderr}",
        args.join(" ")
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn check(package: &str, features: Option<&str>) {
    let mut args = vec!["check", "--quiet", "--locked", "-p", package];
    if let Some(features) = features {
        args.extend(["--no-default-features", "--features", features]);
        if features.is_empty() {
            args.pop();
            args.pop();
        }
    }
    cargo(&args);
}

/// `cargo tree` of a package with some features: the names of the crates in it.
fn tree(package: &str, features: Option<&str>) -> String {
    let mut args = vec![
        "tree", "--locked", "-e", "normal", "--prefix", "none", "-p", package,
    ];
    if let Some(features) = features {
        args.extend(["--no-default-features", "--features", features]);
    }
    cargo(&args)
}

fn has(tree: &str, krate: &str) -> bool {
    tree.lines()
        .any(|line| line.split(' ').next() == Some(krate))
}

fn each_feature_set_of_dsf_fhir_builds_alone() {
    for features in [
        "",
        "client",
        "store",
        "server",
        "conformance",
        "client,store",
    ] {
        check("dsf-fhir", Some(features));
    }
    // The crates above dsf-fhir, each with only the features it asks for.
    check("dsf-plugin-api", None);
    check("dsf-engine", None);
    // The BPE without PostgreSQL (its state on SQLite only).
    check("dsf-engine", Some(""));
}

fn client_and_store_trees_hold_only_their_parts() {
    let client = tree("dsf-fhir", Some("client"));
    for absent in ["rusqlite", "tokio-postgres", "tower-service"] {
        assert!(
            !has(&client, absent),
            "the client-only build links {absent}"
        );
    }
    assert!(has(&client, "hyper"));
    let store = tree("dsf-fhir", Some("store"));
    for absent in ["hyper", "fastwebsockets", "tokio-rustls", "tower-service"] {
        assert!(!has(&store, absent), "the store-only build links {absent}");
    }
    assert!(has(&store, "rusqlite"));
    // The plugin API is what every plugin links: a client, never the server or a database.
    let plugin_api = tree("dsf-plugin-api", None);
    for absent in ["rusqlite", "tokio-postgres", "tower-service"] {
        assert!(!has(&plugin_api, absent), "dsf-plugin-api links {absent}");
    }
}

/// `1.89` as `[1, 89, 0]`.
fn version(text: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = text
        .split('.')
        .filter_map(|part| part.parse().ok())
        .collect();
    parts.resize(3, 0);
    parts
}

/// The workspace's `rust-version` is no lower than what any locked dependency built for this
/// machine declares (clippy's `incompatible_msrv` checks our own code against it).
fn rust_version_covers_the_locked_dependencies() {
    let host = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc names its host");
    let metadata = cargo(&[
        "metadata",
        "--locked",
        "--format-version",
        "1",
        "--filter-platform",
        &host,
    ]);
    let metadata: serde_json::Value = serde_json::from_str(&metadata).expect("cargo metadata JSON");
    let reachable: std::collections::HashSet<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .filter_map(|node| node["id"].as_str())
        .collect();
    let packages = metadata["packages"].as_array().expect("packages");
    let ours = packages
        .iter()
        .find(|p| p["name"] == "dsf-fhir")
        .and_then(|p| p["rust_version"].as_str())
        .expect("dsf-fhir declares a rust-version");
    let needed = packages
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| reachable.contains(id)))
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].as_str()?)))
        .max()
        .expect("some dependency declares a rust-version");
    assert!(
        version(ours) >= needed.0,
        "rust-version {ours} is below {:?}, which {} needs",
        needed.0,
        needed.1
    );
}

fn main() {
    dsf_tests::Suite::new()
        .sync_test(
            "each_feature_set_of_dsf_fhir_builds_alone",
            each_feature_set_of_dsf_fhir_builds_alone,
        )
        .sync_test(
            "client_and_store_trees_hold_only_their_parts",
            client_and_store_trees_hold_only_their_parts,
        )
        .sync_test(
            "rust_version_covers_the_locked_dependencies",
            rust_version_covers_the_locked_dependencies,
        )
        .run()
}
