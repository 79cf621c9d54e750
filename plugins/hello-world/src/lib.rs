//! The smallest useful DSF process plugin, built in `docs/plugin-guide.md`: a Task with the
//! message `helloWorld` starts the process `exampleorg_helloWorld`, whose one service task adds
//! a greeting output to that Task; the BPE then completes it.
//!
//! Its second process, `exampleorg_helloUser` (message `helloUser`), asks a person: a user
//! task whose QuestionnaireResponse someone at the organisation answers (in the FHIR server's
//! browser pages, say), after which a service task adds their greeting to the start Task. A
//! draft Task to start it from ships with the plugin.
//!
//! ```
//! let plugin = dsf_plugin_hello_world::plugin();
//! assert_eq!(plugin.bpmn_files().len(), 2);
//! ```

use dsf_plugin_api::task::{add_output, parameter};
use dsf_plugin_api::{
    async_trait, json, PluginDefinition, ProcessApi, ProcessError, ServiceTask, Variables,
};

/// CodeSystem of the greeting output.
pub const HELLO_WORLD: &str = "http://example.org/fhir/CodeSystem/hello-world";

/// The process URL (`instantiatesCanonical` of start Tasks, with `|1.0`).
pub const PROCESS: &str = "http://example.org/bpe/Process/helloWorld";

/// The user process's URL.
pub const USER_PROCESS: &str = "http://example.org/bpe/Process/helloUser";

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
        .bpmn(
            "bpe/hello-user.bpmn",
            include_str!("../bpe/hello-user.bpmn"),
        )
        .fhir(
            "exampleorg_helloUser",
            "fhir/ActivityDefinition-hello-user.json",
            include_str!("../fhir/ActivityDefinition-hello-user.json"),
        )
        .fhir(
            "exampleorg_helloUser",
            "fhir/Questionnaire-hello-user.json",
            include_str!("../fhir/Questionnaire-hello-user.json"),
        )
        .fhir(
            "exampleorg_helloUser",
            "fhir/Task-start-hello-user.json",
            include_str!("../fhir/Task-start-hello-user.json"),
        )
        .service_task("org.example.Greet", Greet)
        .service_task("org.example.RecordGreeting", RecordGreeting)
}

/// Adds the greeting the user answered (item `greeting`, repeated `repeat` times) to the
/// start Task as `hello-world|user-greeting`.
struct RecordGreeting;

#[async_trait]
impl ServiceTask for RecordGreeting {
    async fn execute(
        &self,
        _api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let response = vars
            .questionnaire_response()
            .ok_or_else(|| ProcessError::failed("the user task has no answer"))?;
        let answer = |link_id: &str| {
            response["item"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|item| item["linkId"] == link_id)
                .map(|item| item["answer"][0].clone())
        };
        let greeting = answer("greeting")
            .and_then(|a| a["valueString"].as_str().map(str::to_owned))
            .ok_or_else(|| ProcessError::failed("the greeting was not answered"))?;
        let repeat = answer("repeat")
            .and_then(|a| a["valueInteger"].as_u64())
            .unwrap_or(1)
            .clamp(1, 10) as usize;
        let mut task = vars.start_task_or_fail()?;
        add_output(
            &mut task,
            parameter(
                HELLO_WORLD,
                "user-greeting",
                "valueString",
                json!(vec![greeting; repeat].join(" ")),
            ),
        );
        vars.update_task(task)
    }
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
