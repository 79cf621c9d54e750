//! The DSF business process engine (BPE): runs plugin processes on `dsf-bpmn`, starts and
//! continues them from Task resources on the local `dsf-fhir` server, and sends Tasks to other
//! organisations.
//!
//! Not implemented yet; it composes the crates below it once they exist.
