//! Backend pool: per endpoint a fixed number of long-lived TCP connections,
//! each multiplexing many sessions (HELLO with gateway_id once, then
//! OPEN/DATA/CLOSE by session id). One task per connection owns the socket
//! and reconnects with exponential backoff and jitter ([`conn`]).
//!
//! Sessions talk to a connection through a bounded queue of [`ToBackend`]
//! messages addressed to the connection *generation* they were meant for; a
//! message for an older generation (the connection dropped meanwhile) is
//! refused, and what was queued for a connection that dropped is discarded
//! with it, so a backend never sees DATA for a session it was not told
//! about. The queue is the bytes themselves ([`Conn::try_send`] appends the
//! encoded frames; the writer takes them all for one write).

pub(crate) mod breaker;
pub(crate) mod conn;
pub(crate) mod sendbatch;

use std::collections::HashSet;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;

use crate::session::SessionHandle;
use breaker::Breaker;

/// What a session asks of a backend connection.
pub(crate) enum ToBackend {
    /// Bind `session` to this connection and send its OPEN frame.
    Open {
        session: SessionHandle,
        frame: Bytes,
    },
    /// Forward one encoded frame as it is (DATA, or PONG from the reader).
    Frame(Bytes),
    /// Forward `count` encoded frames of one session, back to back.
    Frames { raw: Bytes, count: u32 },
    /// Unbind the session and send its CLOSE frame.
    Close { session_id: u64, frame: Bytes },
}

impl ToBackend {
    /// The encoded frames the message carries.
    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            ToBackend::Open { frame, .. }
            | ToBackend::Frame(frame)
            | ToBackend::Close { frame, .. } => frame,
            ToBackend::Frames { raw, .. } => raw,
        }
    }

    /// `count` frames back to back in `raw`.
    pub(crate) fn frames(raw: Bytes, count: u32) -> ToBackend {
        if count == 1 {
            ToBackend::Frame(raw)
        } else {
            ToBackend::Frames { raw, count }
        }
    }
}

/// Why a message could not be queued to a backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The connection is down (or restarted since the caller looked).
    Down,
    /// The queue is full: the backend or the link is slower than the load.
    Full,
}

/// Sessions bound to one connection, by session id. Looked up once per
/// run of replies: foldhash (seeded per process) instead of SipHash, which
/// the profile showed in every lookup; the ids are the gateway's own, and
/// a backend's unknown id is only ever looked up, never inserted.
type BoundMap = HashMap<u64, SessionHandle, foldhash::fast::RandomState>;

/// Encoded frames waiting for the writer of one connection generation.
/// Small messages are appended to `buf` (the one copy of a frame on its
/// way to the backend); a message of [`CHUNK_MIN`] bytes or more is kept
/// as it is, in `chunks`, with no copy (what `buf` held before it goes
/// there first, so the order stays). The writer swaps both for its own
/// empty ones and writes them with one `writev`, so neither side
/// allocates once the buffers have grown.
#[derive(Default)]
struct Out {
    generation: u64,
    chunks: VecDeque<Bytes>,
    buf: BytesMut,
    /// Bytes in `chunks` and `buf` (the bound, `backend.queue_bytes`).
    bytes: usize,
    /// Messages queued (the bound, `backend.queue`) and the frames they
    /// hold (the metric).
    msgs: usize,
    frames: u64,
}

/// Messages at least this long are queued without a copy: copying them
/// (and growing the buffer that takes them) cost more than a slice of the
/// `writev` (16 KiB frames at 16 in flight: 12 % of the gateway's CPU in
/// `memmove`, 7 % of it regrowing the buffer).
pub(crate) const CHUNK_MIN: usize = 8 * 1024;

/// A pooled connection as the rest of the gateway sees it.
/// `state = generation << 1 | up`, one atomic so readers see a consistent
/// pair.
pub(crate) struct Conn {
    out: Mutex<Out>,
    /// Most messages `out` holds (`backend.queue`); a CLOSE always fits.
    cap: usize,
    /// Most bytes `out` holds (`backend.queue_bytes`) unless it is empty;
    /// a CLOSE always fits.
    cap_bytes: usize,
    /// The connection's writer, woken when `out` gets its first bytes.
    writer: AtomicWaker,
    state: AtomicU64,
    /// Sessions bound to the current incarnation: added when their OPEN is
    /// queued, removed when their CLOSE is (or when the backend kicks
    /// them). Never held across an await.
    bound: Mutex<BoundMap>,
}

impl Conn {
    fn new(cap: usize, cap_bytes: usize) -> Conn {
        Conn {
            out: Mutex::new(Out::default()),
            cap: cap.max(1),
            cap_bytes,
            writer: AtomicWaker::new(),
            state: AtomicU64::new(0),
            bound: Mutex::new(BoundMap::default()),
        }
    }

    /// `Some(generation)` when the connection is up.
    pub(crate) fn live_generation(&self) -> Option<u64> {
        let s = self.state.load(Ordering::Acquire);
        (s & 1 == 1).then_some(s >> 1)
    }

    /// A new connection: what was queued for the old one is dropped (its
    /// sessions were told it was lost), then senders see it up.
    fn set_up(&self, generation: u64) {
        {
            let mut out = self.out.lock();
            out.generation = generation;
            out.chunks = VecDeque::new();
            out.buf = BytesMut::new();
            out.bytes = 0;
            out.msgs = 0;
            out.frames = 0;
        }
        self.state.store(generation << 1 | 1, Ordering::Release);
    }

    /// The connection is gone: from here on every send fails (under the
    /// queue's lock, so a session is either bound before the caller
    /// collects the bound sessions to tell them, or refused).
    fn set_down(&self) {
        self.out.lock().generation = 0;
        self.state.fetch_and(!1, Ordering::AcqRel);
    }

    fn bound(&self) -> parking_lot::MutexGuard<'_, BoundMap> {
        self.bound.lock()
    }

    /// Sessions bound to this connection now.
    pub(crate) fn sessions(&self) -> Vec<SessionHandle> {
        self.bound().values().cloned().collect()
    }

    /// Frames queued toward the backend now.
    pub(crate) fn queued(&self) -> usize {
        self.out.lock().frames as usize
    }

    /// Queues a session's CLOSE. It is never lost: a CLOSE is exempt from
    /// the queue's bound, so it goes behind the session's earlier frames
    /// even when the queue is full; a connection that stays stuck fails its
    /// heartbeat, and the backend then drops every session of it anyway.
    pub(crate) fn send_close(&self, generation: u64, session_id: u64, frame: Bytes) {
        // Down: the connection is gone, and the session with it.
        let _ = self.try_send(generation, ToBackend::Close { session_id, frame });
    }

    /// Queues a message for `generation` without waiting.
    pub(crate) fn send(&self, generation: u64, msg: ToBackend) -> Result<(), SendError> {
        self.try_send(generation, msg).map_err(|(e, _)| e)
    }

    /// Queues a message for `generation` without waiting; a message that
    /// cannot be queued comes back with the reason. OPEN and CLOSE bind and
    /// unbind their session here, in queue order.
    pub(crate) fn try_send(
        &self,
        generation: u64,
        msg: ToBackend,
    ) -> Result<(), (SendError, ToBackend)> {
        if self.live_generation() != Some(generation) {
            return Err((SendError::Down, msg));
        }
        let mut out = self.out.lock();
        if out.generation != generation {
            return Err((SendError::Down, msg));
        }
        let len = match &msg {
            ToBackend::Open { frame, .. }
            | ToBackend::Frame(frame)
            | ToBackend::Close { frame, .. } => frame.len(),
            ToBackend::Frames { raw, .. } => raw.len(),
        };
        let full = out.msgs >= self.cap || (out.bytes > 0 && out.bytes + len > self.cap_bytes);
        if full && !matches!(msg, ToBackend::Close { .. }) {
            return Err((SendError::Full, msg));
        }
        let was_empty = out.bytes == 0;
        let (frames, count) = match msg {
            ToBackend::Open { session, frame } => {
                self.bound().insert(session.id(), session);
                (frame, 1)
            }
            ToBackend::Frame(frame) => (frame, 1),
            ToBackend::Frames { raw, count } => (raw, count),
            ToBackend::Close { session_id, frame } => {
                self.bound().remove(&session_id);
                (frame, 1)
            }
        };
        if len >= CHUNK_MIN {
            if !out.buf.is_empty() {
                let before = out.buf.split().freeze();
                out.chunks.push_back(before);
            }
            out.chunks.push_back(frames);
        } else {
            out.buf.extend_from_slice(&frames);
        }
        out.bytes += len;
        out.msgs += 1;
        out.frames += u64::from(count);
        drop(out);
        if was_empty {
            self.writer.wake();
        }
        Ok(())
    }

    /// `Ready` once something is queued (the writer's waker registered).
    fn poll_queued(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<usize> {
        self.writer.register(cx.waker());
        match self.out.lock().bytes {
            0 => std::task::Poll::Pending,
            n => std::task::Poll::Ready(n),
        }
    }

    /// Bytes queued now.
    fn queued_bytes(&self) -> usize {
        self.out.lock().bytes
    }

    /// Takes everything queued (swapping in the writer's empty `chunks`
    /// and spare `buf`): write `chunks`, then `buf`. Returns the frames
    /// they hold.
    fn take(&self, chunks: &mut VecDeque<Bytes>, buf: &mut BytesMut) -> u64 {
        let mut out = self.out.lock();
        std::mem::swap(&mut out.chunks, chunks);
        std::mem::swap(&mut out.buf, buf);
        out.bytes = 0;
        out.msgs = 0;
        std::mem::take(&mut out.frames)
    }
}

/// Operator-set state of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum AdminState {
    /// Normal.
    Ready = 0,
    /// No new sessions; sessions already bound stay.
    Drain = 1,
    /// No new sessions; bound sessions move away on their next DATA.
    Maint = 2,
}

impl AdminState {
    pub(crate) fn parse(s: &str) -> Option<AdminState> {
        match s {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// One backend address and its pooled connections.
pub(crate) struct Endpoint {
    pub(crate) addr: Arc<str>,
    key_hash: u64,
    pub(crate) conns: Box<[Conn]>,
    /// Frames the gateway could not queue because this endpoint's queue was full.
    pub(crate) queue_full: IntCounter,
    /// Backend frames for sessions not bound on their connection.
    pub(crate) unknown_session: IntCounter,
    pub(crate) breaker: Breaker,
    admin_state: AtomicU8,
    retired: AtomicBool,
    /// Worker threads; `conns.len()` is a multiple of it and slot `i` runs
    /// on worker `i mod workers`.
    workers: usize,
    /// Cancelled when the endpoint leaves the pool: its connection tasks end.
    stop: CancellationToken,
}

impl Endpoint {
    /// Stable hash of the address, used by consistent hashing.
    pub(crate) fn key_hash(&self) -> u64 {
        self.key_hash
    }

    /// Whether at least one pooled connection is up.
    pub(crate) fn healthy(&self) -> bool {
        self.conns.iter().any(|c| c.live_generation().is_some())
    }

    /// Whether new sessions may be bound here: up, admin state `ready`, not
    /// retired, and the circuit not open. With `probe`, an elapsed open
    /// period turns the breaker half-open (this binding is the probe);
    /// without it nothing changes (explain).
    pub(crate) fn available(&self, now: Instant, probe: bool) -> bool {
        self.healthy()
            && self.admin_state() == AdminState::Ready
            && !self.retired.load(Ordering::Acquire)
            && if probe {
                self.breaker.allow(now)
            } else {
                self.breaker.would_allow(now)
            }
    }

    /// No rule or override names this endpoint any more: its sessions were
    /// moved and its connections are closing.
    #[cfg(test)]
    pub(crate) fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub(crate) fn admin_state(&self) -> AdminState {
        match self.admin_state.load(Ordering::Acquire) {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }

    /// Sets the admin state; `maint` also tells every bound session to move.
    pub(crate) fn set_admin_state(&self, state: AdminState) {
        self.admin_state.store(state as u8, Ordering::Release);
        if state == AdminState::Maint {
            for c in self.conns.iter() {
                for s in c.sessions() {
                    s.deliver(crate::session::Outbound::Unbind {
                        endpoint: Some(self.addr.clone()),
                        service: None,
                        reason: "backend in maintenance".into(),
                    });
                }
            }
        }
    }

    /// Sessions bound to this endpoint now.
    pub(crate) fn sessions(&self) -> usize {
        self.conns.iter().map(|c| c.bound().len()).sum()
    }

    /// Frames queued toward this endpoint now.
    pub(crate) fn queued(&self) -> usize {
        self.conns.iter().map(Conn::queued).sum()
    }

    /// Number of pooled connections up now.
    pub(crate) fn connections_up(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.live_generation().is_some())
            .count()
    }

    /// The connection a session should use: its home slot, one of the
    /// slots on the calling worker chosen by `session_id` (a session stays
    /// on its worker, so its frames stay ordered on one connection and
    /// never cross threads), or, when that one is down, the next live one.
    /// Returns the slot and generation.
    pub(crate) fn conn_for(&self, session_id: u64) -> Option<(usize, u64)> {
        let n = self.conns.len();
        let w = self.workers;
        let per_worker = (n / w) as u64;
        let home = crate::workers::current() % w + w * (session_id % per_worker) as usize;
        (0..n)
            .map(|i| (home + i) % n)
            .find_map(|i| self.conns[i].live_generation().map(|g| (i, g)))
    }
}

/// Longest a retired endpoint's connections stay open to flush the CLOSE
/// frames of the sessions moved off it.
pub(crate) const RETIRE_GRACE: Duration = Duration::from_secs(5);

/// Every endpoint the gateway talks to, created on first use by a route
/// table or an override, and retired when nothing names it any more.
pub(crate) struct BackendPool {
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    ctx: Arc<conn::ConnCtx>,
    /// The keep-alive clients of HTTP and gRPC services (`http_routes`).
    http: crate::router::http::Clients,
    /// Descriptors for routes that transcode JSON to gRPC.
    descriptors: Option<Arc<prost_reflect::DescriptorPool>>,
}

impl BackendPool {
    /// A pool whose connection tasks share `ctx`.
    pub(crate) fn new(ctx: conn::ConnCtx) -> BackendPool {
        BackendPool {
            endpoints: Mutex::new(HashMap::new()),
            http: crate::router::http::clients(ctx.settings.connect_timeout, &ctx.settings.tls_ca),
            ctx: Arc::new(ctx),
            descriptors: None,
        }
    }

    /// With the descriptors `grpc_method` routes transcode with.
    pub(crate) fn with_descriptors(
        mut self,
        d: Option<Arc<prost_reflect::DescriptorPool>>,
    ) -> BackendPool {
        self.descriptors = d;
        self
    }

    /// The bundle's HTTP routes over this pool's HTTP client.
    pub(crate) fn http_routes(
        &self,
        cfg: &crate::config::RoutesConfig,
    ) -> crate::router::http::HttpRoutes {
        crate::router::http::HttpRoutes::build(
            cfg,
            &self.http,
            self.descriptors.as_deref(),
            self.ctx.settings.request_timeout,
            &self.ctx.metrics,
        )
    }

    /// The pool entry for `addr`, spawning its connection tasks on first use.
    pub(crate) fn endpoint(&self, addr: &str) -> Arc<Endpoint> {
        let mut map = self.endpoints.lock();
        if let Some(ep) = map.get(addr) {
            return ep.clone();
        }
        // At least one connection per worker, the same number on each.
        let w = self.ctx.workers.count();
        let n = self.ctx.settings.connections_per_endpoint.div_ceil(w) * w;
        let conns = (0..n)
            .map(|_| Conn::new(self.ctx.settings.queue, self.ctx.settings.queue_bytes))
            .collect();
        let ep = Arc::new(Endpoint {
            addr: addr.into(),
            key_hash: crate::router::hash::key_hash(addr),
            conns,
            queue_full: self
                .ctx
                .metrics
                .backend_errors
                .with_label_values(&[addr, "queue_full"]),
            unknown_session: self
                .ctx
                .metrics
                .backend_unknown_session
                .with_label_values(&[addr]),
            breaker: Breaker::new(self.ctx.breaker.clone()),
            admin_state: AtomicU8::new(AdminState::Ready as u8),
            retired: AtomicBool::new(false),
            workers: w,
            stop: self.ctx.shutdown.child_token(),
        });
        for slot in 0..n {
            let task = conn::run(ep.clone(), slot, self.ctx.clone());
            self.ctx
                .tracker
                .spawn_on(task, self.ctx.workers.handle(slot));
        }
        map.insert(addr.to_string(), ep.clone());
        ep
    }

    /// The pool entry for `addr` if it exists.
    pub(crate) fn get(&self, addr: &str) -> Option<Arc<Endpoint>> {
        self.endpoints.lock().get(addr).cloned()
    }

    /// Drains and closes every endpoint not in `keep` (removed from the
    /// rules, an expired or deleted override's target): it takes no new
    /// sessions, each bound session is moved (CLOSE 3004 `moved` to the
    /// backend; the session binds afresh on its next request), and its
    /// connections close once the moves are flushed (at most
    /// [`RETIRE_GRACE`] later). Returns the addresses retired.
    pub(crate) fn retain(&self, keep: &HashSet<&str>) -> Vec<Arc<str>> {
        let gone: Vec<Arc<Endpoint>> = {
            let mut map = self.endpoints.lock();
            let gone = map
                .iter()
                .filter(|(addr, _)| !keep.contains(addr.as_str()))
                .map(|(_, ep)| ep.clone())
                .collect::<Vec<_>>();
            for ep in &gone {
                map.remove(&*ep.addr);
            }
            gone
        };
        for ep in &gone {
            ep.retired.store(true, Ordering::Release);
            for c in ep.conns.iter() {
                for s in c.sessions() {
                    s.deliver(crate::session::Outbound::Unbind {
                        endpoint: Some(ep.addr.clone()),
                        service: None,
                        reason: "endpoint removed from the routing rules".into(),
                    });
                }
            }
            let ep = ep.clone();
            self.ctx.tracker.spawn(async move {
                let until = tokio::time::Instant::now() + RETIRE_GRACE;
                while (ep.sessions() > 0 || ep.queued() > 0) && tokio::time::Instant::now() < until
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ep.stop.cancel();
            });
        }
        gone.iter().map(|e| e.addr.clone()).collect()
    }

    /// Snapshot of every endpoint, sorted by address.
    pub(crate) fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        let map = self.endpoints.lock();
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| a.addr.cmp(&b.addr));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Protocol;

    fn session(id: u64) -> SessionHandle {
        let addr = "127.0.0.1:1".parse().unwrap();
        SessionHandle::new(id, 7, 0, Protocol::Tcp, addr, 8).0
    }

    fn data(n: u8) -> ToBackend {
        ToBackend::Frame(Bytes::from(vec![n; 3]))
    }

    #[test]
    fn the_queue_is_the_bytes_bounded_in_messages_and_a_close_always_fits() {
        let c = Conn::new(2, 1 << 20);
        assert_eq!(c.send(1, data(1)).unwrap_err(), SendError::Down);
        c.set_up(1);
        // A message for another generation is refused.
        assert_eq!(c.send(2, data(1)).unwrap_err(), SendError::Down);
        c.try_send(
            1,
            ToBackend::Open {
                session: session(5),
                frame: Bytes::from_static(b"open"),
            },
        )
        .map_err(|(e, _)| e)
        .unwrap();
        assert_eq!(c.sessions().len(), 1, "bound when its OPEN is queued");
        c.send(
            1,
            ToBackend::Frames {
                raw: Bytes::from_static(b"ab"),
                count: 2,
            },
        )
        .unwrap();
        // Full: the frames come back to be answered.
        let Err((SendError::Full, back)) = c.try_send(1, data(9)) else {
            panic!("a third message does not fit");
        };
        assert_eq!(&back.into_bytes()[..], &[9, 9, 9]);
        assert_eq!(c.queued(), 3);
        // A CLOSE goes in anyway, unbinding its session in queue order.
        c.send_close(1, 5, Bytes::from_static(b"close"));
        assert!(c.sessions().is_empty());
        let (mut chunks, mut spare) = (VecDeque::new(), BytesMut::new());
        assert_eq!(c.take(&mut chunks, &mut spare), 4);
        assert!(chunks.is_empty(), "small messages are copied");
        assert_eq!(&spare[..], b"openabclose");
        assert_eq!(c.queued(), 0);
        // Room again.
        c.send(1, data(2)).unwrap();
        // Down: nothing more is queued, and a new connection starts empty.
        c.set_down();
        assert_eq!(c.send(1, data(3)).unwrap_err(), SendError::Down);
        c.set_up(2);
        assert_eq!(c.queued(), 0);
        assert_eq!(c.queued_bytes(), 0);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_large_messages_are_not_copied() {
        let c = Conn::new(100, 40_000);
        c.set_up(1);
        let big = |n: u8| Bytes::from(vec![n; 16_000]);
        // A message larger than the bound fits an empty queue.
        let huge = Bytes::from(vec![7u8; 50_000]);
        c.send(1, ToBackend::Frame(huge.clone())).unwrap();
        assert!(matches!(c.send(1, data(1)), Err(SendError::Full)));
        let (mut chunks, mut spare) = (VecDeque::new(), BytesMut::new());
        assert_eq!(c.take(&mut chunks, &mut spare), 1);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].as_ptr(), huge.as_ptr(), "queued without a copy");
        // small, large, small, large: 3 + 16,000 + 3 + 16,000 bytes.
        chunks.clear();
        c.send(1, data(1)).unwrap();
        c.send(1, ToBackend::Frame(big(2))).unwrap();
        c.send(1, data(3)).unwrap();
        c.send(1, ToBackend::Frame(big(4))).unwrap();
        assert_eq!(c.queued_bytes(), 32_006);
        // 32,006 + 16,000 is over 40,000: refused, and given back.
        let Err((SendError::Full, back)) = c.try_send(1, ToBackend::Frame(big(5))) else {
            panic!("over the byte bound");
        };
        assert_eq!(back.into_bytes().len(), 16_000);
        // A CLOSE fits anyway.
        c.send_close(1, 9, Bytes::from_static(b"close"));
        assert_eq!(c.take(&mut chunks, &mut spare), 5);
        // In order: chunks first, then what the buffer holds.
        let mut wire = Vec::new();
        for ch in &chunks {
            wire.extend_from_slice(ch);
        }
        wire.extend_from_slice(&spare);
        let mut want = vec![1u8; 3];
        want.extend(vec![2u8; 16_000]);
        want.extend(vec![3u8; 3]);
        want.extend(vec![4u8; 16_000]);
        want.extend_from_slice(b"close");
        assert_eq!(wire, want);
        assert_eq!(c.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn the_writer_is_woken_by_the_first_bytes() {
        let c = Arc::new(Conn::new(8, 1 << 20));
        c.set_up(1);
        let w = c.clone();
        let writer =
            tokio::spawn(async move { std::future::poll_fn(|cx| w.poll_queued(cx)).await });
        tokio::task::yield_now().await;
        c.send(1, data(1)).unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(n, 3);
    }
}
