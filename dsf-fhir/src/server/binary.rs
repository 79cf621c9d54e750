//! Binary resources as raw content, as the Java DSF serves them: a `POST` whose
//! `Content-Type` is not a FHIR format creates a Binary of that content type, its read access
//! from the resource `X-Security-Context` names; a read whose `Accept` is not a FHIR format
//! answers the content itself (with `Range` support) when `Accept` admits the content type,
//! and 406 when it does not.

use super::reply::{Body, Reply};
use super::{Call, FhirServer, Identity, Role};
use crate::format::Format;
use crate::store::{StoredContent, StoredResource, WriteOp, WriteOutcome, PART_BYTES};
use crate::{Error, Result};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use dsf_core::ErrorChain;
use http::{header, HeaderName, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

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
    raw_resource(&call.headers, Some(&call.body))
}

/// The Binary a raw `POST` with `headers` creates: with `data` when given, else without (its
/// content is then stored apart).
fn raw_resource(headers: &http::HeaderMap, data: Option<&[u8]>) -> Result<Value> {
    let single = |name: HeaderName| -> Result<String> {
        let mut values = headers.get_all(&name).iter();
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
    let mut resource = json!({
        "resourceType": "Binary",
        "contentType": content_type,
        "securityContext": {"reference": security_context},
    });
    if let Some(data) = data {
        resource["data"] = Value::String(base64::engine::general_purpose::STANDARD.encode(data));
    }
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

impl FhirServer {
    /// The answer to a read of a Binary: the resource when FHIR is asked for, else its
    /// content (whole, or the part `Range` asks for), else 406. `None`: answer the stored
    /// resource as it is.
    pub(crate) async fn binary_read_reply(
        &self,
        call: &Call<'_>,
        stored: &StoredResource,
    ) -> Result<Option<Reply>> {
        let content = self
            .store
            .binary_content(&stored.id, stored.version)
            .await?;
        if wants_resource(call) {
            return match content {
                Some(content) => self.streamed_resource(call, stored, content).map(Some),
                None => Ok(None),
            };
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
        let inline = match (&content, binary.get("data").and_then(Value::as_str)) {
            (Some(_), _) => None,
            (None, Some(encoded)) => Some(Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| Error::storage_fault(format!("Binary/{} data: {e}", stored.id)))?,
            )),
            (None, None) => Some(Bytes::new()),
        };
        let size = match (&inline, &content) {
            (Some(data), _) => data.len() as u64,
            (None, Some(content)) => content.size,
            (None, None) => 0,
        };
        let body = |first: u64, last: u64| match (&inline, &content) {
            (Some(data), _) => Body::Raw {
                content_type: content_type.clone(),
                data: data.slice(first as usize..=last as usize),
            },
            (None, Some(content)) => Body::Streamed {
                content_type: Some(content_type.clone()),
                parts: self.send_content(content.clone(), first, last, None),
                length: last + 1 - first,
            },
            (None, None) => Body::Empty,
        };
        let mut reply = match requested_range(call.header(header::RANGE), size) {
            Requested::Whole if size == 0 => Reply::new(
                StatusCode::OK,
                Body::Raw {
                    content_type: content_type.clone(),
                    data: Bytes::new(),
                },
            ),
            Requested::Whole => Reply::new(StatusCode::OK, body(0, size - 1)),
            Requested::Part(first, last) => {
                Reply::new(StatusCode::PARTIAL_CONTENT, body(first, last)).header(
                    header::CONTENT_RANGE,
                    format!("bytes {first}-{last}/{size}"),
                )
            }
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

    /// A Binary whose content is stored apart, as a FHIR resource: the stored resource
    /// rendered in the asked-for format with its `data` (the last element of a Binary, in
    /// JSON as in XML) streamed in as base64 at the end.
    fn streamed_resource(
        &self,
        call: &Call<'_>,
        stored: &StoredResource,
        content: StoredContent,
    ) -> Result<Reply> {
        let format_param = call
            .query
            .iter()
            .find(|(k, _)| k == "_format")
            .map(|(_, v)| v.as_str());
        let format = Format::negotiate(format_param, call.header(header::ACCEPT))?;
        let pretty = call
            .query
            .iter()
            .any(|(k, v)| k == "_pretty" && v == "true");
        let json = stored.body.as_deref().ok_or_else(|| Error::Gone {
            resource: stored.reference(),
            version: stored.version,
        })?;
        let rendered = String::from_utf8(crate::format::render_stored(
            json.as_bytes(),
            format,
            pretty,
        )?)
        .map_err(Error::storage)?;
        let (head, tail) = match format {
            Format::Json => {
                let head = rendered.trim_end().strip_suffix('}').ok_or_else(|| {
                    Error::storage_fault(format!(
                        "{} renders as no JSON object",
                        stored.reference()
                    ))
                })?;
                (format!("{head},\"data\":\""), "\"}".to_owned())
            }
            Format::Xml => {
                let end = rendered.rfind("</Binary>").ok_or_else(|| {
                    Error::storage_fault(format!("{} renders as no Binary", stored.reference()))
                })?;
                (
                    format!("{}<data value=\"", &rendered[..end]),
                    format!("\"/>{}", &rendered[end..]),
                )
            }
        };
        let encoded = content.size.div_ceil(3) * 4;
        let length = head.len() as u64 + encoded + tail.len() as u64;
        let last = content.size.saturating_sub(1);
        let parts = if content.size == 0 {
            let (sender, parts) = mpsc::channel(2);
            let _ = sender.try_send(Ok(Bytes::from(head)));
            let _ = sender.try_send(Ok(Bytes::from(tail)));
            parts
        } else {
            self.send_content(
                content,
                0,
                last,
                Some((Bytes::from(head), Bytes::from(tail))),
            )
        };
        Ok(Reply::new(
            StatusCode::OK,
            Body::Streamed {
                content_type: None,
                parts,
                length,
            },
        )
        .version_headers(stored))
    }

    /// Sends bytes `first..=last` of stored content a part at a time, as they are read; with
    /// `framing`, base64-encoded between its head and tail. At most two parts wait in memory:
    /// the store is read only as fast as the client takes them.
    fn send_content(
        &self,
        content: StoredContent,
        first: u64,
        last: u64,
        framing: Option<(Bytes, Bytes)>,
    ) -> mpsc::Receiver<std::io::Result<Bytes>> {
        let (sender, parts) = mpsc::channel(2);
        let store = self.store.clone();
        tokio::spawn(async move {
            let part_bytes = PART_BYTES as u64;
            let sent: Result<()> = async {
                let closed = || Error::Invalid("the client went away".into());
                let mut carry: Vec<u8> = Vec::new();
                if let Some((head, _)) = &framing {
                    sender.send(Ok(head.clone())).await.map_err(|_| closed())?;
                }
                for part in first / part_bytes..=last / part_bytes {
                    let bytes = store.content_part(&content, part).await?;
                    let start = first.saturating_sub(part * part_bytes) as usize;
                    let end = (last + 1 - part * part_bytes).min(bytes.len() as u64) as usize;
                    if start >= end {
                        return Err(Error::storage_fault(format!(
                            "part {part} of stored content is shorter than its size says"
                        )));
                    }
                    let piece = bytes.slice(start..end);
                    let out = match framing {
                        None => piece,
                        Some(_) => {
                            carry.extend_from_slice(&piece);
                            let whole = carry.len() / 3 * 3;
                            let encoded =
                                base64::engine::general_purpose::STANDARD.encode(&carry[..whole]);
                            carry.drain(..whole);
                            Bytes::from(encoded)
                        }
                    };
                    sender.send(Ok(out)).await.map_err(|_| closed())?;
                }
                if let Some((_, tail)) = &framing {
                    let rest = base64::engine::general_purpose::STANDARD.encode(&carry);
                    sender
                        .send(Ok(Bytes::from(rest)))
                        .await
                        .map_err(|_| closed())?;
                    sender.send(Ok(tail.clone())).await.map_err(|_| closed())?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = sent {
                if !matches!(e, Error::Invalid(_)) {
                    tracing::error!(error = %ErrorChain(&e), "Binary content could not be sent");
                    let _ = sender.send(Err(std::io::Error::other(e))).await;
                }
            }
        });
        parts
    }

    /// A raw `POST` of a Binary larger than one part: refused before its body is read if the
    /// caller may not create it, then stored a part at a time as it arrives, and created
    /// once complete. A smaller one is handled as any other create. `None` for a request
    /// that is not such an upload.
    pub(crate) async fn raw_upload<'a, B>(
        &self,
        identity: &'a Identity,
        parts: &http::request::Parts,
        path: &str,
        query: &[(String, String)],
        body: &mut B,
    ) -> Result<Option<UploadStart<'a>>>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        if parts.method != http::Method::POST
            || path != "Binary"
            || parts.headers.contains_key("if-none-exist")
        {
            return Ok(None);
        }
        let call = Call {
            identity,
            method: parts.method.clone(),
            path: path.to_owned(),
            query: query.to_vec(),
            headers: parts.headers.clone(),
            body: Bytes::new(),
        };
        if !is_raw_create(&call) {
            return Ok(None);
        }
        let result = self.upload(call, body).await;
        if result.is_err() {
            super::drain(body).await;
        }
        result.map(Some)
    }

    async fn upload<'a, B>(&self, call: Call<'a>, body: &mut B) -> Result<UploadStart<'a>>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let resource = raw_resource(&call.headers, None)?;
        self.require(&call, Role::Create, "Binary")?;
        self.check_create_allowed(&call, resource.clone()).await?;
        // The first part is read before deciding: a small Binary is created as before, with
        // its data in the resource.
        let mut first = BytesMut::new();
        while first.len() <= PART_BYTES {
            match next_data(body).await? {
                Some(data) => first.extend_from_slice(&data),
                None => {
                    return Ok(UploadStart::Small(Call {
                        body: first.freeze(),
                        ..call
                    }))
                }
            }
        }
        let limit = self.config.max_binary_bytes;
        let mut writer = self.store.write_content();
        writer.write(first.freeze()).await?;
        while let Some(data) = next_data(body).await? {
            if writer.size() + data.len() as u64 > limit {
                return Err(Error::PayloadTooLarge(
                    usize::try_from(limit).unwrap_or(usize::MAX),
                ));
            }
            writer.write(data).await?;
        }
        let content = writer.finish().await?;
        let op = WriteOp::CreateWithContent {
            resource,
            content: content.clone(),
        };
        let outcome = self
            .write_as(&call, vec![op], |_| "request".to_owned())
            .await;
        match outcome.map(|mut outcomes| outcomes.pop()) {
            Ok(Some(WriteOutcome::Created(stored))) => Ok(UploadStart::Done(self.written(
                &call,
                StatusCode::CREATED,
                &stored,
                "created",
            ))),
            Ok(other) => {
                self.store.discard_content(&content).await;
                Err(Error::storage_fault(format!(
                    "unexpected create outcome {other:?}"
                )))
            }
            Err(e) => {
                self.store.discard_content(&content).await;
                Err(e)
            }
        }
    }
}

impl FhirServer {
    /// Gives the Binaries among `found` whose content is stored apart their `data`, as a
    /// Bundle carries it. One larger than a request body may be refuses the Bundle (406):
    /// such a Binary is read on its own.
    pub(crate) async fn embed_content(&self, found: &mut [StoredResource]) -> Result<()> {
        for stored in found
            .iter_mut()
            .filter(|s| s.resource_type == "Binary" && !s.deleted)
        {
            let Some(content) = self
                .store
                .binary_content(&stored.id, stored.version)
                .await?
            else {
                continue;
            };
            let data = self
                .store
                .content_bytes(&content, self.config.max_body_bytes as u64)
                .await?;
            let mut binary = stored.json()?;
            binary["data"] = Value::String(base64::engine::general_purpose::STANDARD.encode(data));
            stored.body = Some(
                serde_json::to_string(&binary)
                    .map_err(Error::storage)?
                    .into(),
            );
        }
        Ok(())
    }
}

impl FhirServer {
    /// A reply whose resource is streamed (a Binary with content apart), collected, as a
    /// Bundle entry carries it; refused (406) when larger than a request body may be.
    pub(crate) async fn collected(&self, mut reply: Reply) -> Result<Reply> {
        let Body::Streamed {
            content_type: None,
            parts,
            length,
        } = &mut reply.body
        else {
            return Ok(reply);
        };
        let limit = self.config.max_body_bytes as u64;
        if *length > limit {
            return Err(crate::store::too_large_to_embed(*length, limit));
        }
        let mut json = Vec::with_capacity(*length as usize);
        while let Some(part) = parts.recv().await {
            json.extend_from_slice(&part.map_err(Error::storage)?);
        }
        let json = String::from_utf8(json).map_err(Error::storage)?;
        reply.body = Body::Stored(json.into());
        Ok(reply)
    }
}

/// How a raw Binary upload went on: created from parts, or small enough to be created from
/// the request as it is.
pub(crate) enum UploadStart<'a> {
    Done(Reply),
    Small(Call<'a>),
}

/// The next data of a request body, skipping trailers; a broken body is a 400.
async fn next_data<B>(body: &mut B) -> Result<Option<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(Error::Invalid(format!("request body: {e}"))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
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
