//! BPMN 2.0 for dsf-rs: the model of a process as DSF plugin authors write it in Camunda
//! Modeler, and a parser that reads such files unchanged.
//!
//! Anything the parser does not support is an error naming the file, line and element id;
//! nothing is skipped silently, except diagram (BPMNDI) content and non-executable artifacts
//! (documentation, annotations, lanes).
//!
//! [`engine::Engine`] runs parsed processes one step at a time over plain serde instances,
//! calling Rust handlers bound by the names the file uses (`camunda:class`, expressions);
//! [`expr`] evaluates the JUEL subset DSF files use. Nothing here knows of FHIR.
//!
//! What each element does when a token reaches it lives in one file per element family, next
//! to the engine's core (`src/engine/mod.rs`: deployment, starting, correlating, stepping and
//! the token leaving a node): `src/engine/activities.rs` (tasks, handlers, listeners, retries),
//! `src/engine/events.rs` (start, end, throw, catch and boundary events, waits, signals,
//! errors), `src/engine/gateways.rs` (exclusive, parallel, inclusive and event-based gateways,
//! joins) and `src/engine/scopes.rs` (subprocesses, event subprocesses, call activities,
//! multi-instance bodies, completion and termination).
//!
//! ```
//! let xml = r#"<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
//!       xmlns:camunda="http://camunda.org/schema/1.0/bpmn">
//!   <bpmn:process id="dsfdev_ping" isExecutable="true" camunda:versionTag="1.0">
//!     <bpmn:startEvent id="start"><bpmn:messageEventDefinition messageRef="m"/></bpmn:startEvent>
//!     <bpmn:sequenceFlow id="f" sourceRef="start" targetRef="end"/>
//!     <bpmn:endEvent id="end"/>
//!   </bpmn:process>
//!   <bpmn:message id="m" name="startPing"/>
//! </bpmn:definitions>"#;
//! let definitions = dsf_bpmn::parse(xml.as_bytes(), "ping.bpmn").unwrap();
//! assert_eq!(definitions.processes[0].version_tag.as_deref(), Some("1.0"));
//! ```

pub mod engine;
mod error;
pub mod expr;
mod model;
mod parse;
mod tree;
mod validate;

/// Handlers are implemented with this attribute; re-exported so that implementing one needs
/// no dependency of its own.
pub use async_trait::async_trait;
pub use error::{Error, Result};
pub use model::*;
pub use parse::parse;
