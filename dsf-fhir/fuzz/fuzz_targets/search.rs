//! Arbitrary text as a search query string on the DSF's resource types, as conditional
//! criteria, and as a date: errors are fine, panics are not; a parsed query matches a sample
//! resource in memory without panicking.
#![no_main]

use dsf_fhir::search::{parse_date_range, parse_query_string, SearchQuery};
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 6] = [
    "Task",
    "Organization",
    "ActivityDefinition",
    "QuestionnaireResponse",
    "Endpoint",
    "Binary",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_date_range(text);
    let pairs = parse_query_string(text);
    let sample = serde_json::json!({
        "resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
        "authoredOn": "2024-05-01T10:00:00+02:00",
        "identifier": [{"system": "http://dsf.dev/sid/task-identifier", "value": "x"}],
        "meta": {"lastUpdated": "2024-05-01T10:00:00Z", "profile": ["http://dsf.dev/fhir/StructureDefinition/task-start-ping|1.0"]},
        "requester": {"identifier": {"system": "http://dsf.dev/sid/organization-identifier", "value": "a.test"}}
    });
    for t in TYPES {
        if let Ok(query) = SearchQuery::parse(t, &pairs, 20, "https://fuzz.test/fhir") {
            let _ = query.matches("t1", &sample, "https://fuzz.test/fhir");
        }
        let _ = SearchQuery::parse_criteria(t, text, "https://fuzz.test/fhir");
    }
});
