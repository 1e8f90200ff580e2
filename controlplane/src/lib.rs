//! Game Gateway control plane.
//!
//! Owns the routing config (services, realm map, cluster overrides) in Redis
//! with revisions and history, fans it out to every gateway over the
//! `GatewaySync` stream and records which gateway applied which revision,
//! keeps the fleet registry (leases) and the session-ownership directory
//! that backends query. It holds no state of its own: any number of replicas
//! run against one Redis (single node or Cluster).
//!
//! It does not route client traffic and does not talk to backends.

#![warn(unreachable_pub)]

pub mod api;
pub mod config;
mod gwadmin;
pub mod ops;
mod policy;
mod presence;
mod push;
pub mod rooms;
pub mod store;
pub mod sync;
pub mod write;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gg_proto::pb::controlplane as pb;
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, RedisTarget};
use crate::store::{ConfigStore as _, Conn, ConnKind, Store};

/// Shared state of one replica.
pub struct Cp {
    pub cfg: Config,
    pub store: Store,
    /// The latest known config; gateways' streams follow it.
    pub current: watch::Sender<Arc<pb::Versioned>>,
    /// Wakes the reconcile loop (pub/sub nudge or a local write).
    pub nudge: Notify,
    store_ok: AtomicBool,
    pub metrics: CpMetrics,
    /// Serialises this replica's config writes (CAS protects across replicas).
    pub write_lock: tokio::sync::Mutex<()>,
    /// Sessions this replica's session policy closed recently (a session
    /// two checks both chose is closed, and counted, once).
    pub(crate) policy_recent:
        parking_lot::Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    /// Which gateway streams here want which rooms.
    pub rooms: rooms::Hub,
    /// Directory batches in Redis at once ([`DIRECTORY_WRITES`]).
    pub directory_slots: tokio::sync::Semaphore,
}

/// Directory batches one replica writes to Redis at once; the other
/// streams wait (and so read their gateways' next batches later).
pub const DIRECTORY_WRITES: usize = 8;

pub struct CpMetrics {
    pub registry: Registry,
    pub revision: IntGauge,
    pub writes: IntCounter,
    pub directory_events: IntCounter,
    pub directory_roundtrips: IntCounter,
    pub directory_commands: IntCounter,
    pub directory_errors: IntCounter,
    pub directory_retries: IntCounter,
    pub sync_streams: IntGauge,
    pub snapshots_sent: IntCounter,
    /// 1 while Redis answers the health PING, else 0.
    pub store_up: IntGauge,
    /// Sessions closed by the session policy.
    pub policy_closes: IntCounter,
    /// gRPC calls served, by method (observed by the runtime's gRPC layer).
    pub rpc_seconds: prometheus::HistogramVec,
    pub room_publishes: IntCounter,
    pub room_publish_errors: IntCounter,
    pub room_log_read: IntCounter,
    pub room_forwarded: IntCounter,
    pub room_replays: IntCounter,
    pub room_ops: IntCounter,
}

/// Every Redis call of this process, by command (`pipeline` for a
/// pipeline or transaction). Process-wide because the connection exists
/// before the metrics; each registry of [`CpMetrics`] exports it.
#[allow(clippy::expect_used)]
pub(crate) static REDIS_SECONDS: std::sync::LazyLock<prometheus::HistogramVec> =
    std::sync::LazyLock::new(|| {
        prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "cp_redis_call_duration_seconds",
                "Redis calls (commands, pipelines, scripts) until the answer or the timeout, by command.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
            &["command"],
        )
        .expect("valid metric")
    });

impl CpMetrics {
    #[allow(clippy::expect_used)]
    fn new() -> CpMetrics {
        let r = Registry::new();
        let c = |n: &str, h: &str| {
            let m = IntCounter::new(n, h).expect("valid metric");
            r.register(Box::new(m.clone())).expect("registered once");
            m
        };
        let g = |n: &str, h: &str| {
            let m = IntGauge::new(n, h).expect("valid metric");
            r.register(Box::new(m.clone())).expect("registered once");
            m
        };
        CpMetrics {
            revision: g("cp_config_revision", "Config revision this replica knows."),
            writes: c(
                "cp_config_writes_total",
                "Config revisions written by this replica.",
            ),
            directory_events: c(
                "cp_directory_events_total",
                "Session open/close events written to the directory.",
            ),
            directory_roundtrips: c(
                "cp_directory_roundtrips_total",
                "Redis round trips used for directory writes (one per batch).",
            ),
            directory_commands: c(
                "cp_directory_commands_total",
                "Redis commands sent for directory writes.",
            ),
            directory_errors: c(
                "cp_directory_errors_total",
                "Directory batches that failed to write (events dropped).",
            ),
            directory_retries: c(
                "cp_directory_retries_total",
                "Directory batches retried after a failed Redis round trip (each is dropped after 3 retries).",
            ),
            sync_streams: g(
                "cp_sync_streams",
                "Gateway Sync streams open on this replica.",
            ),
            snapshots_sent: c(
                "cp_snapshots_sent_total",
                "Config snapshots sent to gateways.",
            ),
            room_publishes: c(
                "cp_room_publishes_total",
                "Room messages published through this replica (numbered, kept, logged).",
            ),
            room_publish_errors: c(
                "cp_room_publish_errors_total",
                "Room publishes whose Redis script failed (outcome unknown).",
            ),
            room_log_read: c(
                "cp_room_log_read_total",
                "Room messages this replica read from the fan-out log.",
            ),
            room_forwarded: c(
                "cp_room_forwarded_total",
                "Room messages handed to gateway Sync streams (once per gateway with members).",
            ),
            room_replays: c(
                "cp_room_replays_total",
                "Room history replays for gateways recovering a gap.",
            ),
            room_ops: c(
                "cp_room_membership_changes_total",
                "Room joins and leaves written to the member index.",
            ),
            policy_closes: c(
                "cp_session_policy_closes_total",
                "Sessions closed because their user had more than session_policy.max_sessions_per_user.",
            ),
            store_up: {
                let m = g(
                    "cp_store_up",
                    "1 while Redis answers this replica's health PING, 0 while it does not.",
                );
                m.set(1);
                m
            },
            rpc_seconds: {
                let h = prometheus::HistogramVec::new(
                    prometheus::HistogramOpts::new(
                        "cp_rpc_duration_seconds",
                        "gRPC calls served until the response starts (a stream: until it opens), by method.",
                    )
                    .buckets(gg_runtime::grpc::RPC_BUCKETS.to_vec()),
                    &["method"],
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            registry: {
                r.register(Box::new(REDIS_SECONDS.clone()))
                    .expect("registered once");
                r
            },
        }
    }
}

impl Cp {
    /// Room history and fan-out settings for the store.
    pub fn room_limits(&self) -> store::RoomLimits {
        let r = &self.cfg.rooms;
        store::RoomLimits {
            history_size: r.history_size,
            history_ttl_ms: r.history_ttl_ms,
            log_keep: r.log_keep,
            resume_keep_ms: r.resume_keep_ms,
        }
    }

    pub fn store_ok(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed)
    }

    fn set_store_ok(&self, ok: bool) {
        self.metrics.store_up.set(i64::from(ok));
        if self.store_ok.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                info!("redis reachable again");
            } else {
                warn!(
                    "redis unreachable: serving the last known config, writes fail with UNAVAILABLE"
                );
            }
        }
    }

    /// Publishes a newer config to this replica's gateway streams.
    pub fn publish(&self, v: pb::Versioned) {
        self.metrics.revision.set(v.revision as i64);
        self.current.send_if_modified(|cur| {
            if cur.revision == v.revision && cur.epoch == v.epoch {
                false
            } else {
                *cur = Arc::new(v);
                true
            }
        });
    }
}

/// A client for one Redis node; `rediss://` URLs verify the server against
/// `tls_ca` (PEM) when given, else against the system trust store.
pub fn client(url: &str, tls_ca: Option<&[u8]>) -> anyhow::Result<redis::Client> {
    let res = match tls_ca {
        Some(ca) if url.starts_with("rediss://") => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        _ => redis::Client::open(url),
    };
    res.map_err(|e| anyhow::anyhow!("redis url {}: {e}", redact(url)))
}

/// Connects to Redis, failing within `timeout` with a message that says
/// what to check: not reachable, or reachable but refusing the credentials.
pub async fn connect(
    target: &RedisTarget,
    tls_ca: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<Conn> {
    let kind = match target {
        RedisTarget::Single(url) => ConnKind::Single(connect_single(url, tls_ca, timeout).await?),
        RedisTarget::Sentinel { nodes, master } => {
            let sc = redis::sentinel::SentinelClient::build(
                nodes.clone(),
                master.clone(),
                None,
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(|e| anyhow::anyhow!("redis sentinel {nodes:?}: {e}"))?;
            let c = tokio::time::timeout(timeout, store::SentinelConn::connect(sc))
                .await
                .map_err(|_| anyhow::anyhow!("cannot reach Redis through sentinels {nodes:?} (timed out) — are they running?"))?
                .map_err(|e| anyhow::anyhow!("cannot reach Redis master {master:?} through sentinels {nodes:?} ({}) — is it running?", redis_error(&e)))?;
            ConnKind::Sentinel(Arc::new(c))
        }
        RedisTarget::Cluster(nodes) => {
            let client = redis::cluster::ClusterClient::new(nodes.clone())?;
            let c = tokio::time::timeout(timeout, client.get_async_connection())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("cannot reach the Redis cluster at {nodes:?} (timed out)")
                })?
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot reach the Redis cluster at {nodes:?} ({})",
                        redis_error(&e)
                    )
                })?;
            ConnKind::Cluster(c)
        }
    };
    Ok(Conn::new(kind, timeout))
}

/// One node: a first connection and PING decide at once (refused, timed
/// out, or wrong credentials); then the reconnecting manager.
async fn connect_single(
    url: &str,
    tls_ca: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<redis::aio::ConnectionManager> {
    let client = client(url, tls_ca)?;
    let where_ = redact(url);
    let probe = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    match tokio::time::timeout(timeout, probe).await {
        Err(_) => anyhow::bail!(
            "cannot reach Redis at {where_} (no answer within {} ms) — is it running?",
            timeout.as_millis()
        ),
        Ok(Err(e)) if e.is_connection_refusal() || e.is_io_error() => {
            anyhow::bail!("cannot reach Redis at {where_} ({e}) — is it running?")
        }
        Ok(Err(e)) => anyhow::bail!("Redis at {where_}: {}", redis_error(&e)),
        Ok(Ok(_)) => {}
    }
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    tokio::time::timeout(
        timeout,
        redis::aio::ConnectionManager::new_with_config(client, cfg),
    )
    .await
    .map_err(|_| anyhow::anyhow!("cannot reach Redis at {where_} (timed out)"))?
    .map_err(|e| anyhow::anyhow!("Redis at {where_}: {}", redis_error(&e)))
}

/// A Redis error in the words an operator needs: credentials are named as
/// such, not reported as a timeout or a generic failure.
pub fn redis_error(e: &redis::RedisError) -> String {
    let text = e.to_string();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
        || text.contains("invalid password")
    {
        format!("authentication failed — check the user and password in redis.url ({text})")
    } else {
        text
    }
}

/// A Redis URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Bound listeners (port 0 welcome).
pub struct Listeners {
    pub grpc: TcpListener,
    pub ops: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
        let grpc = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (listen): {e}", cfg.listen))?;
        let ops = TcpListener::bind(cfg.ops_listen).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {} (ops_listen): {e}", cfg.ops_listen)
        })?;
        Ok(Listeners { grpc, ops })
    }

    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.grpc.local_addr()?, self.ops.local_addr()?))
    }
}

/// Runs a replica until `shutdown`: loads the config, serves gRPC and ops,
/// reconciles with Redis, sweeps dead gateways.
pub async fn run(
    cfg: Config,
    conn: Conn,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::new(conn);
    store
        .ping()
        .await
        .map_err(|e| anyhow::anyhow!("redis: {e}"))?;
    store.ensure_epoch().await?;
    let first = store.load().await?;
    info!(revision = first.revision, epoch = %first.epoch, "config loaded from redis");
    let cp = Arc::new(Cp {
        current: watch::Sender::new(Arc::new(first)),
        store,
        nudge: Notify::new(),
        store_ok: AtomicBool::new(true),
        policy_recent: parking_lot::Mutex::new(std::collections::HashMap::new()),
        rooms: rooms::Hub::default(),
        directory_slots: tokio::sync::Semaphore::new(DIRECTORY_WRITES),
        metrics: CpMetrics::new(),
        write_lock: tokio::sync::Mutex::new(()),
        cfg,
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(reconcile(cp.clone(), shutdown.clone()));
    tasks.spawn(health(cp.clone(), shutdown.clone()));
    tasks.spawn(sweep(cp.clone(), shutdown.clone()));
    tasks.spawn(rooms::run_log(cp.clone(), shutdown.clone()));
    if let RedisTarget::Single(url) = &cp.cfg.redis
        && let Ok(c) = client(url, cp.cfg.redis_tls_ca.as_deref())
    {
        tasks.spawn(subscribe(cp.clone(), c, shutdown.clone()));
    }
    tasks.spawn(ops::serve(cp.clone(), listeners.ops, shutdown.clone()));
    let res = api::serve(cp.clone(), listeners.grpc, shutdown.clone()).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    res
}

/// Periodic reconcile against the stored revision: catches every change
/// even when a pub/sub nudge was missed, and notices a wiped store.
async fn reconcile(cp: Arc<Cp>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(cp.cfg.reconcile) => {}
            _ = cp.nudge.notified() => {}
        }
        let res = async {
            let (rev, epoch) = cp.store.head().await?;
            if epoch.is_empty() {
                // The store was wiped: a new epoch tells gateways not to
                // compare revisions with the old ones.
                let e = cp.store.ensure_epoch().await?;
                warn!(epoch = %e, "redis has no epoch (store wiped?): started a new epoch");
            }
            let cur = cp.current.borrow().clone();
            if rev != cur.revision || epoch != cur.epoch || epoch.is_empty() {
                let v = cp.store.load().await?;
                info!(revision = v.revision, epoch = %v.epoch, "config changed in redis");
                cp.publish(v);
            }
            Ok::<(), store::StoreError>(())
        }
        .await;
        cp.set_store_ok(res.is_ok());
    }
}

/// How often readiness checks Redis actively.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// Active readiness: PING every [`HEALTH_EVERY`], each bounded by
/// `redis.timeout_ms`, so `/ready` turns 503 within about that much after
/// Redis dies and back as soon as it answers again.
async fn health(cp: Arc<Cp>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
        }
        let ok = cp.store.ping().await.is_ok();
        cp.set_store_ok(ok);
    }
}

/// Pub/sub nudge (single node): wakes the reconcile loop at once. Missing
/// a message only delays a change to the next reconcile tick.
async fn subscribe(cp: Arc<Cp>, client: redis::Client, shutdown: CancellationToken) {
    use futures_util::StreamExt;
    loop {
        let attempt = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(store::CHANNEL).await?;
            let mut msgs = ps.on_message();
            while msgs.next().await.is_some() {
                cp.nudge.notify_one();
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = attempt => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Removes gateways whose lease expired, with the sessions they owned.
async fn sweep(cp: Arc<Cp>, shutdown: CancellationToken) {
    let every = cp.cfg.lease / 3;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Ok((_, dead)) = cp.store.gateways().await else {
            continue;
        };
        for id in dead {
            match cp.store.sweep_gateway(&id, cp.room_limits()).await {
                Ok(n) => {
                    info!(gateway = %id, sessions = n, "gateway lease expired: removed it and its sessions")
                }
                Err(e) => {
                    warn!(gateway = %id, error = %e, "sweeping a dead gateway failed; will retry")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_passwords() {
        assert_eq!(super::redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(super::redact("redis://h:1"), "redis://h:1");
    }
}
