//! The DSF's uniqueness rules, the Java DSF's unique constraint triggers: which current
//! resources a new version may not coexist with. They hold for every write through the store,
//! whoever makes it, like database constraints.
//!
//! A rule is checked where the version is written, inside its transaction, after taking a
//! lock per key value, so that of two concurrent writers of clashing resources the second
//! waits for the first and then sees it.

use crate::reference::normalise_reference;
use crate::search::{values_at, Clause, Condition, SearchQuery};
use serde_json::Value;

const ORGANIZATION_IDENTIFIER: &str = "http://dsf.dev/sid/organization-identifier";
const ENDPOINT_IDENTIFIER: &str = "http://dsf.dev/sid/endpoint-identifier";
const TASK_IDENTIFIER: &str = "http://dsf.dev/sid/task-identifier";
const ORGANIZATION_ROLE: &str = "http://dsf.dev/fhir/CodeSystem/organization-role";
const PARENT_ORGANIZATION_PROFILE: &str =
    "http://dsf.dev/fhir/StructureDefinition/organization-parent";

/// What makes a resource unique among the current resources of its type.
///
/// Two resources clash when their `scope`s are equal and they share a scalar (same name,
/// same value) or one of them holds all of the other's non-empty set of the same name: the
/// Java DSF compares identifier lists with `@>` both ways.
#[derive(Debug, Default, PartialEq)]
pub(super) struct UniqueKey {
    scope: Option<String>,
    scalars: Vec<(&'static str, String)>,
    sets: Vec<(&'static str, Vec<String>)>,
    /// The clauses of searches that together find every current resource that could clash
    /// (a superset: each candidate is then compared with [`UniqueKey::clashes_with`]). An
    /// empty clause list finds every resource of the type.
    lookups: Vec<Vec<Clause>>,
}

impl UniqueKey {
    fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.sets.iter().all(|(_, values)| values.is_empty())
    }

    /// Whether a resource with key `other` may not coexist with one with this key.
    pub(super) fn clashes_with(&self, other: &UniqueKey) -> bool {
        if self.scope != other.scope {
            return false;
        }
        let scalar = self
            .scalars
            .iter()
            .any(|(name, value)| other.scalars.iter().any(|(n, v)| n == name && v == value));
        scalar
            || self.sets.iter().any(|(name, mine)| {
                other
                    .sets
                    .iter()
                    .filter(|(n, _)| n == name)
                    .any(|(_, theirs)| contains(mine, theirs) || contains(theirs, mine))
            })
    }

    /// One lock per value: two clashing writers always share one of them.
    pub(super) fn locks(&self, resource_type: &str) -> Vec<String> {
        let scope = self.scope.as_deref().unwrap_or("");
        let mut locks: Vec<String> = self
            .scalars
            .iter()
            .map(|(name, value)| (name, value))
            .chain(
                self.sets
                    .iter()
                    .flat_map(|(name, values)| values.iter().map(move |v| (name, v))),
            )
            .map(|(name, value)| format!("unique {resource_type} {scope} {name}={value}"))
            .collect();
        locks.sort();
        locks.dedup();
        locks
    }

    /// The searches of [`UniqueKey::lookups`] for resources of `resource_type`.
    pub(super) fn candidate_searches(&self, resource_type: &'static str) -> Vec<SearchQuery> {
        self.lookups
            .iter()
            .map(|clauses| SearchQuery::of_clauses(resource_type, clauses.clone(), 0))
            .collect()
    }

    /// Describes the key for an error message.
    pub(super) fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .scalars
            .iter()
            .map(|(name, value)| format!("{name} {value}"))
            .collect();
        parts.extend(
            self.sets
                .iter()
                .filter(|(_, values)| !values.is_empty())
                .map(|(name, values)| format!("{name} {}", values.join(", "))),
        );
        parts.join(" or ")
    }
}

/// Whether the non-empty `part` is contained in `whole`.
fn contains(whole: &[String], part: &[String]) -> bool {
    !part.is_empty() && part.iter().all(|p| whole.contains(p))
}

fn text<'a>(resource: &'a Value, path: &str) -> Option<&'a str> {
    values_at(resource, path)
        .into_iter()
        .find_map(Value::as_str)
}

fn identifier_values(resource: &Value, system: &str) -> Vec<String> {
    values_at(resource, "identifier")
        .into_iter()
        .filter(|i| i.get("system").and_then(Value::as_str) == Some(system))
        .filter_map(|i| i.get("value").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

fn thumbprints(resource: &Value) -> Vec<String> {
    values_at(resource, "extension")
        .into_iter()
        .filter(|e| {
            e.get("url").and_then(Value::as_str) == Some(crate::search::THUMBPRINT_EXTENSION)
        })
        .filter_map(|e| e.get("valueString").and_then(Value::as_str))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The references at `path`: literal ones relative to this server, logical ones as
/// `identifier:system|value` (the Java DSF resolves those to literal references before it
/// writes; here they compare as written).
fn references(resource: &Value, path: &str, base_url: &str) -> Vec<String> {
    values_at(resource, path)
        .into_iter()
        .filter_map(|r| match r.get("reference").and_then(Value::as_str) {
            Some(literal) => Some(normalise_reference(literal, base_url)),
            None => {
                let identifier = r.get("identifier")?;
                let system = identifier
                    .get("system")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let value = identifier.get("value").and_then(Value::as_str)?;
                Some(format!("identifier:{system}|{value}"))
            }
        })
        .collect()
}

/// The uniqueness key of `resource`, or `None` when its type (or, for Tasks, its status)
/// has no uniqueness rule or it carries nothing the rule looks at.
pub(super) fn key_of(resource_type: &str, resource: &Value, base_url: &str) -> Option<UniqueKey> {
    let mut key = UniqueKey::default();
    match resource_type {
        "ActivityDefinition" | "CodeSystem" | "StructureDefinition" | "ValueSet" => {
            // As in the Java DSF's triggers, a missing url or version compares unequal.
            let url = text(resource, "url")?;
            let version = text(resource, "version")?;
            key.scalars
                .push(("url|version", format!("{url}|{version}")));
            key.lookups.push(vec![clause(
                "url",
                vec![Condition::Canonical {
                    url: url.to_owned(),
                    version: Some(version.to_owned()),
                }],
            )]);
        }
        "NamingSystem" => {
            if let Some(name) = text(resource, "name") {
                key.scalars.push(("name", name.to_owned()));
            }
            let unique_ids = values_at(resource, "uniqueId")
                .into_iter()
                .filter(|u| u.get("type").and_then(Value::as_str) == Some("other"))
                .filter_map(|u| u.get("value").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            key.sets.push(("uniqueId", unique_ids));
            // uniqueIds have no search parameter, and NamingSystems are few: all compared.
            key.lookups.push(Vec::new());
        }
        "Endpoint" => {
            if let Some(address) = text(resource, "address") {
                key.scalars.push(("address", address.to_owned()));
                key.lookups.push(vec![clause(
                    "address",
                    vec![Condition::Equals(address.to_owned())],
                )]);
            }
            key.add_set(
                "identifier",
                identifier_values(resource, ENDPOINT_IDENTIFIER),
                "identifier",
                Some(ENDPOINT_IDENTIFIER),
            );
        }
        "Organization" => {
            key.add_set(
                "identifier",
                identifier_values(resource, ORGANIZATION_IDENTIFIER),
                "identifier",
                Some(ORGANIZATION_IDENTIFIER),
            );
            let parent = values_at(resource, "meta.profile")
                .into_iter()
                .filter_map(Value::as_str)
                .any(|p| p.split('|').next() == Some(PARENT_ORGANIZATION_PROFILE));
            if !parent {
                key.add_set(
                    "thumbprint",
                    thumbprints(resource),
                    crate::search::THUMBPRINT_PARAM,
                    None,
                );
            }
        }
        "OrganizationAffiliation" => {
            let parent = references(resource, "organization", base_url);
            let member = references(resource, "participatingOrganization", base_url);
            // Found by their literal parent and member references where they have one each;
            // otherwise every affiliation is compared.
            let mut lookup = Vec::new();
            for (param, references) in [
                ("primary-organization", &parent),
                ("participating-organization", &member),
            ] {
                if let [literal] = references.as_slice() {
                    if !literal.starts_with("identifier:") {
                        lookup.push(clause(param, vec![Condition::Equals(literal.clone())]));
                    }
                }
            }
            key.lookups.push(lookup);
            key.scope = Some(format!("{}|{}", parent.join(","), member.join(",")));
            key.sets
                .push(("endpoint", references(resource, "endpoint", base_url)));
            let roles = values_at(resource, "code.coding")
                .into_iter()
                .filter(|c| c.get("system").and_then(Value::as_str) == Some(ORGANIZATION_ROLE))
                .filter_map(|c| c.get("code").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            key.sets.push(("role", roles));
        }
        "Subscription" => {
            let criteria = text(resource, "criteria")?;
            let channel_type = text(resource, "channel.type")?;
            let payload = text(resource, "channel.payload").unwrap_or("");
            key.scalars.push((
                "criteria|type|payload",
                format!("{criteria}|{channel_type}|{payload}"),
            ));
            // Criteria hold commas, which a search value would split, and Subscriptions are
            // few: all compared.
            key.lookups.push(Vec::new());
        }
        "Task" => {
            if text(resource, "status") != Some("draft") {
                return None;
            }
            key.add_set(
                "identifier",
                identifier_values(resource, TASK_IDENTIFIER),
                "identifier",
                Some(TASK_IDENTIFIER),
            );
        }
        _ => return None,
    }
    (!key.is_empty()).then_some(key)
}

fn clause(param: &str, any_of: Vec<Condition>) -> Clause {
    Clause {
        param: param.to_owned(),
        negate: false,
        any_of,
    }
}

impl UniqueKey {
    /// Adds the set `name` of `values`, found by the token parameter `param` (with `system`).
    fn add_set(
        &mut self,
        name: &'static str,
        values: Vec<String>,
        param: &str,
        system: Option<&str>,
    ) {
        if !values.is_empty() {
            let any_of = values
                .iter()
                .map(|code| Condition::Token {
                    system: system.map(|s| Some(s.to_owned())),
                    code: Some(code.clone()),
                })
                .collect();
            self.lookups.push(vec![clause(param, any_of)]);
        }
        self.sets.push((name, values));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "https://a.test/fhir";

    fn key(resource: Value) -> UniqueKey {
        let t = resource["resourceType"].as_str().expect("type").to_owned();
        key_of(&t, &resource, BASE).expect("a key")
    }

    #[test]
    fn definitions_clash_on_url_and_version_only() {
        let ad = |url: &str, version: &str| {
            key(json!({"resourceType": "ActivityDefinition", "url": url, "version": version}))
        };
        assert!(ad("http://x/a", "1.0").clashes_with(&ad("http://x/a", "1.0")));
        assert!(!ad("http://x/a", "1.0").clashes_with(&ad("http://x/a", "1.1")));
        assert!(!ad("http://x/a", "1.0").clashes_with(&ad("http://x/b", "1.0")));
        assert_eq!(
            key_of(
                "ActivityDefinition",
                &json!({"resourceType": "ActivityDefinition", "url": "http://x/a"}),
                BASE
            ),
            None
        );
    }

    #[test]
    fn identifier_sets_clash_when_one_holds_the_other() {
        let org = |values: &[&str], thumbprint: Option<&str>| {
            let identifier: Vec<Value> = values
                .iter()
                .map(|v| json!({"system": ORGANIZATION_IDENTIFIER, "value": v}))
                .collect();
            let mut org = json!({"resourceType": "Organization", "identifier": identifier});
            if let Some(t) = thumbprint {
                org["extension"] = json!([{"url": crate::search::THUMBPRINT_EXTENSION,
                    "valueString": t}]);
            }
            key(org)
        };
        assert!(org(&["a"], None).clashes_with(&org(&["a", "b"], None)));
        assert!(org(&["a", "b"], None).clashes_with(&org(&["a"], None)));
        assert!(!org(&["a", "c"], None).clashes_with(&org(&["a", "b"], None)));
        assert!(org(&["a"], Some("AB")).clashes_with(&org(&["z"], Some("ab"))));
        assert!(!org(&["a"], Some("ab")).clashes_with(&org(&["z"], Some("cd"))));
    }

    #[test]
    fn affiliations_clash_within_the_same_parent_and_member() {
        let affiliation = |parent: &str, endpoint: &str, role: &str| {
            key(json!({"resourceType": "OrganizationAffiliation",
                "organization": {"reference": parent},
                "participatingOrganization": {"reference": "Organization/m"},
                "endpoint": [{"reference": endpoint}],
                "code": [{"coding": [{"system": ORGANIZATION_ROLE, "code": role}]}]}))
        };
        let a = affiliation("Organization/p", "Endpoint/1", "DIC");
        assert!(a.clashes_with(&affiliation("Organization/p", "Endpoint/2", "DIC")));
        assert!(a.clashes_with(&affiliation(
            &format!("{BASE}/Organization/p"),
            "Endpoint/1",
            "HRP"
        )));
        assert!(!a.clashes_with(&affiliation("Organization/p", "Endpoint/2", "HRP")));
        assert!(!a.clashes_with(&affiliation("Organization/q", "Endpoint/1", "DIC")));
    }

    #[test]
    fn only_draft_tasks_and_complete_subscriptions_have_keys() {
        let task = |status: &str| {
            json!({"resourceType": "Task", "status": status,
                "identifier": [{"system": TASK_IDENTIFIER, "value": "x"}]})
        };
        assert!(key_of("Task", &task("draft"), BASE).is_some());
        assert!(key_of("Task", &task("requested"), BASE).is_none());
        let subscription = |payload: Option<&str>| {
            let mut s = json!({"resourceType": "Subscription", "criteria": "Task?status=requested",
                "channel": {"type": "websocket"}});
            if let Some(p) = payload {
                s["channel"]["payload"] = json!(p);
            }
            key(s)
        };
        assert!(subscription(None).clashes_with(&subscription(None)));
        assert!(!subscription(None).clashes_with(&subscription(Some("application/fhir+json"))));
        let locks = subscription(None).locks("Subscription");
        assert_eq!(locks.len(), 1);
    }
}
