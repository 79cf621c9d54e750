//! The body of every response: whole bytes, or a stream fed a part at a time (a large
//! Binary's content), so that the server never holds such content whole.

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// The response body of [`crate::server::FhirServer::handle`] and of the services.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Whole(Option<Bytes>),
    Streamed {
        parts: mpsc::Receiver<std::io::Result<Bytes>>,
        /// Bytes still to come: the whole length is known before the first part is read.
        remaining: u64,
    },
}

impl ResponseBody {
    /// A body of `bytes`, sent in one piece.
    pub fn whole(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Whole((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody::whole(Bytes::new())
    }

    /// A body of exactly `length` bytes that arrive over `parts`. An error sent over it ends
    /// the response early, so the client sees a broken transfer, not a short one.
    pub(crate) fn streamed(parts: mpsc::Receiver<std::io::Result<Bytes>>, length: u64) -> Self {
        ResponseBody {
            kind: Kind::Streamed {
                parts,
                remaining: length,
            },
        }
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        ResponseBody::empty()
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.kind {
            Kind::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streamed { parts, remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                match parts.poll_recv(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Ok(part))) => {
                        let length = part.len() as u64;
                        if length > *remaining {
                            return Poll::Ready(Some(Err(std::io::Error::other(
                                "content longer than announced",
                            ))));
                        }
                        *remaining -= length;
                        Poll::Ready(Some(Ok(Frame::data(part))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => {
                        Poll::Ready(Some(Err(std::io::Error::other("content ended early"))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole(bytes) => bytes.is_none(),
            Kind::Streamed { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Streamed { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}
