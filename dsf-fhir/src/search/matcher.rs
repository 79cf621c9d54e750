//! Search criteria evaluated against one resource in memory, with the semantics of the SQL
//! the stores run (`store::sql`): websocket subscriptions match every committed write this
//! way instead of asking the database.

use super::extract::{index_rows, IndexRow};
use super::query::{Clause, Condition, Prefix, SearchQuery};
use serde_json::Value;

impl SearchQuery {
    /// Whether the resource `resource` of id `id` is a hit of this query's clauses (sorting,
    /// paging, includes and the read-access filter play no part). `base_url` is the server's
    /// base, as for [`index_rows`].
    pub fn matches(&self, id: &str, resource: &Value, base_url: &str) -> bool {
        if resource.get("resourceType").and_then(Value::as_str) != Some(self.resource_type) {
            return false;
        }
        if self.clauses.is_empty() {
            return true;
        }
        let rows = index_rows(self.resource_type, resource, base_url);
        self.matches_rows(id, &rows)
    }

    /// [`SearchQuery::matches`] for index rows already extracted from the resource.
    pub fn matches_rows(&self, id: &str, rows: &[IndexRow]) -> bool {
        self.clauses
            .iter()
            .all(|clause| clause_holds(clause, id, rows))
    }
}

fn clause_holds(clause: &Clause, id: &str, rows: &[IndexRow]) -> bool {
    if clause.param == "_id" {
        // As in SQL, `_id` is a plain membership test; `:not` does not apply to it.
        return clause
            .any_of
            .iter()
            .any(|c| matches!(c, Condition::Equals(wanted) if wanted == id));
    }
    let hit = rows
        .iter()
        .filter(|row| row.param == clause.param)
        .any(|row| clause.any_of.iter().any(|c| condition_holds(c, row)));
    hit != clause.negate
}

fn condition_holds(condition: &Condition, row: &IndexRow) -> bool {
    let value = row.value.as_deref();
    match condition {
        Condition::Token { system, code } => {
            let system_ok = match system {
                None => true,
                Some(None) => row.system.is_none(),
                Some(Some(wanted)) => row.system.as_deref() == Some(wanted.as_str()),
            };
            let code_ok = code.as_deref().is_none_or(|wanted| value == Some(wanted));
            system_ok && code_ok
        }
        Condition::StartsWith(prefix) => row
            .norm
            .as_deref()
            .is_some_and(|n| n.starts_with(prefix.as_str())),
        Condition::Contains(part) => row
            .norm
            .as_deref()
            .is_some_and(|n| n.contains(part.as_str())),
        Condition::Equals(wanted) => value == Some(wanted.as_str()),
        Condition::Below(prefix) => value.is_some_and(|v| v.starts_with(prefix.as_str())),
        Condition::Canonical { url, version } => value.is_some_and(|v| match version {
            Some(version) => {
                v.strip_prefix(url.as_str())
                    .and_then(|r| r.strip_prefix('|'))
                    == Some(version.as_str())
            }
            None => {
                v == url
                    || v.strip_prefix(url.as_str())
                        .is_some_and(|r| r.starts_with('|'))
            }
        }),
        Condition::Date { prefix, range } => {
            // A missing bound is SQL NULL: no comparison with it holds, negated or not.
            let (Some(low), Some(high)) = (row.low, row.high) else {
                return false;
            };
            let within = low >= range.low && high <= range.high;
            match prefix {
                Prefix::Eq => within,
                Prefix::Ne => !within,
                Prefix::Gt => high > range.high,
                Prefix::Lt => low < range.low,
                Prefix::Ge => high > range.high || within,
                Prefix::Le => low < range.low || within,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::query::parse_query_string;
    use super::*;
    use serde_json::json;

    const BASE: &str = "https://a.test/fhir";

    fn query(ty: &'static str, criteria: &str) -> SearchQuery {
        SearchQuery::parse(ty, &parse_query_string(criteria), 20, BASE).expect("criteria")
    }

    fn task() -> Value {
        json!({
            "resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
            "meta": {"lastUpdated": "2024-05-01T10:00:00.123Z", "profile": ["http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0"]},
            "instantiatesCanonical": "http://dsf.dev/bpe/Process/ping|1.0",
            "requester": {"type": "Organization", "identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "org-a"}},
            "authoredOn": "2024-05-01T10:00:00Z"
        })
    }

    #[test]
    fn tokens_dates_canonicals_and_negation() {
        let t = task();
        for (criteria, expected) in [
            ("", true),
            ("status=requested", true),
            ("status=in-progress", false),
            ("status=draft,requested", true),
            ("status:not=requested", false),
            ("status:not=completed", true),
            (
                "requester:identifier=http://dsf.dev/sid/organization-identifier|org-a",
                true,
            ),
            ("requester:identifier=|org-a", false),
            ("_id=t1", true),
            ("_id=t2", false),
            (
                "_profile=http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0",
                true,
            ),
            ("_lastUpdated=ge2024-05-01", true),
            ("_lastUpdated=gt2024-05-01", false),
            ("_lastUpdated=lt2024-05-02", true),
            ("authored-on=2024-05", true),
            ("authored-on=ne2024-05", false),
            ("status=requested&_id=t2", false),
        ] {
            assert_eq!(
                query("Task", criteria).matches("t1", &t, BASE),
                expected,
                "{criteria}"
            );
        }
    }

    #[test]
    fn other_types_never_match() {
        let org = json!({"resourceType": "Organization", "active": true});
        assert!(!query("Task", "").matches("o1", &org, BASE));
    }
}
