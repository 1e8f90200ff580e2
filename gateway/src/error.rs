//! The hot-path error: why one client request could not be forwarded. One
//! place maps it to the ERROR frame code, the HTTP status and whether the
//! client may retry; listeners never invent their own mapping.

use gg_proto::ErrorCode;

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
            RequestError::BadRequest(_) => 400,
        }
    }

    pub(crate) fn side(&self) -> Side {
        match self {
            RequestError::NoService(_)
            | RequestError::UnknownService(_)
            | RequestError::NoRealm { .. }
            | RequestError::RateLimited
            | RequestError::BadRequest(_) => Side::Downstream,
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
}
