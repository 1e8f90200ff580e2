//! The hot-path error: why one client request could not be forwarded. One
//! place maps it to the ERROR frame code, the HTTP status and whether the
//! client may retry; listeners never invent their own mapping.

use gg_proto::{CloseCode, ErrorCode};

/// Which side of the gateway a failure is on (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client sent something we refuse.
    Downstream,
    /// A backend is missing, down or slow.
    Upstream,
    /// The gateway itself (draining, internal).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("no service with service_type {0} is configured")]
    NoService(u16),
    #[error("no service named or numbered {0:?} is configured")]
    UnknownService(String),
    #[error("service {service} has no endpoint for realm {realm} in the realm map")]
    NoRealm { service: String, realm: u32 },
    #[error("service {service} has no healthy endpoint (all connections down)")]
    NoHealthyEndpoint { service: String },
    #[error("backend {endpoint} is unavailable (connection down, reconnecting)")]
    BackendUnavailable { endpoint: String },
    #[error("backend {endpoint} is overloaded (send queue full), retry later")]
    BackendOverloaded { endpoint: String },
    #[error("message rate limit exceeded, slow down")]
    RateLimited,
    #[error("backend did not reply within {0} ms")]
    Timeout(u64),
    #[error("gateway is draining and accepts no new sessions, reconnect to another gateway")]
    Draining,
    #[error("{0}")]
    BadRequest(String),
    /// A frame kind that is not valid now (a second HELLO, a WELCOME).
    #[error("{0}")]
    BadState(String),
    /// A frame kind this protocol version does not define.
    #[error("{0}")]
    UnknownKind(String),
}

impl RequestError {
    /// Code carried in the ERROR frame.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            RequestError::NoService(_)
            | RequestError::UnknownService(_)
            | RequestError::NoRealm { .. } => ErrorCode::NoRoute,
            RequestError::NoHealthyEndpoint { .. }
            | RequestError::BackendUnavailable { .. }
            | RequestError::BackendOverloaded { .. } => ErrorCode::BackendUnavailable,
            RequestError::RateLimited => ErrorCode::RateLimited,
            RequestError::Timeout(_) => ErrorCode::Timeout,
            RequestError::Draining => ErrorCode::Draining,
            RequestError::BadRequest(_) => ErrorCode::BadPayload,
            RequestError::BadState(_) => ErrorCode::BadState,
            RequestError::UnknownKind(_) => ErrorCode::UnknownKind,
        }
    }

    /// Status of the HTTP one-shot call response.
    pub(crate) fn http_status(&self) -> u16 {
        match self {
            RequestError::NoService(_)
            | RequestError::UnknownService(_)
            | RequestError::NoRealm { .. } => 404,
            RequestError::NoHealthyEndpoint { .. } | RequestError::BackendUnavailable { .. } => 502,
            RequestError::BackendOverloaded { .. } | RequestError::Draining => 503,
            RequestError::RateLimited => 429,
            RequestError::Timeout(_) => 504,
            RequestError::BadRequest(_)
            | RequestError::BadState(_)
            | RequestError::UnknownKind(_) => 400,
        }
    }

    pub(crate) fn side(&self) -> Side {
        match self {
            RequestError::NoService(_)
            | RequestError::UnknownService(_)
            | RequestError::NoRealm { .. }
            | RequestError::RateLimited
            | RequestError::BadRequest(_)
            | RequestError::BadState(_)
            | RequestError::UnknownKind(_) => Side::Downstream,
            RequestError::NoHealthyEndpoint { .. }
            | RequestError::BackendUnavailable { .. }
            | RequestError::BackendOverloaded { .. }
            | RequestError::Timeout(_) => Side::Upstream,
            RequestError::Draining => Side::Internal,
        }
    }

    pub(crate) fn retryable(&self) -> bool {
        self.code().retryable()
    }
}

/// Why a connection, a HELLO or a request was refused by a limit or a
/// check before it reached a backend. One table gives the metric label
/// (`gg_rejections_total{reason}`), the close code a streaming client gets
/// and the status an HTTP client gets; nothing else invents a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// `limits.max_connections` reached: closed at accept.
    MaxConnections,
    /// `limits.max_connections_per_ip` reached: closed at accept.
    MaxConnectionsPerIp,
    /// `limits.conn_rate_per_ip` exceeded: closed at accept.
    ConnRatePerIp,
    /// No first byte within `limits.sniff_timeout_ms`.
    SniffTimeout,
    /// Closed (or failed) before sending a byte.
    ClosedBeforeData,
    /// A TLS ClientHello on a port without `tls:`.
    TlsNotEnabled,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
    /// TLS inside TLS.
    TlsInTls,
    /// No HELLO within `limits.hello_timeout_ms`.
    HelloTimeout,
    /// A first frame longer than `limits.max_hello_bytes`.
    HelloTooLarge,
    /// The session's message rate (`limits.msg_rate_per_sec`).
    MsgRate,
    /// The gateway is draining: no new sessions or calls.
    Draining,
    /// A resume token that does not verify.
    BadResume,
    /// `client_auth` refused the token.
    Unauthorized,
    /// The control-plane session-event queue is full (event dropped).
    SessionEventsQueueFull,
    /// An HTTP body over `limits.max_frame_bytes`.
    FrameTooLarge,
    /// An HTTP body that did not arrive within `limits.http_body_timeout_ms`.
    HttpBodyTimeout,
    /// An HTTP request head that did not arrive within
    /// `limits.http_header_timeout_ms`, or that the parser refused (hyper
    /// answers 400 or 431 itself).
    HttpBadHead,
    /// An HTTP request body that broke off or was malformed (chunking).
    HttpBadBody,
    /// The process-wide budget for buffered client bytes
    /// (`limits.max_buffered_bytes`) is spent.
    BufferBudget,
    /// A trusted source sent no valid PROXY protocol header.
    ProxyHeader,
    /// The address is in a deny list (fleet-wide or this gateway's).
    IpDenied,
    /// An allow list exists and the address is not in it.
    IpNotAllowed,
}

impl Reject {
    pub(crate) const ALL: [Reject; 23] = [
        Reject::MaxConnections,
        Reject::MaxConnectionsPerIp,
        Reject::ConnRatePerIp,
        Reject::SniffTimeout,
        Reject::ClosedBeforeData,
        Reject::TlsNotEnabled,
        Reject::TlsHandshake,
        Reject::TlsInTls,
        Reject::HelloTimeout,
        Reject::HelloTooLarge,
        Reject::MsgRate,
        Reject::Draining,
        Reject::BadResume,
        Reject::Unauthorized,
        Reject::SessionEventsQueueFull,
        Reject::FrameTooLarge,
        Reject::HttpBodyTimeout,
        Reject::HttpBadHead,
        Reject::HttpBadBody,
        Reject::BufferBudget,
        Reject::ProxyHeader,
        Reject::IpDenied,
        Reject::IpNotAllowed,
    ];

    /// The `reason` label of `gg_rejections_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reject::MaxConnections => "max_connections",
            Reject::MaxConnectionsPerIp => "max_connections_per_ip",
            Reject::ConnRatePerIp => "conn_rate_per_ip",
            Reject::SniffTimeout => "sniff_timeout",
            Reject::ClosedBeforeData => "closed_before_data",
            Reject::TlsNotEnabled => "tls_not_enabled",
            Reject::TlsHandshake => "tls_handshake",
            Reject::TlsInTls => "tls_in_tls",
            Reject::HelloTimeout => "hello_timeout",
            Reject::HelloTooLarge => "hello_too_large",
            Reject::MsgRate => "msg_rate",
            Reject::Draining => "draining",
            Reject::BadResume => "bad_resume",
            Reject::Unauthorized => "unauthorized",
            Reject::SessionEventsQueueFull => "session_events_queue_full",
            Reject::FrameTooLarge => "frame_too_large",
            Reject::HttpBodyTimeout => "http_body_timeout",
            Reject::HttpBadHead => "http_bad_head",
            Reject::HttpBadBody => "http_bad_body",
            Reject::BufferBudget => "buffer_budget",
            Reject::ProxyHeader => "proxy_header",
            Reject::IpDenied => "ip_denied",
            Reject::IpNotAllowed => "ip_not_allowed",
        }
    }

    /// The CLOSE code a streaming client gets; `None` where the connection
    /// is dropped before the protocol is known, or the client gets an
    /// ERROR frame and the session stays open.
    pub(crate) fn close_code(self) -> Option<CloseCode> {
        Some(match self {
            Reject::HelloTimeout => CloseCode::HelloTimeout,
            Reject::HelloTooLarge | Reject::FrameTooLarge => CloseCode::FrameTooLarge,
            Reject::Draining => CloseCode::Shutdown,
            Reject::BadResume => CloseCode::BadResume,
            Reject::Unauthorized => CloseCode::Unauthorized,
            Reject::BufferBudget => CloseCode::Overloaded,
            _ => return None,
        })
    }

    /// The status an HTTP client gets; `None` where no HTTP answer is
    /// possible (the connection is dropped before a request).
    pub(crate) fn http_status(self) -> Option<u16> {
        Some(match self {
            Reject::Unauthorized => 401,
            Reject::HttpBodyTimeout => 408,
            Reject::FrameTooLarge => 413,
            Reject::MsgRate => 429,
            Reject::HttpBadHead | Reject::HttpBadBody => 400,
            Reject::Draining | Reject::BufferBudget => 503,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_consistent() {
        let all = [
            RequestError::NoService(9),
            RequestError::UnknownService("x".into()),
            RequestError::NoRealm {
                service: "g".into(),
                realm: 1,
            },
            RequestError::NoHealthyEndpoint {
                service: "a".into(),
            },
            RequestError::BackendUnavailable {
                endpoint: "e".into(),
            },
            RequestError::BackendOverloaded {
                endpoint: "e".into(),
            },
            RequestError::RateLimited,
            RequestError::Timeout(5),
            RequestError::Draining,
            RequestError::BadRequest("x".into()),
            RequestError::BadState("x".into()),
            RequestError::UnknownKind("x".into()),
        ];
        for e in all {
            // Retryable failures are never reported as a client's fault.
            if e.retryable() {
                assert_ne!(e.http_status(), 400, "{e:?}");
            }
            assert!(e.http_status() >= 400);
            if e.side() == Side::Upstream {
                assert!(e.http_status() >= 500, "{e:?}");
            }
        }
    }

    #[test]
    fn every_reject_has_one_label_and_retryable_codes_for_server_causes() {
        let mut labels: Vec<&str> = Reject::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reject::ALL.len(), "labels must be distinct");
        for r in Reject::ALL {
            if let Some(s) = r.http_status() {
                assert!((400..600).contains(&s), "{r:?}");
            }
            // A refusal caused by the gateway's state is retryable.
            if matches!(r, Reject::Draining | Reject::BufferBudget) {
                assert!(r.close_code().unwrap().reconnect_allowed(), "{r:?}");
                assert_eq!(r.http_status(), Some(503));
            }
        }
        assert_eq!(
            Reject::HelloTooLarge.close_code(),
            Some(CloseCode::FrameTooLarge)
        );
        assert_eq!(Reject::HttpBodyTimeout.http_status(), Some(408));
    }
}
