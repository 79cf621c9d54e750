//! One audit record as a JSON line, written field by field into a reused buffer.
//!
//! Every request of a server with the audit log on pays for this, so it avoids what a
//! generic serialiser costs per field: the fields are known, keys are literals, numbers go
//! through `itoa`, and the part that names the caller (peer address, identity, thumbprint:
//! half the line) is formatted once per connection and caller, into the [`RecordHead`] kept
//! with the connection's trace.

use super::{AuditEntry, NamedResource};
use crate::server::interaction::PathId;
use crate::server::trace::{HeadKey, Noted, Reason, RecordHead};
use crate::server::IdentityKind;
use std::net::SocketAddr;
use std::sync::Arc;

/// The head for a record of `noted` from `peer`: the one `head` keeps, or formatted and kept.
fn head_for<'h>(head: &'h mut RecordHead, peer: Option<SocketAddr>, noted: &Noted) -> &'h [u8] {
    let kept = head.formatted_for.as_ref().is_some_and(|key| {
        key.peer == peer
            && match (&key.identity, noted.identity()) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && key.thumbprint == noted.thumbprint
    });
    if !kept {
        head.json.clear();
        if let Some(peer) = peer {
            head.json.extend_from_slice(b",\"peer\":\"");
            push_peer(&mut head.json, peer);
            head.json.push(b'"');
        }
        head.json.extend_from_slice(b",\"identity\":");
        push_identity(&mut head.json, noted);
        head.formatted_for = Some(HeadKey {
            peer,
            identity: noted.identity().cloned(),
            thumbprint: noted.thumbprint.clone(),
        });
    }
    &head.json
}

/// Appends `entry` as one JSON object (no newline), with `time` as its timestamp and the
/// caller's part from `head`.
pub(super) fn write(entry: &AuditEntry<'_>, head: &mut RecordHead, time: &str, out: &mut Vec<u8>) {
    let noted = entry.noted;
    // The crate's own words (a timestamp, an interaction name) and an HTTP method (a token)
    // need no escaping; their quotes go with the keys around them.
    debug_assert!(!needs_escaping(time.as_bytes()), "{time}");
    put(out, b"{\"time\":\"");
    put(out, time.as_bytes());
    put(out, b"\"");
    put(out, head_for(head, entry.peer, noted));
    put(out, b",\"interaction\":\"");
    put(out, entry.interaction.as_bytes());
    put(out, b"\",\"method\":\"");
    put(out, entry.method.as_str().as_bytes());
    put(out, b"\"");
    match &entry.resource {
        NamedResource::None => {}
        NamedResource::Reference(reference) => {
            put(out, b",\"resource\":");
            push_str(out, reference);
        }
        NamedResource::Path(resource_type, id) => {
            put(out, b",\"resource\":\"");
            put(out, resource_type.as_bytes());
            if let Some(PathId { id, version }) = id {
                out.push(b'/');
                escape_into(out, id);
                if let Some(version) = version {
                    put(out, b"/_history/");
                    escape_into(out, version);
                }
            }
            out.push(b'"');
        }
    }
    if !entry.parameters.is_empty() {
        put(out, b",\"parameters\":");
        push_list(out, &entry.parameters, |out, name| push_str(out, name));
    }
    push_status(out, entry.status);
    if !noted.allowed.is_empty() {
        put(out, b",\"allowed\":");
        push_list(out, &noted.allowed, push_reason);
    }
    if !noted.refused.is_empty() {
        put(out, b",\"refused\":");
        push_list(out, &noted.refused, push_reason);
    }
    if noted.left_out > 0 {
        put(out, b",\"reasons_left_out\":");
        push_number(out, noted.left_out);
    }
    put(out, b",\"duration_us\":");
    push_number(
        out,
        u64::try_from(entry.duration.as_micros()).unwrap_or(u64::MAX),
    );
    out.push(b'}');
}

/// Who asked: the kind of caller, whom the allow list or role configuration found for the
/// certificate, and the certificate's SHA-512 thumbprint when one was presented.
fn push_identity(out: &mut Vec<u8>, noted: &Noted) {
    put(out, b"{\"kind\":");
    match noted.identity() {
        Some(identity) => {
            push_str(
                out,
                match identity.kind {
                    IdentityKind::LocalOrganization => "local-organization",
                    IdentityKind::RemoteOrganization => "remote-organization",
                    IdentityKind::Practitioner => "practitioner",
                },
            );
            put(out, b",\"name\":");
            push_str(out, identity.name());
            put(out, b",\"organization\":");
            push_str(out, &identity.organization_identifier);
            if let Some(practitioner) = &identity.practitioner_identifier {
                put(out, b",\"practitioner\":");
                push_str(out, practitioner);
            }
        }
        None => push_str(out, "unknown"),
    }
    if let Some(thumbprint) = &noted.thumbprint {
        put(out, b",\"thumbprint\":");
        push_str(out, thumbprint.as_str());
    }
    out.push(b'}');
}

/// `,"status":…,"outcome":…`; the statuses a server answers most often are written whole.
fn push_status(out: &mut Vec<u8>, status: u16) {
    macro_rules! whole {
        ($($status:literal => $outcome:literal),* $(,)?) => {
            match status {
                $($status => concat!(",\"status\":", $status, ",\"outcome\":\"", $outcome, "\"")),*,
                _ => "",
            }
        };
    }
    let known = whole! {
        200 => "allowed", 201 => "allowed", 204 => "allowed", 304 => "allowed",
        400 => "refused", 401 => "refused", 403 => "refused", 404 => "refused",
        410 => "refused", 412 => "refused", 422 => "refused", 429 => "refused",
        500 => "failed", 503 => "failed",
    };
    if known.is_empty() {
        put(out, b",\"status\":");
        push_number(out, status);
        put(out, b",\"outcome\":");
        push_word(out, outcome(status));
    } else {
        debug_assert!(
            known.ends_with(&format!("\"{}\"", outcome(status))),
            "{known}"
        );
        put(out, known.as_bytes());
    }
}

/// The outcome word of an HTTP status: `allowed` (1xx–3xx), `refused` (4xx), `failed` (5xx).
fn outcome(status: u16) -> &'static str {
    match status {
        500.. => "failed",
        400.. => "refused",
        _ => "allowed",
    }
}

fn push_reason(out: &mut Vec<u8>, reason: &Reason) {
    match reason {
        // The crate's own sentences and names: nothing in them needs escaping.
        Reason::Fixed(sentence) => push_word(out, sentence),
        Reason::Role {
            role,
            resource_type,
        } => {
            debug_assert!(!needs_escaping(role.as_bytes()), "{role}");
            debug_assert!(!needs_escaping(resource_type.as_bytes()), "{resource_type}");
            put(out, b"\"holds the role ");
            put(out, role.as_bytes());
            put(out, b" for ");
            put(out, resource_type.as_bytes());
            out.push(b'"');
        }
        Reason::Text(sentence) => push_str(out, sentence),
    }
}

fn push_list<T>(out: &mut Vec<u8>, items: &[T], push: impl Fn(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        push(out, item);
    }
    out.push(b']');
}

fn push_number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    put(out, itoa::Buffer::new().format(n).as_bytes());
}

/// `ip:port`, or `[ip]:port` for IPv6.
fn push_peer(out: &mut Vec<u8>, peer: SocketAddr) {
    match peer {
        SocketAddr::V4(v4) => {
            for (n, octet) in v4.ip().octets().into_iter().enumerate() {
                if n > 0 {
                    out.push(b'.');
                }
                push_number(out, octet);
            }
            out.push(b':');
            push_number(out, v4.port());
        }
        SocketAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `bytes`. Not inlined, nor are the pushes below: a record is some thirty pieces,
/// and one shared copy of the append is less code for a request to fetch (its code is cold
/// by then: see docs/performance.md) than thirty inlined copies with their checks.
#[inline(never)]
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
}

/// A word of this crate's own (a timestamp, an interaction name, an outcome, a method) as a
/// JSON string: nothing in it needs escaping.
#[inline(never)]
fn push_word(out: &mut Vec<u8>, word: &str) {
    debug_assert!(!needs_escaping(word.as_bytes()), "{word}");
    out.push(b'"');
    put(out, word.as_bytes());
    out.push(b'"');
}

/// `text` as a JSON string.
#[inline(never)]
fn push_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    escape_into(out, text);
    out.push(b'"');
}

/// `text` escaped for a JSON string, without the quotes: `"` and `\` with a backslash,
/// control characters as `\n`, `\t`… or `\u00XX`; everything else (UTF-8 included) as is.
#[inline(never)]
fn escape_into(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    if !needs_escaping(bytes) {
        put(out, bytes);
        return;
    }
    let mut clean_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                put(out, &bytes[clean_from..at]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                put(out, b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0x0f)]);
                clean_from = at + 1;
                continue;
            }
            _ => continue,
        };
        put(out, &bytes[clean_from..at]);
        put(out, escaped);
        clean_from = at + 1;
    }
    put(out, &bytes[clean_from..]);
}

/// Whether any byte of `bytes` must be escaped in a JSON string. Written without an early
/// exit so that the compiler checks many bytes at once: almost every string needs nothing.
fn needs_escaping(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Identity;
    use std::time::Duration;

    #[test]
    fn escaped_strings_read_back_as_written() {
        let mut text: String = (0u8..0x80).map(char::from).collect();
        text.push_str("\"\\ äöü € 😀 \u{7f}");
        let mut out = Vec::new();
        push_str(&mut out, &text);
        let back: String = serde_json::from_slice(&out).expect("valid JSON string");
        assert_eq!(back, text);
        // What needs no escaping is copied as is.
        let mut plain = Vec::new();
        push_str(&mut plain, "Task/1 ä");
        assert_eq!(plain, "\"Task/1 ä\"".as_bytes());
    }

    fn entry(noted: &Noted, peer: Option<SocketAddr>) -> AuditEntry<'_> {
        AuditEntry {
            time: std::time::Instant::now(),
            peer,
            noted,
            interaction: "search-type",
            method: &http::Method::GET,
            resource: NamedResource::Path(
                "Task",
                Some(PathId {
                    id: "a\"b",
                    version: Some("2"),
                }),
            ),
            parameters: vec!["_id".into(), "status".into()],
            status: 403,
            duration: Duration::from_micros(1234),
        }
    }

    #[test]
    fn a_record_has_every_field_it_should_and_none_it_should_not() {
        let mut noted = Noted::default();
        noted.thumbprint = Some(dsf_core::Thumbprint::of_der(b"certificate"));
        noted.allowed = vec![Reason::Role {
            role: "READ",
            resource_type: "Task",
        }];
        noted.refused = vec![Reason::Text("not yours\n".into())];
        noted.left_out = 3;
        let mut head = RecordHead::default();
        let mut line = Vec::new();
        let peer = "[::1]:8443".parse().ok();
        write(
            &entry(&noted, peer),
            &mut head,
            "1970-01-01T00:00:00.000Z",
            &mut line,
        );
        let record: serde_json::Value = serde_json::from_slice(&line).expect("JSON");
        assert_eq!(
            record,
            serde_json::json!({
                "time": "1970-01-01T00:00:00.000Z",
                "peer": "[::1]:8443",
                "identity": {
                    "kind": "unknown",
                    "thumbprint": dsf_core::Thumbprint::of_der(b"certificate").as_str(),
                },
                "interaction": "search-type",
                "method": "GET",
                "resource": "Task/a\"b/_history/2",
                "parameters": ["_id", "status"],
                "status": 403,
                "outcome": "refused",
                "allowed": ["holds the role READ for Task"],
                "refused": ["not yours\n"],
                "reasons_left_out": 3,
                "duration_us": 1234,
            })
        );

        let nothing = Noted::default();
        let mut bare = entry(&nothing, "10.0.0.7:443".parse().ok());
        bare.resource = NamedResource::None;
        bare.parameters.clear();
        bare.status = 200;
        line.clear();
        write(&bare, &mut head, "t", &mut line);
        let record: serde_json::Value = serde_json::from_slice(&line).expect("JSON");
        assert_eq!(record["peer"], "10.0.0.7:443");
        assert_eq!(record["identity"], serde_json::json!({"kind": "unknown"}));
        assert_eq!(record["outcome"], "allowed");
        for absent in [
            "resource",
            "parameters",
            "allowed",
            "refused",
            "reasons_left_out",
        ] {
            assert!(record.get(absent).is_none(), "{absent} in {record}");
        }
    }

    #[test]
    fn a_connections_head_follows_its_caller_certificate_and_peer() {
        let mut head = RecordHead::default();
        let mut line = Vec::new();
        let mut record = |noted: &Noted, peer: &str| {
            line.clear();
            write(&entry(noted, peer.parse().ok()), &mut head, "t", &mut line);
            serde_json::from_slice::<serde_json::Value>(&line).expect("JSON")
        };
        let thumbprint = |der: &[u8]| {
            let mut noted = Noted::default();
            noted.thumbprint = Some(dsf_core::Thumbprint::of_der(der));
            noted
        };
        let practitioner = |name: &str| {
            Arc::new(Identity {
                organization_identifier: "org.test".into(),
                practitioner_identifier: Some(format!("{name}@org.test")),
                ..Identity::bare(IdentityKind::Practitioner, name)
            })
        };
        // The same certificate under another identity, and back.
        for name in ["alice", "alice", "bob", "alice"] {
            let mut noted = thumbprint(b"shared");
            noted.note_identity(&practitioner(name));
            assert_eq!(
                record(&noted, "10.0.0.1:1000")["identity"],
                serde_json::json!({
                    "kind": "practitioner",
                    "name": name,
                    "organization": "org.test",
                    "practitioner": format!("{name}@org.test"),
                    "thumbprint": dsf_core::Thumbprint::of_der(b"shared").as_str(),
                })
            );
        }
        // Another certificate, then none; another peer.
        for der in [&b"one"[..], b"two", b"two"] {
            let written = record(&thumbprint(der), "10.0.0.1:1000");
            assert_eq!(
                written["identity"]["thumbprint"],
                dsf_core::Thumbprint::of_der(der).as_str()
            );
        }
        let written = record(&Noted::default(), "10.0.0.1:1000");
        assert_eq!(written["identity"], serde_json::json!({"kind": "unknown"}));
        assert_eq!(
            record(&Noted::default(), "10.0.0.2:2000")["peer"],
            "10.0.0.2:2000"
        );
        assert!(record(&Noted::default(), "no address")
            .get("peer")
            .is_none());
    }

    #[test]
    fn each_character_needing_escape_is_found_wherever_it_stands() {
        for length in 0..40 {
            assert!(!needs_escaping("aé/-.Z~ÿ".repeat(length).as_bytes()));
            for at in 0..length {
                for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut bytes = vec![b'x'; length];
                    bytes[at] = special;
                    assert!(needs_escaping(&bytes), "{special} at {at} of {length}");
                }
                // Bytes next to the special ones in value are not.
                for plain in [0x20, b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
                    let mut bytes = vec![b'x'; length];
                    bytes[at] = plain;
                    assert!(!needs_escaping(&bytes), "{plain} at {at} of {length}");
                }
            }
        }
    }

    #[test]
    fn statuses_written_whole_say_what_the_others_say() {
        for status in [
            200, 201, 204, 304, 400, 401, 403, 404, 410, 412, 422, 429, 500, 503, 302, 418, 502,
        ] {
            let mut out = Vec::new();
            push_status(&mut out, status);
            let object = format!("{{{}}}", String::from_utf8_lossy(&out[1..]));
            let record: serde_json::Value = serde_json::from_str(&object).expect("JSON");
            assert_eq!(
                record,
                serde_json::json!({"status": status, "outcome": outcome(status)})
            );
        }
    }
}
