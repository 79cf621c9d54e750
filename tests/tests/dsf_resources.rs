//! The conformance resources a DSF network runs on, loaded for real on both databases: the
//! DSF base definitions the server stores at start, and the FHIR resources of nine released
//! process plugins (`tests/fixtures/dsf-plugins/`) uploaded by a BPE as it deploys them,
//! placeholders filled, validated against their profiles, then uploaded again by a restarted
//! BPE without changing what is stored.
//!
//! The plugins' BPMN files are not part of the fixtures: each process is deployed with a
//! BPMN file of its own that only starts and ends, which is all the upload needs.

use dsf_engine::{Bpe, BpeConfig};
use dsf_plugin_api::fill_resource_placeholders;
use dsf_plugin_api::PluginDefinition;
use dsf_tests::{BackendKind, TestServer, LOCAL_ORG};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dsf-plugins")
}

fn base_definitions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dsf-fhir/definitions/dsf")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn json_files(directory: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap_or_else(|e| panic!("{directory:?}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// A fixture plugin: its definition for the BPE, and each of its resource files as the BPE
/// writes it (placeholders filled).
struct FixturePlugin {
    definition: PluginDefinition,
    resources: Vec<(String, Value)>,
}

/// A process that only starts and ends, with the id and version tag the BPE checks.
fn bare_process(process_id: &str) -> String {
    format!(
        r##"<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" xmlns:camunda="http://camunda.org/schema/1.0/bpmn">
  <bpmn:process id="{process_id}" isExecutable="true" camunda:versionTag="#{{version}}">
    <bpmn:startEvent id="Start"/>
    <bpmn:sequenceFlow id="Flow" sourceRef="Start" targetRef="End"/>
    <bpmn:endEvent id="End"/>
  </bpmn:process>
</bpmn:definitions>"##
    )
}

/// Edits a resource file (plugin name, file, resource with placeholders) before it is used.
type Edit<'a> = &'a dyn Fn(&str, &str, &mut Value);

fn fixture_plugin(directory: &Path, edit: Edit) -> FixturePlugin {
    let manifest = read_json(&directory.join("plugin.json"));
    let text = |key: &str| manifest[key].as_str().expect(key).to_owned();
    let mut definition =
        PluginDefinition::new(&text("name"), &text("version"), &text("releaseDate"))
            .expect("plugin metadata");
    let version = definition.version().resource_version();
    let date = definition.release_date_text();
    let processes = manifest["processes"].as_object().expect("processes");
    let mut resources = BTreeMap::new();
    for (process, files) in processes {
        definition = definition.bpmn(&format!("bpe/{process}.bpmn"), bare_process(process));
        for file in files.as_array().expect("file list") {
            let file = file.as_str().expect("file path");
            let mut resource = read_json(&directory.join(file));
            edit(&text("name"), file, &mut resource);
            let contents = resource.to_string();
            let filled =
                fill_resource_placeholders(file, &contents, &version, &date, LOCAL_ORG, |_| None)
                    .expect("placeholders");
            resources.insert(
                file.to_owned(),
                serde_json::from_str(&filled).expect("fixture JSON"),
            );
            definition = definition.fhir(process, file, contents);
        }
    }
    FixturePlugin {
        definition,
        resources: resources.into_iter().collect(),
    }
}

fn fixture_plugins(edit: Edit) -> Vec<FixturePlugin> {
    let mut directories: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures directory")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_dir())
        .collect();
    directories.sort();
    directories
        .iter()
        .map(|d| fixture_plugin(d, edit))
        .collect()
}

/// The search that finds the resource the way the BPE writes it: by name, by the Task's
/// identifier, or by url and version.
fn search_for(resource: &Value) -> (String, String) {
    let resource_type = resource["resourceType"].as_str().expect("type").to_owned();
    let encode = |s: &str| {
        s.replace('%', "%25")
            .replace('|', "%7C")
            .replace('#', "%23")
    };
    let query = match resource_type.as_str() {
        "NamingSystem" => format!("name={}", encode(resource["name"].as_str().expect("name"))),
        "Task" => {
            let identifier = resource["identifier"]
                .as_array()
                .and_then(|ids| {
                    ids.iter()
                        .find(|i| i["system"] == dsf_plugin_api::constants::TASK_IDENTIFIER)
                })
                .and_then(|i| i["value"].as_str())
                .expect("task identifier");
            format!(
                "identifier={}%7C{}&status=draft",
                dsf_plugin_api::constants::TASK_IDENTIFIER,
                encode(identifier)
            )
        }
        _ => format!(
            "url={}&version={}",
            encode(resource["url"].as_str().expect("url")),
            encode(resource["version"].as_str().expect("version"))
        ),
    };
    (resource_type, query)
}

async fn found(server: &TestServer, resource: &Value) -> Vec<Value> {
    let (resource_type, query) = search_for(resource);
    let bundle = server
        .local
        .search(&resource_type, &query)
        .await
        .unwrap_or_else(|e| panic!("{resource_type}?{query}: {e}"));
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] != "include")
        .map(|e| e["resource"].clone())
        .collect()
}

async fn bpe_deploying(server: &TestServer, plugins: Vec<PluginDefinition>) -> Bpe {
    let tls = Arc::new(
        server
            .pki
            .client_config(&server.local_cert)
            .expect("client TLS"),
    );
    let bpe = Bpe::start(BpeConfig::new(&server.base_url, tls), plugins)
        .await
        .unwrap_or_else(|e| panic!("the BPE deploys the plugins and uploads their resources: {e}"));
    let refused = &bpe.report().refused;
    assert!(refused.is_empty(), "refused plugins: {refused:?}");
    bpe
}

/// Every resource of every plugin, stored once, as the plugin wrote it; returns the versionId
/// of each, by file.
async fn check_stored(
    server: &TestServer,
    plugins: &[FixturePlugin],
) -> BTreeMap<(String, String), String> {
    let mut versions = BTreeMap::new();
    for plugin in plugins {
        let name = plugin.definition.name().to_owned();
        for (file, resource) in &plugin.resources {
            let stored = found(server, resource).await;
            assert_eq!(stored.len(), 1, "{name} {file}: {stored:?}");
            let stored = &stored[0];
            for element in ["url", "version", "name", "kind", "type"] {
                assert_eq!(
                    stored[element], resource[element],
                    "{name} {file}: {element}"
                );
            }
            if resource["resourceType"] != "Task" && resource["status"] == "unknown" {
                assert_eq!(stored["status"], "active", "{name} {file}");
            } else {
                assert_eq!(stored["status"], resource["status"], "{name} {file}");
            }
            let version = stored["meta"]["versionId"].as_str().expect("versionId");
            versions.insert((name.clone(), file.clone()), version.to_owned());
        }
    }
    versions
}

async fn real_plugin_resources_load(kind: BackendKind) {
    let server = TestServer::start(kind).await;

    let definitions = json_files(&base_definitions());
    assert!(
        definitions.len() >= 63,
        "{} base definitions",
        definitions.len()
    );
    for path in &definitions {
        let definition = read_json(path);
        assert_eq!(found(&server, &definition).await.len(), 1, "{path:?}");
    }

    let plugins = fixture_plugins(&|_, _, _| {});
    let files: usize = plugins.iter().map(|p| p.resources.len()).sum();
    assert_eq!(plugins.len(), 9);
    assert!(files >= 116, "{files} plugin resource files");

    let distinct: BTreeSet<(String, String)> = plugins
        .iter()
        .flat_map(|p| p.resources.iter().map(|(_, r)| search_for(r)))
        .collect();
    let definitions_of = |plugins: &[FixturePlugin]| -> Vec<PluginDefinition> {
        plugins.iter().map(|p| p.definition.clone()).collect()
    };

    let bpe = bpe_deploying(&server, definitions_of(&plugins)).await;
    assert_eq!(
        bpe.report().deployed.len(),
        19,
        "{:?}",
        bpe.report().deployed
    );
    assert_eq!(bpe.report().resources, distinct.len());
    drop(bpe);
    let first = check_stored(&server, &plugins).await;

    // A BPE starting again finds every resource as it would write it, and writes nothing.
    let bpe = bpe_deploying(&server, definitions_of(&plugins)).await;
    assert_eq!(bpe.report().resources, 0);
    drop(bpe);
    assert_eq!(check_stored(&server, &plugins).await, first);

    // A resource that changed is written again, and only that one.
    let file = "fhir/CodeSystem/dsf-ping.json";
    let changed = fixture_plugins(&|plugin, path, resource| {
        if plugin == "dsf-process-ping-pong" && path == file {
            resource["title"] = "Ping, renamed".into();
        }
    });
    let bpe = bpe_deploying(&server, definitions_of(&changed)).await;
    assert_eq!(bpe.report().resources, 1);
    drop(bpe);
    let third = check_stored(&server, &changed).await;
    for (key, version) in &third {
        let expected = if key.1 == file {
            "2"
        } else {
            first[key].as_str()
        };
        assert_eq!(version, expected, "{key:?}");
    }
}

fn main() {
    dsf_tests::Suite::new()
        .on_both_backends("real_plugin_resources_load", real_plugin_resources_load)
        .run()
}
