//! Bounds on what a peer may send, checked on the raw bytes before any recursive parser runs,
//! and on the canonical JSON before it is stored.
//!
//! The limits are chosen so that whatever passes them can be served again in either format:
//! stored JSON is read back with serde_json (which refuses more than 128 levels) and written
//! as XML by fhirbolt (recursive), so the canonical form stays well below both.

use crate::date::parse_date_range;
use crate::{Error, Result};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashSet;

/// Deepest nesting of JSON objects and arrays accepted, on the wire and in canonical form.
pub const MAX_JSON_DEPTH: usize = 100;
/// Deepest nesting of XML elements accepted. One XML level becomes up to two JSON levels
/// (an array and an object), so this keeps the canonical JSON under [`MAX_JSON_DEPTH`] for
/// ordinary shapes; the canonical check catches the rest.
pub const MAX_XML_DEPTH: usize = 64;
/// Most JSON values or XML elements one request body may hold. Parsing costs memory per
/// node (the typed model, then canonical JSON), so this bounds a request's memory whatever
/// the body size: about 120 MB at the limit. A DSF StructureDefinition with snapshot has
/// some 20,000 nodes.
pub const MAX_NODES: usize = 200_000;

fn invalid(format: &str, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("invalid FHIR {format}: {why}"))
}

/// Checks JSON text for nesting depth, node count, duplicate object keys (after unescaping,
/// so `"meta"` and `"\u006deta"` collide) and empty arrays, in one pass without recursion.
/// Syntax errors it does not need to understand are left to the parser.
pub fn scan_json(text: &[u8]) -> Result<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum Frame {
        /// An object, with its ordinal for key de-duplication and whether a key comes next.
        Object {
            ordinal: u32,
            expect_key: bool,
        },
        Array {
            empty: bool,
        },
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut keys: HashSet<(u32, Cow<'_, [u8]>)> = HashSet::new();
    let mut objects = 0u32;
    let mut nodes = 0usize;
    let mut i = 0;
    let mut count_value = |stack: &mut Vec<Frame>| -> Result<()> {
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(invalid(
                "JSON",
                format!("more than {MAX_NODES} values in one body"),
            ));
        }
        if let Some(Frame::Array { empty }) = stack.last_mut() {
            *empty = false;
        }
        Ok(())
    };
    while i < text.len() {
        let b = text[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | b':' => {}
            b',' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = true;
                }
            }
            b'{' | b'[' => {
                count_value(&mut stack)?;
                if stack.len() >= MAX_JSON_DEPTH {
                    return Err(invalid(
                        "JSON",
                        format!("nested deeper than {MAX_JSON_DEPTH} levels"),
                    ));
                }
                stack.push(if b == b'{' {
                    objects += 1;
                    Frame::Object {
                        ordinal: objects,
                        expect_key: true,
                    }
                } else {
                    Frame::Array { empty: true }
                });
            }
            b'}' | b']' => match (stack.pop(), b) {
                (Some(Frame::Array { empty: true }), b']') => {
                    return Err(invalid("JSON", "arrays must not be empty"))
                }
                (Some(Frame::Array { .. }), b']') | (Some(Frame::Object { .. }), b'}') => {}
                _ => return Err(invalid("JSON", "brackets do not match")),
            },
            b'"' => {
                let start = i + 1;
                let mut end = start;
                let mut escaped = false;
                while end < text.len() {
                    match text[end] {
                        b'\\' => escaped = true,
                        b'"' => break,
                        _ => {}
                    }
                    end += if text[end] == b'\\' { 2 } else { 1 };
                }
                if end >= text.len() {
                    return Err(invalid("JSON", "unterminated string"));
                }
                match stack.last_mut() {
                    Some(Frame::Object {
                        ordinal,
                        expect_key: expect_key @ true,
                    }) => {
                        *expect_key = false;
                        let key: Cow<'_, [u8]> = if escaped {
                            let unescaped: String = serde_json::from_slice(&text[i..=end])
                                .map_err(|_| invalid("JSON", "malformed string escape"))?;
                            Cow::Owned(unescaped.into_bytes())
                        } else {
                            Cow::Borrowed(&text[start..end])
                        };
                        if !keys.insert((*ordinal, key)) {
                            return Err(invalid(
                                "JSON",
                                format!(
                                    "duplicate key \"{}\" in one object",
                                    String::from_utf8_lossy(&text[start..end])
                                ),
                            ));
                        }
                    }
                    _ => count_value(&mut stack)?,
                }
                i = end;
            }
            _ => {
                // A number or literal: one value, running to the next delimiter.
                count_value(&mut stack)?;
                while i + 1 < text.len()
                    && !matches!(
                        text[i + 1],
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b':' | b'"'
                    )
                {
                    i += 1;
                }
            }
        }
        i += 1;
    }
    Ok(())
}

/// Checks XML text for nesting depth, element count, document type declarations (entity
/// expansion) and characters XML 1.0 does not allow, in one pass without recursion.
pub fn scan_xml(text: &[u8]) -> Result<()> {
    let find = |from: usize, needle: &[u8]| -> Option<usize> {
        text.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| from + p)
    };
    if let Some(bad) = text
        .iter()
        .find(|&&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
    {
        return Err(invalid(
            "XML",
            format!("control character 0x{bad:02x} is not allowed in XML"),
        ));
    }
    let mut depth = 0usize;
    let mut elements = 0usize;
    let mut i = 0;
    while let Some(lt) = find(i, b"<") {
        let rest = &text[lt + 1..];
        if rest.starts_with(b"?") {
            i = find(lt, b"?>").ok_or_else(|| invalid("XML", "unterminated declaration"))? + 2;
        } else if rest.starts_with(b"!--") {
            i = find(lt + 4, b"-->").ok_or_else(|| invalid("XML", "unterminated comment"))? + 3;
        } else if rest.starts_with(b"![CDATA[") {
            i = find(lt, b"]]>").ok_or_else(|| invalid("XML", "unterminated CDATA"))? + 3;
        } else if rest.starts_with(b"!") {
            return Err(invalid("XML", "document type declarations are not allowed"));
        } else if rest.starts_with(b"/") {
            depth = depth.saturating_sub(1);
            i = find(lt, b">").ok_or_else(|| invalid("XML", "unterminated end tag"))? + 1;
        } else {
            elements += 1;
            depth += 1;
            if depth > MAX_XML_DEPTH {
                return Err(invalid(
                    "XML",
                    format!("elements nested deeper than {MAX_XML_DEPTH} levels"),
                ));
            }
            if elements > MAX_NODES {
                return Err(invalid(
                    "XML",
                    format!("more than {MAX_NODES} elements in one body"),
                ));
            }
            // Find the end of the start tag; quoted attribute values may hold '>'.
            let mut j = lt + 1;
            let mut quote = None;
            while j < text.len() {
                match (quote, text[j]) {
                    (None, b'"' | b'\'') => quote = Some(text[j]),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if j >= text.len() {
                return Err(invalid("XML", "unterminated start tag"));
            }
            if text[j - 1] == b'/' {
                depth -= 1;
            }
            i = j + 1;
        }
    }
    Ok(())
}

/// JSON keys whose string values are FHIR `date`, `dateTime` or `instant` in every R4
/// resource and data type that has them (derived from fhirbolt's R4 model).
const DATE_KEYS: &[&str] = &[
    "abatementDateTime",
    "answerDate",
    "answerDateTime",
    "approvalDate",
    "authored",
    "authoredOn",
    "birthDate",
    "bornDate",
    "collectedDateTime",
    "created",
    "createdDateTime",
    "creation",
    "date",
    "dateAsserted",
    "dateDateTime",
    "dateOfFirstAuthorization",
    "dateTime",
    "dateWritten",
    "deceasedDate",
    "deceasedDateTime",
    "defaultValueDate",
    "defaultValueDateTime",
    "defaultValueInstant",
    "detected",
    "dueDate",
    "effectiveDate",
    "effectiveDateTime",
    "effectiveInstant",
    "effectiveTime",
    "end",
    "enteredDate",
    "event",
    "expirationDate",
    "expiry",
    "fixedDate",
    "fixedDateTime",
    "fixedInstant",
    "identifiedDateTime",
    "ifModifiedSince",
    "internationalBirthDate",
    "issued",
    "lastModified",
    "lastOccurrence",
    "lastPerformed",
    "lastReviewDate",
    "lastUpdated",
    "lockedDate",
    "manufactureDate",
    "maxValueDate",
    "maxValueDateTime",
    "maxValueInstant",
    "minValueDate",
    "minValueDateTime",
    "minValueInstant",
    "nextScheduled",
    "occurredDateTime",
    "occurrenceDateTime",
    "onset",
    "onsetDateTime",
    "participantEffectiveDateTime",
    "patternDate",
    "patternDateTime",
    "patternInstant",
    "paymentDate",
    "performedDateTime",
    "presentationDate",
    "publicationDate",
    "received",
    "receivedTime",
    "recorded",
    "recordedDate",
    "recordedOn",
    "releaseDate",
    "restoreDate",
    "sent",
    "servicedDate",
    "startDate",
    "started",
    "statusDate",
    "studyEffectiveDateTime",
    "time",
    "timeDateTime",
    "timestamp",
    "timingDate",
    "timingDateTime",
    "validTo",
    "validationDate",
    "valueDate",
    "valueDateTime",
    "valueInstant",
    "verificationDate",
    "whenHandedOver",
    "whenPrepared",
];

/// Keys that are dates in some elements and codes in others (`Period.start` and
/// `GraphDefinition.start`; `Signature.when` and `Timing.repeat.when`): checked only where
/// the value looks like a date. `value` is not one of them: `Identifier.value` and
/// `ContactPoint.value` are strings, and `20240115` or a UUID starting with digits is a
/// fine identifier.
const SOMETIMES_DATE_KEYS: &[&str] = &["start", "when"];

fn looks_like_date(s: &str) -> bool {
    s.len() >= 4 && s.as_bytes()[..4].iter().all(u8::is_ascii_digit)
}

/// Checks canonical JSON before it is stored: nesting depth, strings free of the control
/// characters FHIR forbids (XML could not carry them), and real calendar dates.
pub fn check_canonical(resource: &Value) -> Result<()> {
    let mut stack: Vec<(Option<&str>, &Value, usize)> = vec![(None, resource, 1)];
    while let Some((key, value, depth)) = stack.pop() {
        if depth > MAX_JSON_DEPTH && (value.is_object() || value.is_array()) {
            return Err(Error::Invalid(format!(
                "invalid FHIR resource: nested deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        match value {
            Value::Object(map) => {
                stack.extend(map.iter().map(|(k, v)| (Some(k.as_str()), v, depth + 1)));
            }
            Value::Array(items) => stack.extend(items.iter().map(|v| (key, v, depth + 1))),
            Value::String(s) => {
                if let Some(c) = s
                    .chars()
                    .find(|c| (*c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r'))
                {
                    return Err(Error::Invalid(format!(
                        "invalid FHIR string{}: control character U+{:04X} is not allowed",
                        key.map(|k| format!(" in '{k}'")).unwrap_or_default(),
                        c as u32
                    )));
                }
                if let Some(key) = key {
                    let strict = DATE_KEYS.binary_search(&key).is_ok();
                    let loose = SOMETIMES_DATE_KEYS.contains(&key) && looks_like_date(s);
                    if (strict || loose) && parse_date_range(s).is_none() {
                        return Err(Error::Invalid(format!(
                            "invalid FHIR date in '{key}': '{s}' is not a valid date, dateTime or instant"
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Nesting depth of stored JSON text, without parsing it: whether it can be read back.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_json(levels: usize) -> String {
        let mut s = String::new();
        for _ in 0..levels {
            s.push_str("{\"a\":");
        }
        s.push('1');
        for _ in 0..levels {
            s.push('}');
        }
        s
    }

    #[test]
    fn date_keys_are_sorted_for_binary_search() {
        assert!(DATE_KEYS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn json_depth_nodes_and_duplicates() {
        assert!(scan_json(nested_json(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let err = scan_json(nested_json(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
        let err = scan_json(br#"{"meta":{},"a":1,"\u006deta":{"x":1}}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate key"), "{err}");
        // The same key in different objects is fine.
        assert!(scan_json(br#"{"a":{"b":1},"c":{"b":2},"d":[{"b":1},{"b":2}]}"#).is_ok());
        let many = format!("[{}1]", "1,".repeat(MAX_NODES));
        assert!(scan_json(many.as_bytes()).is_err());
        assert!(scan_json(b"{\"a\":[ ]}").is_err());
        assert!(scan_json(b"{\"a\":\"[]\"}").is_ok());
        for garbage in [&b"}"[..], b"{]", b"\"", b"{\"a\\", b"\\", b"[1,"] {
            let _ = scan_json(garbage);
        }
    }

    #[test]
    fn xml_depth_doctype_and_control_characters() {
        let nested = |n: usize| format!("{}{}", "<a x=\"1>\">".repeat(n), "</a>".repeat(n));
        assert!(scan_xml(nested(MAX_XML_DEPTH).as_bytes()).is_ok());
        assert!(scan_xml(nested(MAX_XML_DEPTH + 1).as_bytes()).is_err());
        // Self-closing elements do not nest.
        let flat = "<a><b/><!-- <c> --><![CDATA[<d>]]></a>".to_owned() + &"<e/>".repeat(100);
        assert!(scan_xml(flat.as_bytes()).is_ok());
        assert!(scan_xml(b"<!DOCTYPE x [<!ENTITY a \"b\">]><x/>").is_err());
        assert!(scan_xml(b"<a v=\"\0\"/>").is_err());
        for garbage in [&b"<"[..], b"<a", b"<!--", b"<?", b"</", b"<![CDATA["] {
            assert!(scan_xml(garbage).is_err());
        }
    }

    #[test]
    fn canonical_strings_and_dates() {
        let ok = serde_json::json!({"resourceType":"Task","authoredOn":"2024-02-29T10:00:00+01:00",
            "restriction":{"period":{"start":"2024-01-01"}},"description":"2024-02-30 is text here"});
        assert!(check_canonical(&ok).is_ok());
        for bad in [
            serde_json::json!({"authoredOn":"2024-02-30"}),
            serde_json::json!({"restriction":{"period":{"start":"2023-02-29"}}}),
            serde_json::json!({"input":[{"valueDateTime":"2024-13-01"}]}),
            serde_json::json!({"description":"a\u{0}b"}),
            serde_json::json!({"lastModified":"yesterday"}),
        ] {
            assert!(check_canonical(&bad).is_err(), "{bad}");
        }
        // `start` that is a code, not a date.
        assert!(check_canonical(&serde_json::json!({"start":"Patient"})).is_ok());
        // Identifier and ContactPoint values that only look like dates.
        let identifiers = serde_json::json!({"resourceType":"Organization",
            "identifier":[{"system":"http://x","value":"20240115"},
                {"value":"2024abcd-0000-4000-8000-000000000000"}],
            "telecom":[{"system":"phone","value":"2024-99-99"}]});
        assert!(check_canonical(&identifiers).is_ok());
    }

    #[test]
    fn depth_of_stored_text() {
        assert_eq!(json_depth(br#"{"a":[{"b":"{{{"}]}"#), 3);
    }
}
