//! Reading what a client sends: a request body within its limit, and what is left of a
//! refused one.

use crate::{Error, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::Duration;

/// How much of an oversized body is read and thrown away so that the client, still sending,
/// receives the 413 instead of a connection reset.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Collects a request body of at most `max` bytes.
pub(super) async fn read_body<B>(mut body: B, max: usize) -> Result<Bytes>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut collected = bytes::BytesMut::new();
    let mut too_large = body.size_hint().exact().is_some_and(|len| len > max as u64);
    let mut drained = 0usize;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
        .await
        .map_err(|_| Error::Invalid("request body not received in time".into()))?
    {
        let frame = frame.map_err(|e| Error::Invalid(format!("cannot read request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if too_large || collected.len() + data.len() > max {
            too_large = true;
            drained += data.len();
            if drained > DRAIN_LIMIT {
                break;
            }
        } else {
            collected.extend_from_slice(&data);
        }
    }
    if too_large {
        return Err(Error::PayloadTooLarge(max));
    }
    Ok(collected.freeze())
}

/// Reads and throws away what is left of a refused request's body (at most [`DRAIN_LIMIT`]
/// within [`DRAIN_TIME`]), so that the client, still sending, receives the answer instead
/// of a connection reset.
pub(crate) async fn drain<B>(body: &mut B)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut drained = 0;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        drained += frame.data_ref().map_or(0, Bytes::len);
        if drained > DRAIN_LIMIT {
            break;
        }
    }
}
