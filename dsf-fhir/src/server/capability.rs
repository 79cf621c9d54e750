//! `GET /metadata`: a CapabilityStatement generated from the same tables the search uses, so
//! it lists exactly what is supported.

use super::FhirServer;
use crate::resource_type::SUPPORTED_TYPES;
use crate::search::{params_of, public_params, ParamKind};
use serde_json::{json, Value};

fn type_name(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Token => "token",
        ParamKind::String => "string",
        ParamKind::Uri | ParamKind::Canonical => "uri",
        ParamKind::Reference => "reference",
        ParamKind::Date => "date",
    }
}

impl FhirServer {
    pub(crate) fn capability_statement(&self) -> Value {
        let interactions: Vec<Value> = [
            "read",
            "vread",
            "update",
            "delete",
            "history-instance",
            "history-type",
            "create",
            "search-type",
        ]
        .iter()
        .map(|c| json!({ "code": c }))
        .collect();
        let resources: Vec<Value> = SUPPORTED_TYPES
            .iter()
            .map(|t| {
                let mut search_params = vec![json!({"name": "_id", "type": "token"})];
                search_params.extend(
                    public_params(t).map(|p| json!({"name": p.name, "type": type_name(p.kind)})),
                );
                let includes: Vec<String> = params_of(t)
                    .iter()
                    .filter(|p| p.include)
                    .map(|p| format!("{t}:{}", p.name))
                    .collect();
                let revincludes: Vec<String> = SUPPORTED_TYPES
                    .iter()
                    .flat_map(|source| {
                        params_of(source)
                            .iter()
                            .filter(|p| {
                                p.include && (p.targets.is_empty() || p.targets.contains(t))
                            })
                            .map(move |p| format!("{source}:{}", p.name))
                    })
                    .collect();
                let mut resource = json!({
                    "type": t,
                    "interaction": interactions,
                    "versioning": "versioned",
                    "readHistory": true,
                    "updateCreate": false,
                    "conditionalCreate": true,
                    "conditionalRead": "modified-since",
                    "conditionalUpdate": true,
                    "conditionalDelete": "single",
                    "searchParam": search_params,
                });
                if !includes.is_empty() {
                    resource["searchInclude"] = json!(includes);
                }
                if !revincludes.is_empty() {
                    resource["searchRevInclude"] = json!(revincludes);
                }
                resource
            })
            .collect();
        json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": crate::date::format_instant(crate::date::unix_millis_now())[..10],
            "kind": "instance",
            "software": {"name": "dsf-rs FHIR server", "version": env!("CARGO_PKG_VERSION")},
            "implementation": {"description": "DSF FHIR server", "url": self.config.base_url},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+xml", "application/fhir+json"],
            "rest": [{
                "mode": "server",
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
            }],
        })
    }
}
