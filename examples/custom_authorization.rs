//! A site rule added to the DSF's authorization rules without forking: Binary resources may
//! only hold the content types this site accepts. The policy asks the DSF's rules first, so
//! everything they refuse stays refused, then its own question.
//!
//! The server here is driven through its service in-process (no network), the way a unit
//! test of a policy would; the policy works the same under `serve` or mounted in axum.
//!
//! `cargo run -p dsf-examples --example custom_authorization`

use bytes::Bytes;
use dsf_core::DevPki;
use dsf_examples::BoxError;
use dsf_fhir::server::authorization::refuse;
use dsf_fhir::server::{
    AllowListEntry, AuthorizationPolicy, DsfRules, Identity, PeerCertificate, PolicyContext, Role,
};
use dsf_fhir::store::Change;
use dsf_fhir::{FhirServer, ResourceStore, ServerConfig};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use std::sync::Arc;

const BASE_URL: &str = "https://dsf.example.org/fhir";

/// The DSF's rules plus: Binary content types from a list.
struct OnlyAcceptedBinaries {
    dsf: DsfRules,
    content_types: &'static [&'static str],
}

impl OnlyAcceptedBinaries {
    fn check_binary(
        &self,
        identity: &Identity,
        resource_type: &str,
        resource: &Value,
    ) -> dsf_fhir::Result<()> {
        if resource_type != "Binary" {
            return Ok(());
        }
        let content_type = resource["contentType"].as_str().unwrap_or("");
        match self.content_types.contains(&content_type) {
            true => Ok(()),
            false => Err(refuse(
                "write of Binary",
                identity,
                format!("content type '{content_type}' is not accepted at this site"),
            )),
        }
    }
}

#[dsf_fhir::store::async_trait]
impl AuthorizationPolicy for OnlyAcceptedBinaries {
    fn check_interaction(
        &self,
        identity: &Identity,
        interaction: Role,
        resource_type: &str,
    ) -> dsf_fhir::Result<()> {
        self.dsf
            .check_interaction(identity, interaction, resource_type)
    }

    async fn check_create(
        &self,
        context: &PolicyContext<'_>,
        identity: &Identity,
        resource_type: &str,
        resource: &Value,
    ) -> dsf_fhir::Result<()> {
        self.dsf
            .check_create(context, identity, resource_type, resource)
            .await?;
        self.check_binary(identity, resource_type, resource)
    }

    async fn check_update(
        &self,
        context: &PolicyContext<'_>,
        identity: &Identity,
        resource_type: &str,
        resource: &Value,
    ) -> dsf_fhir::Result<()> {
        self.dsf
            .check_update(context, identity, resource_type, resource)
            .await?;
        self.check_binary(identity, resource_type, resource)
    }

    fn check_change(&self, identity: &Identity, change: Change<'_>) -> dsf_fhir::Result<()> {
        self.dsf.check_change(identity, change)
    }
}

fn binary(content_type: &str, read_access: Option<&str>) -> Value {
    let mut binary =
        json!({"resourceType": "Binary", "contentType": content_type, "data": "aGVsbG8="});
    if let Some(code) = read_access {
        binary["meta"] = json!({"tag": [{"system": "http://dsf.dev/fhir/CodeSystem/read-access-tag", "code": code}]});
    }
    binary
}

async fn create(
    server: &Arc<FhirServer>,
    caller: &PeerCertificate,
    resource: &Value,
) -> Result<StatusCode, BoxError> {
    let mut request = Request::post("/fhir/Binary")
        .header("Content-Type", "application/fhir+json")
        .header("Accept", "application/fhir+json")
        .body(Full::new(Bytes::from(resource.to_string())))?;
    request.extensions_mut().insert(caller.clone());
    Ok(server.service().call(request).await.status())
}

async fn run() -> Result<(), BoxError> {
    let pki = DevPki::generate("dsf-rs policy example CA")?;
    let bpe = pki.issue_client("bpe.example.org")?;
    let store = ResourceStore::open("sqlite::memory:", BASE_URL).await?;
    let policy = OnlyAcceptedBinaries {
        dsf: DsfRules,
        content_types: &["application/pdf", "text/csv"],
    };
    let server = FhirServer::new(store, ServerConfig::new(BASE_URL, "example.org"))
        .with_authorization(policy);
    server
        .load_allow_list(&[AllowListEntry {
            identifier: "example.org".into(),
            name: "Example Organization".into(),
            thumbprints: vec![bpe.thumbprint()],
            base_url: BASE_URL.into(),
        }])
        .await?;
    let server = Arc::new(server);
    let caller = PeerCertificate::new(bpe.thumbprint());

    let csv = create(&server, &caller, &binary("text/csv", Some("LOCAL"))).await?;
    let executable = create(
        &server,
        &caller,
        &binary("application/x-msdownload", Some("LOCAL")),
    )
    .await?;
    // The DSF's own rule still holds: no read-access tag, no write.
    let untagged = create(&server, &caller, &binary("text/csv", None)).await?;
    println!("text/csv: {csv}; application/x-msdownload: {executable}; untagged: {untagged}");
    assert_eq!(csv, StatusCode::CREATED);
    assert_eq!(executable, StatusCode::FORBIDDEN);
    assert!(untagged.is_client_error());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    run().await
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs() {
        super::run().await.expect("the example runs");
    }
}
