//! Game Gateway data plane.
//!
//! Owns the client port (TCP frames, WebSocket and HTTP told apart by
//! sniffing), the sharded session table, routing per `service_type`, the
//! pooled multiplexed backend connections, connection limits, drain on
//! shutdown and the ops HTTP port (`/health`, `/ready`, `/metrics`).
//! It does not own routing *policy* storage: rules come from a file
//! (standalone mode) and, later, from the control plane.
//!
//! [`serve`] takes already-bound listeners and a shutdown token so tests and
//! embedders can run a real gateway on port 0.

#![warn(unreachable_pub)]

pub(crate) mod admin;
pub(crate) mod backend;
pub(crate) mod client_auth;
pub mod config;
pub(crate) mod cpclient;
pub(crate) mod discovery;
pub(crate) mod drain;
pub(crate) mod error;
pub mod fuzzing;
pub(crate) mod limits;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod ops;
pub(crate) mod resume;
pub(crate) mod rooms;
pub(crate) mod router;
pub(crate) mod session;
pub mod workers;

/// Replies written through io_uring (`--io-uring`).
pub use backend::sendbatch::{active as io_uring_active, configure as use_io_uring};

/// The gateway's permessage-deflate codec (one message at a time, no
/// context takeover), for benchmarks.
#[doc(hidden)]
pub use listener::wsdeflate::{deflate as ws_deflate, inflate as ws_inflate};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::BackendPool;
use crate::config::Config;
use crate::drain::DrainCtl;
use crate::limits::ConnLimits;
use crate::metrics::Metrics;
use crate::resume::ResumeKeys;
use crate::router::RouteTable;
use crate::router::overrides::Overrides;
use crate::session::SessionIds;
use crate::session::table::SessionTable;

/// Everything a connection or session task needs, shared behind one `Arc`,
/// in the parts the modules use: the router and the control-plane client
/// work on [`Routing`], listeners and sessions on [`Clients`], drain and
/// shutdown on [`Lifecycle`].
pub struct Gateway {
    pub cfg: Config,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) routing: Routing,
    pub(crate) clients: Clients,
    pub(crate) life: Lifecycle,
    pub(crate) events: SessionEvents,
    /// Which local sessions are in which room.
    pub(crate) rooms: Arc<crate::rooms::Rooms>,
    /// Bound addresses, set once by [`serve`].
    pub(crate) addrs: OnceLock<BoundAddrs>,
    pub(crate) started: Instant,
    /// The runtimes connections are spread over (thread per core).
    pub(crate) workers: Arc<crate::workers::Workers>,
}

/// Where traffic goes: the routing snapshot, local overrides, the pool.
pub(crate) struct Routing {
    /// The routing snapshot; replaced whole, read lock-free.
    pub(crate) routes: ArcSwap<RouteTable>,
    /// Gateway-local route overrides (admin API).
    pub(crate) overrides: Overrides,
    pub(crate) backends: BackendPool,
    routes_loaded: AtomicBool,
    /// (revision, epoch) of the control-plane config applied now.
    applied: parking_lot::Mutex<(u64, String)>,
    /// The fleet-wide client IP lists of the applied bundle.
    pub(crate) ip_fleet: ArcSwap<gg_proto::ip::IpFilter>,
    /// The bundle in force as written (`dns://` endpoints unexpanded).
    source: parking_lot::Mutex<Arc<crate::config::RoutesConfig>>,
    pub(crate) discovery: crate::discovery::Discovery,
}

/// Who is connected, and what admits them.
pub(crate) struct Clients {
    pub(crate) sessions: SessionTable,
    pub(crate) ids: SessionIds,
    pub(crate) limits: Arc<ConnLimits>,
    /// Client bytes buffered in large frames and HTTP bodies, process-wide.
    pub(crate) buffered: Arc<crate::limits::ByteBudget>,
    /// The client port's TLS config; swapped by [`Gateway::reload_tls`].
    pub(crate) tls: arc_swap::ArcSwapOption<rustls::ServerConfig>,
    /// Resume-token keys when `resume:` is configured.
    pub(crate) resume: Option<ResumeKeys>,
    /// This gateway's client IP lists (config and file; SIGHUP reloads).
    pub(crate) ip_local: ArcSwap<gg_proto::ip::IpFilter>,
    /// HTTP sessions, by id (their calls and event streams find them here).
    pub(crate) http_sessions:
        parking_lot::Mutex<std::collections::HashMap<u64, Arc<crate::listener::sse::HttpSession>>>,
}

/// Drain and shutdown.
pub(crate) struct Lifecycle {
    /// The drain operation (admin API and SIGTERM).
    pub(crate) drain: DrainCtl,
    draining: AtomicBool,
    /// Every connection and session task.
    pub(crate) tracker: TaskTracker,
    /// Cancelled when draining starts: HTTP connections stop keep-alive.
    pub(crate) drain_signal: CancellationToken,
    /// Cancelled once draining is over: remaining connections end now.
    pub(crate) hard_stop: CancellationToken,
    /// Backend connection tasks; cancelled after the sessions are gone.
    backend_stop: CancellationToken,
}

/// Session open/close events for the control plane's directory.
pub(crate) struct SessionEvents {
    session_events: Option<tokio::sync::mpsc::Sender<SessionEvent>>,
    session_events_rx: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<SessionEvent>>>,
}

impl Gateway {
    /// Builds the shared state and starts backend connections for every
    /// endpoint the routes mention, all on the caller's runtime.
    pub fn new(cfg: Config) -> Arc<Gateway> {
        Gateway::with_workers(cfg, crate::workers::Workers::current_runtime())
    }

    /// As [`Gateway::new`], with connections and backend connections
    /// spread over `workers`.
    pub fn with_workers(cfg: Config, workers: Arc<crate::workers::Workers>) -> Arc<Gateway> {
        let metrics = Arc::new(Metrics::new());
        let backend_stop = CancellationToken::new();
        let backend_tracker = TaskTracker::new();
        let rooms = Arc::new(crate::rooms::Rooms::new(
            cfg.controlplane.is_some(),
            metrics.clone(),
        ));
        let backends = BackendPool::new(crate::backend::conn::ConnCtx {
            gateway_id: cfg.gateway_id.clone(),
            settings: cfg.backend.clone(),
            breaker: cfg.breaker.clone(),
            max_frame_bytes: cfg.limits.max_frame_bytes,
            metrics: metrics.clone(),
            tracker: backend_tracker,
            shutdown: backend_stop.clone(),
            rooms: rooms.clone(),
            workers: workers.clone(),
        })
        .with_descriptors(cfg.transcoding.clone());
        let discovery = crate::discovery::Discovery::new(&cfg.discovery);
        let routes = RouteTable::build(&discovery.expand(&cfg.routes), &backends);
        // Standalone: the file's routes are the first snapshot. With a
        // control plane: not ready until a snapshot (disk or stream) applies.
        let standalone = cfg.controlplane.is_none();
        let (events_tx, events_rx) = if standalone {
            (None, None)
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel(SESSION_EVENTS_QUEUE);
            (Some(tx), Some(rx))
        };
        let clients = Clients {
            limits: Arc::new(ConnLimits::new(
                cfg.limits.max_connections,
                cfg.limits.max_connections_per_ip,
                cfg.limits.conn_rate_per_ip,
                cfg.limits.conn_burst_per_ip,
            )),
            buffered: crate::limits::ByteBudget::new(cfg.limits.max_buffered_bytes),
            tls: arc_swap::ArcSwapOption::new(cfg.tls.as_ref().map(|t| t.server.clone())),
            sessions: SessionTable::new(),
            ids: SessionIds::new(),
            resume: cfg.resume.clone().map(ResumeKeys::new),
            // Checked when the config was loaded; a file changed since is
            // reported and counts as empty until it loads.
            http_sessions: parking_lot::Mutex::new(std::collections::HashMap::new()),
            ip_local: ArcSwap::from_pointee(cfg.ip_lists.load().unwrap_or_else(|e| {
                warn!(errors = ?e, "ip_lists could not be loaded; no local lists");
                gg_proto::ip::IpFilter::default()
            })),
        };
        Arc::new(Gateway {
            routing: Routing {
                routes: ArcSwap::from_pointee(routes),
                overrides: Overrides::default(),
                backends,
                routes_loaded: AtomicBool::new(standalone),
                applied: parking_lot::Mutex::new((0, String::new())),
                ip_fleet: ArcSwap::from_pointee(gg_proto::ip::IpFilter::default()),
                source: parking_lot::Mutex::new(Arc::new(cfg.routes.clone())),
                discovery,
            },
            clients,
            life: Lifecycle {
                drain: DrainCtl::new(),
                draining: AtomicBool::new(false),
                tracker: TaskTracker::new(),
                hard_stop: CancellationToken::new(),
                drain_signal: CancellationToken::new(),
                backend_stop,
            },
            events: SessionEvents {
                session_events: events_tx,
                session_events_rx: parking_lot::Mutex::new(events_rx),
            },
            rooms,
            addrs: OnceLock::new(),
            started: Instant::now(),
            workers,
            metrics,
            cfg,
        })
    }

    /// `/ready`: routes loaded and not draining. `Err` says why not.
    pub(crate) fn readiness(&self) -> Result<(), &'static str> {
        if self.draining() {
            Err("draining")
        } else if !self.routing.loaded() {
            Err("no routing config applied yet")
        } else {
            Ok(())
        }
    }

    pub(crate) fn draining(&self) -> bool {
        self.life.draining.load(Ordering::Acquire)
    }

    /// Reads the client port's certificate and key again (SIGHUP): new
    /// connections get the new certificate, open ones keep theirs. A file
    /// that does not load leaves the current certificate in place.
    pub fn reload_tls(&self) -> Result<(), String> {
        let Some(t) = &self.cfg.tls else {
            return Ok(());
        };
        match t.reload() {
            Ok(server) => {
                self.clients.tls.store(Some(server));
                self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                info!("TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                warn!(error = %e, "TLS certificate reload failed; keeping the current one");
                Err(e)
            }
        }
    }

    /// Reads `ip_lists` (and its file) again (SIGHUP). Lists that do not
    /// load leave the current ones in place.
    pub fn reload_ip_lists(&self) -> Result<(), String> {
        match self.cfg.ip_lists.load() {
            Ok(f) => {
                info!(
                    allow_ranges = f.allow.ranges(),
                    deny_ranges = f.deny.ranges(),
                    "ip_lists reloaded"
                );
                self.clients.ip_local.store(Arc::new(f));
                self.close_denied_sessions();
                Ok(())
            }
            Err(e) => {
                let e = e.join("; ");
                warn!(error = %e, "ip_lists reload failed; keeping the current lists");
                Err(e)
            }
        }
    }

    /// Closes open sessions whose address the IP lists now refuse (3505
    /// `unauthorized`: the client must not simply reconnect). Returns how
    /// many.
    pub(crate) fn close_denied_sessions(&self) -> usize {
        let denied: Vec<_> = (self.clients.sessions.all().into_iter())
            .filter(|s| self.ip_admitted(s.remote().ip()).is_err())
            .collect();
        for s in &denied {
            s.kick(
                gg_proto::CloseCode::Unauthorized.code(),
                "this address is refused by an IP list".into(),
            );
        }
        if !denied.is_empty() {
            info!(
                sessions = denied.len(),
                "closed sessions from addresses the IP lists now refuse"
            );
        }
        denied.len()
    }

    /// The fleet's and this gateway's IP lists for a client address.
    pub(crate) fn ip_admitted(&self, ip: std::net::IpAddr) -> Result<(), crate::error::Reject> {
        use gg_proto::ip::IpRefusal;
        let fleet = self.routing.ip_fleet.load();
        let local = self.clients.ip_local.load();
        fleet
            .check(ip)
            .and_then(|()| local.check(ip))
            .map_err(|r| match r {
                IpRefusal::Denied => crate::error::Reject::IpDenied,
                IpRefusal::NotAllowed => crate::error::Reject::IpNotAllowed,
            })
    }

    /// Readiness and admission follow this flag (drain start / cancel).
    pub(crate) fn set_draining(&self, on: bool) {
        self.life.draining.store(on, Ordering::Release);
    }
}

impl Routing {
    /// (revision, epoch) of the control-plane config in use.
    pub(crate) fn applied(&self) -> (u64, String) {
        self.applied.lock().clone()
    }

    /// Swaps a validated bundle in atomically; sessions keep their
    /// bindings (they re-resolve only when a binding fails or moves), except
    /// those bound to an endpoint nothing names any more, which are moved
    /// before its connections close.
    pub(crate) fn apply_routes(
        &self,
        routes: &crate::config::RoutesConfig,
        revision: u64,
        epoch: &str,
    ) {
        *self.source.lock() = Arc::new(routes.clone());
        let table = RouteTable::build(&self.discovery.expand(routes), &self.backends);
        self.routes.store(Arc::new(table));
        // Validated with the bundle: nothing to report here.
        let ip = routes.ip_lists.compile("ip_lists", &mut Vec::new());
        self.ip_fleet.store(Arc::new(ip));
        *self.applied.lock() = (revision, epoch.to_string());
        self.routes_loaded.store(true, Ordering::Release);
        self.retire_unused_endpoints();
    }

    /// The bundle in force, as written.
    pub(crate) fn source(&self) -> Arc<crate::config::RoutesConfig> {
        self.source.lock().clone()
    }

    /// Rebuilds the route table from the bundle in force with the latest
    /// DNS answers (same revision), then retires what nothing names now.
    pub(crate) fn rebuild(&self) {
        let source = self.source();
        let table = RouteTable::build(&self.discovery.expand(&source), &self.backends);
        self.routes.store(Arc::new(table));
        self.retire_unused_endpoints();
    }

    /// Retires pool endpoints that no rule, realm or unexpired override
    /// (cluster or local) names.
    pub(crate) fn retire_unused_endpoints(&self) {
        let now = gg_runtime::clock::now_ms();
        let routes = self.routes.load();
        let local = self.overrides.list(now);
        let keep: std::collections::HashSet<&str> = routes
            .endpoint_addrs(now)
            .chain(local.iter().map(|o| o.o.target.as_str()))
            .collect();
        for addr in self.backends.retain(&keep) {
            info!(endpoint = %addr, "backend endpoint no longer in the rules or overrides: moving its sessions and closing its connections");
        }
    }

    /// Whether a routing config was applied (standalone: the file).
    pub(crate) fn loaded(&self) -> bool {
        self.routes_loaded.load(Ordering::Acquire)
    }
}

/// Session events waiting for the control plane (beyond this, events are
/// dropped and counted; a reconnect resends every live session anyway).
const SESSION_EVENTS_QUEUE: usize = 65_536;

/// A session opened or closed here, for the cluster directory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionEvent {
    pub(crate) session_id: u64,
    pub(crate) user_id: u64,
    pub(crate) open: bool,
    /// Unix ms when this gateway opened (or resumed) the session.
    pub(crate) epoch: u64,
    pub(crate) realm_id: u32,
    /// An open that resumed the session.
    pub(crate) resumed: bool,
}

impl Gateway {
    /// Reports a session open/close to the control plane (no-op standalone).
    pub(crate) fn session_event(&self, e: SessionEvent) {
        if let Some(tx) = &self.events.session_events
            && tx.try_send(e).is_err()
        {
            self.metrics
                .reject(crate::error::Reject::SessionEventsQueueFull);
        }
    }

    /// Takes the receiving end of session events (the control-plane client).
    pub(crate) fn take_session_events(&self) -> Option<tokio::sync::mpsc::Receiver<SessionEvent>> {
        self.events.session_events_rx.lock().take()
    }
}

/// Where a running gateway listens.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub client: SocketAddr,
    pub ops: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// Listeners bound by the caller (port 0 welcome).
pub struct Listeners {
    pub client: TcpListener,
    pub ops: TcpListener,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every configured address, with a message that names the key.
    pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
        let bind = |addr: SocketAddr, key: &str| {
            listener::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({key}): {e}"))
        };
        Ok(Listeners {
            client: bind(cfg.listen, "listen")?,
            ops: bind(cfg.ops_listen, "ops_listen")?,
            admin: cfg
                .admin
                .as_ref()
                .map(|a| bind(a.listen, "admin.listen"))
                .transpose()?,
        })
    }

    pub fn addrs(&self) -> std::io::Result<BoundAddrs> {
        Ok(BoundAddrs {
            client: self.client.local_addr()?,
            ops: self.ops.local_addr()?,
            admin: self.admin.as_ref().map(|a| a.local_addr()).transpose()?,
        })
    }
}

/// Runs the gateway until `shutdown` is cancelled, then drains (GOAWAY to
/// every session spread over the window, wait up to the deadline, force-close
/// the rest) and returns once every task has ended.
pub async fn serve(gw: Arc<Gateway>, listeners: Listeners, shutdown: CancellationToken) {
    if let Ok(a) = listeners.addrs() {
        let _ = gw.addrs.set(a);
    }
    // Before taking traffic: the last config saved from the control plane.
    if let Some(c) = &gw.cfg.controlplane {
        cpclient::load_saved(&gw, &c.snapshot_path);
    }
    let ops_stop = CancellationToken::new();
    let ops_task = tokio::spawn(ops::serve(gw.clone(), listeners.ops, ops_stop.clone()));
    let admin_task = listeners
        .admin
        .map(|l| tokio::spawn(admin::serve(gw.clone(), l, ops_stop.clone())));
    let sweeper = tokio::spawn(sweep_overrides(gw.clone(), ops_stop.clone()));
    let timers = tokio::spawn(session::live::sweep_timers(gw.clone(), ops_stop.clone()));
    let discovery = tokio::spawn(discovery::run(gw.clone(), ops_stop.clone()));
    let cp_task = gw
        .cfg
        .controlplane
        .clone()
        .map(|c| tokio::spawn(cpclient::run(gw.clone(), c, ops_stop.clone())));
    listener::accept_loop(gw.clone(), listeners.client, shutdown).await;

    // SIGTERM: the same drain operation the admin API starts (joining one
    // already running), repeated if an operator cancels it meanwhile.
    let report = loop {
        match drain::DrainCtl::start(&gw, gw.drain_request_from_config("shutdown")) {
            Ok(_) | Err(drain::DrainError::AlreadyRunning { .. }) => {}
            Err(e) => warn!(error = %e, "cannot start the shutdown drain"),
        }
        let status = gw.life.drain.wait_finished().await;
        if status.phase == drain::Phase::Done {
            break status;
        }
    };
    gw.life.drain_signal.cancel();
    info!(
        advised = report.advised,
        closed = report.closed,
        force_closed = report.force_closed,
        "drain finished"
    );

    gw.life.hard_stop.cancel();
    gw.life.tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), gw.life.tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not finish within 5s of the drain deadline; exiting anyway");
    }
    gw.life.backend_stop.cancel();
    ops_stop.cancel();
    let _ = ops_task.await;
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    let _ = sweeper.await;
    let _ = timers.await;
    let _ = discovery.await;
    if let Some(t) = cp_task {
        let _ = t.await;
    }
}

impl Gateway {
    /// A drain with the config's deadline, spread and reconnect hint.
    pub(crate) fn drain_request_from_config(&self, reason: &str) -> drain::DrainRequest {
        drain::DrainRequest {
            request_id: format!("{reason}-{}", std::process::id()),
            deadline: self.cfg.drain.deadline,
            spread: self.cfg.drain.spread,
            reconnect_after: self.cfg.drain.reconnect_after,
            reason: reason.to_string(),
        }
    }
}

/// Removes expired overrides once a second (lookups already ignore them;
/// this keeps the list short and logs the expiry).
async fn sweep_overrides(gw: Arc<Gateway>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let now = gg_runtime::clock::now_ms();
                let expired = gw.routing.overrides.sweep(now);
                for o in &expired {
                    info!(id = %o.o.id, service = o.o.key.service, target = %o.o.target, "route override expired");
                }
                let cluster_expired = gw.routing.routes.load().cluster_overrides.iter().any(|o| o.expired(now));
                if !expired.is_empty() || cluster_expired {
                    gw.routing.retire_unused_endpoints();
                }
                gw.clients.limits.sweep();
            }
        }
    }
}
