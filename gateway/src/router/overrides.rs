//! Gateway-local route overrides: "for service S (and optionally user U /
//! realm R / session X) use endpoint T", with a reason, an author and an
//! optional TTL after which the override disappears by itself.
//!
//! The list is an immutable snapshot behind `ArcSwap` (read lock-free when a
//! session binds); writers copy, modify and swap under a mutex.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// One override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub id: String,
    pub service: u16,
    /// 0 = any.
    pub user: u64,
    pub realm: u32,
    pub session: u64,
    pub target: String,
    pub reason: String,
    pub author: String,
    pub ttl_ms: u64,
    /// Unix ms; 0 = never.
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
    pub move_existing: bool,
}

impl Override {
    /// Whether it applies to a binding of `(service, realm, user, session)`.
    pub fn matches(&self, service: u16, realm: u32, user: u64, session: u64) -> bool {
        self.service == service
            && (self.user == 0 || self.user == user)
            && (self.realm == 0 || self.realm == realm)
            && (self.session == 0 || self.session == session)
    }

    /// More specific overrides win: session > user > realm > whole service.
    pub fn specificity(&self) -> u8 {
        u8::from(self.session != 0) * 8
            + u8::from(self.user != 0) * 4
            + u8::from(self.realm != 0) * 2
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The most specific unexpired override in `list` for a binding (newest on ties).
pub fn most_specific(
    list: &[Arc<Override>],
    service: u16,
    realm: u32,
    user: u64,
    session: u64,
    now_ms: u64,
) -> Option<Arc<Override>> {
    list.iter()
        .filter(|o| !o.expired(now_ms) && o.matches(service, realm, user, session))
        .max_by_key(|o| (o.specificity(), o.created_at_ms))
        .cloned()
}

#[derive(Default)]
pub struct Overrides {
    list: ArcSwap<Vec<Arc<Override>>>,
    write: Mutex<()>,
    next_id: AtomicU64,
}

impl Overrides {
    /// Adds or replaces (same id) an override; assigns an id when empty.
    pub fn set(&self, mut o: Override) -> Arc<Override> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if o.id.is_empty() {
            o.id = format!("ovr-{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        }
        let o = Arc::new(o);
        let mut v: Vec<Arc<Override>> = self
            .list
            .load()
            .iter()
            .filter(|x| x.id != o.id)
            .cloned()
            .collect();
        v.push(o.clone());
        self.list.store(Arc::new(v));
        o
    }

    /// Removes an override; false if there was none with this id.
    pub fn delete(&self, id: &str) -> bool {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.list.load();
        if !cur.iter().any(|x| x.id == id) {
            return false;
        }
        self.list.store(Arc::new(
            cur.iter().filter(|x| x.id != id).cloned().collect(),
        ));
        true
    }

    /// Overrides in force at `now_ms`.
    pub fn list(&self, now_ms: u64) -> Vec<Arc<Override>> {
        self.list
            .load()
            .iter()
            .filter(|o| !o.expired(now_ms))
            .cloned()
            .collect()
    }

    /// The most specific unexpired override for a binding.
    pub fn find(
        &self,
        service: u16,
        realm: u32,
        user: u64,
        session: u64,
        now_ms: u64,
    ) -> Option<Arc<Override>> {
        most_specific(&self.list.load(), service, realm, user, session, now_ms)
    }

    /// Drops expired overrides; returns them (for logging).
    pub fn sweep(&self, now_ms: u64) -> Vec<Arc<Override>> {
        if !self.list.load().iter().any(|o| o.expired(now_ms)) {
            return Vec::new();
        }
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let (gone, keep): (Vec<_>, Vec<_>) = self
            .list
            .load()
            .iter()
            .cloned()
            .partition(|o| o.expired(now_ms));
        self.list.store(Arc::new(keep));
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ovr(service: u16, user: u64, realm: u32, target: &str, expires: u64) -> Override {
        Override {
            id: String::new(),
            service,
            user,
            realm,
            session: 0,
            target: target.into(),
            reason: "test".into(),
            author: "me".into(),
            ttl_ms: 0,
            expires_at_ms: expires,
            created_at_ms: 1,
            move_existing: false,
        }
    }

    #[test]
    fn most_specific_wins_and_expired_ones_vanish() {
        let o = Overrides::default();
        o.set(ovr(1, 0, 0, "svc-wide:1", 0));
        let user = o.set(ovr(1, 42, 0, "user:1", 0));
        o.set(ovr(1, 0, 7, "realm:1", 0));
        assert_eq!(o.find(1, 7, 42, 0, 10).unwrap().target, "user:1");
        assert_eq!(o.find(1, 7, 1, 0, 10).unwrap().target, "realm:1");
        assert_eq!(o.find(1, 0, 1, 0, 10).unwrap().target, "svc-wide:1");
        assert!(o.find(2, 0, 1, 0, 10).is_none());
        assert!(o.delete(&user.id));
        assert!(!o.delete(&user.id));
        o.set(ovr(3, 0, 0, "soon:1", 100));
        assert!(o.find(3, 0, 0, 0, 99).is_some());
        assert!(o.find(3, 0, 0, 0, 100).is_none());
        assert_eq!(o.sweep(100).len(), 1);
        assert_eq!(o.list(100).len(), 2);
    }
}
