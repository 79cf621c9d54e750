//! BPMN 2.0 for dsf-rs: a parser for process files as Camunda Modeler writes them for the Java
//! DSF, and a token engine whose process instances are plain serialisable data.
//!
//! This crate knows nothing of FHIR or HTTP. It is not implemented yet; see the project's
//! BPMN issue.
