//! Routing: an immutable [`RouteTable`] snapshot (swapped whole through
//! `ArcSwap` when config changes) and [`decide`], the one function that
//! maps a binding's [`RouteKey`] to a backend [`Endpoint`]. Traffic and the
//! admin `ExplainRoute` call it alike — traffic in [`Mode::Bind`], explain
//! in [`Mode::Explain`], which changes nothing (no round-robin step, no
//! breaker transition, no new pool entry) — so explain always names the
//! endpoint traffic would take.
//!
//! Precedence: gateway-local override > cluster override > the service's
//! rule. Sessions pin the result per service, so this runs once per
//! session and service, not per frame.

pub(crate) mod hash;
pub(crate) mod http;
pub(crate) mod overrides;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use gg_proto::model::{Override, PreferRegion, RouteKey, Strategy, most_specific, split_region};

use crate::backend::{BackendPool, Endpoint};
use crate::config::RoutesConfig;
use crate::error::RequestError;
use overrides::{LocalOverride, Overrides};

/// One service with its endpoints resolved to pool entries.
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) id: u16,
    pub(crate) strategy: Strategy,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    rr: AtomicUsize,
    prefer_region: PreferRegion,
    /// Endpoint address → its region (`host:port@eu`).
    regions: HashMap<Arc<str>, Arc<str>>,
}

impl Service {
    fn region_of(&self, e: &Endpoint) -> Option<&str> {
        self.regions.get(&e.addr).map(|r| &**r)
    }
}

/// The regions a decision may prefer: this gateway's and the client's.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Regions<'a> {
    pub(crate) gateway: Option<&'a str>,
    pub(crate) client: Option<&'a str>,
}

/// Everything needed to route, built from one validated config.
pub(crate) struct RouteTable {
    pub(crate) services: HashMap<u16, Service>,
    pub(crate) realms: HashMap<u32, Arc<Endpoint>>,
    /// Cluster-wide overrides from the control plane (below local ones).
    pub(crate) cluster_overrides: Vec<Arc<Override>>,
    /// Paths proxied to HTTP services.
    pub(crate) http: http::HttpRoutes,
}

impl RouteTable {
    /// Resolves a validated bundle against the pool (creating pool entries,
    /// and their connections, for new endpoints and override targets).
    pub(crate) fn build(cfg: &RoutesConfig, pool: &BackendPool) -> RouteTable {
        let services = cfg
            .services
            .iter()
            .filter(|s| s.protocol.is_frame())
            .map(|s| {
                let mut regions = HashMap::new();
                let endpoints = (s.endpoints.iter())
                    .map(|e| {
                        let (addr, region) = split_region(e);
                        let ep = pool.endpoint(addr);
                        if let Some(r) = region {
                            regions.insert(ep.addr.clone(), Arc::from(r));
                        }
                        ep
                    })
                    .collect();
                let svc = Service {
                    name: s.name.clone(),
                    id: s.id,
                    strategy: s.strategy,
                    endpoints,
                    rr: AtomicUsize::new(0),
                    prefer_region: s.prefer_region,
                    regions,
                };
                (s.id, svc)
            })
            .collect();
        let realms = cfg
            .realms
            .iter()
            .map(|(realm, ep)| (*realm, pool.endpoint(ep)))
            .collect();
        for o in &cfg.overrides {
            pool.endpoint(&o.target);
        }
        RouteTable {
            services,
            realms,
            cluster_overrides: cfg.overrides.iter().cloned().map(Arc::new).collect(),
            http: pool.http_routes(cfg),
        }
    }

    /// Looks up a service by its numeric id or by name (HTTP paths use either).
    pub(crate) fn service_by_key(&self, key: &str) -> Option<&Service> {
        match key.parse::<u16>() {
            Ok(id) => self.services.get(&id),
            Err(_) => self.services.values().find(|s| s.name == key),
        }
    }

    /// Every endpoint address this table routes to (rules, realms and
    /// unexpired cluster overrides).
    pub(crate) fn endpoint_addrs(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        self.services
            .values()
            .flat_map(|s| s.endpoints.iter())
            .chain(self.realms.values())
            .map(|e| &*e.addr)
            .chain(
                self.cluster_overrides
                    .iter()
                    .filter(move |o| !o.expired(now_ms))
                    .map(|o| o.target.as_str()),
            )
    }
}

/// Whether a decision binds a session or only explains one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Advances round robin and lets a half-open breaker admit this binding
    /// as its probe; creates a pool entry for an override target if needed.
    Bind,
    /// Changes nothing.
    Explain,
}

/// What decided a binding.
pub(crate) enum Source {
    Local(Arc<LocalOverride>),
    Cluster(Arc<Override>),
    Rule,
}

impl Source {
    /// The deciding override, if any.
    pub(crate) fn override_ref(&self) -> Option<&Override> {
        match self {
            Source::Local(o) => Some(&o.o),
            Source::Cluster(o) => Some(o),
            Source::Rule => None,
        }
    }
}

/// The outcome of routing one binding, with the trail that explains it.
pub(crate) struct Decision {
    pub(crate) service: String,
    pub(crate) strategy: Strategy,
    pub(crate) source: Source,
    /// What the strategy hashed or looked up: `user_id=42`, `realm_id=2`.
    pub(crate) hash_key: String,
    /// Endpoints in the order the strategy tries them.
    pub(crate) candidates: Vec<Arc<Endpoint>>,
    pub(crate) endpoint: Result<Arc<Endpoint>, RequestError>,
    /// Human-readable decision trail.
    pub(crate) why: String,
    /// The region tried first, if the service prefers one.
    pub(crate) preferred_region: Option<String>,
    /// The chosen endpoint's region, if it has one.
    pub(crate) endpoint_region: Option<String>,
}

/// Routes one binding. Fails only for an unknown service; every other
/// outcome (including "no endpoint available") is in [`Decision::endpoint`].
pub(crate) fn decide(
    routes: &RouteTable,
    local: &Overrides,
    pool: &BackendPool,
    key: &RouteKey,
    regions: &Regions<'_>,
    now_ms: u64,
    mode: Mode,
) -> Result<Decision, RequestError> {
    let svc = routes
        .services
        .get(&key.service)
        .ok_or(RequestError::NoService(key.service))?;
    let mut d = Decision {
        service: svc.name.clone(),
        strategy: svc.strategy,
        source: Source::Rule,
        hash_key: String::new(),
        candidates: Vec::new(),
        endpoint: Err(RequestError::NoHealthyEndpoint {
            service: svc.name.clone(),
        }),
        why: String::new(),
        preferred_region: None,
        endpoint_region: None,
    };
    let source = match local.find(key, now_ms) {
        Some(o) => Source::Local(o),
        None => most_specific(&routes.cluster_overrides, |o| o, key, now_ms)
            .map_or(Source::Rule, |o| Source::Cluster(o.clone())),
    };
    if source.override_ref().is_some() {
        pinned(&mut d, source, svc.strategy, pool, mode);
        return Ok(d);
    }
    let now = Instant::now();
    let available = |e: &Endpoint| e.available(now, mode == Mode::Bind);
    match svc.strategy {
        Strategy::RoundRobin => {
            let n = svc.endpoints.len();
            let start = match mode {
                Mode::Bind => svc.rr.fetch_add(1, Ordering::Relaxed),
                Mode::Explain => svc.rr.load(Ordering::Relaxed),
            };
            d.candidates = (0..n)
                .map(|i| svc.endpoints[(start + i) % n].clone())
                .collect();
            let up = d.candidates.iter().filter(|e| available(e)).count();
            d.why = format!(
                "round_robin: the next available endpoint in rotation ({up} of {n} available)"
            );
        }
        Strategy::ConsistentHash => {
            d.hash_key = format!("user_id={}", key.user);
            d.candidates = hash::rank(key.user, &svc.endpoints, |e| e.key_hash())
                .into_iter()
                .cloned()
                .collect();
            d.why = "consistent_hash: the user's highest-ranked available endpoint".into();
        }
        Strategy::Realm => {
            realm(&mut d, routes, key.realm, available);
            return Ok(d);
        }
    }
    let in_region = prefer_region(&mut d, svc, regions);
    first_available(&mut d, &available);
    if let Ok(ep) = &d.endpoint {
        d.endpoint_region = svc.region_of(ep).map(str::to_string);
        if let (Some(want), Some(n)) = (&d.preferred_region, in_region)
            && d.endpoint_region.as_deref() != Some(want.as_str())
        {
            d.why.push_str(&format!(
                "; none of the {n} endpoint(s) in {want} is available: fell back to {}",
                d.endpoint_region
                    .as_deref()
                    .unwrap_or("an endpoint without a region")
            ));
        }
    }
    Ok(d)
}

/// Moves the candidates in the preferred region to the front (keeping
/// the strategy's order within each part); returns how many there are.
fn prefer_region(d: &mut Decision, svc: &Service, regions: &Regions<'_>) -> Option<usize> {
    let (want, whose) = match svc.prefer_region {
        PreferRegion::None => return None,
        PreferRegion::Gateway => (regions.gateway?, "the gateway's"),
        PreferRegion::Client => match (regions.client, regions.gateway) {
            (Some(c), _) => (c, "the client's"),
            (None, Some(g)) => (g, "the gateway's (the client named none)"),
            (None, None) => return None,
        },
    };
    let (mut first, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut d.candidates)
        .into_iter()
        .partition(|e| svc.region_of(e) == Some(want));
    let n = first.len();
    first.extend(rest);
    d.candidates = first;
    d.preferred_region = Some(want.to_string());
    d.why.push_str(&format!(
        "; prefers region {want}, {whose}: {n} endpoint(s) there"
    ));
    Some(n)
}

/// An override names the endpoint: no strategy, no fallback.
fn pinned(d: &mut Decision, source: Source, rule: Strategy, pool: &BackendPool, mode: Mode) {
    let Some(o) = source.override_ref() else {
        return;
    };
    let scope = if matches!(source, Source::Local(_)) {
        "local"
    } else {
        "cluster"
    };
    let ep = match mode {
        Mode::Bind => Some(pool.endpoint(&o.target)),
        Mode::Explain => pool.get(&o.target),
    };
    d.why = format!(
        "{scope} override {} by {} ({}) matches {} and wins over the {rule} rule",
        o.id, o.author, o.reason, o.key
    );
    d.endpoint = match ep {
        Some(ep) if ep.healthy() => Ok(ep),
        _ => {
            d.why.push_str("; its target is down");
            Err(RequestError::BackendUnavailable {
                endpoint: format!("{} (pinned by override {})", o.target, o.id),
            })
        }
    };
    d.source = source;
}

/// A realm lives on exactly one game server: no fallback.
fn realm(d: &mut Decision, routes: &RouteTable, realm: u32, available: impl Fn(&Endpoint) -> bool) {
    d.hash_key = format!("realm_id={realm}");
    let Some(ep) = routes.realms.get(&realm) else {
        d.why = format!("realm: realm {realm} is not in the realm map (requests get ERROR 104)");
        d.endpoint = Err(RequestError::NoRealm {
            service: d.service.clone(),
            realm,
        });
        return;
    };
    d.candidates = vec![ep.clone()];
    d.why = format!("realm: realm {realm} maps to {}", ep.addr);
    d.endpoint = if available(ep) {
        Ok(ep.clone())
    } else {
        d.why.push_str(", which is unavailable");
        Err(RequestError::BackendUnavailable {
            endpoint: ep.addr.to_string(),
        })
    };
}

/// The first available candidate, in the strategy's order.
fn first_available(d: &mut Decision, available: &impl Fn(&Endpoint) -> bool) {
    match d.candidates.iter().position(|e| available(e)) {
        Some(i) => {
            if i > 0 {
                d.why.push_str(&format!(
                    "; the {i} endpoint(s) before it are unavailable (down, circuit open, or drain/maint)"
                ));
            }
            d.endpoint = Ok(d.candidates[i].clone());
        }
        None => d
            .why
            .push_str("; no endpoint is available (down, circuit open, or drain/maint)"),
    }
}

/// The endpoint for a new binding ([`decide`] in [`Mode::Bind`]).
pub(crate) fn resolve(
    routes: &RouteTable,
    local: &Overrides,
    pool: &BackendPool,
    key: &RouteKey,
    regions: &Regions<'_>,
) -> Result<Arc<Endpoint>, RequestError> {
    decide(
        routes,
        local,
        pool,
        key,
        regions,
        gg_runtime::clock::now_ms(),
        Mode::Bind,
    )?
    .endpoint
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gg_proto::model::{Bundle, Service as Rule};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::backend::AdminState;
    use crate::config::{BackendSettings, BreakerSettings};
    use crate::metrics::Metrics;

    /// Three real listeners (accepting and holding connections, so pooled
    /// connections come up) and a pool connected to them.
    struct World {
        pool: BackendPool,
        addrs: Vec<String>,
        stop: CancellationToken,
    }

    impl Drop for World {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    async fn world() -> World {
        let stop = CancellationToken::new();
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(l.local_addr().unwrap().to_string());
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        Ok((s, _)) = l.accept() => held.push(s),
                    }
                }
            });
        }
        let pool = BackendPool::new(crate::backend::conn::ConnCtx {
            gateway_id: "gw-test".into(),
            settings: BackendSettings {
                connections_per_endpoint: 1,
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(1),
                backoff_initial: Duration::from_millis(10),
                backoff_max: Duration::from_millis(50),
                queue: 16,
                queue_bytes: 1 << 20,
                ping_interval: Duration::from_secs(60),
                tls_ca: Vec::new(),
            },
            breaker: BreakerSettings {
                failure_threshold: 2,
                open: Duration::from_secs(60),
                open_max: Duration::from_secs(60),
            },
            max_frame_bytes: 1 << 20,
            metrics: Arc::new(Metrics::new()),
            tracker: TaskTracker::new(),
            shutdown: stop.clone(),
            rooms: Arc::new(crate::rooms::Rooms::new(false, Arc::new(Metrics::new()))),
            workers: crate::workers::Workers::current_runtime(),
        });
        World { pool, addrs, stop }
    }

    fn bundle(w: &World) -> Bundle {
        let rule = |name: &str, id, strategy, eps: &[String]| Rule {
            name: name.into(),
            id,
            strategy,
            endpoints: eps.to_vec(),
            prefer_region: gg_proto::model::PreferRegion::None,
            protocol: gg_proto::model::BackendProtocol::Frame,
            tls: false,
        };
        Bundle {
            services: vec![
                rule("rr", 1, Strategy::RoundRobin, &w.addrs),
                rule("ch", 2, Strategy::ConsistentHash, &w.addrs),
                rule("game", 3, Strategy::Realm, &[]),
            ],
            realms: [(7, w.addrs[2].clone())].into(),
            ..Bundle::default()
        }
    }

    async fn up(table: &RouteTable) {
        for _ in 0..200 {
            if table.services[&1].endpoints.iter().all(|e| e.healthy()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("pool did not connect");
    }

    fn key(service: u16, realm: u32, user: u64) -> RouteKey {
        RouteKey {
            service,
            realm,
            user,
            session: 99,
        }
    }

    fn addr(d: &Decision) -> String {
        d.endpoint
            .as_ref()
            .map(|e| e.addr.to_string())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn explain_names_what_bind_takes_and_changes_nothing() {
        let w = world().await;
        let t = RouteTable::build(&bundle(&w), &w.pool);
        up(&t).await;
        let local = Overrides::default();
        let d = |mode| {
            decide(
                &t,
                &local,
                &w.pool,
                &key(1, 0, 1),
                &Regions::default(),
                0,
                mode,
            )
            .unwrap()
        };
        let first = addr(&d(Mode::Explain));
        assert_eq!(addr(&d(Mode::Explain)), first, "explain does not rotate");
        assert_eq!(addr(&d(Mode::Bind)), first, "bind takes what explain named");
        let second = addr(&d(Mode::Explain));
        assert_ne!(second, first, "bind advanced the rotation");
        assert_eq!(addr(&d(Mode::Bind)), second);
    }

    #[tokio::test]
    async fn consistent_hash_falls_back_past_unavailable_endpoints() {
        let w = world().await;
        let t = RouteTable::build(&bundle(&w), &w.pool);
        up(&t).await;
        let local = Overrides::default();
        let d = decide(
            &t,
            &local,
            &w.pool,
            &key(2, 0, 42),
            &Regions::default(),
            0,
            Mode::Explain,
        )
        .unwrap();
        assert_eq!(d.hash_key, "user_id=42");
        assert_eq!(d.candidates.len(), 3);
        assert_eq!(addr(&d), d.candidates[0].addr.to_string());
        d.candidates[0].set_admin_state(AdminState::Drain);
        let again = decide(
            &t,
            &local,
            &w.pool,
            &key(2, 0, 42),
            &Regions::default(),
            0,
            Mode::Bind,
        )
        .unwrap();
        assert_eq!(addr(&again), d.candidates[1].addr.to_string());
        assert!(
            again.why.contains("1 endpoint(s) before it"),
            "{}",
            again.why
        );
        // An open circuit counts as unavailable too.
        for _ in 0..2 {
            d.candidates[1].breaker.on_failure(Instant::now());
        }
        let third = decide(
            &t,
            &local,
            &w.pool,
            &key(2, 0, 42),
            &Regions::default(),
            0,
            Mode::Explain,
        )
        .unwrap();
        assert_eq!(addr(&third), d.candidates[2].addr.to_string());
        d.candidates[2].set_admin_state(AdminState::Maint);
        let none = decide(
            &t,
            &local,
            &w.pool,
            &key(2, 0, 42),
            &Regions::default(),
            0,
            Mode::Bind,
        )
        .unwrap();
        assert!(matches!(
            none.endpoint,
            Err(RequestError::NoHealthyEndpoint { .. })
        ));
    }

    #[tokio::test]
    async fn realm_has_no_fallback_and_unknown_ids_are_errors() {
        let w = world().await;
        let t = RouteTable::build(&bundle(&w), &w.pool);
        up(&t).await;
        let local = Overrides::default();
        let d = decide(
            &t,
            &local,
            &w.pool,
            &key(3, 7, 1),
            &Regions::default(),
            0,
            Mode::Bind,
        )
        .unwrap();
        assert_eq!(addr(&d), w.addrs[2]);
        let missing = decide(
            &t,
            &local,
            &w.pool,
            &key(3, 8, 1),
            &Regions::default(),
            0,
            Mode::Bind,
        )
        .unwrap();
        assert!(matches!(
            missing.endpoint,
            Err(RequestError::NoRealm { realm: 8, .. })
        ));
        assert!(matches!(
            decide(
                &t,
                &local,
                &w.pool,
                &key(9, 0, 1),
                &Regions::default(),
                0,
                Mode::Explain
            ),
            Err(RequestError::NoService(9))
        ));
    }

    #[tokio::test]
    async fn local_beats_cluster_beats_rule_and_expiry_ends_an_override() {
        let w = world().await;
        let mut b = bundle(&w);
        let ovr = |id: &str, target: &str, expires| Override {
            id: id.into(),
            key: RouteKey {
                service: 2,
                user: 42,
                ..Default::default()
            },
            target: target.into(),
            reason: "test".into(),
            author: "me".into(),
            expires_at_ms: expires,
            created_at_ms: 0,
        };
        b.overrides = vec![ovr("c1", &w.addrs[1], 1000)];
        let t = RouteTable::build(&b, &w.pool);
        up(&t).await;
        let local = Overrides::default();
        let d = decide(
            &t,
            &local,
            &w.pool,
            &key(2, 0, 42),
            &Regions::default(),
            10,
            Mode::Explain,
        )
        .unwrap();
        assert_eq!(d.source.override_ref().map(|o| o.id.as_str()), Some("c1"));
        assert!(d.why.starts_with("cluster override c1"), "{}", d.why);
        assert_eq!(addr(&d), w.addrs[1]);
        local.set(LocalOverride {
            o: ovr("l1", &w.addrs[0], 0),
            move_existing: false,
        });
        let d = decide(
            &t,
            &local,
            &w.pool,
            &key(2, 0, 42),
            &Regions::default(),
            10,
            Mode::Bind,
        )
        .unwrap();
        assert!(matches!(d.source, Source::Local(_)));
        assert_eq!(addr(&d), w.addrs[0]);
        assert!(local.delete("l1"));
        let expired = decide(
            &t,
            &local,
            &w.pool,
            &key(2, 0, 42),
            &Regions::default(),
            1000,
            Mode::Bind,
        )
        .unwrap();
        assert!(matches!(expired.source, Source::Rule));
        // Other users follow the rule.
        let other = decide(
            &t,
            &local,
            &w.pool,
            &key(2, 0, 43),
            &Regions::default(),
            10,
            Mode::Bind,
        )
        .unwrap();
        assert!(matches!(other.source, Source::Rule));
    }

    #[tokio::test]
    async fn endpoints_nothing_names_leave_the_pool() {
        let w = world().await;
        let t = RouteTable::build(&bundle(&w), &w.pool);
        up(&t).await;
        assert_eq!(w.pool.endpoints().len(), 3);
        let keep: std::collections::HashSet<&str> =
            [w.addrs[0].as_str(), w.addrs[2].as_str()].into();
        let gone = w.pool.retain(&keep);
        assert_eq!(gone.len(), 1);
        assert_eq!(&*gone[0], w.addrs[1].as_str());
        let mut left: Vec<String> = w
            .pool
            .endpoints()
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        let mut want = vec![w.addrs[0].clone(), w.addrs[2].clone()];
        left.sort();
        want.sort();
        assert_eq!(left, want);
        // The retired endpoint is no longer offered even by an old table.
        let ep = &t.services[&1].endpoints[1];
        assert!(ep.retired());
        assert!(!ep.available(Instant::now(), false));
    }
}
