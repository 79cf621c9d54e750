//! The running BPE: configuration, start-up (identity, deployment, recovery) and the loops
//! that feed it (the Task and QuestionnaireResponse subscriptions, the timer clock).

use crate::deploy::{self, Deployment, DeploymentReport, ProcessState};
use crate::incoming::Dispatcher;
use crate::locks::KeyLocks;
use crate::plugin_files::{self, PluginFile, PluginFileReport};
use crate::plugin_process::PluginFileSettings;
use crate::services::{CrashHook, Services};
use crate::state::{StateDatabase, StateStore, DEFAULT_LEASE};
use crate::status::BpeStatus;
use crate::{Error, Result};
use dsf_fhir::client::{ClientSettings, SubscriptionSettings};
use dsf_fhir::FhirClient;
use dsf_plugin_api::{EndpointInfo, PluginDefinition, ProcessApi};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

/// How a BPE reaches its FHIR server and where it keeps its state.
#[derive(Clone)]
#[non_exhaustive]
pub struct BpeConfig {
    /// The local organisation's FHIR server (`DEV_DSF_BPE_FHIR_SERVER_BASE_URL`).
    pub fhir_base_url: String,
    /// The BPE's client certificate and the CAs it trusts, for the local server and for
    /// every other organisation's server.
    pub tls: Arc<rustls::ClientConfig>,
    /// Where the state is kept (`DEV_DSF_BPE_DB_URL`): in memory by default.
    pub state: StateDatabase,
    /// How long this BPE's lease on a shared state database lasts without renewal
    /// (`DEV_DSF_BPE_DB_LEASE`): when the BPE dies, others take its work over after this
    /// and one renewal (a third of it). Shorter fails over faster; a stall longer than it
    /// (a paused VM, a database failover) makes the BPE drop what it was doing to whoever
    /// took over.
    pub lease: Duration,
    /// Tasks, timers and user tasks handled at once (`DEV_DSF_BPE_PROCESS_THREADS`).
    pub max_concurrent: usize,
    /// How the FHIR client waits and retries.
    pub client: ClientSettings,
    /// How the websocket subscriptions reconnect and catch up.
    pub subscription: SubscriptionSettings,
    /// How long start-up waits for the FHIR server to answer with the local organisation.
    pub startup_timeout: Duration,
    /// The plugin directory (`DEV_DSF_BPE_PROCESS_PLUGIN_DIRECTORY`): every executable in it
    /// is started as a plugin file and deployed beside the plugins given to [`Bpe::start`].
    pub plugin_directory: Option<PathBuf>,
    /// How plugin file processes are run and restarted.
    pub plugin_files: PluginFileSettings,
    /// Plugin configuration (`dev.dsf.…` property or environment variable names): seen by
    /// handlers through `ProcessApi::config` before the process environment, set in the
    /// environment of plugin file processes, and used for `#{…}` placeholders.
    pub plugin_config: Vec<(String, String)>,
    /// Processes (`<process id>|<version>`) that start no new instances and whose FHIR
    /// resources are removed (`DEV_DSF_BPE_PROCESS_EXCLUDED`).
    pub excluded: Vec<String>,
    /// Processes (`<process id>|<version>`) that start no new instances and whose FHIR
    /// resources stay, retired (`DEV_DSF_BPE_PROCESS_RETIRED`).
    pub retired: Vec<String>,
    /// For crash tests: called at each step boundary with its name (`claimed`, `sent` …);
    /// when it answers true, the work in progress stops there for good, as if the process
    /// had been killed. Not for production use.
    #[doc(hidden)]
    pub crash_at: Option<CrashHook>,
}

/// A `DEV_DSF_BPE_PROCESS_EXCLUDED` / `_RETIRED` value as the Java BPE reads it: entries
/// `<process id>|<major.minor>` separated by commas or white space (YAML block scalars work).
pub fn parse_process_list(text: &str) -> Result<Vec<String>> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let valid = entry.split_once('|').is_some_and(|(id, version)| {
                deploy::valid_process_id(id)
                    && version.split_once('.').is_some_and(|(major, minor)| {
                        [major, minor]
                            .iter()
                            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
            });
            if valid {
                Ok(entry.to_owned())
            } else {
                Err(Error::Config(format!(
                    "'{entry}' is not <process id>|<major.minor>, e.g. dsfdev_updateAllowList|1.0"
                )))
            }
        })
        .collect()
}

/// A plugin file's process as it is now, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFileStatus {
    /// The plugin file.
    pub file: PathBuf,
    /// The running process, if one runs (none while it is being restarted).
    pub pid: Option<u32>,
}

impl BpeConfig {
    /// Settings for a BPE of the FHIR server at `fhir_base_url`, reached with `tls`; the rest at
    /// their defaults (state in memory, no plugin directory).
    pub fn new(fhir_base_url: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        BpeConfig {
            fhir_base_url: fhir_base_url.trim_end_matches('/').to_owned(),
            tls,
            state: StateDatabase::Memory,
            lease: DEFAULT_LEASE,
            max_concurrent: std::thread::available_parallelism()
                .map(|n| n.get() * 4)
                .unwrap_or(8),
            client: ClientSettings::default(),
            subscription: SubscriptionSettings::default(),
            startup_timeout: Duration::from_secs(60),
            plugin_directory: None,
            plugin_files: PluginFileSettings::default(),
            plugin_config: Vec::new(),
            excluded: Vec::new(),
            retired: Vec::new(),
            crash_at: None,
        }
    }
}

/// A running BPE. Dropping it stops its loops and its plugin processes.
pub struct Bpe {
    pub(crate) dispatcher: Arc<Dispatcher>,
    report: DeploymentReport,
    loops: Vec<JoinHandle<()>>,
    pub(crate) status: watch::Receiver<BpeStatus>,
    /// Stopped when the BPE is dropped.
    plugin_files: Vec<PluginFile>,
}

impl Drop for Bpe {
    fn drop(&mut self) {
        self.halt();
    }
}

impl Bpe {
    /// Starts the BPE: finds the local organisation (the Endpoint whose address is the FHIR
    /// base URL), deploys `plugins` (a plugin that cannot be deployed is refused and logged;
    /// the others run), writes their FHIR resources, resumes Tasks claimed before a restart,
    /// then follows the Task and QuestionnaireResponse subscriptions (each connect catches up
    /// over REST first) and the timers.
    pub async fn start(config: BpeConfig, plugins: Vec<PluginDefinition>) -> Result<Bpe> {
        let excluded = parse_process_list(&config.excluded.join(","))?;
        let retired = parse_process_list(&config.retired.join(","))?;
        let local = FhirClient::with_settings(
            &config.fhir_base_url,
            config.tls.clone(),
            config.client.clone(),
        )?;
        let endpoint = local_identity(&local, &config).await?;
        let organization = endpoint.organization.clone().ok_or_else(|| {
            Error::Config(format!(
                "the Endpoint {} at {} names no organisation with an identifier",
                endpoint.identifier, endpoint.address
            ))
        })?;
        let state = StateStore::connect(&config.state, config.lease).await?;
        let hello = dsf_plugin_api::protocol::Hello {
            protocol: dsf_plugin_api::protocol::PROTOCOL_VERSION,
            organization: organization.clone(),
            endpoint: endpoint.clone(),
            fhir_base_url: config.fhir_base_url.clone(),
        };
        let services = Arc::new(Services {
            api: ProcessApi::new(local.clone(), config.tls.clone(), &organization, endpoint)
                .with_config(config.plugin_config.iter().cloned()),
            state,
            crash_at: config.crash_at.clone(),
            metrics: Default::default(),
        });

        let mut report = DeploymentReport::default();
        let sources = with_plugin_files(plugins, &config, &hello, &mut report).await;
        let (mut prepared, mut plugin_files) = prepare_all(
            sources,
            &organization,
            &services,
            (&excluded, &retired),
            &mut report,
        );
        refuse_duplicates(&mut prepared, &mut report);
        plugin_files.retain(|f| prepared.iter().any(|p| p.file.as_deref() == Some(f.file())));
        let (written, retired_definitions) = deploy::upload(&local, &prepared).await?;
        report.resources = written;
        report.retired = retired_definitions;
        let deployments = register(prepared, &mut report);
        report.plugin_files.sort_by(|a, b| a.file.cmp(&b.file));

        let (status_tx, status) = watch::channel(BpeStatus::default());
        let dispatcher = Arc::new(Dispatcher {
            services,
            deployments,
            locks: KeyLocks::default(),
            timers: Notify::new(),
            status: status_tx,
            work: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            running: std::sync::Mutex::new(tokio::task::JoinSet::new()),
        });
        dispatcher.take_over().await;
        let loops = vec![
            tokio::spawn(dispatcher.clone().keep_alive()),
            tokio::spawn(dispatcher.clone().follow(
                "Task?status=requested",
                "task",
                config.subscription.clone(),
            )),
            tokio::spawn(dispatcher.clone().follow(
                "QuestionnaireResponse?status=completed",
                "questionnaire_response",
                config.subscription.clone(),
            )),
            tokio::spawn(dispatcher.clone().clock()),
        ];
        Ok(Bpe {
            dispatcher,
            report,
            loops,
            status,
            plugin_files,
        })
    }

    /// The plugin files deployed, each with its running process.
    pub fn plugin_files(&self) -> Vec<PluginFileStatus> {
        self.plugin_files
            .iter()
            .map(|f| PluginFileStatus {
                file: f.file().to_path_buf(),
                pid: f.pid(),
            })
            .collect()
    }

    /// What was deployed at start, and what was refused.
    pub fn report(&self) -> &DeploymentReport {
        &self.report
    }

    /// The local organisation's identifier value.
    pub fn organization(&self) -> &str {
        self.dispatcher.services.api.local_organization()
    }

    /// Whether the subscriptions are bound, and what was handled so far.
    pub fn status(&self) -> BpeStatus {
        self.status.borrow().clone()
    }

    /// Waits until both subscriptions are bound and caught up.
    pub async fn wait_connected(&self) {
        let mut status = self.status.clone();
        let _ = status
            .wait_for(|s| s.tasks_connected && s.questionnaire_responses_connected)
            .await;
    }

    /// Waits until the status satisfies `condition`.
    pub async fn wait_for(&self, condition: impl FnMut(&BpeStatus) -> bool) {
        let mut status = self.status.clone();
        let _ = status.wait_for(condition).await;
    }

    /// Running instances in the state database.
    pub async fn running_instances(&self) -> Result<u64> {
        self.dispatcher.services.state.running_count().await
    }

    /// Stops the loops; work in progress is abandoned and resumed by the next start (or by
    /// another BPE sharing the state database, once this one's lease runs out).
    pub fn stop(self) {
        drop(self);
    }

    /// Stops as [`Bpe::stop`] does and leaves the state database, so that other BPEs sharing
    /// it take over this one's work at once rather than when its lease runs out.
    pub async fn shutdown(self) {
        self.halt();
        if let Err(error) = self.dispatcher.services.state.leave().await {
            tracing::warn!(error = %dsf_core::ErrorChain(&error), "cannot leave the state database; others take over when this BPE's lease runs out");
        }
    }

    /// Stops the loops and the work they started.
    fn halt(&self) {
        for task in &self.loops {
            task.abort();
        }
        self.dispatcher
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }

    /// This BPE's node id in its state database.
    pub fn node(&self) -> std::sync::Arc<str> {
        self.dispatcher.services.state.node()
    }
}
/// The plugins linked in, then the plugin files of the configured directory (each with its
/// running process); files that could not be started are recorded in `report`.
async fn with_plugin_files(
    plugins: Vec<PluginDefinition>,
    config: &BpeConfig,
    hello: &dsf_plugin_api::protocol::Hello,
    report: &mut DeploymentReport,
) -> Vec<(PluginDefinition, Option<PluginFile>)> {
    let mut sources: Vec<(PluginDefinition, Option<PluginFile>)> =
        plugins.into_iter().map(|p| (p, None)).collect();
    if let Some(directory) = &config.plugin_directory {
        let mut settings = config.plugin_files.clone();
        settings
            .environment
            .extend(config.plugin_config.iter().cloned());
        let (loaded, refused) = plugin_files::load(directory, hello, &settings).await;
        for file in &refused {
            if let Err(reason) = &file.outcome {
                tracing::error!(file = %file.file.display(), %reason, "plugin file refused");
            }
        }
        report.plugin_files = refused;
        sources.extend(
            loaded
                .into_iter()
                .map(|(file, definition)| (definition, Some(file))),
        );
    }
    sources
}

/// Prepares every plugin for deployment, marking the processes named in `excluded` and
/// `retired` (`<process id>|<version>`). A plugin that cannot be deployed is refused (in `report`) and its file
/// dropped; the plugin files of the others are returned to be kept running.
fn prepare_all(
    sources: Vec<(PluginDefinition, Option<PluginFile>)>,
    organization: &str,
    services: &Arc<Services>,
    (excluded, retired): (&[String], &[String]),
    report: &mut DeploymentReport,
) -> (Vec<deploy::PreparedPlugin>, Vec<PluginFile>) {
    let mut prepared = Vec::new();
    let mut plugin_files = Vec::new();
    for (plugin, file) in sources {
        match deploy::prepare(&plugin, organization, services) {
            Ok(mut p) => {
                for deployment in &mut p.deployments {
                    let key = deployment.key();
                    if excluded.contains(&key) {
                        deployment.state = ProcessState::Excluded;
                    } else if retired.contains(&key) {
                        deployment.state = ProcessState::Retired;
                    }
                }
                p.file = file.as_ref().map(|f| f.file().to_path_buf());
                prepared.push(p);
                plugin_files.extend(file);
            }
            Err(message) => {
                tracing::error!(plugin = plugin.name(), version = %plugin.version(), %message, "plugin refused");
                report
                    .refused
                    .push((plugin.name().to_owned(), message.clone()));
                if let Some(file) = file {
                    report.plugin_files.push(PluginFileReport {
                        file: file.file().to_path_buf(),
                        plugin: Some(format!("{} {}", plugin.name(), plugin.version_text())),
                        outcome: Err(message),
                    });
                }
            }
        }
    }
    (prepared, plugin_files)
}

/// The deployed processes by `(process id, version)`, each recorded in `report`.
fn register(
    prepared: Vec<deploy::PreparedPlugin>,
    report: &mut DeploymentReport,
) -> HashMap<(String, String), Arc<Deployment>> {
    let mut deployments = HashMap::new();
    for plugin in prepared {
        let processes: Vec<String> = plugin.deployments.iter().map(Deployment::key).collect();
        if let Some(file) = &plugin.file {
            tracing::info!(file = %file.display(), plugin = %plugin.name, processes = ?processes, "plugin file deployed");
            report.plugin_files.push(PluginFileReport {
                file: file.clone(),
                plugin: Some(plugin.label.clone()),
                outcome: Ok(processes),
            });
        }
        for deployment in plugin.deployments {
            match deployment.state {
                ProcessState::Active => {
                    tracing::info!(plugin = %deployment.plugin, process = %deployment.key(), "process deployed");
                    report.deployed.push(deployment.key());
                }
                state => {
                    tracing::info!(plugin = %deployment.plugin, process = %deployment.key(), state = state.name(), "process deployed; it starts no new instances");
                    report.suspended.push((deployment.key(), state));
                }
            }
            deployments.insert(
                (deployment.process_id.clone(), deployment.version.clone()),
                Arc::new(deployment),
            );
        }
    }
    deployments
}

/// Two plugins deploying the same process and version: neither runs (the Java BPE's rule).
fn refuse_duplicates(prepared: &mut Vec<deploy::PreparedPlugin>, report: &mut DeploymentReport) {
    let mut owners: HashMap<String, Vec<String>> = HashMap::new();
    for plugin in prepared.iter() {
        for d in &plugin.deployments {
            owners.entry(d.key()).or_default().push(plugin.name.clone());
        }
    }
    let clashing: Vec<(String, Vec<String>)> =
        owners.into_iter().filter(|(_, o)| o.len() > 1).collect();
    for (process, names) in &clashing {
        for name in names {
            let message = format!("process {process} is also deployed by {}", names.join(", "));
            tracing::error!(plugin = %name, %message, "plugin refused");
            report.refused.push((name.clone(), message));
        }
    }
    prepared.retain(|p| !clashing.iter().any(|(_, names)| names.contains(&p.name)));
}

/// The local Endpoint (address = the FHIR base URL) with its organisation, as the Java BPE
/// looks it up; retried until the server answers or `startup_timeout` passes.
async fn local_identity(local: &FhirClient, config: &BpeConfig) -> Result<EndpointInfo> {
    let probe = ProcessApi::new(
        local.clone(),
        config.tls.clone(),
        "",
        EndpointInfo {
            identifier: String::new(),
            address: config.fhir_base_url.clone(),
            organization: None,
        },
    );
    let deadline = tokio::time::Instant::now() + config.startup_timeout;
    let query = format!("status=active&address={}", config.fhir_base_url);
    loop {
        let error = match probe.endpoints(&query).await {
            Ok(found) => match found.into_iter().next() {
                Some(endpoint) => return Ok(endpoint),
                None => format!(
                    "no active Endpoint with address {} on the FHIR server",
                    config.fhir_base_url
                ),
            },
            Err(e) => e.describe(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Config(format!(
                "cannot find the local organisation: {error}"
            )));
        }
        tracing::warn!(%error, "waiting for the FHIR server");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_lists_read_as_the_java_bpe_reads_them() {
        assert_eq!(
            parse_process_list(
                "dsfdev_updateAllowList|1.0, another_process|2.13\n  third-one_x|0.1\n"
            )
            .unwrap(),
            vec![
                "dsfdev_updateAllowList|1.0",
                "another_process|2.13",
                "third-one_x|0.1"
            ]
        );
        assert!(parse_process_list("").unwrap().is_empty());
        assert!(parse_process_list("  \n ").unwrap().is_empty());
        for bad in [
            "dsfdev_ping",
            "dsfdev_ping|1",
            "dsfdev_ping|1.0.0",
            "ping|1.0",
            "dsfdev_ping|a.b",
        ] {
            let error = parse_process_list(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }
}
