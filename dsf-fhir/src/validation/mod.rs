//! Profile validation: the Java DSF validates every resource it stores against the
//! StructureDefinitions stored on the server (the DSF base profiles among them, see
//! [`base_definitions`]) and refuses what breaks them with 403. This module does the same
//! for the FHIR R4 rules profiles use, without HAPI:
//!
//! - [`model`]: the R4 element tree (cardinalities and types of every data and resource type);
//! - [`profile`]: profiles compiled from differentials along `baseDefinition`, rendered as
//!   snapshots for `$snapshot`;
//! - [`registry`]: the conformance resources one validation sees, with compiled profiles and
//!   expanded value sets cached;
//! - [`fhirpath`]: the FHIRPath subset invariants are written in;
//! - [`validator`]: the walk over a resource that reports each broken rule with its location.
//!
//! Not checked (reported as warnings at most): profiles, value sets and code systems this
//! server does not have, FHIRPath beyond the subset, reference targets, slice order
//! (`openAtEnd`, `ordered`), and the core specification's own invariants and bindings.

pub mod fhirpath;
pub mod model;
pub mod profile;
pub mod registry;
pub mod validator;

pub use registry::{Definitions, CONFORMANCE_TYPES};
pub use validator::{validate, Issue, Report, Severity};

pub use crate::default_profile::{default_profiles, set_default_profile};
use serde_json::Value;

/// The DSF base conformance resources (StructureDefinitions, CodeSystems, ValueSets,
/// NamingSystems of DSF 2), as the server stores them at start-up. Made from the Java DSF's
/// `dsf-fhir-validation` resources by `scripts/import-dsf-definitions.py`.
pub fn base_definitions() -> Vec<(&'static str, Value)> {
    BASE_DEFINITIONS
        .iter()
        .filter_map(|(name, text)| Some((*name, serde_json::from_str(text).ok()?)))
        .collect()
}

include!("base_files.rs");

/// `definition` with its snapshot: the base's elements with the differentials of the
/// `baseDefinition` chain and its own applied (what `$snapshot` answers).
pub fn with_snapshot(definitions: &Definitions, definition: &Value) -> Result<Value, String> {
    let root = definitions.profile_of(definition)?;
    let mut elements = Vec::new();
    root.snapshot(&mut elements, true);
    let mut out = definition.clone();
    out["snapshot"] = serde_json::json!({ "element": elements });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_base_definition_file_is_listed_and_parses() {
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/definitions/dsf");
        let mut on_disk: Vec<String> = std::fs::read_dir(folder)
            .expect("definitions folder")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        on_disk.sort();
        let listed: Vec<String> = BASE_DEFINITIONS
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        assert_eq!(listed, on_disk);
        assert_eq!(base_definitions().len(), BASE_DEFINITIONS.len());
    }

    #[test]
    fn every_base_profile_compiles() {
        let definitions = Definitions::new(base_definitions().into_iter().map(|(_, r)| r));
        for (name, resource) in base_definitions() {
            if resource["resourceType"] != "StructureDefinition" {
                continue;
            }
            let url = resource["url"].as_str().expect("url");
            let version = resource["version"].as_str().expect("version");
            definitions
                .profile(&format!("{url}|{version}"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn the_default_profile_goes_first_unless_an_accepted_one_is_claimed() {
        let mut endpoint = serde_json::json!({"resourceType": "Endpoint", "meta": {"profile": ["http://example.org/p"]}});
        set_default_profile(&mut endpoint);
        assert_eq!(
            endpoint["meta"]["profile"][0],
            "http://dsf.dev/fhir/StructureDefinition/endpoint"
        );
        let mut parent = serde_json::json!({"resourceType": "Organization", "meta": {"profile": ["http://dsf.dev/fhir/StructureDefinition/organization-parent|2.0.0"]}});
        set_default_profile(&mut parent);
        assert_eq!(parent["meta"]["profile"].as_array().map(Vec::len), Some(1));
        let mut task = serde_json::json!({"resourceType": "Task"});
        set_default_profile(&mut task);
        assert!(task.get("meta").is_none());
    }

    /// A required primitive given only by its extensions (`_status`) is present; one given
    /// not at all is missing, and the issue names where.
    #[test]
    fn a_primitive_given_by_its_extensions_alone_is_present() {
        let definitions = Definitions::new(base_definitions().into_iter().map(|(_, r)| r));
        let absent = "minimum cardinality 1 not met";
        let mut task = serde_json::json!({
            "resourceType": "Task",
            "intent": "order",
            "_status": {"extension": [{
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown"
            }]}
        });
        let report = validate(&definitions, &task);
        assert!(
            !report.issues.iter().any(|i| i.message.contains(absent)),
            "{:?}",
            report.issues
        );
        task.as_object_mut().map(|t| t.remove("_status"));
        let report = validate(&definitions, &task);
        assert!(
            report
                .errors()
                .any(|i| i.location == "Task.status" && i.message.contains(absent)),
            "{:?}",
            report.issues
        );
    }
}
