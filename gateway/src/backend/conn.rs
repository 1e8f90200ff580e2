//! The task behind one pooled backend connection: connect (with timeout) →
//! HELLO → relay until the socket fails → tell every bound session → back off
//! (exponential, full jitter) → reconnect. Reading and writing run as two
//! futures of the same task so a backend that is busy writing to us never
//! blocks our writes to it (and the reverse).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use gg_proto::control::{self, BackendHello};
use gg_proto::frame::{self, Header, Kind};
use gg_proto::{CloseCode, ErrorCode, Frame};
use gg_runtime::backoff::Backoff;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{Endpoint, ToBackend};
use crate::config::{BackendSettings, BreakerSettings};
use crate::metrics::Metrics;
use crate::session::{Delivered, Outbound, SessionHandle};

/// What every connection task shares.
pub(crate) struct ConnCtx {
    pub(crate) gateway_id: String,
    pub(crate) settings: BackendSettings,
    pub(crate) breaker: BreakerSettings,
    pub(crate) max_frame_bytes: u32,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// JOIN, LEAVE and PUBLISH from backends act here.
    pub(crate) rooms: Arc<crate::rooms::Rooms>,
    /// Slot `i` of every endpoint runs on worker `i mod count`.
    pub(crate) workers: Arc<crate::workers::Workers>,
}

/// Missed heartbeats before a backend connection is declared dead.
const MISSED_PONGS: u32 = 3;

/// The writer yields to gather more only while less than this is queued.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Room the reader keeps for one read: many small replies, or a few large
/// ones (16 KiB frames came one per read with a 16 KiB buffer).
const READ_BYTES: usize = 64 * 1024;

/// Most buffer capacity the writer keeps between writes.
const MAX_KEPT_BYTES: usize = 1 << 20;

pub(crate) async fn run(ep: Arc<Endpoint>, slot: usize, ctx: Arc<ConnCtx>) {
    let label = [&*ep.addr];
    let up_gauge = ctx.metrics.backend_connections.with_label_values(&label);
    let mut generation: u64 = 0;
    let mut backoff = Backoff::new(ctx.settings.backoff_initial, ctx.settings.backoff_max);
    loop {
        let attempt = tokio::select! {
            _ = ep.stop.cancelled() => return,
            r = connect(&ep.addr, &ctx) => r,
        };
        match attempt {
            Ok(stream) => {
                generation += 1;
                backoff.reset();
                info!(endpoint = %ep.addr, slot, generation, "backend connected");
                ep.conns[slot].set_up(generation);
                up_gauge.inc();
                let res = relay(stream, &ep, slot, generation, &ctx).await;
                ep.conns[slot].set_down();
                up_gauge.dec();
                let lost: Vec<SessionHandle> =
                    ep.conns[slot].bound().drain().map(|(_, s)| s).collect();
                match res {
                    Ok(()) => {
                        debug!(endpoint = %ep.addr, slot, "backend connection closed on shutdown");
                        return;
                    }
                    Err(e) => {
                        warn!(endpoint = %ep.addr, slot, sessions = lost.len(), error = %e, "backend connection lost; sessions notified, reconnecting");
                        let kind = if e.kind() == io::ErrorKind::TimedOut {
                            "timeout"
                        } else {
                            "io"
                        };
                        ctx.metrics
                            .backend_errors
                            .with_label_values(&[&*ep.addr, kind])
                            .inc();
                        ep.breaker.on_failure(Instant::now());
                    }
                }
                for s in lost {
                    s.deliver(Outbound::BackendLost {
                        endpoint: ep.addr.clone(),
                    });
                }
            }
            Err(e) => {
                debug!(endpoint = %ep.addr, slot, error = %e, backoff_ms = backoff.current().as_millis() as u64, "backend connect failed");
                ctx.metrics
                    .backend_errors
                    .with_label_values(&[&*ep.addr, "connect"])
                    .inc();
                ep.breaker.on_failure(Instant::now());
            }
        }
        // Jittered so a fleet of gateways does not reconnect to a restarted
        // backend in lockstep.
        // (Meanwhile sends fail fast: the connection is down.)
        tokio::select! {
            _ = ep.stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn connect(addr: &str, ctx: &ConnCtx) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(ctx.settings.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One live connection: HELLO, then the writer, the reader and the
/// heartbeat run until one fails (or the endpoint is stopped).
async fn relay(
    mut stream: TcpStream,
    ep: &Arc<Endpoint>,
    slot: usize,
    generation: u64,
    ctx: &ConnCtx,
) -> io::Result<()> {
    let hello = control::control_frame(
        Kind::Hello,
        Header::new(Kind::Hello),
        &BackendHello {
            gateway_id: ctx.gateway_id.clone(),
        },
    );
    stream.write_all(&hello.to_bytes()).await?;
    let (mut rd, mut wr) = stream.split();
    let heard = Liveness::new();
    let link = Link {
        ep,
        slot,
        generation,
        ctx,
    };
    tokio::select! {
        r = link.write_loop(&mut wr) => r,
        r = link.read_loop(&mut rd, &heard) => r,
        r = link.heartbeat(&heard) => r,
        _ = ep.stop.cancelled() => Ok(()),
    }
}

/// What the reader tells the heartbeat: when the backend was last heard
/// from, and the outstanding PING, so its PONG gives the round trip.
struct Liveness {
    start: Instant,
    /// Milliseconds since `start` of the last frame from the backend.
    last_heard_ms: AtomicU64,
    /// Microseconds since `start` when PING `ping_seq` was queued.
    ping_sent_us: AtomicU64,
    ping_seq: std::sync::atomic::AtomicU32,
}

impl Liveness {
    fn new() -> Liveness {
        Liveness {
            start: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            ping_sent_us: AtomicU64::new(0),
            ping_seq: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The round trip of PONG `seq`, if it answers the outstanding PING
    /// (once: a duplicate PONG is not measured again).
    fn pong(&self, seq: u32) -> Option<Duration> {
        if seq == 0
            || self
                .ping_seq
                .compare_exchange(seq, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let sent = Duration::from_micros(self.ping_sent_us.load(Ordering::Relaxed));
        Some(self.start.elapsed().saturating_sub(sent))
    }
}

/// What the three loops of one connection share.
struct Link<'a> {
    ep: &'a Arc<Endpoint>,
    slot: usize,
    generation: u64,
    ctx: &'a ConnCtx,
}

impl Link<'_> {
    /// Writes everything queued with one write (the queue is the bytes
    /// themselves, see [`crate::backend::Conn::try_send`]).
    async fn write_loop(&self, wr: &mut (impl tokio::io::AsyncWrite + Unpin)) -> io::Result<()> {
        let conn = &self.ep.conns[self.slot];
        let frames_out = (self.ctx.metrics.backend_frames_out).with_label_values(&[&*self.ep.addr]);
        let mut chunks = VecDeque::new();
        let mut wbuf = BytesMut::new();
        let mut gate = crate::workers::YieldGate::default();
        loop {
            let queued = std::future::poll_fn(|cx| conn.poll_queued(cx)).await;
            // Flush on idle, when it pays: a yield lets every session task
            // already ready add its frames to this write (tokio defers a
            // yielded task until after its next I/O poll). With many busy
            // sessions that turns one write per frame into one per tick
            // (100 sessions x 1 in flight: 2.8 -> 2.25 syscalls per round
            // trip, about +30 % throughput); the gate stops yielding while
            // yields gather nothing (one quiet session).
            if queued < MAX_BATCH_BYTES && gate.should_yield() {
                tokio::task::yield_now().await;
                gate.record(conn.queued_bytes() > queued);
            }
            let frames = conn.take(&mut chunks, &mut wbuf);
            if chunks.is_empty() {
                wr.write_all(&wbuf).await?;
            } else {
                write_gathered(wr, &mut chunks, &wbuf).await?;
            }
            frames_out.inc_by(frames);
            wbuf.clear();
            if wbuf.capacity() > MAX_KEPT_BYTES {
                // A burst: give the memory back.
                wbuf = BytesMut::new();
            }
        }
    }

    /// Reads frames and hands each to its session; a frame this gateway
    /// does not understand is skipped while the stream stays in sync.
    async fn read_loop(
        &self,
        rd: &mut (impl tokio::io::AsyncRead + Unpin),
        heard: &Liveness,
    ) -> io::Result<()> {
        let (ep, ctx) = (self.ep, self.ctx);
        let rtt = ctx.metrics.backend_rtt.with_label_values(&[&*ep.addr]);
        let frames_in = ctx
            .metrics
            .backend_frames_in
            .with_label_values(&[&*ep.addr]);
        let protocol_errors =
            (ctx.metrics.backend_errors).with_label_values(&[&*ep.addr, "protocol"]);
        let mut rbuf = BytesMut::with_capacity(READ_BYTES);
        let mut first = true;
        loop {
            if rbuf.capacity() - rbuf.len() < READ_BYTES / 4 {
                rbuf.reserve(READ_BYTES);
            }
            if rd.read_buf(&mut rbuf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backend closed the connection",
                ));
            }
            (heard.last_heard_ms)
                .store(heard.start.elapsed().as_millis() as u64, Ordering::Relaxed);
            if first {
                // The first frame on a new connection proves the backend
                // answers: it closes a half-open circuit.
                first = false;
                ep.breaker.on_success();
            }
            // DATA and ERROR frames for the same session that arrived back
            // to back stay together: `rbuf[..run.len]` is handed to the
            // session as one message (one queue entry and one wake-up for
            // all of them, and one slice in its write).
            let mut run = Run::default();
            let mut frames = 0u64;
            let res = loop {
                let total = match frame::check(&rbuf[run.len..], ctx.max_frame_bytes) {
                    Ok(Some(total)) => total,
                    Ok(None) => break Ok(()),
                    Err(e) => {
                        protocol_errors.inc();
                        break Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                };
                frames += 1;
                let at = run.len;
                let header = match frame::parse_raw(&rbuf[at..at + total]) {
                    Ok(header) => header,
                    Err(e) => {
                        run.deliver(&mut rbuf, ep, self.slot, &ctx.metrics);
                        let _ = rbuf.split_to(total);
                        warn!(endpoint = %ep.addr, error = %e, "backend sent a frame this gateway does not understand; dropped");
                        protocol_errors.inc();
                        continue;
                    }
                };
                if matches!(header.kind(), Some(Kind::Data | Kind::Error)) {
                    if run.len == 0 || run.session != header.session_id {
                        run.deliver(&mut rbuf, ep, self.slot, &ctx.metrics);
                        run.session = header.session_id;
                    }
                    run.len += total;
                    run.count += 1;
                    continue;
                }
                run.deliver(&mut rbuf, ep, self.slot, &ctx.metrics);
                let raw = rbuf.split_to(total).freeze();
                if header.kind == Kind::Pong as u8
                    && let Some(t) = heard.pong(header.seq)
                {
                    rtt.observe(t.as_secs_f64());
                }
                dispatch(header, raw, ep, self.slot, self.generation, ctx);
            };
            run.deliver(&mut rbuf, ep, self.slot, &ctx.metrics);
            super::sendbatch::flush(&ctx.metrics);
            frames_in.inc_by(frames);
            res?;
        }
    }

    /// PING every interval; a backend silent for [`MISSED_PONGS`]
    /// intervals (a blackholed link, a hung process) is declared dead.
    async fn heartbeat(&self, heard: &Liveness) -> io::Result<()> {
        let every = self.ctx.settings.ping_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut seq = 0u32;
        loop {
            tick.tick().await;
            let last = Duration::from_millis(heard.last_heard_ms.load(Ordering::Relaxed));
            let silent_for = heard.start.elapsed().saturating_sub(last);
            if silent_for >= every * MISSED_PONGS {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no frame from the backend for {} ms (heartbeat)",
                        silent_for.as_millis()
                    ),
                ));
            }
            seq = seq.wrapping_add(1).max(1);
            let mut h = Header::new(Kind::Ping);
            h.seq = seq;
            let now_us = heard.start.elapsed().as_micros() as u64;
            heard.ping_sent_us.store(now_us, Ordering::Relaxed);
            heard.ping_seq.store(seq, Ordering::Relaxed);
            let ping = ToBackend::Frame(Frame::new(h, Bytes::new()).to_bytes());
            let _ = self.ep.conns[self.slot].send(self.generation, ping);
        }
    }
}

/// Slices handed to one `writev`.
const MAX_IOVECS: usize = 64;

/// Writes `chunks` and then `tail`, in order, with `writev`; empties
/// `chunks`.
async fn write_gathered(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    chunks: &mut VecDeque<Bytes>,
    tail: &[u8],
) -> io::Result<()> {
    let mut tail_at = 0;
    loop {
        let mut iov: smallvec::SmallVec<[IoSlice<'_>; MAX_IOVECS]> = chunks
            .iter()
            .take(MAX_IOVECS)
            .map(|c| IoSlice::new(c))
            .collect();
        if iov.len() == chunks.len() && tail_at < tail.len() && iov.len() < MAX_IOVECS {
            iov.push(IoSlice::new(&tail[tail_at..]));
        }
        if iov.is_empty() {
            return Ok(());
        }
        let mut n = wr.write_vectored(&iov).await?;
        drop(iov);
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            match chunks.front_mut() {
                Some(c) if n >= c.len() => {
                    n -= c.len();
                    chunks.pop_front();
                }
                Some(c) => {
                    c.advance(n);
                    n = 0;
                }
                None => {
                    tail_at += n;
                    n = 0;
                }
            }
        }
    }
}

/// DATA and ERROR frames at the front of the read buffer, all for one
/// session, not yet handed over.
#[derive(Default)]
struct Run {
    session: u64,
    /// Bytes of `rbuf` the run covers, from its start.
    len: usize,
    count: u32,
}

impl Run {
    /// Hands the run to its session (when it is bound here) and starts
    /// an empty one.
    /// A plain TCP session that is not writing gets the run written to its
    /// socket here ([`SessionHandle::deliver_frames`]), counted as sent.
    fn deliver(&mut self, rbuf: &mut BytesMut, ep: &Endpoint, slot: usize, metrics: &Metrics) {
        if self.len == 0 {
            return;
        }
        let raw = rbuf.split_to(self.len).freeze();
        // Delivered under the map's lock rather than with a clone of the
        // handle (two atomic operations per run): only this connection's
        // worker uses the map on the hot path, and delivery never waits.
        let bound = ep.conns[slot].bound();
        match bound.get(&self.session) {
            Some(s) => {
                let len = raw.len() as u64;
                let Some(raw) = super::sendbatch::offer(s, raw, self.count, metrics) else {
                    drop(bound);
                    *self = Run::default();
                    return;
                };
                if s.deliver_frames(raw, self.count) == Delivered::Written {
                    let pm = metrics.proto(s.protocol());
                    pm.frames_out.inc_by(u64::from(self.count));
                    pm.bytes_out.inc_by(len);
                }
            }
            None => ep.unknown_session.inc_by(u64::from(self.count)),
        }
        drop(bound);
        *self = Run::default();
    }
}

/// Routes one frame from the backend to its session.
fn dispatch(
    header: Header,
    raw: Bytes,
    ep: &Arc<Endpoint>,
    slot: usize,
    generation: u64,
    ctx: &ConnCtx,
) {
    let conn = &ep.conns[slot];
    match header.kind() {
        Some(kind @ (Kind::Join | Kind::Leave | Kind::Publish)) => {
            let payload = raw.slice(frame::HEADER_BYTES..);
            if let Err((code, msg)) = room_request(kind, header, payload, ep, slot, generation, ctx)
            {
                debug!(endpoint = %ep.addr, kind = kind.name(), session = header.session_id, error = %msg, "room request refused");
                let err = control::error_frame(&header, code, msg).to_bytes();
                let _ = conn.send(generation, ToBackend::Frame(err));
            }
        }
        Some(Kind::Close) => {
            // Backend CLOSE = kick. The session is unbound here so no CLOSE
            // is echoed back for it.
            let Some(s) = conn.bound().remove(&header.session_id) else {
                ep.unknown_session.inc();
                return;
            };
            let f = Frame::new(header, raw.slice(frame::HEADER_BYTES..));
            let close: control::Close = f.json().unwrap_or(control::Close {
                code: CloseCode::Kicked.code(),
                reason: "kicked by backend".into(),
            });
            s.deliver(Outbound::Kicked {
                endpoint: ep.addr.clone(),
                code: close.code,
                reason: close.reason,
            });
        }
        Some(Kind::Ping) => {
            let mut h = header;
            h.kind = Kind::Pong as u8;
            let pong = Frame::new(h, Bytes::new()).to_bytes();
            // Best effort: a full queue means the link is busy anyway.
            let _ = conn.send(generation, ToBackend::Frame(pong));
        }
        // WELCOME/PONG from a backend need no action beyond liveness;
        // DATA and ERROR go to their session in runs (`Run`).
        _ => {}
    }
}

/// A backend's JOIN, LEAVE or PUBLISH. JOIN and LEAVE act on a session
/// bound to this connection and are confirmed with the same kind and `seq`
/// (JOIN once the room's messages reach the session); PUBLISH is not
/// answered unless refused.
fn room_request(
    kind: Kind,
    header: Header,
    payload: Bytes,
    ep: &Arc<Endpoint>,
    slot: usize,
    generation: u64,
    ctx: &ConnCtx,
) -> Result<(), (ErrorCode, String)> {
    use crate::rooms::JoinError;
    use gg_proto::room::{self, Joined, RoomRef};
    let refused = |e: JoinError| {
        let code = match e {
            JoinError::Name(_) => ErrorCode::BadPayload,
            JoinError::TooMany(_) | JoinError::Closed(_) => ErrorCode::BadState,
            JoinError::Busy => ErrorCode::RateLimited,
            JoinError::Timeout => ErrorCode::Timeout,
        };
        (code, e.to_string())
    };
    if kind == Kind::Publish {
        let (name, data) =
            room::parse_publish(&payload).map_err(|e| (ErrorCode::BadPayload, e.to_string()))?;
        ctx.rooms
            .publish(name, header.service_type, data)
            .map_err(refused)?;
        return Ok(());
    }
    let r: RoomRef = serde_json::from_slice(&payload).map_err(|e| {
        (
            ErrorCode::BadPayload,
            format!("{} payload must be {{\"room\": \"...\"}}: {e}", kind.name()),
        )
    })?;
    let conn = &ep.conns[slot];
    let Some(s) = conn.bound().get(&header.session_id).cloned() else {
        return Err((
            ErrorCode::BadState,
            format!(
                "session {} is not bound to this connection",
                header.session_id
            ),
        ));
    };
    if kind == Kind::Leave {
        ctx.rooms.leave(s.id(), s.user_id(), &r.room);
        let ok = control::control_frame(Kind::Leave, header, &r).to_bytes();
        let _ = conn.send(generation, ToBackend::Frame(ok));
        return Ok(());
    }
    let joined = ctx.rooms.join(&s, &r.room).map_err(refused)?;
    if let crate::rooms::Joined::Now(seq) = joined {
        let ok = control::control_frame(Kind::Join, header, &Joined { room: r.room, seq });
        let _ = conn.send(generation, ToBackend::Frame(ok.to_bytes()));
        return Ok(());
    }
    let ep = ep.clone();
    let answer = async move {
        let msg = match joined.seq(JOIN_CONFIRM_TIMEOUT).await {
            Ok(seq) => {
                control::control_frame(Kind::Join, header, &Joined { room: r.room, seq }).to_bytes()
            }
            Err(e) => control::error_frame(&header, ErrorCode::Timeout, e.to_string()).to_bytes(),
        };
        let _ = ep.conns[slot].send(generation, ToBackend::Frame(msg));
    };
    ctx.tracker.spawn(answer);
    Ok(())
}

/// How long a JOIN waits for the control plane to confirm a new room.
const JOIN_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most 7 bytes per write, and every slice of a `writev`.
    #[derive(Default)]
    struct Trickle {
        got: Vec<u8>,
        calls: usize,
    }

    impl tokio::io::AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(7);
            self.got.extend_from_slice(&buf[..n]);
            self.calls += 1;
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            // Short writes that end inside a slice.
            let mut left = 7 * bufs.len() + 3;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
            }
            self.calls += 1;
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn gathered_writes_keep_the_order_through_short_writes() {
        // More chunks than one `writev` takes, of varied lengths.
        let mut chunks: VecDeque<Bytes> = (0..150u32)
            .map(|i| Bytes::from(vec![i as u8; 1 + (i as usize * 13) % 40]))
            .collect();
        let mut want: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        let tail = b"the small frames after them";
        want.extend_from_slice(tail);
        let mut w = Trickle::default();
        write_gathered(&mut w, &mut chunks, tail).await.unwrap();
        assert_eq!(w.got, want);
        assert!(chunks.is_empty());
        assert!(w.calls > 3, "short writes were resumed");
    }
}
