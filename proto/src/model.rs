//! The one domain model of routing: services and their [`Strategy`], the
//! realm map, and route overrides selected by a [`RouteKey`]. The gateway's
//! YAML file, gwctl's `apply`/`diff`/`dump` file and the control plane's
//! validation all use these types (serde for files, [`Bundle::from_pb`] /
//! [`Bundle::to_pb`] for the wire), so a rule is written down once and
//! checked by one function, [`Bundle::validate`], which lists every problem.
//!
//! Pure: no I/O, no clocks (callers pass `now_ms`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pb::common as cpb;
use crate::pb::controlplane as pb;

/// `service_type` in frames: which backend service.
pub type ServiceId = u16;
/// Realm (shard of the world) in frames and the realm map.
pub type RealmId = u32;
/// A player.
pub type UserId = u64;
/// A session, unique across the cluster.
pub type SessionId = u64;

/// How a service picks an endpoint for a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The next available endpoint in rotation.
    RoundRobin,
    /// Rendezvous hashing of `user_id` over the endpoints.
    ConsistentHash,
    /// `realm_id` → game server from the realm map.
    Realm,
}

impl Strategy {
    /// Every strategy, in documentation order.
    pub const ALL: [Strategy; 3] = [
        Strategy::RoundRobin,
        Strategy::ConsistentHash,
        Strategy::Realm,
    ];

    /// The name used in files, flags and output.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::ConsistentHash => "consistent_hash",
            Strategy::Realm => "realm",
        }
    }

    /// Parses a name; the error lists the valid ones.
    pub fn parse(s: &str) -> Result<Strategy, String> {
        Strategy::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!("unknown strategy {s:?} (expected round_robin, consistent_hash or realm)")
            })
    }

    /// The wire value.
    pub fn to_pb(self) -> i32 {
        (match self {
            Strategy::RoundRobin => cpb::Strategy::RoundRobin,
            Strategy::ConsistentHash => cpb::Strategy::ConsistentHash,
            Strategy::Realm => cpb::Strategy::Realm,
        }) as i32
    }

    /// From the wire value; unspecified or unknown values are an error.
    pub fn from_pb(v: i32) -> Result<Strategy, String> {
        match cpb::Strategy::try_from(v) {
            Ok(cpb::Strategy::RoundRobin) => Ok(Strategy::RoundRobin),
            Ok(cpb::Strategy::ConsistentHash) => Ok(Strategy::ConsistentHash),
            Ok(cpb::Strategy::Realm) => Ok(Strategy::Realm),
            Ok(cpb::Strategy::Unspecified) => {
                Err("strategy is not set (expected round_robin, consistent_hash or realm)".into())
            }
            Err(_) => Err(format!("unknown strategy value {v}")),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One routing rule: a named service, its `service_type` id, how it picks,
/// and its endpoints (`host:port`; empty for `realm`, which uses the realm map).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub id: ServiceId,
    pub strategy: Strategy,
    /// `host:port` or `dns://name:port`, optionally `@region`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "PreferRegion::is_none")]
    pub prefer_region: PreferRegion,
    /// How the gateway speaks to the endpoints.
    #[serde(default, skip_serializing_if = "BackendProtocol::is_frame")]
    pub protocol: BackendProtocol,
    /// HTTP/gRPC services: TLS to the endpoints.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls: bool,
}

/// How the gateway speaks to a service's endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendProtocol {
    /// Frame protocol v1 over pooled, multiplexed TCP connections.
    #[default]
    Frame,
    /// HTTP/1.1, reverse-proxied for `http_routes`.
    Http,
    /// gRPC over HTTP/2 cleartext, passed through for `http_routes`.
    Grpc,
}

impl BackendProtocol {
    pub fn is_frame(&self) -> bool {
        *self == BackendProtocol::Frame
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendProtocol::Frame => "frame",
            BackendProtocol::Http => "http",
            BackendProtocol::Grpc => "grpc",
        }
    }
}

/// A path on the client port proxied to an HTTP service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    /// `/api/shop/*` (prefix) or `/api/health` (exact).
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    pub service: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub max_concurrency: u32,
    /// `package.Service/Method`: JSON in, JSON out, a unary gRPC call to a
    /// grpc service in between.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grpc_method: String,
    /// Open without a credential (else a JWT or a scoped API key is needed
    /// on a gateway that has `client_auth` or `api_keys`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub public: bool,
    /// Browser origins allowed (CORS) instead of the gateway's list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Whether `o` is `*` or an origin: `scheme://host[:port]`, no path.
pub fn valid_origin(o: &str) -> bool {
    o == "*"
        || ((o.starts_with("https://") || o.starts_with("http://"))
            && !o.ends_with('/')
            && o.split("://")
                .nth(1)
                .is_some_and(|h| !h.is_empty() && !h.contains('/')))
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// Methods a route may name.
pub const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Most retries a route may ask for.
pub const MAX_ROUTE_RETRIES: u32 = 5;

impl HttpRoute {
    /// The prefix of a `/x/*` route, `None` for an exact one.
    pub fn prefix(&self) -> Option<&str> {
        self.path.strip_suffix("/*")
    }

    /// Whether `path` is this route's (prefix: the prefix itself or below it).
    pub fn matches_path(&self, path: &str) -> bool {
        match self.prefix() {
            Some(p) => {
                path == p
                    || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
                    || p.is_empty()
            }
            None => path == self.path,
        }
    }

    /// How specific the route is: longer paths first, exact before prefix.
    pub fn specificity(&self) -> (usize, bool, bool) {
        let len = self.prefix().map_or(self.path.len(), str::len);
        (len, self.prefix().is_none(), !self.host.is_empty())
    }

    pub fn to_pb(&self) -> pb::HttpRoute {
        pb::HttpRoute {
            path: self.path.clone(),
            host: self.host.clone(),
            methods: self.methods.clone(),
            service: self.service.clone(),
            timeout_ms: self.timeout_ms,
            retries: self.retries,
            max_concurrency: self.max_concurrency,
            grpc_method: self.grpc_method.clone(),
            public: self.public,
            cors_origins: self.cors_origins.clone(),
        }
    }

    pub fn from_pb(r: &pb::HttpRoute) -> HttpRoute {
        HttpRoute {
            path: r.path.clone(),
            host: r.host.clone(),
            methods: r.methods.clone(),
            service: r.service.clone(),
            timeout_ms: r.timeout_ms,
            retries: r.retries,
            max_concurrency: r.max_concurrency,
            grpc_method: r.grpc_method.clone(),
            public: r.public,
            cors_origins: r.cors_origins.clone(),
        }
    }

    fn line(&self) -> String {
        let mut l = format!("→ {}", self.service);
        if !self.methods.is_empty() {
            l = format!("{} {l}", self.methods.join(","));
        }
        if self.timeout_ms != 0 {
            l.push_str(&format!(" timeout={}ms", self.timeout_ms));
        }
        if self.retries != 0 {
            l.push_str(&format!(" retries={}", self.retries));
        }
        if self.max_concurrency != 0 {
            l.push_str(&format!(" max_concurrency={}", self.max_concurrency));
        }
        if !self.grpc_method.is_empty() {
            l.push_str(&format!(" grpc_method={}", self.grpc_method));
        }
        if self.public {
            l.push_str(" public");
        }
        if !self.cors_origins.is_empty() {
            l.push_str(&format!(" cors=[{}]", self.cors_origins.join(",")));
        }
        l
    }

    /// The route's key: two routes with the same key and overlapping
    /// methods would both claim a request.
    fn key(&self) -> String {
        if self.host.is_empty() {
            self.path.clone()
        } else {
            format!("{}{}", self.host, self.path)
        }
    }

    fn check(&self, at: &str, services: &[Service], errs: &mut Vec<String>) {
        let p = &self.path;
        let body = self.prefix().unwrap_or(p);
        if !p.starts_with('/')
            || body.contains('*')
            || p.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#')
        {
            errs.push(format!(
                "{at}: path {p:?} must start with '/', have no query, and may end with \"/*\" (a prefix) — '*' nowhere else"
            ));
        }
        if p.starts_with("/v1/") || p == "/v1" || p == "/v1/*" {
            errs.push(format!(
                "{at}: path {p:?} is under /v1, which the gateway's own endpoints use"
            ));
        }
        if !self.host.is_empty()
            && !self
                .host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
        {
            errs.push(format!("{at}: host {:?} is not a host name", self.host));
        }
        let mut seen = HashSet::new();
        for m in &self.methods {
            if !HTTP_METHODS.contains(&m.as_str()) {
                errs.push(format!(
                    "{at}: method {m:?} is not one of {}",
                    HTTP_METHODS.join(", ")
                ));
            }
            if !seen.insert(m) {
                errs.push(format!("{at}: method {m} listed twice"));
            }
        }
        match services.iter().find(|s| s.name == self.service) {
            None => errs.push(format!("{at}: no service named {:?}", self.service)),
            Some(s) if s.protocol.is_frame() => errs.push(format!(
                "{at}: service {:?} speaks the frame protocol; http_routes need a service with protocol: http or grpc",
                self.service
            )),
            Some(s)
                if s.protocol == BackendProtocol::Grpc
                    && self.methods.iter().any(|m| m != "POST") =>
            {
                errs.push(format!(
                    "{at}: gRPC calls are POSTs; a route to a grpc service takes no other method"
                ))
            }
            _ => {}
        }
        if !self.grpc_method.is_empty() {
            let ok = self.grpc_method.split_once('/').is_some_and(|(svc, m)| {
                !svc.is_empty()
                    && !m.is_empty()
                    && svc.split('.').all(|p| {
                        !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    })
                    && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
            if !ok {
                errs.push(format!(
                    "{at}: grpc_method {:?} is not package.Service/Method",
                    self.grpc_method
                ));
            }
            if services
                .iter()
                .any(|s| s.name == self.service && s.protocol != BackendProtocol::Grpc)
            {
                errs.push(format!(
                    "{at}: grpc_method needs a service with protocol: grpc"
                ));
            }
        }
        for o in self.cors_origins.iter().filter(|o| !valid_origin(o)) {
            errs.push(format!(
                "{at}: cors_origins: {o:?} is not an origin (scheme://host[:port], no path) or \"*\""
            ));
        }
        if self.retries > MAX_ROUTE_RETRIES {
            errs.push(format!(
                "{at}: retries {} is more than {MAX_ROUTE_RETRIES}",
                self.retries
            ));
        }
        if self.timeout_ms > 3_600_000 {
            errs.push(format!(
                "{at}: timeout_ms {} is more than an hour",
                self.timeout_ms
            ));
        }
    }
}

/// Which endpoints of a service are tried first; the rest are the fallback
/// when none of those is available.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreferRegion {
    /// Every endpoint alike.
    #[default]
    None,
    /// The gateway's region.
    Gateway,
    /// The region the client asked for (HELLO `region`), else the gateway's.
    Client,
}

impl PreferRegion {
    pub fn is_none(&self) -> bool {
        *self == PreferRegion::None
    }

    pub fn name(self) -> &'static str {
        match self {
            PreferRegion::None => "none",
            PreferRegion::Gateway => "gateway",
            PreferRegion::Client => "client",
        }
    }
}

/// `host:port@eu` → (`host:port`, `Some("eu")`); no `@` → no region.
pub fn split_region(ep: &str) -> (&str, Option<&str>) {
    match ep.rsplit_once('@') {
        Some((addr, region)) => (addr, Some(region)),
        None => (ep, None),
    }
}

/// A region name: `[a-z0-9-]{1,32}` (`eu`, `us-east-1`).
pub fn valid_region(r: &str) -> bool {
    (1..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Service {
    pub fn to_pb(&self) -> pb::Service {
        pb::Service {
            name: self.name.clone(),
            id: u32::from(self.id),
            strategy: self.strategy.to_pb(),
            endpoints: self.endpoints.clone(),
            prefer_region: match self.prefer_region {
                PreferRegion::None => pb::RegionPreference::None,
                PreferRegion::Gateway => pb::RegionPreference::Gateway,
                PreferRegion::Client => pb::RegionPreference::Client,
            } as i32,
            protocol: match self.protocol {
                BackendProtocol::Frame => pb::BackendProtocol::Frame,
                BackendProtocol::Http => pb::BackendProtocol::Http,
                BackendProtocol::Grpc => pb::BackendProtocol::Grpc,
            } as i32,
            tls: self.tls,
        }
    }

    /// Converts one wire service; conversion problems go to `errs`.
    pub fn from_pb(s: &pb::Service, errs: &mut Vec<String>) -> Option<Service> {
        let at = format!("services[{}]", s.name);
        let id = u16::try_from(s.id)
            .map_err(|_| errs.push(format!("{at}: id {} does not fit in u16", s.id)))
            .ok();
        let strategy = Strategy::from_pb(s.strategy)
            .map_err(|e| errs.push(format!("{at}: {e}")))
            .ok();
        let prefer_region = match pb::RegionPreference::try_from(s.prefer_region) {
            Ok(pb::RegionPreference::None) => Some(PreferRegion::None),
            Ok(pb::RegionPreference::Gateway) => Some(PreferRegion::Gateway),
            Ok(pb::RegionPreference::Client) => Some(PreferRegion::Client),
            Err(_) => {
                errs.push(format!(
                    "{at}: prefer_region {} is unknown",
                    s.prefer_region
                ));
                None
            }
        };
        let protocol = match pb::BackendProtocol::try_from(s.protocol) {
            Ok(pb::BackendProtocol::Frame) => Some(BackendProtocol::Frame),
            Ok(pb::BackendProtocol::Http) => Some(BackendProtocol::Http),
            Ok(pb::BackendProtocol::Grpc) => Some(BackendProtocol::Grpc),
            Err(_) => {
                errs.push(format!("{at}: protocol {} is unknown", s.protocol));
                None
            }
        };
        Some(Service {
            name: s.name.clone(),
            id: id?,
            strategy: strategy?,
            endpoints: s.endpoints.clone(),
            prefer_region: prefer_region?,
            protocol: protocol?,
            tls: s.tls,
        })
    }

    fn line(&self) -> String {
        let prefer = if self.prefer_region.is_none() {
            String::new()
        } else {
            format!(" prefer_region={}", self.prefer_region.name())
        };
        let protocol = if self.protocol.is_frame() {
            String::new()
        } else {
            format!(
                " protocol={}{}",
                self.protocol.name(),
                if self.tls { " tls" } else { "" }
            )
        };
        format!(
            "id={} {} [{}]{prefer}{protocol}",
            self.id,
            self.strategy,
            self.endpoints.join(", ")
        )
    }
}

/// Which bindings an override applies to: a service, optionally narrowed to
/// a realm, a user and a session (0 = any). Also the key of one binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RouteKey {
    pub service: ServiceId,
    pub realm: RealmId,
    pub user: UserId,
    pub session: SessionId,
}

impl RouteKey {
    /// Whether this selector covers the binding `b` (a fully specified key).
    pub fn matches(&self, b: &RouteKey) -> bool {
        self.service == b.service
            && (self.user == 0 || self.user == b.user)
            && (self.realm == 0 || self.realm == b.realm)
            && (self.session == 0 || self.session == b.session)
    }

    /// More specific selectors win: session > user > realm > whole service.
    pub fn specificity(&self) -> u8 {
        u8::from(self.session != 0) * 8
            + u8::from(self.user != 0) * 4
            + u8::from(self.realm != 0) * 2
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service={} user={} realm={}",
            self.service, self.user, self.realm
        )?;
        if self.session != 0 {
            write!(f, " session={}", self.session)?;
        }
        Ok(())
    }
}

/// "For bindings matching `key`, use endpoint `target`", with a reason, an
/// author and an optional expiry. Cluster overrides come from the control
/// plane; local ones are set on one gateway and win over cluster ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OverrideFile", into = "OverrideFile")]
pub struct Override {
    /// Assigned by the server when empty.
    pub id: String,
    pub key: RouteKey,
    /// `host:port`.
    pub target: String,
    pub reason: String,
    pub author: String,
    /// Unix ms; 0 = never.
    pub expires_at_ms: u64,
    /// Unix ms; newest wins between equally specific overrides.
    pub created_at_ms: u64,
}

impl Override {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    /// A cluster override on the wire.
    pub fn to_pb(&self) -> pb::ClusterOverride {
        pb::ClusterOverride {
            id: self.id.clone(),
            service_type: u32::from(self.key.service),
            user_id: self.key.user,
            realm_id: self.key.realm,
            target: self.target.clone(),
            reason: self.reason.clone(),
            author: self.author.clone(),
            expires_at_ms: self.expires_at_ms,
        }
    }

    /// From the wire; a `service_type` beyond u16 goes to `errs`.
    pub fn from_pb(o: &pb::ClusterOverride, errs: &mut Vec<String>) -> Option<Override> {
        let service = u16::try_from(o.service_type)
            .map_err(|_| {
                errs.push(format!(
                    "overrides[{}]: service_type {} does not fit in u16",
                    o.id, o.service_type
                ))
            })
            .ok()?;
        Some(Override {
            id: o.id.clone(),
            key: RouteKey {
                service,
                realm: o.realm_id,
                user: o.user_id,
                session: 0,
            },
            target: o.target.clone(),
            reason: o.reason.clone(),
            author: o.author.clone(),
            expires_at_ms: o.expires_at_ms,
            created_at_ms: 0,
        })
    }

    /// Checks target and reason (and that its service exists in `services`
    /// when given); problems go to `errs` prefixed with `at`.
    pub fn check(&self, at: &str, services: Option<&[Service]>, errs: &mut Vec<String>) {
        if let Some(services) = services
            && !services.iter().any(|s| s.id == self.key.service)
        {
            errs.push(format!(
                "{at}: no service with service_type {}",
                self.key.service
            ));
        }
        check_endpoint(&format!("{at}.target"), &self.target, errs);
        if self.reason.trim().is_empty() {
            errs.push(format!(
                "{at}: reason is required (it is shown in explain and audit logs)"
            ));
        }
    }

    fn line(&self) -> String {
        format!(
            "{} → {} ({}; by {}; expires_at_ms={})",
            self.key, self.target, self.reason, self.author, self.expires_at_ms
        )
    }
}

/// The most specific unexpired override in `list` covering `binding`
/// (newest on ties); `get` reaches the override inside a list element.
pub fn most_specific<'a, T>(
    list: &'a [T],
    get: impl Fn(&T) -> &Override,
    binding: &RouteKey,
    now_ms: u64,
) -> Option<&'a T> {
    list.iter()
        .filter(|x| {
            let o = get(x);
            !o.expired(now_ms) && o.key.matches(binding)
        })
        .max_by_key(|x| (get(x).key.specificity(), get(x).created_at_ms))
}

/// The file shape of an override (flat keys, zero fields left out).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideFile {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    id: String,
    service_type: ServiceId,
    #[serde(default, skip_serializing_if = "is_zero")]
    user_id: UserId,
    #[serde(default, skip_serializing_if = "is_zero32")]
    realm_id: RealmId,
    target: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    author: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    expires_at_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
fn is_zero32(n: &u32) -> bool {
    *n == 0
}

impl From<OverrideFile> for Override {
    fn from(f: OverrideFile) -> Override {
        Override {
            id: f.id,
            key: RouteKey {
                service: f.service_type,
                realm: f.realm_id,
                user: f.user_id,
                session: 0,
            },
            target: f.target,
            reason: f.reason,
            author: f.author,
            expires_at_ms: f.expires_at_ms,
            created_at_ms: 0,
        }
    }
}

impl From<Override> for OverrideFile {
    fn from(o: Override) -> OverrideFile {
        OverrideFile {
            id: o.id,
            service_type: o.key.service,
            user_id: o.key.user,
            realm_id: o.key.realm,
            target: o.target,
            reason: o.reason,
            author: o.author,
            expires_at_ms: o.expires_at_ms,
        }
    }
}

/// realm_id → `host:port` of its game server.
pub type Realms = BTreeMap<RealmId, String>;

/// Everything a gateway routes with: the rules, the realm map and cluster
/// overrides. The gateway's file holds the first two; gwctl's bundle file
/// and the control plane hold all three.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    #[serde(default)]
    pub services: Vec<Service>,
    /// Keys may be written as numbers or strings (`"1": host:port`).
    #[serde(default, deserialize_with = "deserialize_realms")]
    pub realms: Realms,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    /// Fleet-wide client address lists (the gateways' `ip_lists` add to them).
    #[serde(default, skip_serializing_if = "crate::ip::IpLists::is_empty")]
    pub ip_lists: crate::ip::IpLists,
    /// How many live sessions one user may hold across the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_policy: Option<SessionPolicy>,
    /// Paths on the client port proxied to HTTP services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<HttpRoute>,
}

/// One user's sessions across the fleet: at most `max_sessions_per_user`
/// live ones; the control plane closes the excess (resumes keep their
/// session id and do not count twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPolicy {
    pub max_sessions_per_user: u32,
    pub on_excess: ExcessSessions,
}

/// Which sessions go when a user has too many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExcessSessions {
    /// The oldest are closed (3508 `replaced`): the newest login wins.
    KickOldest,
    /// The newest are closed (3509 `session_limit`).
    RejectNew,
}

impl ExcessSessions {
    pub fn name(self) -> &'static str {
        match self {
            ExcessSessions::KickOldest => "kick_oldest",
            ExcessSessions::RejectNew => "reject_new",
        }
    }
}

impl SessionPolicy {
    /// Of a user's live sessions `(opened_ms, session_id)`, the ones to
    /// close, and with which code. Deterministic for a set, and monotone:
    /// a session chosen from part of the set is also chosen from all of
    /// it, so control-plane replicas deciding on what each has seen
    /// converge on the same survivors.
    pub fn excess(&self, sessions: &mut [(u64, u64)]) -> (Vec<u64>, crate::CloseCode) {
        sessions.sort_unstable();
        let keep = self.max_sessions_per_user as usize;
        let n = sessions.len().saturating_sub(keep);
        match self.on_excess {
            ExcessSessions::KickOldest => (
                sessions[..n].iter().map(|s| s.1).collect(),
                crate::CloseCode::Replaced,
            ),
            ExcessSessions::RejectNew => (
                sessions[sessions.len() - n..].iter().map(|s| s.1).collect(),
                crate::CloseCode::SessionLimit,
            ),
        }
    }
}

/// Every problem found in a bundle, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Invalid(pub Vec<String>);

impl Bundle {
    /// Checks every rule: names, unique ids and names, strategy/endpoint
    /// fit, `host:port` syntax, realm map, overrides. Lists every problem.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Vec::new();
        self.check(&mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Invalid(errs))
        }
    }

    /// [`Bundle::validate`], adding to a caller's list (config files).
    pub fn check(&self, errs: &mut Vec<String>) {
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for s in &self.services {
            let at = format!("services[{}]", s.name);
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                errs.push(format!("{at}: name must be non-empty [A-Za-z0-9-_]"));
            }
            if !names.insert(s.name.as_str()) {
                errs.push(format!("{at}: duplicate service name"));
            }
            if !ids.insert(s.id) {
                errs.push(format!("{at}: duplicate service id {}", s.id));
            }
            match s.strategy {
                Strategy::Realm if !s.endpoints.is_empty() => errs.push(format!(
                    "{at}: strategy realm takes its endpoints from `realms`; remove `endpoints`"
                )),
                Strategy::Realm if self.realms.is_empty() => errs.push(format!(
                    "{at}: strategy realm needs a non-empty `realms` map"
                )),
                Strategy::RoundRobin | Strategy::ConsistentHash if s.endpoints.is_empty() => {
                    errs.push(format!("{at}: needs at least one endpoint"))
                }
                _ => {}
            }
            let mut seen = HashSet::new();
            for e in &s.endpoints {
                let (addr, region) = split_region(e);
                if let Some(r) = region
                    && !valid_region(r)
                {
                    errs.push(format!(
                        "{at}.endpoints: {e:?}: the region must be [a-z0-9-], 1 to 32 characters"
                    ));
                }
                match addr.strip_prefix(DNS_PREFIX) {
                    Some(name) => check_endpoint(&format!("{at}.endpoints"), name, errs),
                    None => check_endpoint(&format!("{at}.endpoints"), addr, errs),
                }
                if !seen.insert(e) {
                    errs.push(format!("{at}: endpoint {e} listed twice"));
                }
            }
        }
        for (realm, ep) in &self.realms {
            check_endpoint(&format!("realms[{realm}]"), ep, errs);
        }
        let mut oids = HashSet::new();
        for o in &self.overrides {
            let at = format!("overrides[{}]", o.id);
            if o.id.is_empty() {
                errs.push("overrides[]: every override needs an id".into());
            } else if !oids.insert(o.id.as_str()) {
                errs.push(format!("{at}: duplicate id"));
            }
            if o.key.session != 0 {
                errs.push(format!(
                    "{at}: cluster overrides cannot select a session (sessions live on one gateway; use a local override)"
                ));
            }
            o.check(&at, Some(&self.services), errs);
        }
        for s in self
            .services
            .iter()
            .filter(|s| s.protocol == BackendProtocol::Http)
        {
            if s.strategy != Strategy::RoundRobin {
                errs.push(format!(
                    "services[{}]: protocol http takes strategy round_robin (requests are independent)",
                    s.name
                ));
            }
        }
        for (i, r) in self.http_routes.iter().enumerate() {
            let at = format!("http_routes[{}]", r.path);
            r.check(&at, &self.services, errs);
            for other in &self.http_routes[..i] {
                let overlap = r.methods.is_empty()
                    || other.methods.is_empty()
                    || r.methods.iter().any(|m| other.methods.contains(m));
                if r.key() == other.key() && overlap {
                    errs.push(format!(
                        "{at}: conflicts with another route for the same path{} and method",
                        if r.host.is_empty() {
                            String::new()
                        } else {
                            format!(" on host {}", r.host)
                        }
                    ));
                }
            }
        }
        self.ip_lists.compile("ip_lists", errs);
        if let Some(p) = &self.session_policy
            && p.max_sessions_per_user == 0
        {
            errs.push("session_policy.max_sessions_per_user must be at least 1".into());
        }
    }

    /// Converts and validates a wire bundle; every problem is listed.
    pub fn from_pb(b: &pb::ConfigBundle) -> Result<Bundle, Invalid> {
        let mut errs = Vec::new();
        let bundle = Bundle {
            services: b
                .services
                .iter()
                .filter_map(|s| Service::from_pb(s, &mut errs))
                .collect(),
            realms: b.realms.iter().map(|(k, v)| (*k, v.clone())).collect(),
            overrides: b
                .overrides
                .iter()
                .filter_map(|o| Override::from_pb(o, &mut errs))
                .collect(),
            ip_lists: b
                .ip_lists
                .as_ref()
                .map(|l| crate::ip::IpLists {
                    allow: l.allow.clone(),
                    deny: l.deny.clone(),
                })
                .unwrap_or_default(),
            session_policy: b.session_policy.as_ref().and_then(|p| {
                let on_excess = match pb::ExcessSessions::try_from(p.on_excess) {
                    Ok(pb::ExcessSessions::KickOldest) => ExcessSessions::KickOldest,
                    Ok(pb::ExcessSessions::RejectNew) => ExcessSessions::RejectNew,
                    _ => {
                        errs.push(format!(
                            "session_policy.on_excess {} is not kick_oldest or reject_new",
                            p.on_excess
                        ));
                        return None;
                    }
                };
                Some(SessionPolicy {
                    max_sessions_per_user: p.max_sessions_per_user,
                    on_excess,
                })
            }),
            http_routes: b.http_routes.iter().map(HttpRoute::from_pb).collect(),
        };
        bundle.check(&mut errs);
        if errs.is_empty() {
            Ok(bundle)
        } else {
            Err(Invalid(errs))
        }
    }

    /// The wire form, in canonical order.
    pub fn to_pb(&self) -> pb::ConfigBundle {
        let mut b = pb::ConfigBundle {
            services: self.services.iter().map(Service::to_pb).collect(),
            realms: self.realms.iter().map(|(k, v)| (*k, v.clone())).collect(),
            overrides: self.overrides.iter().map(Override::to_pb).collect(),
            ip_lists: (!self.ip_lists.is_empty()).then(|| pb::IpLists {
                allow: self.ip_lists.allow.clone(),
                deny: self.ip_lists.deny.clone(),
            }),
            session_policy: self.session_policy.map(|p| pb::SessionPolicy {
                max_sessions_per_user: p.max_sessions_per_user,
                on_excess: match p.on_excess {
                    ExcessSessions::KickOldest => pb::ExcessSessions::KickOldest,
                    ExcessSessions::RejectNew => pb::ExcessSessions::RejectNew,
                } as i32,
            }),
            http_routes: self.http_routes.iter().map(HttpRoute::to_pb).collect(),
        };
        normalize(&mut b);
        b
    }

    /// Every endpoint the rules and overrides name (the backend pool keeps
    /// connections to these and no others).
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.services
            .iter()
            .filter(|s| s.protocol.is_frame())
            .flat_map(|s| s.endpoints.iter())
            .chain(self.realms.values())
            .chain(self.overrides.iter().map(|o| &o.target))
            .map(String::as_str)
    }

    /// `+` added, `-` removed, `~` changed; one line per item.
    pub fn diff(old: &Bundle, new: &Bundle) -> Vec<String> {
        let mut out = Vec::new();
        for s in &new.services {
            match old.services.iter().find(|o| o.name == s.name) {
                None => out.push(format!("+ service {}: {}", s.name, s.line())),
                Some(o) if o != s => {
                    out.push(format!("~ service {}: {} → {}", s.name, o.line(), s.line()))
                }
                _ => {}
            }
        }
        for o in &old.services {
            if !new.services.iter().any(|s| s.name == o.name) {
                out.push(format!("- service {}", o.name));
            }
        }
        for (r, ep) in &new.realms {
            match old.realms.get(r) {
                None => out.push(format!("+ realm {r}: {ep}")),
                Some(o) if o != ep => out.push(format!("~ realm {r}: {o} → {ep}")),
                _ => {}
            }
        }
        for r in old.realms.keys() {
            if !new.realms.contains_key(r) {
                out.push(format!("- realm {r}"));
            }
        }
        for o in &new.overrides {
            match old.overrides.iter().find(|x| x.id == o.id) {
                None => out.push(format!("+ override {}: {}", o.id, o.line())),
                Some(x) if x != o => out.push(format!("~ override {}: {}", o.id, o.line())),
                _ => {}
            }
        }
        for o in &old.overrides {
            if !new.overrides.iter().any(|x| x.id == o.id) {
                out.push(format!("- override {}", o.id));
            }
        }
        crate::ip::IpLists::diff(&old.ip_lists, &new.ip_lists, &mut out);
        let policy = |p: &Option<SessionPolicy>| match p {
            Some(p) => format!(
                "max {} per user, {}",
                p.max_sessions_per_user,
                p.on_excess.name()
            ),
            None => "none".into(),
        };
        if old.session_policy != new.session_policy {
            out.push(format!(
                "~ session_policy: {} → {}",
                policy(&old.session_policy),
                policy(&new.session_policy)
            ));
        }
        let key = |r: &HttpRoute| format!("{}{} {}", r.host, r.path, r.methods.join(","));
        for r in &new.http_routes {
            match old.http_routes.iter().find(|o| key(o) == key(r)) {
                None => out.push(format!("+ http_route {}{}: {}", r.host, r.path, r.line())),
                Some(o) if o != r => out.push(format!(
                    "~ http_route {}{}: {} → {}",
                    r.host,
                    r.path,
                    o.line(),
                    r.line()
                )),
                _ => {}
            }
        }
        for o in &old.http_routes {
            if !new.http_routes.iter().any(|r| key(r) == key(o)) {
                out.push(format!("- http_route {}{}", o.host, o.path));
            }
        }
        out
    }
}

/// A canonical order so equal wire bundles compare equal.
pub fn normalize(b: &mut pb::ConfigBundle) {
    b.services.sort_by(|x, y| x.name.cmp(&y.name));
    b.overrides.sort_by(|x, y| x.id.cmp(&y.id));
    b.http_routes
        .sort_by(|x, y| (&x.path, &x.host, &x.methods).cmp(&(&y.path, &y.host, &y.methods)));
    if let Some(l) = &mut b.ip_lists {
        for list in [&mut l.allow, &mut l.deny] {
            list.sort();
            list.dedup();
        }
        if l.allow.is_empty() && l.deny.is_empty() {
            b.ip_lists = None;
        }
    }
}

/// An endpoint written `dns://name:port` stands for every address `name`
/// resolves to (re-resolved by each gateway), e.g. a Kubernetes headless
/// Service. Only service endpoints may use it: a realm or an override names
/// one server.
pub const DNS_PREFIX: &str = "dns://";

/// `host:port` with a non-empty host and a port in 1..=65535.
pub fn check_endpoint(at: &str, ep: &str, errs: &mut Vec<String>) {
    if ep.contains("://") {
        errs.push(format!(
            "{at}: {ep:?} is not host:port (dns://name:port is only for service endpoints)"
        ));
        return;
    }
    let ok = ep
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !ok {
        errs.push(format!("{at}: {ep:?} is not host:port"));
    }
}

/// Deserializes a realm map whose keys are numbers or numeric strings
/// (YAML `"1": host:port`, JSON object keys), for files embedding one.
pub fn deserialize_realms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Realms, D::Error> {
    realm_map::deserialize(d)
}

mod realm_map {
    use serde::de::{self, Deserializer, MapAccess, Visitor};

    use super::{RealmId, Realms};

    struct Key(RealmId);

    impl<'de> de::Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Key;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a realm id (u32)")
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                    RealmId::try_from(v)
                        .map(Key)
                        .map_err(|_| E::custom(format!("realm id {v} does not fit in u32")))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                    u64::try_from(v)
                        .map_err(|_| E::custom(format!("realm id {v} is negative")))
                        .and_then(|v| self.visit_u64(v))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                    v.parse::<RealmId>().map(Key).map_err(|_| {
                        E::custom(format!("realms: key {v:?} is not a realm id (u32)"))
                    })
                }
            }
            d.deserialize_any(V)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Realms, D::Error> {
        struct M;
        impl<'de> Visitor<'de> for M {
            type Value = Realms;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of realm id to host:port")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Realms, A::Error> {
                let mut out = Realms::new();
                while let Some((Key(k), v)) = m.next_entry::<Key, String>()? {
                    if out.insert(k, v).is_some() {
                        return Err(de::Error::custom(format!("realms: realm {k} listed twice")));
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(M)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, id: u16, strategy: Strategy, eps: &[&str]) -> Service {
        Service {
            prefer_region: PreferRegion::None,
            protocol: BackendProtocol::Frame,
            tls: false,
            name: name.into(),
            id,
            strategy,
            endpoints: eps.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn validation_lists_every_problem() {
        let b = Bundle {
            services: vec![
                svc("a", 1, Strategy::RoundRobin, &[]),
                svc("a", 1, Strategy::Realm, &["x"]),
                svc("b c", 2, Strategy::ConsistentHash, &["h:1", "h:1"]),
            ],
            realms: [(1, "nope".to_string())].into(),
            overrides: vec![Override {
                id: "o".into(),
                key: RouteKey {
                    service: 9,
                    ..Default::default()
                },
                target: "bad".into(),
                reason: " ".into(),
                author: String::new(),
                expires_at_ms: 0,
                created_at_ms: 0,
            }],
            ip_lists: crate::ip::IpLists {
                allow: vec!["10.0.0.0/40".into()],
                deny: vec![],
            },
            session_policy: None,
            http_routes: vec![],
        };
        let all = b.validate().unwrap_err().0.join("\n");
        assert!(
            all.contains("ip_lists.allow: \"10.0.0.0/40\": the prefix must be 0-32"),
            "{all}"
        );
        for needle in [
            "needs at least one endpoint",
            "duplicate service name",
            "duplicate service id 1",
            "takes its endpoints from `realms`",
            "\"x\" is not host:port",
            "name must be non-empty",
            "endpoint h:1 listed twice",
            "realms[1]: \"nope\" is not host:port",
            "no service with service_type 9",
            "overrides[o].target",
            "reason is required",
        ] {
            assert!(all.contains(needle), "missing {needle:?}: {all}");
        }
    }

    #[test]
    fn http_routes_are_checked_and_conflicts_refused() {
        let mut web = svc("web", 5, Strategy::RoundRobin, &["h:80"]);
        web.protocol = BackendProtocol::Http;
        let route = |path: &str, methods: &[&str], service: &str| HttpRoute {
            path: path.into(),
            host: String::new(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            service: service.into(),
            timeout_ms: 0,
            retries: 0,
            max_concurrency: 0,
            grpc_method: String::new(),
            public: false,
            cors_origins: vec![],
        };
        let mut ok = Bundle {
            services: vec![web.clone(), svc("echo", 1, Strategy::RoundRobin, &["h:1"])],
            http_routes: vec![
                route("/api/shop/*", &[], "web"),
                route("/api/shop/cart", &["GET"], "web"),
                route("/api/shop/cart", &["POST"], "web"),
            ],
            ..Default::default()
        };
        ok.validate().expect("valid");
        assert_eq!(Bundle::from_pb(&ok.to_pb()).expect("wire"), {
            let mut sorted = ok.clone();
            sorted.services.sort_by(|a, b| a.name.cmp(&b.name));
            sorted
                .http_routes
                .sort_by(|a, b| (&a.path, &a.methods).cmp(&(&b.path, &b.methods)));
            sorted
        });
        assert!(
            ok.endpoints().all(|e| e != "h:80"),
            "http endpoints are not pooled"
        );
        ok.http_routes.extend([
            route("/api/shop/cart", &["GET", "PUT"], "web"),
            route("/api/*/x", &[], "web"),
            route("/v1/call/x", &[], "web"),
            route("/ok", &["FETCH"], "web"),
            route("/ok2", &[], "echo"),
            route("/ok3", &[], "nope"),
            HttpRoute {
                retries: 9,
                ..route("/ok4", &[], "web")
            },
            HttpRoute {
                cors_origins: vec!["ftp://x/".into()],
                ..route("/ok5", &[], "web")
            },
        ]);
        let all = ok.validate().unwrap_err().0.join("\n");
        for needle in [
            "http_routes[/api/shop/cart]: conflicts with another route for the same path and method",
            "http_routes[/api/*/x]: path",
            "is under /v1",
            "method \"FETCH\" is not one of",
            "service \"echo\" speaks the frame protocol",
            "no service named \"nope\"",
            "retries 9 is more than 5",
            "cors_origins: \"ftp://x/\" is not an origin",
        ] {
            assert!(all.contains(needle), "missing {needle:?}: {all}");
        }
        let r = route("/api/shop/*", &[], "web");
        assert!(r.matches_path("/api/shop") && r.matches_path("/api/shop/a/b"));
        assert!(!r.matches_path("/api/shopping"));
        assert!(
            route("/a", &[], "web").matches_path("/a")
                && !route("/a", &[], "web").matches_path("/a/b")
        );
        assert!(route("/*", &[], "web").matches_path("/anything"));
    }

    #[test]
    fn wire_conversion_checks_ranges_and_enums() {
        let b = pb::ConfigBundle {
            services: vec![
                pb::Service {
                    name: "a".into(),
                    id: 1,
                    strategy: 0,
                    endpoints: vec!["h:1".into()],
                    prefer_region: 0,
                    protocol: 0,
                    tls: false,
                },
                pb::Service {
                    name: "b".into(),
                    id: 70000,
                    strategy: cpb::Strategy::RoundRobin as i32,
                    endpoints: vec!["h:1".into()],
                    prefer_region: 0,
                    protocol: 0,
                    tls: false,
                },
                pb::Service {
                    name: "c".into(),
                    id: 3,
                    strategy: 42,
                    endpoints: vec!["h:1".into()],
                    prefer_region: 9,
                    protocol: 0,
                    tls: false,
                },
            ],
            ..Default::default()
        };
        let all = Bundle::from_pb(&b).unwrap_err().0.join("\n");
        for needle in [
            "services[a]: strategy is not set",
            "services[b]: id 70000 does not fit in u16",
            "services[c]: unknown strategy value 42",
        ] {
            assert!(all.contains(needle), "missing {needle:?}: {all}");
        }
    }

    #[test]
    fn bundle_round_trips_through_wire_and_file() {
        let b = Bundle {
            services: vec![
                svc("account", 1, Strategy::ConsistentHash, &["h:1", "h:2"]),
                svc("game", 3, Strategy::Realm, &[]),
            ],
            realms: [(2, "g:2".to_string())].into(),
            overrides: vec![Override {
                id: "o1".into(),
                key: RouteKey {
                    service: 1,
                    user: 42,
                    ..Default::default()
                },
                target: "h:2".into(),
                reason: "debug".into(),
                author: "me".into(),
                expires_at_ms: 5,
                created_at_ms: 0,
            }],
            ip_lists: crate::ip::IpLists {
                allow: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                deny: vec!["10.6.0.0/16".into()],
            },
            session_policy: Some(SessionPolicy {
                max_sessions_per_user: 2,
                on_excess: ExcessSessions::KickOldest,
            }),
            http_routes: vec![],
        };
        b.validate().unwrap();
        assert_eq!(Bundle::from_pb(&b.to_pb()).unwrap(), b);
        let yaml = yaml_serde::to_string(&b).unwrap();
        assert!(yaml.contains("strategy: consistent_hash"), "{yaml}");
        assert!(yaml.contains("user_id: 42"), "{yaml}");
        assert!(
            !yaml.contains("realm_id"),
            "zero fields are left out: {yaml}"
        );
        let back: Bundle = yaml_serde::from_str(&yaml).unwrap();
        assert_eq!(back, b);
        let back: Bundle = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn files_reject_typos_and_accept_string_realm_keys() {
        let ok: Bundle = serde_json::from_str(
            r#"{"services":[{"name":"g","id":3,"strategy":"realm"}],"realms":{"7":"h:1"}}"#,
        )
        .unwrap();
        assert_eq!(ok.realms[&7], "h:1");
        for (bad, needle) in [
            (r#"{"servces":[]}"#, "servces"),
            (
                r#"{"services":[{"name":"a","id":1,"strategy":"random"}]}"#,
                "random",
            ),
            (r#"{"realms":{"x":"h:1"}}"#, "not a realm id"),
            (
                r#"{"overrides":[{"service_type":1,"target":"h:1","sesion_id":2}]}"#,
                "sesion_id",
            ),
        ] {
            let e = serde_json::from_str::<Bundle>(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn most_specific_override_wins_and_expired_ones_do_not_count() {
        let mk = |user, realm, target: &str, expires, created| Override {
            id: target.into(),
            key: RouteKey {
                service: 1,
                user,
                realm,
                session: 0,
            },
            target: target.into(),
            reason: "r".into(),
            author: "a".into(),
            expires_at_ms: expires,
            created_at_ms: created,
        };
        let list = vec![
            mk(0, 0, "svc:1", 0, 1),
            mk(42, 0, "user:1", 0, 1),
            mk(0, 7, "realm:1", 0, 1),
            mk(0, 7, "realm-newer:1", 0, 2),
            mk(9, 0, "expired:1", 100, 3),
        ];
        let b = |user, realm| RouteKey {
            service: 1,
            user,
            realm,
            session: 5,
        };
        let t = |k: RouteKey, now| most_specific(&list, |o| o, &k, now).map(|o| o.target.as_str());
        assert_eq!(t(b(42, 7), 0), Some("user:1"));
        assert_eq!(t(b(1, 7), 0), Some("realm-newer:1"));
        assert_eq!(t(b(1, 0), 0), Some("svc:1"));
        assert_eq!(t(b(9, 0), 99), Some("expired:1"));
        assert_eq!(t(b(9, 0), 100), Some("svc:1"));
        let other = RouteKey {
            service: 2,
            ..b(42, 7)
        };
        assert_eq!(t(other, 0), None);
    }

    #[test]
    fn session_policy_picks_the_same_survivors_from_any_part_of_the_set() {
        let p = |on_excess| SessionPolicy {
            max_sessions_per_user: 1,
            on_excess,
        };
        let all = [(10, 1), (20, 2), (30, 3)];
        let (gone, code) = p(ExcessSessions::KickOldest).excess(&mut all.clone());
        assert_eq!((gone, code), (vec![1, 2], crate::CloseCode::Replaced));
        let (gone, code) = p(ExcessSessions::RejectNew).excess(&mut all.clone());
        assert_eq!((gone, code), (vec![2, 3], crate::CloseCode::SessionLimit));
        // Seen in part (another replica's write not visible yet): what it
        // closes is closed from the whole set too.
        for part in [
            &[(10, 1), (30, 3)][..],
            &[(20, 2), (30, 3)],
            &[(10, 1), (20, 2)],
        ] {
            for on in [ExcessSessions::KickOldest, ExcessSessions::RejectNew] {
                let (some, _) = p(on).excess(&mut part.to_vec());
                let (whole, _) = p(on).excess(&mut all.clone());
                assert!(some.iter().all(|s| whole.contains(s)), "{on:?} {part:?}");
            }
        }
        let (gone, _) = p(ExcessSessions::KickOldest).excess(&mut [(5, 9)]);
        assert!(gone.is_empty());
        let b = Bundle {
            session_policy: Some(SessionPolicy {
                max_sessions_per_user: 0,
                on_excess: ExcessSessions::KickOldest,
            }),
            ..Bundle::default()
        };
        assert!(b.validate().unwrap_err().0[0].contains("at least 1"));
        let ok = Bundle {
            session_policy: Some(p(ExcessSessions::RejectNew)),
            ..Bundle::default()
        };
        assert_eq!(Bundle::from_pb(&ok.to_pb()).unwrap(), ok);
        let yaml = yaml_serde::to_string(&ok).unwrap();
        assert!(yaml.contains("on_excess: reject_new"), "{yaml}");
    }

    #[test]
    fn endpoints_carry_regions_and_services_a_preference() {
        let mut b = Bundle {
            services: vec![svc(
                "a",
                1,
                Strategy::ConsistentHash,
                &["h:1@eu", "dns://x:2@us-east-1", "h:3"],
            )],
            ..Default::default()
        };
        b.services[0].prefer_region = PreferRegion::Client;
        b.validate().unwrap();
        assert_eq!(Bundle::from_pb(&b.to_pb()).unwrap(), b);
        assert_eq!(split_region("h:1@eu"), ("h:1", Some("eu")));
        assert_eq!(split_region("h:1"), ("h:1", None));
        let yaml = yaml_serde::to_string(&b).unwrap();
        assert!(yaml.contains("prefer_region: client"), "{yaml}");
        b.services[0].endpoints = vec!["h:1@EU".into(), "h:2@".into()];
        assert_eq!(b.validate().unwrap_err().0.len(), 2);
    }

    #[test]
    fn dns_endpoints_are_for_services_only() {
        let mut b = Bundle {
            services: vec![svc(
                "a",
                1,
                Strategy::RoundRobin,
                &["dns://backends.ns.svc:7101"],
            )],
            ..Default::default()
        };
        b.validate().unwrap();
        b.services[0].endpoints = vec!["dns://:7101".into(), "dns://x".into()];
        assert_eq!(b.validate().unwrap_err().0.len(), 2);
        b.services[0].endpoints = vec!["h:1".into()];
        b.realms.insert(1, "dns://game:7000".into());
        let e = b.validate().unwrap_err().0.join(";");
        assert!(e.contains("only for service endpoints"), "{e}");
    }

    #[test]
    fn diff_lists_changes() {
        let old = Bundle {
            services: vec![svc("a", 1, Strategy::RoundRobin, &["h:1"])],
            ..Default::default()
        };
        let new = Bundle {
            services: vec![
                svc("a", 1, Strategy::RoundRobin, &["h:1", "h:2"]),
                svc("b", 2, Strategy::ConsistentHash, &["h:3"]),
            ],
            realms: [(3, "g:1".to_string())].into(),
            ..Default::default()
        };
        let d = Bundle::diff(&old, &new);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("~ service a"));
        assert!(d[1].starts_with("+ service b"));
        assert_eq!(d[2], "+ realm 3: g:1");
        assert!(Bundle::diff(&new, &new).is_empty());
        assert_eq!(
            Bundle::diff(&new, &old)
                .iter()
                .filter(|l| l.starts_with('-'))
                .count(),
            2
        );
    }
}
