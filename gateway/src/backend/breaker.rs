//! Circuit breaker per endpoint, on consecutive failures (linkerd's
//! `consecutive_failures` model): `closed` → after `failure_threshold`
//! failures in a row `open` (no new sessions are bound) → after the open
//! period `half_open` (bindings allowed again as probes) → the first success
//! closes it, a failure re-opens it for twice as long (capped).
//!
//! Failures: connect errors, lost connections and missed backend heartbeats.
//! Success: the first frame received on a new connection (the backend's
//! PONG to the gateway's heartbeat PING counts, so recovery needs no client
//! traffic).

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use crate::config::BreakerSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant, period: Duration },
    HalfOpen { period: Duration },
}

pub(crate) struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<(State, u32)>,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            inner: Mutex::new((State::Closed, 0)),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, (State, u32)> {
        self.inner.lock()
    }

    /// Whether a new binding may use this endpoint now.
    pub(crate) fn allow(&self, now: Instant) -> bool {
        let mut g = self.lock();
        match g.0 {
            State::Closed | State::HalfOpen { .. } => true,
            State::Open { until, period } if now >= until => {
                g.0 = State::HalfOpen { period };
                true
            }
            State::Open { .. } => false,
        }
    }

    /// What [`Breaker::allow`] would answer, without the open → half-open
    /// transition (for explain and listings).
    pub(crate) fn would_allow(&self, now: Instant) -> bool {
        match self.lock().0 {
            State::Closed | State::HalfOpen { .. } => true,
            State::Open { until, .. } => now >= until,
        }
    }

    pub(crate) fn on_success(&self) {
        let mut g = self.lock();
        *g = (State::Closed, 0);
    }

    pub(crate) fn on_failure(&self, now: Instant) {
        let mut g = self.lock();
        g.1 = g.1.saturating_add(1);
        g.0 = match g.0 {
            State::Closed if g.1 >= self.settings.failure_threshold => State::Open {
                until: now + self.settings.open,
                period: self.settings.open,
            },
            State::HalfOpen { period } => {
                let period = (period * 2).min(self.settings.open_max);
                State::Open {
                    until: now + period,
                    period,
                }
            }
            s => s,
        };
    }

    /// `closed`, `open` or `half_open` (an elapsed open period reads as half_open).
    pub(crate) fn state_name(&self, now: Instant) -> &'static str {
        match self.lock().0 {
            State::Closed => "closed",
            State::Open { until, .. } if now >= until => "half_open",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.lock().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failure_threshold: 3,
            open: Duration::from_secs(1),
            open_max: Duration::from_secs(3),
        })
    }

    #[test]
    fn opens_after_threshold_and_recovers_through_half_open() {
        let b = breaker();
        let t = Instant::now();
        b.on_failure(t);
        b.on_failure(t);
        assert!(b.allow(t), "below threshold stays closed");
        b.on_failure(t);
        assert_eq!(b.state_name(t), "open");
        assert!(!b.allow(t + Duration::from_millis(999)));
        assert!(!b.would_allow(t));
        assert!(b.would_allow(t + Duration::from_secs(1)));
        assert_eq!(b.state_name(t), "open", "peeking changes nothing");
        assert!(
            b.allow(t + Duration::from_secs(1)),
            "half-open lets a probe through"
        );
        b.on_success();
        assert_eq!(b.state_name(t), "closed");
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn failed_probe_doubles_the_open_period_up_to_the_cap() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.on_failure(t);
        }
        let t1 = t + Duration::from_secs(1);
        assert!(b.allow(t1));
        b.on_failure(t1);
        assert!(!b.allow(t1 + Duration::from_millis(1999)));
        let t2 = t1 + Duration::from_secs(2);
        assert!(b.allow(t2));
        b.on_failure(t2);
        // 4 s would exceed the 3 s cap.
        assert!(b.allow(t2 + Duration::from_secs(3)));
    }
}
