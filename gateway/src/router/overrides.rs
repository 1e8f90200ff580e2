//! Gateway-local route overrides (admin API): the domain model's
//! [`Override`] plus whether setting it moved sessions already bound.
//! They win over cluster overrides from the control plane, which win over
//! the rules.
//!
//! The list is an immutable snapshot behind `ArcSwap` (read lock-free when a
//! session binds); writers copy, modify and swap under a mutex.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
pub(crate) use gg_proto::model::Override;
use gg_proto::model::{RouteKey, most_specific};
use parking_lot::Mutex;

/// One local override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalOverride {
    pub(crate) o: Override,
    /// Setting it also moved matching sessions bound elsewhere.
    pub(crate) move_existing: bool,
}

#[derive(Default)]
pub(crate) struct Overrides {
    list: ArcSwap<Vec<Arc<LocalOverride>>>,
    write: Mutex<()>,
    next_id: AtomicU64,
}

impl Overrides {
    /// Adds or replaces (same id) an override; assigns an id when empty.
    pub(crate) fn set(&self, mut o: LocalOverride) -> Arc<LocalOverride> {
        let _w = self.write.lock();
        if o.o.id.is_empty() {
            o.o.id = format!("ovr-{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        }
        let o = Arc::new(o);
        let mut v: Vec<Arc<LocalOverride>> = self
            .list
            .load()
            .iter()
            .filter(|x| x.o.id != o.o.id)
            .cloned()
            .collect();
        v.push(o.clone());
        self.list.store(Arc::new(v));
        o
    }

    /// Removes an override; false if there was none with this id.
    pub(crate) fn delete(&self, id: &str) -> bool {
        let _w = self.write.lock();
        let cur = self.list.load();
        if !cur.iter().any(|x| x.o.id == id) {
            return false;
        }
        self.list.store(Arc::new(
            cur.iter().filter(|x| x.o.id != id).cloned().collect(),
        ));
        true
    }

    /// Overrides in force at `now_ms`.
    pub(crate) fn list(&self, now_ms: u64) -> Vec<Arc<LocalOverride>> {
        self.list
            .load()
            .iter()
            .filter(|o| !o.o.expired(now_ms))
            .cloned()
            .collect()
    }

    /// The most specific unexpired override covering `binding`.
    pub(crate) fn find(&self, binding: &RouteKey, now_ms: u64) -> Option<Arc<LocalOverride>> {
        most_specific(&self.list.load(), |x| &x.o, binding, now_ms).cloned()
    }

    /// Drops expired overrides; returns them (for logging).
    pub(crate) fn sweep(&self, now_ms: u64) -> Vec<Arc<LocalOverride>> {
        if !self.list.load().iter().any(|o| o.o.expired(now_ms)) {
            return Vec::new();
        }
        let _w = self.write.lock();
        let (gone, keep): (Vec<_>, Vec<_>) = self
            .list
            .load()
            .iter()
            .cloned()
            .partition(|o| o.o.expired(now_ms));
        self.list.store(Arc::new(keep));
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ovr(service: u16, user: u64, realm: u32, target: &str, expires: u64) -> LocalOverride {
        LocalOverride {
            o: Override {
                id: String::new(),
                key: RouteKey {
                    service,
                    user,
                    realm,
                    session: 0,
                },
                target: target.into(),
                reason: "test".into(),
                author: "me".into(),
                expires_at_ms: expires,
                created_at_ms: 1,
            },
            move_existing: false,
        }
    }

    fn key(service: u16, realm: u32, user: u64) -> RouteKey {
        RouteKey {
            service,
            realm,
            user,
            session: 0,
        }
    }

    #[test]
    fn most_specific_wins_and_expired_ones_vanish() {
        let o = Overrides::default();
        o.set(ovr(1, 0, 0, "svc-wide:1", 0));
        let user = o.set(ovr(1, 42, 0, "user:1", 0));
        o.set(ovr(1, 0, 7, "realm:1", 0));
        let t = |k, now| o.find(&k, now).map(|x| x.o.target.clone());
        assert_eq!(t(key(1, 7, 42), 10).as_deref(), Some("user:1"));
        assert_eq!(t(key(1, 7, 1), 10).as_deref(), Some("realm:1"));
        assert_eq!(t(key(1, 0, 1), 10).as_deref(), Some("svc-wide:1"));
        assert!(t(key(2, 0, 1), 10).is_none());
        assert!(o.delete(&user.o.id));
        assert!(!o.delete(&user.o.id));
        o.set(ovr(3, 0, 0, "soon:1", 100));
        assert!(t(key(3, 0, 0), 99).is_some());
        assert!(t(key(3, 0, 0), 100).is_none());
        assert_eq!(o.sweep(100).len(), 1);
        assert_eq!(o.list(100).len(), 2);
    }
}
