//! JSON payloads of the control kinds. Unknown keys are ignored on read so the
//! protocol can grow by adding keys; absent optional keys take defaults.

use serde::{Deserialize, Serialize};

use crate::codes::{CloseCode, ErrorCode};
use crate::frame::{Frame, Header, Kind};

/// HELLO client→gateway: open (session_id 0) or resume (session_id + token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Authentication token (verified when auth is configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Resume token from a previous WELCOME or GOAWAY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    /// W3C trace context of the client: the gateway's `session.open` span
    /// continues this trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The region the client prefers (`eu`, `us`): services with
    /// `prefer_region: client` try its endpoints first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// HELLO gateway→backend: first frame on each pooled connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHello {
    pub gateway_id: String,
}

/// WELCOME gateway→client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub gateway_id: String,
    /// Global display form `{gateway_id}:{session_id}`.
    pub session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    /// The client should send PING at least this often.
    pub heartbeat_ms: u64,
}

/// OPEN gateway→backend: the session in the header is now bound here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// `tcp`, `ws` or `http`.
    pub protocol: String,
    pub remote_addr: String,
    #[serde(default)]
    pub resumed: bool,
    /// W3C trace context for the backend to continue (the gateway's
    /// `session.open` or `http.call` span, or the caller's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// CLOSE, any direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    pub code: u16,
    #[serde(default)]
    pub reason: String,
}

/// GOAWAY gateway→client: the gateway is draining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoAway {
    pub reason: String,
    /// Wait at least this long (jittered by the client) before reconnecting.
    pub reconnect_after_ms: u64,
    /// The gateway closes the session this many ms after sending GOAWAY.
    pub deadline_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
}

/// ERROR gateway→client for the request with this `service_type` + `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub code: u16,
    pub message: String,
}

/// Builds a control frame: the header ids come from `header` with its kind
/// replaced, the payload is `body` as JSON.
pub fn control_frame<T: Serialize>(kind: Kind, mut header: Header, body: &T) -> Frame {
    header.kind = kind as u8;
    header.version = crate::frame::VERSION;
    // Serialising these plain structs cannot fail (no maps with non-string keys).
    let payload = serde_json::to_vec(body).unwrap_or_default();
    Frame::new(header, payload)
}

/// An ERROR frame answering the request whose header is `req`.
pub fn error_frame(req: &Header, code: ErrorCode, message: impl Into<String>) -> Frame {
    control_frame(
        Kind::Error,
        *req,
        &Error {
            code: code.code(),
            message: message.into(),
        },
    )
}

/// A CLOSE frame for `session_id` with a known close code.
pub fn close_frame(session_id: u64, code: CloseCode, reason: impl Into<String>) -> Frame {
    let mut h = Header::new(Kind::Close);
    h.session_id = session_id;
    control_frame(
        Kind::Close,
        h,
        &Close {
            code: code.code(),
            reason: reason.into(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_ignore_unknown_keys_and_default_missing() {
        let h: Hello = serde_json::from_str(r#"{"token":"t","future":1}"#).unwrap();
        assert_eq!(h.token.as_deref(), Some("t"));
        let c: Close = serde_json::from_str(r#"{"code":3506}"#).unwrap();
        assert_eq!(c.reason, "");
    }

    #[test]
    fn error_frame_echoes_service_and_seq() {
        let mut req = Header::new(Kind::Data);
        req.service_type = 4;
        req.seq = 17;
        let f = error_frame(&req, ErrorCode::NoRoute, "no service 4");
        assert_eq!(f.header.kind(), Some(Kind::Error));
        assert_eq!((f.header.service_type, f.header.seq), (4, 17));
        let e: Error = f.json().unwrap();
        assert_eq!(e.code, 104);
    }
}
