//! Arbitrary bytes as a FHIR resource in JSON (first byte even) or XML (odd): errors are fine,
//! panics are not, and whatever is accepted must be writable again as JSON and as XML.
#![no_main]

use dsf_fhir::format::{parse_resource, render_stored, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = if selector % 2 == 0 { Format::Json } else { Format::Xml };
    if let Ok(resource) = parse_resource(body, format) {
        let stored = serde_json::to_vec(&resource).expect("canonical JSON serialises");
        for (format, pretty) in [(Format::Xml, false), (Format::Json, true)] {
            if let Err(e) = render_stored(&stored, format, pretty) {
                panic!("accepted but not writable as {format:?}: {e}");
            }
        }
    }
});
