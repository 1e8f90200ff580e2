//! The session task: a hand-polled loop over the session's queue and the
//! client's frames. Frames from the client are forwarded to the backend
//! bound for their `service_type` without being re-encoded (ids are
//! stamped in place); frames for the client are written in batches. Idle
//! timeouts and GOAWAY deadlines are swept across the session table
//! ([`sweep_timers`]).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gg_proto::control::{self};
use gg_proto::frame::{self, FrameError, Header, Kind};
use gg_proto::{CloseCode, Frame};
use tracing::{debug, info};

use super::binding::{Binding, bind_on, open_binding};
use super::closing::{BUDGET_SPENT, Closing, close_label, end_transport};
use super::hello::Admission;
use super::io::{ClientIo, ReadError};
use super::{Outbound, SessionHandle};
use crate::Gateway;
use crate::error::Reject;
use crate::error::RequestError;
use crate::limits::TokenBucket;
use crate::metrics::Protocol;

/// The session task: every idle session holds one of these futures.
/// (An `async` block, not an `async fn`: a function's argument would be
/// stored twice in its state.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store the session twice"
)]
pub(super) fn live(mut s: Session) -> impl Future<Output = ()> + Send {
    async move {
        let closing = match s.flush().await {
            Ok(()) => s.run().await,
            Err(c) => c,
        };
        s.finish(closing).await;
    }
}

pub(super) struct Session {
    pub(super) gw: Arc<Gateway>,
    pub(super) handle: SessionHandle,
    pub(super) rx: super::Inbox,
    pub(super) io: ClientIo,
    pub(super) bindings: Vec<Binding>,
    pub(super) bucket: TokenBucket,
    pub(super) protocol: Protocol,
    /// A client that closes after GOAWAY has moved: backends get "moved".
    pub(super) goaway_sent: bool,
    /// Opened by resuming a session from another connection or gateway.
    pub(super) resumed: bool,
    /// W3C trace context handed to backends in OPEN.
    pub(super) trace: Option<Box<str>>,
    pub(super) _admission: Admission,
}

/// Most queued messages handled before a flush, so one busy session cannot
/// grow its write buffer without bound.
const MAX_BATCH: usize = 128;

/// Extra time after a GOAWAY deadline before the session closes itself.
const GOAWAY_GRACE: Duration = Duration::from_secs(2);

/// Client DATA frames gathered for one binding (see [`Session::add_run`]).
pub(super) struct Run {
    binding: usize,
    frames: BytesMut,
    count: u32,
}

impl Run {
    /// Most bytes one run gathers: frames beyond it start the next message.
    const MAX_BYTES: usize = 64 * 1024;

    /// Whether `raw` can join without a copy (it directly follows the run
    /// in the read buffer) and without making one message too large.
    fn joins(&self, raw: &BytesMut) -> bool {
        self.frames.len() + raw.len() <= Run::MAX_BYTES
            && self.frames.as_ptr().wrapping_add(self.frames.len()) == raw.as_ptr()
    }
}

/// What the session does with one client frame.
enum Next {
    /// Handled here (answered, ignored or refused).
    Done,
    /// DATA for the live binding at this index: it joins the run.
    Run(usize),
    /// DATA whose service needs a binding first (its header is read
    /// again there: a rare path, and a small `Next` moves cheaply).
    Bind,
}

/// The client frames of one wake-up.
#[derive(Default)]
pub(super) struct ReadBatch {
    run: Option<Run>,
    frames: u64,
    bytes: u64,
    /// Read once, at the first frame.
    now: Option<std::time::Instant>,
}

/// Most client frames handled per wake-up, so a client that streams
/// frames cannot starve the session's queue (or the flush) for long.
const MAX_READS: usize = 32;

impl Session {
    /// The session loop: handle what the queue and the client have ready,
    /// flush, repeat. One hand-written poll over both sources keeps the
    /// suspended state to a few words (no `select!` futures), and handles
    /// both in the same wake-up so neither starves the other. Timers (idle,
    /// GOAWAY deadline) are swept across the table by [`sweep_timers`].
    async fn run(&mut self) -> Closing {
        loop {
            // Everything is written: replies may go straight to the socket
            // again (plain TCP, see `SessionHandle::deliver_frames`).
            self.rx.release();
            if let Err(c) = std::future::poll_fn(|cx| self.poll_step(cx)).await {
                return c;
            }
            if self.io.has_pending()
                && let Err(c) = self.flush().await
            {
                return c;
            }
        }
    }

    /// `Ready` once something was handled (or the session must close).
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Closing>> {
        let mut progress = false;
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(m)) => {
                self.on_outbound_batch(m)?;
                progress = true;
            }
            Poll::Ready(None) => return Poll::Ready(Err(self.requested_closing())),
            Poll::Pending => {}
        }
        let mut batch = ReadBatch::default();
        let read = self.read_frames(cx, &mut batch);
        self.end_batch(batch);
        match read {
            Err(c) => Poll::Ready(Err(c)),
            Ok(read) if read || progress => Poll::Ready(Ok(())),
            Ok(_) => Poll::Pending,
        }
    }

    /// Handles the client frames ready now (at most [`MAX_READS`]);
    /// returns whether there were any.
    fn read_frames(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut ReadBatch,
    ) -> Result<bool, Closing> {
        let max = self.gw.cfg.limits.max_frame_bytes;
        while (batch.frames as usize) < MAX_READS {
            let most = MAX_READS - batch.frames as usize;
            let budget = &self.gw.clients.buffered;
            match self.io.poll_read_frames(cx, max, most, budget) {
                Poll::Ready(Ok(frames)) => self.on_client_frames(frames, batch)?,
                Poll::Ready(Err(ReadError::Budget)) => {
                    let r = Reject::BufferBudget;
                    return Err(Closing::rejected(&self.gw, r, BUDGET_SPENT));
                }
                Poll::Ready(Err(e)) => return Err(Closing::from_read(e, max)),
                Poll::Pending => break,
            }
        }
        Ok(batch.frames > 0)
    }

    /// What the frames of one wake-up add up to: DATA still to send, the
    /// counters, the idle clock.
    fn end_batch(&mut self, batch: ReadBatch) {
        if batch.frames == 0 {
            return;
        }
        self.send_run(batch.run);
        if let Some(now) = batch.now {
            self.handle.touch(now);
        }
        let pm = self.gw.metrics.proto(self.protocol);
        pm.frames_in.inc_by(batch.frames);
        pm.bytes_in.inc_by(batch.bytes);
    }

    /// Why the task was asked to close from outside.
    fn requested_closing(&self) -> Closing {
        let limits = &self.gw.cfg.limits;
        let code = self.handle.requested_close().unwrap_or(CloseCode::Internal);
        let reason = match code {
            CloseCode::SlowConsumer => format!(
                "client did not read fast enough; outbound queue of {} frames is full",
                limits.session_queue
            ),
            CloseCode::HeartbeatTimeout => format!(
                "no frame for {} ms; send PING every heartbeat_ms",
                limits.idle_timeout.as_millis()
            ),
            CloseCode::Shutdown if self.goaway_sent => {
                "drain deadline reached; reconnect to another gateway".to_string()
            }
            CloseCode::Shutdown => "gateway shutting down".to_string(),
            CloseCode::Moved => "the session was resumed on another connection".to_string(),
            other => other.name().to_string(),
        };
        Closing::new(code, reason)
    }

    pub(super) fn queue(&mut self, frame: Bytes) {
        self.queue_frames(frame, 1);
    }

    /// Queues `count` whole frames that sit back to back in `raw`.
    fn queue_frames(&mut self, raw: Bytes, count: u32) {
        let pm = self.gw.metrics.proto(self.protocol);
        pm.frames_out.inc_by(u64::from(count));
        pm.bytes_out.inc_by(raw.len() as u64);
        // The writer is the task's from here until it has written this; a
        // partial direct write's tail goes first.
        if let Some(rest) = self.rx.claim() {
            self.io.queue(rest, 1);
        }
        self.io.queue(raw, count);
    }

    fn queue_error(&mut self, req: &Header, e: &RequestError) {
        let code = e.code();
        self.gw
            .metrics
            .errors_sent
            .with_label_values(&[code.name()])
            .inc();
        debug!(session = self.handle.id(), service = req.service_type, seq = req.seq, side = ?e.side(), retryable = e.retryable(), error = %e, "request refused");
        let mut h = *req;
        h.session_id = self.handle.id();
        h.user_id = self.handle.user_id();
        self.queue(control::error_frame(&h, code, e.to_string()).to_bytes());
    }

    /// Writes what is queued for the client. The common case (the socket
    /// takes it all now) needs no timer; only a write that must wait gets a
    /// boxed future with the write timeout, so the timer is not part of
    /// every session's state.
    /// A close requested meanwhile (a resume elsewhere on this gateway, a
    /// kick, a timer) abandons a stalled write at once.
    async fn flush(&mut self) -> Result<(), Closing> {
        let first = std::future::poll_fn(|cx| Poll::Ready(self.io.poll_flush(cx))).await;
        let res = match first {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => {
                let (io, rx) = (&mut self.io, &mut self.rx);
                let write = tokio::time::timeout(self.gw.cfg.limits.write_timeout, io.flush());
                let interrupted = Box::pin(async move {
                    tokio::select! {
                        r = write => Some(r),
                        () = std::future::poll_fn(|cx| rx.poll_close_requested(cx)) => None,
                    }
                })
                .await;
                match interrupted {
                    Some(r) => r,
                    None => return Err(self.requested_closing()),
                }
            }
        };
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Closing::silent(
                CloseCode::Normal,
                format!("write to client failed: {e}"),
            )),
            Err(_) => Err(Closing::silent(
                CloseCode::SlowConsumer,
                format!(
                    "client did not accept data for {} ms",
                    self.gw.cfg.limits.write_timeout.as_millis()
                ),
            )),
        }
    }

    fn on_outbound_batch(&mut self, first: Outbound) -> Result<(), Closing> {
        self.on_outbound(first)?;
        for _ in 1..MAX_BATCH {
            match self.rx.try_recv() {
                Some(m) => self.on_outbound(m)?,
                None => break,
            }
        }
        Ok(())
    }

    fn on_outbound(&mut self, m: Outbound) -> Result<(), Closing> {
        match m {
            Outbound::Frame(f) => self.queue(f),
            Outbound::Frames { raw, count } => self.queue_frames(raw, count),
            Outbound::Rest(rest) => self.io.queue(rest, 1),
            Outbound::BackendLost { endpoint } => self.backend_lost(&endpoint),
            Outbound::Kicked {
                endpoint,
                code,
                reason,
            } => {
                self.bindings.retain(|b| *b.endpoint.addr != *endpoint);
                info!(session = self.handle.id(), %endpoint, code, %reason, "session kicked by backend");
                return Err(Closing {
                    code,
                    reason,
                    notify_client: true,
                });
            }
            Outbound::GoAway {
                reason,
                reconnect_after,
                deadline,
            } => self.goaway(reason, reconnect_after, deadline),
            Outbound::GoAwayCancelled => {
                self.handle.set_goaway_deadline(None);
                self.goaway_sent = false;
            }
            Outbound::Close { code, reason } => {
                info!(session = self.handle.id(), code, %reason, "session closed by operator");
                return Err(Closing {
                    code,
                    reason,
                    notify_client: true,
                });
            }
            Outbound::Unbind {
                endpoint,
                service,
                reason,
            } => {
                let id = self.handle.id();
                self.bindings.retain(|b| {
                    let hit = endpoint.as_ref().is_none_or(|e| **e == *b.endpoint.addr)
                        && service.is_none_or(|s| s == b.service);
                    if hit {
                        b.close(id, CloseCode::Moved.code(), &reason);
                    }
                    !hit
                });
                self.publish_bindings();
            }
        }
        Ok(())
    }

    /// Drops the bindings whose connection really is gone (a stale notice
    /// for an older connection is ignored) and tells the client per service.
    fn backend_lost(&mut self, endpoint: &Arc<str>) {
        let mut lost = Vec::new();
        self.bindings.retain(|b| {
            let gone = *b.endpoint.addr == **endpoint && !b.live();
            if gone {
                lost.push(b.service);
            }
            !gone
        });
        self.publish_bindings();
        for service in lost {
            let mut h = Header::new(Kind::Error);
            h.service_type = service;
            let e = RequestError::BackendUnavailable {
                endpoint: endpoint.to_string(),
            };
            self.queue_error(&h, &e);
        }
    }

    /// GOAWAY with a fresh resume token; the session closes itself if the
    /// drain controller cannot (a safety net past the deadline).
    fn goaway(&mut self, reason: String, reconnect_after: Duration, deadline: Duration) {
        let mut h = Header::new(Kind::GoAway);
        h.session_id = self.handle.id();
        h.user_id = self.handle.user_id();
        let token = (self.gw.clients.resume.as_ref())
            .map(|k| k.mint(self.handle.id(), self.handle.user_id()));
        let f = control::control_frame(
            Kind::GoAway,
            h,
            &control::GoAway {
                reason,
                reconnect_after_ms: reconnect_after.as_millis() as u64,
                deadline_ms: deadline.as_millis() as u64,
                resume_token: token,
            },
        );
        self.queue(f.to_bytes());
        self.goaway_sent = true;
        self.handle
            .set_goaway_deadline(Some(std::time::Instant::now() + deadline + GOAWAY_GRACE));
    }

    fn publish_bindings(&self) {
        self.handle.set_bindings(
            self.bindings
                .iter()
                .map(|b| (b.service, b.endpoint.addr.clone()))
                .collect(),
        );
    }

    /// Walks whole client frames (back to back in `frames`) where they lie:
    /// ids are stamped into each DATA frame in place, and consecutive DATA
    /// frames for one live binding (a *span*) go on as one slice of the
    /// buffer — no per-frame split, no copy (see [`Session::add_run`]).
    fn on_client_frames(
        &mut self,
        mut frames: BytesMut,
        batch: &mut ReadBatch,
    ) -> Result<(), Closing> {
        let mut off = 0;
        // (binding, start, frames) of the span ending at `off`.
        let mut span: Option<(usize, usize, u32)> = None;
        while off + frame::LEN_BYTES <= frames.len() {
            let len = u32::from_be_bytes([
                frames[off],
                frames[off + 1],
                frames[off + 2],
                frames[off + 3],
            ]) as usize;
            let total = (frame::LEN_BYTES + len).min(frames.len() - off);
            let next = self.on_client_frame(&mut frames[off..off + total], batch)?;
            match (next, &mut span) {
                (Next::Run(i), Some((b, start, n)))
                    if *b == i && off + total - *start <= Run::MAX_BYTES =>
                {
                    *n += 1;
                }
                (next, _) => {
                    if let Some(sp) = span.take() {
                        off = self.take_span(&mut frames, sp, off, batch);
                    }
                    match next {
                        Next::Run(i) => span = Some((i, off, 1)),
                        Next::Done => {}
                        Next::Bind => {
                            // The bindings change: what was gathered goes first.
                            self.send_run(batch.run.take());
                            let raw = Bytes::copy_from_slice(&frames[off..off + total]);
                            if let Some(header) = Header::peek(&raw)
                                && let Err(e) = self.bind_and_send(&header, raw)
                            {
                                self.queue_error(&header, &e);
                            }
                        }
                    }
                }
            }
            off += total;
        }
        if let Some(sp) = span {
            self.take_span(&mut frames, sp, off, batch);
        }
        Ok(())
    }

    /// Takes the span `(binding, start, count)` that ends at `end` out of
    /// `frames` (with what precedes it, already handled) and adds it to the
    /// wake-up's run; returns where `end` now is (the front).
    fn take_span(
        &mut self,
        frames: &mut BytesMut,
        (binding, start, count): (usize, usize, u32),
        end: usize,
        batch: &mut ReadBatch,
    ) -> usize {
        let mut part = if end == frames.len() {
            std::mem::take(frames)
        } else {
            frames.split_to(end)
        };
        bytes::Buf::advance(&mut part, start);
        self.add_run(batch, binding, part, count);
        0
    }

    /// One client frame (`raw`, length prefix included): checked, counted,
    /// answered or refused here, or DATA to forward (its ids stamped).
    fn on_client_frame(&mut self, raw: &mut [u8], batch: &mut ReadBatch) -> Result<Next, Closing> {
        // One clock read per wake-up: frames read together arrived together.
        let now = *batch.now.get_or_insert_with(std::time::Instant::now);
        batch.frames += 1;
        batch.bytes += raw.len() as u64;
        // The header is read in place and checked field by field (no
        // `Result<Header, _>` to move through per frame).
        let Some(header) = Header::peek(raw) else {
            let len = raw.len().saturating_sub(frame::LEN_BYTES) as u32;
            let e = FrameError::TooShort { len };
            return Err(Closing::from_read(ReadError::Frame(e), 0));
        };
        if header.version != frame::VERSION {
            let e = FrameError::UnsupportedVersion { header };
            return Err(Closing::from_read(ReadError::Frame(e), 0));
        }
        if header.kind().is_none() {
            // The stream is still in sync: answer and carry on.
            if self.rate_limited(&header, now) {
                return Ok(Next::Done);
            }
            let msg = format!(
                "unknown frame kind 0x{:02x}; this gateway speaks protocol v1 kinds 0x01-0x0d",
                header.kind
            );
            self.queue_error(&header, &RequestError::UnknownKind(msg));
            return Ok(Next::Done);
        }
        let (id, user) = (self.handle.id(), self.handle.user_id());
        if (header.session_id != 0 && header.session_id != id)
            || (header.user_id != 0 && header.user_id != user)
        {
            return Err(Closing::new(
                CloseCode::SessionMismatch,
                format!(
                    "frame claims session {} / user {}; this connection is session {id} / user {user}",
                    header.session_id, header.user_id
                ),
            ));
        }
        if header.kind() == Some(Kind::Close) {
            return Err(Closing::silent(
                CloseCode::Normal,
                super::closing::CLOSED_BY_CLIENT,
            ));
        }
        // Every kind a client sends costs a token: PINGs and refused kinds
        // are answered too, so they must not be free to flood.
        if self.rate_limited(&header, now) {
            return Ok(Next::Done);
        }
        match header.kind() {
            Some(Kind::Data) => {
                frame::stamp_ids(raw, user, id);
                return Ok(match self.live_binding(&header) {
                    Some(i) => Next::Run(i),
                    None => Next::Bind,
                });
            }
            Some(Kind::Ping) => {
                let mut h = header;
                h.kind = Kind::Pong as u8;
                h.session_id = id;
                h.user_id = user;
                self.queue(Frame::new(h, Bytes::new()).to_bytes());
            }
            Some(Kind::Pong) | Some(Kind::Close) | None => {}
            Some(k) => {
                let e = RequestError::BadState(format!(
                    "kind {} is not valid from a client on an open session",
                    k.name()
                ));
                self.queue_error(&header, &e);
            }
        }
        Ok(Next::Done)
    }

    /// Takes a token from the session's message rate; when there is none,
    /// answers ERROR `rate_limited` and returns true.
    fn rate_limited(&mut self, header: &Header, now: std::time::Instant) -> bool {
        if self.bucket.take(now) {
            return false;
        }
        self.gw.metrics.reject(Reject::MsgRate);
        self.queue_error(header, &RequestError::RateLimited);
        true
    }

    /// The realm a DATA frame is for: its own, else the session's.
    fn realm_of(&self, header: &Header) -> u32 {
        if header.realm_id != 0 {
            header.realm_id
        } else {
            self.handle.realm_id()
        }
    }

    /// The binding for a DATA frame's service (and realm), when its
    /// connection is the live one.
    fn live_binding(&self, header: &Header) -> Option<usize> {
        let realm = self.realm_of(header);
        let svc = header.service_type;
        let i = self
            .bindings
            .iter()
            .position(|b| b.service == svc && b.realm.is_none_or(|r| r == realm))?;
        self.bindings[i].live().then_some(i)
    }

    /// Adds `count` DATA frames for binding `binding` to the wake-up's run.
    /// Frames read in one wake-up for the same binding are gathered while
    /// they sit back to back in the read buffer (joining them copies
    /// nothing), up to [`Run::MAX_BYTES`], and are queued to the backend as
    /// one message by [`Session::send_run`].
    fn add_run(&mut self, batch: &mut ReadBatch, binding: usize, frames: BytesMut, count: u32) {
        match &mut batch.run {
            Some(r) if r.binding == binding && r.joins(&frames) => {
                r.frames.unsplit(frames);
                r.count += count;
            }
            run => {
                let prev = run.replace(Run {
                    binding,
                    frames,
                    count,
                });
                self.send_run(prev);
            }
        }
    }

    /// Sends a client DATA frame whose service has no live binding: binds
    /// (or re-binds after a backend failure) first.
    fn bind_and_send(&mut self, header: &Header, raw: Bytes) -> Result<(), RequestError> {
        let realm = self.realm_of(header);
        let svc = header.service_type;
        let idx = self
            .bindings
            .iter()
            .position(|b| b.service == svc && b.realm.is_none_or(|r| r == realm));
        if let Some(i) = idx {
            // The connection restarted or died: re-open on a live connection
            // of the same endpoint (sessions stay pinned to their backend)…
            let old = self.bindings.swap_remove(i);
            if let Ok(b) = bind_on(
                &self.handle,
                svc,
                realm,
                old.realm,
                old.endpoint.clone(),
                true,
                self.trace.as_deref(),
            ) {
                b.send(raw.clone(), 1)?;
                self.bindings.push(b);
                return Ok(());
            }
            // …or fall through to pick another endpoint.
        }
        let b = open_binding(
            &self.gw,
            &self.handle,
            svc,
            realm,
            self.resumed,
            self.trace.as_deref(),
        )?;
        let res = b.send(raw, 1);
        self.bindings.push(b);
        self.publish_bindings();
        res
    }

    /// Queues gathered DATA frames to their backend; if it cannot take
    /// them, every frame is answered with the ERROR, as if sent alone.
    fn send_run(&mut self, run: Option<Run>) {
        let Some(r) = run else { return };
        // Not cloned: a buffer that holds exactly these frames stays
        // unshared (no reference count) on its way to the backend.
        let Err((e, frames)) = self.bindings[r.binding].try_send(r.frames.freeze(), r.count) else {
            return;
        };
        for f in frame::split_frames(frames) {
            if let Some(h) = Header::peek(&f) {
                self.queue_error(&h, &e);
            }
        }
    }

    async fn finish(&mut self, c: Closing) {
        let id = self.handle.id();
        // A client that leaves after GOAWAY continues elsewhere (resume).
        let (code, reason) = if self.goaway_sent && c.code == CloseCode::Normal.code() {
            (CloseCode::Moved.code(), "moved".to_string())
        } else {
            (c.code, c.reason.clone())
        };
        for b in &self.bindings {
            b.close(id, code, &reason);
        }
        // No more direct writes; the tail of one goes out before CLOSE.
        if let Some((wr, rest)) = self.rx.unshare() {
            if let Some(rest) = rest {
                self.io.queue(rest, 1);
            }
            self.io.restore_writer(wr);
        }
        self.gw.metrics.sessions_active.dec();
        // A session resumed on another connection here already holds the
        // table entry (and the directory's): leave both to it. One that
        // moved to another gateway is kept there by the directory's epoch
        // rule even if this close arrives late.
        if self.gw.clients.sessions.remove_if(&self.handle) {
            self.gw.session_event(crate::SessionEvent {
                session_id: id,
                user_id: self.handle.user_id(),
                open: false,
                epoch: 0,
                realm_id: self.handle.realm_id(),
                resumed: false,
            });
        }
        // Rooms go with a session that may resume (elsewhere, with its
        // token); a session that ended for good leaves them.
        let resumable =
            self.gw.clients.resume.is_some() && super::closing::may_resume(code, &c.reason);
        self.gw.rooms.session_closed(&self.handle, resumable);
        self.gw
            .metrics
            .closes
            .with_label_values(&[close_label(c.code)])
            .inc();
        info!(session = id, code = c.code, reason = %c.reason, age_ms = self.handle.age().as_millis() as u64, "session closed");
        // Boxed: needed once, at the end, so not part of the state every
        // live session holds.
        let pm = self.gw.metrics.proto(self.protocol);
        Box::pin(end_transport(&mut self.io, id, &c, pm)).await;
    }
}

/// Runs an HTTP session ([`crate::listener::sse`]) with the same task as
/// a streaming session: its transport is the call queue and event stream.
pub(crate) async fn run_http_session(
    gw: Arc<Gateway>,
    handle: SessionHandle,
    rx: super::Inbox,
    io: ClientIo,
    guard: crate::limits::ConnGuard,
    resumed: bool,
) {
    let s = Session {
        bucket: TokenBucket::new(
            gw.cfg.limits.msg_rate_per_sec,
            gw.cfg.limits.msg_burst,
            std::time::Instant::now(),
        ),
        _admission: super::hello::Admission {
            _guard: Some(guard),
            // Counted as a session, not as an HTTP connection.
            active: prometheus::IntGauge::new("gg_http_session_admission", "unexported")
                .unwrap_or_else(|_| gw.metrics.proto(Protocol::HttpSession).active.clone()),
        },
        gw,
        handle,
        rx,
        io,
        bindings: Vec::new(),
        protocol: Protocol::HttpSession,
        goaway_sent: false,
        resumed,
        trace: None,
    };
    live(s).await;
}

/// Checks every streaming session's idle timeout and GOAWAY deadline
/// ([`SessionHandle::check_timers`]) a few times per idle timeout, instead
/// of one timer per session: a session closes between `idle_timeout` and
/// `idle_timeout` plus one sweep interval after its last frame.
pub(crate) async fn sweep_timers(gw: Arc<Gateway>, stop: tokio_util::sync::CancellationToken) {
    let idle = gw.cfg.limits.idle_timeout;
    let mut tick = tokio::time::interval(sweep_interval(idle));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = std::time::Instant::now();
        gw.clients.sessions.for_each(|s| {
            // HTTP calls are bounded by the request timeout instead.
            if s.protocol() != Protocol::Http {
                s.check_timers(now, idle);
            }
        });
    }
}

/// An eighth of the idle timeout, between 10 ms and 1 s.
fn sweep_interval(idle: Duration) -> Duration {
    (idle / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session future is most of an idle session's memory: keep it small.
    #[tokio::test]
    async fn session_future_stays_small() {
        let cfg = crate::config::Config::parse(
            "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\n",
            Some("gw".into()),
        )
        .unwrap();
        let gw = Gateway::new(cfg);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, remote) = l.accept().await.unwrap();
        let (handle, rx) = SessionHandle::new(1, 2, 0, Protocol::Tcp, remote, 8);
        let s = Session {
            bucket: TokenBucket::new(1, 1, std::time::Instant::now()),
            handle,
            rx,
            io: ClientIo::tcp(server, BytesMut::new()),
            bindings: Vec::new(),
            protocol: Protocol::Tcp,
            goaway_sent: false,
            resumed: false,
            trace: None,
            _admission: Admission {
                _guard: gw.clients.limits.try_acquire(remote.ip()).ok(),
                active: gw.metrics.proto(Protocol::Tcp).active.clone(),
            },
            gw,
        };
        let fut = live(s);
        let size = std::mem::size_of_val(&fut);
        eprintln!("session future: {size} bytes");
        assert!(size < 1024, "session future grew to {size} bytes");
    }

    #[test]
    fn sweeps_a_few_times_per_idle_timeout() {
        assert_eq!(
            sweep_interval(Duration::from_secs(45)),
            Duration::from_secs(1)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(400)),
            Duration::from_millis(50)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(20)),
            Duration::from_millis(10)
        );
    }
}
