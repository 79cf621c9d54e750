//! The DSF allow-list process plugin on `dsf-plugin-api`. A central organisation (the
//! allow-list management site) publishes its allow list, the Organizations, Endpoints and
//! OrganizationAffiliations on its FHIR server, as a transaction Bundle readable by all
//! (`dsfdev_updateAllowList`); every other organisation downloads that Bundle, checks that it
//! only writes or deletes allow-list resources, and applies it to its own FHIR server
//! (`dsfdev_downloadAllowList`). An organisation added to the central list can then talk to
//! everyone who downloaded it, with no restart.
//!
//! Process ids, canonical URLs, Task profiles, codes and message names are the DSF
//! allow-list plugin's (version 1.0), so Java DSF and dsf-rs organisations share one list.
//! The handlers are registered under our names (`allowlist.*`) and under the Java class names.
//! The update process's authorization names the central organisation through
//! `DEV_DSF_BPE_ALLOW_LIST_ORGANIZATION`; sites other than the central one exclude it
//! (`DEV_DSF_BPE_PROCESS_EXCLUDED=dsfdev_updateAllowList|1.0`), as with the Java plugin.
//!
//! ```
//! let plugin = dsf_plugin_allow_list::plugin();
//! assert_eq!(plugin.name(), "dsf-process-allow-list");
//! assert_eq!(plugin.version().resource_version(), "1.0");
//! ```

use dsf_plugin_api::constants::{
    BPMN_MESSAGE, ENDPOINT_IDENTIFIER, ERROR, ORGANIZATION_IDENTIFIER,
};
use dsf_plugin_api::task::{add_output, inputs, parameter, requester, tag_all};
use dsf_plugin_api::{
    async_trait, json, Handler, PluginDefinition, ProcessApi, ProcessError, ServiceTask, Value,
    Variables,
};
use std::collections::HashMap;
use std::sync::Arc;

/// CodeSystem of the allow-list input and output.
pub const ALLOW_LIST: &str = "http://dsf.dev/fhir/CodeSystem/allow-list";
/// Its one code: the allow-list Bundle.
pub const ALLOW_LIST_CODE: &str = "allow_list";

/// The process URLs, for starting them.
pub const UPDATE_ALLOW_LIST_PROCESS: &str = "http://dsf.dev/bpe/Process/updateAllowList";
/// The process that downloads an allow list Bundle from another organisation.
pub const DOWNLOAD_ALLOW_LIST_PROCESS: &str = "http://dsf.dev/bpe/Process/downloadAllowList";

/// Process variables between the download's steps.
const BUNDLE: &str = "bundle";
const BUNDLE_URL: &str = "bundleUrl";

const ALLOWED_TYPES: [&str; 3] = ["Organization", "OrganizationAffiliation", "Endpoint"];

/// The plugin.
pub fn plugin() -> PluginDefinition {
    let update = "dsfdev_updateAllowList";
    let download = "dsfdev_downloadAllowList";
    let files: [(&[&str], &str, &'static str); 8] = [
        (
            &[update, download],
            "fhir/CodeSystem-dsf-allow-list.json",
            include_str!("../fhir/CodeSystem-dsf-allow-list.json"),
        ),
        (
            &[update, download],
            "fhir/ValueSet-dsf-allow-list.json",
            include_str!("../fhir/ValueSet-dsf-allow-list.json"),
        ),
        (
            &[update],
            "fhir/ActivityDefinition-dsf-update-allow-list.json",
            include_str!("../fhir/ActivityDefinition-dsf-update-allow-list.json"),
        ),
        (
            &[update],
            "fhir/StructureDefinition-task-update-allow-list.json",
            include_str!("../fhir/StructureDefinition-task-update-allow-list.json"),
        ),
        (
            &[update],
            "fhir/Task-dsf-task-update-allow-list.json",
            include_str!("../fhir/Task-dsf-task-update-allow-list.json"),
        ),
        (
            &[download],
            "fhir/ActivityDefinition-dsf-download-allow-list.json",
            include_str!("../fhir/ActivityDefinition-dsf-download-allow-list.json"),
        ),
        (
            &[download],
            "fhir/StructureDefinition-task-download-allow-list.json",
            include_str!("../fhir/StructureDefinition-task-download-allow-list.json"),
        ),
        (
            &[download],
            "fhir/Task-dsf-task-download-allow-list.json",
            include_str!("../fhir/Task-dsf-task-download-allow-list.json"),
        ),
    ];
    let definition = PluginDefinition::new("dsf-process-allow-list", "1.0.0.1", "2023-09-14")
        .unwrap_or_else(|e| unreachable!("the plugin's own metadata is valid: {e}"))
        .bpmn(
            "bpe/update-allow-list.bpmn",
            include_str!("../bpe/update-allow-list.bpmn"),
        )
        .bpmn(
            "bpe/download-allow-list.bpmn",
            include_str!("../bpe/download-allow-list.bpmn"),
        );
    let definition = files
        .into_iter()
        .flat_map(|(processes, path, text)| processes.iter().map(move |p| (*p, path, text)))
        .fold(definition, |d, (process, path, text)| {
            d.fhir(process, path, text)
        });
    let handlers: [(&str, &str, Handler); 4] = [
        (
            "UpdateAllowList",
            "dev.dsf.bpe.service.UpdateAllowList",
            Handler::ServiceTask(Arc::new(UpdateAllowList)),
        ),
        (
            "DownloadAllowList",
            "dev.dsf.bpe.service.DownloadAllowList",
            Handler::ServiceTask(Arc::new(DownloadAllowList)),
        ),
        (
            "CheckAllowList",
            "dev.dsf.bpe.service.CheckAllowList",
            Handler::ServiceTask(Arc::new(CheckAllowList)),
        ),
        (
            "InsertAllowList",
            "dev.dsf.bpe.service.InsertAllowList",
            Handler::ServiceTask(Arc::new(InsertAllowList)),
        ),
    ];
    handlers
        .into_iter()
        .fold(definition, |d, (name, java, handler)| {
            d.handler_named(&[&format!("allowlist.{name}"), java], handler)
        })
}

/// The value of a resource's first identifier of `system`.
fn identifier_value<'a>(resource: &'a Value, system: &str) -> Option<&'a str> {
    resource["identifier"]
        .as_array()?
        .iter()
        .find(|i| i["system"].as_str() == Some(system))?["value"]
        .as_str()
}

/// `Type/id` of a resource, how the references between the allow-list resources name it.
fn type_and_id(resource: &Value) -> Option<String> {
    Some(format!(
        "{}/{}",
        resource["resourceType"].as_str()?,
        resource["id"].as_str()?
    ))
}

/// The local allow list as a transaction Bundle of conditional updates, stored (as the one
/// Bundle with the allow-list identifier) on the local FHIR server for all to read; the start
/// Task gets its versioned URL as output.
struct UpdateAllowList;

#[async_trait]
impl ServiceTask for UpdateAllowList {
    async fn execute(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let local = api.local_client();
        let query = format!(
            "active=true&identifier={ORGANIZATION_IDENTIFIER}|&_include=Organization:endpoint&_revinclude=OrganizationAffiliation:participating-organization"
        );
        let found: Vec<Value> = {
            let mut pages = local.search_pages("Organization", &query);
            let mut found = Vec::new();
            while let Some(page) = pages.next_page().await? {
                found.extend(
                    page["entry"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| e["resource"].clone()),
                );
            }
            found
        };
        let allow_list: Vec<Value> = found
            .into_iter()
            .filter(|r| {
                r["resourceType"]
                    .as_str()
                    .is_some_and(|t| ALLOWED_TYPES.contains(&t))
            })
            .collect();
        let bundle = allow_list_bundle(&allow_list)?;
        let written = local
            .update_conditional(
                &bundle,
                &format!("identifier={ALLOW_LIST}|{ALLOW_LIST_CODE}"),
            )
            .await?;
        let (id, version) = written.id_and_version().ok_or_else(|| {
            ProcessError::failed("the FHIR server did not say where it stored the allow list")
        })?;
        let url = format!(
            "{}/Bundle/{id}/_history/{version}",
            api.local_endpoint().address.trim_end_matches('/')
        );
        tracing::info!(bundle = %url, entries = allow_list.len(), "allow list published");
        let mut task = vars.start_task_or_fail()?;
        add_output(
            &mut task,
            parameter(
                ALLOW_LIST,
                ALLOW_LIST_CODE,
                "valueReference",
                json!({"reference": url}),
            ),
        );
        vars.update_task(task)
    }
}

/// The transaction Bundle that writes `resources` (Organizations, Endpoints and
/// OrganizationAffiliations, linking each other by `Type/id`) to another server: each entry a
/// conditional update by identifiers, the links rewritten to the entries' `urn:uuid`s.
fn allow_list_bundle(resources: &[Value]) -> Result<Value, ProcessError> {
    let temporary: HashMap<String, String> = resources
        .iter()
        .filter_map(type_and_id)
        .map(|r| (r, format!("urn:uuid:{}", uuid::Uuid::new_v4())))
        .collect();
    let identifiers: HashMap<String, String> = resources
        .iter()
        .filter_map(|r| {
            let key = type_and_id(r)?;
            let system = match r["resourceType"].as_str()? {
                "Organization" => ORGANIZATION_IDENTIFIER,
                "Endpoint" => ENDPOINT_IDENTIFIER,
                _ => return None,
            };
            Some((key, identifier_value(r, system)?.to_owned()))
        })
        .collect();
    let relink = |reference: &Value, what: &str| -> Result<(String, Value), ProcessError> {
        let target = reference["reference"].as_str().unwrap_or_default();
        let target = target.split("/_history").next().unwrap_or(target);
        let (Some(urn), Some(identifier)) = (temporary.get(target), identifiers.get(target)) else {
            return Err(ProcessError::failed(format!(
                "{what} {target} is not part of the allow list"
            )));
        };
        let resource_type = target.split('/').next().unwrap_or_default();
        Ok((
            identifier.clone(),
            json!({"type": resource_type, "reference": urn}),
        ))
    };
    let mut entries = Vec::new();
    for resource in resources {
        let Some(key) = type_and_id(resource) else {
            continue;
        };
        let urn = temporary[&key].clone();
        let mut copy = resource.clone();
        if let Some(object) = copy.as_object_mut() {
            object.remove("id");
            if let Some(meta) = object.get_mut("meta").and_then(Value::as_object_mut) {
                meta.remove("versionId");
                meta.remove("lastUpdated");
            }
        }
        let url = match resource["resourceType"].as_str().unwrap_or_default() {
            "Organization" => {
                if let Some(endpoints) = resource["endpoint"].as_array() {
                    let relinked = endpoints
                        .iter()
                        .map(|e| relink(e, "endpoint").map(|(_, r)| r))
                        .collect::<Result<Vec<_>, _>>()?;
                    copy["endpoint"] = Value::Array(relinked);
                }
                format!(
                    "Organization?identifier={ORGANIZATION_IDENTIFIER}|{}",
                    identifiers[&key]
                )
            }
            "Endpoint" => {
                if !resource["managingOrganization"].is_null() {
                    copy["managingOrganization"] =
                        relink(&resource["managingOrganization"], "managing organization")?.1;
                }
                format!(
                    "Endpoint?identifier={ENDPOINT_IDENTIFIER}|{}",
                    identifiers[&key]
                )
            }
            _ => {
                let (primary, primary_link) =
                    relink(&resource["organization"], "primary organization")?;
                let (participating, participating_link) = relink(
                    &resource["participatingOrganization"],
                    "participating organization",
                )?;
                let first_endpoint = resource["endpoint"]
                    .as_array()
                    .and_then(|e| e.first())
                    .ok_or_else(|| ProcessError::failed(format!("{key} names no endpoint")))?;
                let (endpoint, endpoint_link) = relink(first_endpoint, "endpoint")?;
                copy["organization"] = primary_link;
                copy["participatingOrganization"] = participating_link;
                copy["endpoint"] = json!([endpoint_link]);
                format!(
                    "OrganizationAffiliation?primary-organization:identifier={ORGANIZATION_IDENTIFIER}|{primary}&participating-organization:identifier={ORGANIZATION_IDENTIFIER}|{participating}&endpoint:identifier={ENDPOINT_IDENTIFIER}|{endpoint}"
                )
            }
        };
        entries.push(json!({
            "fullUrl": urn,
            "resource": copy,
            "request": {"method": "PUT", "url": url},
        }));
    }
    Ok(json!({
        "resourceType": "Bundle",
        "meta": {"tag": [tag_all()]},
        "identifier": {"system": ALLOW_LIST, "value": ALLOW_LIST_CODE},
        "type": "transaction",
        "entry": entries,
    }))
}

/// Reads the Bundle the start Task's `allow-list|allow_list` input references (an absolute
/// URL on the publishing organisation's server, optionally versioned).
struct DownloadAllowList;

#[async_trait]
impl ServiceTask for DownloadAllowList {
    async fn execute(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let task = vars.start_task_or_fail()?;
        let references: Vec<&str> = inputs(&task, ALLOW_LIST, ALLOW_LIST_CODE)
            .into_iter()
            .filter_map(|p| p["valueReference"]["reference"].as_str())
            .collect();
        let [reference] = references[..] else {
            return Err(ProcessError::failed(format!(
                "Task input parameter '{ALLOW_LIST_CODE}' holds {} Bundle references, expected 1",
                references.len()
            )));
        };
        let (base, rest) = reference.split_once("/Bundle/").ok_or_else(|| {
            ProcessError::failed(format!(
                "Task input parameter '{ALLOW_LIST_CODE}' has no Bundle reference: '{reference}'"
            ))
        })?;
        let (id, version) = match rest.split_once("/_history/") {
            Some((id, version)) => (id, Some(version)),
            None => (rest, None),
        };
        let client = api.client_for(base)?;
        let read = match version.map(str::parse::<i64>) {
            Some(Ok(version)) => client.vread::<Value>("Bundle", id, version).await,
            Some(Err(_)) => {
                return Err(ProcessError::failed(format!(
                    "'{reference}' names no Bundle version"
                )))
            }
            None => client.read::<Value>("Bundle", id).await,
        };
        let bundle = read.map_err(|e| {
            ProcessError::failed_by(
                format!(
                    "Error while reading Bundle with id '{reference}' from organization {}",
                    requester(&task).unwrap_or("?")
                ),
                e,
            )
        })?;
        vars.set_string(BUNDLE_URL, reference);
        vars.set_resource(BUNDLE, bundle);
        Ok(())
    }
}

/// The Bundle [`DownloadAllowList`] read, and its URL.
fn downloaded(vars: &Variables<'_>) -> Result<(Value, String), ProcessError> {
    let bundle = vars
        .get_resource(BUNDLE)
        .ok_or_else(|| ProcessError::failed("no downloaded Bundle"))?;
    Ok((bundle, vars.get_string(BUNDLE_URL).unwrap_or_default()))
}

/// Refuses a Bundle that is not a transaction or batch of PUTs and DELETEs of allow-list
/// resources; each offending entry is named in an error output of the start Task.
struct CheckAllowList;

#[async_trait]
impl ServiceTask for CheckAllowList {
    async fn execute(
        &self,
        _api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let (bundle, url) = downloaded(vars)?;
        let kind = bundle["type"].as_str().unwrap_or_default();
        if kind != "transaction" && kind != "batch" {
            return Err(ProcessError::failed(format!(
                "Bundle type transaction or batch expected, but got '{kind}' in Bundle with id '{url}'"
            )));
        }
        let problems: Vec<String> = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|entry| entry_problems(entry, &url))
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        let mut task = vars.start_task_or_fail()?;
        for problem in &problems {
            tracing::warn!(bundle = %url, %problem, "allow list refused");
            add_output(
                &mut task,
                parameter(BPMN_MESSAGE, ERROR, "valueString", json!(problem)),
            );
        }
        vars.update_task(task)?;
        Err(ProcessError::failed(format!(
            "Expected Bundle with id '{url}' containing only resource types Organization, OrganizationAffiliation or Endpoint and request methods PUT or DELETE, but found different types or methods"
        )))
    }
}

/// What is wrong with one entry of an allow-list Bundle: the resource type, the method, or
/// both (each named, as the Java plugin reports them).
fn entry_problems(entry: &Value, url: &str) -> Vec<String> {
    let method = entry["request"]["method"].as_str().unwrap_or_default();
    let request_url = entry["request"]["url"].as_str().unwrap_or_default();
    let mut problems = Vec::new();
    let allowed_type = if method == "DELETE" {
        ALLOWED_TYPES.iter().any(|t| request_url.starts_with(t))
    } else {
        entry["resource"]["resourceType"]
            .as_str()
            .is_some_and(|t| ALLOWED_TYPES.contains(&t))
    };
    if !allowed_type {
        problems.push(if method == "DELETE" {
            format!("Resource delete of '{request_url}' not allowed in Bundle with id '{url}'")
        } else {
            format!(
                "Resource of type '{}' not allowed in Bundle with id '{url}'",
                entry["resource"]["resourceType"].as_str().unwrap_or("?")
            )
        });
    }
    if method != "PUT" && method != "DELETE" {
        problems.push(format!(
            "Request with Method '{method}' not allowed in Bundle with id '{url}'"
        ));
    }
    problems
}

/// Applies the checked Bundle to the local FHIR server in one transaction.
struct InsertAllowList;

#[async_trait]
impl ServiceTask for InsertAllowList {
    async fn execute(
        &self,
        api: &ProcessApi,
        vars: &mut Variables<'_>,
    ) -> Result<(), ProcessError> {
        let (bundle, url) = downloaded(vars)?;
        let task = vars.start_task_or_fail()?;
        let requester = requester(&task).unwrap_or_default();
        api.local_client()
            .transaction(&bundle)
            .await
            .map_err(|e| {
                ProcessError::failed_by(
                    format!(
                        "Error while executing Bundle with id '{url}' from organization {requester} locally"
                    ),
                    e,
                )
            })?;
        tracing::info!(bundle = %url, "allow list applied");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_puts_and_deletes_of_allow_list_resources_pass() {
        let ok = json!({"resource": {"resourceType": "Endpoint"}, "request": {"method": "PUT", "url": "Endpoint?identifier=a|b"}});
        assert!(entry_problems(&ok, "u").is_empty());
        let delete = json!({"request": {"method": "DELETE", "url": "Organization?identifier=a|b"}});
        assert!(entry_problems(&delete, "u").is_empty());
        let task = json!({"resource": {"resourceType": "Task"}, "request": {"method": "POST", "url": "Task"}});
        assert_eq!(entry_problems(&task, "u").len(), 2);
        let delete_task = json!({"request": {"method": "DELETE", "url": "Task/1"}});
        assert_eq!(
            entry_problems(&delete_task, "u"),
            vec!["Resource delete of 'Task/1' not allowed in Bundle with id 'u'"]
        );
    }

    #[test]
    fn the_bundle_relinks_resources_and_writes_them_by_identifier() {
        let org = json!({"resourceType": "Organization", "id": "o1", "meta": {"versionId": "2"},
            "identifier": [{"system": ORGANIZATION_IDENTIFIER, "value": "org.a"}],
            "endpoint": [{"reference": "Endpoint/e1"}]});
        let endpoint = json!({"resourceType": "Endpoint", "id": "e1",
            "identifier": [{"system": ENDPOINT_IDENTIFIER, "value": "ep.a"}],
            "managingOrganization": {"reference": "Organization/o1"}, "address": "https://a/fhir"});
        let parent = json!({"resourceType": "Organization", "id": "p",
            "identifier": [{"system": ORGANIZATION_IDENTIFIER, "value": "parent"}]});
        let affiliation = json!({"resourceType": "OrganizationAffiliation", "id": "a1",
            "organization": {"reference": "Organization/p"},
            "participatingOrganization": {"reference": "Organization/o1"},
            "endpoint": [{"reference": "Endpoint/e1"}]});
        let bundle = allow_list_bundle(&[org, endpoint, parent, affiliation]).expect("bundle");
        let entries = bundle["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 4);
        let urn_of = |i: usize| {
            entries[i]["fullUrl"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(
            entries[0]["resource"]["endpoint"][0]["reference"],
            urn_of(1)
        );
        assert_eq!(
            entries[1]["resource"]["managingOrganization"]["reference"],
            urn_of(0)
        );
        assert!(entries[0]["resource"]["meta"].get("versionId").is_none());
        assert!(entries[0]["resource"].get("id").is_none());
        assert_eq!(
            entries[3]["request"]["url"],
            format!("OrganizationAffiliation?primary-organization:identifier={ORGANIZATION_IDENTIFIER}|parent&participating-organization:identifier={ORGANIZATION_IDENTIFIER}|org.a&endpoint:identifier={ENDPOINT_IDENTIFIER}|ep.a")
        );
        let dangling = json!({"resourceType": "Endpoint", "id": "e2",
            "identifier": [{"system": ENDPOINT_IDENTIFIER, "value": "ep.b"}],
            "managingOrganization": {"reference": "Organization/elsewhere"}});
        assert!(allow_list_bundle(&[dangling]).is_err());
    }
}
