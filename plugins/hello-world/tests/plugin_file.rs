//! The plugin file `dsf-process-hello-world` answers a BPE's hello with the plugin's
//! definition, and describes itself when run by hand.

use dsf_plugin_api::protocol::definition_of_file;
use std::path::Path;

#[test]
fn the_plugin_file_sends_the_definition_of_the_crate() {
    let file = Path::new(env!("CARGO_BIN_EXE_dsf-process-hello-world"));
    let definition = definition_of_file(file).expect("definition");
    assert_eq!(definition, dsf_plugin_hello_world::plugin().to_protocol());
}

#[test]
fn run_by_hand_it_describes_itself() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dsf-process-hello-world"))
        .arg("--describe")
        .output()
        .expect("runs");
    assert!(output.status.success());
    let description: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("JSON description");
    assert_eq!(description["name"], "hello-world");
    assert_eq!(description["bpmn"][0], "bpe/hello-world.bpmn");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dsf-process-hello-world"))
        .arg("--no-such-flag")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("plugin directory"));
}
