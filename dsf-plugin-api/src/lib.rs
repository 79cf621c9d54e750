//! The traits and types DSF process plugin authors implement: plugin metadata, BPMN processes,
//! FHIR resources with `#{version}` placeholders, and the handlers the BPMN names.
//!
//! Not implemented yet; it follows the BPMN engine and the FHIR client.
