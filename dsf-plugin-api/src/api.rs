use crate::constants::{ENDPOINT_IDENTIFIER, ORGANIZATION_IDENTIFIER};
use crate::placeholders::environment_variable;
use crate::{ProcessError, Target};
use dsf_fhir::client::{ClientSettings, Transport};
use dsf_fhir::FhirClient;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An Endpoint of the allow list: its DSF identifier, its FHIR base URL and the identifier of
/// the organisation that manages it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointInfo {
    /// The Endpoint's identifier value (`http://dsf.dev/sid/endpoint-identifier`).
    pub identifier: String,
    /// The FHIR base URL (`Endpoint.address`).
    pub address: String,
    /// The managing organisation's identifier value, when the Endpoint names one.
    pub organization: Option<String>,
}

impl EndpointInfo {
    /// This endpoint as a message target (no correlation key).
    pub fn target(&self) -> Option<Target> {
        let organization = self.organization.as_deref()?;
        Some(Target::new(organization, &self.identifier, &self.address))
    }
}

/// How the clients of a [`ProcessApi`] reach FHIR servers.
enum Connections {
    /// With the organisation's client certificate (a plugin in the BPE's process).
    Tls(Arc<rustls::ClientConfig>),
    /// Through the BPE, which holds the certificate (a plugin file's process).
    Transport(Arc<dyn Transport>),
}

/// What a handler can reach: the local FHIR server, the other organisations' FHIR servers (with
/// the BPE's client certificate), the local organisation's identity, the allow list and the
/// plugin's configuration. A handler sees the same API whether its plugin runs in the BPE's
/// process or as a plugin file.
pub struct ProcessApi {
    local: FhirClient,
    connections: Connections,
    organization: String,
    endpoint: EndpointInfo,
    remote: Mutex<HashMap<String, FhirClient>>,
    config: HashMap<String, String>,
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
            connections: Connections::Tls(tls),
            organization: organization.to_owned(),
            endpoint,
            remote: Mutex::new(HashMap::new()),
            config: HashMap::new(),
        }
    }

    /// The API of a handler in a plugin file's process: every FHIR request, to the local
    /// server at `local_base_url` or to another organisation's, is handed to `transport` (the
    /// BPE sends it with the organisation's certificate; the plugin never holds the key).
    pub fn with_transport(
        local_base_url: &str,
        transport: Arc<dyn Transport>,
        organization: &str,
        endpoint: EndpointInfo,
    ) -> Result<Self, ProcessError> {
        let local = FhirClient::with_transport(
            local_base_url,
            transport.clone(),
            transported_client_settings(),
        )?;
        Ok(ProcessApi {
            local,
            connections: Connections::Transport(transport),
            organization: organization.to_owned(),
            endpoint,
            remote: Mutex::new(HashMap::new()),
            config: HashMap::new(),
        })
    }

    /// Configuration values that take precedence over the environment in [`ProcessApi::config`]
    /// (a BPE embedded in a service, or several BPEs in one process, configure their plugins
    /// here rather than through the process environment).
    pub fn with_config(mut self, values: impl IntoIterator<Item = (String, String)>) -> Self {
        self.config.extend(
            values
                .into_iter()
                .map(|(name, value)| (environment_variable(&name), value)),
        );
        self
    }

    /// A configuration value of the plugin, by property name (`dev.dsf.bpe.ping.pong.timeout`)
    /// or environment variable name (`DEV_DSF_BPE_PING_PONG_TIMEOUT`), as the Java BPE reads
    /// plugin properties from its environment: the values given to
    /// [`ProcessApi::with_config`] first, then the process environment.
    pub fn config(&self, name: &str) -> Option<String> {
        let variable = environment_variable(name);
        self.config
            .get(&variable)
            .cloned()
            .or_else(|| std::env::var(&variable).ok())
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
        let client = match &self.connections {
            Connections::Tls(tls) => {
                FhirClient::with_settings(url, tls.clone(), self.local.settings().clone())?
            }
            Connections::Transport(transport) => {
                FhirClient::with_transport(url, transport.clone(), transported_client_settings())?
            }
        };
        remote.insert(url.to_owned(), client.clone());
        Ok(client)
    }

    /// The identifier value of the local organisation (`http://dsf.dev/sid/organization-identifier`).
    pub fn local_organization(&self) -> &str {
        &self.organization
    }

    /// The local organisation's Endpoint (the local FHIR server).
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

/// Clients whose requests the BPE carries: the BPE's own client retries and times out, and the
/// BPE bounds the whole handler call, so the plugin's side neither retries nor cuts off early.
fn transported_client_settings() -> ClientSettings {
    let mut settings = ClientSettings::default();
    settings.retries = 0;
    settings.timeout = Duration::from_secs(24 * 60 * 60);
    settings
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
