//! Sessions: one task per client connection owns its state ([`hello`]
//! opens it, [`live`] runs it, [`binding`] ties it to backends, [`closing`]
//! ends it); everyone else reaches it through a cheap [`SessionHandle`]
//! whose bounded queue is the only way in. A full queue never blocks the
//! sender: the session is closed as a slow consumer instead, so memory per
//! session stays bounded whatever the client does.

pub(crate) mod binding;
pub(crate) mod closing;
pub(crate) mod hello;
pub(crate) mod io;
pub(crate) mod live;
pub(crate) mod table;
pub(crate) mod ws;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use gg_proto::CloseCode;

use crate::metrics::Protocol;

/// A message for a session's task.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// An encoded frame to write to the client as is.
    Frame(Bytes),
    /// `count` whole encoded frames back to back, as they arrived together
    /// from a backend for this session: written with one copy-free slice
    /// instead of `count` queue entries and wake-ups.
    Frames { raw: Bytes, count: u32 },
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
    /// The region the client asked for (HELLO `region`, HTTP `x-region`).
    region: std::sync::OnceLock<Box<str>>,
    /// The session's bounded queue. A `VecDeque` rather than a channel: an
    /// idle session's queue holds no allocation at all.
    queue: parking_lot::Mutex<Queue>,
    /// Most frames queued at once.
    queue_cap: usize,
    /// The session task, woken by a queued message or a close request. One
    /// waker, not a `Notify`: the task polls its sources by hand, and an
    /// `AtomicWaker` costs neither a waiter list nor a future per poll.
    waker: AtomicWaker,
    /// A close requested from outside the task (0 = none); first writer wins.
    close_code: AtomicU16,
    /// Milliseconds after `opened` of the last frame from the client, for
    /// the idle sweep ([`SessionHandle::check_timers`]).
    last_rx_ms: AtomicU64,
    /// Milliseconds after `opened` at which a session told to GOAWAY is
    /// closed if it is still here (0 = no deadline).
    goaway_deadline_ms: AtomicU64,
    /// (service_type, endpoint) of each binding, for admin lookups; written
    /// only when bindings change.
    bindings: parking_lot::Mutex<Vec<(u16, Arc<str>)>>,
}

/// Queued messages and the frames they carry (a [`Outbound::Frames`] counts
/// its frames), so the bound is in frames however they were grouped.
#[derive(Default)]
struct Queue {
    msgs: VecDeque<Outbound>,
    frames: usize,
}

impl Outbound {
    /// Frames this message puts in the queue (control messages count one).
    fn weight(&self) -> usize {
        match self {
            Outbound::Frames { count, .. } => *count as usize,
            _ => 1,
        }
    }
}

/// A cloneable reference to a live session.
#[derive(Clone)]
pub(crate) struct SessionHandle(Arc<Inner>);

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.0.id).finish()
    }
}

impl SessionHandle {
    /// A handle and the receiving end of its queue (capacity `queue`).
    pub(crate) fn new(
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
            opened_ms: gg_runtime::clock::now_ms(),
            region: std::sync::OnceLock::new(),
            queue: parking_lot::Mutex::new(Queue::default()),
            queue_cap: queue.max(1),
            waker: AtomicWaker::new(),
            close_code: AtomicU16::new(0),
            last_rx_ms: AtomicU64::new(0),
            goaway_deadline_ms: AtomicU64::new(0),
            bindings: parking_lot::Mutex::new(Vec::new()),
        };
        let inner = Arc::new(inner);
        (SessionHandle(inner.clone()), Inbox(inner))
    }

    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }
    /// The same session (not merely the same id).
    pub(crate) fn same(&self, other: &SessionHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
    pub(crate) fn user_id(&self) -> u64 {
        self.0.user_id
    }
    pub(crate) fn realm_id(&self) -> u32 {
        self.0.realm_id
    }
    pub(crate) fn protocol(&self) -> Protocol {
        self.0.protocol
    }
    /// The client's region, once (an invalid name is ignored).
    pub(crate) fn set_region(&self, region: &str) {
        if gg_proto::model::valid_region(region) {
            let _ = self.0.region.set(region.into());
        }
    }

    pub(crate) fn region(&self) -> Option<&str> {
        self.0.region.get().map(|r| &**r)
    }

    pub(crate) fn remote(&self) -> SocketAddr {
        self.0.remote
    }
    /// Unix ms when this gateway opened (or resumed) the session.
    pub(crate) fn opened_ms(&self) -> u64 {
        self.0.opened_ms
    }
    pub(crate) fn age(&self) -> Duration {
        self.0.opened.elapsed()
    }
    /// (service_type, endpoint) of each binding now.
    pub(crate) fn bindings(&self) -> Vec<(u16, Arc<str>)> {
        self.0.bindings.lock().clone()
    }
    fn set_bindings(&self, b: Vec<(u16, Arc<str>)>) {
        *self.0.bindings.lock() = b;
    }

    /// Closes the session with an operator's code and reason (falls back to
    /// `kicked` if the queue is full).
    pub(crate) fn kick(&self, code: u16, reason: String) {
        if !self.deliver(Outbound::Close { code, reason }) {
            self.close(CloseCode::Kicked);
        }
    }

    /// Queues a message without waiting. A full queue means the client is
    /// not reading fast enough: the session is closed as a slow consumer.
    /// Returns whether the message was queued.
    pub(crate) fn deliver(&self, msg: Outbound) -> bool {
        let mut q = self.0.queue.lock();
        let weight = msg.weight();
        // One message always fits an empty queue, whatever it carries.
        if q.frames + weight > self.0.queue_cap && !q.msgs.is_empty() {
            drop(q);
            self.close(CloseCode::SlowConsumer);
            return false;
        }
        q.frames += weight;
        q.msgs.push_back(msg);
        drop(q);
        self.0.waker.wake();
        true
    }

    /// Asks the session task to close with `code` as soon as it can; works
    /// even when the queue is full. The first requested code wins.
    pub(crate) fn close(&self, code: CloseCode) {
        let _ =
            self.0
                .close_code
                .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire);
        // The same wake-up as the queue.
        self.0.waker.wake();
    }

    /// The close requested from outside, if any.
    pub(crate) fn requested_close(&self) -> Option<CloseCode> {
        CloseCode::from_u16(self.0.close_code.load(Ordering::Acquire))
    }

    fn ms_since_open(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.0.opened).as_millis() as u64
    }

    /// Records a frame from the client at `now` (one relaxed store).
    pub(crate) fn touch(&self, now: Instant) {
        self.0
            .last_rx_ms
            .store(self.ms_since_open(now), Ordering::Relaxed);
    }

    /// Sets (or with `None` clears) the time after which a session told to
    /// GOAWAY is closed.
    pub(crate) fn set_goaway_deadline(&self, at: Option<Instant>) {
        let ms = at.map_or(0, |t| self.ms_since_open(t).max(1));
        self.0.goaway_deadline_ms.store(ms, Ordering::Relaxed);
    }

    /// The session's timers, checked by a sweep over the table instead of a
    /// timer per session (which would cost every idle session a timer entry
    /// and a future). Asks the session to close — `heartbeat_timeout` when
    /// no frame came for `idle_timeout`, `shutdown` past a GOAWAY deadline —
    /// and returns the code it asked for.
    pub(crate) fn check_timers(&self, now: Instant, idle_timeout: Duration) -> Option<CloseCode> {
        let age = self.ms_since_open(now);
        let idle = age.saturating_sub(self.0.last_rx_ms.load(Ordering::Relaxed));
        let goaway = self.0.goaway_deadline_ms.load(Ordering::Relaxed);
        let code = if idle >= idle_timeout.as_millis() as u64 {
            CloseCode::HeartbeatTimeout
        } else if goaway != 0 && age >= goaway {
            CloseCode::Shutdown
        } else {
            return None;
        };
        self.close(code);
        Some(code)
    }
}

/// The receiving end of a session's queue, owned by the session's task.
pub(crate) struct Inbox(Arc<Inner>);

impl Inbox {
    /// Next message, or `Pending` with the task's waker registered; `None`
    /// once a close was requested (it takes priority over queued messages).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        if let Some(r) = self.ready() {
            return Poll::Ready(r);
        }
        self.0.waker.register(cx.waker());
        // Checked again: a push between the first check and the register
        // woke the previous waker, not this one.
        match self.ready() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    /// `Ready` once a close was requested from outside (a takeover, a kick,
    /// a timer), so a write stalled on a slow client can be abandoned.
    pub(crate) fn poll_close_requested(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.close_code.load(Ordering::Acquire) != 0 {
            return Poll::Ready(());
        }
        self.0.waker.register(cx.waker());
        if self.0.close_code.load(Ordering::Acquire) != 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn ready(&mut self) -> Option<Option<Outbound>> {
        if self.0.close_code.load(Ordering::Acquire) != 0 {
            return Some(None);
        }
        self.try_recv().map(Some)
    }

    /// Next message, waiting if there is none (see [`Inbox::poll_recv`]).
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Next message if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        let mut q = self.0.queue.lock();
        let m = q.msgs.pop_front()?;
        q.frames -= m.weight();
        // Give back memory after a burst.
        if q.msgs.is_empty() && q.msgs.capacity() > 16 {
            q.msgs = VecDeque::new();
        }
        Some(m)
    }
}

/// Session ids unique across the cluster without coordination: the high 32
/// bits are random per gateway process, the low 32 count up from 1. Two
/// processes collide only if they draw the same prefix (p ≈ n²/2³³ for a
/// fleet of n processes over a restart cycle) — and the display form always
/// carries the gateway id as well.
pub(crate) struct SessionIds {
    prefix: u64,
    next: std::sync::atomic::AtomicU64,
}

impl SessionIds {
    pub(crate) fn new() -> SessionIds {
        SessionIds {
            prefix: u64::from(fastrand::u32(1..)) << 32,
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
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

    #[test]
    fn a_batch_counts_its_frames_against_the_queue() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let batch = |count| Outbound::Frames {
            raw: Bytes::new(),
            count,
        };
        let (h, _rx) = SessionHandle::new(1, 2, 0, Protocol::Tcp, addr, 4);
        assert!(h.deliver(batch(3)));
        assert!(h.deliver(Outbound::Frame(Bytes::new())));
        // 4 frames queued: a fifth does not fit.
        assert!(!h.deliver(Outbound::Frame(Bytes::new())));
        assert_eq!(h.requested_close(), Some(CloseCode::SlowConsumer));
        // Taking the batch out gives its 3 frames back.
        let (h, mut rx2) = SessionHandle::new(2, 2, 0, Protocol::Tcp, addr, 4);
        assert!(h.deliver(batch(3)));
        assert!(matches!(
            rx2.try_recv(),
            Some(Outbound::Frames { count: 3, .. })
        ));
        assert!(h.deliver(batch(3)));
        assert!(h.deliver(Outbound::Frame(Bytes::new())));
        assert_eq!(h.requested_close(), None);
        // A batch larger than the queue still fits an empty queue.
        let (h, _rx3) = SessionHandle::new(3, 2, 0, Protocol::Tcp, addr, 4);
        assert!(h.deliver(batch(9)));
        assert!(!h.deliver(Outbound::Frame(Bytes::new())));
    }

    #[tokio::test]
    async fn a_delivery_wakes_a_waiting_inbox() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let (h, mut rx) = SessionHandle::new(1, 2, 0, Protocol::Tcp, addr, 4);
        let waiter = tokio::spawn(async move { rx.recv().await.map(|m| format!("{m:?}")) });
        tokio::task::yield_now().await;
        assert!(h.deliver(Outbound::GoAwayCancelled));
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got.as_deref(), Some("GoAwayCancelled"));
    }

    #[test]
    fn timers_close_idle_sessions_and_overdue_goaways() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let idle = Duration::from_secs(10);
        let (h, _rx) = SessionHandle::new(1, 2, 0, Protocol::Tcp, addr, 4);
        let t0 = h.0.opened;
        assert_eq!(h.check_timers(t0 + Duration::from_secs(9), idle), None);
        // A frame at 5 s pushes the idle deadline to 15 s.
        h.touch(t0 + Duration::from_secs(5));
        assert_eq!(h.check_timers(t0 + Duration::from_secs(14), idle), None);
        // A GOAWAY deadline at 12 s closes it first.
        h.set_goaway_deadline(Some(t0 + Duration::from_secs(12)));
        assert_eq!(h.check_timers(t0 + Duration::from_secs(11), idle), None);
        h.set_goaway_deadline(None);
        assert_eq!(h.check_timers(t0 + Duration::from_secs(13), idle), None);
        h.set_goaway_deadline(Some(t0 + Duration::from_secs(12)));
        assert_eq!(
            h.check_timers(t0 + Duration::from_secs(13), idle),
            Some(CloseCode::Shutdown)
        );
        let (h, _rx) = SessionHandle::new(3, 2, 0, Protocol::Tcp, addr, 4);
        let t0 = h.0.opened;
        h.touch(t0 + Duration::from_secs(5));
        assert_eq!(
            h.check_timers(t0 + Duration::from_secs(15), idle),
            Some(CloseCode::HeartbeatTimeout)
        );
        assert_eq!(h.requested_close(), Some(CloseCode::HeartbeatTimeout));
    }
}
