//! Configuration in two stages: [`FileConfig`] mirrors the YAML file
//! (unknown keys rejected), [`Config::from_file`] validates it into the typed
//! [`Config`] and reports every problem at once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gg_runtime::auth::{FileToken, Token, read_secret, read_tokens};
use serde::Deserialize;

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
pub const DEFAULT_MSG_RATE_PER_SEC: u32 = 200;
pub const DEFAULT_MSG_BURST: u32 = 400;
pub const DEFAULT_HTTP_HEADER_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_CONNECTIONS_PER_ENDPOINT: usize = 2;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 100;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 10_000;
pub const DEFAULT_BACKEND_QUEUE: usize = 8_192;
pub const DEFAULT_PING_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_DRAIN_DEADLINE_MS: u64 = 30_000;
pub const DEFAULT_DRAIN_SPREAD_MS: u64 = 10_000;
pub const DEFAULT_RECONNECT_AFTER_MS: u64 = 1_000;
pub const DEFAULT_SESSION_BATCH: usize = 500;
pub const DEFAULT_SESSION_FLUSH_MS: u64 = 100;
pub const DEFAULT_RESUME_TTL_MS: u64 = 10 * 60 * 1000;
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
pub const DEFAULT_BREAKER_OPEN_MS: u64 = 5_000;
pub const DEFAULT_BREAKER_OPEN_MAX_MS: u64 = 60_000;

/// The YAML file as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub gateway_id: Option<String>,
    pub listen: String,
    pub ops_listen: String,
    #[serde(default)]
    pub services: Vec<gg_proto::model::Service>,
    /// Keys are realm ids, written as numbers or strings.
    #[serde(default, deserialize_with = "gg_proto::model::deserialize_realms")]
    pub realms: gg_proto::model::Realms,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub backend: FileBackend,
    #[serde(default)]
    pub drain: FileDrain,
    #[serde(default)]
    pub admin: Option<FileAdmin>,
    #[serde(default)]
    pub resume: Option<FileResume>,
    #[serde(default)]
    pub breaker: FileBreaker,
    #[serde(default)]
    pub controlplane: Option<FileControlPlane>,
    #[serde(default)]
    pub telemetry: Option<FileTelemetry>,
    #[serde(default)]
    pub client_auth: Option<FileClientAuth>,
    #[serde(default)]
    pub tls: Option<FileTls>,
}

/// `tls:` — TLS on the client port, told apart from plaintext by sniffing
/// (both are served). Absent = a TLS ClientHello is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

/// `client_auth:` — clients prove their user with a JWT. Absent = the
/// `user_id` a client claims is trusted (a trusted network only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientAuth {
    #[serde(default = "default_jwt_algorithm")]
    pub algorithm: String,
    /// HS*: the shared secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<String>,
    /// RS*, ES*, EdDSA: the PEM public key.
    #[serde(default)]
    pub public_key_file: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
}

fn default_jwt_algorithm() -> String {
    "HS256".into()
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_leeway() -> u64 {
    30
}

/// `telemetry:` — OpenTelemetry trace export (OTLP over gRPC). Absent = no
/// export (W3C trace context is still passed on to backends).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTelemetry {
    pub otlp_endpoint: String,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    #[serde(default = "default_export_timeout")]
    pub export_timeout_ms: u64,
    #[serde(default = "default_export_interval")]
    pub export_interval_ms: u64,
    #[serde(default = "default_export_queue")]
    pub export_queue: usize,
}

fn default_service_name() -> String {
    "game-gateway".into()
}
fn default_sample_ratio() -> f64 {
    0.01
}
fn default_export_timeout() -> u64 {
    5000
}
fn default_export_interval() -> u64 {
    5000
}
fn default_export_queue() -> usize {
    2048
}

/// `controlplane:` — take routing config from the control plane.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileControlPlane {
    pub url: String,
    /// Bearer token with the `operate` scope: `{ env | file | value }`.
    #[serde(default)]
    pub token: Option<FileToken>,
    pub snapshot_path: String,
    #[serde(default = "default_batch")]
    pub session_batch: usize,
    #[serde(default = "default_flush")]
    pub session_flush_ms: u64,
    /// For an `https://` url: the CA (and client certificate for mutual TLS).
    #[serde(default)]
    pub tls: Option<gg_runtime::grpc_tls::FileClientTls>,
}

fn default_batch() -> usize {
    DEFAULT_SESSION_BATCH
}
fn default_flush() -> u64 {
    DEFAULT_SESSION_FLUSH_MS
}

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
    pub msg_rate_per_sec: u32,
    pub msg_burst: u32,
    pub http_header_timeout_ms: u64,
    pub write_timeout_ms: u64,
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
            msg_rate_per_sec: DEFAULT_MSG_RATE_PER_SEC,
            msg_burst: DEFAULT_MSG_BURST,
            http_header_timeout_ms: DEFAULT_HTTP_HEADER_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileBackend {
    pub connections_per_endpoint: usize,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub queue: usize,
    pub ping_interval_ms: u64,
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
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileDrain {
    pub deadline_ms: u64,
    pub spread_ms: u64,
    pub reconnect_after_ms: u64,
}

impl Default for FileDrain {
    fn default() -> Self {
        FileDrain {
            deadline_ms: DEFAULT_DRAIN_DEADLINE_MS,
            spread_ms: DEFAULT_DRAIN_SPREAD_MS,
            reconnect_after_ms: DEFAULT_RECONNECT_AFTER_MS,
        }
    }
}

/// The routing part of the config (services and realms; overrides stay
/// empty in a file): the same model the control plane sends.
pub type RoutesConfig = gg_proto::model::Bundle;

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
    pub msg_rate_per_sec: u32,
    pub msg_burst: u32,
    pub http_header_timeout: Duration,
    pub write_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct BackendSettings {
    pub connections_per_endpoint: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub queue: usize,
    pub ping_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct DrainSettings {
    pub deadline: Duration,
    pub spread: Duration,
    pub reconnect_after: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Empty only on a loopback address (then every caller is admin).
    pub tokens: Vec<Token>,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
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

#[derive(Debug, Clone)]
pub struct ControlPlaneSettings {
    pub url: String,
    pub token: Option<Token>,
    pub snapshot_path: std::path::PathBuf,
    pub session_batch: usize,
    pub session_flush: Duration,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub open: Duration,
    pub open_max: Duration,
}

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway_id: String,
    pub listen: SocketAddr,
    pub ops_listen: SocketAddr,
    pub routes: RoutesConfig,
    pub limits: Limits,
    pub backend: BackendSettings,
    pub drain: DrainSettings,
    pub admin: Option<AdminSettings>,
    pub resume: Option<ResumeSettings>,
    pub breaker: BreakerSettings,
    pub controlplane: Option<ControlPlaneSettings>,
    pub telemetry: Option<TelemetrySettings>,
    pub(crate) client_auth: Option<Arc<crate::client_auth::ClientAuth>>,
    pub tls: Option<TlsSettings>,
}

/// The client port's TLS server config (key material is never printed),
/// and the files it came from, to reload them.
#[derive(Clone)]
pub struct TlsSettings {
    pub server: Arc<rustls::ServerConfig>,
    pub files: (String, String),
}

impl TlsSettings {
    /// Reads the certificate and key files again.
    pub fn reload(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        tls_server(&FileTls {
            cert_file: self.files.0.clone(),
            key_file: self.files.1.clone(),
        })
    }
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSettings(..)")
    }
}

/// Where and how much to trace.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub otlp_endpoint: String,
    pub service_name: String,
    /// Fraction of new traces sampled; a sampled parent (`traceparent`) is
    /// always followed.
    pub sample_ratio: f64,
    pub export_timeout: Duration,
    /// Spans are sent at least this often.
    pub export_interval: Duration,
    /// Finished spans waiting for export; beyond it they are dropped.
    pub export_queue: usize,
}

/// Every problem found in a config file, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads, parses and validates a YAML file. `gateway_id_override` (flag or
    /// env) wins over the file; without either, `$POD_NAME` then the hostname.
    pub fn load(path: &Path, gateway_id_override: Option<String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
        Config::parse(&text, gateway_id_override)
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str, gateway_id_override: Option<String>) -> Result<Config, ConfigError> {
        let file: FileConfig =
            yaml_serde::from_str(text).map_err(|e| ConfigError(vec![e.to_string()]))?;
        Config::from_file(file, gateway_id_override)
    }

    /// Validates a parsed file, collecting every error.
    pub fn from_file(
        file: FileConfig,
        gateway_id_override: Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut errs = Vec::new();

        let gateway_id = gateway_id_override
            .or(file.gateway_id)
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(hostname)
            .unwrap_or_default();
        if gateway_id.is_empty()
            || gateway_id.len() > 128
            || !gateway_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            errs.push(format!(
                "gateway_id {gateway_id:?} must be 1-128 characters of [A-Za-z0-9-_.]"
            ));
        }

        let listen = parse_addr("listen", &file.listen, &mut errs);
        let ops_listen = parse_addr("ops_listen", &file.ops_listen, &mut errs);
        if let (Some(a), Some(b)) = (listen, ops_listen)
            && a == b
            && a.port() != 0
        {
            errs.push(format!("listen and ops_listen are both {a}; use two ports"));
        }

        let routes = RoutesConfig {
            services: file.services,
            realms: file.realms,
            overrides: Vec::new(),
        };
        routes.check(&mut errs);

        let l = file.limits;
        positive(
            "limits.max_connections",
            l.max_connections as u64,
            &mut errs,
        );
        positive(
            "limits.max_connections_per_ip",
            l.max_connections_per_ip as u64,
            &mut errs,
        );
        positive(
            "limits.conn_rate_per_ip",
            u64::from(l.conn_rate_per_ip),
            &mut errs,
        );
        positive(
            "limits.conn_burst_per_ip",
            u64::from(l.conn_burst_per_ip),
            &mut errs,
        );
        positive("limits.session_queue", l.session_queue as u64, &mut errs);
        positive(
            "limits.msg_rate_per_sec",
            u64::from(l.msg_rate_per_sec),
            &mut errs,
        );
        positive("limits.msg_burst", u64::from(l.msg_burst), &mut errs);
        for (k, v) in [
            ("limits.sniff_timeout_ms", l.sniff_timeout_ms),
            ("limits.hello_timeout_ms", l.hello_timeout_ms),
            ("limits.heartbeat_ms", l.heartbeat_ms),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.http_header_timeout_ms", l.http_header_timeout_ms),
            ("limits.write_timeout_ms", l.write_timeout_ms),
        ] {
            positive(k, v, &mut errs);
        }
        if !(64..=64 * 1024 * 1024).contains(&l.max_frame_bytes) {
            errs.push(format!(
                "limits.max_frame_bytes {} must be between 64 and 67108864",
                l.max_frame_bytes
            ));
        }
        if l.idle_timeout_ms <= l.heartbeat_ms {
            errs.push(format!(
                "limits.idle_timeout_ms ({}) must be greater than limits.heartbeat_ms ({}) or every session times out",
                l.idle_timeout_ms, l.heartbeat_ms
            ));
        }

        let b = file.backend;
        if !(1..=64).contains(&b.connections_per_endpoint) {
            errs.push(format!(
                "backend.connections_per_endpoint {} must be between 1 and 64",
                b.connections_per_endpoint
            ));
        }
        positive("backend.queue", b.queue as u64, &mut errs);
        for (k, v) in [
            ("backend.connect_timeout_ms", b.connect_timeout_ms),
            ("backend.request_timeout_ms", b.request_timeout_ms),
            ("backend.backoff_initial_ms", b.backoff_initial_ms),
            ("backend.backoff_max_ms", b.backoff_max_ms),
            ("backend.ping_interval_ms", b.ping_interval_ms),
        ] {
            positive(k, v, &mut errs);
        }
        if b.backoff_max_ms < b.backoff_initial_ms {
            errs.push("backend.backoff_max_ms must be >= backend.backoff_initial_ms".into());
        }

        let d = file.drain;
        positive("drain.deadline_ms", d.deadline_ms, &mut errs);
        if d.spread_ms > d.deadline_ms {
            errs.push(format!(
                "drain.spread_ms ({}) must not exceed drain.deadline_ms ({})",
                d.spread_ms, d.deadline_ms
            ));
        }

        let admin = file
            .admin
            .as_ref()
            .and_then(|a| validate_admin(a, &mut errs));
        if let (Some(a), Some(l), Some(o)) = (&admin, listen, ops_listen)
            && (a.listen == l || a.listen == o)
            && a.listen.port() != 0
        {
            errs.push(format!(
                "admin.listen {} collides with listen/ops_listen",
                a.listen
            ));
        }
        let resume = file.resume.as_ref().and_then(|r| {
            let secret = read_secret(
                "resume",
                r.secret_env.as_deref(),
                r.secret_file.as_deref(),
                None,
                &mut errs,
            )?;
            positive("resume.ttl_ms", r.ttl_ms, &mut errs);
            Some(ResumeSettings {
                secret,
                ttl: ms(r.ttl_ms),
            })
        });
        let controlplane = file.controlplane.as_ref().map(|c| {
            if !routes.services.is_empty() || !routes.realms.is_empty() {
                errs.push("services/realms must be empty when controlplane is set: routing comes from the control plane".into());
            }
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                errs.push(format!("controlplane.url {:?} must start with http:// or https://", c.url));
            }
            if c.tls.is_some() != c.url.starts_with("https://") {
                errs.push("controlplane.tls goes with an https:// url (and an https:// url needs controlplane.tls.ca_file)".into());
            }
            if c.session_batch == 0 || c.session_flush_ms == 0 {
                errs.push("controlplane.session_batch and session_flush_ms must be > 0".into());
            }
            ControlPlaneSettings {
                url: c.url.clone(),
                token: c
                    .token
                    .as_ref()
                    .and_then(|t| read_tokens("controlplane.token", std::slice::from_ref(t), &mut errs).pop()),
                snapshot_path: c.snapshot_path.clone().into(),
                session_batch: c.session_batch,
                session_flush: ms(c.session_flush_ms),
                tls: c.tls.as_ref().and_then(|t| {
                    gg_runtime::grpc_tls::client_config(t)
                        .map_err(|e| errs.push(format!("controlplane.tls: {e}")))
                        .ok()
                }),
            }
        });
        let telemetry = file.telemetry.as_ref().map(|t| {
            if !(t.otlp_endpoint.starts_with("http://") || t.otlp_endpoint.starts_with("https://")) {
                errs.push(format!(
                    "telemetry.otlp_endpoint {:?} must start with http:// or https:// (an OTLP/gRPC collector, usually port 4317)",
                    t.otlp_endpoint
                ));
            }
            if !(0.0..=1.0).contains(&t.sample_ratio) {
                errs.push(format!(
                    "telemetry.sample_ratio {} must be between 0 and 1",
                    t.sample_ratio
                ));
            }
            if t.service_name.is_empty() {
                errs.push("telemetry.service_name must not be empty".into());
            }
            positive("telemetry.export_timeout_ms", t.export_timeout_ms, &mut errs);
            positive("telemetry.export_interval_ms", t.export_interval_ms, &mut errs);
            positive("telemetry.export_queue", t.export_queue as u64, &mut errs);
            TelemetrySettings {
                otlp_endpoint: t.otlp_endpoint.clone(),
                service_name: t.service_name.clone(),
                sample_ratio: t.sample_ratio,
                export_timeout: ms(t.export_timeout_ms),
                export_interval: ms(t.export_interval_ms),
                export_queue: t.export_queue,
            }
        });
        let client_auth = file
            .client_auth
            .as_ref()
            .and_then(|a| validate_client_auth(a, &mut errs));
        let tls = file.tls.as_ref().and_then(|t| match tls_server(t) {
            Ok(server) => Some(TlsSettings {
                server,
                files: (t.cert_file.clone(), t.key_file.clone()),
            }),
            Err(e) => {
                errs.push(format!("tls: {e}"));
                None
            }
        });
        let br = file.breaker;
        positive(
            "breaker.failure_threshold",
            u64::from(br.failure_threshold),
            &mut errs,
        );
        positive("breaker.open_ms", br.open_ms, &mut errs);
        if br.open_max_ms < br.open_ms {
            errs.push("breaker.open_max_ms must be >= breaker.open_ms".into());
        }

        match (listen, ops_listen, errs.is_empty()) {
            (Some(listen), Some(ops_listen), true) => Ok(Config {
                controlplane,
                telemetry,
                client_auth,
                tls,
                admin,
                resume,
                breaker: BreakerSettings {
                    failure_threshold: br.failure_threshold,
                    open: ms(br.open_ms),
                    open_max: ms(br.open_max_ms),
                },
                gateway_id,
                listen,
                ops_listen,
                routes,
                limits: Limits {
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
                    msg_rate_per_sec: l.msg_rate_per_sec,
                    msg_burst: l.msg_burst,
                    http_header_timeout: ms(l.http_header_timeout_ms),
                    write_timeout: ms(l.write_timeout_ms),
                },
                backend: BackendSettings {
                    connections_per_endpoint: b.connections_per_endpoint,
                    connect_timeout: ms(b.connect_timeout_ms),
                    request_timeout: ms(b.request_timeout_ms),
                    backoff_initial: ms(b.backoff_initial_ms),
                    backoff_max: ms(b.backoff_max_ms),
                    queue: b.queue,
                    ping_interval: ms(b.ping_interval_ms),
                },
                drain: DrainSettings {
                    deadline: ms(d.deadline_ms),
                    spread: ms(d.spread_ms),
                    reconnect_after: ms(d.reconnect_after_ms),
                },
            }),
            _ => Err(ConfigError(errs)),
        }
    }
}

fn validate_admin(a: &FileAdmin, errs: &mut Vec<String>) -> Option<AdminSettings> {
    let listen = parse_addr("admin.listen", &a.listen, errs)?;
    let tokens = read_tokens("admin.tokens", &a.tokens, errs);
    // Safe default: an admin API reachable from the network needs auth.
    if tokens.is_empty() && a.tokens.is_empty() && !listen.ip().is_loopback() {
        errs.push(format!(
            "admin.listen {listen} is not a loopback address and admin.tokens is empty: configure at least one token, or listen on 127.0.0.1"
        ));
    }
    let tls = a.tls.as_ref().and_then(|t| {
        gg_runtime::grpc_tls::server_config(t)
            .map_err(|e| errs.push(format!("admin.tls: {e}")))
            .ok()
    });
    Some(AdminSettings {
        listen,
        tokens,
        tls,
    })
}

/// Loads the certificate chain and key into a rustls server config (ring).
fn tls_server(t: &FileTls) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&t.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert_file {}: {e}", t.cert_file))?;
    if certs.is_empty() {
        return Err(format!("cert_file {} holds no certificate", t.cert_file));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key_file)
        .map_err(|e| format!("key_file {}: {e}", t.key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    Ok(Arc::new(cfg))
}

fn validate_client_auth(
    a: &FileClientAuth,
    errs: &mut Vec<String>,
) -> Option<Arc<crate::client_auth::ClientAuth>> {
    use crate::client_auth::{ClientAuth, is_hmac, parse_algorithm};
    let Some(alg) = parse_algorithm(&a.algorithm) else {
        errs.push(format!(
            "client_auth.algorithm {:?} is not one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, EdDSA",
            a.algorithm
        ));
        return None;
    };
    let key = if is_hmac(alg) {
        if a.public_key_file.is_some() {
            errs.push(format!(
                "client_auth.public_key_file is for RS*/ES*/EdDSA; {} uses secret_env or secret_file",
                a.algorithm
            ));
            return None;
        }
        read_secret(
            "client_auth",
            a.secret_env.as_deref(),
            a.secret_file.as_deref(),
            None,
            errs,
        )?
    } else {
        if a.secret_env.is_some() || a.secret_file.is_some() {
            errs.push(format!(
                "client_auth: {} verifies with public_key_file, not a secret",
                a.algorithm
            ));
            return None;
        }
        let Some(path) = &a.public_key_file else {
            errs.push(format!(
                "client_auth.public_key_file is required for {}",
                a.algorithm
            ));
            return None;
        };
        match std::fs::read(path) {
            Ok(k) => k,
            Err(e) => {
                errs.push(format!(
                    "client_auth.public_key_file: cannot read {path}: {e}"
                ));
                return None;
            }
        }
    };
    if a.user_claim.is_empty() {
        errs.push("client_auth.user_claim must not be empty".into());
        return None;
    }
    match ClientAuth::new(
        alg,
        &key,
        a.issuer.as_deref(),
        a.audience.as_deref(),
        &a.user_claim,
        a.leeway_s,
    ) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            errs.push(format!("client_auth: {e}"));
            None
        }
    }
}

fn parse_addr(key: &str, v: &str, errs: &mut Vec<String>) -> Option<SocketAddr> {
    match v.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(format!("{key}: {v:?} is not an ip:port address"));
            None
        }
    }
}

fn positive(key: &str, v: u64, errs: &mut Vec<String>) {
    if v == 0 {
        errs.push(format!("{key} must be greater than 0"));
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gg_proto::model::Strategy;

    const GOOD: &str = r#"
gateway_id: gw-local
listen: 127.0.0.1:7000
ops_listen: 127.0.0.1:9100
services:
  - { name: account, id: 1, strategy: consistent_hash, endpoints: [127.0.0.1:7101, 127.0.0.1:7102] }
  - { name: game,    id: 3, strategy: realm }
realms: { "1": 127.0.0.1:7201, "2": 127.0.0.1:7202 }
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(GOOD, None).unwrap();
        assert_eq!(c.gateway_id, "gw-local");
        assert_eq!(c.routes.services.len(), 2);
        assert_eq!(c.routes.services[0].strategy, Strategy::ConsistentHash);
        assert_eq!(c.routes.realms[&2], "127.0.0.1:7202");
        assert_eq!(c.limits.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
    }

    #[test]
    fn override_wins_over_file() {
        let c = Config::parse(GOOD, Some("gw-7".into())).unwrap();
        assert_eq!(c.gateway_id, "gw-7");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::parse(&format!("{GOOD}\nlisten_port: 1\n"), None).unwrap_err();
        assert!(e.to_string().contains("listen_port"), "{e}");
        let e = Config::parse(
            &GOOD.replace("realms:", "limits: { max_frame: 1 }\nrealms:"),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_frame"), "{e}");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let bad = r#"
listen: nope
ops_listen: 127.0.0.1:9100
services:
  - { name: a, id: 1, strategy: round_robin, endpoints: [x] }
  - { name: a, id: 1, strategy: round_robin }
  - { name: g, id: 2, strategy: realm }
limits: { max_frame_bytes: 10, idle_timeout_ms: 5, heartbeat_ms: 10 }
"#;
        let e = Config::parse(bad, Some("gw".into())).unwrap_err();
        let all = e.0.join("\n");
        for needle in [
            "listen: \"nope\"",
            "\"x\" is not host:port",
            "duplicate service name",
            "duplicate service id 1",
            "needs at least one endpoint",
            "needs a non-empty `realms` map",
            "max_frame_bytes 10",
            "idle_timeout_ms (5)",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn an_unknown_strategy_names_the_valid_ones() {
        let e = Config::parse(&GOOD.replace("strategy: realm", "strategy: random"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `random`"), "{e}");
        assert!(e.contains("round_robin"), "{e}");
    }

    #[test]
    fn telemetry_is_validated() {
        let base = "listen: 127.0.0.1:7000\nops_listen: 127.0.0.1:9100\n";
        let ok = format!("{base}telemetry: {{ otlp_endpoint: \"http://127.0.0.1:4317\" }}\n");
        let t = Config::parse(&ok, Some("gw".into()))
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(t.service_name, "game-gateway");
        assert_eq!(t.sample_ratio, 0.01);
        let bad = format!(
            "{base}telemetry: {{ otlp_endpoint: \"127.0.0.1:4317\", sample_ratio: 1.5, export_timeout_ms: 0 }}\n"
        );
        let e = Config::parse(&bad, Some("gw".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must start with http://"), "{e}");
        assert!(e.contains("sample_ratio 1.5"), "{e}");
        assert!(e.contains("telemetry.export_timeout_ms"), "{e}");
        let typo = format!("{base}telemetry: {{ otlp_endpont: x }}\n");
        assert!(Config::parse(&typo, Some("gw".into())).is_err());
    }

    #[test]
    fn admin_and_resume_are_validated() {
        let base = "listen: 127.0.0.1:7000\nops_listen: 127.0.0.1:9100\n";
        let public = format!("{base}admin: {{ listen: 0.0.0.0:9200 }}\n");
        let e = Config::parse(&public, Some("gw".into())).unwrap_err();
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        let loopback = format!("{base}admin: {{ listen: 127.0.0.1:9200 }}\n");
        assert!(
            Config::parse(&loopback, Some("gw".into()))
                .unwrap()
                .admin
                .unwrap()
                .tokens
                .is_empty()
        );

        let bad_tokens = format!(
            "{base}admin:\n  listen: 0.0.0.0:9200\n  tokens:\n    - {{ name: a, scope: root, value: long-enough-secret-1 }}\n    - {{ name: b, scope: read, value: short }}\n    - {{ name: c, scope: read, value: long-enough-secret-2, env: X }}\n    - {{ name: d, scope: read, env: GG_TEST_SURELY_UNSET_VAR }}\n"
        );
        let all = Config::parse(&bad_tokens, Some("gw".into()))
            .unwrap_err()
            .0
            .join("\n");
        for needle in [
            "scope \"root\"",
            "shorter than 16",
            "exactly one of env, file or value",
            "GG_TEST_SURELY_UNSET_VAR is not set",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in {all}");
        }
        assert!(
            !all.contains("long-enough-secret"),
            "secrets must not appear in errors: {all}"
        );

        let resume = format!("{base}resume: {{ secret_file: /nonexistent/secret }}\n");
        let e = Config::parse(&resume, Some("gw".into())).unwrap_err();
        assert!(e.to_string().contains("cannot read secret file"), "{e}");
        let dbg = format!("{:?}", Config::parse(&format!("{base}admin:\n  listen: 127.0.0.1:1\n  tokens: [{{ name: a, scope: read, value: long-enough-secret-1 }}]\n"), Some("gw".into())).unwrap());
        assert!(
            !dbg.contains("long-enough-secret"),
            "Debug must not print secrets"
        );
    }

    #[test]
    fn deploy_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("gateway"))
                && p.extension().is_some_and(|e| e == "yaml")
            {
                Config::load(&p, None).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n > 0, "no deploy/gateway*.yaml found");
    }

    #[test]
    fn dockerfile_copies_binaries_the_workspace_builds() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let docker = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
        let manifests = [
            "gateway/Cargo.toml",
            "controlplane/Cargo.toml",
            "gwctl/Cargo.toml",
        ]
        .map(|m| std::fs::read_to_string(root.join(m)).unwrap())
        .join("\n");
        let known = [
            "FROM",
            "WORKDIR",
            "COPY",
            "RUN",
            "USER",
            "EXPOSE",
            "ENTRYPOINT",
            "CMD",
        ];
        let mut copied = 0;
        for line in docker
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let word = line.split_whitespace().next().unwrap();
            assert!(
                known.contains(&word),
                "unexpected Dockerfile instruction: {line}"
            );
            if let Some(bin) = line.strip_prefix("COPY --from=build /src/target/release/") {
                let name = bin.split_whitespace().next().unwrap();
                assert!(
                    manifests.contains(&format!("name = \"{name}\"")),
                    "Dockerfile copies {name}, which no [[bin]] builds"
                );
                copied += 1;
            }
        }
        assert_eq!(copied, 4);
    }

    #[test]
    fn k8s_manifests_parse_and_mount_the_config_the_args_name() {
        use serde::Deserialize as _;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let docs: Vec<yaml_serde::Value> = yaml_serde::Deserializer::from_str(&text)
            .map(|d| yaml_serde::Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        let container = &docs[0]["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
        assert!(
            args[1].starts_with(mount),
            "--config {} is not under {mount}",
            args[1]
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/ready")
        );
    }
}
