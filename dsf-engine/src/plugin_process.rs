//! A plugin file's process, seen from the BPE: started, greeted, called, watched and
//! restarted. Calls are multiplexed over the process's standard input and output by id; a
//! call that outlives its time limit, a process that exits or a message that is not the
//! protocol fails the calls it concerns, and the process is started again with back-off.
//! The plugin's FHIR requests during a call are sent with the handler's [`ProcessApi`], so the
//! organisation's key stays in the BPE.

use base64::Engine as _;
use dsf_plugin_api::protocol::{
    self, Call, CallResult, Definition, FhirRequest, FhirResponse, FromPlugin, Hello, ToPlugin,
};
use dsf_plugin_api::{ProcessApi, ProcessError};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// How plugin file processes are run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PluginFileSettings {
    /// Longest a handler call may take, FHIR requests included; a process that exceeds it
    /// is taken to hang and is restarted (`DEV_DSF_BPE_PROCESS_PLUGIN_CALL_TIMEOUT`).
    pub call_timeout: Duration,
    /// Longest from starting the file to its definition.
    pub start_timeout: Duration,
    /// Wait before the first restart of a process that stopped; doubled for each restart
    /// that follows a short life, up to `max_restart_backoff`.
    pub restart_backoff: Duration,
    /// The longest wait between restarts.
    pub max_restart_backoff: Duration,
    /// Set in each plugin process's environment (the plugins' configuration).
    pub environment: Vec<(String, String)>,
    /// Taken out of the environment a plugin process inherits from the BPE (the BPE's own
    /// secrets: its key file, its database password).
    pub environment_removed: Vec<String>,
}

impl Default for PluginFileSettings {
    fn default() -> Self {
        PluginFileSettings {
            call_timeout: Duration::from_secs(120),
            start_timeout: Duration::from_secs(30),
            restart_backoff: Duration::from_millis(100),
            max_restart_backoff: Duration::from_secs(30),
            environment: Vec::new(),
            environment_removed: Vec::new(),
        }
    }
}

/// A process that lived this long before it stopped was not crashing in a loop: its restart
/// waits the first back-off again.
const HEALTHY_LIFETIME: Duration = Duration::from_secs(30);

/// Headers the BPE's client sets itself; a plugin's values for them are dropped.
const HOP_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "te",
    "upgrade",
];

/// What a call needs from the plugin besides its id.
pub(crate) struct CallRequest {
    pub handler: String,
    pub hook: protocol::Hook,
    pub context: protocol::CallContext,
    pub send: Option<dsf_plugin_api::SendContext>,
    pub send_error: Option<dsf_plugin_api::SendError>,
    pub questionnaire_response: Option<serde_json::Value>,
}

/// Where a running call's messages go.
struct CallSlot {
    result: oneshot::Sender<CallResult>,
    fhir: mpsc::UnboundedSender<FhirRequest>,
}

/// One running plugin process and what is in flight with it.
struct Connection {
    pid: Option<u32>,
    started: Instant,
    /// The plugin's standard input; each message is written by the task that has it to say
    /// (a writer task between them would cost every call a task switch).
    sink: tokio::sync::Mutex<FramedWrite<tokio::process::ChildStdin, LengthDelimitedCodec>>,
    calls: Mutex<HashMap<u64, CallSlot>>,
    permits: Option<Arc<Semaphore>>,
    child: Mutex<Option<Child>>,
    /// Set once, with the reason, when the connection ends.
    closed: watch::Sender<Option<String>>,
}

impl Connection {
    /// Writes `message` to the plugin; a failed write ends the connection.
    async fn send(&self, message: &ToPlugin) -> bool {
        let Ok(bytes) = serde_json::to_vec(message) else {
            return false;
        };
        let written = self.sink.lock().await.send(bytes::Bytes::from(bytes)).await;
        match written {
            Ok(()) => true,
            Err(error) => {
                self.close(&format!("writing to the plugin failed: {error}"));
                false
            }
        }
    }

    /// Ends the connection: the process is killed and every call in flight learns `reason`.
    fn close(&self, reason: &str) {
        let first = self.closed.send_if_modified(|closed| {
            if closed.is_none() {
                *closed = Some(reason.to_owned());
                true
            } else {
                false
            }
        });
        if first {
            if let Some(child) = self
                .child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                let _ = child.start_kill();
            }
            self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    fn close_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }
}

/// Whether a plugin file's process is up.
#[derive(Clone)]
enum Current {
    Up(Arc<Connection>),
    /// Down, and why.
    Down(String),
}

impl Current {
    fn is_up(&self) -> bool {
        matches!(self, Current::Up(_))
    }
}

/// The process of one plugin file, kept running for as long as the BPE runs.
pub(crate) struct PluginProcess {
    file: PathBuf,
    /// The file name, for logs and reasons.
    label: String,
    hello: Hello,
    settings: PluginFileSettings,
    current: watch::Sender<Current>,
    /// Name and version the first start announced; a restart must announce the same.
    identity: Mutex<Option<(String, String)>>,
    next_call: AtomicU64,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PluginProcess {
    /// Starts the file and reads its definition; the process is then watched and restarted
    /// until [`PluginProcess::stop`].
    pub(crate) async fn start(
        file: &Path,
        hello: Hello,
        settings: PluginFileSettings,
    ) -> Result<(Arc<PluginProcess>, Definition), String> {
        let label = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string());
        let (current, _) = watch::channel(Current::Down("not started".to_owned()));
        let process = Arc::new(PluginProcess {
            file: file.to_owned(),
            label,
            hello,
            settings,
            current,
            identity: Mutex::new(None),
            next_call: AtomicU64::new(1),
            supervisor: Mutex::new(None),
        });
        let (connection, definition) = process.launch().await?;
        *process.identity.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((definition.name.clone(), definition.version.clone()));
        process
            .current
            .send_replace(Current::Up(connection.clone()));
        let supervisor = tokio::spawn(PluginProcess::supervise(
            Arc::downgrade(&process),
            connection,
        ));
        *process.supervisor.lock().unwrap_or_else(|p| p.into_inner()) = Some(supervisor);
        Ok((process, definition))
    }

    /// Stops watching and kills the process.
    pub(crate) fn stop(&self) {
        if let Some(supervisor) = self
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            supervisor.abort();
        }
        if let Current::Up(connection) = &*self.current.borrow() {
            connection.close("the BPE stopped");
        }
        self.current
            .send_replace(Current::Down("stopped".to_owned()));
    }

    /// The process id of the running process, if one runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        match &*self.current.borrow() {
            Current::Up(connection) => connection.pid,
            Current::Down(_) => None,
        }
    }

    /// Starts the file, greets it and reads its definition.
    async fn launch(&self) -> Result<(Arc<Connection>, Definition), String> {
        let mut command = Command::new(&self.file);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // A process group of its own: Ctrl-C at the BPE's terminal stops the BPE, which then
        // stops its plugins, rather than killing the plugins under the BPE's running work.
        #[cfg(unix)]
        command.process_group(0);
        for name in &self.settings.environment_removed {
            command.env_remove(name);
        }
        for (name, value) in &self.settings.environment {
            command.env(dsf_plugin_api::environment_variable(name), value);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.file.display()))?;
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("the process has no standard input, output or error".into());
        };
        tokio::spawn(forward_log(self.label.clone(), pid, stderr));
        let mut sink = FramedWrite::new(stdin, protocol::codec());
        let mut frames = FramedRead::new(stdout, protocol::codec());
        let greeting = async {
            let hello = serde_json::to_vec(&ToPlugin::Hello(self.hello.clone()))
                .map_err(|e| e.to_string())?;
            sink.send(bytes::Bytes::from(hello))
                .await
                .map_err(|e| format!("cannot write to the plugin: {e}"))?;
            match frames.next().await {
                Some(Ok(frame)) => match FromPlugin::decode(&frame) {
                    Ok(FromPlugin::Definition(definition)) => Ok(definition),
                    Ok(other) => Err(format!(
                        "the plugin's first message is not its definition but {}",
                        message_kind(&other)
                    )),
                    Err(e) => Err(format!(
                        "the plugin's first message is not the protocol: {e}"
                    )),
                },
                Some(Err(e)) => Err(format!("the plugin's first message is not a frame: {e}")),
                None => Err("the plugin closed its output without a definition".into()),
            }
        };
        let definition = match tokio::time::timeout(self.settings.start_timeout, greeting).await {
            Ok(Ok(definition)) => definition,
            Ok(Err(reason)) => {
                let _ = child.start_kill();
                return Err(with_exit_status(reason, &mut child).await);
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(format!(
                    "no definition within {:?} of starting",
                    self.settings.start_timeout
                ));
            }
        };
        if definition.protocol != protocol::PROTOCOL_VERSION {
            let _ = child.start_kill();
            return Err(format!(
                "the plugin speaks protocol version {}; this BPE speaks {}",
                definition.protocol,
                protocol::PROTOCOL_VERSION
            ));
        }
        let (closed, _) = watch::channel(None);
        let connection = Arc::new(Connection {
            pid,
            started: Instant::now(),
            sink: tokio::sync::Mutex::new(sink),
            calls: Mutex::new(HashMap::new()),
            permits: definition
                .max_concurrent_calls
                .map(|n| Arc::new(Semaphore::new(n.max(1) as usize))),
            child: Mutex::new(Some(child)),
            closed,
        });
        tokio::spawn(read_messages(
            connection.clone(),
            frames,
            self.label.clone(),
        ));
        tracing::info!(plugin = %self.label, pid = ?pid, name = %definition.name, version = %definition.version, "plugin process started");
        Ok((connection, definition))
    }

    /// Restarts the process each time it stops, waiting longer after each short life.
    async fn supervise(this: std::sync::Weak<Self>, mut connection: Arc<Connection>) {
        let mut backoff: Option<Duration> = None;
        loop {
            let reason = {
                let mut closed = connection.closed.subscribe();
                let reason = match closed.wait_for(Option::is_some).await {
                    Ok(reason) => reason.clone().unwrap_or_default(),
                    Err(_) => "closed".to_owned(),
                };
                reason
            };
            let Some(process) = this.upgrade() else {
                return;
            };
            let first = process.settings.restart_backoff;
            let wait = match backoff {
                Some(previous) if connection.started.elapsed() < HEALTHY_LIFETIME => {
                    (previous * 2).min(process.settings.max_restart_backoff)
                }
                _ => first,
            };
            backoff = Some(wait);
            tracing::error!(plugin = %process.label, %reason, restart_in = ?wait, "plugin process stopped");
            process.current.send_replace(Current::Down(reason));
            drop(process);
            let mut wait = wait;
            connection = loop {
                tokio::time::sleep(wait).await;
                let Some(process) = this.upgrade() else {
                    return;
                };
                let outcome = match process.launch().await {
                    Ok((connection, definition)) => {
                        let expected = process
                            .identity
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone();
                        if expected.as_ref()
                            == Some(&(definition.name.clone(), definition.version.clone()))
                        {
                            Ok(connection)
                        } else {
                            connection.close("replaced on disk");
                            Err(format!(
                                "the file now holds {} {}, not the plugin this BPE deployed; restart the BPE to deploy it",
                                definition.name, definition.version
                            ))
                        }
                    }
                    Err(reason) => Err(reason),
                };
                match outcome {
                    Ok(connection) => {
                        process
                            .current
                            .send_replace(Current::Up(connection.clone()));
                        break connection;
                    }
                    Err(reason) => {
                        wait = (wait * 2).min(process.settings.max_restart_backoff);
                        tracing::error!(plugin = %process.label, %reason, retry_in = ?wait, "plugin process cannot be restarted");
                        process.current.send_replace(Current::Down(reason));
                    }
                }
            };
        }
    }

    /// Runs one handler call: waits for a running process (within the time limit), sends the
    /// call, carries the FHIR requests the plugin makes meanwhile, and returns its result.
    pub(crate) async fn call(
        &self,
        request: CallRequest,
        api: &ProcessApi,
    ) -> Result<CallResult, ProcessError> {
        let deadline = tokio::time::Instant::now() + self.settings.call_timeout;
        let handler = request.handler.clone();
        let fail = |reason: String| {
            ProcessError::failed(format!("plugin {} ({handler}): {reason}", self.label))
        };
        let connection = {
            let mut current = self.current.subscribe();
            // A process being restarted may come back within the call's time limit.
            let _ = tokio::time::timeout_at(deadline, current.wait_for(Current::is_up)).await;
            let state = current.borrow().clone();
            match state {
                Current::Up(connection) => connection,
                Current::Down(reason) => {
                    return Err(fail(format!("the plugin process is not running: {reason}")))
                }
            }
        };
        let _permit = match &connection.permits {
            Some(permits) => {
                match tokio::time::timeout_at(deadline, permits.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => Some(permit),
                    _ => return Err(fail("no free call slot within the time limit".into())),
                }
            }
            None => None,
        };
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let (result_tx, mut result_rx) = oneshot::channel();
        let (fhir_tx, mut fhir_rx) = mpsc::unbounded_channel();
        let mut closed = connection.closed.subscribe();
        {
            let mut calls = connection.calls.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(reason) = connection.close_reason() {
                return Err(fail(format!("the plugin process stopped: {reason}")));
            }
            calls.insert(
                id,
                CallSlot {
                    result: result_tx,
                    fhir: fhir_tx,
                },
            );
        }
        let message = ToPlugin::Call(Box::new(Call {
            id,
            handler: request.handler,
            hook: request.hook,
            context: request.context,
            send: request.send,
            send_error: request.send_error,
            questionnaire_response: request.questionnaire_response,
        }));
        // A plugin that stopped reading fills its input; the time limit bounds the wait.
        if !matches!(
            tokio::time::timeout_at(deadline, connection.send(&message)).await,
            Ok(true)
        ) {
            connection
                .calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(fail(
                "the plugin process stopped or does not read its input".into(),
            ));
        }
        let mut requests = FuturesUnordered::new();
        let outcome = loop {
            tokio::select! {
                result = &mut result_rx => break match result {
                    Ok(result) => Ok(result),
                    Err(_) => Err(fail(format!(
                        "the plugin process stopped during the call: {}",
                        connection.close_reason().unwrap_or_default()
                    ))),
                },
                Some(request) = fhir_rx.recv() => requests.push(carry(api, request)),
                Some(response) = requests.next(), if !requests.is_empty() => {
                    let response = ToPlugin::FhirResponse(response);
                    let _ = tokio::time::timeout_at(deadline, connection.send(&response)).await;
                }
                // The connection ends once; a closed one was refused above.
                _ = closed.changed() => break Err(fail(format!(
                    "the plugin process stopped during the call: {}",
                    connection.close_reason().unwrap_or_default()
                ))),
                _ = tokio::time::sleep_until(deadline) => {
                    let reason = format!(
                        "no answer within {:?}; the process is taken to hang and is restarted",
                        self.settings.call_timeout
                    );
                    connection.close(&format!("a call to '{handler}' got {reason}"));
                    break Err(fail(reason));
                }
            }
        };
        connection
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        outcome
    }
}

/// Sends a plugin's FHIR request with the BPE's client for its base URL.
async fn carry(api: &ProcessApi, request: FhirRequest) -> FhirResponse {
    let id = request.id;
    let refused = |error: String| FhirResponse {
        id,
        error: Some(error),
        ..FhirResponse::default()
    };
    let Ok(method) = http::Method::from_bytes(request.method.as_bytes()) else {
        return refused(format!("'{}' is not an HTTP method", request.method));
    };
    let body = match request.body {
        Some(body) => match base64::engine::general_purpose::STANDARD.decode(body) {
            Ok(body) => Some(bytes::Bytes::from(body)),
            Err(e) => return refused(format!("the body is not base64: {e}")),
        },
        None => None,
    };
    let client = match api.client_for(&request.base_url) {
        Ok(client) => client,
        Err(e) => return refused(e.to_string()),
    };
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .filter(|(name, _)| !HOP_HEADERS.contains(&name.to_ascii_lowercase().as_str()))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    match client.request(method, &request.path, &headers, body).await {
        Ok(response) => FhirResponse {
            id,
            status: Some(response.status.as_u16()),
            headers: response
                .headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect(),
            body: (!response.body.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&response.body)),
            error: None,
        },
        Err(e) => refused(e.to_string()),
    }
}

/// Reads the plugin's messages for as long as the connection lasts; the end of the output,
/// an unreadable frame or a message that is not the protocol ends the connection.
async fn read_messages(
    connection: Arc<Connection>,
    mut frames: FramedRead<tokio::process::ChildStdout, LengthDelimitedCodec>,
    label: String,
) {
    let reason = loop {
        let frame = match frames.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => break format!("it wrote something that is not a frame: {e}"),
            None => break "it closed its output".to_owned(),
        };
        match FromPlugin::decode(&frame) {
            Ok(FromPlugin::Result(result)) => {
                let slot = connection
                    .calls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&result.id);
                match slot {
                    Some(slot) => {
                        let _ = slot.result.send(result);
                    }
                    None => {
                        tracing::warn!(plugin = %label, call = result.id, "result of a call that is not running (it timed out?); ignored")
                    }
                }
            }
            Ok(FromPlugin::Fhir(request)) => {
                let slot = connection
                    .calls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&request.call)
                    .map(|slot| slot.fhir.clone());
                let refused = match slot {
                    Some(fhir) => fhir.send(request).err().map(|e| e.0),
                    None => Some(request),
                };
                if let Some(request) = refused {
                    let answer = ToPlugin::FhirResponse(FhirResponse {
                        id: request.id,
                        error: Some(format!(
                            "call {} is not running: FHIR requests are carried only during a handler call",
                            request.call
                        )),
                        ..FhirResponse::default()
                    });
                    // Not written here: the reader must never wait for the plugin's input.
                    let connection = connection.clone();
                    tokio::spawn(async move { connection.send(&answer).await });
                }
            }
            Ok(FromPlugin::Definition(_)) => {
                break "it sent its definition again in the middle of its work".to_owned()
            }
            Err(e) => break format!("it answered something that is not the protocol: {e}"),
        }
    };
    // The exit status, when the process ended on its own, says more than the closed pipe.
    let child = connection
        .child
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let reason = match child {
        Some(mut child) => {
            let _ = child.start_kill();
            with_exit_status(reason, &mut child).await
        }
        None => reason,
    };
    connection.close(&reason);
}

/// `reason`, with how the process ended if it ended within a moment.
async fn with_exit_status(reason: String, child: &mut Child) -> String {
    match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(Ok(status)) => format!("{reason} ({})", describe_exit(status)),
        _ => reason,
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "exited".to_owned(),
    }
}

fn message_kind(message: &FromPlugin) -> &'static str {
    match message {
        FromPlugin::Definition(_) => "a definition",
        FromPlugin::Result(_) => "a call result",
        FromPlugin::Fhir(_) => "a FHIR request",
    }
}

/// The longest line of a plugin's log the BPE keeps; the rest of a longer one is dropped (a
/// plugin that never ends a line must not grow the BPE's memory, nor stop being read).
const MAX_LOG_LINE: usize = 16 * 1024;

/// Writes the plugin's standard error to the BPE's log, a line at a time, at the level the
/// line starts with (`ERROR`, `WARN`, `DEBUG`, else info).
async fn forward_log(label: String, pid: Option<u32>, mut stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncReadExt;
    let mut lines = LogLines::default();
    let mut chunk = [0u8; 4096];
    loop {
        let read = match stderr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        lines.push(&chunk[..read], |line| log_line(&label, pid, line));
    }
    lines.finish(|line| log_line(&label, pid, line));
}

/// Splits a byte stream into lines of at most [`MAX_LOG_LINE`] bytes.
#[derive(Default)]
struct LogLines {
    line: Vec<u8>,
    /// The line being read was cut; its rest is dropped.
    dropping: bool,
}

impl LogLines {
    fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        for &byte in bytes {
            if byte == b'\n' {
                if !self.dropping {
                    emit(&self.line);
                }
                self.line.clear();
                self.dropping = false;
            } else if self.line.len() < MAX_LOG_LINE {
                self.line.push(byte);
            } else if !self.dropping {
                emit(&self.line);
                self.dropping = true;
            }
        }
    }

    fn finish(self, mut emit: impl FnMut(&[u8])) {
        if !self.line.is_empty() && !self.dropping {
            emit(&self.line);
        }
    }
}

fn log_line(label: &str, pid: Option<u32>, line: &[u8]) {
    let line = String::from_utf8_lossy(line);
    let trimmed = line.trim_start();
    let level = trimmed.split_whitespace().next().unwrap_or_default();
    match level {
        "ERROR" => tracing::error!(plugin = %label, pid = ?pid, "{trimmed}"),
        "WARN" => tracing::warn!(plugin = %label, pid = ?pid, "{trimmed}"),
        "DEBUG" | "TRACE" => tracing::debug!(plugin = %label, pid = ?pid, "{trimmed}"),
        _ => tracing::info!(plugin = %label, pid = ?pid, "{trimmed}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_split_and_cut() {
        let mut lines = LogLines::default();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        lines.push(b"INFO one\nWARN tw", |l| seen.push(l.to_vec()));
        lines.push(b"o\n", |l| seen.push(l.to_vec()));
        let long = vec![b'x'; MAX_LOG_LINE * 3];
        lines.push(&long, |l| seen.push(l.to_vec()));
        lines.push(b"yyy\nlast", |l| seen.push(l.to_vec()));
        lines.finish(|l| seen.push(l.to_vec()));
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0], b"INFO one");
        assert_eq!(seen[1], b"WARN two");
        assert_eq!(seen[2].len(), MAX_LOG_LINE, "a long line is cut, once");
        assert_eq!(seen[3], b"last");
        assert!(lines_capacity_is_bounded());
    }

    /// The buffer never holds more than one cut line.
    fn lines_capacity_is_bounded() -> bool {
        let mut lines = LogLines::default();
        lines.push(&vec![b'z'; MAX_LOG_LINE * 10], |_| {});
        lines.line.len() <= MAX_LOG_LINE
    }
}
