//! Exponential reconnect backoff with jitter, one implementation for every
//! reconnect loop (backend connections, the control-plane stream).
//!
//! Each delay is drawn uniformly from `[d/2, d]` where `d` doubles per
//! failure up to `max` ("equal jitter"): a fleet of gateways does not
//! reconnect to a restarted peer in lockstep, and no attempt comes sooner
//! than half the nominal delay.

use std::time::Duration;

/// Backoff state of one reconnect loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// `initial` is clamped to at least 1 ms and `max` to at least `initial`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    /// The delay before the next attempt; doubles the next one (capped).
    pub fn next_delay(&mut self) -> Duration {
        let half = u64::try_from(self.current.as_millis() / 2).unwrap_or(u64::MAX / 2);
        let d = Duration::from_millis(half + fastrand::u64(0..=half));
        self.current = (self.current * 2).min(self.max);
        d
    }

    /// After a success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The nominal delay of the next attempt (before jitter).
    pub fn current(&self) -> Duration {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        for nominal in [100, 200, 350, 350] {
            let d = b.next_delay();
            assert!(
                d >= ms(nominal / 2) && d <= ms(nominal),
                "{d:?} not in [{}, {nominal}] ms",
                nominal / 2
            );
        }
        b.reset();
        assert_eq!(b.current(), ms(100));
        assert!(Backoff::new(Duration::ZERO, Duration::ZERO).next_delay() <= ms(1));
    }
}
