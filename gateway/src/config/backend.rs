//! `backend:` (pooled multiplexed connections) and `breaker:` (per
//! endpoint circuit breaker).

use std::time::Duration;

use serde::Deserialize;

use super::{Errors, ms, positive};

pub const DEFAULT_CONNECTIONS_PER_ENDPOINT: usize = 2;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 100;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 10_000;
pub const DEFAULT_BACKEND_QUEUE: usize = 8_192;
pub const DEFAULT_BACKEND_QUEUE_BYTES: usize = 16 << 20;
/// The least `backend.queue_bytes` may be: one batch of small frames.
pub const MIN_BACKEND_QUEUE_BYTES: usize = 64 << 10;
pub const DEFAULT_PING_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
pub const DEFAULT_BREAKER_OPEN_MS: u64 = 5_000;
pub const DEFAULT_BREAKER_OPEN_MAX_MS: u64 = 60_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileBackend {
    pub connections_per_endpoint: usize,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub queue: usize,
    pub queue_bytes: usize,
    pub ping_interval_ms: u64,
    /// PEM CA certificates trusted for `tls: true` HTTP/gRPC services, in
    /// addition to the system's.
    pub tls_ca_file: Option<String>,
}

impl Default for FileBackend {
    fn default() -> Self {
        FileBackend {
            connections_per_endpoint: DEFAULT_CONNECTIONS_PER_ENDPOINT,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            backoff_initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            queue: DEFAULT_BACKEND_QUEUE,
            queue_bytes: DEFAULT_BACKEND_QUEUE_BYTES,
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            tls_ca_file: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendSettings {
    pub connections_per_endpoint: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub queue: usize,
    /// Most bytes waiting for one connection (a message into an empty
    /// queue always fits).
    pub queue_bytes: usize,
    pub ping_interval: Duration,
    /// Extra trust anchors for TLS to HTTP/gRPC services.
    pub tls_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl FileBackend {
    pub(super) fn validate(self, errs: &mut Errors) -> BackendSettings {
        let b = self;
        if !(1..=64).contains(&b.connections_per_endpoint) {
            errs.push(format!(
                "backend.connections_per_endpoint {} must be between 1 and 64",
                b.connections_per_endpoint
            ));
        }
        positive("backend.queue", b.queue as u64, errs);
        if b.queue_bytes < MIN_BACKEND_QUEUE_BYTES {
            errs.push(format!(
                "backend.queue_bytes {} must be at least {MIN_BACKEND_QUEUE_BYTES}",
                b.queue_bytes
            ));
        }
        for (k, v) in [
            ("backend.connect_timeout_ms", b.connect_timeout_ms),
            ("backend.request_timeout_ms", b.request_timeout_ms),
            ("backend.backoff_initial_ms", b.backoff_initial_ms),
            ("backend.backoff_max_ms", b.backoff_max_ms),
            ("backend.ping_interval_ms", b.ping_interval_ms),
        ] {
            positive(k, v, errs);
        }
        if b.backoff_max_ms < b.backoff_initial_ms {
            errs.push("backend.backoff_max_ms must be >= backend.backoff_initial_ms".into());
        }
        let tls_ca = match &b.tls_ca_file {
            None => Vec::new(),
            Some(f) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                match CertificateDer::pem_file_iter(f)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                {
                    Ok(v) if !v.is_empty() => v,
                    Ok(_) => {
                        errs.push(format!("backend.tls_ca_file {f} holds no certificate"));
                        Vec::new()
                    }
                    Err(e) => {
                        errs.push(format!("backend.tls_ca_file {f}: {e}"));
                        Vec::new()
                    }
                }
            }
        };
        BackendSettings {
            connections_per_endpoint: b.connections_per_endpoint,
            connect_timeout: ms(b.connect_timeout_ms),
            request_timeout: ms(b.request_timeout_ms),
            backoff_initial: ms(b.backoff_initial_ms),
            backoff_max: ms(b.backoff_max_ms),
            queue: b.queue,
            queue_bytes: b.queue_bytes,
            ping_interval: ms(b.ping_interval_ms),
            tls_ca,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileBreaker {
    pub failure_threshold: u32,
    pub open_ms: u64,
    pub open_max_ms: u64,
}

impl Default for FileBreaker {
    fn default() -> Self {
        FileBreaker {
            failure_threshold: DEFAULT_BREAKER_THRESHOLD,
            open_ms: DEFAULT_BREAKER_OPEN_MS,
            open_max_ms: DEFAULT_BREAKER_OPEN_MAX_MS,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub open: Duration,
    pub open_max: Duration,
}

impl FileBreaker {
    pub(super) fn validate(self, errs: &mut Errors) -> BreakerSettings {
        positive(
            "breaker.failure_threshold",
            u64::from(self.failure_threshold),
            errs,
        );
        positive("breaker.open_ms", self.open_ms, errs);
        if self.open_max_ms < self.open_ms {
            errs.push("breaker.open_max_ms must be >= breaker.open_ms".into());
        }
        BreakerSettings {
            failure_threshold: self.failure_threshold,
            open: ms(self.open_ms),
            open_max: ms(self.open_max_ms),
        }
    }
}
