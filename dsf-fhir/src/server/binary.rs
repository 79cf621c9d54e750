//! Binary resources as raw content, as the Java DSF serves them: a `POST` whose
//! `Content-Type` is not a FHIR format creates a Binary of that content type, its read access
//! from the resource `X-Security-Context` names; a read whose `Accept` is not a FHIR format
//! answers the content itself (with `Range` support) when `Accept` admits the content type,
//! and 406 when it does not.

use super::reply::{Body, Reply};
use super::Call;
use crate::format::Format;
use crate::store::StoredResource;
use crate::{Error, Result};
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderName, StatusCode};
use serde_json::{json, Value};

/// The header naming a raw Binary's security context, on create and on read.
pub const SECURITY_CONTEXT_HEADER: HeaderName = HeaderName::from_static("x-security-context");

/// The media types that ask for the Binary as a FHIR resource (the Java DSF's list).
const FHIR_MEDIA_TYPES: [&str; 4] = [
    "application/fhir+json",
    "application/fhir+xml",
    "application/json+fhir",
    "application/xml+fhir",
];

/// Whether a `POST` to `Binary` carries raw content rather than a FHIR resource.
pub(crate) fn is_raw_create(call: &Call<'_>) -> bool {
    call.header(header::CONTENT_TYPE)
        .is_some_and(|content_type| Format::from_mime(content_type).is_none())
}

/// The Binary resource a raw `POST` creates.
pub(crate) fn resource_from_raw(call: &Call<'_>) -> Result<Value> {
    let single = |name: HeaderName| -> Result<String> {
        let mut values = call.headers.get_all(&name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| Error::Invalid(format!("header {name} is empty or not text"))),
            (None, _) => Err(Error::Invalid(format!(
                "a raw Binary needs the header {name}"
            ))),
            (Some(_), Some(_)) => Err(Error::Invalid(format!(
                "header {name} is given more than once"
            ))),
        }
    };
    let content_type = single(header::CONTENT_TYPE)?;
    let security_context = single(SECURITY_CONTEXT_HEADER)?;
    let resource = json!({
        "resourceType": "Binary",
        "contentType": content_type,
        "securityContext": {"reference": security_context},
        "data": base64::engine::general_purpose::STANDARD.encode(&call.body),
    });
    crate::bounds::check_canonical(&resource)?;
    Ok(resource)
}

/// One media range of an `Accept` header: `type/subtype` and its quality.
fn media_ranges(accept: &str) -> impl Iterator<Item = (String, f32)> + '_ {
    accept.split(',').filter_map(|range| {
        let mut parts = range.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        (!essence.is_empty()).then_some((essence, quality))
    })
}

/// Whether the request asks for the FHIR resource: `_format`, or a FHIR media type as the
/// most preferred of `Accept`.
fn wants_resource(call: &Call<'_>) -> bool {
    if call.query.iter().any(|(k, _)| k == "_format") {
        return true;
    }
    let Some(accept) = call.header(header::ACCEPT) else {
        return false;
    };
    let mut ranges: Vec<(String, f32)> = media_ranges(accept).collect();
    ranges.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranges
        .first()
        .is_some_and(|(essence, _)| FHIR_MEDIA_TYPES.contains(&essence.as_str()))
}

/// Whether `Accept` (absent meaning `*/*`) admits `content_type`.
fn admits(accept: Option<&str>, content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let main_type = essence.split('/').next().unwrap_or("");
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return true;
    };
    media_ranges(accept).any(|(range, quality)| {
        quality > 0.0
            && (range == "*/*"
                || range == essence
                || range
                    .strip_suffix("/*")
                    .is_some_and(|wanted| wanted == main_type))
    })
}

/// The byte range a `Range` header asks for within `size` bytes.
#[derive(Debug, PartialEq)]
enum Requested {
    /// No range, or one this server ignores (several ranges, another unit, garbage): the
    /// whole content, as RFC 9110 allows.
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

fn requested_range(range: Option<&str>, size: u64) -> Requested {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Requested::Whole;
    };
    if spec.contains(',') {
        return Requested::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Requested::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    match (first.parse::<u64>().ok(), last.parse::<u64>().ok()) {
        // A suffix: the last `n` bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || size == 0 {
                Requested::Unsatisfiable
            } else {
                Requested::Part(size - n.min(size), size - 1)
            }
        }
        (Some(start), None) if last.is_empty() => {
            if start >= size {
                Requested::Unsatisfiable
            } else {
                Requested::Part(start, size - 1)
            }
        }
        (Some(start), Some(end)) if start <= end => {
            if start >= size {
                Requested::Unsatisfiable
            } else {
                Requested::Part(start, end.min(size - 1))
            }
        }
        _ => Requested::Whole,
    }
}

fn file_extension(content_type: &str) -> &'static str {
    match content_type.split(';').next().unwrap_or("").trim() {
        "application/pdf" => ".pdf",
        "application/json" | "application/fhir+json" => ".json",
        "application/xml" | "application/fhir+xml" | "text/xml" => ".xml",
        "application/zip" => ".zip",
        "image/jpeg" => ".jpeg",
        "image/png" => ".png",
        "image/svg+xml" => ".svg",
        "text/csv" => ".csv",
        "text/html" => ".html",
        "text/plain" => ".txt",
        _ => ".bin",
    }
}

/// The answer to a read of a Binary: the resource when FHIR is asked for, else its content
/// (whole, or the part `Range` asks for), else 406.
pub(crate) fn read_reply(call: &Call<'_>, stored: &StoredResource) -> Result<Option<Reply>> {
    if wants_resource(call) {
        return Ok(None);
    }
    let binary = stored.json()?;
    let content_type = binary
        .get("contentType")
        .and_then(Value::as_str)
        .unwrap_or("application/octet-stream")
        .to_owned();
    if !admits(call.header(header::ACCEPT), &content_type) {
        return Err(Error::NotAcceptable(format!(
            "Binary/{} has content type {content_type}, which Accept does not admit; ask for it or for application/fhir+json",
            stored.id
        )));
    }
    let data = match binary.get("data").and_then(Value::as_str) {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| Error::storage_fault(format!("Binary/{} data: {e}", stored.id)))?,
        None => Vec::new(),
    };
    let data = Bytes::from(data);
    let size = data.len() as u64;
    let mut reply = match requested_range(call.header(header::RANGE), size) {
        Requested::Whole => Reply::new(
            StatusCode::OK,
            Body::Raw {
                content_type: content_type.clone(),
                data,
            },
        ),
        Requested::Part(first, last) => Reply::new(
            StatusCode::PARTIAL_CONTENT,
            Body::Raw {
                content_type: content_type.clone(),
                data: data.slice(first as usize..=last as usize),
            },
        )
        .header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{size}"),
        ),
        Requested::Unsatisfiable => {
            return Ok(Some(
                Reply::new(StatusCode::RANGE_NOT_SATISFIABLE, Body::Empty)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}")),
            ))
        }
    };
    if let Some(context) = binary
        .get("securityContext")
        .and_then(|c| c.get("reference"))
        .and_then(Value::as_str)
    {
        reply = reply.header(SECURITY_CONTEXT_HEADER, context);
    }
    Ok(Some(
        reply
            .version_headers(stored)
            .header(header::ACCEPT_RANGES, "bytes")
            .header(
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=Binary_{}{}",
                    stored.id,
                    file_extension(&content_type)
                ),
            ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use Requested::*;
        assert_eq!(requested_range(None, 10), Whole);
        assert_eq!(requested_range(Some("bytes=0-3"), 10), Part(0, 3));
        assert_eq!(requested_range(Some("bytes=5-"), 10), Part(5, 9));
        assert_eq!(requested_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(requested_range(Some("bytes=-30"), 10), Part(0, 9));
        assert_eq!(requested_range(Some("bytes=8-100"), 10), Part(8, 9));
        assert_eq!(requested_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(requested_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(requested_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(requested_range(Some("bytes=3-1"), 10), Whole);
        assert_eq!(requested_range(Some("bytes=0-1,4-5"), 10), Whole);
        assert_eq!(requested_range(Some("items=0-1"), 10), Whole);
        assert_eq!(requested_range(Some("bytes=x-y"), 10), Whole);
    }

    #[test]
    fn accept_admits_content_types() {
        assert!(admits(None, "application/pdf"));
        assert!(admits(Some("*/*"), "application/pdf"));
        assert!(admits(Some("application/*"), "application/pdf"));
        assert!(admits(
            Some("text/plain, application/pdf;q=0.5"),
            "application/pdf"
        ));
        assert!(admits(
            Some("application/pdf"),
            "application/pdf; charset=x"
        ));
        assert!(!admits(Some("text/plain"), "application/pdf"));
        assert!(!admits(Some("application/pdf;q=0"), "application/pdf"));
    }
}
