//! The profiles the Java DSF assigns by resource type: needed by the server before it
//! validates, and by a client that wants to compare what it sends with what the server keeps.

use serde_json::Value;

/// The profile the Java DSF gives a resource of `resource_type` that claims none of the
/// profiles it accepts for the type (none for Task and Binary's raw uploads aside).
pub fn default_profiles(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "Task" => &[],
        "Organization" => &[
            "http://dsf.dev/fhir/StructureDefinition/organization",
            "http://dsf.dev/fhir/StructureDefinition/organization-parent",
        ],
        "ActivityDefinition" => &["http://dsf.dev/fhir/StructureDefinition/activity-definition"],
        "Binary" => &["http://dsf.dev/fhir/StructureDefinition/binary"],
        "Bundle" => &["http://dsf.dev/fhir/StructureDefinition/bundle"],
        "CodeSystem" => &["http://dsf.dev/fhir/StructureDefinition/code-system"],
        "DocumentReference" => &["http://dsf.dev/fhir/StructureDefinition/document-reference"],
        "Endpoint" => &["http://dsf.dev/fhir/StructureDefinition/endpoint"],
        "Group" => &["http://dsf.dev/fhir/StructureDefinition/group"],
        "HealthcareService" => &["http://dsf.dev/fhir/StructureDefinition/healthcare-service"],
        "Library" => &["http://dsf.dev/fhir/StructureDefinition/library"],
        "Location" => &["http://dsf.dev/fhir/StructureDefinition/location"],
        "Measure" => &["http://dsf.dev/fhir/StructureDefinition/measure"],
        "MeasureReport" => &["http://dsf.dev/fhir/StructureDefinition/measure-report"],
        "NamingSystem" => &["http://dsf.dev/fhir/StructureDefinition/naming-system"],
        "OrganizationAffiliation" => {
            &["http://dsf.dev/fhir/StructureDefinition/organization-affiliation"]
        }
        "Patient" => &["http://dsf.dev/fhir/StructureDefinition/patient"],
        "Practitioner" => &["http://dsf.dev/fhir/StructureDefinition/practitioner"],
        "PractitionerRole" => &["http://dsf.dev/fhir/StructureDefinition/practitioner-role"],
        "Provenance" => &["http://dsf.dev/fhir/StructureDefinition/provenance"],
        "Questionnaire" => &["http://dsf.dev/fhir/StructureDefinition/questionnaire"],
        "QuestionnaireResponse" => {
            &["http://dsf.dev/fhir/StructureDefinition/questionnaire-response"]
        }
        "ResearchStudy" => &["http://dsf.dev/fhir/StructureDefinition/research-study"],
        "StructureDefinition" => &["http://dsf.dev/fhir/StructureDefinition/structure-definition"],
        "Subscription" => &["http://dsf.dev/fhir/StructureDefinition/subscription"],
        "ValueSet" => &["http://dsf.dev/fhir/StructureDefinition/value-set"],
        _ => &[],
    }
}

/// Puts the type's default profile first in `meta.profile` unless the resource claims one
/// of the profiles the type accepts (versions aside), as the Java DSF does before validating.
pub fn set_default_profile(resource: &mut Value) {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return;
    };
    let accepted = default_profiles(resource_type);
    let Some(default) = accepted.first() else {
        return;
    };
    let claimed = |profile: &Value| {
        profile
            .as_str()
            .map(|p| p.split('|').next().unwrap_or(p))
            .is_some_and(|p| accepted.contains(&p))
    };
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let meta = object
        .entry("meta")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let profiles = meta
        .entry("profile")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(list) = profiles.as_array_mut() {
        if !list.iter().any(claimed) {
            list.insert(0, Value::String((*default).to_owned()));
        }
    }
}
