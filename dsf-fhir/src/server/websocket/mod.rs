//! Websocket subscriptions at `{base}/ws`, as the Java DSF serves them: a client holding the
//! WEBSOCKET role sends `bind <subscription id>`, the server answers `bound <id>` and from then
//! on sends one text message per committed create or update that matches the Subscription's
//! criteria and that the client may read: the resource as JSON or XML, or `ping <id>` when the
//! Subscription asks for no payload. The server pings every connection periodically.
//!
//! Events come from the store's outbox ([`crate::ResourceStore::changes`]), so only
//! committed writes are announced. One dispatcher matches them against the active
//! Subscriptions and offers them to the connections without ever waiting: each connection has
//! a bounded queue, and a connection whose queue is full, or whose socket stops taking data, is
//! closed with a reason while writers and other subscribers carry on.

mod dispatch;
mod hub;
mod session;

pub(crate) use hub::Hub;
pub(crate) use session::shut_down;

/// The websocket path below the FHIR base URL.
pub const WEBSOCKET_PATH: &str = "ws";

/// The Java DSF lets a connection in only with the WEBSOCKET role (for any type).
pub(crate) fn may_connect(identity: &crate::server::Identity) -> bool {
    identity
        .roles
        .iter()
        .any(|r| r.role == crate::server::Role::Websocket)
}

/// Close codes this server sends (RFC 6455, section 7.4.1).
pub mod close_code {
    /// The connection's work is done.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A frame of a kind the server does not take (binary).
    pub const CANNOT_ACCEPT: u16 = 1003;
    /// Text that is not UTF-8 or not a command.
    pub const INVALID_DATA: u16 = 1007;
    /// The caller may not do this.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message too large.
    pub const TOO_BIG: u16 = 1009;
}

/// Why a connection ends, and whether a close frame can still be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closing {
    pub code: u16,
    pub reason: String,
}

impl Closing {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        // A close frame's payload is at most 125 bytes, two of them the code.
        if reason.len() > 123 {
            let mut end = 123;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Closing { code, reason }
    }
}
