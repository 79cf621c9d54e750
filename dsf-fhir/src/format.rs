//! The two FHIR wire formats, content negotiation, and the conversion between the wire and the
//! canonical JSON this crate stores. fhirbolt (strict mode) validates every resource at the edge.

use crate::bounds::{check_canonical, scan_json, scan_xml};
use crate::{Error, Result};
use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::Value;

/// A FHIR representation: JSON or XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// `application/fhir+json`.
    Json,
    /// `application/fhir+xml`.
    Xml,
}

impl Format {
    /// The media type this server writes for it.
    pub fn mime(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json",
            Format::Xml => "application/fhir+xml",
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json;charset=UTF-8",
            Format::Xml => "application/fhir+xml;charset=UTF-8",
        }
    }

    /// Recognises the MIME types and short forms the Java DSF accepts for `_format`,
    /// `Accept` and `Content-Type` (parameters such as `charset` are ignored).
    pub fn from_mime(value: &str) -> Option<Format> {
        let essence = value.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "json" | "application/fhir+json" | "application/json+fhir" | "application/json" => {
                Some(Format::Json)
            }
            "xml"
            | "application/fhir+xml"
            | "application/xml+fhir"
            | "application/xml"
            | "text/xml" => Some(Format::Xml),
            _ => None,
        }
    }

    /// The response format: `_format` wins over `Accept`; no preference means XML, as the
    /// Java DSF answers.
    pub fn negotiate(format_param: Option<&str>, accept: Option<&str>) -> Result<Format> {
        if let Some(param) = format_param {
            return Format::from_mime(param).ok_or_else(|| {
                Error::UnsupportedMediaType(format!("_format '{param}' is not supported"))
            });
        }
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Ok(Format::Xml);
        };
        for mime in media_ranges(accept) {
            if let Some(format) = Format::from_mime(mime) {
                return Ok(format);
            }
            if mime == "*/*" || mime == "application/*" {
                return Ok(Format::Xml);
            }
        }
        Err(Error::NotAcceptable(format!(
            "none of the accepted media types '{accept}' is supported; use application/fhir+json or application/fhir+xml"
        )))
    }
}

/// The media types of an `Accept` header, most preferred first (the header's order among
/// equal weights); types with `q=0` are left out.
pub(crate) fn media_ranges(accept: &str) -> Vec<&str> {
    let mut ranges: Vec<(f32, &str)> = accept
        .split(',')
        .map(|range| {
            let mut parts = range.split(';');
            let mime = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            (q, mime)
        })
        .filter(|(q, _)| *q > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranges.into_iter().map(|(_, mime)| mime).collect()
}

fn strict() -> Option<DeserializationConfig> {
    Some(DeserializationConfig {
        mode: DeserializationMode::Strict,
    })
}

/// Runs a fhirbolt parser, turning a panic inside it into an error: the body is the peer's.
fn guarded<T>(what: &str, parse: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)).unwrap_or_else(|_| {
        Err(Error::Invalid(format!(
            "invalid FHIR {what}: the parser could not read this resource"
        )))
    })
}

/// Parses and validates a resource from the wire and returns its canonical JSON.
pub fn parse_resource(body: &[u8], format: Format) -> Result<Value> {
    let resource: Resource = match format {
        Format::Json => {
            scan_json(body)?;
            guarded("JSON", || {
                fhirbolt::json::from_slice(body, strict())
                    .map_err(|e| Error::Invalid(format!("invalid FHIR JSON: {e}")))
            })?
        }
        Format::Xml => {
            scan_xml(body)?;
            let normalised = normalise_xml(body)?;
            guarded("XML", || {
                fhirbolt::xml::from_slice(&normalised, strict())
                    .map_err(|e| Error::Invalid(format!("invalid FHIR XML: {e}")))
            })?
        }
    };
    if matches!(resource, Resource::Invalid) {
        return Err(Error::Invalid("not a FHIR resource".into()));
    }
    let canonical = fhirbolt::json::to_json_value(resource, None)
        .map_err(|e| Error::Invalid(format!("cannot represent resource as JSON: {e}")))?;
    check_canonical(&canonical)?;
    Ok(canonical)
}

/// Writes canonical JSON bytes (as stored) in the requested format. A Bundle holding an
/// entry that cannot be written in `format` (stored before the input bounds existed) is
/// served without it: the entry becomes an OperationOutcome that names the resource.
pub fn render_stored(json: &[u8], format: Format, pretty: bool) -> Result<Vec<u8>> {
    render_exactly(json, format, pretty).or_else(|e| {
        without_unwritable_entries(json, format, pretty)
            .map(|bundle| render_exactly(&bundle, format, pretty))
            .unwrap_or(Err(e))
    })
}

fn render_exactly(json: &[u8], format: Format, pretty: bool) -> Result<Vec<u8>> {
    let unwritable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "stored resource cannot be written as {format:?}");
        Error::NotAcceptable(format!(
            "the resource cannot be written as {}; request it as JSON without _pretty",
            format.mime()
        ))
    };
    match (format, pretty) {
        (Format::Json, false) => Ok(json.to_vec()),
        (Format::Json, true) => {
            let value: Value = serde_json::from_slice(json).map_err(|e| unwritable(&e))?;
            serde_json::to_vec_pretty(&value).map_err(Error::storage)
        }
        (Format::Xml, _) => {
            let resource: Resource =
                fhirbolt::json::from_slice(json, None).map_err(|e| unwritable(&e))?;
            fhirbolt::xml::to_vec(&resource, None).map_err(Error::storage)
        }
    }
}

/// The Bundle in `json` with every entry whose resource cannot be written in `format`
/// replaced by an OperationOutcome entry; `None` when `json` is no Bundle with entries.
fn without_unwritable_entries(json: &[u8], format: Format, pretty: bool) -> Option<Vec<u8>> {
    use serde_json::value::RawValue;
    type Fields = serde_json::Map<String, Value>;
    // Raw values are read without recursion, so this works on any nesting depth.
    let mut bundle: std::collections::BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(json).ok()?;
    let entries: Vec<std::collections::BTreeMap<String, Box<RawValue>>> =
        serde_json::from_str(bundle.get("entry")?.get()).ok()?;
    let mut kept: Vec<Value> = Vec::with_capacity(entries.len());
    for entry in entries {
        let writable = entry
            .get("resource")
            .is_none_or(|r| render_exactly(r.get().as_bytes(), format, pretty).is_ok());
        let mut fields = Fields::new();
        if writable {
            for (key, raw) in entry {
                fields.insert(key, serde_json::from_str(raw.get()).ok()?);
            }
        } else {
            let which = entry
                .get("fullUrl")
                .and_then(|u| serde_json::from_str::<String>(u.get()).ok())
                .unwrap_or_else(|| "a resource".into());
            let outcome = crate::OperationOutcome::error(
                crate::IssueType::TooCostly,
                format!(
                    "{which} cannot be written as {}; request it as JSON without _pretty",
                    format.mime()
                ),
            );
            fields.insert("resource".into(), outcome.to_json());
            fields.insert("search".into(), serde_json::json!({"mode": "outcome"}));
        }
        kept.push(Value::Object(fields));
    }
    let entries = RawValue::from_string(serde_json::to_string(&kept).ok()?).ok()?;
    bundle.insert("entry".into(), entries);
    // resourceType first, as fhirbolt expects to find it early in large bundles.
    let mut out = String::from("{");
    let resource_type = bundle.remove("resourceType")?;
    out.push_str(&format!("\"resourceType\":{}", resource_type.get()));
    for (key, raw) in &bundle {
        out.push_str(&format!(
            ",{}:{}",
            serde_json::to_string(key).ok()?,
            raw.get()
        ));
    }
    out.push('}');
    Some(out.into_bytes())
}

/// Writes a JSON value (a resource this server built, e.g. a Bundle) in the requested format.
pub fn render_value(value: &Value, format: Format, pretty: bool) -> Result<Vec<u8>> {
    match format {
        Format::Json if pretty => serde_json::to_vec_pretty(value).map_err(Error::storage),
        Format::Json => serde_json::to_vec(value).map_err(Error::storage),
        Format::Xml => {
            let resource: Resource = fhirbolt::json::from_json_value(value.clone(), None)
                .map_err(|e| Error::storage_fault(format!("cannot write resource as XML: {e}")))?;
            fhirbolt::xml::to_vec(&resource, None).map_err(Error::storage)
        }
    }
}

/// fhirbolt's XML reader refuses three things that are valid FHIR XML and common in DSF files:
/// comments and processing instructions before the root element, an XML declaration with a
/// lower-case `encoding="utf-8"`, and extra attributes on the root element (`xmlns:xsi`,
/// `xsi:schemaLocation`). This rewrites the prolog and the root start tag so that only the
/// FHIR namespace declaration remains; the body is left alone.
pub(crate) fn normalise_xml(body: &[u8]) -> Result<Vec<u8>> {
    let invalid = |why: &str| Error::Invalid(format!("invalid FHIR XML: {why}"));
    let text = std::str::from_utf8(body).map_err(|_| invalid("document is not UTF-8"))?;
    let mut rest = text.strip_prefix('\u{feff}').unwrap_or(text);
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("<?") {
            let end = after
                .find("?>")
                .ok_or_else(|| invalid("unterminated declaration"))?;
            let decl = &after[..end];
            if let Some(pos) = decl.find("encoding") {
                let enc = decl[pos + "encoding".len()..]
                    .trim_start()
                    .trim_start_matches('=')
                    .trim_start()
                    .trim_matches(|c| c == '"' || c == '\'' || c == ' ')
                    .split(['"', '\''])
                    .next()
                    .unwrap_or("");
                if !enc.eq_ignore_ascii_case("utf-8") {
                    return Err(invalid(&format!(
                        "encoding '{enc}' is not supported, use UTF-8"
                    )));
                }
            }
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix("<!--") {
            let end = after
                .find("-->")
                .ok_or_else(|| invalid("unterminated comment"))?;
            rest = &after[end + 3..];
        } else {
            break;
        }
    }
    let after_lt = rest
        .strip_prefix('<')
        .ok_or_else(|| invalid("no root element"))?;
    let name_len = after_lt
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .ok_or_else(|| invalid("unterminated root element"))?;
    let name = &after_lt[..name_len];
    let mut attrs_and_rest = &after_lt[name_len..];
    let mut namespace = None;
    // Walk the attributes of the root start tag, honouring quotes so a '>' inside a value
    // does not end the tag.
    loop {
        attrs_and_rest = attrs_and_rest.trim_start();
        if attrs_and_rest.starts_with('>') || attrs_and_rest.starts_with("/>") {
            break;
        }
        let eq = attrs_and_rest
            .find('=')
            .ok_or_else(|| invalid("malformed root attribute"))?;
        let attr_name = attrs_and_rest[..eq].trim();
        let value_part = attrs_and_rest[eq + 1..].trim_start();
        let quote = value_part
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .ok_or_else(|| invalid("unquoted root attribute"))?;
        let close = value_part[1..]
            .find(quote)
            .ok_or_else(|| invalid("unterminated root attribute"))?;
        if attr_name == "xmlns" {
            namespace = Some(&value_part[1..1 + close]);
        }
        attrs_and_rest = &value_part[close + 2..];
    }
    let namespace =
        namespace.ok_or_else(|| invalid("root element lacks xmlns=\"http://hl7.org/fhir\""))?;
    let mut out = String::with_capacity(rest.len());
    out.push('<');
    out.push_str(name);
    out.push_str(" xmlns=\"");
    out.push_str(namespace);
    out.push('"');
    out.push_str(attrs_and_rest);
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_arrays_are_an_error_not_a_panic() {
        for body in [
            r#"{"resourceType":"Task","status":"requested","intent":"order","input":[]}"#,
            r#"{"resourceType":"Task","status":"requested","intent":"order","identifier":[ ]}"#,
            r#"{"resourceType":"Task","status":"requested","intent":"order","_identifier":[]}"#,
        ] {
            let err = parse_resource(body.as_bytes(), Format::Json).unwrap_err();
            assert!(err.to_string().contains("must not be empty"), "{err}");
        }
        // Brackets inside strings are text.
        let text = r#"{"resourceType":"Task","status":"requested","intent":"order","description":"a [] \"[]\""}"#;
        assert!(parse_resource(text.as_bytes(), Format::Json).is_ok());
    }

    #[test]
    fn negotiation_follows_the_java_dsf() {
        assert_eq!(Format::negotiate(None, None).unwrap(), Format::Xml);
        assert_eq!(Format::negotiate(None, Some("*/*")).unwrap(), Format::Xml);
        assert_eq!(
            Format::negotiate(None, Some("application/fhir+json")).unwrap(),
            Format::Json
        );
        assert_eq!(
            Format::negotiate(Some("json"), Some("application/fhir+xml")).unwrap(),
            Format::Json
        );
        assert_eq!(
            Format::negotiate(None, Some("text/html;q=0.9, application/json;q=0.5")).unwrap(),
            Format::Json
        );
        assert!(matches!(
            Format::negotiate(None, Some("text/plain")),
            Err(Error::NotAcceptable(_))
        ));
        assert!(matches!(
            Format::negotiate(Some("yaml"), None),
            Err(Error::UnsupportedMediaType(_))
        ));
    }

    const DSF_STYLE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<!-- licence header as the DSF files carry -->
<Organization xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir a>b.xsd">
  <!-- a comment inside -->
  <active value="true"/>
  <name value="Org &gt; A"/>
</Organization>"#;

    #[test]
    fn dsf_style_xml_is_accepted() {
        let json = parse_resource(DSF_STYLE.as_bytes(), Format::Xml).unwrap();
        assert_eq!(json["resourceType"], "Organization");
        assert_eq!(json["name"], "Org > A");
        assert_eq!(json["active"], true);
    }

    #[test]
    fn non_utf8_encodings_and_garbage_are_rejected() {
        let latin = DSF_STYLE.replace("utf-8", "ISO-8859-1");
        assert!(parse_resource(latin.as_bytes(), Format::Xml).is_err());
        for bad in [
            "",
            "<",
            "<Organization",
            "<Organization xmlns=>",
            "not xml",
            "<!-- x",
        ] {
            assert!(
                parse_resource(bad.as_bytes(), Format::Xml).is_err(),
                "{bad}"
            );
        }
        for bad in [
            "",
            "{",
            "[]",
            "{\"resourceType\":\"Nope\"}",
            "{\"resourceType\":\"Task\",\"foo\":1}",
        ] {
            assert!(
                parse_resource(bad.as_bytes(), Format::Json).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn json_round_trips_through_xml() {
        let json = br#"{"resourceType":"Task","status":"requested","intent":"order","instantiatesCanonical":"http://dsf.dev/bpe/Process/ping|1.0"}"#;
        let value = parse_resource(json, Format::Json).unwrap();
        let stored = serde_json::to_vec(&value).unwrap();
        let xml = render_stored(&stored, Format::Xml, false).unwrap();
        let back = parse_resource(&xml, Format::Xml).unwrap();
        assert_eq!(back, value);
    }
}
