//! The plugin file `dsf-process-ping-pong` answers a BPE's hello with the plugin's definition.

use dsf_plugin_api::protocol::{definition_of_file, HandlerKind};
use std::path::Path;

#[test]
fn the_plugin_file_sends_the_definition_of_the_crate() {
    let file = Path::new(env!("CARGO_BIN_EXE_dsf-process-ping-pong"));
    let definition = definition_of_file(file).expect("definition");
    let linked = dsf_plugin_ping_pong::plugin().to_protocol();
    assert_eq!(definition, linked);
    assert_eq!(definition.name, "dsf-process-ping-pong");
    assert_eq!(definition.bpmn.len(), 3);
    assert!(definition
        .handlers
        .iter()
        .any(|h| h.name == "dev.dsf.bpe.message.SendPong" && h.kind == HandlerKind::MessageSend));
}
