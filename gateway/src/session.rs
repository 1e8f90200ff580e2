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
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use gg_proto::CloseCode;
use tokio::net::tcp::OwnedWriteHalf;

use crate::metrics::Protocol;

/// How much a session's queue toward its client may hold: frames and
/// bytes (`limits.session_queue`, `limits.session_queue_bytes`). One
/// message always fits an empty queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueBound {
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
}

/// Tests give a frame bound alone.
#[cfg(test)]
impl From<usize> for QueueBound {
    fn from(frames: usize) -> QueueBound {
        QueueBound {
            frames,
            bytes: usize::MAX,
        }
    }
}

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
    /// The unwritten tail of a frame that a direct write
    /// ([`SessionHandle::deliver_frames`]) could only partly write: it goes
    /// out before anything else (already counted in the metrics).
    Rest(Bytes),
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

/// A binding as admin lookups see it: (service_type, endpoint).
type BindingRef = (u16, Arc<str>);

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
    queue_cap: u32,
    /// Most bytes of frames queued at once (unless the queue is empty).
    queue_cap_bytes: u32,
    /// The session task is writing (or has frames to write): direct
    /// writes queue instead. Read and written only under `queue`'s lock;
    /// an atomic only so that it sits here, in padding, and not in `Queue`
    /// (which would take the state past its allocation class).
    task_writes: AtomicBool,
    /// The worker whose thread runs the session's task, the only one that
    /// takes the shared writer away (batched direct writes start only on
    /// it). Written once under `queue`'s lock; in padding, like
    /// `task_writes`.
    direct_worker: AtomicU16,
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
}

/// Queued messages and the frames they carry (a [`Outbound::Frames`] counts
/// its frames), so the bound is in frames however they were grouped.
///
/// For a plain TCP session the queue also holds the socket's write half, so
/// a backend reader can write a reply straight to an idle client
/// ([`SessionHandle::deliver_frames`]) instead of waking the session task
/// to write it. Frames never interleave: a direct write starts only while
/// the task does not own the writer (`Inner::task_writes`), nothing is queued and
/// no tail is left; a partial write queues its tail ([`Outbound::Rest`],
/// then alone in the queue, so first) and hands the writer to the task.
#[derive(Default)]
struct Queue {
    msgs: VecDeque<Outbound>,
    frames: u32,
    /// Bytes of the frames in `msgs`.
    bytes: u32,
    direct: Option<OwnedWriteHalf>,
    /// (service_type, endpoint) of each binding, for admin lookups; written
    /// only when bindings change (a boxed slice: a word smaller than a
    /// `Vec`, in every session; under the queue's lock rather than a lock
    /// of its own, which would cost every session 8 bytes more).
    bindings: Box<[BindingRef]>,
}

impl Outbound {
    /// Frames this message puts in the queue (control messages count one).
    fn weight(&self) -> u32 {
        match self {
            Outbound::Frames { count, .. } => *count,
            _ => 1,
        }
    }

    /// Bytes of frames this message holds (control messages: none).
    fn bytes(&self) -> u32 {
        match self {
            Outbound::Frame(b) | Outbound::Rest(b) | Outbound::Frames { raw: b, .. } => {
                b.len().min(u32::MAX as usize) as u32
            }
            _ => 0,
        }
    }
}

/// What [`SessionHandle::deliver_frames`] did with the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Written to the client's socket (at least partly; the task writes
    /// the rest): the caller counts them as sent.
    Written,
    /// Queued for the session task, which counts them when it writes.
    Queued,
    /// Not accepted (the queue was full: the session closes as a slow
    /// consumer).
    Refused,
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
    /// A handle and the receiving end of its queue (bounded by `queue`).
    pub(crate) fn new(
        id: u64,
        user_id: u64,
        realm_id: u32,
        protocol: Protocol,
        remote: SocketAddr,
        queue: impl Into<QueueBound>,
    ) -> (SessionHandle, Inbox) {
        let queue = queue.into();
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
            queue_cap: queue.frames.clamp(1, u32::MAX as usize) as u32,
            queue_cap_bytes: queue.bytes.clamp(1, u32::MAX as usize) as u32,
            waker: AtomicWaker::new(),
            close_code: AtomicU16::new(0),
            task_writes: AtomicBool::new(false),
            direct_worker: AtomicU16::new(0),
            last_rx_ms: AtomicU64::new(0),
            goaway_deadline_ms: AtomicU64::new(0),
        };
        let inner = Arc::new(inner);
        let inbox = Inbox {
            inner: inner.clone(),
            shared: false,
            owns: true,
        };
        (SessionHandle(inner), inbox)
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
        self.0.queue.lock().bindings.to_vec()
    }
    fn set_bindings(&self, b: Vec<(u16, Arc<str>)>) {
        let b = b.into_boxed_slice();
        // The old slice is dropped after the lock is released.
        let _old = std::mem::replace(&mut self.0.queue.lock().bindings, b);
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
        let q = self.0.queue.lock();
        self.push(q, msg)
    }

    /// Queues `msg` (see [`SessionHandle::deliver`]) on the locked queue.
    fn push(&self, mut q: parking_lot::MutexGuard<'_, Queue>, msg: Outbound) -> bool {
        let (weight, bytes) = (msg.weight(), msg.bytes());
        // One message always fits an empty queue, whatever it carries.
        let over = u64::from(q.frames) + u64::from(weight) > u64::from(self.0.queue_cap)
            || u64::from(q.bytes) + u64::from(bytes) > u64::from(self.0.queue_cap_bytes);
        if over && !q.msgs.is_empty() {
            drop(q);
            self.close(CloseCode::SlowConsumer);
            return false;
        }
        q.frames += weight;
        q.bytes = q.bytes.saturating_add(bytes);
        q.msgs.push_back(msg);
        drop(q);
        self.0.waker.wake();
        true
    }

    /// Hands `count` whole frames (back to back in `raw`) from a backend to
    /// the session. A plain TCP session whose task has nothing to write
    /// gets them written to its socket right here, one `write` and no
    /// wake-up of the task; otherwise (or when the socket would block) they
    /// are queued as [`SessionHandle::deliver`] does. A close requested
    /// meanwhile stops direct writes, as it stops the task's.
    pub(crate) fn deliver_frames(&self, raw: Bytes, count: u32) -> Delivered {
        let mut q = self.0.queue.lock();
        if let Some(wr) = &q.direct
            && !self.0.task_writes.load(Ordering::Relaxed)
            && q.msgs.is_empty()
            && self.0.close_code.load(Ordering::Acquire) == 0
        {
            match wr.try_write(&raw) {
                Ok(n) if n == raw.len() => return Delivered::Written,
                Ok(n) if n > 0 => {
                    let rest = Outbound::Rest(raw.slice(n..));
                    q.frames += 1;
                    q.bytes = q.bytes.saturating_add(rest.bytes());
                    q.msgs.push_back(rest);
                    self.0.task_writes.store(true, Ordering::Relaxed);
                    drop(q);
                    self.0.waker.wake();
                    return Delivered::Written;
                }
                // Would block (or failed: the task finds out on its own
                // write or read): the task writes them.
                _ => {}
            }
        }
        let msg = if count == 1 {
            Outbound::Frame(raw)
        } else {
            Outbound::Frames { raw, count }
        };
        if self.push(q, msg) {
            Delivered::Queued
        } else {
            Delivered::Refused
        }
    }

    /// Starts a batched direct write (`backend::sendbatch`): when the run
    /// may be written straight to the socket now, returns the socket's fd
    /// and holds the writer (nothing else writes, later runs queue) until
    /// [`SessionHandle::end_direct`].
    pub(crate) fn begin_direct(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let q = self.0.queue.lock();
        let wr = q.direct.as_ref()?;
        if self.0.task_writes.load(Ordering::Relaxed)
            || usize::from(self.0.direct_worker.load(Ordering::Relaxed))
                != crate::workers::current()
            || !q.msgs.is_empty()
            || self.0.close_code.load(Ordering::Acquire) != 0
        {
            return None;
        }
        self.0.task_writes.store(true, Ordering::Relaxed);
        Some(wr.as_ref().as_raw_fd())
    }

    /// Ends a batched direct write that wrote `written` bytes of `raw`
    /// (`None`: it would block or failed). What was not written goes
    /// first in the queue, for the task.
    pub(crate) fn end_direct(&self, raw: Bytes, count: u32, written: Option<usize>) -> Delivered {
        let mut q = self.0.queue.lock();
        self.0.task_writes.store(false, Ordering::Relaxed);
        let msg = match written {
            Some(n) if n >= raw.len() => return Delivered::Written,
            Some(n) if n > 0 => Outbound::Rest(raw.slice(n..)),
            _ if count == 1 => Outbound::Frame(raw),
            _ => Outbound::Frames { raw, count },
        };
        let partial = matches!(msg, Outbound::Rest(_));
        q.frames += msg.weight();
        q.bytes = q.bytes.saturating_add(msg.bytes());
        q.msgs.push_front(msg);
        if partial {
            self.0.task_writes.store(true, Ordering::Relaxed);
        }
        drop(q);
        self.0.waker.wake();
        if partial {
            Delivered::Written
        } else {
            Delivered::Queued
        }
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
pub(crate) struct Inbox {
    inner: Arc<Inner>,
    /// The socket's write half is shared with direct writers.
    shared: bool,
    /// The task owns the writer (`Inner::task_writes`, cached so the task
    /// takes no lock while it keeps it).
    owns: bool,
}

impl Inbox {
    /// Shares the client socket's write half with direct writers
    /// ([`SessionHandle::deliver_frames`]). The task owns it until it
    /// [`Inbox::release`]s it.
    pub(crate) fn share_writer(&mut self, wr: OwnedWriteHalf) {
        let mut q = self.inner.queue.lock();
        q.direct = Some(wr);
        (self.inner.direct_worker).store(crate::workers::current() as u16, Ordering::Relaxed);
        self.inner.task_writes.store(true, Ordering::Relaxed);
        self.shared = true;
        self.owns = true;
    }

    /// Takes the writer for the task before it queues a frame of its own;
    /// returns the tail a partial direct write left, which must go first.
    pub(crate) fn claim(&mut self) -> Option<Bytes> {
        if self.owns || !self.shared {
            return None;
        }
        let mut q = self.inner.queue.lock();
        self.inner.task_writes.store(true, Ordering::Relaxed);
        self.owns = true;
        Inbox::take_rest(&mut q)
    }

    /// The tail of a partial direct write: when there is one it is first.
    fn take_rest(q: &mut Queue) -> Option<Bytes> {
        if !matches!(q.msgs.front(), Some(Outbound::Rest(_))) {
            return None;
        }
        q.frames -= 1;
        match q.msgs.pop_front() {
            Some(Outbound::Rest(rest)) => {
                q.bytes = q
                    .bytes
                    .saturating_sub(rest.len().min(u32::MAX as usize) as u32);
                Some(rest)
            }
            _ => None,
        }
    }

    /// Gives the writer back once everything the task had is written and
    /// nothing is queued (else the task keeps it and goes on).
    pub(crate) fn release(&mut self) {
        if !self.owns || !self.shared {
            return;
        }
        let q = self.inner.queue.lock();
        if q.msgs.is_empty() {
            self.inner.task_writes.store(false, Ordering::Relaxed);
            self.owns = false;
        }
    }

    /// Ends direct writes for good (the session is closing) and returns
    /// the write half with the tail of a partial write, if any.
    pub(crate) fn unshare(&mut self) -> Option<(OwnedWriteHalf, Option<Bytes>)> {
        if !self.shared {
            return None;
        }
        let mut q = self.inner.queue.lock();
        self.inner.task_writes.store(true, Ordering::Relaxed);
        self.shared = false;
        self.owns = true;
        let wr = q.direct.take()?;
        Some((wr, Inbox::take_rest(&mut q)))
    }

    /// Next message, or `Pending` with the task's waker registered; `None`
    /// once a close was requested (it takes priority over queued messages).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        // Registered before the check, so a push after the check wakes
        // this waker; one look at the queue per poll (it is usually empty:
        // the task was woken by its client).
        self.inner.waker.register(cx.waker());
        match self.ready() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    /// `Ready` once a close was requested from outside (a takeover, a kick,
    /// a timer), so a write stalled on a slow client can be abandoned.
    pub(crate) fn poll_close_requested(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.close_code.load(Ordering::Acquire) != 0 {
            return Poll::Ready(());
        }
        self.inner.waker.register(cx.waker());
        if self.inner.close_code.load(Ordering::Acquire) != 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn ready(&mut self) -> Option<Option<Outbound>> {
        if self.inner.close_code.load(Ordering::Acquire) != 0 {
            return Some(None);
        }
        self.try_recv().map(Some)
    }

    /// Next message, waiting if there is none (see [`Inbox::poll_recv`]).
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Next message if one is queued. Taking a message takes the writer:
    /// the task writes what it took before any direct write may start
    /// again.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        let mut q = self.inner.queue.lock();
        let m = q.msgs.pop_front()?;
        if self.shared {
            self.inner.task_writes.store(true, Ordering::Relaxed);
            self.owns = true;
        }
        q.frames -= m.weight();
        q.bytes = q.bytes.saturating_sub(m.bytes());
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
pub(crate) mod tests {
    use super::*;

    /// Every session holds one `Inner` (behind an `Arc`, 16 bytes more):
    /// keep the allocation in the 256-byte size class.
    #[test]
    fn session_state_fits_its_allocation_class() {
        let size = std::mem::size_of::<Inner>();
        assert!(size + 16 <= 256, "session state grew to {size} bytes");
    }

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
    async fn a_queue_over_its_bytes_closes_as_slow_consumer() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let bound = QueueBound {
            frames: 100,
            bytes: 10_000,
        };
        let frame = |n: usize| Outbound::Frame(Bytes::from(vec![0u8; n]));
        let (h, mut rx) = SessionHandle::new(1, 2, 0, Protocol::Tcp, addr, bound);
        // One message fits an empty queue, however large.
        assert!(h.deliver(frame(50_000)));
        assert!(rx.try_recv().is_some());
        // Taken off, its bytes are free again.
        assert!(h.deliver(frame(6_000)));
        assert!(h.deliver(frame(4_000)), "exactly at the bound");
        assert_eq!(h.requested_close(), None);
        assert!(!h.deliver(frame(1)), "one byte over");
        assert_eq!(h.requested_close(), Some(CloseCode::SlowConsumer));
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

    /// A session with its client socket's write half shared, and the
    /// client's end of that socket.
    /// A TCP session whose socket's write half is shared for direct
    /// writes, and the client end of that socket.
    pub(crate) async fn shared_session(
        queue: usize,
    ) -> (SessionHandle, Inbox, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, remote) = l.accept().await.unwrap();
        let (h, mut rx) = SessionHandle::new(1, 2, 0, Protocol::Tcp, remote, queue);
        // The socket lives on in the write half.
        let (_, wr) = server.into_split();
        rx.share_writer(wr);
        (h, rx, client)
    }

    pub(crate) async fn read_exact(client: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; n];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf))
            .await
            .expect("bytes arrive")
            .unwrap();
        buf
    }

    #[tokio::test]
    async fn frames_go_straight_to_an_idle_socket_and_queue_while_the_task_writes() {
        let (h, mut rx, mut client) = shared_session(8).await;
        // The task owns the writer until it releases it (after WELCOME).
        assert_eq!(
            h.deliver_frames(Bytes::from_static(b"one"), 1),
            Delivered::Queued
        );
        assert!(matches!(rx.try_recv(), Some(Outbound::Frame(f)) if &f[..] == b"one"));
        rx.release();
        assert_eq!(
            h.deliver_frames(Bytes::from_static(b"two"), 1),
            Delivered::Written
        );
        assert!(rx.try_recv().is_none(), "a direct write queues nothing");
        assert_eq!(read_exact(&mut client, 3).await, b"two");
        // A frame of the task's own takes the writer back.
        assert!(rx.claim().is_none());
        assert_eq!(
            h.deliver_frames(Bytes::from_static(b"three"), 1),
            Delivered::Queued
        );
        // Not released while something is queued.
        rx.release();
        assert_eq!(
            h.deliver_frames(Bytes::from_static(b"four"), 1),
            Delivered::Queued
        );
        assert!(rx.try_recv().is_some() && rx.try_recv().is_some());
        rx.release();
        // A requested close stops direct writes.
        h.close(CloseCode::Kicked);
        assert_eq!(
            h.deliver_frames(Bytes::from_static(b"five"), 1),
            Delivered::Queued
        );
    }

    #[tokio::test]
    async fn a_partial_direct_write_leaves_its_tail_first_for_the_task() {
        let (h, mut rx, mut client) = shared_session(8).await;
        rx.release();
        // More than the socket buffers take at once.
        let big: Bytes = (0..64u32 << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        assert_eq!(h.deliver_frames(big.clone(), 1), Delivered::Written);
        // Nothing may be written before the tail: later frames queue.
        assert_eq!(
            h.deliver_frames(Bytes::from_static(b"after"), 1),
            Delivered::Queued
        );
        let Some(Outbound::Rest(rest)) = rx.try_recv() else {
            panic!("the tail comes first");
        };
        assert!(!rest.is_empty() && rest.len() < big.len());
        assert_eq!(&big[big.len() - rest.len()..], &rest[..]);
        assert!(matches!(rx.try_recv(), Some(Outbound::Frame(f)) if &f[..] == b"after"));
        // What was written directly arrives intact.
        let head = read_exact(&mut client, big.len() - rest.len()).await;
        assert!(head == big[..head.len()]);
        // Closing takes the writer back with no tail left behind.
        let (_wr, tail) = rx.unshare().expect("shared");
        assert!(tail.is_none());
        rx.release();
        assert_eq!(
            h.deliver_frames(Bytes::from_static(b"late"), 1),
            Delivered::Queued
        );
    }

    #[tokio::test]
    async fn closing_takes_the_tail_of_a_partial_write() {
        let (h, mut rx, _client) = shared_session(8).await;
        rx.release();
        let big = Bytes::from(vec![7u8; 64 << 20]);
        assert_eq!(h.deliver_frames(big, 1), Delivered::Written);
        let (_wr, tail) = rx.unshare().expect("shared");
        assert!(tail.is_some_and(|t| !t.is_empty()));
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
