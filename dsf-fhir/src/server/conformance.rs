//! Profile validation in the server: the DSF base conformance resources stored at start-up,
//! the conformance resources of the store kept as one [`Definitions`] until a write to one of
//! them moves the store's generation, default profiles, and the check of every resource
//! written (403 with the broken rules, as the Java DSF).

use super::FhirServer;
use crate::resource_type::CONFORMANCE_TYPES;
use crate::search::{SearchQuery, MAX_COUNT};
use crate::store::WriteOp;
use crate::validation::{self, Definitions, Severity};
use crate::{Error, Result};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Most broken rules named in one refusal; the rest are counted.
const MAX_REPORTED: usize = 20;

/// The current [`Definitions`] and the store generation they were read at.
#[derive(Default)]
pub(crate) struct ConformanceCache {
    current: Mutex<Option<(u64, Arc<Definitions>)>>,
    /// One reload at a time; others wait for it instead of reading the same rows.
    reloading: tokio::sync::Mutex<()>,
}

impl ConformanceCache {
    fn at(&self, generation: u64) -> Option<Arc<Definitions>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, d)| d.clone())
    }
}

/// The conditional create of one base resource: by url and version, a NamingSystem by name.
fn base_definition_op(resource: Value) -> Result<WriteOp> {
    let resource_type = crate::server::rest::resource_type(
        resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or(""),
    )?;
    let text = |key: &str| {
        resource
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let pairs = if resource_type == "NamingSystem" {
        vec![("name".to_owned(), text("name"))]
    } else {
        vec![
            ("url".to_owned(), text("url")),
            ("version".to_owned(), text("version")),
        ]
    };
    Ok(WriteOp::Create {
        if_none_exist: Some(SearchQuery::criteria_from_pairs(resource_type, &pairs, "")?),
        resource,
        full_url: None,
    })
}

impl FhirServer {
    /// Stores the DSF base StructureDefinitions, CodeSystems, ValueSets and NamingSystems
    /// that are not stored yet (the Java DSF loads the same set at start-up).
    pub(crate) async fn ensure_base_definitions(&self) -> Result<()> {
        let ops = validation::base_definitions()
            .into_iter()
            .map(|(_, resource)| base_definition_op(resource))
            .collect::<Result<Vec<_>>>()?;
        self.store.transaction(ops).await?;
        Ok(())
    }

    /// The conformance resources as of now: reused while the store's conformance generation
    /// stands, read again when it has moved.
    pub(crate) async fn definitions(&self) -> Result<Arc<Definitions>> {
        let generation = self.store.conformance_generation();
        if let Some(current) = self.conformance.at(generation) {
            return Ok(current);
        }
        let _turn = self.conformance.reloading.lock().await;
        // Read before loading: a write during the load moves it, and the next call reloads.
        let generation = self.store.conformance_generation();
        if let Some(current) = self.conformance.at(generation) {
            return Ok(current);
        }
        let mut resources = Vec::new();
        for resource_type in CONFORMANCE_TYPES {
            let mut page = 1;
            loop {
                let mut query = SearchQuery::of_clauses(resource_type, Vec::new(), MAX_COUNT);
                query.page = page;
                let result = self.store.search(&query).await?;
                let found = result.matches.len();
                for stored in &result.matches {
                    resources.push(stored.json()?);
                }
                if found < MAX_COUNT {
                    break;
                }
                page += 1;
            }
        }
        let definitions = Arc::new(Definitions::new(resources));
        *self
            .conformance
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((generation, definitions.clone()));
        tracing::debug!(generation, "conformance resources loaded for validation");
        Ok(definitions)
    }

    /// Gives a resource about to be created or updated the default profile of its type, as
    /// the Java DSF does before validating.
    pub(crate) fn set_default_profiles(ops: &mut [WriteOp]) {
        for op in ops {
            if let WriteOp::Create { resource, .. }
            | WriteOp::CreateWithContent { resource, .. }
            | WriteOp::Update { resource, .. }
            | WriteOp::ConditionalUpdate { resource, .. } = op
            {
                validation::set_default_profile(resource);
            }
        }
    }

    /// Checks a resource against its type and profiles: 403 with the broken rules. A Task
    /// updated to `failed` is stored even when it breaks them, so a process can always end.
    pub(crate) async fn validate_resource(&self, resource: &Value, is_update: bool) -> Result<()> {
        let definitions = self.definitions().await?;
        let report = validation::validate(&definitions, resource);
        for issue in report
            .issues
            .iter()
            .filter(|i| i.severity == Severity::Warning)
        {
            tracing::debug!(location = %issue.location, "validation: {}", issue.message);
        }
        if report.is_valid() {
            return Ok(());
        }
        let failed_task = resource.get("resourceType").and_then(Value::as_str) == Some("Task")
            && resource.get("status").and_then(Value::as_str) == Some("failed");
        if is_update && failed_task {
            tracing::info!("storing a failed Task that breaks its profiles");
            return Ok(());
        }
        let errors: Vec<String> = report.errors().map(ToString::to_string).collect();
        let mut message = errors
            .iter()
            .take(MAX_REPORTED)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if errors.len() > MAX_REPORTED {
            message.push_str(&format!("; and {} more", errors.len() - MAX_REPORTED));
        }
        Err(Error::ProfileViolation(message))
    }
}

impl FhirServer {
    /// `$snapshot`: the snapshot of a stored StructureDefinition (by id, or by `url`), or of
    /// one given in the request (a Parameters `resource` or the StructureDefinition itself).
    pub(crate) async fn snapshot(
        &self,
        call: &super::Call<'_>,
        id: Option<&str>,
    ) -> Result<super::reply::Reply> {
        use http::{Method, StatusCode};
        self.require(call, super::Role::Read, "StructureDefinition")?;
        let definition = match id {
            Some(id) => self.readable_structure_definition(call, id).await?,
            None if call.method == Method::POST => {
                let body = self.parse_body(call).await?;
                match body.get("resourceType").and_then(Value::as_str) {
                    Some("StructureDefinition") => body,
                    Some("Parameters") => {
                        let parameters = body
                            .get("parameter")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        let named = |name: &str| {
                            parameters
                                .iter()
                                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                                .cloned()
                        };
                        if let Some(resource) =
                            named("resource").and_then(|p| p.get("resource").cloned())
                        {
                            resource
                        } else if let Some(url) = named("url").and_then(|p| {
                            ["valueUri", "valueUrl", "valueCanonical", "valueString"]
                                .iter()
                                .find_map(|k| p.get(*k)?.as_str().map(str::to_owned))
                        }) {
                            self.structure_definition_by_url(call, &url).await?
                        } else {
                            return Err(Error::Invalid(
                                "$snapshot needs a 'resource' or 'url' parameter".into(),
                            ));
                        }
                    }
                    _ => {
                        return Err(Error::Invalid(
                            "$snapshot takes a Parameters or StructureDefinition body".into(),
                        ))
                    }
                }
            }
            None => {
                let url = call
                    .query
                    .iter()
                    .find(|(k, _)| k == "url")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| Error::Invalid("$snapshot needs a 'url' parameter".into()))?;
                self.structure_definition_by_url(call, &url).await?
            }
        };
        if definition.get("resourceType").and_then(Value::as_str) != Some("StructureDefinition") {
            return Err(Error::Invalid(
                "$snapshot works on a StructureDefinition".into(),
            ));
        }
        let definitions = self.definitions().await?;
        let with_snapshot = validation::with_snapshot(&definitions, &definition)
            .map_err(|e| Error::Invalid(format!("no snapshot: {e}")))?;
        Ok(super::reply::Reply::new(
            StatusCode::OK,
            super::reply::Body::Value(with_snapshot),
        ))
    }

    async fn readable_structure_definition(
        &self,
        call: &super::Call<'_>,
        id: &str,
    ) -> Result<Value> {
        let not_found = || Error::NotFound(format!("StructureDefinition/{id} not found"));
        if !super::rest::valid_id(id) {
            return Err(not_found());
        }
        let stored = self
            .store
            .read_visible("StructureDefinition", id, &call.identity.grants)
            .await?
            .filter(|s| !s.deleted)
            .ok_or_else(not_found)?;
        stored.json()
    }

    /// The latest readable StructureDefinition with a canonical (`url` or `url|version`).
    async fn structure_definition_by_url(
        &self,
        call: &super::Call<'_>,
        canonical: &str,
    ) -> Result<Value> {
        let (url, version) = match canonical.split_once('|') {
            Some((url, version)) => (url, Some(version)),
            None => (canonical, None),
        };
        let mut pairs = vec![("url".to_owned(), url.to_owned())];
        if let Some(version) = version {
            pairs.push(("version".to_owned(), version.to_owned()));
        }
        let mut query = SearchQuery::criteria_from_pairs("StructureDefinition", &pairs, "")?;
        query.visible_to = Some(call.identity.grants.clone());
        query.count = MAX_COUNT;
        let result = self.store.search(&query).await?;
        let mut found = result
            .matches
            .iter()
            .map(|s| s.json())
            .collect::<Result<Vec<_>>>()?;
        found.sort_by_key(|r| {
            r.get("version")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        });
        found
            .pop()
            .ok_or_else(|| Error::NotFound(format!("no StructureDefinition {canonical}")))
    }
}
