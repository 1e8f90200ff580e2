//! DNS discovery: a service endpoint written `dns://name:port` stands for
//! every address `name` resolves to (A and AAAA), e.g. a Kubernetes
//! headless Service. Each gateway re-resolves the names in its rules every
//! `discovery.interval_ms` and, when an answer changes, rebuilds its route
//! table from the applied bundle: new addresses get pooled connections,
//! addresses that disappeared are retired like removed endpoints (their
//! sessions move first). A failed lookup (timeout, SERVFAIL) keeps the
//! last answer; a name that does not exist (or has no address) has none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gg_proto::model::{Bundle, DNS_PREFIX, split_region};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Gateway;
use crate::config::DiscoverySettings;

/// Most addresses taken from one answer (each gets pooled connections):
/// a DNS server cannot make a gateway open unbounded connections.
pub(crate) const MAX_ADDRESSES: usize = 256;

/// Resolved `dns://` endpoints, and the resolver.
pub(crate) struct Discovery {
    resolver: Option<TokioResolver>,
    interval: Duration,
    /// `dns://name:port` → sorted `ip:port` list of the last good answer.
    resolved: Mutex<BTreeMap<String, Vec<String>>>,
    /// A bundle named a `dns://` endpoint not resolved yet.
    wake: Notify,
}

impl Discovery {
    pub(crate) fn new(cfg: &DiscoverySettings) -> Discovery {
        let mut opts = ResolverOpts::default();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Every round asks again: the answer is the source of truth.
        opts.cache_size = 0;
        opts.timeout = cfg.timeout;
        opts.attempts = 1;
        let builder = if cfg.nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| warn!(error = %e, "no system resolver configuration; dns:// endpoints stay empty"))
                .ok()
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    ns
                })
                .collect();
            Some(TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            ))
        };
        let resolver = builder.and_then(|b| {
            b.with_options(opts)
                .build()
                .map_err(|e| warn!(error = %e, "cannot build the DNS resolver; dns:// endpoints stay empty"))
                .ok()
        });
        Discovery {
            resolver,
            interval: cfg.interval,
            resolved: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
        }
    }

    /// `bundle` with each `dns://` endpoint replaced by its addresses.
    pub(crate) fn expand(&self, bundle: &Bundle) -> Bundle {
        let resolved = self.resolved.lock();
        let mut out = bundle.clone();
        let mut unresolved = false;
        for s in &mut out.services {
            if !s.endpoints.iter().any(|e| e.starts_with(DNS_PREFIX)) {
                continue;
            }
            let mut eps = Vec::with_capacity(s.endpoints.len());
            for e in &s.endpoints {
                let (addr, region) = split_region(e);
                if addr.starts_with(DNS_PREFIX) {
                    match resolved.get(addr) {
                        // Each address keeps the name's region.
                        Some(addrs) => eps.extend(addrs.iter().map(|a| match region {
                            Some(r) => format!("{a}@{r}"),
                            None => a.clone(),
                        })),
                        None => unresolved = true,
                    }
                } else {
                    eps.push(e.clone());
                }
            }
            eps.dedup();
            s.endpoints = eps;
        }
        if unresolved {
            self.wake.notify_one();
        }
        out
    }

    /// Resolves `name:port` (without the prefix); `Ok(None)` when the lookup
    /// failed and the last answer should stand.
    async fn resolve(&self, ep: &str) -> Option<Vec<String>> {
        let resolver = self.resolver.as_ref()?;
        let (name, port) = ep.strip_prefix(DNS_PREFIX)?.rsplit_once(':')?;
        match resolver.lookup_ip(name).await {
            Ok(ips) => {
                let set: BTreeSet<String> = ips
                    .iter()
                    .map(|ip| std::net::SocketAddr::new(ip, port.parse().unwrap_or(0)).to_string())
                    .collect();
                if set.len() > MAX_ADDRESSES {
                    warn!(
                        endpoint = ep,
                        addresses = set.len(),
                        "DNS answer has too many addresses; using the first {MAX_ADDRESSES}"
                    );
                }
                Some(set.into_iter().take(MAX_ADDRESSES).collect())
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Some(Vec::new()),
            Err(e) => {
                warn!(endpoint = ep, error = %e, "DNS lookup failed; keeping the last answer");
                None
            }
        }
    }
}

/// Re-resolves every `dns://` endpoint of the applied rules each interval
/// (or at once when a new one appears); rebuilds the routes on a change.
pub(crate) async fn run(gw: Arc<Gateway>, stop: CancellationToken) {
    let d = &gw.routing.discovery;
    loop {
        let names: BTreeSet<String> = (gw.routing.source().services.iter())
            .flat_map(|s| s.endpoints.iter())
            .map(|e| split_region(e).0)
            .filter(|e| e.starts_with(DNS_PREFIX))
            .map(str::to_string)
            .collect();
        let mut changed = false;
        for name in &names {
            let Some(addrs) = d.resolve(name).await else {
                continue;
            };
            let mut resolved = d.resolved.lock();
            if resolved.get(name) != Some(&addrs) {
                info!(endpoint = %name, addresses = ?addrs, "DNS answer changed");
                gw.metrics
                    .discovery_addresses
                    .with_label_values(&[name.as_str()])
                    .set(addrs.len() as i64);
                resolved.insert(name.clone(), addrs);
                changed = true;
            }
        }
        {
            // Names no rule uses any more are forgotten.
            let mut resolved = d.resolved.lock();
            let before = resolved.len();
            resolved.retain(|k, _| names.contains(k));
            changed |= resolved.len() != before;
        }
        if changed {
            gw.routing.rebuild();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(d.interval) => {}
            _ = d.wake.notified() => {}
        }
    }
}
