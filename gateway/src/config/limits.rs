//! `limits:` — what one client, one source address and the whole process
//! may hold, and how long the gateway waits on a client.

use std::time::Duration;

use serde::Deserialize;

use super::{Errors, ms, positive};

pub const DEFAULT_MAX_FRAME_BYTES: u32 = gg_proto::frame::DEFAULT_MAX_FRAME_BYTES;
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
pub const DEFAULT_CONN_RATE_PER_IP: u32 = 100;
pub const DEFAULT_CONN_BURST_PER_IP: u32 = 200;
pub const DEFAULT_SNIFF_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_HEARTBEAT_MS: u64 = 15_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 45_000;
pub const DEFAULT_SESSION_QUEUE: usize = 256;
pub const DEFAULT_SESSION_QUEUE_BYTES: usize = 4 << 20;
/// The least `limits.session_queue_bytes` may be.
pub const MIN_SESSION_QUEUE_BYTES: usize = 64 << 10;
pub const DEFAULT_MSG_RATE_PER_SEC: u32 = 200;
pub const DEFAULT_MSG_BURST: u32 = 400;
pub const DEFAULT_HTTP_HEADER_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_HTTP_BODY_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_HELLO_BYTES: u32 = 4_096;
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 256 * 1024 * 1024;
/// Frames up to this size are always taken, budget or not: the budget
/// stops a crowd of large frames, not ordinary traffic.
pub const SMALL_FRAME_BYTES: u32 = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLimits {
    pub max_frame_bytes: u32,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub conn_rate_per_ip: u32,
    pub conn_burst_per_ip: u32,
    pub sniff_timeout_ms: u64,
    pub hello_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub idle_timeout_ms: u64,
    pub session_queue: usize,
    pub session_queue_bytes: usize,
    pub msg_rate_per_sec: u32,
    pub msg_burst: u32,
    pub http_header_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub http_body_timeout_ms: u64,
    pub max_hello_bytes: u32,
    pub max_buffered_bytes: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            conn_rate_per_ip: DEFAULT_CONN_RATE_PER_IP,
            conn_burst_per_ip: DEFAULT_CONN_BURST_PER_IP,
            sniff_timeout_ms: DEFAULT_SNIFF_TIMEOUT_MS,
            hello_timeout_ms: DEFAULT_HELLO_TIMEOUT_MS,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            session_queue: DEFAULT_SESSION_QUEUE,
            session_queue_bytes: DEFAULT_SESSION_QUEUE_BYTES,
            msg_rate_per_sec: DEFAULT_MSG_RATE_PER_SEC,
            msg_burst: DEFAULT_MSG_BURST,
            http_header_timeout_ms: DEFAULT_HTTP_HEADER_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            http_body_timeout_ms: DEFAULT_HTTP_BODY_TIMEOUT_MS,
            max_hello_bytes: DEFAULT_MAX_HELLO_BYTES,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: u32,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// New connections per second per source address (token bucket).
    pub conn_rate_per_ip: u32,
    pub conn_burst_per_ip: u32,
    pub sniff_timeout: Duration,
    pub hello_timeout: Duration,
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
    pub session_queue: usize,
    pub session_queue_bytes: usize,
    pub msg_rate_per_sec: u32,
    pub msg_burst: u32,
    pub http_header_timeout: Duration,
    pub write_timeout: Duration,
    /// An HTTP request body must arrive whole within this.
    pub http_body_timeout: Duration,
    /// Longest first frame (HELLO) taken before a session is authenticated.
    pub max_hello_bytes: u32,
    /// Process-wide budget for client bytes buffered in partly read frames
    /// and HTTP bodies larger than [`SMALL_FRAME_BYTES`].
    pub max_buffered_bytes: u64,
}

impl FileLimits {
    pub(super) fn validate(self, errs: &mut Errors) -> Limits {
        let l = self;
        for (k, v) in [
            ("limits.max_connections", l.max_connections as u64),
            (
                "limits.max_connections_per_ip",
                l.max_connections_per_ip as u64,
            ),
            ("limits.conn_rate_per_ip", u64::from(l.conn_rate_per_ip)),
            ("limits.conn_burst_per_ip", u64::from(l.conn_burst_per_ip)),
            ("limits.session_queue", l.session_queue as u64),
            ("limits.msg_rate_per_sec", u64::from(l.msg_rate_per_sec)),
            ("limits.msg_burst", u64::from(l.msg_burst)),
            ("limits.sniff_timeout_ms", l.sniff_timeout_ms),
            ("limits.hello_timeout_ms", l.hello_timeout_ms),
            ("limits.heartbeat_ms", l.heartbeat_ms),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.http_header_timeout_ms", l.http_header_timeout_ms),
            ("limits.write_timeout_ms", l.write_timeout_ms),
            ("limits.http_body_timeout_ms", l.http_body_timeout_ms),
        ] {
            positive(k, v, errs);
        }
        if !(64..=64 * 1024 * 1024).contains(&l.max_frame_bytes) {
            errs.push(format!(
                "limits.max_frame_bytes {} must be between 64 and 67108864",
                l.max_frame_bytes
            ));
        }
        if l.max_hello_bytes < 64 {
            errs.push(format!(
                "limits.max_hello_bytes {} must be at least 64",
                l.max_hello_bytes
            ));
        }
        if l.session_queue_bytes < MIN_SESSION_QUEUE_BYTES {
            errs.push(format!(
                "limits.session_queue_bytes {} must be at least {MIN_SESSION_QUEUE_BYTES}",
                l.session_queue_bytes
            ));
        }
        if l.max_buffered_bytes < u64::from(l.max_frame_bytes) {
            errs.push(format!(
                "limits.max_buffered_bytes {} must be at least limits.max_frame_bytes ({})",
                l.max_buffered_bytes, l.max_frame_bytes
            ));
        }
        if l.idle_timeout_ms <= l.heartbeat_ms {
            errs.push(format!(
                "limits.idle_timeout_ms ({}) must be greater than limits.heartbeat_ms ({}) or every session times out",
                l.idle_timeout_ms, l.heartbeat_ms
            ));
        }
        Limits {
            max_frame_bytes: l.max_frame_bytes,
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
            conn_rate_per_ip: l.conn_rate_per_ip,
            conn_burst_per_ip: l.conn_burst_per_ip,
            sniff_timeout: ms(l.sniff_timeout_ms),
            hello_timeout: ms(l.hello_timeout_ms),
            heartbeat: ms(l.heartbeat_ms),
            idle_timeout: ms(l.idle_timeout_ms),
            session_queue: l.session_queue,
            session_queue_bytes: l.session_queue_bytes,
            msg_rate_per_sec: l.msg_rate_per_sec,
            msg_burst: l.msg_burst,
            http_header_timeout: ms(l.http_header_timeout_ms),
            write_timeout: ms(l.write_timeout_ms),
            http_body_timeout: ms(l.http_body_timeout_ms),
            // A HELLO is a frame: never more than a frame may be.
            max_hello_bytes: l.max_hello_bytes.min(l.max_frame_bytes),
            max_buffered_bytes: l.max_buffered_bytes,
        }
    }
}

impl Limits {
    /// How much one session's queue toward its client may hold.
    pub(crate) fn session_queue_bound(&self) -> crate::session::QueueBound {
        crate::session::QueueBound {
            frames: self.session_queue,
            bytes: self.session_queue_bytes,
        }
    }
}
