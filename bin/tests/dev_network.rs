//! The main job: `dsf dev up` starts a network of organisations whose allow lists follow the
//! topology and whose BPEs run plugin files, and `--smoke` checks every organisation against
//! every server and pings from each.

use std::process::Command;

fn run(topology: &str, organizations: u16) -> String {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dsf_tests::plugin_files::reference_directory();
    let output = Command::new(env!("CARGO_BIN_EXE_dsf"))
        .args(["dev", "up", "--smoke", "--topology", topology])
        .args(["--organizations", &organizations.to_string()])
        .args([
            "--base-port",
            &dsf_tests::free_port_range(organizations).to_string(),
        ])
        .arg("--dir")
        .arg(dir.path())
        .arg("--plugins")
        .arg(plugins.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let network: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("network.json")).unwrap())
            .unwrap();
    assert_eq!(
        network["organizations"].as_array().unwrap().len(),
        organizations as usize
    );
    for org in network["organizations"].as_array().unwrap() {
        assert!(std::path::Path::new(org["client_certificate"].as_str().unwrap()).exists());
        assert_eq!(org["thumbprint"].as_str().unwrap().len(), 128);
    }
    stdout
}

#[test]
fn star_network_allows_only_the_hub() {
    let out = run("star", 3);
    assert!(out.contains("all 12 checks passed"), "{out}");
    assert!(
        out.contains("org-b.dsf.test -> org-c.dsf.test: metadata 401"),
        "{out}"
    );
    assert!(
        out.contains("org-b.dsf.test -> org-a.dsf.test: metadata 200"),
        "{out}"
    );
}

#[test]
fn mesh_network_allows_everyone() {
    let out = run("mesh", 3);
    assert!(out.contains("all 12 checks passed"), "{out}");
    // Only the check lines count: a start-up time of 401 ms must not read as a refusal.
    assert!(!out.contains(": metadata 401"), "{out}");
    assert!(
        out.contains("org-c.dsf.test: websocket bound to Task?status=requested"),
        "{out}"
    );
    // The BPEs run the processes from plugin files, each its own process.
    assert!(
        out.contains("dsf-process-ping-pong  dsf-process-ping-pong 1.0.1.0: dsfdev_ping|1.0, dsfdev_pong|1.0, dsfdev_pingAutostart|1.0"),
        "{out}"
    );
    assert!(
        out.contains("dsf-process-allow-list  dsf-process-allow-list 1.0.0.1: dsfdev_updateAllowList|1.0, dsfdev_downloadAllowList|1.0"),
        "{out}"
    );
}

#[test]
fn dev_certs_writes_a_ca_and_certificates_that_chain_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dsf"))
        .args([
            "dev", "certs", "--org", "a.test", "--org", "b.test", "--user", "admin",
        ])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ca = dsf_core::load_certs(&dir.path().join("ca.crt")).unwrap();
    for org in ["a.test", "b.test"] {
        for kind in ["server", "client"] {
            let chain =
                dsf_core::load_certs(&dir.path().join(org).join(format!("{kind}.crt"))).unwrap();
            let key = dsf_core::load_private_key(&dir.path().join(org).join(format!("{kind}.key")))
                .unwrap();
            // Each pair loads into a TLS configuration trusting the dev CA.
            if kind == "server" {
                dsf_core::server_config(chain, key, ca.clone()).unwrap();
            } else {
                dsf_core::client_config(chain, key, ca.clone()).unwrap();
            }
        }
    }
    let admin = dsf_core::load_certs(&dir.path().join("admin.crt")).unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains(&dsf_core::Thumbprint::of_der(&admin[0]).to_string()),
        "{printed}"
    );
}
