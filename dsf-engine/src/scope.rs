//! A handler call's view of its process instance: the dsf-bpmn handler context as the plugin
//! API's variable scope, and the clock value plugin-facing resources carry.

use dsf_bpmn::engine::HandlerContext;
use dsf_plugin_api::VariableScope;
use serde_json::{Map, Value};

/// A handler context as the plugin API's variable scope.
pub(crate) struct ContextScope<'c, 'a>(pub(crate) &'c mut HandlerContext<'a>);

impl VariableScope for ContextScope<'_, '_> {
    fn get(&self, name: &str) -> Option<Value> {
        self.0.variable(name).cloned()
    }

    fn variables(&self) -> Map<String, Value> {
        self.0.variables()
    }

    fn set(&mut self, name: &str, value: Value) {
        self.0.set(name, value);
    }

    fn set_local(&mut self, name: &str, value: Value) {
        self.0.set_local(name, value);
    }
}

/// What a handler call needs besides the scope, copied out of the context so that the scope
/// can borrow it mutably.
pub(crate) struct CallInfo {
    pub business_key: Option<String>,
    pub instance_id: String,
    pub element_id: String,
    pub fields: Map<String, Value>,
}

impl CallInfo {
    pub(crate) fn of(context: &HandlerContext<'_>) -> Self {
        CallInfo {
            business_key: context.business_key.map(str::to_owned),
            instance_id: context.instance_id.to_owned(),
            element_id: context.element_id.to_owned(),
            fields: context.fields.clone(),
        }
    }
}

/// Binds `$vars` to the plugin API's view of the handler context `$context` for `$body`.
macro_rules! with_vars {
    ($context:expr, $vars:ident => $body:expr) => {{
        let info = $crate::scope::CallInfo::of($context);
        let mut scope = $crate::scope::ContextScope($context);
        #[allow(unused_mut)]
        let mut $vars = dsf_plugin_api::Variables::new(
            &mut scope,
            info.business_key.as_deref(),
            &info.instance_id,
            &info.element_id,
            &info.fields,
        );
        $body
    }};
}
pub(crate) use with_vars;

/// Now as a FHIR instant with milliseconds (a Task's `authoredOn`).
pub(crate) fn now_instant() -> String {
    let now = time::OffsetDateTime::now_utc();
    let millis = now.millisecond();
    let now = now
        .replace_nanosecond(u32::from(millis) * 1_000_000)
        .unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
