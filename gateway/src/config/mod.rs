//! Configuration in two stages: [`FileConfig`] mirrors the YAML file
//! (unknown keys rejected), [`Config::from_file`] validates it into the typed
//! [`Config`] and reports every problem at once. One submodule per section
//! of the file, each with its file shape, its validated settings and the
//! `validate` that turns one into the other.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

mod admin;
mod backend;
mod client_auth;
mod controlplane;
mod drain;
mod limits;
mod tls;

pub use admin::{AdminSettings, DEFAULT_RESUME_TTL_MS, FileAdmin, FileResume, ResumeSettings};
pub use backend::*;
pub use client_auth::FileClientAuth;
pub use controlplane::{
    ControlPlaneSettings, DEFAULT_SESSION_BATCH, DEFAULT_SESSION_FLUSH_MS, FileControlPlane,
};
pub use drain::*;
pub use gg_runtime::telemetry::{FileTelemetry, TelemetrySettings};
pub use limits::*;
pub use tls::{FileTls, TlsSettings};

/// Validation problems, collected so that all are reported at once.
type Errors = Vec<String>;

/// The YAML file as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// This gateway's region (`--region` / `$REGION` override it).
    #[serde(default)]
    pub region: Option<String>,
    pub listen: String,
    pub ops_listen: String,
    #[serde(default)]
    pub services: Vec<gg_proto::model::Service>,
    /// Keys are realm ids, written as numbers or strings.
    #[serde(default, deserialize_with = "gg_proto::model::deserialize_realms")]
    pub realms: gg_proto::model::Realms,
    /// Paths on the client port proxied to `protocol: http` services.
    #[serde(default)]
    pub http_routes: Vec<gg_proto::model::HttpRoute>,
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
    #[serde(default)]
    pub proxy_protocol: Option<FileProxyProtocol>,
    #[serde(default)]
    pub ip_lists: Option<FileIpLists>,
    #[serde(default)]
    pub discovery: Option<FileDiscovery>,
    #[serde(default)]
    pub cors: Option<FileCors>,
    #[serde(default)]
    pub websocket: FileWebSocket,
    /// HTTP/JSON → gRPC transcoding (`http_routes[].grpc_method`).
    #[serde(default)]
    pub transcoding: Option<FileTranscoding>,
    /// API keys: a second client credential for `http_routes`, beside JWT.
    #[serde(default)]
    pub api_keys: Vec<FileApiKey>,
}

/// One API key, stored as the SHA-256 of the key (never the key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApiKey {
    /// Who holds it (logged, and passed to backends as `x-gateway-api-key`).
    pub name: String,
    /// Lower-case hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// The `http_routes` paths (as written there) it may call; `"*"`: all.
    pub routes: Vec<String>,
}

/// A validated API key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub hash: [u8; 32],
    pub routes: Vec<String>,
}

impl ApiKey {
    /// Whether this key may call the route written `path`.
    pub fn allows(&self, path: &str) -> bool {
        self.routes.iter().any(|r| r == "*" || r == path)
    }
}

fn api_keys(keys: &[FileApiKey], errs: &mut Errors) -> Vec<ApiKey> {
    let mut names = std::collections::HashSet::new();
    keys.iter()
        .filter_map(|k| {
            let at = format!("api_keys[{}]", k.name);
            if k.name.is_empty() || !names.insert(k.name.as_str()) {
                errs.push(format!("{at}: every key needs a unique name"));
            }
            if k.routes.is_empty() {
                errs.push(format!(
                    "{at}: routes must name at least one http_routes path (or \"*\")"
                ));
            }
            let hash = (k.sha256.len() == 64)
                .then(|| {
                    let mut h = [0u8; 32];
                    for (i, b) in h.iter_mut().enumerate() {
                        *b = u8::from_str_radix(k.sha256.get(2 * i..2 * i + 2)?, 16).ok()?;
                    }
                    Some(h)
                })
                .flatten();
            match hash {
                Some(hash) => Some(ApiKey {
                    name: k.name.clone(),
                    hash,
                    routes: k.routes.clone(),
                }),
                None => {
                    errs.push(format!(
                        "{at}: sha256 must be 64 hex digits (the SHA-256 of the key, not the key)"
                    ));
                    None
                }
            }
        })
        .collect()
}

/// `transcoding:` — the protobuf descriptors of the gRPC services that
/// routes transcode to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTranscoding {
    /// A `FileDescriptorSet` (`protoc --include_imports
    /// --descriptor_set_out=…`, or `buf build -o …`).
    pub descriptor_set_file: std::path::PathBuf,
}

impl FileTranscoding {
    fn load(&self, errs: &mut Errors) -> Option<Arc<prost_reflect::DescriptorPool>> {
        let path = self.descriptor_set_file.display();
        let bytes = std::fs::read(&self.descriptor_set_file)
            .map_err(|e| errs.push(format!("transcoding.descriptor_set_file {path}: {e}")))
            .ok()?;
        prost_reflect::DescriptorPool::decode(&bytes[..])
            .map(Arc::new)
            .map_err(|e| {
                errs.push(format!(
                    "transcoding.descriptor_set_file {path}: not a FileDescriptorSet: {e}"
                ))
            })
            .ok()
    }
}

/// `websocket:` — WebSocket options on the client port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileWebSocket {
    /// Accept `permessage-deflate` (RFC 7692) when a client offers it.
    pub permessage_deflate: bool,
    /// Messages shorter than this go out uncompressed (the extension
    /// lets each message choose).
    pub compress_min_bytes: usize,
}

impl Default for FileWebSocket {
    fn default() -> Self {
        FileWebSocket {
            permessage_deflate: false,
            compress_min_bytes: 128,
        }
    }
}

/// `cors:` — browsers on other origins may call the client port's HTTP
/// endpoints (calls, sessions, events).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCors {
    /// `https://game.example.com`, or `"*"` for any origin.
    pub allow_origins: Vec<String>,
    #[serde(default = "default_cors_max_age")]
    pub max_age_s: u64,
}

fn default_cors_max_age() -> u64 {
    600
}

/// Resolved `cors:`.
#[derive(Debug, Clone)]
pub struct CorsSettings {
    pub any: bool,
    pub origins: Vec<String>,
    pub max_age_s: u64,
}

impl CorsSettings {
    /// Whether `origin` may call.
    pub fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o == origin)
    }
}

impl FileCors {
    fn validate(&self, errs: &mut Errors) -> CorsSettings {
        if self.allow_origins.is_empty() {
            errs.push("cors.allow_origins must name at least one origin (or \"*\")".into());
        }
        for o in self
            .allow_origins
            .iter()
            .filter(|o| !gg_proto::model::valid_origin(o))
        {
            errs.push(format!(
                "cors.allow_origins: {o:?} is not an origin (scheme://host[:port], no path)"
            ));
        }
        CorsSettings {
            any: self.allow_origins.iter().any(|o| o == "*"),
            origins: self.allow_origins.clone(),
            max_age_s: self.max_age_s,
        }
    }
}

/// `discovery:` — how `dns://name:port` service endpoints are resolved.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    /// DNS servers (`ip:port`); empty: the system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default = "default_discovery_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_discovery_timeout")]
    pub timeout_ms: u64,
}

fn default_discovery_interval() -> u64 {
    5_000
}
fn default_discovery_timeout() -> u64 {
    2_000
}

/// Resolved `discovery:` settings.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    pub nameservers: Vec<SocketAddr>,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            nameservers: Vec::new(),
            interval: Duration::from_millis(default_discovery_interval()),
            timeout: Duration::from_millis(default_discovery_timeout()),
        }
    }
}

impl FileDiscovery {
    fn validate(&self, errs: &mut Errors) -> DiscoverySettings {
        let nameservers = (self.nameservers.iter())
            .filter_map(|a| {
                a.parse()
                    .map_err(|_| errs.push(format!("discovery.nameservers: {a:?} is not ip:port")))
                    .ok()
            })
            .collect();
        if !(100..=3_600_000).contains(&self.interval_ms) {
            errs.push(format!(
                "discovery.interval_ms {} must be between 100 and 3600000",
                self.interval_ms
            ));
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            errs.push(format!(
                "discovery.timeout_ms {} must be between 10 and 60000",
                self.timeout_ms
            ));
        }
        DiscoverySettings {
            nameservers,
            interval: ms(self.interval_ms),
            timeout: ms(self.timeout_ms),
        }
    }
}

/// `ip_lists:` — this gateway's client-port allow/deny lists, in addition
/// to the fleet-wide ones from the control plane.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIpLists {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    /// A file of `allow BLOCK` / `deny BLOCK` lines, read at start and on
    /// SIGHUP (added to the lists above).
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
}

/// This gateway's own lists, as configured (the file is read by
/// [`IpListSettings::load`], at start and on SIGHUP).
#[derive(Debug, Clone, Default)]
pub struct IpListSettings {
    pub lists: gg_proto::ip::IpLists,
    pub file: Option<std::path::PathBuf>,
}

impl IpListSettings {
    /// The lists plus the file's, compiled; every problem is listed.
    pub fn load(&self) -> Result<gg_proto::ip::IpFilter, Vec<String>> {
        let mut errs = Vec::new();
        let mut lists = self.lists.clone();
        if let Some(path) = &self.file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let mut file_errs = Vec::new();
                    let more = gg_proto::ip::IpLists::parse_lines(&text, &mut file_errs);
                    errs.extend(
                        file_errs
                            .into_iter()
                            .map(|e| format!("ip_lists.file {}: {e}", path.display())),
                    );
                    lists.allow.extend(more.allow);
                    lists.deny.extend(more.deny);
                }
                Err(e) => errs.push(format!(
                    "ip_lists.file: cannot read {}: {e}",
                    path.display()
                )),
            }
        }
        let filter = lists.compile("ip_lists", &mut errs);
        if errs.is_empty() {
            Ok(filter)
        } else {
            Err(errs)
        }
    }
}

/// `proxy_protocol:` — connections from these sources (an L4 load balancer)
/// start with a PROXY v1/v2 header naming the player's address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxyProtocol {
    /// Addresses or CIDR blocks allowed (and required) to send the header.
    pub trusted: Vec<String>,
}

/// The routing part of the config (services and realms; overrides stay
/// empty in a file): the same model the control plane sends.
pub type RoutesConfig = gg_proto::model::Bundle;

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway_id: String,
    /// This gateway's region: in the fleet registry, and preferred by
    /// services with `prefer_region`.
    pub region: Option<String>,
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
    /// Sources whose connections carry a PROXY header (empty: none).
    pub proxy_trusted: Vec<crate::listener::proxy::Cidr>,
    /// This gateway's client-port IP lists.
    pub ip_lists: IpListSettings,
    /// Resolution of `dns://` endpoints.
    pub discovery: DiscoverySettings,
    /// Cross-origin browser callers (absent: no CORS headers).
    pub cors: Option<CorsSettings>,
    pub websocket: FileWebSocket,
    /// Descriptors for `grpc_method` routes.
    pub transcoding: Option<Arc<prost_reflect::DescriptorPool>>,
    pub api_keys: Vec<ApiKey>,
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
        let mut errs = Errors::new();
        let gateway_id = gateway_id(gateway_id_override.or(file.gateway_id), &mut errs);
        let region = file.region.clone();
        if let Some(r) = &region
            && !gg_proto::model::valid_region(r)
        {
            errs.push(format!(
                "region {r:?} must be [a-z0-9-], 1 to 32 characters"
            ));
        }
        let listen = parse_addr("listen", &file.listen, &mut errs);
        let ops_listen = parse_addr("ops_listen", &file.ops_listen, &mut errs);
        let routes = RoutesConfig {
            services: file.services,
            realms: file.realms,
            http_routes: file.http_routes,
            ..RoutesConfig::default()
        };
        routes.check(&mut errs);
        let file_routes = !routes.services.is_empty()
            || !routes.realms.is_empty()
            || !routes.http_routes.is_empty();
        let admin = file.admin.as_ref().and_then(|a| a.validate(&mut errs));
        let ports = [Some(("listen", listen)), Some(("ops_listen", ops_listen))]
            .into_iter()
            .chain([admin.as_ref().map(|a| ("admin.listen", Some(a.listen)))]);
        distinct_ports(ports.flatten(), &mut errs);
        let cfg = Config {
            gateway_id,
            region,
            listen: listen.unwrap_or(UNSPECIFIED),
            ops_listen: ops_listen.unwrap_or(UNSPECIFIED),
            routes,
            limits: file.limits.validate(&mut errs),
            backend: file.backend.validate(&mut errs),
            drain: file.drain.validate(&mut errs),
            admin,
            resume: file.resume.as_ref().and_then(|r| r.validate(&mut errs)),
            breaker: file.breaker.validate(&mut errs),
            controlplane: (file.controlplane.as_ref()).map(|c| c.validate(file_routes, &mut errs)),
            telemetry: file
                .telemetry
                .as_ref()
                .map(|t| t.validate("game-gateway", &mut errs)),
            client_auth: file
                .client_auth
                .as_ref()
                .and_then(|a| a.validate(&mut errs)),
            tls: file.tls.as_ref().and_then(|t| t.validate(&mut errs)),
            proxy_trusted: proxy_trusted(file.proxy_protocol, &mut errs),
            ip_lists: ip_lists(file.ip_lists, &mut errs),
            discovery: (file.discovery.as_ref())
                .map(|d| d.validate(&mut errs))
                .unwrap_or_default(),
            cors: file.cors.as_ref().map(|c| c.validate(&mut errs)),
            websocket: file.websocket.clone(),
            transcoding: file.transcoding.as_ref().and_then(|t| t.load(&mut errs)),
            api_keys: api_keys(&file.api_keys, &mut errs),
        };
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError(errs))
        }
    }
}

fn proxy_trusted(
    p: Option<FileProxyProtocol>,
    errs: &mut Errors,
) -> Vec<crate::listener::proxy::Cidr> {
    let Some(p) = p else { return Vec::new() };
    if p.trusted.is_empty() {
        errs.push("proxy_protocol.trusted must name the load balancers' addresses".into());
    }
    p.trusted
        .iter()
        .filter_map(|c| {
            c.parse()
                .map_err(|e| errs.push(format!("proxy_protocol.trusted: {e}")))
                .ok()
        })
        .collect()
}

fn ip_lists(l: Option<FileIpLists>, errs: &mut Errors) -> IpListSettings {
    let Some(l) = l else {
        return IpListSettings::default();
    };
    let settings = IpListSettings {
        lists: gg_proto::ip::IpLists {
            allow: l.allow,
            deny: l.deny,
        },
        file: l.file,
    };
    if let Err(e) = settings.load() {
        errs.extend(e);
    }
    settings
}

/// Stands in for an address that did not parse (the config is then refused).
const UNSPECIFIED: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// The id from the flag, env or file; else `$POD_NAME`; else the hostname.
fn gateway_id(given: Option<String>, errs: &mut Errors) -> String {
    let id = given
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(hostname)
        .unwrap_or_default();
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        errs.push(format!(
            "gateway_id {id:?} must be 1-128 characters of [A-Za-z0-9-_.]"
        ));
    }
    id
}

/// The listeners of one process need distinct ports (port 0 = any free one).
fn distinct_ports<'a>(
    ports: impl Iterator<Item = (&'a str, Option<SocketAddr>)>,
    errs: &mut Errors,
) {
    let ports: Vec<(&str, SocketAddr)> = ports.filter_map(|(k, a)| Some((k, a?))).collect();
    for (i, (k1, a)) in ports.iter().enumerate() {
        for (k2, b) in &ports[i + 1..] {
            if a == b && a.port() != 0 {
                errs.push(format!("{k1} and {k2} are both {a}; use distinct ports"));
            }
        }
    }
}

fn parse_addr(key: &str, v: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match v.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(format!("{key}: {v:?} is not an ip:port address"));
            None
        }
    }
}

fn positive(key: &str, v: u64, errs: &mut Errors) {
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
    fn transcoding_needs_a_readable_descriptor_set() {
        let e = Config::parse(
            &format!("{GOOD}transcoding: {{ descriptor_set_file: /nonexistent/d.pb }}\n"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("transcoding.descriptor_set_file /nonexistent/d.pb"),
            "{e}"
        );
        let junk = std::env::temp_dir().join(format!("gg-junk-{}.pb", std::process::id()));
        std::fs::write(&junk, b"\xff\xff not protobuf").unwrap();
        let e = Config::parse(
            &format!(
                "{GOOD}transcoding: {{ descriptor_set_file: {} }}\n",
                junk.display()
            ),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a FileDescriptorSet"), "{e}");
        let _ = std::fs::remove_file(junk);
    }

    #[test]
    fn api_keys_are_stored_hashed_and_checked() {
        let e = Config::parse(
            &format!("{GOOD}api_keys:\n  - {{ name: p, sha256: my-plain-key, routes: [\"/api/*\"] }}\n  - {{ name: p, sha256: \"{}\", routes: [] }}\n", "a".repeat(64)),
            None,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "api_keys[p]: sha256 must be 64 hex digits",
            "api_keys[p]: every key needs a unique name",
            "api_keys[p]: routes must name at least one",
        ] {
            assert!(e.contains(needle), "missing {needle:?}: {e}");
        }
        let c = Config::parse(
            &format!(
                "{GOOD}api_keys:\n  - {{ name: p, sha256: \"{}\", routes: [\"/api/*\"] }}\n",
                "0f".repeat(32)
            ),
            None,
        )
        .unwrap();
        assert_eq!(c.api_keys[0].hash, [0x0f; 32]);
        assert!(c.api_keys[0].allows("/api/*") && !c.api_keys[0].allows("/other/*"));
    }

    #[test]
    fn the_backend_queue_is_bounded_in_bytes() {
        let c = Config::parse(GOOD, None).unwrap();
        assert_eq!(c.backend.queue_bytes, 16 << 20);
        let c = Config::parse(
            &format!("{GOOD}backend: {{ queue_bytes: 1048576 }}\n"),
            None,
        )
        .unwrap();
        assert_eq!(c.backend.queue_bytes, 1 << 20);
        let e = Config::parse(&format!("{GOOD}backend: {{ queue_bytes: 1000 }}\n"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("backend.queue_bytes 1000 must be at least 65536"),
            "{e}"
        );
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
    fn listeners_need_distinct_ports() {
        let same = "listen: 127.0.0.1:7000\nops_listen: 127.0.0.1:7000\nadmin: { listen: 127.0.0.1:7000 }\n";
        let all = Config::parse(same, Some("gw".into()))
            .unwrap_err()
            .0
            .join("\n");
        for pair in [
            "listen and ops_listen",
            "listen and admin.listen",
            "ops_listen and admin.listen",
        ] {
            assert!(all.contains(pair), "missing {pair:?} in {all}");
        }
        let any = "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\n";
        assert!(Config::parse(any, Some("gw".into())).is_ok());
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
            "backend/Cargo.toml",
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
}
