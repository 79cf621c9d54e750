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
use dsf_core::ErrorChain;
use dsf_fhir::client::{RawResponse, Transport, TransportRequest};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use std::collections::HashMap;
#[cfg(feature = "serve")]
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the plugin's runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_stdio(plugin)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %ErrorChain(&error), "plugin stopped");
            ExitCode::FAILURE
        }
    }
}

/// Serves `plugin` on standard input and output. Started by a BPE they are pipes, read and
/// written without blocking threads (tokio's own stdin and stdout hand every read and write to
/// a thread of the blocking pool, which would cost each call several thread switches).
#[cfg(feature = "serve")]
async fn serve_stdio(plugin: PluginDefinition) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::FileTypeExt;
        use tokio::net::unix::pipe;
        let stdin = std::io::stdin().as_fd().try_clone_to_owned();
        let stdout = std::io::stdout().as_fd().try_clone_to_owned();
        if let (Ok(stdin), Ok(stdout)) = (stdin, stdout) {
            let (stdin, stdout) = (std::fs::File::from(stdin), std::fs::File::from(stdout));
            let fifo = |f: &std::fs::File| f.metadata().is_ok_and(|m| m.file_type().is_fifo());
            // Both or neither: making one of them non-blocking would break the fallback.
            if fifo(&stdin) && fifo(&stdout) {
                let pipes = pipe::Receiver::from_file(stdin)
                    .and_then(|input| Ok((input, pipe::Sender::from_file(stdout)?)));
                match pipes {
                    Ok((input, output)) => return serve_on(plugin, input, output).await,
                    Err(error) => return Err(Error::Read(error)),
                }
            }
        }
    }
    serve_on(plugin, tokio::io::stdin(), tokio::io::stdout()).await
}

/// Serves `plugin` over `reader` (from the BPE) and `writer` (to the BPE) until the BPE
/// closes `reader`. [`serve`] runs it on standard input and output; tests and tools run it on
/// pipes of their own.
pub async fn serve_on(
    plugin: PluginDefinition,
    reader: impl AsyncRead + Unpin + Send + 'static,
    writer: impl AsyncWrite + Unpin + Send + 'static,
) -> Result<(), Error> {
    let definition = plugin.to_protocol();
    let mut frames = FramedRead::new(reader, protocol::codec());
    let hello = match frames.next().await {
        Some(Ok(frame)) => match ToPlugin::decode(&frame) {
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
    let sink: Sink = tokio::sync::Mutex::new(FramedWrite::new(Box::pin(writer), protocol::codec()));
    let plugin = Arc::new(Served {
        handlers: plugin.handlers().iter().cloned().collect(),
        hello,
        sink,
        pending: Mutex::new(HashMap::new()),
        next_request: AtomicU64::new(1),
    });
    plugin
        .send(&FromPlugin::Definition(definition))
        .await
        .map_err(Error::Write)?;
    let result = loop {
        let frame = match frames.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => break Err(Error::Read(error)),
            None => break Ok(()),
        };
        match ToPlugin::decode(&frame) {
            Ok(ToPlugin::Call(call)) => {
                let plugin = plugin.clone();
                tokio::spawn(async move {
                    let result = plugin.clone().run(*call).await;
                    if let Err(error) = plugin.send(&FromPlugin::Result(result)).await {
                        tracing::error!(error = %ErrorChain(&error), "cannot answer the BPE");
                    }
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
    result
}

/// The BPE's end of the protocol: each message is written by the task that has it to say.
type Sink = tokio::sync::Mutex<
    FramedWrite<std::pin::Pin<Box<dyn AsyncWrite + Send>>, tokio_util::codec::LengthDelimitedCodec>,
>;

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
    sink: Sink,
    /// FHIR requests sent to the BPE and not yet answered.
    pending: Mutex<HashMap<u64, oneshot::Sender<FhirResponse>>>,
    next_request: AtomicU64,
}

/// A call's variables: read from what the BPE sent, each write recorded for the answer (the
/// latest write of a name is its value).
struct RecordingScope {
    values: Map<String, Value>,
    changes: Vec<VariableChange>,
}

impl VariableScope for RecordingScope {
    fn get(&self, name: &str) -> Option<Value> {
        self.changes
            .iter()
            .rev()
            .find(|c| c.name == name)
            .map(|c| &c.value)
            .or_else(|| self.values.get(name))
            .cloned()
    }

    fn variables(&self) -> Map<String, Value> {
        let mut all = self.values.clone();
        for change in &self.changes {
            all.insert(change.name.clone(), change.value.clone());
        }
        all
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
        self.changes.push(VariableChange {
            name: name.to_owned(),
            value,
            local,
        });
    }
}

impl Served {
    async fn send(&self, message: &FromPlugin) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
        self.sink.lock().await.send(bytes::Bytes::from(bytes)).await
    }

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
                let message = crate::panic_message(panic.as_ref());
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
        if let Err(error) = self.plugin.send(&message).await {
            self.plugin
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(dsf_fhir::Error::transport_in(
                "cannot write to the BPE",
                error,
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
            .map_err(|e| dsf_fhir::Error::transport_in("FHIR response body", e))?,
        None => Vec::new(),
    };
    Ok(RawResponse {
        status,
        headers,
        body: body.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::CallContext;
    use crate::{EndpointInfo, ServiceTask};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Reads the Task named by the start Task's id from the local server and records its
    /// status; panics when the instance is `"panic"`.
    struct ReadsATask;

    #[async_trait]
    impl ServiceTask for ReadsATask {
        async fn execute(
            &self,
            api: &ProcessApi,
            vars: &mut Variables<'_>,
        ) -> Result<(), ProcessError> {
            if vars.instance_id() == "panic" {
                panic!("a bug in the handler");
            }
            let task: Value = api.local_client().read("Task", "t1").await?;
            vars.set_local("status", task["status"].clone());
            Err(ProcessError::bpmn("read", "it was read"))
        }
    }

    fn plugin() -> PluginDefinition {
        PluginDefinition::new("test", "1.0.0.0", "2026-12-04")
            .unwrap()
            .bpmn("bpe/t.bpmn", "<definitions/>")
            .service_task("test.Read", ReadsATask)
    }

    async fn send(to: &mut DuplexStream, message: &ToPlugin) {
        let bytes = serde_json::to_vec(message).unwrap();
        to.write_all(&(bytes.len() as u32).to_be_bytes())
            .await
            .unwrap();
        to.write_all(&bytes).await.unwrap();
    }

    async fn receive(from: &mut DuplexStream) -> FromPlugin {
        let mut length = [0u8; 4];
        from.read_exact(&mut length).await.unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(length) as usize];
        from.read_exact(&mut frame).await.unwrap();
        FromPlugin::decode(&frame).unwrap()
    }

    fn hello(protocol: u32) -> ToPlugin {
        ToPlugin::Hello(Hello {
            protocol,
            organization: "org.test".into(),
            endpoint: EndpointInfo {
                identifier: "ep".into(),
                address: "https://org.test/fhir".into(),
                organization: Some("org.test".into()),
            },
            fhir_base_url: "https://org.test/fhir".into(),
        })
    }

    fn call(id: u64, instance: &str, handler: &str, hook: Hook) -> ToPlugin {
        ToPlugin::Call(Box::new(Call {
            id,
            handler: handler.into(),
            hook,
            context: CallContext {
                instance_id: instance.into(),
                element_id: "e".into(),
                business_key: None,
                fields: Map::new(),
                variables: Map::new(),
            },
            send: None,
            send_error: None,
            questionnaire_response: None,
        }))
    }

    /// A plugin served over in-memory pipes: (to the plugin, from the plugin, its task).
    fn served() -> (
        DuplexStream,
        DuplexStream,
        tokio::task::JoinHandle<Result<(), Error>>,
    ) {
        let (bpe_out, plugin_in) = tokio::io::duplex(1 << 16);
        let (plugin_out, bpe_in) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(serve_on(plugin(), plugin_in, plugin_out));
        (bpe_out, bpe_in, task)
    }

    #[tokio::test]
    async fn a_call_runs_its_handler_and_its_fhir_requests_go_through_the_bpe() {
        let (mut to, mut from, task) = served();
        send(&mut to, &hello(protocol::PROTOCOL_VERSION)).await;
        let FromPlugin::Definition(definition) = receive(&mut from).await else {
            panic!("the definition first");
        };
        assert_eq!(definition, plugin().to_protocol());

        send(&mut to, &call(7, "i", "test.Read", Hook::Execute)).await;
        let FromPlugin::Fhir(request) = receive(&mut from).await else {
            panic!("a FHIR request");
        };
        assert_eq!(
            (request.call, request.method.as_str(), request.path.as_str()),
            (7, "GET", "Task/t1")
        );
        assert_eq!(request.base_url, "https://org.test/fhir");
        let body = base64::engine::general_purpose::STANDARD
            .encode(json!({"resourceType": "Task", "id": "t1", "status": "requested"}).to_string());
        send(
            &mut to,
            &ToPlugin::FhirResponse(FhirResponse {
                id: request.id,
                status: Some(200),
                headers: vec![("content-type".into(), "application/fhir+json".into())],
                body: Some(body),
                error: None,
            }),
        )
        .await;
        let FromPlugin::Result(result) = receive(&mut from).await else {
            panic!("the result");
        };
        assert_eq!(result.id, 7);
        assert_eq!(
            result.changes,
            vec![VariableChange {
                name: "status".into(),
                value: json!("requested"),
                local: true
            }]
        );
        assert_eq!(
            result.error,
            Some(CallError::Bpmn {
                code: "read".into(),
                message: "it was read".into()
            })
        );

        // Unknown handlers, wrong hooks and panics are failures of the call, not the plugin.
        send(&mut to, &call(8, "i", "test.Nothing", Hook::Execute)).await;
        send(&mut to, &call(9, "i", "test.Read", Hook::AfterSend)).await;
        send(&mut to, &call(10, "panic", "test.Read", Hook::Execute)).await;
        let mut errors = Vec::new();
        for _ in 0..3 {
            let FromPlugin::Result(result) = receive(&mut from).await else {
                panic!("a result");
            };
            let Some(CallError::Failed { message }) = result.error else {
                panic!("a failure");
            };
            errors.push((result.id, message));
        }
        errors.sort();
        assert!(
            errors[0].1.contains("no handler 'test.Nothing'"),
            "{errors:?}"
        );
        assert!(errors[1].1.contains("has no hook AfterSend"), "{errors:?}");
        assert!(
            errors[2].1.contains("panicked: a bug in the handler"),
            "{errors:?}"
        );

        drop(to);
        assert!(
            task.await.unwrap().is_ok(),
            "the plugin ends with its input"
        );
    }

    #[tokio::test]
    async fn a_plugin_refuses_a_bpe_that_does_not_say_hello_in_its_version() {
        let (mut to, _from, task) = served();
        send(&mut to, &hello(2)).await;
        assert!(matches!(
            task.await.unwrap(),
            Err(Error::ProtocolVersion(2, 1))
        ));
        let (mut to, _from, task) = served();
        send(&mut to, &call(1, "i", "test.Read", Hook::Execute)).await;
        assert!(matches!(task.await.unwrap(), Err(Error::NoHello)));
        let (mut to, _from, task) = served();
        to.write_all(b"\x00\x00\x00\x03abc").await.unwrap();
        assert!(matches!(task.await.unwrap(), Err(Error::Garbage(_))));
    }
}
