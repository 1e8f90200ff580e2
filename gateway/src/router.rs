//! Routing: an immutable [`RouteTable`] snapshot (swapped whole through
//! `ArcSwap` when config changes) that maps `(service_type, realm_id,
//! user_id)` to a backend [`Endpoint`]. Sessions pin the result per service,
//! so the table is consulted once per session and service, not per frame.

pub mod hash;
pub mod overrides;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::{BackendPool, Endpoint};
use crate::config::{RoutesConfig, Strategy};
use crate::error::RequestError;
use overrides::Overrides;

/// One service with its endpoints resolved to pool entries.
pub struct Service {
    pub name: String,
    pub id: u16,
    pub strategy: Strategy,
    pub endpoints: Vec<Arc<Endpoint>>,
    rr: AtomicUsize,
}

/// Everything needed to route, built from one validated config.
pub struct RouteTable {
    pub services: HashMap<u16, Service>,
    pub realms: HashMap<u32, Arc<Endpoint>>,
    /// Cluster-wide overrides from the control plane (below local ones).
    pub cluster_overrides: Vec<Arc<overrides::Override>>,
}

impl RouteTable {
    /// Resolves a validated routes config against the pool (creating pool
    /// entries, and their connections, for new endpoints).
    pub fn build(
        cfg: &RoutesConfig,
        pool: &BackendPool,
        cluster_overrides: Vec<overrides::Override>,
    ) -> RouteTable {
        let services = cfg
            .services
            .iter()
            .map(|s| {
                let svc = Service {
                    name: s.name.clone(),
                    id: s.id,
                    strategy: s.strategy,
                    endpoints: s.endpoints.iter().map(|e| pool.endpoint(e)).collect(),
                    rr: AtomicUsize::new(0),
                };
                (s.id, svc)
            })
            .collect();
        let realms = cfg
            .realms
            .iter()
            .map(|(realm, ep)| (*realm, pool.endpoint(ep)))
            .collect();
        for o in &cluster_overrides {
            pool.endpoint(&o.target);
        }
        RouteTable {
            services,
            realms,
            cluster_overrides: cluster_overrides.into_iter().map(Arc::new).collect(),
        }
    }

    /// The most specific unexpired cluster override for a binding.
    pub fn cluster_override(
        &self,
        service: u16,
        realm: u32,
        user: u64,
        session: u64,
        now_ms: u64,
    ) -> Option<Arc<overrides::Override>> {
        overrides::most_specific(
            &self.cluster_overrides,
            service,
            realm,
            user,
            session,
            now_ms,
        )
    }

    /// Looks up a service by its numeric id or by name (HTTP paths use either).
    pub fn service_by_key(&self, key: &str) -> Option<&Service> {
        match key.parse::<u16>() {
            Ok(id) => self.services.get(&id),
            Err(_) => self.services.values().find(|s| s.name == key),
        }
    }

    /// Picks the endpoint for a new binding of `(service, realm, user)`.
    /// Unhealthy endpoints are skipped where the strategy has alternatives.
    pub fn pick(
        &self,
        service_type: u16,
        realm: u32,
        user: u64,
    ) -> Result<Arc<Endpoint>, RequestError> {
        let svc = self
            .services
            .get(&service_type)
            .ok_or(RequestError::NoService(service_type))?;
        let unhealthy = || RequestError::NoHealthyEndpoint {
            service: svc.name.clone(),
        };
        match svc.strategy {
            Strategy::RoundRobin => {
                let n = svc.endpoints.len();
                let start = svc.rr.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &svc.endpoints[(start + i) % n])
                    .find(|e| e.available())
                    .cloned()
                    .ok_or_else(unhealthy)
            }
            Strategy::ConsistentHash => hash::rank(user, &svc.endpoints, |e| e.key_hash())
                .into_iter()
                .find(|e| e.available())
                .cloned()
                .ok_or_else(unhealthy),
            Strategy::Realm => {
                let ep = self
                    .realms
                    .get(&realm)
                    .ok_or_else(|| RequestError::NoRealm {
                        service: svc.name.clone(),
                        realm,
                    })?;
                // A realm lives on exactly one game server: no fallback.
                if ep.available() {
                    Ok(ep.clone())
                } else {
                    Err(RequestError::BackendUnavailable {
                        endpoint: ep.addr.to_string(),
                    })
                }
            }
        }
    }
}

/// The outcome of routing one binding, with the trail that explains it.
pub struct Decision {
    pub endpoint: Arc<Endpoint>,
    pub override_id: Option<String>,
    pub why: String,
}

/// Resolves a binding: a matching local override wins over the rule.
pub fn resolve(
    routes: &RouteTable,
    overrides: &Overrides,
    pool: &BackendPool,
    service: u16,
    realm: u32,
    user: u64,
    session: u64,
) -> Result<Decision, RequestError> {
    let now = overrides::now_ms();
    let (local, cluster) = (
        overrides.find(service, realm, user, session, now),
        routes.cluster_override(service, realm, user, session, now),
    );
    if let Some((o, scope)) = local
        .map(|o| (o, "local"))
        .or(cluster.map(|o| (o, "cluster")))
    {
        let ep = pool.endpoint(&o.target);
        if !ep.healthy() {
            return Err(RequestError::BackendUnavailable {
                endpoint: format!("{} (pinned by override {})", o.target, o.id),
            });
        }
        return Ok(Decision {
            endpoint: ep,
            why: format!("{scope} override {} by {}: {}", o.id, o.author, o.reason),
            override_id: Some(o.id.clone()),
        });
    }
    let endpoint = routes.pick(service, realm, user)?;
    let strategy = routes
        .services
        .get(&service)
        .map_or("?", |s| s.strategy.name());
    Ok(Decision {
        why: format!("rule {strategy}"),
        endpoint,
        override_id: None,
    })
}
