//! Rust code bound to the names a BPMN file uses for it (`camunda:class`,
//! `camunda:delegateExpression`, `camunda:expression`), so that a file written for the Java DSF
//! runs unchanged against Rust handlers.

use crate::expr::VariableLookup;
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// What a handler may do instead of finishing normally.
///
/// A failure is text, not an error with a source: the engine stores it with the instance
/// (`InstanceState::Failed`), where it must outlive the process that raised it. Whoever
/// binds handlers renders its own error's whole chain into that text (dsf-engine does so for
/// a plugin's `ProcessError`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// A BPMN error: caught by an error boundary event with a matching code (or none), else
    /// the instance fails.
    #[error("BPMN error {code}: {message}")]
    Bpmn {
        /// The error code boundary events are matched by.
        code: String,
        /// What happened, for the log.
        message: String,
    },
    /// A technical failure: retried as `camunda:failedJobRetryTimeCycle` says when the
    /// activity is asynchronous, else the instance fails.
    #[error("{0}")]
    Failed(String),
}

/// What a handler sees and changes of the running instance.
pub struct HandlerContext<'a> {
    /// The id of the process the instance runs.
    pub process_id: &'a str,
    /// The instance's id.
    pub instance_id: &'a str,
    /// The instance's business key, once set.
    pub business_key: Option<&'a str>,
    /// The element the handler runs for (a task, event or listener's element).
    pub element_id: &'a str,
    /// `start` or `end` for execution listeners, `create` for task listeners, `None` for the
    /// element's own behaviour.
    pub listener_event: Option<&'a str>,
    /// `camunda:field` values, expressions already evaluated.
    pub fields: &'a Map<String, Value>,
    /// Variables visible here (the element's scope and its parents) as they were on entry.
    pub(crate) visible: &'a Map<String, Value>,
    /// Variables the handler sets; written to the scope that holds each name, else the
    /// element's scope (`set_local`) or the instance (`set`).
    pub(crate) writes: Vec<(String, Value, bool)>,
}

impl HandlerContext<'_> {
    /// A variable visible here, with what the handler set so far.
    pub fn variable(&self, name: &str) -> Option<&Value> {
        self.writes
            .iter()
            .rev()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v)
            .or_else(|| self.visible.get(name))
    }

    /// Every variable visible here, with the handler's own writes applied: what a handler
    /// that runs elsewhere (another process) is handed.
    pub fn variables(&self) -> Map<String, Value> {
        let mut all = self.visible.clone();
        for (name, value, _) in &self.writes {
            all.insert(name.clone(), value.clone());
        }
        all
    }

    /// A variable that is text, as [`HandlerContext::variable`].
    pub fn variable_str(&self, name: &str) -> Option<&str> {
        self.variable(name).and_then(Value::as_str)
    }

    /// Sets a variable where it already lives, or on the instance.
    pub fn set(&mut self, name: &str, value: Value) {
        self.writes.push((name.to_owned(), value, false));
    }

    /// Sets a variable on the element's own scope (a multi-instance iteration, a subprocess).
    pub fn set_local(&mut self, name: &str, value: Value) {
        self.writes.push((name.to_owned(), value, true));
    }

    /// A `camunda:field` value of the element.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }
}

impl VariableLookup for HandlerContext<'_> {
    fn variable(&self, name: &str) -> Option<Value> {
        HandlerContext::variable(self, name).cloned()
    }
}

/// One piece of process code.
#[async_trait]
pub trait ElementHandler: Send + Sync {
    /// Runs for the element `context` names.
    async fn execute(&self, context: &mut HandlerContext<'_>) -> Result<(), HandlerError>;
}

/// A handler from an async closure-like function, for small handlers and tests.
pub struct FnHandler<F>(pub F);

#[async_trait]
impl<F> ElementHandler for FnHandler<F>
where
    F: Fn(&mut HandlerContext<'_>) -> Result<(), HandlerError> + Send + Sync,
{
    async fn execute(&self, context: &mut HandlerContext<'_>) -> Result<(), HandlerError> {
        (self.0)(context)
    }
}

/// Handlers by the name the BPMN file uses: the `camunda:class` value
/// (`dev.dsf.bpe.service.Ping`), or for `camunda:delegateExpression` / `camunda:expression` the
/// expression with or without `${…}` (`${pingTask}` and `pingTask` both bind).
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn ElementHandler>>,
}

impl Registry {
    /// No handlers.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Binds `handler` to `name` (a class name or a delegate expression, braces or not).
    pub fn bind(&mut self, name: &str, handler: impl ElementHandler + 'static) -> &mut Self {
        self.handlers
            .insert(strip_braces(name).to_owned(), Arc::new(handler));
        self
    }

    /// Binds a closure to `name`, as [`Registry::bind`].
    pub fn bind_fn(
        &mut self,
        name: &str,
        f: impl Fn(&mut HandlerContext<'_>) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.bind(name, FnHandler(f))
    }

    /// The handler bound to `name`, braces or not.
    pub fn get(&self, name: &str) -> Option<Arc<dyn ElementHandler>> {
        self.handlers.get(strip_braces(name)).cloned()
    }
}

/// The name a behaviour is bound under: `${pingTask}`, `#{pingTask}` and `pingTask` are one.
pub fn handler_name(name: &str) -> &str {
    strip_braces(name)
}

fn strip_braces(name: &str) -> &str {
    let trimmed = name.trim();
    trimmed
        .strip_prefix("${")
        .or_else(|| trimmed.strip_prefix("#{"))
        .and_then(|r| r.strip_suffix('}'))
        .map_or(trimmed, str::trim)
}
