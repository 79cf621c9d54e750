/// The resource types the Java DSF FHIR server exposes (one JAX-RS service each); any other
/// type name in a URL is answered with 404.
pub const SUPPORTED_TYPES: [&str; 26] = [
    "ActivityDefinition",
    "Binary",
    "Bundle",
    "CodeSystem",
    "DocumentReference",
    "Endpoint",
    "Group",
    "HealthcareService",
    "Library",
    "Location",
    "Measure",
    "MeasureReport",
    "NamingSystem",
    "Organization",
    "OrganizationAffiliation",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "ResearchStudy",
    "StructureDefinition",
    "Subscription",
    "Task",
    "ValueSet",
];

/// Returns the canonical `&'static` spelling of a supported type name.
pub fn supported_type(name: &str) -> Option<&'static str> {
    SUPPORTED_TYPES.iter().copied().find(|t| *t == name)
}

/// The types profile validation reads (StructureDefinitions, and the value sets and code
/// systems their bindings name): a write to one of them changes what is valid.
pub const CONFORMANCE_TYPES: [&str; 3] = ["StructureDefinition", "ValueSet", "CodeSystem"];
