//! Resources nested to any depth (the first two bytes), in JSON and XML, around arbitrary
//! text: the bounds refuse what the parsers or writers could not take, and nothing panics
//! or overflows the stack.
#![no_main]

use dsf_fhir::format::{parse_resource, render_stored, Format};
use libfuzzer_sys::fuzz_target;

fn check(body: &[u8], format: Format) {
    if let Ok(resource) = parse_resource(body, format) {
        let stored = serde_json::to_vec(&resource).expect("canonical JSON serialises");
        render_stored(&stored, Format::Xml, false).expect("accepted resources are writable as XML");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let depth = u16::from_le_bytes([data[0], data[1]]) as usize % 3000;
    let text = String::from_utf8_lossy(&data[2..]);
    let escaped: String = serde_json::to_string(&text).expect("string");
    let mut json = String::from(r#"{"resourceType":"Task","status":"draft","intent":"order","extension":["#);
    json.push_str(&r#"{"url":"http://f/x","extension":["#.repeat(depth));
    json.push_str(&format!(r#"{{"url":"http://f/x","valueString":{escaped}}}"#));
    json.push_str(&"]}".repeat(depth));
    json.push_str("]}");
    check(json.as_bytes(), Format::Json);
    let attr = text.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;");
    let mut xml = String::from(r#"<Task xmlns="http://hl7.org/fhir">"#);
    xml.push_str(&r#"<extension url="http://f/x">"#.repeat(depth + 1));
    xml.push_str(&format!(r#"<valueString value="{attr}"/>"#));
    xml.push_str(&"</extension>".repeat(depth + 1));
    xml.push_str(r#"<status value="draft"/><intent value="order"/></Task>"#);
    check(xml.as_bytes(), Format::Xml);
});
