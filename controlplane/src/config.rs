//! Control plane configuration: a YAML file (unknown keys rejected), with
//! flag/env overrides for the Redis URL and the listen addresses.

use std::net::SocketAddr;
use std::time::Duration;

use gg_runtime::auth::{FileToken, Token, read_tokens};
use gg_runtime::grpc_tls;
use serde::Deserialize;

pub const DEFAULT_RECONCILE_MS: u64 = 1_000;
pub const DEFAULT_LEASE_MS: u64 = 15_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub id: Option<String>,
    pub listen: String,
    pub ops_listen: String,
    pub redis: FileRedis,
    #[serde(default = "d_reconcile")]
    pub reconcile_ms: u64,
    #[serde(default = "d_lease")]
    pub lease_ms: u64,
    #[serde(default)]
    pub tokens: Vec<FileToken>,
    /// Token this control plane presents to gateways' admin APIs (DrainGateway).
    #[serde(default)]
    pub gateway_admin_token: Option<FileToken>,
    /// TLS (mutual with `client_ca_file`) for this control plane's gRPC API.
    #[serde(default)]
    pub tls: Option<grpc_tls::FileServerTls>,
    /// TLS to gateways' admin APIs (when they serve TLS).
    #[serde(default)]
    pub gateway_admin_tls: Option<grpc_tls::FileClientTls>,
    /// A gRPC connection that sends nothing for this long is closed.
    #[serde(default = "d_idle")]
    pub idle_timeout_ms: u64,
    /// OpenTelemetry span export (the same section as the gateway's).
    #[serde(default)]
    pub telemetry: Option<gg_runtime::telemetry::FileTelemetry>,
    /// Room history and fan-out.
    #[serde(default)]
    pub rooms: FileRooms,
}

/// `rooms:` — each room keeps its last `history_size` messages, each for at
/// most `history_ttl_ms`; the fleet fan-out log keeps about `log_keep`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileRooms {
    pub history_size: u32,
    pub history_ttl_ms: u64,
    pub log_keep: u64,
    /// How long a session that closed in a way it may resume from keeps its
    /// room list for the gateway it resumes on (match `resume.ttl_ms`).
    pub resume_keep_ms: u64,
}

impl Default for FileRooms {
    fn default() -> Self {
        FileRooms {
            history_size: 100,
            history_ttl_ms: 300_000,
            log_keep: 100_000,
            resume_keep_ms: 300_000,
        }
    }
}

fn d_reconcile() -> u64 {
    DEFAULT_RECONCILE_MS
}
fn d_idle() -> u64 {
    gg_runtime::listener::DEFAULT_IDLE_TIMEOUT.as_millis() as u64
}
fn d_lease() -> u64 {
    DEFAULT_LEASE_MS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedis {
    /// `redis://[user:pass@]host:port/db` or `rediss://…` (TLS). One node.
    #[serde(default)]
    pub url: Option<String>,
    /// Redis Cluster seed nodes.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// Redis Sentinel: the sentinels and the master name; the control plane
    /// asks them for the master and again after a failover.
    #[serde(default)]
    pub sentinel: Option<FileSentinel>,
    /// PEM CA bundle that signed the Redis server certificate (`rediss://`
    /// URLs); without it the system trust store is used.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Bound on every Redis call (and on connecting).
    #[serde(default = "d_redis_timeout")]
    pub timeout_ms: u64,
}

pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 1_000;

fn d_redis_timeout() -> u64 {
    DEFAULT_REDIS_TIMEOUT_MS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSentinel {
    pub nodes: Vec<String>,
    pub master: String,
}

#[derive(Debug, Clone)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
    Sentinel { nodes: Vec<String>, master: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub id: String,
    pub listen: SocketAddr,
    pub ops_listen: SocketAddr,
    pub redis: RedisTarget,
    /// PEM CA for `rediss://` (read at start).
    pub redis_tls_ca: Option<Vec<u8>>,
    /// Bound on every Redis call.
    pub redis_timeout: Duration,
    /// gRPC connections that send nothing for this long are closed.
    pub idle_timeout: Duration,
    pub reconcile: Duration,
    pub lease: Duration,
    pub tokens: Vec<Token>,
    pub gateway_admin_token: Option<Token>,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    pub gateway_admin_tls: Option<tonic::transport::ClientTlsConfig>,
    pub telemetry: Option<gg_runtime::telemetry::TelemetrySettings>,
    pub rooms: FileRooms,
}

/// `redis:`: exactly one of url, cluster or sentinel; the CA; the timeout.
fn redis_section(
    r: FileRedis,
    errs: &mut Vec<String>,
) -> (Option<RedisTarget>, Option<Vec<u8>>, Duration) {
    let tls_ca = r.tls_ca_file.as_ref().and_then(|p| match std::fs::read(p) {
        Ok(pem) => Some(pem),
        Err(e) => {
            errs.push(format!("redis.tls_ca_file: cannot read {p}: {e}"));
            None
        }
    });
    if !(1..=60_000).contains(&r.timeout_ms) {
        errs.push(format!(
            "redis.timeout_ms {} must be between 1 and 60000",
            r.timeout_ms
        ));
    }
    let target = match (r.url, r.cluster.is_empty(), r.sentinel) {
        (Some(u), true, None) => Some(RedisTarget::Single(u)),
        (None, false, None) => Some(RedisTarget::Cluster(r.cluster)),
        (None, true, Some(s)) if !s.nodes.is_empty() && !s.master.is_empty() => {
            Some(RedisTarget::Sentinel {
                nodes: s.nodes,
                master: s.master,
            })
        }
        (None, true, Some(_)) => {
            errs.push("redis.sentinel needs nodes and a master name".into());
            None
        }
        _ => {
            errs.push("redis: set exactly one of url, cluster or sentinel".into());
            None
        }
    };
    (target, tls_ca, Duration::from_millis(r.timeout_ms))
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// Overrides from flags / env.
#[derive(Debug, Default)]
pub struct Overrides {
    pub redis_url: Option<String>,
    pub listen: Option<String>,
    pub ops_listen: Option<String>,
}

impl Config {
    pub fn load(path: &std::path::Path, o: Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
        let file: FileConfig =
            yaml_serde::from_str(&text).map_err(|e| ConfigError(vec![e.to_string()]))?;
        Config::from_file(file, o)
    }

    pub fn from_file(mut f: FileConfig, o: Overrides) -> Result<Config, ConfigError> {
        let mut errs = Vec::new();
        if let Some(u) = o.redis_url {
            f.redis.url = Some(u);
            f.redis.cluster.clear();
        }
        let addr = |k: &str, v: &str, errs: &mut Vec<String>| match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errs.push(format!("{k}: {v:?} is not an ip:port address"));
                None
            }
        };
        let listen = addr(
            "listen",
            o.listen.as_deref().unwrap_or(&f.listen),
            &mut errs,
        );
        let ops_listen = addr(
            "ops_listen",
            o.ops_listen.as_deref().unwrap_or(&f.ops_listen),
            &mut errs,
        );
        let (redis, redis_tls_ca, redis_timeout) = redis_section(f.redis, &mut errs);
        if f.idle_timeout_ms == 0 {
            errs.push("idle_timeout_ms must be greater than 0".into());
        }
        if f.reconcile_ms == 0 || f.lease_ms < 1000 {
            errs.push("reconcile_ms must be > 0 and lease_ms >= 1000".into());
        }
        let tokens = read_tokens("tokens", &f.tokens, &mut errs);
        if let Some(l) = listen
            && f.tokens.is_empty()
            && !l.ip().is_loopback()
        {
            errs.push(format!("listen {l} is not a loopback address and tokens is empty: configure tokens, or listen on 127.0.0.1"));
        }
        let gateway_admin_token = f.gateway_admin_token.as_ref().and_then(|t| {
            read_tokens("gateway_admin_token", std::slice::from_ref(t), &mut errs).pop()
        });
        let tls = f.tls.as_ref().and_then(|t| {
            grpc_tls::server_config(t)
                .map_err(|e| errs.push(format!("tls: {e}")))
                .ok()
        });
        let gateway_admin_tls = f.gateway_admin_tls.as_ref().and_then(|t| {
            grpc_tls::client_config(t)
                .map_err(|e| errs.push(format!("gateway_admin_tls: {e}")))
                .ok()
        });
        let r = &f.rooms;
        if r.history_size > 10_000 {
            errs.push(format!(
                "rooms.history_size {} must be at most 10000",
                r.history_size
            ));
        }
        if r.history_ttl_ms == 0 || r.resume_keep_ms == 0 {
            errs.push(
                "rooms.history_ttl_ms and rooms.resume_keep_ms must be greater than 0".into(),
            );
        }
        if r.log_keep < 1_000 {
            errs.push(format!(
                "rooms.log_keep {} must be at least 1000",
                r.log_keep
            ));
        }
        let telemetry = f
            .telemetry
            .as_ref()
            .map(|t| t.validate("game-gateway-controlplane", &mut errs));
        let id =
            f.id.or_else(|| std::env::var("POD_NAME").ok())
                .or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_string())
                })
                .unwrap_or_else(|| "controlplane".into());
        match (listen, ops_listen, redis, errs.is_empty()) {
            (Some(listen), Some(ops_listen), Some(redis), true) => Ok(Config {
                id,
                listen,
                ops_listen,
                redis,
                redis_tls_ca,
                redis_timeout,
                idle_timeout: Duration::from_millis(f.idle_timeout_ms),
                reconcile: Duration::from_millis(f.reconcile_ms),
                lease: Duration::from_millis(f.lease_ms),
                tokens,
                gateway_admin_token,
                tls,
                gateway_admin_tls,
                telemetry,
                rooms: f.rooms,
            }),
            _ => Err(ConfigError(errs)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_example_parses() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/controlplane.local.yaml");
        let c = Config::load(&p, Overrides::default()).unwrap();
        assert!(matches!(c.redis, RedisTarget::Single(_)));
    }

    #[test]
    fn public_listen_needs_tokens_and_redis_is_exclusive() {
        let f: FileConfig = yaml_serde::from_str(
            "listen: 0.0.0.0:1\nops_listen: 127.0.0.1:2\nredis: { url: redis://x/, cluster: [redis://y/] }\n",
        )
        .unwrap();
        let e = Config::from_file(f, Overrides::default())
            .unwrap_err()
            .0
            .join("\n");
        assert!(e.contains("not a loopback address"), "{e}");
        assert!(e.contains("exactly one of url, cluster or sentinel"), "{e}");
        let bad: Result<FileConfig, _> =
            yaml_serde::from_str("listen: a\nops_listen: b\nredis: {}\nextra: 1\n");
        assert!(bad.is_err(), "unknown keys are rejected");
    }
}
