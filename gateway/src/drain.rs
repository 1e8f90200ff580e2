//! Drain as an observable, cancellable operation. Start → `/ready` false and
//! no new sessions → GOAWAY to each session spread over the window (not all
//! in one second) → wait → force-close at the deadline (counted) → done.
//! Progress is published on a `watch` channel (identical updates are not
//! pushed); cancel makes the gateway ready again. SIGTERM runs the same
//! operation and exits when it is done.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use gg_proto::CloseCode;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Gateway;
use crate::session::Outbound;
use gg_runtime::clock::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Phase {
    #[default]
    Idle,
    Advising,
    Waiting,
    ForceClosing,
    Done,
    Cancelled,
}

impl Phase {
    pub(crate) fn finished(self) -> bool {
        matches!(self, Phase::Idle | Phase::Done | Phase::Cancelled)
    }
}

/// A snapshot of the current (or last) drain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DrainStatus {
    pub(crate) phase: Phase,
    pub(crate) request_id: String,
    pub(crate) reason: String,
    pub(crate) sessions_at_start: u64,
    pub(crate) remaining: u64,
    pub(crate) advised: u64,
    pub(crate) closed: u64,
    pub(crate) force_closed: u64,
    pub(crate) started_at_ms: u64,
    pub(crate) deadline_at_ms: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct DrainRequest {
    pub(crate) request_id: String,
    pub(crate) deadline: Duration,
    pub(crate) spread: Duration,
    pub(crate) reconnect_after: Duration,
    pub(crate) reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DrainError {
    #[error(
        "a drain with request_id {request_id:?} is already running; watch it, or cancel it first"
    )]
    AlreadyRunning { request_id: String },
    #[error("no drain is running")]
    NotRunning,
    #[error(
        "spread ({spread_ms} ms) must not exceed the deadline ({deadline_ms} ms), and the deadline must be > 0"
    )]
    BadWindow { spread_ms: u64, deadline_ms: u64 },
}

pub(crate) struct DrainCtl {
    status: watch::Sender<DrainStatus>,
    /// Cancellation of the running drain, if any.
    running: Mutex<Option<CancellationToken>>,
}

/// How often a drain samples the session count while waiting.
const POLL: Duration = Duration::from_millis(20);

impl DrainCtl {
    pub(crate) fn new() -> DrainCtl {
        DrainCtl {
            status: watch::Sender::new(DrainStatus::default()),
            running: Mutex::new(None),
        }
    }

    pub(crate) fn status(&self) -> DrainStatus {
        self.status.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<DrainStatus> {
        self.status.subscribe()
    }

    /// Resolves with the final status once the running drain (if any) ends.
    pub(crate) async fn wait_finished(&self) -> DrainStatus {
        let mut rx = self.subscribe();
        // The sender lives as long as the gateway, so this cannot fail early.
        let _ = rx.wait_for(|s| s.phase.finished()).await;
        rx.borrow().clone()
    }

    /// Starts a drain. Idempotent: the same `request_id` while it runs
    /// returns its status instead of starting another.
    pub(crate) fn start(gw: &Arc<Gateway>, req: DrainRequest) -> Result<DrainStatus, DrainError> {
        if req.deadline.is_zero() || req.spread > req.deadline {
            return Err(DrainError::BadWindow {
                spread_ms: req.spread.as_millis() as u64,
                deadline_ms: req.deadline.as_millis() as u64,
            });
        }
        let ctl = &gw.life.drain;
        let mut running = ctl.running.lock();
        let current = ctl.status();
        if running.is_some() && !current.phase.finished() {
            return if current.request_id == req.request_id {
                Ok(current)
            } else {
                Err(DrainError::AlreadyRunning {
                    request_id: current.request_id,
                })
            };
        }
        let cancel = CancellationToken::new();
        *running = Some(cancel.clone());
        gw.set_draining(true);
        let sessions = gw.clients.sessions.all();
        let start_ms = now_ms();
        let status = DrainStatus {
            phase: Phase::Advising,
            request_id: req.request_id.clone(),
            reason: req.reason.clone(),
            sessions_at_start: sessions.len() as u64,
            remaining: sessions.len() as u64,
            started_at_ms: start_ms,
            deadline_at_ms: start_ms + req.deadline.as_millis() as u64,
            ..DrainStatus::default()
        };
        ctl.status.send_replace(status.clone());
        info!(request_id = %req.request_id, sessions = sessions.len(), deadline_ms = req.deadline.as_millis() as u64, spread_ms = req.spread.as_millis() as u64, reason = %req.reason, "drain started");
        let task_gw = gw.clone();
        tokio::spawn(async move { run(task_gw, req, sessions, cancel).await });
        Ok(status)
    }

    /// Cancels the running drain: the gateway takes sessions and reports
    /// ready again; sessions already advised drop their GOAWAY deadline.
    pub(crate) fn cancel(gw: &Arc<Gateway>) -> Result<DrainStatus, DrainError> {
        let ctl = &gw.life.drain;
        let mut running = ctl.running.lock();
        let Some(token) = running.take() else {
            return Err(DrainError::NotRunning);
        };
        if ctl.status().phase.finished() {
            return Err(DrainError::NotRunning);
        }
        token.cancel();
        gw.set_draining(false);
        for s in gw.clients.sessions.all() {
            s.deliver(Outbound::GoAwayCancelled);
        }
        ctl.status.send_modify(|s| s.phase = Phase::Cancelled);
        info!("drain cancelled; gateway ready again");
        Ok(ctl.status())
    }
}

impl Default for DrainCtl {
    fn default() -> Self {
        DrainCtl::new()
    }
}

fn update(gw: &Gateway, f: impl FnOnce(&mut DrainStatus)) {
    gw.life.drain.status.send_if_modified(|s| {
        let before = s.clone();
        f(s);
        *s != before
    });
}

async fn run(
    gw: Arc<Gateway>,
    req: DrainRequest,
    sessions: Vec<crate::session::SessionHandle>,
    cancel: CancellationToken,
) {
    let start = Instant::now();
    let deadline = start + req.deadline;
    let total = sessions.len() as u64;
    let remaining = |gw: &Gateway| gw.clients.sessions.len() as u64;
    for (i, session) in sessions.iter().enumerate() {
        // Session i is advised at start + spread * i / n.
        let at = start + req.spread.mul_f64(i as f64 / total.max(1) as f64);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(at) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let delivered = session.deliver(Outbound::GoAway {
            reason: req.reason.clone(),
            reconnect_after: req.reconnect_after,
            deadline: deadline - now,
        });
        if delivered {
            gw.metrics.drain_goaway_sent.inc();
        }
        update(&gw, |s| {
            s.advised += u64::from(delivered);
            s.remaining = remaining(&gw);
        });
    }
    update(&gw, |s| s.phase = Phase::Waiting);
    while !gw.clients.sessions.is_empty() && Instant::now() < deadline {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        update(&gw, |s| {
            s.remaining = remaining(&gw);
            s.closed = s.sessions_at_start.saturating_sub(s.remaining);
        });
    }
    if cancel.is_cancelled() {
        return;
    }
    update(&gw, |s| s.phase = Phase::ForceClosing);
    let left = gw.clients.sessions.all();
    for session in &left {
        session.close(CloseCode::Shutdown);
    }
    gw.metrics.drain_force_closed.inc_by(left.len() as u64);
    // Give the closed sessions a moment to leave the table.
    let settle = Instant::now() + Duration::from_secs(2);
    while !gw.clients.sessions.is_empty() && Instant::now() < settle {
        tokio::time::sleep(POLL).await;
    }
    let force_closed = left.len() as u64;
    update(&gw, |s| {
        s.force_closed = force_closed;
        s.remaining = remaining(&gw);
        s.closed = s.sessions_at_start.saturating_sub(force_closed);
        s.phase = Phase::Done;
    });
    info!(
        advised = gw.life.drain.status().advised,
        force_closed, "drain done"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn gateway() -> Arc<Gateway> {
        let cfg = Config::parse(
            "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\n",
            Some("gw-drain".into()),
        )
        .expect("config");
        Gateway::new(cfg)
    }

    fn req(id: &str, deadline_ms: u64, spread_ms: u64) -> DrainRequest {
        DrainRequest {
            request_id: id.into(),
            deadline: Duration::from_millis(deadline_ms),
            spread: Duration::from_millis(spread_ms),
            reconnect_after: Duration::from_millis(10),
            reason: "test".into(),
        }
    }

    #[tokio::test]
    async fn start_is_idempotent_on_request_id_and_runs_to_done() {
        let gw = gateway();
        assert_eq!(gw.life.drain.status().phase, Phase::Idle);
        assert!(matches!(
            DrainCtl::start(&gw, req("a", 100, 200)),
            Err(DrainError::BadWindow { .. })
        ));
        assert!(matches!(
            DrainCtl::start(&gw, req("a", 0, 0)),
            Err(DrainError::BadWindow { .. })
        ));
        assert!(gw.readiness().is_ok(), "a refused start changes nothing");
        let s = DrainCtl::start(&gw, req("a", 60_000, 0)).unwrap();
        assert_eq!((s.phase, s.sessions_at_start), (Phase::Advising, 0));
        assert_eq!(gw.readiness(), Err("draining"));
        let again = DrainCtl::start(&gw, req("a", 60_000, 0)).unwrap();
        assert_eq!(again.started_at_ms, s.started_at_ms, "same drain returned");
        assert!(matches!(
            DrainCtl::start(&gw, req("b", 60_000, 0)),
            Err(DrainError::AlreadyRunning { request_id }) if request_id == "a"
        ));
        // No sessions: nothing to wait for.
        let done = tokio::time::timeout(Duration::from_secs(5), gw.life.drain.wait_finished())
            .await
            .expect("finishes");
        assert_eq!(done.phase, Phase::Done);
        assert_eq!(DrainCtl::cancel(&gw).unwrap_err(), DrainError::NotRunning);
    }

    #[tokio::test]
    async fn cancel_restores_readiness() {
        let gw = gateway();
        assert_eq!(DrainCtl::cancel(&gw).unwrap_err(), DrainError::NotRunning);
        // A session keeps the drain waiting until the deadline.
        let (s, _inbox) = crate::session::SessionHandle::new(
            7,
            42,
            0,
            crate::metrics::Protocol::Tcp,
            "127.0.0.1:1".parse().unwrap(),
            8,
        );
        assert!(gw.clients.sessions.insert(s));
        DrainCtl::start(&gw, req("c", 60_000, 10)).unwrap();
        assert!(gw.readiness().is_err());
        let st = DrainCtl::cancel(&gw).unwrap();
        assert_eq!(st.phase, Phase::Cancelled);
        assert!(gw.readiness().is_ok());
        // A new drain may start after a cancel.
        assert!(DrainCtl::start(&gw, req("d", 60_000, 10)).is_ok());
    }
}
