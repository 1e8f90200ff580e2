//! The HELLO phase of a streaming connection (TCP, TLS or WebSocket): the
//! first frame within `hello_timeout`, authentication or resume, the
//! session's registration, WELCOME, and the hand-off to the session task
//! ([`super::live`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use gg_proto::control::{self, Welcome};
use gg_proto::frame::{self, Header, Kind};
use gg_proto::{CloseCode, Frame};
use prometheus::IntGauge;
use tracing::info;

use super::SessionHandle;
use super::closing::{Closing, close_label, end_transport};
use super::io::{ClientIo, ReadError};
use super::live::{Session, live};
use crate::Gateway;
use crate::error::Reject;
use crate::limits::{ConnGuard, TokenBucket};
use crate::metrics::ProtoMetrics;
use crate::metrics::Protocol;
use gg_proto::frame::FrameError;

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
    let span = tracing::info_span!(
        target: gg_runtime::telemetry::TARGET,
        "session.open",
        otel.kind = "server",
        protocol = protocol.name(),
        client.address = %remote,
        session_id = tracing::field::Empty,
        user_id = tracing::field::Empty,
        resumed = tracing::field::Empty,
        close.code = tracing::field::Empty,
    );
    let hello = match read_hello(&gw, &mut io, pm).await {
        Ok(h) => h,
        Err(c) => {
            span.record("close.code", c.code);
            gw.metrics
                .closes
                .with_label_values(&[close_label(c.code)])
                .inc();
            end_transport(&mut io, 0, &c, pm).await;
            return;
        }
    };
    let id = if hello.resumed {
        hello.header.session_id
    } else {
        gw.clients.ids.next_id()
    };
    gg_runtime::telemetry::set_parent(&span, hello.trace.as_deref());
    span.record("session_id", id);
    span.record("user_id", hello.header.user_id);
    span.record("resumed", hello.resumed);
    // The backend continues this trace (OPEN carries it); kept only when
    // there is one.
    let trace = gg_runtime::telemetry::traceparent(&span, hello.trace.as_deref())
        .map(String::into_boxed_str);
    let (handle, mut rx) = SessionHandle::new(
        id,
        hello.header.user_id,
        hello.header.realm_id,
        protocol,
        remote,
        gw.cfg.limits.session_queue_bound(),
    );
    if let Some(r) = &hello.region {
        handle.set_region(r);
    }
    if let Some(wr) = io.take_writer() {
        rx.share_writer(wr);
    }
    if hello.resumed {
        take_over(&gw, &handle).await;
    } else if !gw.clients.sessions.insert(handle.clone()) {
        // Only possible if the id space wrapped onto a live session.
        let c = Closing::new(CloseCode::Internal, "session id collision, reconnect");
        end_transport(&mut io, 0, &c, pm).await;
        return;
    }
    opened(&gw, &handle, hello.resumed);
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
        resumed: hello.resumed,
        trace,
        _admission: admission,
    };
    s.queue(welcome(&gw, hello.header, id));
    drop(span);
    gw.life.tracker.spawn(live(s));
}

/// An accepted HELLO.
struct Hello {
    /// The frame's header, with the user the token names.
    header: Header,
    /// A resume of an existing session (with a valid resume token).
    resumed: bool,
    /// The client's W3C trace context.
    trace: Option<String>,
    /// The region the client prefers.
    region: Option<String>,
}

/// The first frame, within `hello_timeout`, checked by [`accept_hello`].
async fn read_hello(gw: &Gateway, io: &mut ClientIo, pm: &ProtoMetrics) -> Result<Hello, Closing> {
    let limits = &gw.cfg.limits;
    let max = limits.max_hello_bytes;
    let raw = match tokio::time::timeout(
        limits.hello_timeout,
        io.read_frame(max, &gw.clients.buffered),
    )
    .await
    {
        Err(_) => {
            return Err(Closing::rejected(
                gw,
                Reject::HelloTimeout,
                format!("no HELLO within {} ms", limits.hello_timeout.as_millis()),
            ));
        }
        Ok(Err(ReadError::Frame(FrameError::TooLarge { len, .. }))) => {
            return Err(Closing::rejected(
                gw,
                Reject::HelloTooLarge,
                format!("HELLO of {len} bytes exceeds limits.max_hello_bytes ({max})"),
            ));
        }
        Ok(Err(e)) => return Err(Closing::from_read(e, max)),
        Ok(Ok(raw)) => raw,
    };
    pm.frames_in.inc();
    pm.bytes_in.inc_by(raw.len() as u64);
    accept_hello(gw, raw)
}

/// A resume of a session this gateway still holds: the old connection is
/// told it moved (3006) and the new one takes its place in the table at
/// once, even when the old connection's writes are stalled. The old task
/// leaves the table entry alone ([`super::table::SessionTable::remove_if`]).
async fn take_over(gw: &Gateway, handle: &SessionHandle) {
    if let Some(old) = gw.clients.sessions.replace(handle.clone()) {
        gw.rooms.session_replaced(handle);
        old.close(CloseCode::Moved);
        info!(
            session = handle.id(),
            "resumed here: the old connection is closed as moved"
        );
    }
}

/// Counts and announces a session that just opened (or resumed) here.
pub(crate) fn opened(gw: &Gateway, handle: &SessionHandle, resumed: bool) {
    gw.metrics.sessions_opened.inc();
    gw.metrics.sessions_active.inc();
    gw.session_event(crate::SessionEvent {
        session_id: handle.id(),
        user_id: handle.user_id(),
        open: true,
        epoch: handle.opened_ms(),
        realm_id: handle.realm_id(),
        resumed,
    });
    info!(session = handle.id(), user = handle.user_id(), realm = handle.realm_id(), remote = %handle.remote(), protocol = handle.protocol().name(), resumed, "session opened");
}

/// The WELCOME frame for session `id`, with a fresh resume token.
fn welcome(gw: &Gateway, header: Header, id: u64) -> bytes::Bytes {
    let mut wh = header;
    wh.session_id = id;
    control::control_frame(
        Kind::Welcome,
        wh,
        &Welcome {
            gateway_id: gw.cfg.gateway_id.clone(),
            session: format!("{}:{id}", gw.cfg.gateway_id),
            resume_token: gw
                .clients
                .resume
                .as_ref()
                .map(|k| k.mint(id, header.user_id)),
            heartbeat_ms: gw.cfg.limits.heartbeat.as_millis() as u64,
        },
    )
    .to_bytes()
}

/// Validates the first frame: a v1 HELLO opening a new session, or resuming
/// one with a valid resume token. Returns the header (with the session's
/// ids), whether it is a resume, and the client's trace context.
fn accept_hello(gw: &Gateway, raw: BytesMut) -> Result<Hello, Closing> {
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
        return Err(Closing::rejected(
            gw,
            Reject::Draining,
            "gateway is draining; reconnect to another gateway",
        ));
    }
    if header.session_id == 0 && hello.resume_token.is_none() {
        if let Some(auth) = &gw.cfg.client_auth {
            // The token names the user; the HELLO may only repeat it.
            header.user_id = auth
                .verify(hello.token.as_deref(), header.user_id)
                .map_err(|e| Closing::rejected(gw, Reject::Unauthorized, e.to_string()))?;
        }
        return Ok(Hello {
            header,
            resumed: false,
            trace: hello.traceparent,
            region: hello.region,
        });
    }
    let Some(keys) = &gw.clients.resume else {
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
    match keys.redeem(token, header.session_id, header.user_id) {
        Ok(claims) => {
            header.user_id = claims.user_id;
            Ok(Hello {
                header,
                resumed: true,
                trace: hello.traceparent,
                region: hello.region,
            })
        }
        Err(e) => Err(Closing::rejected(
            gw,
            Reject::BadResume,
            format!("{e}; open a new session (session_id 0)"),
        )),
    }
}
