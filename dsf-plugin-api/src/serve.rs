//! A plugin crate as a plugin file: [`serve`] turns its `main` into the executable a BPE starts
//! from its plugin directory, speaking the [`protocol`](crate::protocol) over standard input
//! and output. Handlers run unchanged: their [`ProcessApi`] hands every FHIR request to the BPE.

use crate::protocol::{
    self, Call, CallError, CallResult, Definition, FhirRequest, FhirResponse, FromPlugin,
    HandlerDeclaration, HandlerKind, Hello, Hook, ToPlugin, VariableChange,
};
use crate::{Error, Handler, PluginDefinition, ProcessApi, ProcessError, VariableScope, Variables};
use async_trait::async_trait;
use base64::Engine as _;
use dsf_fhir::client::{RawResponse, Transport, TransportRequest};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use std::collections::HashMap;
#[cfg(feature = "serve")]
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Runs `plugin` as a plugin file: `fn main() -> ExitCode { dsf_plugin_api::serve(plugin()) }`.
///
/// Started by a BPE, it answers the BPE's hello with the plugin's definition and runs handler
/// calls until the BPE closes its standard input. Run by hand, `--describe` prints what the
/// file holds (name, version, processes, handlers) as JSON. Logs go to standard error, which
/// the BPE writes to its own log under the plugin's name.
#[cfg(feature = "serve")]
pub fn serve(plugin: PluginDefinition) -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => {}
        Some("--describe") => {
            let definition = plugin.to_protocol();
            let files = |files: Vec<protocol::File>| -> Vec<String> {
                files.into_iter().map(|f| f.path).collect()
            };
            let description = serde_json::json!({
                "name": definition.name,
                "version": definition.version,
                "releaseDate": definition.release_date,
                "protocol": protocol::PROTOCOL_VERSION,
                "bpmn": files(definition.bpmn),
                "fhir": definition.fhir.iter().map(|f| format!("{}: {}", f.process, f.path)).collect::<Vec<_>>(),
                "handlers": definition.handlers,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&description).unwrap_or_default()
            );
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!(
                "{}: unknown argument '{other}'. This is a DSF process plugin file ({} {}): put it in the BPE's plugin directory (DEV_DSF_BPE_PROCESS_PLUGIN_DIRECTORY); --describe prints what it holds.",
                std::env::args().next().unwrap_or_default(),
                plugin.name(),
                plugin.version()
            );
            return ExitCode::from(2);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the plugin's runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_on(plugin, tokio::io::stdin(), tokio::io::stdout())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "plugin stopped");
            ExitCode::FAILURE
        }
    }
}

/// Serves `plugin` over `reader` (from the BPE) and `writer` (to the BPE) until the BPE
/// closes `reader`. [`serve`] runs it on standard input and output; tests and tools run it on
/// pipes of their own.
pub async fn serve_on(
    plugin: PluginDefinition,
    reader: impl AsyncRead + Unpin + Send + 'static,
    writer: impl AsyncWrite + Unpin + Send + 'static,
) -> Result<(), Error> {
    let mut frames = FramedRead::new(reader, protocol::codec());
    let hello = match frames.next().await {
        Some(Ok(frame)) => match serde_json::from_slice::<ToPlugin>(&frame) {
            Ok(ToPlugin::Hello(hello)) => hello,
            Ok(_) => return Err(Error::NoHello),
            Err(error) => return Err(Error::Garbage(error)),
        },
        Some(Err(error)) => return Err(Error::Read(error)),
        None => return Err(Error::NoHello),
    };
    if hello.protocol != protocol::PROTOCOL_VERSION {
        return Err(Error::ProtocolVersion(
            hello.protocol,
            protocol::PROTOCOL_VERSION,
        ));
    }
    let (outgoing, mut queue) = mpsc::unbounded_channel::<FromPlugin>();
    let writing = tokio::spawn(async move {
        let mut sink = FramedWrite::new(writer, protocol::codec());
        while let Some(message) = queue.recv().await {
            let bytes = serde_json::to_vec(&message).unwrap_or_default();
            sink.send(bytes::Bytes::from(bytes)).await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let _ = outgoing.send(FromPlugin::Definition(plugin.to_protocol()));
    let plugin = Arc::new(Served {
        handlers: plugin.handlers().iter().cloned().collect(),
        hello,
        outgoing: outgoing.clone(),
        pending: Mutex::new(HashMap::new()),
        next_request: AtomicU64::new(1),
    });
    let result = loop {
        let frame = match frames.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => break Err(Error::Read(error)),
            None => break Ok(()),
        };
        match serde_json::from_slice::<ToPlugin>(&frame) {
            Ok(ToPlugin::Call(call)) => {
                let plugin = plugin.clone();
                tokio::spawn(async move {
                    let result = plugin.clone().run(call).await;
                    let _ = plugin.outgoing.send(FromPlugin::Result(result));
                });
            }
            Ok(ToPlugin::FhirResponse(response)) => {
                let waiting = plugin
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&response.id);
                if let Some(waiting) = waiting {
                    let _ = waiting.send(response);
                }
            }
            Ok(ToPlugin::Hello(_)) => tracing::warn!("the BPE said hello twice; ignored"),
            Err(error) => break Err(Error::Garbage(error)),
        }
    };
    drop(plugin);
    drop(outgoing);
    match writing.await {
        Ok(Err(error)) if result.is_ok() => Err(Error::Write(error)),
        _ => result,
    }
}

impl PluginDefinition {
    /// The definition as a plugin file sends it.
    pub fn to_protocol(&self) -> Definition {
        Definition {
            protocol: protocol::PROTOCOL_VERSION,
            name: self.name().to_owned(),
            version: self.version_text().to_owned(),
            release_date: self.release_date_text(),
            bpmn: self
                .bpmn_files()
                .iter()
                .map(|f| protocol::File {
                    path: f.path.clone(),
                    contents: f.contents.to_string(),
                })
                .collect(),
            fhir: self
                .fhir_files()
                .iter()
                .map(|(process, f)| protocol::FhirFile {
                    process: process.clone(),
                    path: f.path.clone(),
                    contents: f.contents.to_string(),
                })
                .collect(),
            handlers: self
                .handlers()
                .iter()
                .map(|(name, handler)| HandlerDeclaration {
                    name: name.clone(),
                    kind: handler.protocol_kind(),
                    business_key_strategy: match handler {
                        Handler::MessageSend(h) => Some(h.business_key_strategy()),
                        _ => None,
                    },
                })
                .collect(),
            max_concurrent_calls: None,
        }
    }
}

impl Handler {
    fn protocol_kind(&self) -> HandlerKind {
        match self {
            Handler::ServiceTask(_) => HandlerKind::ServiceTask,
            Handler::MessageSend(_) => HandlerKind::MessageSend,
            Handler::ExecutionListener(_) => HandlerKind::ExecutionListener,
            Handler::UserTaskListener(_) => HandlerKind::UserTaskListener,
        }
    }
}

/// The plugin's side of one connection to a BPE.
struct Served {
    handlers: HashMap<String, Handler>,
    hello: Hello,
    outgoing: mpsc::UnboundedSender<FromPlugin>,
    /// FHIR requests sent to the BPE and not yet answered.
    pending: Mutex<HashMap<u64, oneshot::Sender<FhirResponse>>>,
    next_request: AtomicU64,
}

/// A call's variables: read from what the BPE sent, each write recorded for the answer.
struct RecordingScope {
    values: Map<String, Value>,
    changes: Vec<VariableChange>,
}

impl VariableScope for RecordingScope {
    fn get(&self, name: &str) -> Option<Value> {
        self.values.get(name).cloned()
    }

    fn variables(&self) -> Map<String, Value> {
        self.values.clone()
    }

    fn set(&mut self, name: &str, value: Value) {
        self.record(name, value, false);
    }

    fn set_local(&mut self, name: &str, value: Value) {
        self.record(name, value, true);
    }
}

impl RecordingScope {
    fn record(&mut self, name: &str, value: Value, local: bool) {
        self.values.insert(name.to_owned(), value.clone());
        self.changes.push(VariableChange {
            name: name.to_owned(),
            value,
            local,
        });
    }
}

impl Served {
    async fn run(self: Arc<Self>, call: Call) -> CallResult {
        use futures_util::FutureExt;
        let id = call.id;
        let handler = call.handler.clone();
        match std::panic::AssertUnwindSafe(self.dispatch(call))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                tracing::error!(%handler, %message, "handler panicked");
                CallResult {
                    id,
                    error: Some(CallError::Failed {
                        message: format!("handler '{handler}' panicked: {message}"),
                    }),
                    ..CallResult::default()
                }
            }
        }
    }

    async fn dispatch(self: Arc<Self>, call: Call) -> CallResult {
        let mut result = CallResult {
            id: call.id,
            ..CallResult::default()
        };
        let transport = Arc::new(CallTransport {
            plugin: self.clone(),
            call: call.id,
        });
        let api = match ProcessApi::with_transport(
            &self.hello.fhir_base_url,
            transport,
            &self.hello.organization,
            self.hello.endpoint.clone(),
        ) {
            Ok(api) => api,
            Err(error) => {
                result.error = Some(error.into());
                return result;
            }
        };
        let Some(handler) = self.handlers.get(&call.handler) else {
            result.error = Some(CallError::Failed {
                message: format!("the plugin has no handler '{}'", call.handler),
            });
            return result;
        };
        let context = call.context;
        let mut scope = RecordingScope {
            values: context.variables,
            changes: Vec::new(),
        };
        let mut vars = Variables::new(
            &mut scope,
            context.business_key.as_deref(),
            &context.instance_id,
            &context.element_id,
            &context.fields,
        );
        let send = call.send;
        let missing = |what: &str| {
            Err(ProcessError::failed(format!(
                "the BPE's call of '{}' ({:?}) carries no {what}",
                call.handler, call.hook
            )))
        };
        let outcome: Result<(), ProcessError> = match (handler, call.hook) {
            (Handler::ServiceTask(h), Hook::Execute) => h.execute(&api, &mut vars).await,
            (Handler::ExecutionListener(h), Hook::Notify) => h.notify(&api, &mut vars).await,
            (Handler::MessageSend(h), Hook::AdditionalInputs) => match &send {
                Some(send) => h
                    .additional_inputs(&api, &vars, send)
                    .await
                    .map(|inputs| result.inputs = Some(inputs)),
                None => missing("send context"),
            },
            (Handler::MessageSend(h), Hook::AfterSend) => match &send {
                Some(send) => h.after_send(&api, &mut vars, send).await,
                None => missing("send context"),
            },
            (Handler::MessageSend(h), Hook::OnSendError) => match (&send, &call.send_error) {
                (Some(send), Some(error)) => h.on_send_error(&api, &mut vars, send, error).await,
                _ => missing("send context and error"),
            },
            (Handler::UserTaskListener(h), Hook::BeforeCreate) => {
                match call.questionnaire_response {
                    Some(mut response) => {
                        let outcome = h.before_create(&api, &mut vars, &mut response).await;
                        result.questionnaire_response = Some(response);
                        outcome
                    }
                    None => missing("QuestionnaireResponse"),
                }
            }
            (Handler::UserTaskListener(h), Hook::AfterCreate) => match &call.questionnaire_response
            {
                Some(response) => h.after_create(&api, &mut vars, response).await,
                None => missing("QuestionnaireResponse"),
            },
            (handler, hook) => Err(ProcessError::failed(format!(
                "'{}' is a {} handler; it has no hook {hook:?}",
                call.handler,
                handler.kind()
            ))),
        };
        result.changes = scope.changes;
        if let Err(error) = outcome {
            result.error = Some(error.into());
        }
        result
    }
}

/// The FHIR requests of one call, carried by the BPE.
struct CallTransport {
    plugin: Arc<Served>,
    call: u64,
}

#[async_trait]
impl Transport for CallTransport {
    async fn send(
        &self,
        base_url: &str,
        request: TransportRequest,
    ) -> dsf_fhir::Result<RawResponse> {
        let id = self.plugin.next_request.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.plugin
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, answer);
        let message = FromPlugin::Fhir(FhirRequest {
            id,
            call: self.call,
            base_url: base_url.to_owned(),
            method: request.method.to_string(),
            path: request.path,
            headers: request.headers,
            body: request
                .body
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        });
        if self.plugin.outgoing.send(message).is_err() {
            return Err(dsf_fhir::Error::transport_fault(
                "the connection to the BPE is closed",
            ));
        }
        let response = answered.await.map_err(|_| {
            dsf_fhir::Error::transport_fault("the BPE closed before answering a FHIR request")
        })?;
        response_from_protocol(response)
    }
}

/// A [`FhirResponse`] as the client's raw response, or the transport error it reports.
pub(crate) fn response_from_protocol(response: FhirResponse) -> dsf_fhir::Result<RawResponse> {
    if let Some(error) = response.error {
        return Err(dsf_fhir::Error::transport_fault(error));
    }
    let status = response
        .status
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .ok_or_else(|| dsf_fhir::Error::transport_fault("FHIR response without a valid status"))?;
    let mut headers = http::HeaderMap::new();
    for (name, value) in response.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    let body = match response.body {
        Some(body) => base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| dsf_fhir::Error::transport_fault(format!("FHIR response body: {e}")))?,
        None => Vec::new(),
    };
    Ok(RawResponse {
        status,
        headers,
        body: body.into(),
    })
}
