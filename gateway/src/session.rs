//! Sessions: one task per client connection owns its state
//! ([`task`]); everyone else reaches it through a cheap [`SessionHandle`]
//! whose bounded queue is the only way in. A full queue never blocks the
//! sender: the session is closed as a slow consumer instead, so memory per
//! session stays bounded whatever the client does.

pub mod io;
pub mod table;
pub mod task;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gg_proto::CloseCode;
use std::collections::VecDeque;

use tokio::sync::Notify;

use crate::metrics::Protocol;

/// A message for a session's task.
#[derive(Debug)]
pub enum Outbound {
    /// An encoded frame to write to the client as is.
    Frame(Bytes),
    /// The backend connection carrying this session's binding to `endpoint`
    /// was lost; outstanding requests on it will not be answered.
    BackendLost { endpoint: Arc<str> },
    /// The backend at `endpoint` closed (kicked) the session.
    Kicked {
        endpoint: Arc<str>,
        code: u16,
        reason: String,
    },
    /// The gateway is draining: send GOAWAY, close after `deadline`.
    GoAway {
        reason: String,
        reconnect_after: Duration,
        deadline: Duration,
    },
    /// The drain was cancelled: forget the GOAWAY deadline.
    GoAwayCancelled,
    /// An operator closes the session with this code and reason.
    Close { code: u16, reason: String },
    /// Drop bindings matching `endpoint` and/or `service` (CLOSE "moved" to
    /// the backend); the next DATA binds afresh (maintenance, overrides).
    Unbind {
        endpoint: Option<Arc<str>>,
        service: Option<u16>,
        reason: String,
    },
}

struct Inner {
    id: u64,
    user_id: u64,
    realm_id: u32,
    protocol: Protocol,
    remote: SocketAddr,
    opened: Instant,
    opened_ms: u64,
    /// The session's bounded queue. A `VecDeque` rather than a channel: an
    /// idle session's queue holds no allocation at all.
    queue: std::sync::Mutex<VecDeque<Outbound>>,
    queue_cap: usize,
    ready: Notify,
    /// A close requested from outside the task (0 = none); first writer wins.
    close_code: AtomicU16,
    /// (service_type, endpoint) of each binding, for admin lookups; written
    /// only when bindings change.
    bindings: std::sync::Mutex<Vec<(u16, Arc<str>)>>,
}

/// A cloneable reference to a live session.
#[derive(Clone)]
pub struct SessionHandle(Arc<Inner>);

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.0.id).finish()
    }
}

impl SessionHandle {
    /// A handle and the receiving end of its queue (capacity `queue`).
    pub fn new(
        id: u64,
        user_id: u64,
        realm_id: u32,
        protocol: Protocol,
        remote: SocketAddr,
        queue: usize,
    ) -> (SessionHandle, Inbox) {
        let inner = Inner {
            id,
            user_id,
            realm_id,
            protocol,
            remote,
            opened: Instant::now(),
            opened_ms: crate::router::overrides::now_ms(),
            queue: std::sync::Mutex::new(VecDeque::new()),
            queue_cap: queue.max(1),
            ready: Notify::new(),
            close_code: AtomicU16::new(0),
            bindings: std::sync::Mutex::new(Vec::new()),
        };
        let inner = Arc::new(inner);
        (SessionHandle(inner.clone()), Inbox(inner))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn user_id(&self) -> u64 {
        self.0.user_id
    }
    pub fn realm_id(&self) -> u32 {
        self.0.realm_id
    }
    pub fn protocol(&self) -> Protocol {
        self.0.protocol
    }
    pub fn remote(&self) -> SocketAddr {
        self.0.remote
    }
    /// Unix ms when this gateway opened (or resumed) the session.
    pub fn opened_ms(&self) -> u64 {
        self.0.opened_ms
    }
    pub fn age(&self) -> Duration {
        self.0.opened.elapsed()
    }
    /// (service_type, endpoint) of each binding now.
    pub fn bindings(&self) -> Vec<(u16, Arc<str>)> {
        self.0
            .bindings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn set_bindings(&self, b: Vec<(u16, Arc<str>)>) {
        *self.0.bindings.lock().unwrap_or_else(|p| p.into_inner()) = b;
    }

    /// Closes the session with an operator's code and reason (falls back to
    /// `kicked` if the queue is full).
    pub fn kick(&self, code: u16, reason: String) {
        if !self.deliver(Outbound::Close { code, reason }) {
            self.close(CloseCode::Kicked);
        }
    }

    /// Queues a message without waiting. A full queue means the client is
    /// not reading fast enough: the session is closed as a slow consumer.
    /// Returns whether the message was queued.
    pub fn deliver(&self, msg: Outbound) -> bool {
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.0.queue_cap {
            drop(q);
            self.close(CloseCode::SlowConsumer);
            return false;
        }
        q.push_back(msg);
        drop(q);
        self.0.ready.notify_one();
        true
    }

    /// Asks the session task to close with `code` as soon as it can; works
    /// even when the queue is full. The first requested code wins.
    pub fn close(&self, code: CloseCode) {
        let _ =
            self.0
                .close_code
                .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire);
        // The same wake-up as the queue: one Notify per session, one
        // branch in the session's select loop.
        self.0.ready.notify_one();
    }

    /// The close requested from outside, if any.
    pub fn requested_close(&self) -> Option<CloseCode> {
        CloseCode::from_u16(self.0.close_code.load(Ordering::Acquire))
    }
}

/// The receiving end of a session's queue, owned by the session's task.
pub struct Inbox(Arc<Inner>);

impl Inbox {
    /// Next message, waiting if there is none; `None` once a close was
    /// requested (it takes priority over queued messages). Cancel-safe.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            if self.0.close_code.load(Ordering::Acquire) != 0 {
                return None;
            }
            if let Some(m) = self.try_recv() {
                return Some(m);
            }
            // A push between the check and here leaves a permit, so no
            // wake-up is lost.
            self.0.ready.notified().await;
        }
    }

    /// Next message if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        let m = q.pop_front();
        // Give back memory after a burst.
        if q.is_empty() && q.capacity() > 16 {
            *q = VecDeque::new();
        }
        m
    }
}

/// Session ids unique across the cluster without coordination: the high 32
/// bits are random per gateway process, the low 32 count up from 1. Two
/// processes collide only if they draw the same prefix (p ≈ n²/2³³ for a
/// fleet of n processes over a restart cycle) — and the display form always
/// carries the gateway id as well.
pub struct SessionIds {
    prefix: u64,
    next: std::sync::atomic::AtomicU64,
}

impl SessionIds {
    pub fn new() -> SessionIds {
        SessionIds {
            prefix: u64::from(fastrand::u32(1..)) << 32,
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub fn next_id(&self) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
        self.prefix | n.max(1)
    }
}

impl Default for SessionIds {
    fn default() -> Self {
        SessionIds::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_and_distinct() {
        let ids = SessionIds::new();
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(a >> 32, b >> 32);
    }

    #[tokio::test]
    async fn full_queue_closes_as_slow_consumer() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let (h, mut rx) = SessionHandle::new(1, 2, 0, Protocol::Tcp, addr, 2);
        assert!(h.deliver(Outbound::Frame(Bytes::new())));
        assert!(h.deliver(Outbound::Frame(Bytes::new())));
        assert!(!h.deliver(Outbound::Frame(Bytes::new())));
        assert_eq!(h.requested_close(), Some(CloseCode::SlowConsumer));
        // A later close does not override the first reason.
        h.close(CloseCode::Shutdown);
        assert_eq!(h.requested_close(), Some(CloseCode::SlowConsumer));
        assert!(
            rx.recv().await.is_none(),
            "a requested close ends the inbox"
        );
    }
}
