//! Admission limits: a global connection cap, a per-source-IP cap and a
//! per-source-IP rate of new connections, taken at accept time and released
//! by dropping the [`ConnGuard`]; and the per-session message [`TokenBucket`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use std::time::Instant;

use crate::error::Reject;

const IP_SHARDS: usize = 16;

/// One source address: its open connections and its new-connection bucket.
/// Kept while it has connections or its bucket is still refilling, so
/// connecting and closing in a loop cannot reset the rate.
struct IpState {
    conns: usize,
    bucket: TokenBucket,
}

pub(crate) struct ConnLimits {
    max: usize,
    per_ip: usize,
    rate: u32,
    burst: u32,
    active: AtomicUsize,
    by_ip: Box<[Mutex<HashMap<IpAddr, IpState>>]>,
}

impl ConnLimits {
    /// `max` connections in all, `per_ip` per source address, which may
    /// open `rate` new ones per second (bursts of `burst`).
    pub(crate) fn new(max: usize, per_ip: usize, rate: u32, burst: u32) -> ConnLimits {
        ConnLimits {
            max,
            per_ip,
            rate,
            burst,
            active: AtomicUsize::new(0),
            by_ip: (0..IP_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, IpState>> {
        let h = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(*v4)),
            IpAddr::V6(v6) => (u128::from(*v6) as u64) ^ ((u128::from(*v6) >> 64) as u64),
        };
        &self.by_ip[(crate::router::hash::score(h, 0) % IP_SHARDS as u64) as usize]
    }

    /// Admits one connection from `ip` or says which limit refused it.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Reject> {
        self.try_acquire_at(ip, Instant::now())
    }

    fn try_acquire_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ConnGuard, Reject> {
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Reject::MaxConnections);
        }
        let mut map = self.shard(&ip).lock();
        let st = map.entry(ip).or_insert_with(|| IpState {
            conns: 0,
            bucket: TokenBucket::new(self.rate, self.burst, now),
        });
        let refused = if st.conns >= self.per_ip {
            Some(Reject::MaxConnectionsPerIp)
        } else if !st.bucket.take(now) {
            Some(Reject::ConnRatePerIp)
        } else {
            None
        };
        if let Some(r) = refused {
            drop(map);
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(r);
        }
        st.conns += 1;
        Ok(ConnGuard {
            limits: self.clone(),
            ip,
            placed: None,
        })
    }

    /// Forgets addresses with no connection whose bucket has refilled (run
    /// periodically; keeps the map as small as the set of recent clients).
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        for shard in self.by_ip.iter() {
            shard
                .lock()
                .retain(|_, st| st.conns > 0 || !st.bucket.full(now));
        }
    }

    /// Source addresses tracked now.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.by_ip.iter().map(|s| s.lock().len()).sum()
    }

    /// Connections admitted and not yet released.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// Holds one admitted connection's place; dropping it frees the place.
pub(crate) struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    /// The connection's place on its worker, released with the guard.
    placed: Option<crate::workers::Placed>,
}

impl ConnGuard {
    /// Keeps the connection counted on its worker for as long as it lives.
    pub(crate) fn place(&mut self, placed: crate::workers::Placed) {
        self.placed = Some(placed);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut map = self.limits.shard(&self.ip).lock();
        if let Some(st) = map.get_mut(&self.ip) {
            st.conns -= 1;
            if st.conns == 0 && st.bucket.full(Instant::now()) {
                map.remove(&self.ip);
            }
        }
        drop(map);
        self.limits.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Whether the bucket would be full at `now` (nothing to remember).
    pub(crate) fn full(&self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * self.rate >= self.burst
    }

    /// Takes one token if available.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        // Frames read together share one `now`: refill once for them.
        if now != self.last {
            let dt = now.saturating_duration_since(self.last).as_secs_f64();
            self.last = now;
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A process-wide budget of bytes buffered for clients (partly read large
/// frames, HTTP bodies): what a crowd of connections can make the gateway
/// hold, whatever each is allowed alone. Taken as bytes arrive, never by
/// what a peer announces.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: AtomicU64,
    max: u64,
}

impl ByteBudget {
    pub(crate) fn new(max: u64) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            used: AtomicU64::new(0),
            max,
        })
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.max)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes one buffer holds against the [`ByteBudget`]; given back on drop.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl Charge {
    /// Raises this buffer's share to `total` bytes; false (and nothing
    /// taken) if the budget cannot cover it.
    pub(crate) fn grow_to(slot: &mut Option<Charge>, budget: &Arc<ByteBudget>, total: u64) -> bool {
        let held = slot.as_ref().map_or(0, |c| c.bytes);
        if total <= held {
            return true;
        }
        if !budget.try_take(total - held) {
            return false;
        }
        match slot {
            Some(c) => c.bytes = total,
            None => {
                *slot = Some(Charge {
                    budget: budget.clone(),
                    bytes: total,
                })
            }
        }
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn per_ip_and_global_caps_release_on_drop() {
        let l = Arc::new(ConnLimits::new(3, 2, 1000, 1000));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let g1 = l.try_acquire(a).unwrap();
        let _g2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).err(), Some(Reject::MaxConnectionsPerIp));
        let _g3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).err(), Some(Reject::MaxConnections));
        drop(g1);
        assert_eq!(l.active(), 2);
        assert!(l.try_acquire(a).is_ok());
    }

    #[test]
    fn new_connections_per_ip_are_rate_limited() {
        let l = Arc::new(ConnLimits::new(100, 100, 10, 3));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        // Connect and close in a loop: closing does not give the tokens back.
        for _ in 0..3 {
            drop(l.try_acquire_at(a, t0).unwrap());
        }
        assert_eq!(l.try_acquire_at(a, t0).err(), Some(Reject::ConnRatePerIp));
        let gb = l.try_acquire_at(b, t0).expect("other addresses unaffected");
        let ga = l
            .try_acquire_at(a, t0 + Duration::from_millis(100))
            .expect("a token refilled");
        assert_eq!(l.active(), 2);
        drop((ga, gb));
        // Still refilling: remembered. Refilled and idle: forgotten.
        l.sweep();
        assert_eq!(l.tracked(), 2);
        std::thread::sleep(Duration::from_millis(600));
        l.sweep();
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // Never more than the burst, however long idle.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }

    #[test]
    fn the_byte_budget_is_shared_and_given_back() {
        let b = ByteBudget::new(100);
        let (mut x, mut y) = (None, None);
        assert!(Charge::grow_to(&mut x, &b, 60));
        assert!(Charge::grow_to(&mut x, &b, 60), "no growth, no charge");
        assert!(!Charge::grow_to(&mut y, &b, 41), "over the budget");
        assert!(y.is_none());
        assert!(Charge::grow_to(&mut y, &b, 40));
        assert_eq!(b.used(), 100);
        drop(x);
        assert_eq!(b.used(), 40);
        assert!(Charge::grow_to(&mut y, &b, 100));
        y = None;
        assert_eq!(b.used(), 0);
        assert!(y.is_none());
    }
}
