//! How a session ends: the close code and reason, its metric label, and
//! the last words to the client (CLOSE, then the transport's own close).

use std::time::Duration;

use gg_proto::CloseCode;
use gg_proto::control::{self};
use gg_proto::frame::{FrameError, Kind};

use super::io::{ClientIo, ReadError};
use crate::Gateway;
use crate::error::Reject;
use crate::metrics::ProtoMetrics;

/// The reason of a session the client closed with a CLOSE frame.
pub(crate) const CLOSED_BY_CLIENT: &str = "closed by client";
/// The reason of an HTTP session the client exited.
pub(crate) const EXITED_BY_CLIENT: &str = "exited by the client";

/// Whether a session that ended like this may still resume (with resume
/// enabled): a lost connection, a drain or a timeout may; a close the
/// client asked for or a refusal (3500–3999) may not.
pub(crate) fn may_resume(code: u16, reason: &str) -> bool {
    let by_client = reason == CLOSED_BY_CLIENT || reason == EXITED_BY_CLIENT;
    !by_client && (code < 3000 || gg_proto::codes::is_reconnect_allowed(code))
}

/// How a session ends: the code, a reason for humans, and whether a CLOSE
/// frame can still be written to the client.
#[derive(Debug)]
pub(crate) struct Closing {
    pub(crate) code: u16,
    pub(crate) reason: String,
    pub(crate) notify_client: bool,
}

impl Closing {
    pub(super) fn new(code: CloseCode, reason: impl Into<String>) -> Closing {
        Closing {
            code: code.code(),
            reason: reason.into(),
            notify_client: true,
        }
    }

    /// A refusal by a check or limit: counted, with the [`Reject`]'s code.
    pub(super) fn rejected(gw: &Gateway, r: Reject, reason: impl Into<String>) -> Closing {
        gw.metrics.reject(r);
        Closing::new(r.close_code().unwrap_or(CloseCode::ProtocolError), reason)
    }

    pub(super) fn silent(code: CloseCode, reason: impl Into<String>) -> Closing {
        Closing {
            notify_client: false,
            ..Closing::new(code, reason)
        }
    }

    /// Maps a transport read failure to its close code.
    pub(super) fn from_read(e: ReadError, max: u32) -> Closing {
        match e {
            ReadError::Closed => Closing::silent(CloseCode::Normal, "client disconnected"),
            ReadError::Io(e) => {
                Closing::silent(CloseCode::Normal, format!("client connection error: {e}"))
            }
            ReadError::Frame(FrameError::TooLarge { len, .. }) => Closing::new(
                CloseCode::FrameTooLarge,
                format!("frame length {len} exceeds the maximum of {max} bytes"),
            ),
            ReadError::WsTooLarge(size) => Closing::new(
                CloseCode::FrameTooLarge,
                format!(
                    "WebSocket message of {size} bytes exceeds the maximum frame size of {max} bytes"
                ),
            ),
            ReadError::Frame(FrameError::UnsupportedVersion { header }) => Closing::new(
                CloseCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this gateway speaks version 1",
                    header.version
                ),
            ),
            ReadError::Frame(e) => Closing::new(CloseCode::ProtocolError, e.to_string()),
            ReadError::Protocol(msg) => Closing::new(CloseCode::ProtocolError, msg),
            ReadError::Budget => Closing::new(CloseCode::Overloaded, BUDGET_SPENT),
        }
    }
}

/// The reason sent with [`Reject::BufferBudget`].
pub(crate) const BUDGET_SPENT: &str = "the gateway is holding too many large frames (limits.max_buffered_bytes); retry later or send smaller frames";

/// Metric label of a close code (backends may kick with codes of their own).
pub(crate) fn close_label(code: u16) -> &'static str {
    CloseCode::from_u16(code).map_or("other", CloseCode::name)
}

/// Writes the CLOSE frame (when possible) and ends the transport.
pub(super) async fn end_transport(
    io: &mut ClientIo,
    session_id: u64,
    c: &Closing,
    pm: &ProtoMetrics,
) {
    if c.notify_client {
        let f = control::close_frame(session_id, CloseCode::Normal, "").header;
        let frame = control::control_frame(
            Kind::Close,
            f,
            &control::Close {
                code: c.code,
                reason: c.reason.clone(),
            },
        )
        .to_bytes();
        pm.frames_out.inc();
        pm.bytes_out.inc_by(frame.len() as u64);
        io.queue(frame, 1);
        let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown(c.code, &c.reason)).await;
    } else {
        // A WebSocket client's Close is answered (tungstenite queued the
        // echo when it read it).
        let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
    }
}
