//! Drain: advise every session to leave (GOAWAY), spread over a window so a
//! fleet is not hit by one reconnect storm, wait for them to go, and
//! force-close whoever is left at the deadline. The caller has already made
//! `/ready` false and stopped accepting.

use std::time::Duration;

use gg_proto::CloseCode;
use tokio::time::Instant;
use tracing::info;

use crate::Gateway;
use crate::config::DrainSettings;
use crate::session::Outbound;

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions sent a GOAWAY.
    pub advised: u64,
    /// Sessions that ended before the deadline.
    pub closed: u64,
    /// Sessions still open at the deadline and closed with `shutdown`.
    pub force_closed: u64,
}

/// How often the drain checks whether every session has gone.
const POLL: Duration = Duration::from_millis(20);

pub async fn run(gw: &Gateway, s: &DrainSettings) -> DrainReport {
    let start = Instant::now();
    let deadline = start + s.deadline;
    let sessions = gw.sessions.all();
    let total = sessions.len() as u64;
    info!(
        sessions = total,
        deadline_ms = s.deadline.as_millis() as u64,
        spread_ms = s.spread.as_millis() as u64,
        "drain started"
    );
    let mut report = DrainReport::default();
    for (i, session) in sessions.iter().enumerate() {
        // Session i is advised at start + spread * i / n.
        let at = start + s.spread.mul_f64(i as f64 / total.max(1) as f64);
        tokio::time::sleep_until(at).await;
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let delivered = session.deliver(Outbound::GoAway {
            reason: "gateway draining".into(),
            reconnect_after: s.reconnect_after,
            deadline: deadline - now,
        });
        if delivered {
            report.advised += 1;
            gw.metrics.drain_goaway_sent.inc();
        }
    }
    while !gw.sessions.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    for session in gw.sessions.all() {
        session.close(CloseCode::Shutdown);
        report.force_closed += 1;
    }
    gw.metrics.drain_force_closed.inc_by(report.force_closed);
    report.closed = total.saturating_sub(report.force_closed);
    report
}
