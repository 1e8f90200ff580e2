//! Close codes (end a session) and error codes (fail one request).
//!
//! Close codes follow Centrifugo's split so a client library can decide what
//! to do from the number alone:
//! - `3000..=3499` — **reconnect allowed** (with backoff): transient, the
//!   client did nothing wrong;
//! - `3500..=3999` — **terminal**: reconnecting with the same input fails the
//!   same way; fix the client or its credentials first.
//!
//! The same numbers are used as WebSocket close codes (the 3000–4999 range is
//! reserved for applications by RFC 6455). `docs/protocol.md` has the table.

/// A reason a session ends, carried in CLOSE `{code, reason}` and as the
/// WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// The gateway is shutting down or finished draining; reconnect elsewhere.
    Shutdown = 3000,
    /// An internal error on the gateway.
    Internal = 3001,
    /// No frame (not even PING) arrived within the idle timeout.
    HeartbeatTimeout = 3002,
    /// The client read too slowly and its outbound queue filled up.
    SlowConsumer = 3003,
    /// The gateway is at a connection limit (global or per IP).
    Overloaded = 3004,
    /// No HELLO arrived within the HELLO timeout.
    HelloTimeout = 3005,
    /// The session was resumed on another connection or gateway.
    Moved = 3006,
    /// The session closed normally (client CLOSE, or the client asked).
    Normal = 3500,
    /// Bytes that are not valid frames, or a frame in the wrong state.
    ProtocolError = 3501,
    /// The frame length exceeds `max_frame_bytes`.
    FrameTooLarge = 3502,
    /// A protocol version other than 1.
    UnsupportedVersion = 3503,
    /// A frame claimed a session or user id that is not this connection's.
    SessionMismatch = 3504,
    /// Authentication failed.
    Unauthorized = 3505,
    /// A backend or an operator kicked the session.
    Kicked = 3506,
    /// A resume token was forged, expired or for another session.
    BadResume = 3507,
    /// Another login of the same user replaced this session (session
    /// policy `kick_oldest`).
    Replaced = 3508,
    /// The user already has the most sessions allowed (session policy
    /// `reject_new`).
    SessionLimit = 3509,
}

impl CloseCode {
    /// Every close code, in numeric order.
    pub const ALL: [CloseCode; 17] = [
        CloseCode::Shutdown,
        CloseCode::Internal,
        CloseCode::HeartbeatTimeout,
        CloseCode::SlowConsumer,
        CloseCode::Overloaded,
        CloseCode::HelloTimeout,
        CloseCode::Moved,
        CloseCode::Normal,
        CloseCode::ProtocolError,
        CloseCode::FrameTooLarge,
        CloseCode::UnsupportedVersion,
        CloseCode::SessionMismatch,
        CloseCode::Unauthorized,
        CloseCode::Kicked,
        CloseCode::BadResume,
        CloseCode::Replaced,
        CloseCode::SessionLimit,
    ];

    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Maps a number back to a known code.
    pub fn from_u16(n: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == n)
    }

    /// Whether a client may reconnect (with backoff) after this close.
    pub fn reconnect_allowed(self) -> bool {
        is_reconnect_allowed(self.code())
    }

    /// snake_case name used in the CLOSE reason, logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::Shutdown => "shutdown",
            CloseCode::Internal => "internal",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::Overloaded => "overloaded",
            CloseCode::HelloTimeout => "hello_timeout",
            CloseCode::Moved => "moved",
            CloseCode::Normal => "normal",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::FrameTooLarge => "frame_too_large",
            CloseCode::UnsupportedVersion => "unsupported_version",
            CloseCode::SessionMismatch => "session_mismatch",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::Kicked => "kicked",
            CloseCode::Replaced => "replaced",
            CloseCode::SessionLimit => "session_limit",
            CloseCode::BadResume => "bad_resume",
        }
    }
}

/// Whether any close code number (known or not, e.g. a backend's own kick
/// code) is in the reconnect-allowed range.
pub fn is_reconnect_allowed(code: u16) -> bool {
    (3000..3500).contains(&code)
}

/// Why one request failed, carried in ERROR `{code, message}` with the
/// request's `service_type` and `seq`. The session stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Unexpected gateway failure.
    Internal = 100,
    /// The frame kind is unknown to this gateway.
    UnknownKind = 101,
    /// The payload of a control frame is not the JSON it should be.
    BadPayload = 102,
    /// The kind is not valid in this state (e.g. DATA before HELLO).
    BadState = 103,
    /// No service with this `service_type`, or no realm mapping.
    NoRoute = 104,
    /// No healthy endpoint for the service, or the backend connection failed.
    BackendUnavailable = 105,
    /// The backend did not answer in time (HTTP calls).
    Timeout = 106,
    /// The session's message rate limit was exceeded; retry later.
    RateLimited = 107,
    /// The gateway is draining and takes no new sessions.
    Draining = 108,
}

impl ErrorCode {
    /// Every error code, in numeric order.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::Internal,
        ErrorCode::UnknownKind,
        ErrorCode::BadPayload,
        ErrorCode::BadState,
        ErrorCode::NoRoute,
        ErrorCode::BackendUnavailable,
        ErrorCode::Timeout,
        ErrorCode::RateLimited,
        ErrorCode::Draining,
    ];

    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Maps a number back to a known code.
    pub fn from_u16(n: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == n)
    }

    /// snake_case name used in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal",
            ErrorCode::UnknownKind => "unknown_kind",
            ErrorCode::BadPayload => "bad_payload",
            ErrorCode::BadState => "bad_state",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::BackendUnavailable => "backend_unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Draining => "draining",
        }
    }

    /// Whether the same request may succeed if retried later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::BackendUnavailable
                | ErrorCode::Timeout
                | ErrorCode::RateLimited
                | ErrorCode::Draining
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_reconnect_and_terminal() {
        for c in CloseCode::ALL {
            assert_eq!(c.reconnect_allowed(), c.code() < 3500, "{c:?}");
            assert!((3000..4000).contains(&c.code()));
            assert_eq!(CloseCode::from_u16(c.code()), Some(c));
        }
        for e in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(e.code()), Some(e));
        }
    }
}
