//! One websocket connection: the handshake answer, the text protocol (`bind` / `bound`),
//! keep-alive pings, the connection's bounded event queue, and closing with a reason.

use super::hub::{Message, SessionEnds};
use super::may_connect;
use super::{close_code, Closing};
use crate::server::PeerCertificate;
use crate::server::{FhirServer, Identity};
use dsf_core::ErrorChain;
use fastwebsockets::{
    Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite,
};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

/// What a websocket runs over: an upgraded HTTP connection, or any byte stream.
pub(crate) trait Stream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Largest text message a client may send: `bind` plus an id is tiny.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// How long a close frame may take to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Frames the connection itself must send, ahead of events.
enum Control {
    Text(String),
    Pong(Vec<u8>),
}

impl FhirServer {
    /// Serves an upgraded connection until it closes.
    pub(crate) async fn websocket_session<S: Stream>(
        self: Arc<Self>,
        ws: WebSocket<S>,
        identity: Arc<Identity>,
        certificate: Arc<PeerCertificate>,
    ) {
        let (mut reader, mut writer) = ws.split(tokio::io::split);
        reader.set_auto_close(false);
        reader.set_auto_pong(true);
        reader.set_max_message_size(MAX_CLIENT_MESSAGE);
        writer.set_writev(false);
        if !may_connect(&identity) {
            tracing::info!(
                identity = identity.name(),
                "websocket refused: no WEBSOCKET role"
            );
            send_close(
                &mut writer,
                &Closing::new(close_code::POLICY_VIOLATION, "Forbidden"),
            )
            .await;
            return;
        }
        let SessionEnds {
            session,
            queue,
            mut cut,
        } = self.hub.open(
            identity.clone(),
            certificate,
            self.config.websocket.queue_capacity,
        );
        tracing::debug!(
            identity = identity.name(),
            session = session.id,
            "websocket opened"
        );
        let (control_tx, control_rx) = mpsc::channel::<Control>(16);
        let outstanding_ping: Mutex<Option<Vec<u8>>> = Mutex::new(None);
        let mid_write = AtomicBool::new(false);
        let mut closing = self.closing.subscribe();
        let ended = tokio::select! {
            ended = read_loop(&self, &mut reader, &control_tx, &session, &outstanding_ping) => ended,
            ended = write_loop(&mut writer, control_rx, queue, &outstanding_ping, &mid_write, &self.config.websocket) => ended,
            reason = async { cut.wait_for(Option::is_some).await.ok().and_then(|r| r.clone()) } => reason,
            _ = shut_down(&mut closing) => Some(Closing::new(close_code::GOING_AWAY, "server shutting down")),
        };
        self.hub.close(session.id);
        let bound = session.bound().map(|s| s.id.clone());
        match &ended {
            Some(closing) => tracing::info!(
                identity = identity.name(), session = session.id, subscription = ?bound,
                code = closing.code, reason = %closing.reason, "websocket closed"),
            None => tracing::debug!(
                identity = identity.name(),
                session = session.id,
                "websocket ended by peer"
            ),
        }
        // A close frame after a write cut off mid-frame would be garbage on the wire.
        if let Some(closing) = ended {
            if !mid_write.load(Ordering::SeqCst) {
                send_close(&mut writer, &closing).await;
            }
        }
    }
}

/// Completes when the server stops serving.
pub(crate) async fn shut_down(closing: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

async fn send_close<S: Stream>(writer: &mut WebSocketWrite<WriteHalf<S>>, closing: &Closing) {
    let frame = Frame::close(closing.code, closing.reason.as_bytes());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.write_frame(frame)).await;
}

/// Reads client frames until the connection ends; the result is the close to send, `None`
/// when the peer is gone.
async fn read_loop<S: Stream>(
    server: &FhirServer,
    reader: &mut WebSocketRead<ReadHalf<S>>,
    control: &mpsc::Sender<Control>,
    session: &super::hub::Session,
    outstanding_ping: &Mutex<Option<Vec<u8>>>,
) -> Option<Closing> {
    // Text of a fragmented message being received.
    let mut fragments: Option<Vec<u8>> = None;
    loop {
        let mut obligated = |frame: Frame<'static>| {
            let control = control.clone();
            async move {
                let pong = Vec::from(frame.payload);
                control
                    .send(Control::Pong(pong))
                    .await
                    .map_err(|_| "connection closing")
            }
        };
        let frame = match reader.read_frame(&mut obligated).await {
            Ok(frame) => frame,
            Err(e) => return protocol_failure(&e),
        };
        let text = match step(&frame, &mut fragments, outstanding_ping) {
            Step::Message(text) => text,
            Step::Continue => continue,
            Step::Close(closing) => return Some(closing),
        };
        let Ok(text) = String::from_utf8(text) else {
            return Some(Closing::new(
                close_code::INVALID_DATA,
                "text message is not valid UTF-8",
            ));
        };
        let Some(id) = text.trim().strip_prefix("bind ") else {
            tracing::debug!(session = session.id, "ignored websocket message");
            continue;
        };
        if let ControlFlow::Break(closing) = bind(server, control, session, id.trim()).await {
            return closing;
        }
    }
}

/// What one client frame means for the session.
enum Step {
    /// A whole text message to act on.
    Message(Vec<u8>),
    /// Nothing to act on yet.
    Continue,
    /// The connection ends with this close.
    Close(Closing),
}

/// Assembles text messages from frames (`fragments` holds one in progress) and answers the
/// control frames: a close is echoed, a pong clears the ping it answers.
fn step(
    frame: &Frame<'_>,
    fragments: &mut Option<Vec<u8>>,
    outstanding_ping: &Mutex<Option<Vec<u8>>>,
) -> Step {
    match frame.opcode {
        OpCode::Close => Step::Close(close_reply(&frame.payload)),
        OpCode::Ping => Step::Continue,
        OpCode::Pong => {
            let mut expected = outstanding_ping.lock().unwrap_or_else(|p| p.into_inner());
            if expected.as_deref() == Some(&frame.payload[..]) {
                *expected = None;
            }
            Step::Continue
        }
        OpCode::Binary => Step::Close(Closing::new(
            close_code::CANNOT_ACCEPT,
            "binary messages are not supported; send 'bind <subscription id>' as text",
        )),
        OpCode::Text if fragments.is_some() => Step::Close(Closing::new(
            close_code::PROTOCOL_ERROR,
            "new text message inside a fragmented one",
        )),
        OpCode::Text if !frame.fin => {
            *fragments = Some(frame.payload.to_vec());
            Step::Continue
        }
        OpCode::Text => Step::Message(frame.payload.to_vec()),
        OpCode::Continuation => {
            let Some(mut collected) = fragments.take() else {
                return Step::Close(Closing::new(
                    close_code::PROTOCOL_ERROR,
                    "continuation frame without a message to continue",
                ));
            };
            collected.extend_from_slice(&frame.payload);
            if collected.len() > MAX_CLIENT_MESSAGE {
                return Step::Close(Closing::new(close_code::TOO_BIG, "message too large"));
            }
            if frame.fin {
                Step::Message(collected)
            } else {
                *fragments = Some(collected);
                Step::Continue
            }
        }
    }
}

/// The close that answers a client's close frame: its code echoed if it is one a peer may
/// send, else a protocol error.
fn close_reply(payload: &[u8]) -> Closing {
    let code = match payload {
        [] => close_code::NORMAL,
        [_] => {
            return Closing::new(
                close_code::PROTOCOL_ERROR,
                "close frame with a one-byte payload",
            )
        }
        [high, low, ..] => u16::from_be_bytes([*high, *low]),
    };
    let echo = if fastwebsockets::CloseCode::from(code).is_allowed() {
        code
    } else {
        close_code::PROTOCOL_ERROR
    };
    Closing::new(echo, "")
}

/// `bind <id>`: the session receives the Subscription's events from now on, after `bound
/// <id>`. Breaks with the close to send (`None` when the connection is gone) if it cannot.
async fn bind(
    server: &FhirServer,
    control: &mpsc::Sender<Control>,
    session: &super::hub::Session,
    id: &str,
) -> ControlFlow<Option<Closing>> {
    match server.hub.find(&server.store, id).await {
        Ok(Some(subscription)) => {
            // Queued before the binding takes effect, so that no event overtakes it.
            if control
                .send(Control::Text(format!("bound {id}")))
                .await
                .is_err()
            {
                return ControlFlow::Break(None);
            }
            session.bind(subscription);
            tracing::debug!(session = session.id, subscription = id, "websocket bound");
            ControlFlow::Continue(())
        }
        Ok(None) => ControlFlow::Break(Some(Closing::new(
            close_code::CANNOT_ACCEPT,
            format!("Subscription with {id} not found"),
        ))),
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "cannot look up Subscription");
            ControlFlow::Break(Some(Closing::new(
                close_code::GOING_AWAY,
                "Subscription lookup failed",
            )))
        }
    }
}

/// The close to send for a read error; `None` when the connection is simply gone.
fn protocol_failure(error: &WebSocketError) -> Option<Closing> {
    let code = match error {
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed
        | WebSocketError::SendError(_) => return None,
        WebSocketError::InvalidUTF8 => {
            return Some(Closing::new(
                close_code::INVALID_DATA,
                "text message is not valid UTF-8",
            ))
        }
        WebSocketError::FrameTooLarge => close_code::TOO_BIG,
        _ => close_code::PROTOCOL_ERROR,
    };
    Some(Closing::new(code, format!("malformed frame: {error}")))
}

/// Writes control frames, pings and queued events until something fails; the result is the
/// close to send, `None` when the peer is gone.
async fn write_loop<S: Stream>(
    writer: &mut WebSocketWrite<WriteHalf<S>>,
    mut control: mpsc::Receiver<Control>,
    mut queue: mpsc::Receiver<Message>,
    outstanding_ping: &Mutex<Option<Vec<u8>>>,
    mid_write: &AtomicBool,
    settings: &crate::server::WebsocketSettings,
) -> Option<Closing> {
    let mut pings = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            biased;
            next = control.recv() => match next {
                Some(Control::Text(text)) => Outgoing::Frame(OpCode::Text, text.into_bytes()),
                Some(Control::Pong(data)) => Outgoing::Frame(OpCode::Pong, data),
                None => return None,
            },
            _ = pings.tick() => {
                let mut expected = outstanding_ping.lock().unwrap_or_else(|p| p.into_inner());
                if expected.is_some() {
                    return Some(Closing::new(close_code::POLICY_VIOLATION, "no pong received for the last ping"));
                }
                let mut data = uuid::Uuid::new_v4().as_bytes().to_vec();
                data.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                *expected = Some(data.clone());
                Outgoing::Frame(OpCode::Ping, data)
            },
            next = queue.recv() => match next {
                Some(message) => Outgoing::Event(message),
                None => return Some(Closing::new(close_code::GOING_AWAY, "server shutting down")),
            },
        };
        let frame = match &next {
            Outgoing::Frame(opcode, data) => {
                Frame::new(true, *opcode, None, Payload::Borrowed(data))
            }
            Outgoing::Event(message) => Frame::text(Payload::Borrowed(message)),
        };
        mid_write.store(true, Ordering::SeqCst);
        match tokio::time::timeout(settings.write_timeout, writer.write_frame(frame)).await {
            Ok(Ok(())) => mid_write.store(false, Ordering::SeqCst),
            Ok(Err(_)) => return None,
            Err(_) => {
                return Some(Closing::new(
                    close_code::POLICY_VIOLATION,
                    format!(
                        "subscriber not reading: a write stalled for {:?}",
                        settings.write_timeout
                    ),
                ))
            }
        }
    }
}

/// What the writer sends next; events stay shared with the other connections they go to.
enum Outgoing {
    Frame(OpCode, Vec<u8>),
    Event(Message),
}
