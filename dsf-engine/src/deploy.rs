//! Turning plugin definitions into deployed processes: placeholders filled, BPMN parsed and
//! checked the way the Java BPE checks it, handlers bound, FHIR resources parsed; then the
//! resources written to the local FHIR server and older versions retired.

use crate::adapters::{self, DEFAULT_USER_TASK_LISTENER, FORM_KEY_FIELD};
use crate::services::Services;
use dsf_bpmn::engine::{Engine, Registry, SystemClock};
use dsf_bpmn::{Behaviour, Definitions, Field, FieldValue, Listener, NodeKind, Trigger};
use dsf_core::ErrorChain;
use dsf_fhir::{FhirClient, Format};
use dsf_plugin_api::{fill_placeholders, fill_resource_placeholders, Handler, PluginDefinition};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Whether a deployed process starts new instances, as the Java BPE's process states say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProcessState {
    /// Not run (`DEV_DSF_BPE_PROCESS_EXCLUDED`): no new instances, its FHIR resources are
    /// removed from the local server; instances already running go on.
    Excluded,
    /// Retired (`DEV_DSF_BPE_PROCESS_RETIRED`): no new instances, its FHIR resources stay
    /// with status `retired`; instances already running go on.
    Retired,
    /// Runs: new instances start.
    Active,
}

impl ProcessState {
    /// `excluded`, `retired` or `active`, as the settings and logs write it.
    pub fn name(self) -> &'static str {
        match self {
            ProcessState::Excluded => "excluded",
            ProcessState::Retired => "retired",
            ProcessState::Active => "active",
        }
    }
}

/// One deployed process: `<process id>|<version>` of one plugin.
pub struct Deployment {
    /// The BPMN process id, e.g. `dsfdev_ping`.
    pub process_id: String,
    /// `major.minor`, e.g. `1.0`.
    pub version: String,
    /// The plugin it came from (`<name> <version>`).
    pub plugin: String,
    pub(crate) engine: Engine,
    /// Names of the messages of the process's message start events.
    pub start_messages: Vec<String>,
    /// Ids of the elements that send messages: the instance is saved before each runs.
    pub(crate) send_nodes: std::collections::HashSet<String>,
    /// Whether new instances start.
    pub state: ProcessState,
}

impl Deployment {
    /// `<process id>|<version>`, how the state database names it.
    pub fn key(&self) -> String {
        format!("{}|{}", self.process_id, self.version)
    }
}

/// What deploying the plugins did, for logs and tests.
#[derive(Debug, Default, Clone)]
pub struct DeploymentReport {
    /// `<process id>|<version>` of each deployed process that starts new instances.
    pub deployed: Vec<String>,
    /// Deployed processes that start no new instances (excluded or retired by configuration).
    pub suspended: Vec<(String, ProcessState)>,
    /// Plugins refused, each with the reason (file and element named).
    pub refused: Vec<(String, String)>,
    /// Each file of the plugin directory: what was deployed from it, or why it was refused.
    pub plugin_files: Vec<crate::PluginFileReport>,
    /// FHIR resources written to (or, for excluded processes, removed from) the local server.
    pub resources: usize,
    /// ActivityDefinitions set to `retired` because their version is no longer installed.
    pub retired: usize,
}

/// The process id `<domain without dots>_<name>` and version of an `instantiatesCanonical`
/// such as `http://dsf.dev/bpe/Process/ping|1.0`, or `None` if it does not have that form.
pub fn process_key(instantiates_canonical: &str) -> Option<(String, String)> {
    let (url, version) = instantiates_canonical.split_once('|')?;
    let (major, minor) = version.split_once('.')?;
    if major.is_empty()
        || minor.is_empty()
        || !major
            .bytes()
            .chain(minor.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let (domain, name) = rest.split_once("/bpe/Process/")?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !domain.contains('.') || !domain.split('.').all(label_ok) {
        return None;
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    Some((
        format!("{}_{name}", domain.replace('.', "")),
        version.to_owned(),
    ))
}

/// A plugin with its files read and checked, ready to deploy.
pub(crate) struct PreparedPlugin {
    pub name: String,
    /// `<name> <version>`, for reports.
    pub label: String,
    /// The plugin file it came from, if it is one.
    pub file: Option<std::path::PathBuf>,
    pub deployments: Vec<Deployment>,
    /// FHIR resources (placeholders filled) with the process that needs each and the file it
    /// came from.
    pub resources: Vec<PluginResource>,
}

pub(crate) struct PluginResource {
    pub process: String,
    pub file: String,
    pub resource: Value,
}

/// Checks a plugin and builds its engines; the error names the file and element at fault,
/// and lists every missing handler at once.
pub(crate) fn prepare(
    plugin: &PluginDefinition,
    organization: &str,
    services: &Arc<Services>,
) -> Result<PreparedPlugin, String> {
    let version = plugin.version().resource_version();
    let date = plugin.release_date_text();
    let config = |v: &str| services.api.config(v);
    let fill = |path: &str, text: &str| {
        fill_placeholders(path, text, &version, &date, organization, config)
            .map_err(|e| e.to_string())
    };
    let fill_resource = |path: &str, text: &str| {
        fill_resource_placeholders(path, text, &version, &date, organization, config)
            .map_err(|e| e.to_string())
    };
    let handlers: HashMap<String, &Handler> = plugin
        .handlers()
        .iter()
        .map(|(name, h)| (dsf_bpmn::engine::handler_name(name).to_owned(), h))
        .collect();
    if plugin.bpmn_files().is_empty() {
        return Err("the plugin has no BPMN files".into());
    }
    let mut deployments = Vec::new();
    for file in plugin.bpmn_files() {
        let text = fill(&file.path, &file.contents)?;
        deployments.push(deploy_process(
            &file.path,
            &text,
            &version,
            plugin.name(),
            &handlers,
            services,
        )?);
    }
    let mut resources = Vec::new();
    for (process, file) in plugin.fhir_files() {
        if !deployments.iter().any(|d| &d.process_id == process) {
            return Err(format!(
                "{}: listed for process '{process}', which none of the plugin's BPMN files defines",
                file.path
            ));
        }
        let text = fill_resource(&file.path, &file.contents)?;
        let format = if file.path.ends_with(".json") {
            Format::Json
        } else {
            Format::Xml
        };
        let resource = dsf_fhir::format::parse_resource(text.as_bytes(), format)
            .map_err(|e| format!("{}: {e}", file.path))?;
        check_resource(&file.path, &resource, &version)?;
        resources.push(PluginResource {
            process: process.clone(),
            file: file.path.clone(),
            resource,
        });
    }
    Ok(PreparedPlugin {
        name: plugin.name().to_owned(),
        label: format!("{} {}", plugin.name(), plugin.version_text()),
        file: None,
        deployments,
        resources,
    })
}

/// The process of one BPMN file (`text`, placeholders filled), checked against the DSF's
/// rules and bound to the plugin's handlers.
fn deploy_process(
    path: &str,
    text: &str,
    version: &str,
    plugin: &str,
    handlers: &HashMap<String, &Handler>,
    services: &Arc<Services>,
) -> Result<Deployment, String> {
    let mut definitions = dsf_bpmn::parse(text.as_bytes(), path).map_err(|e| e.to_string())?;
    let [process] = &definitions.processes[..] else {
        return Err(format!(
            "{}: holds {} processes; a DSF BPMN file holds exactly one",
            path,
            definitions.processes.len()
        ));
    };
    if process.version_tag.as_deref() != Some(version) {
        return Err(format!(
            "{}: process '{}' has camunda:versionTag {:?}, the plugin's resource version is {version}",
            path, process.id, process.version_tag
        ));
    }
    if !valid_process_id(&process.id) {
        return Err(format!(
            "{}: process id '{}' is not <domain without dots>_<name>",
            path, process.id
        ));
    }
    check_handlers(path, &definitions, handlers)?;
    add_default_user_task_listeners(&mut definitions);
    let mut registry = Registry::new();
    for (name, handler) in handlers {
        registry.bind(
            name,
            adapters::adapter((*handler).clone(), services.clone()),
        );
    }
    registry.bind(
        DEFAULT_USER_TASK_LISTENER,
        adapters::default_user_task_listener(services.clone()),
    );
    let process_id = definitions.processes[0].id.clone();
    let start_messages = start_messages(&definitions);
    let send_nodes = definitions
        .processes
        .iter()
        .flat_map(|p| p.nodes.iter())
        .filter(|n| is_send(&n.kind))
        .map(|n| n.id.clone())
        .collect();
    let engine = Engine::deploy(definitions, registry, Arc::new(SystemClock))
        .map_err(|e| format!("{}: {e}", path))?;
    Ok(Deployment {
        process_id,
        version: version.to_owned(),
        plugin: plugin.to_owned(),
        engine,
        start_messages,
        send_nodes,
        state: ProcessState::Active,
    })
}

fn is_send(kind: &NodeKind) -> bool {
    matches!(
        kind,
        NodeKind::SendTask
            | NodeKind::IntermediateThrowEvent(Trigger::Message(_))
            | NodeKind::EndEvent(Trigger::Message(_))
    )
}

pub(crate) fn valid_process_id(id: &str) -> bool {
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    id.split_once('_').is_some_and(|(d, n)| ok(d) && ok(n))
}

fn behaviour_name(behaviour: &Behaviour) -> &str {
    dsf_bpmn::engine::handler_name(behaviour.text())
}

/// Every handler the file names exists and is of the kind its element needs; every message
/// send has its three fields. All problems are reported together.
fn check_handlers(
    file: &str,
    definitions: &Definitions,
    handlers: &HashMap<String, &Handler>,
) -> Result<(), String> {
    let mut problems = BTreeSet::new();
    for process in &definitions.processes {
        for node in &process.nodes {
            let at = format!("{file}:{}: element '{}'", node.line, node.id);
            let sends = is_send(&node.kind);
            let want = |problems: &mut BTreeSet<String>,
                        behaviour: &Behaviour,
                        kind: &str,
                        fits: fn(&Handler) -> bool| {
                let name = behaviour_name(behaviour);
                match handlers.get(name) {
                    None => {
                        problems.insert(format!("{at}: no handler registered for '{name}'"));
                    }
                    Some(h) if !fits(h) => {
                        problems.insert(format!(
                            "{at}: '{name}' is a {} handler, the element needs a {kind} handler",
                            h.kind()
                        ));
                    }
                    Some(_) => {}
                }
            };
            if let Some(behaviour) = &node.behaviour {
                if sends {
                    want(&mut problems, behaviour, "message send", |h| {
                        matches!(h, Handler::MessageSend(_))
                    });
                } else if matches!(node.kind, NodeKind::ServiceTask) {
                    want(&mut problems, behaviour, "service task", |h| {
                        matches!(h, Handler::ServiceTask(_))
                    });
                }
            } else if sends || matches!(node.kind, NodeKind::ServiceTask) {
                problems.insert(format!(
                    "{at}: has no camunda:class (or expression) naming its handler"
                ));
            }
            if sends {
                for field in ["instantiatesCanonical", "messageName", "profile"] {
                    if !node.fields.iter().any(|f| f.name == field) {
                        problems.insert(format!("{at}: message send without the field '{field}'"));
                    }
                }
            }
            for listener in &node.execution_listeners {
                want(
                    &mut problems,
                    &listener.behaviour,
                    "execution listener",
                    |h| matches!(h, Handler::ExecutionListener(_)),
                );
            }
            for listener in &node.task_listeners {
                if listener.event != "create" {
                    problems.insert(format!(
                        "{at}: task listener on '{}' is not supported (only 'create')",
                        listener.event
                    ));
                }
                want(
                    &mut problems,
                    &listener.behaviour,
                    "user task listener",
                    |h| matches!(h, Handler::UserTaskListener(_)),
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.into_iter().collect::<Vec<_>>().join("; "))
    }
}

/// A user task without a `create` task listener gets the engine's own, which creates its
/// QuestionnaireResponse (the Java BPE adds its DefaultUserTaskListener the same way).
fn add_default_user_task_listeners(definitions: &mut Definitions) {
    for process in &mut definitions.processes {
        for node in &mut process.nodes {
            let NodeKind::UserTask { form_key } = &node.kind else {
                continue;
            };
            let form_key = form_key.clone().unwrap_or_default();
            if !node.task_listeners.iter().any(|l| l.event == "create") {
                node.task_listeners.push(Listener {
                    event: "create".into(),
                    behaviour: Behaviour::Class(DEFAULT_USER_TASK_LISTENER.into()),
                    fields: Vec::new(),
                });
            }
            for listener in node
                .task_listeners
                .iter_mut()
                .filter(|l| l.event == "create")
            {
                listener.fields.retain(|f| f.name != FORM_KEY_FIELD);
                listener.fields.push(Field {
                    name: FORM_KEY_FIELD.into(),
                    value: FieldValue::String(form_key.clone()),
                });
            }
        }
    }
}

fn start_messages(definitions: &Definitions) -> Vec<String> {
    definitions
        .processes
        .iter()
        .flat_map(|p| p.nodes.iter())
        .filter(|n| n.parent.is_none())
        .filter_map(|n| match &n.kind {
            NodeKind::StartEvent(Trigger::Message(Some(id))) => {
                definitions.messages.get(id).map(|m| m.name.clone())
            }
            _ => None,
        })
        .collect()
}

const METADATA_TYPES: [&str; 9] = [
    "NamingSystem",
    "CodeSystem",
    "ValueSet",
    "StructureDefinition",
    "Library",
    "Measure",
    "Questionnaire",
    "ActivityDefinition",
    "Task",
];

/// The checks the Java BPE makes on plugin resources that would otherwise fail later.
fn check_resource(file: &str, resource: &Value, version: &str) -> Result<(), String> {
    let resource_type = resource["resourceType"].as_str().unwrap_or_default();
    if !METADATA_TYPES.contains(&resource_type) {
        return Err(format!(
            "{file}: a plugin may install {}, not {resource_type}",
            METADATA_TYPES.join(", ")
        ));
    }
    match resource_type {
        "NamingSystem" => {
            if resource["name"].as_str().is_none() {
                return Err(format!("{file}: NamingSystem without name"));
            }
        }
        "Task" => {
            if resource["status"].as_str() != Some("draft") {
                return Err(format!("{file}: a plugin's Task must have status draft"));
            }
            if task_identifier(resource).is_none() {
                return Err(format!(
                    "{file}: Task without an identifier of system {}",
                    dsf_plugin_api::constants::TASK_IDENTIFIER
                ));
            }
        }
        _ => {
            if resource["url"].as_str().is_none() {
                return Err(format!("{file}: {resource_type} without url"));
            }
            if resource["version"].as_str() != Some(version) {
                return Err(format!(
                    "{file}: {resource_type}.version is {}, the plugin's resource version is {version}",
                    resource["version"]
                ));
            }
        }
    }
    Ok(())
}

fn task_identifier(task: &Value) -> Option<&str> {
    task["identifier"].as_array()?.iter().find_map(|i| {
        (i["system"].as_str() == Some(dsf_plugin_api::constants::TASK_IDENTIFIER))
            .then(|| i["value"].as_str())
            .flatten()
    })
}

/// The conditional criteria a plugin resource is written under (the Java BPE's).
fn criteria(resource: &Value) -> Option<String> {
    let encode = |s: &str| {
        s.replace('%', "%25")
            .replace('&', "%26")
            .replace('#', "%23")
            .replace('+', "%2B")
    };
    match resource["resourceType"].as_str()? {
        "NamingSystem" => Some(format!("name={}", encode(resource["name"].as_str()?))),
        "Task" => Some(format!(
            "identifier={}|{}&status=draft",
            dsf_plugin_api::constants::TASK_IDENTIFIER,
            encode(task_identifier(resource)?)
        )),
        _ => Some(format!(
            "url={}&version={}",
            encode(resource["url"].as_str()?),
            encode(resource["version"].as_str()?)
        )),
    }
}

/// Writes the resources of the deployed plugins to the local FHIR server in one batch:
/// those of an active process as they are (metadata `status` `unknown` becomes `active`), those
/// only retired processes need with status `retired`, and those only excluded processes need
/// are deleted. Then retires ActivityDefinitions of the deployed processes whose versions are
/// no longer installed. Returns (written, retired).
pub(crate) async fn upload(
    client: &FhirClient,
    plugins: &[PreparedPlugin],
) -> crate::Result<(usize, usize)> {
    let state_of = |plugin: &PreparedPlugin, process: &str| {
        plugin
            .deployments
            .iter()
            .find(|d| d.process_id == process)
            .map_or(ProcessState::Active, |d| d.state)
    };
    // One entry per resource (by its conditional criteria), in the state of the most active
    // process that needs it.
    let mut wanted: HashMap<String, (ProcessState, usize, Value)> = HashMap::new();
    for plugin in plugins {
        for PluginResource {
            process,
            file,
            resource,
        } in &plugin.resources
        {
            let resource_type = resource["resourceType"].as_str().unwrap_or_default();
            let Some(criteria) = criteria(resource) else {
                return Err(crate::Error::Plugin {
                    plugin: plugin.name.clone(),
                    message: format!("{file}: no url/version, name or identifier to write it by"),
                });
            };
            let url = format!("{resource_type}?{criteria}");
            let order = METADATA_TYPES
                .iter()
                .position(|t| *t == resource_type)
                .unwrap_or(METADATA_TYPES.len());
            let state = state_of(plugin, process);
            match wanted.get(&url) {
                Some((existing, _, _)) if *existing >= state => {}
                _ => {
                    wanted.insert(url, (state, order, resource.clone()));
                }
            }
        }
    }
    let mut entries: Vec<(usize, String, Value)> = wanted
        .into_iter()
        .map(|(url, (state, order, mut resource))| {
            let entry = match state {
                ProcessState::Excluded => json!({"request": {"method": "DELETE", "url": url}}),
                ProcessState::Retired | ProcessState::Active => {
                    let status = resource["status"].as_str();
                    if resource["resourceType"] != "Task"
                        && (status == Some("unknown") || state == ProcessState::Retired)
                    {
                        resource["status"] = json!(if state == ProcessState::Retired {
                            "retired"
                        } else {
                            "active"
                        });
                    }
                    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
                }
            };
            (order, url, entry)
        })
        .collect();
    // Deletes after writes, each group in dependency order, the same order every start.
    entries.sort_by(|a, b| {
        let deletes = |e: &Value| e["request"]["method"] == "DELETE";
        (deletes(&a.2), a.0, &a.1).cmp(&(deletes(&b.2), b.0, &b.1))
    });
    drop_unchanged(client, &mut entries).await;
    let count = entries.len();
    if count > 0 {
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "batch",
            "entry": entries.iter().map(|(_, _, e)| e).collect::<Vec<_>>(),
        });
        let response = client.transaction(&bundle).await?;
        let failed: Vec<String> = response["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(&entries)
            .filter(|(answer, (_, _, entry))| {
                let status = answer["response"]["status"].as_str().unwrap_or_default();
                let gone = entry["request"]["method"] == "DELETE" && status.starts_with("404");
                !(status.starts_with('2') || gone)
            })
            .map(|(answer, (_, url, _))| format!("{url}: {}", answer["response"]))
            .collect();
        if !failed.is_empty() {
            return Err(crate::Error::Config(format!(
                "the FHIR server refused plugin resources: {}",
                failed.join("; ")
            )));
        }
    }
    let retired = retire_old_versions(client, plugins).await?;
    Ok((count, retired))
}

/// Leaves out the writes of resources the server already holds as they would be written, as
/// the Java BPE writes a plugin's resources only when they change: a BPE that starts again
/// adds no versions. If the server cannot say, everything is written.
async fn drop_unchanged(client: &FhirClient, entries: &mut Vec<(usize, String, Value)>) {
    let writes: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].2["request"]["method"] == "PUT")
        .collect();
    if writes.is_empty() {
        return;
    }
    let reads = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": writes.iter().map(|&i| json!({"request": {"method": "GET", "url": entries[i].1}})).collect::<Vec<_>>(),
    });
    let answers = match client.transaction(&reads).await {
        Ok(response) => response["entry"].as_array().cloned().unwrap_or_default(),
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "could not read the stored plugin resources; writing all");
            return;
        }
    };
    if answers.len() != writes.len() {
        return;
    }
    let unchanged: BTreeSet<usize> = writes
        .iter()
        .zip(&answers)
        .filter(|(&i, answer)| {
            let matches: Vec<&Value> = answer["resource"]["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["search"]["mode"] != "include")
                .collect();
            matches.len() == 1 && same_content(&matches[0]["resource"], &entries[i].2["resource"])
        })
        .map(|(&i, _)| i)
        .collect();
    let mut index = 0;
    entries.retain(|_| {
        index += 1;
        !unchanged.contains(&(index - 1))
    });
}

/// Equal to what the server stores for `wanted`: apart from what it sets on every write (id,
/// versionId, lastUpdated) and with the default profile it assigns (the server's own rule).
fn same_content(stored: &Value, wanted: &Value) -> bool {
    let without_server_fields = |resource: &Value| {
        let mut resource = resource.clone();
        if let Some(object) = resource.as_object_mut() {
            object.remove("id");
            if let Some(meta) = object.get_mut("meta").and_then(Value::as_object_mut) {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                if meta.is_empty() {
                    object.remove("meta");
                }
            }
        }
        resource
    };
    let mut as_stored = wanted.clone();
    dsf_fhir::default_profile::set_default_profile(&mut as_stored);
    without_server_fields(stored) == without_server_fields(&as_stored)
}

async fn retire_old_versions(
    client: &FhirClient,
    plugins: &[PreparedPlugin],
) -> crate::Result<usize> {
    let mut installed: HashMap<String, BTreeSet<String>> = HashMap::new();
    for plugin in plugins {
        for PluginResource { resource, .. } in &plugin.resources {
            if resource["resourceType"] == "ActivityDefinition" {
                if let (Some(url), Some(version)) =
                    (resource["url"].as_str(), resource["version"].as_str())
                {
                    installed
                        .entry(url.to_owned())
                        .or_default()
                        .insert(version.to_owned());
                }
            }
        }
    }
    let mut retired = 0;
    for (url, versions) in &installed {
        let found = client
            .search_pages("ActivityDefinition", &format!("url={url}&status=active"))
            .collect()
            .await?;
        for mut definition in found {
            let version = definition["version"].as_str().unwrap_or_default();
            if !versions.contains(version) {
                definition["status"] = json!("retired");
                client.update(&definition).await?;
                retired += 1;
            }
        }
    }
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_plugin_resources_compare_without_what_the_server_sets() {
        let wanted = json!({"resourceType": "CodeSystem", "url": "http://x.org/cs", "version": "1.0",
            "status": "active", "meta": {"tag": [{"code": "ALL"}]}});
        let stored = json!({"resourceType": "CodeSystem", "id": "7", "url": "http://x.org/cs",
            "version": "1.0", "status": "active", "meta": {"versionId": "3",
            "lastUpdated": "2026-12-05T10:00:00Z", "tag": [{"code": "ALL"}],
            "profile": ["http://dsf.dev/fhir/StructureDefinition/code-system"]}});
        assert!(same_content(&stored, &wanted));
        let mut renamed = wanted.clone();
        renamed["title"] = json!("Renamed");
        assert!(!same_content(&stored, &renamed));
        let mut other_profile = wanted.clone();
        other_profile["meta"]["profile"] = json!(["http://x.org/StructureDefinition/cs"]);
        assert!(!same_content(&stored, &other_profile));
        // A profile an earlier version named is not the server's default: write again.
        let mut stored_other = stored.clone();
        stored_other["meta"]["profile"] = json!(["http://x.org/StructureDefinition/cs"]);
        assert!(!same_content(&stored_other, &wanted));
    }

    #[test]
    fn process_keys_from_canonical_urls() {
        assert_eq!(
            process_key("http://dsf.dev/bpe/Process/pingAutostart|1.0"),
            Some(("dsfdev_pingAutostart".into(), "1.0".into()))
        );
        assert_eq!(
            process_key("https://medizininformatik-initiative.de/bpe/Process/dataSend|1.1"),
            Some((
                "medizininformatik-initiativede_dataSend".into(),
                "1.1".into()
            ))
        );
        for bad in [
            "http://dsf.dev/bpe/Process/ping",
            "http://dsf.dev/bpe/Process/ping|1",
            "http://dsf.dev/bpe/Process/ping|1.0.0",
            "http://dsf/bpe/Process/ping|1.0",
            "ftp://dsf.dev/bpe/Process/ping|1.0",
            "http://dsf.dev/bpe/Process/pi ng|1.0",
            "http://dsf.dev/fhir/Process/ping|1.0",
            "",
        ] {
            assert_eq!(process_key(bad), None, "{bad}");
        }
    }
}
