//! The allow-list plugin as a plugin file: copy the built executable into a BPE's plugin
//! directory (`DEV_DSF_BPE_PROCESS_PLUGIN_DIRECTORY`); the BPE starts it.

fn main() -> std::process::ExitCode {
    dsf_plugin_api::serve(dsf_plugin_allow_list::plugin())
}
