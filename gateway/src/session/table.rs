//! The session table: sessions by id and by user, in independently locked
//! shards so registering, closing and looking up sessions on different cores
//! rarely touch the same lock. Locks are std (not async) and never held
//! across an await.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::SessionHandle;

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    by_id: HashMap<u64, SessionHandle>,
    /// user id → session ids of that user (a user may have several devices).
    by_user: HashMap<u64, Vec<u64>>,
}

pub(crate) struct SessionTable {
    /// Sharded by session id.
    ids: Box<[RwLock<Shard>]>,
    /// Sharded by user id (only `by_user` is used here).
    users: Box<[RwLock<Shard>]>,
    len: AtomicUsize,
}

fn shard_of(key: u64) -> usize {
    // Session ids share their high bits per process, so mix before reducing.
    (crate::router::hash::score(key, 0) % SHARDS as u64) as usize
}

impl SessionTable {
    pub(crate) fn new() -> SessionTable {
        let mk = || (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect();
        SessionTable {
            ids: mk(),
            users: mk(),
            len: AtomicUsize::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a session. Returns false if the id is already present.
    pub(crate) fn insert(&self, s: SessionHandle) -> bool {
        let (id, user) = (s.id(), s.user_id());
        {
            let mut shard = self.ids[shard_of(id)].write();
            if shard.by_id.contains_key(&id) {
                return false;
            }
            shard.by_id.insert(id, s);
        }
        self.users[shard_of(user)]
            .write()
            .by_user
            .entry(user)
            .or_default()
            .push(id);
        self.len.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Registers a session in place of one with the same id (a resume on
    /// this gateway); returns the one it displaced.
    pub(crate) fn replace(&self, s: SessionHandle) -> Option<SessionHandle> {
        let (id, user) = (s.id(), s.user_id());
        let old = self.ids[shard_of(id)].write().by_id.insert(id, s);
        if let Some(old) = &old {
            self.unlink_user(old.user_id(), id);
        } else {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        self.users[shard_of(user)]
            .write()
            .by_user
            .entry(user)
            .or_default()
            .push(id);
        old
    }

    /// Removes this very session (not another that took its id over).
    pub(crate) fn remove_if(&self, s: &SessionHandle) -> bool {
        let id = s.id();
        {
            let mut shard = self.ids[shard_of(id)].write();
            if !shard.by_id.get(&id).is_some_and(|cur| cur.same(s)) {
                return false;
            }
            shard.by_id.remove(&id);
        }
        self.unlink_user(s.user_id(), id);
        self.len.fetch_sub(1, Ordering::Relaxed);
        true
    }

    fn unlink_user(&self, user: u64, id: u64) {
        let mut shard = self.users[shard_of(user)].write();
        if let Some(list) = shard.by_user.get_mut(&user) {
            if let Some(i) = list.iter().position(|x| *x == id) {
                list.swap_remove(i);
            }
            if list.is_empty() {
                shard.by_user.remove(&user);
            }
        }
    }

    /// Removes a session; returns it if it was present.
    pub(crate) fn remove(&self, id: u64) -> Option<SessionHandle> {
        let s = self.ids[shard_of(id)].write().by_id.remove(&id)?;
        self.unlink_user(s.user_id(), id);
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(s)
    }

    pub(crate) fn get(&self, id: u64) -> Option<SessionHandle> {
        self.ids[shard_of(id)].read().by_id.get(&id).cloned()
    }

    /// Every session of one user.
    pub(crate) fn by_user(&self, user: u64) -> Vec<SessionHandle> {
        let ids: Vec<u64> = self.users[shard_of(user)]
            .read()
            .by_user
            .get(&user)
            .cloned()
            .unwrap_or_default();
        ids.into_iter().filter_map(|id| self.get(id)).collect()
    }

    /// A snapshot of every session (one shard locked at a time).
    pub(crate) fn all(&self) -> Vec<SessionHandle> {
        let mut out = Vec::with_capacity(self.len());
        for shard in self.ids.iter() {
            out.extend(shard.read().by_id.values().cloned());
        }
        out
    }

    /// Calls `f` on every session, one shard read-locked at a time, without
    /// copying the table (`f` must be quick and must not block).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&SessionHandle)) {
        for shard in self.ids.iter() {
            shard.read().by_id.values().for_each(&mut f);
        }
    }
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Protocol;

    fn handle(id: u64, user: u64) -> SessionHandle {
        SessionHandle::new(
            id,
            user,
            0,
            Protocol::Tcp,
            "127.0.0.1:1".parse().unwrap(),
            1,
        )
        .0
    }

    #[test]
    fn insert_lookup_remove_with_user_index() {
        let t = SessionTable::new();
        assert!(t.insert(handle(1, 10)));
        assert!(t.insert(handle(2, 10)));
        assert!(t.insert(handle(3, 11)));
        assert!(!t.insert(handle(3, 12)), "duplicate id refused");
        assert_eq!(t.len(), 3);
        let mut u: Vec<u64> = t.by_user(10).iter().map(|s| s.id()).collect();
        u.sort();
        assert_eq!(u, vec![1, 2]);
        assert_eq!(t.remove(1).map(|s| s.id()), Some(1));
        assert!(t.remove(1).is_none());
        assert_eq!(t.by_user(10).len(), 1);
        assert_eq!(t.all().len(), 2);
        let mut seen = Vec::new();
        t.for_each(|s| seen.push(s.id()));
        seen.sort();
        assert_eq!(seen, vec![2, 3]);
        assert_eq!(t.get(3).map(|s| s.user_id()), Some(11));
    }
}
