//! The plugin file `dsf-process-allow-list` answers a BPE's hello with the plugin's
//! definition: the DSF's process ids and the Java class names its BPMN uses.

use dsf_plugin_api::protocol::definition_of_file;
use std::path::Path;

#[test]
fn the_plugin_file_sends_the_definition_of_the_crate() {
    let file = Path::new(env!("CARGO_BIN_EXE_dsf-process-allow-list"));
    let definition = definition_of_file(file).expect("definition");
    assert_eq!(definition, dsf_plugin_allow_list::plugin().to_protocol());
    for java in [
        "dev.dsf.bpe.service.UpdateAllowList",
        "dev.dsf.bpe.service.DownloadAllowList",
        "dev.dsf.bpe.service.CheckAllowList",
        "dev.dsf.bpe.service.InsertAllowList",
    ] {
        assert!(definition.handlers.iter().any(|h| h.name == java), "{java}");
    }
}
