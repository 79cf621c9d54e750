//! Plugin files: the executables in the BPE's plugin directory. Each is started as a process
//! ([`PluginFile`]); the definition it sends becomes a [`PluginDefinition`] whose handlers
//! call into that process, so the engine deploys and runs it exactly as a plugin linked into
//! the BPE.

use crate::plugin_process::{CallRequest, PluginFileSettings, PluginProcess};
use dsf_core::ErrorChain;
use dsf_plugin_api::protocol::{self, CallContext, CallResult, HandlerKind, Hello, Hook};
use dsf_plugin_api::{
    async_trait, BusinessKeyStrategy, ExecutionListener, Handler, MessageSend, PluginDefinition,
    ProcessApi, ProcessError, SendContext, SendError, ServiceTask, UserTaskListener, Value,
    Variables,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What became of one file of the plugin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFileReport {
    /// The file.
    pub file: PathBuf,
    /// `<name> <version>` as the file announced it, once it did.
    pub plugin: Option<String>,
    /// The processes deployed from it (`<process id>|<version>`), or why it was refused.
    pub outcome: Result<Vec<String>, String>,
}

/// A running plugin file: its process, started, watched and restarted until this is dropped.
/// [`PluginFile::start`] also gives the plugin's definition, whose handlers call into the
/// process: hand it to [`Bpe::start`](crate::Bpe::start) like a plugin linked in. (A BPE with
/// a plugin directory does this for every file in it.)
pub struct PluginFile {
    file: PathBuf,
    process: Arc<PluginProcess>,
}

impl Drop for PluginFile {
    fn drop(&mut self) {
        self.process.stop();
    }
}

impl PluginFile {
    /// Starts `file`, greets it with `hello` (who it works for) and reads its definition.
    pub async fn start(
        file: &Path,
        hello: Hello,
        settings: PluginFileSettings,
    ) -> crate::Result<(PluginFile, PluginDefinition)> {
        start_file(file, &hello, &settings)
            .await
            .map_err(|(announced, message)| crate::Error::Plugin {
                plugin: announced.unwrap_or_else(|| file.display().to_string()),
                message,
            })
    }

    /// The file the process runs.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The running process, if one runs (none while it is being restarted).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

/// A file's process and definition, or what the file announced (if it got that far) and why
/// it cannot run.
async fn start_file(
    file: &Path,
    hello: &Hello,
    settings: &PluginFileSettings,
) -> Result<(PluginFile, PluginDefinition), (Option<String>, String)> {
    let (process, definition) = PluginProcess::start(file, hello.clone(), settings.clone())
        .await
        .map_err(|reason| (None, reason))?;
    let announced = format!("{} {}", definition.name, definition.version);
    let running = PluginFile {
        file: file.to_path_buf(),
        process,
    };
    match definition_of(definition, &running.process) {
        Ok(definition) => Ok((running, definition)),
        Err(reason) => Err((Some(announced), reason)),
    }
}

/// Starts every plugin file in `directory` at once. Files that cannot be started or send no
/// usable definition are reported and left out; the others run.
pub(crate) async fn load(
    directory: &Path,
    hello: &Hello,
    settings: &PluginFileSettings,
) -> (Vec<(PluginFile, PluginDefinition)>, Vec<PluginFileReport>) {
    let mut refused = Vec::new();
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(directory = %directory.display(), error = %ErrorChain(&error), "no plugin files loaded: the plugin directory cannot be read");
            return (Vec::new(), refused);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    let mut starting = Vec::new();
    for file in files {
        match candidate(&file) {
            Ok(()) => starting.push(async {
                let started = start_file(&file, hello, settings).await;
                (file, started)
            }),
            Err(reason) => refused.push(PluginFileReport {
                file,
                plugin: None,
                outcome: Err(reason),
            }),
        }
    }
    let mut loaded = Vec::new();
    for (file, started) in futures_util::future::join_all(starting).await {
        match started {
            Ok(started) => loaded.push(started),
            Err((plugin, reason)) => refused.push(PluginFileReport {
                file,
                plugin,
                outcome: Err(reason),
            }),
        }
    }
    (loaded, refused)
}

/// Whether `file` is something the BPE starts: a regular file it may execute.
fn candidate(file: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(file).map_err(|e| format!("cannot read it: {e}"))?;
    if !metadata.is_file() {
        return Err("not a file (plugin files are executables, directories are not read)".into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if metadata.permissions().mode() & 0o111 == 0 {
            return Err("not executable (a plugin file must be an executable: chmod +x)".into());
        }
    }
    Ok(())
}

/// The definition a plugin file sent, with each handler bound to a call into its process.
fn definition_of(
    definition: protocol::Definition,
    process: &Arc<PluginProcess>,
) -> Result<PluginDefinition, String> {
    let mut plugin = PluginDefinition::new(
        &definition.name,
        &definition.version,
        &definition.release_date,
    )
    .map_err(|e| e.to_string())?;
    for file in definition.bpmn {
        plugin = plugin.bpmn(&file.path, file.contents);
    }
    for file in definition.fhir {
        plugin = plugin.fhir(&file.process, &file.path, file.contents);
    }
    for declared in definition.handlers {
        let remote = Remote {
            process: process.clone(),
            handler: declared.name.clone(),
        };
        let handler = match declared.kind {
            HandlerKind::ServiceTask => Handler::ServiceTask(Arc::new(remote)),
            HandlerKind::ExecutionListener => Handler::ExecutionListener(Arc::new(remote)),
            HandlerKind::UserTaskListener => Handler::UserTaskListener(Arc::new(remote)),
            HandlerKind::MessageSend => Handler::MessageSend(Arc::new(RemoteSend {
                remote,
                strategy: declared.business_key_strategy.unwrap_or_default(),
            })),
        };
        plugin = plugin.handler(&declared.name, handler);
    }
    Ok(plugin)
}

/// A handler of a plugin file: each method is a call into the plugin's process.
struct Remote {
    process: Arc<PluginProcess>,
    handler: String,
}

/// What a call carries besides the variables.
#[derive(Default)]
struct Extra {
    send: Option<SendContext>,
    send_error: Option<SendError>,
    questionnaire_response: Option<Value>,
}

impl Remote {
    async fn call(
        &self,
        api: &ProcessApi,
        vars: &Variables<'_>,
        hook: Hook,
        extra: Extra,
    ) -> Result<CallResult, ProcessError> {
        let context = CallContext {
            instance_id: vars.instance_id().to_owned(),
            element_id: vars.element_id().to_owned(),
            business_key: vars.business_key().map(str::to_owned),
            fields: vars.fields().clone(),
            variables: vars.all(),
        };
        let request = CallRequest {
            handler: self.handler.clone(),
            hook,
            context,
            send: extra.send,
            send_error: extra.send_error,
            questionnaire_response: extra.questionnaire_response,
        };
        self.process.call(request, api).await
    }

    /// Runs `hook` and applies the variables it set; its error becomes the handler's.
    async fn run(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
        hook: Hook,
        extra: Extra,
    ) -> Result<CallResult, ProcessError> {
        let mut result = self.call(api, vars, hook, extra).await?;
        for change in std::mem::take(&mut result.changes) {
            if change.local {
                vars.set_local(&change.name, change.value);
            } else {
                vars.set(&change.name, change.value);
            }
        }
        match result.error.take() {
            Some(error) => Err(error.into()),
            None => Ok(result),
        }
    }
}

#[async_trait]
impl ServiceTask for Remote {
    async fn execute(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        self.run(api, vars, Hook::Execute, Extra::default())
            .await
            .map(drop)
    }
}

#[async_trait]
impl ExecutionListener for Remote {
    async fn notify(&self, api: &ProcessApi, vars: &mut Variables<'_>) -> Result<(), ProcessError> {
        self.run(api, vars, Hook::Notify, Extra::default())
            .await
            .map(drop)
    }
}

#[async_trait]
impl UserTaskListener for Remote {
    async fn before_create(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
        questionnaire_response: &mut Value,
    ) -> Result<(), ProcessError> {
        let extra = Extra {
            questionnaire_response: Some(questionnaire_response.clone()),
            ..Extra::default()
        };
        let result = self.run(api, vars, Hook::BeforeCreate, extra).await?;
        if let Some(changed) = result.questionnaire_response {
            *questionnaire_response = changed;
        }
        Ok(())
    }

    async fn after_create(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
        questionnaire_response: &Value,
    ) -> Result<(), ProcessError> {
        let extra = Extra {
            questionnaire_response: Some(questionnaire_response.clone()),
            ..Extra::default()
        };
        self.run(api, vars, Hook::AfterCreate, extra)
            .await
            .map(drop)
    }
}

/// A message send of a plugin file, with the business key strategy it declared.
struct RemoteSend {
    remote: Remote,
    strategy: BusinessKeyStrategy,
}

#[async_trait]
impl MessageSend for RemoteSend {
    /// Variables set here are not kept: the hook only reads them, in-process as well.
    async fn additional_inputs(
        &self,
        api: &ProcessApi,
        vars: &Variables<'_>,
        send: &SendContext,
    ) -> Result<Vec<Value>, ProcessError> {
        let extra = Extra {
            send: Some(send.clone()),
            ..Extra::default()
        };
        let result = self
            .remote
            .call(api, vars, Hook::AdditionalInputs, extra)
            .await?;
        match result.error {
            Some(error) => Err(error.into()),
            None => Ok(result.inputs.unwrap_or_default()),
        }
    }

    fn business_key_strategy(&self) -> BusinessKeyStrategy {
        self.strategy
    }

    async fn after_send(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
        send: &SendContext,
    ) -> Result<(), ProcessError> {
        let extra = Extra {
            send: Some(send.clone()),
            ..Extra::default()
        };
        self.remote
            .run(api, vars, Hook::AfterSend, extra)
            .await
            .map(drop)
    }

    async fn on_send_error(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
        send: &SendContext,
        error: &SendError,
    ) -> Result<(), ProcessError> {
        let extra = Extra {
            send: Some(send.clone()),
            send_error: Some(error.clone()),
            ..Extra::default()
        };
        self.remote
            .run(api, vars, Hook::OnSendError, extra)
            .await
            .map(drop)
    }
}
