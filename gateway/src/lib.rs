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

pub mod backend;
pub mod config;
pub mod drain;
pub mod error;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod router;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::BackendPool;
use crate::config::Config;
use crate::limits::ConnLimits;
use crate::metrics::Metrics;
use crate::router::RouteTable;
use crate::session::SessionIds;
use crate::session::table::SessionTable;

/// Everything a connection or session task needs, shared behind one `Arc`.
pub struct Gateway {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    /// The routing snapshot; replaced whole, read lock-free.
    pub routes: ArcSwap<RouteTable>,
    pub sessions: SessionTable,
    pub backends: BackendPool,
    pub ids: SessionIds,
    pub limits: Arc<ConnLimits>,
    routes_loaded: AtomicBool,
    draining: AtomicBool,
    /// Every connection and session task.
    pub tracker: TaskTracker,
    /// Cancelled when draining starts: HTTP connections stop keep-alive.
    pub drain_signal: CancellationToken,
    /// Cancelled once draining is over: remaining connections end now.
    pub hard_stop: CancellationToken,
    /// Backend connection tasks; cancelled after the sessions are gone.
    backend_stop: CancellationToken,
}

impl Gateway {
    /// Builds the shared state and starts backend connections for every
    /// endpoint the routes mention.
    pub fn new(cfg: Config) -> Arc<Gateway> {
        let metrics = Arc::new(Metrics::new());
        let backend_stop = CancellationToken::new();
        let backend_tracker = TaskTracker::new();
        let backends = BackendPool::new(
            cfg.gateway_id.clone(),
            cfg.backend.clone(),
            cfg.limits.max_frame_bytes,
            metrics.clone(),
            backend_tracker,
            backend_stop.clone(),
        );
        let routes = RouteTable::build(&cfg.routes, &backends);
        Arc::new(Gateway {
            limits: Arc::new(ConnLimits::new(
                cfg.limits.max_connections,
                cfg.limits.max_connections_per_ip,
            )),
            routes: ArcSwap::from_pointee(routes),
            sessions: SessionTable::new(),
            ids: SessionIds::new(),
            // Standalone mode: the file's routes are the first snapshot.
            routes_loaded: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            drain_signal: CancellationToken::new(),
            backend_stop,
            backends,
            metrics,
            cfg,
        })
    }

    /// `/ready`: routes loaded and not draining. `Err` says why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining() {
            Err("draining")
        } else if !self.routes_loaded.load(Ordering::Acquire) {
            Err("no routing config applied yet")
        } else {
            Ok(())
        }
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// Listeners bound by the caller (port 0 welcome).
pub struct Listeners {
    pub client: TcpListener,
    pub ops: TcpListener,
}

impl Listeners {
    /// Binds both addresses of `cfg`, with a message that names the key.
    pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
        let client = listener::bind(cfg.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (listen): {e}", cfg.listen))?;
        let ops = listener::bind(cfg.ops_listen).map_err(|e| {
            anyhow::anyhow!("cannot listen on {} (ops_listen): {e}", cfg.ops_listen)
        })?;
        Ok(Listeners { client, ops })
    }

    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.client.local_addr()?, self.ops.local_addr()?))
    }
}

/// Runs the gateway until `shutdown` is cancelled, then drains (GOAWAY to
/// every session spread over the window, wait up to the deadline, force-close
/// the rest) and returns once every task has ended.
pub async fn serve(gw: Arc<Gateway>, listeners: Listeners, shutdown: CancellationToken) {
    let ops_stop = CancellationToken::new();
    let ops_task = tokio::spawn(ops::serve(gw.clone(), listeners.ops, ops_stop.clone()));
    listener::accept_loop(gw.clone(), listeners.client, shutdown).await;

    gw.set_draining();
    gw.drain_signal.cancel();
    let report = drain::run(&gw, &gw.cfg.drain).await;
    info!(
        advised = report.advised,
        closed = report.closed,
        force_closed = report.force_closed,
        "drain finished"
    );

    gw.hard_stop.cancel();
    gw.tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), gw.tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not finish within 5s of the drain deadline; exiting anyway");
    }
    gw.backend_stop.cancel();
    ops_stop.cancel();
    let _ = ops_task.await;
}
