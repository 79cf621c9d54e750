use crate::constants::{ENDPOINT_IDENTIFIER, ORGANIZATION_IDENTIFIER};
use crate::{ProcessError, Target};
use dsf_fhir::FhirClient;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An Endpoint of the allow list: its DSF identifier, its FHIR base URL and the identifier of
/// the organisation that manages it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub identifier: String,
    pub address: String,
    pub organization: Option<String>,
}

impl EndpointInfo {
    /// This endpoint as a message target (no correlation key).
    pub fn target(&self) -> Option<Target> {
        let organization = self.organization.as_deref()?;
        Some(Target::new(organization, &self.identifier, &self.address))
    }
}

/// What a handler can reach: the local FHIR server, the other organisations' FHIR servers (with
/// the BPE's client certificate), the local organisation's identity and the allow list.
pub struct ProcessApi {
    local: FhirClient,
    tls: Arc<rustls::ClientConfig>,
    organization: String,
    endpoint: EndpointInfo,
    remote: Mutex<HashMap<String, FhirClient>>,
}

impl ProcessApi {
    /// Built by the BPE; plugin authors build one to test handlers against a server.
    pub fn new(
        local: FhirClient,
        tls: Arc<rustls::ClientConfig>,
        organization: &str,
        endpoint: EndpointInfo,
    ) -> Self {
        ProcessApi {
            local,
            tls,
            organization: organization.to_owned(),
            endpoint,
            remote: Mutex::new(HashMap::new()),
        }
    }

    /// A client of the local organisation's FHIR server.
    pub fn local_client(&self) -> &FhirClient {
        &self.local
    }

    /// A client of the FHIR server at `endpoint_url`; connections are reused.
    pub fn client_for(&self, endpoint_url: &str) -> Result<FhirClient, ProcessError> {
        let url = endpoint_url.trim_end_matches('/');
        if url == self.local.base_url().trim_end_matches('/') {
            return Ok(self.local.clone());
        }
        let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = remote.get(url) {
            return Ok(client.clone());
        }
        let client =
            FhirClient::with_settings(url, self.tls.clone(), self.local.settings().clone())?;
        remote.insert(url.to_owned(), client.clone());
        Ok(client)
    }

    /// The identifier value of the local organisation (`http://dsf.dev/sid/organization-identifier`).
    pub fn local_organization(&self) -> &str {
        &self.organization
    }

    pub fn local_endpoint(&self) -> &EndpointInfo {
        &self.endpoint
    }

    /// Endpoints matching `query` (an `Endpoint` search, e.g. `status=active`) on the local
    /// server, with their managing organisations' identifiers, all pages.
    pub async fn endpoints(&self, query: &str) -> Result<Vec<EndpointInfo>, ProcessError> {
        let query = if query.is_empty() {
            "_include=Endpoint:organization".to_owned()
        } else {
            format!("{query}&_include=Endpoint:organization")
        };
        let mut pages = self.local.search_pages("Endpoint", &query);
        let mut endpoints = Vec::new();
        let mut organizations = HashMap::new();
        while let Some(page) = pages.next_page().await? {
            for entry in page["entry"].as_array().into_iter().flatten() {
                let resource = &entry["resource"];
                match resource["resourceType"].as_str() {
                    Some("Endpoint") => endpoints.push(resource.clone()),
                    Some("Organization") => {
                        if let (Some(id), Some(identifier)) = (
                            resource["id"].as_str(),
                            identifier_value(resource, ORGANIZATION_IDENTIFIER),
                        ) {
                            organizations.insert(format!("Organization/{id}"), identifier);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(endpoints
            .iter()
            .filter_map(|endpoint| {
                let identifier = identifier_value(endpoint, ENDPOINT_IDENTIFIER)?;
                let address = endpoint["address"].as_str()?.to_owned();
                let managing = &endpoint["managingOrganization"];
                let organization = managing["reference"]
                    .as_str()
                    .and_then(|r| organizations.get(r.rsplit("/_history").last().unwrap_or(r)))
                    .cloned()
                    .or_else(|| {
                        (managing["identifier"]["system"].as_str() == Some(ORGANIZATION_IDENTIFIER))
                            .then(|| managing["identifier"]["value"].as_str().map(str::to_owned))
                            .flatten()
                    });
                Some(EndpointInfo {
                    identifier,
                    address,
                    organization,
                })
            })
            .collect())
    }

    /// The active endpoint with this identifier value, if the allow list has it.
    pub async fn endpoint(&self, identifier: &str) -> Result<Option<EndpointInfo>, ProcessError> {
        let query = format!("status=active&identifier={ENDPOINT_IDENTIFIER}|{identifier}");
        Ok(self.endpoints(&query).await?.into_iter().next())
    }

    /// Every active endpoint of another organisation, as targets without correlation keys.
    pub async fn remote_targets(&self) -> Result<Vec<Target>, ProcessError> {
        Ok(self
            .endpoints("status=active")
            .await?
            .iter()
            .filter(|e| {
                e.identifier != self.endpoint.identifier
                    && e.organization.as_deref() != Some(self.organization.as_str())
            })
            .filter_map(EndpointInfo::target)
            .collect())
    }

    /// The members of the consortium `parent` with `role` (a `system|code` token, e.g.
    /// `http://dsf.dev/fhir/CodeSystem/organization-role|DIC`), from the active
    /// OrganizationAffiliations of the allow list, each with its endpoint.
    pub async fn targets_by_role(
        &self,
        parent: &str,
        role: &str,
    ) -> Result<Vec<Target>, ProcessError> {
        let query = format!(
            "active=true&primary-organization:identifier={ORGANIZATION_IDENTIFIER}|{parent}&role={role}&_include=OrganizationAffiliation:endpoint&_include=OrganizationAffiliation:participating-organization"
        );
        let mut pages = self.local.search_pages("OrganizationAffiliation", &query);
        let mut affiliations = Vec::new();
        let mut included: HashMap<String, Value> = HashMap::new();
        while let Some(page) = pages.next_page().await? {
            for entry in page["entry"].as_array().into_iter().flatten() {
                let resource = &entry["resource"];
                match resource["resourceType"].as_str() {
                    Some("OrganizationAffiliation") => affiliations.push(resource.clone()),
                    Some(t) => {
                        if let Some(id) = resource["id"].as_str() {
                            included.insert(format!("{t}/{id}"), resource.clone());
                        }
                    }
                    None => {}
                }
            }
        }
        let resolve = |reference: &Value| -> Option<&Value> {
            included.get(reference["reference"].as_str()?)
        };
        let mut targets = Vec::new();
        for affiliation in &affiliations {
            let Some(organization) = resolve(&affiliation["participatingOrganization"])
                .and_then(|o| identifier_value(o, ORGANIZATION_IDENTIFIER))
            else {
                continue;
            };
            for endpoint in affiliation["endpoint"].as_array().into_iter().flatten() {
                let Some(endpoint) = resolve(endpoint) else {
                    continue;
                };
                if let (Some(identifier), Some(address)) = (
                    identifier_value(endpoint, ENDPOINT_IDENTIFIER),
                    endpoint["address"].as_str(),
                ) {
                    targets.push(Target::new(&organization, &identifier, address));
                }
            }
        }
        Ok(targets)
    }
}

/// The value of a resource's first identifier of `system`.
pub(crate) fn identifier_value(resource: &Value, system: &str) -> Option<String> {
    resource["identifier"]
        .as_array()?
        .iter()
        .find(|i| i["system"].as_str() == Some(system))?["value"]
        .as_str()
        .map(str::to_owned)
}
