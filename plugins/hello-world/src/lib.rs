//! The smallest useful DSF process plugin, built in `docs/plugin-guide.md`: a Task with the
//! message `helloWorld` starts the process `exampleorg_helloWorld`, whose one service task adds
//! a greeting output to that Task; the BPE then completes it.
//!
//! ```
//! let plugin = dsf_plugin_hello_world::plugin();
//! assert_eq!(plugin.bpmn_files().len(), 1);
//! ```

use dsf_plugin_api::task::{add_output, parameter};
use dsf_plugin_api::{
    async_trait, json, PluginDefinition, ProcessApi, ProcessError, ServiceTask, Variables,
};

/// CodeSystem of the greeting output.
pub const HELLO_WORLD: &str = "http://example.org/fhir/CodeSystem/hello-world";

/// The process URL (`instantiatesCanonical` of start Tasks, with `|1.0`).
pub const PROCESS: &str = "http://example.org/bpe/Process/helloWorld";

/// The plugin: metadata, one BPMN file, its ActivityDefinition and its one handler.
pub fn plugin() -> PluginDefinition {
    PluginDefinition::new("hello-world", "1.0.0.0", "2026-11-28")
        .unwrap_or_else(|e| unreachable!("the plugin's own metadata is valid: {e}"))
        .bpmn(
            "bpe/hello-world.bpmn",
            include_str!("../bpe/hello-world.bpmn"),
        )
        .fhir(
            "exampleorg_helloWorld",
            "fhir/ActivityDefinition-hello-world.json",
            include_str!("../fhir/ActivityDefinition-hello-world.json"),
        )
        .service_task("org.example.Greet", Greet)
}

/// Adds `hello-world|greeting` = "Hello, <requester>!" to the start Task.
struct Greet;

#[async_trait]
impl ServiceTask for Greet {
    async fn execute(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let mut task = vars.start_task_or_fail()?;
        let requester = dsf_plugin_api::task::requester(&task)
            .unwrap_or(api.local_organization())
            .to_owned();
        let greeting = format!("Hello, {requester}!");
        add_output(
            &mut task,
            parameter(HELLO_WORLD, "greeting", "valueString", json!(greeting)),
        );
        // The engine writes the stored copy of the Task when the process ends.
        vars.update_task(task)
    }
}
