//! `admin:` (the gRPC admin API) and `resume:` (session resume tokens).

use std::net::SocketAddr;
use std::time::Duration;

use gg_runtime::auth::{FileToken, Token, read_secret, read_tokens};
use serde::Deserialize;

use super::{Errors, ms, parse_addr, positive};

pub const DEFAULT_RESUME_TTL_MS: u64 = 10 * 60 * 1000;

/// `admin:` — the gRPC admin API. Absent = not served.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: String,
    #[serde(default)]
    pub tokens: Vec<FileToken>,
    /// TLS (and, with `client_ca_file`, mutual TLS) for the admin API.
    #[serde(default)]
    pub tls: Option<gg_runtime::grpc_tls::FileServerTls>,
    /// A connection that sends nothing for this long is closed.
    #[serde(default = "default_idle")]
    pub idle_timeout_ms: u64,
}

fn default_idle() -> u64 {
    gg_runtime::listener::DEFAULT_IDLE_TIMEOUT.as_millis() as u64
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Empty only on a loopback address (then every caller is admin).
    pub tokens: Vec<Token>,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    pub idle_timeout: Duration,
}

impl FileAdmin {
    pub(super) fn validate(&self, errs: &mut Errors) -> Option<AdminSettings> {
        let listen = parse_addr("admin.listen", &self.listen, errs)?;
        let tokens = read_tokens("admin.tokens", &self.tokens, errs);
        // Safe default: an admin API reachable from the network needs auth.
        if tokens.is_empty() && self.tokens.is_empty() && !listen.ip().is_loopback() {
            errs.push(format!(
                "admin.listen {listen} is not a loopback address and admin.tokens is empty: configure at least one token, or listen on 127.0.0.1"
            ));
        }
        let tls = self.tls.as_ref().and_then(|t| {
            gg_runtime::grpc_tls::server_config(t)
                .map_err(|e| errs.push(format!("admin.tls: {e}")))
                .ok()
        });
        positive("admin.idle_timeout_ms", self.idle_timeout_ms, errs);
        Some(AdminSettings {
            listen,
            tokens,
            tls,
            idle_timeout: ms(self.idle_timeout_ms),
        })
    }
}

/// `resume:` — session resume tokens (HMAC), shared by the fleet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileResume {
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<String>,
    #[serde(default = "default_resume_ttl")]
    pub ttl_ms: u64,
}

fn default_resume_ttl() -> u64 {
    DEFAULT_RESUME_TTL_MS
}

/// Resume secret (never printed) and token lifetime.
#[derive(Clone)]
pub struct ResumeSettings {
    pub secret: Vec<u8>,
    pub ttl: Duration,
}

impl std::fmt::Debug for ResumeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResumeSettings(ttl={:?})", self.ttl)
    }
}

impl FileResume {
    pub(super) fn validate(&self, errs: &mut Errors) -> Option<ResumeSettings> {
        let secret = read_secret(
            "resume",
            self.secret_env.as_deref(),
            self.secret_file.as_deref(),
            None,
            errs,
        )?;
        positive("resume.ttl_ms", self.ttl_ms, errs);
        Some(ResumeSettings {
            secret,
            ttl: ms(self.ttl_ms),
        })
    }
}
