//! One streaming session (TCP, TLS or WebSocket): the HELLO phase runs in the
//! connection's task ([`start`]), which then spawns the session's own task
//! (`live`): a hand-polled loop over the session's queue and the client's
//! frames. Idle timeouts and GOAWAY deadlines are swept across the session
//! table ([`sweep_timers`]). Frames from the client are forwarded to the
//! backend bound for their `service_type` without being re-encoded (ids are
//! stamped in place); frames for the client are written in batches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gg_proto::control::{self, Open, Welcome};
use gg_proto::frame::{self, FrameError, Header, Kind};
use gg_proto::{CloseCode, ErrorCode, Frame};
use prometheus::IntGauge;
use tokio::time::Instant;
use tracing::{debug, info};

use super::io::{ClientIo, ReadError};
use super::{Outbound, SessionHandle};
use crate::Gateway;
use crate::backend::{Endpoint, SendError, ToBackend};
use crate::error::RequestError;
use crate::limits::{ConnGuard, TokenBucket};
use crate::metrics::{ProtoMetrics, Protocol};
use gg_proto::model::{RouteKey, Strategy};

/// How a session ends: the code, a reason for humans, and whether a CLOSE
/// frame can still be written to the client.
#[derive(Debug)]
pub(crate) struct Closing {
    pub(crate) code: u16,
    pub(crate) reason: String,
    pub(crate) notify_client: bool,
}

impl Closing {
    fn new(code: CloseCode, reason: impl Into<String>) -> Closing {
        Closing {
            code: code.code(),
            reason: reason.into(),
            notify_client: true,
        }
    }

    fn silent(code: CloseCode, reason: impl Into<String>) -> Closing {
        Closing {
            notify_client: false,
            ..Closing::new(code, reason)
        }
    }

    /// Maps a transport read failure to its close code.
    fn from_read(e: ReadError, max: u32) -> Closing {
        match e {
            ReadError::Closed => Closing::silent(CloseCode::Normal, "client disconnected"),
            ReadError::Io(e) => {
                Closing::silent(CloseCode::Normal, format!("client connection error: {e}"))
            }
            ReadError::Frame(FrameError::TooLarge { len, .. }) => Closing::new(
                CloseCode::FrameTooLarge,
                if len == u32::MAX {
                    format!("message exceeds the maximum frame size of {max} bytes")
                } else {
                    format!("frame length {len} exceeds the maximum of {max} bytes")
                },
            ),
            ReadError::Frame(FrameError::UnsupportedVersion { header }) => Closing::new(
                CloseCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; this gateway speaks version 1",
                    header.version
                ),
            ),
            ReadError::Frame(e) => Closing::new(CloseCode::ProtocolError, e.to_string()),
            ReadError::Protocol(msg) => Closing::new(CloseCode::ProtocolError, msg),
        }
    }
}

/// Metric label of a close code (backends may kick with codes of their own).
pub(crate) fn close_label(code: u16) -> &'static str {
    CloseCode::from_u16(code).map_or("other", CloseCode::name)
}

/// A session's pinned choice of backend for one service (and, for realm
/// routing, one realm).
pub(crate) struct Binding {
    pub(crate) service: u16,
    /// `Some(realm)` for realm-routed services: a new realm is a new binding.
    pub(crate) realm: Option<u32>,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
}

impl Binding {
    /// Whether the connection this binding was opened on is still the live one.
    fn live(&self) -> bool {
        self.endpoint.conns[self.slot].live_generation() == Some(self.generation)
    }

    /// Queues a frame for this binding's backend.
    pub(crate) fn send(&self, frame: Bytes) -> Result<(), RequestError> {
        self.endpoint.conns[self.slot]
            .send(self.generation, ToBackend::Frame(frame))
            .map_err(|e| send_error(e, &self.endpoint))
    }

    /// Unbinds the session on the backend (best effort).
    pub(crate) fn close(&self, session_id: u64, code: u16, reason: &str) {
        let mut h = Header::new(Kind::Close);
        h.service_type = self.service;
        h.session_id = session_id;
        let f = control::control_frame(
            Kind::Close,
            h,
            &control::Close {
                code,
                reason: reason.to_string(),
            },
        );
        let _ = self.endpoint.conns[self.slot].send(
            self.generation,
            ToBackend::Close {
                session_id,
                frame: f.to_bytes(),
            },
        );
    }
}

fn send_error(e: SendError, ep: &Endpoint) -> RequestError {
    match e {
        SendError::Down => RequestError::BackendUnavailable {
            endpoint: ep.addr.to_string(),
        },
        SendError::Full => {
            ep.queue_full.inc();
            RequestError::BackendOverloaded {
                endpoint: ep.addr.to_string(),
            }
        }
    }
}

/// Binds `session` to the endpoint the routes pick for `(service, realm)`
/// and queues its OPEN. Shared by streaming sessions and HTTP calls.
pub(crate) fn open_binding(
    gw: &Gateway,
    session: &SessionHandle,
    service: u16,
    realm: u32,
    resumed: bool,
    traceparent: Option<&str>,
) -> Result<Binding, RequestError> {
    let routes = gw.routes.load();
    let key = RouteKey {
        service,
        realm,
        user: session.user_id(),
        session: session.id(),
    };
    let endpoint = crate::router::resolve(&routes, &gw.overrides, &gw.backends, &key)?;
    let realm_key = routes
        .services
        .get(&service)
        .is_some_and(|s| s.strategy == Strategy::Realm)
        .then_some(realm);
    bind_on(
        session,
        service,
        realm,
        realm_key,
        endpoint,
        resumed,
        traceparent,
    )
}

fn bind_on(
    session: &SessionHandle,
    service: u16,
    realm: u32,
    realm_key: Option<u32>,
    endpoint: Arc<Endpoint>,
    resumed: bool,
    traceparent: Option<&str>,
) -> Result<Binding, RequestError> {
    let (slot, generation) =
        endpoint
            .conn_for(session.id())
            .ok_or_else(|| RequestError::BackendUnavailable {
                endpoint: endpoint.addr.to_string(),
            })?;
    let mut h = Header::new(Kind::Open);
    h.service_type = service;
    h.realm_id = realm;
    h.user_id = session.user_id();
    h.session_id = session.id();
    let open = control::control_frame(
        Kind::Open,
        h,
        &Open {
            protocol: session.protocol().name().to_string(),
            remote_addr: session.remote().to_string(),
            resumed,
            traceparent: traceparent.map(str::to_string),
        },
    );
    endpoint.conns[slot]
        .send(
            generation,
            ToBackend::Open {
                session: session.clone(),
                frame: open.to_bytes(),
            },
        )
        .map_err(|e| send_error(e, &endpoint))?;
    Ok(Binding {
        service,
        realm: realm_key,
        endpoint,
        slot,
        generation,
    })
}

/// What a client connection holds while it lives: its slot under the
/// connection limits, and its place in the active-connections gauge.
pub(crate) struct Admission {
    /// Released on drop.
    pub(crate) _guard: Option<ConnGuard>,
    pub(crate) active: IntGauge,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Runs the HELLO phase of a TCP or WebSocket connection and, if it is
/// accepted, spawns the session's own task and returns. The session task
/// starts with only the session's state: nothing of the accept, sniff and
/// HELLO futures stays in the memory an idle session holds.
pub(crate) async fn start(
    gw: Arc<Gateway>,
    mut io: ClientIo,
    remote: SocketAddr,
    protocol: Protocol,
    admission: Admission,
) {
    let pm = gw.metrics.proto(protocol);
    let max = gw.cfg.limits.max_frame_bytes;
    let first = match tokio::time::timeout(gw.cfg.limits.hello_timeout, io.read_frame(max)).await {
        Err(_) => Err(Closing::new(
            CloseCode::HelloTimeout,
            format!(
                "no HELLO within {} ms",
                gw.cfg.limits.hello_timeout.as_millis()
            ),
        )),
        Ok(Err(e)) => Err(Closing::from_read(e, max)),
        Ok(Ok(raw)) => Ok(raw),
    };
    let span = tracing::info_span!(
        target: crate::telemetry::TARGET,
        "session.open",
        otel.kind = "server",
        protocol = protocol.name(),
        client.address = %remote,
        session_id = tracing::field::Empty,
        user_id = tracing::field::Empty,
        resumed = tracing::field::Empty,
        close.code = tracing::field::Empty,
    );
    let accepted = first.and_then(|raw| {
        pm.frames_in.inc();
        pm.bytes_in.inc_by(raw.len() as u64);
        accept_hello(&gw, raw)
    });
    let (header, resumed, trace) = match accepted {
        Ok(h) => h,
        Err(c) => {
            span.record("close.code", c.code);
            if c.code == CloseCode::HelloTimeout.code() {
                gw.metrics.reject("hello_timeout");
            }
            gw.metrics
                .closes
                .with_label_values(&[close_label(c.code)])
                .inc();
            end_transport(&mut io, 0, &c, pm).await;
            return;
        }
    };

    let id = if resumed {
        header.session_id
    } else {
        gw.ids.next_id()
    };
    crate::telemetry::set_parent(&span, trace.as_deref());
    span.record("session_id", id);
    span.record("user_id", header.user_id);
    span.record("resumed", resumed);
    // The backend continues this trace (OPEN carries it); kept only when
    // there is one.
    let trace = crate::telemetry::traceparent(&span, trace.as_deref()).map(String::into_boxed_str);
    if resumed && let Some(old) = gw.sessions.get(id) {
        // Resumed on the gateway that still holds it: the old connection yields.
        old.close(CloseCode::Moved);
        let deadline = Instant::now() + Duration::from_secs(2);
        while gw.sessions.get(id).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (handle, rx) = SessionHandle::new(
        id,
        header.user_id,
        header.realm_id,
        protocol,
        remote,
        gw.cfg.limits.session_queue,
    );
    if !gw.sessions.insert(handle.clone()) {
        // Only possible if the id space wrapped onto a live session.
        let c = Closing::new(CloseCode::Internal, "session id collision, reconnect");
        end_transport(&mut io, 0, &c, pm).await;
        return;
    }
    gw.metrics.sessions_opened.inc();
    gw.metrics.sessions_active.inc();
    gw.session_event(crate::SessionEvent {
        session_id: id,
        user_id: header.user_id,
        open: true,
        epoch: handle.opened_ms(),
    });
    info!(session = id, user = header.user_id, realm = header.realm_id, %remote, protocol = protocol.name(), resumed, "session opened");

    let mut wh = header;
    wh.session_id = id;
    let welcome = control::control_frame(
        Kind::Welcome,
        wh,
        &Welcome {
            gateway_id: gw.cfg.gateway_id.clone(),
            session: format!("{}:{id}", gw.cfg.gateway_id),
            resume_token: gw.resume.as_ref().map(|k| k.mint(id, header.user_id)),
            heartbeat_ms: gw.cfg.limits.heartbeat.as_millis() as u64,
        },
    );
    let mut s = Session {
        bucket: TokenBucket::new(
            gw.cfg.limits.msg_rate_per_sec,
            gw.cfg.limits.msg_burst,
            std::time::Instant::now(),
        ),
        gw: gw.clone(),
        handle,
        rx,
        io,
        bindings: Vec::new(),
        protocol,
        goaway_sent: false,
        resumed,
        trace,
        _admission: admission,
    };
    s.queue(welcome.to_bytes());
    drop(span);
    gw.tracker.spawn(live(s));
}

/// The session task: every idle session holds one of these futures.
/// (An `async` block, not an `async fn`: a function's argument would be
/// stored twice in its state.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would store the session twice"
)]
fn live(mut s: Session) -> impl Future<Output = ()> + Send {
    async move {
        let closing = match s.flush().await {
            Ok(()) => s.run().await,
            Err(c) => c,
        };
        s.finish(closing).await;
    }
}

/// Validates the first frame: a v1 HELLO opening a new session, or resuming
/// one with a valid resume token. Returns the header (with the session's
/// ids), whether it is a resume, and the client's trace context.
fn accept_hello(gw: &Gateway, raw: BytesMut) -> Result<(Header, bool, Option<String>), Closing> {
    let mut header =
        frame::parse_raw(&raw).map_err(|e| Closing::from_read(ReadError::Frame(e), 0))?;
    if header.kind() != Some(Kind::Hello) {
        return Err(Closing::new(
            CloseCode::ProtocolError,
            format!(
                "the first frame must be HELLO (kind 0x01), got kind 0x{:02x}",
                header.kind
            ),
        ));
    }
    let f = Frame::new(header, raw.freeze().slice(frame::HEADER_BYTES..));
    let hello: control::Hello = f.json().map_err(|e| {
        Closing::new(
            CloseCode::ProtocolError,
            format!("HELLO payload is not a valid JSON object: {e}"),
        )
    })?;
    if gw.draining() {
        gw.metrics.reject("draining");
        return Err(Closing::new(
            CloseCode::Shutdown,
            "gateway is draining; reconnect to another gateway",
        ));
    }
    if header.session_id == 0 && hello.resume_token.is_none() {
        if let Some(auth) = &gw.cfg.client_auth {
            // The token names the user; the HELLO may only repeat it.
            header.user_id = auth
                .verify(hello.token.as_deref(), header.user_id)
                .map_err(|e| {
                    gw.metrics.reject("unauthorized");
                    Closing::new(CloseCode::Unauthorized, e.to_string())
                })?;
        }
        return Ok((header, false, hello.traceparent));
    }
    let Some(keys) = &gw.resume else {
        return Err(Closing::new(
            CloseCode::BadResume,
            "session resume is not enabled on this gateway; send HELLO with session_id 0",
        ));
    };
    let (Some(token), true) = (hello.resume_token.as_deref(), header.session_id != 0) else {
        return Err(Closing::new(
            CloseCode::BadResume,
            "a resume needs both session_id in the header and resume_token in the payload",
        ));
    };
    match keys.verify(token, header.session_id, header.user_id) {
        Ok(claims) => {
            header.user_id = claims.user_id;
            Ok((header, true, hello.traceparent))
        }
        Err(e) => {
            gw.metrics.reject("bad_resume");
            Err(Closing::new(
                CloseCode::BadResume,
                format!("{e}; open a new session (session_id 0)"),
            ))
        }
    }
}

/// Writes the CLOSE frame (when possible) and ends the transport.
async fn end_transport(io: &mut ClientIo, session_id: u64, c: &Closing, pm: &ProtoMetrics) {
    if c.notify_client {
        let f = control::close_frame(session_id, CloseCode::Normal, "").header;
        let frame = control::control_frame(
            Kind::Close,
            f,
            &control::Close {
                code: c.code,
                reason: c.reason.clone(),
            },
        )
        .to_bytes();
        pm.frames_out.inc();
        pm.bytes_out.inc_by(frame.len() as u64);
        io.queue(frame);
        let _ = tokio::time::timeout(Duration::from_secs(1), io.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown(c.code, &c.reason)).await;
    }
}

struct Session {
    gw: Arc<Gateway>,
    handle: SessionHandle,
    rx: super::Inbox,
    io: ClientIo,
    bindings: Vec<Binding>,
    bucket: TokenBucket,
    protocol: Protocol,
    /// A client that closes after GOAWAY has moved: backends get "moved".
    goaway_sent: bool,
    /// Opened by resuming a session from another connection or gateway.
    resumed: bool,
    /// W3C trace context handed to backends in OPEN.
    trace: Option<Box<str>>,
    _admission: Admission,
}

/// Most queued messages handled before a flush, so one busy session cannot
/// grow its write buffer without bound.
const MAX_BATCH: usize = 128;

/// Extra time after a GOAWAY deadline before the session closes itself.
const GOAWAY_GRACE: Duration = Duration::from_secs(2);

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
        let max = self.gw.cfg.limits.max_frame_bytes;
        for _ in 0..MAX_READS {
            match self.io.poll_read_frame(cx, max) {
                Poll::Ready(Ok(raw)) => {
                    self.on_client_frame(raw)?;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Closing::from_read(e, max))),
                Poll::Pending => break,
            }
        }
        if progress {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
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
            other => other.name().to_string(),
        };
        Closing::new(code, reason)
    }

    fn queue(&mut self, frame: Bytes) {
        let pm = self.gw.metrics.proto(self.protocol);
        pm.frames_out.inc();
        pm.bytes_out.inc_by(frame.len() as u64);
        self.io.queue(frame);
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
    async fn flush(&mut self) -> Result<(), Closing> {
        let first = std::future::poll_fn(|cx| Poll::Ready(self.io.poll_flush(cx))).await;
        let res = match first {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => {
                Box::pin(tokio::time::timeout(
                    self.gw.cfg.limits.write_timeout,
                    self.io.flush(),
                ))
                .await
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
            Outbound::BackendLost { endpoint } => {
                // Only bindings whose connection really is gone; a stale
                // notice for an older connection is ignored.
                let mut lost = Vec::new();
                self.bindings.retain(|b| {
                    let gone = *b.endpoint.addr == *endpoint && !b.live();
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
            } => {
                let mut h = Header::new(Kind::GoAway);
                h.session_id = self.handle.id();
                h.user_id = self.handle.user_id();
                let f = control::control_frame(
                    Kind::GoAway,
                    h,
                    &control::GoAway {
                        reason,
                        reconnect_after_ms: reconnect_after.as_millis() as u64,
                        deadline_ms: deadline.as_millis() as u64,
                        resume_token: self
                            .gw
                            .resume
                            .as_ref()
                            .map(|k| k.mint(self.handle.id(), self.handle.user_id())),
                    },
                );
                self.queue(f.to_bytes());
                self.goaway_sent = true;
                // The drain controller force-closes (and counts) at the deadline;
                // this timer is only a safety net if it cannot.
                self.handle
                    .set_goaway_deadline(Some(std::time::Instant::now() + deadline + GOAWAY_GRACE));
            }
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

    fn publish_bindings(&self) {
        self.handle.set_bindings(
            self.bindings
                .iter()
                .map(|b| (b.service, b.endpoint.addr.clone()))
                .collect(),
        );
    }

    fn on_client_frame(&mut self, mut raw: BytesMut) -> Result<(), Closing> {
        let now = std::time::Instant::now();
        self.handle.touch(now);
        let pm = self.gw.metrics.proto(self.protocol);
        pm.frames_in.inc();
        pm.bytes_in.inc_by(raw.len() as u64);
        let header = match frame::parse_raw(&raw) {
            Ok(h) => h,
            Err(FrameError::UnknownKind { header }) => {
                // The stream is still in sync: answer and carry on.
                let e = ErrorCode::UnknownKind;
                self.gw
                    .metrics
                    .errors_sent
                    .with_label_values(&[e.name()])
                    .inc();
                let mut h = header;
                h.session_id = self.handle.id();
                let msg = format!(
                    "unknown frame kind 0x{:02x}; this gateway speaks protocol v1 kinds 0x01-0x09",
                    header.kind
                );
                self.queue(control::error_frame(&h, e, msg).to_bytes());
                return Ok(());
            }
            Err(e) => return Err(Closing::from_read(ReadError::Frame(e), 0)),
        };
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
        match header.kind() {
            Some(Kind::Data) => {
                if !self.bucket.take(now) {
                    self.gw.metrics.reject("msg_rate");
                    self.queue_error(&header, &RequestError::RateLimited);
                    return Ok(());
                }
                frame::stamp_ids(&mut raw, user, id);
                if let Err(e) = self.forward(&header, raw.freeze()) {
                    self.queue_error(&header, &e);
                }
            }
            Some(Kind::Ping) => {
                let mut h = header;
                h.kind = Kind::Pong as u8;
                h.session_id = id;
                h.user_id = user;
                self.queue(Frame::new(h, Bytes::new()).to_bytes());
            }
            Some(Kind::Pong) => {}
            Some(Kind::Close) => {
                return Err(Closing::silent(CloseCode::Normal, "closed by client"));
            }
            Some(k) => {
                let e = RequestError::BadRequest(format!(
                    "kind {} is not valid from a client on an open session",
                    k.name()
                ));
                self.queue_error(&header, &e);
            }
            None => {}
        }
        Ok(())
    }

    /// Sends a client DATA frame to the backend bound for its service,
    /// binding (or re-binding after a backend failure) first if needed.
    fn forward(&mut self, header: &Header, raw: Bytes) -> Result<(), RequestError> {
        let realm = if header.realm_id != 0 {
            header.realm_id
        } else {
            self.handle.realm_id()
        };
        let svc = header.service_type;
        let idx = self
            .bindings
            .iter()
            .position(|b| b.service == svc && b.realm.is_none_or(|r| r == realm));
        if let Some(i) = idx {
            if self.bindings[i].live() {
                return self.bindings[i].send(raw);
            }
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
                b.send(raw.clone())?;
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
        let res = b.send(raw);
        self.bindings.push(b);
        self.publish_bindings();
        res
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
        self.gw.sessions.remove(id);
        self.gw.metrics.sessions_active.dec();
        // A session that moved is now owned elsewhere: the directory's epoch
        // rule keeps the new owner even if this close arrives late.
        self.gw.session_event(crate::SessionEvent {
            session_id: id,
            user_id: self.handle.user_id(),
            open: false,
            epoch: 0,
        });
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
        gw.sessions.for_each(|s| {
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
                _guard: gw.limits.try_acquire(remote.ip()).ok(),
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
