//! HTTP sessions: a game session for clients that speak only HTTP.
//!
//! `POST /v1/sessions` starts one and answers its id and a session token;
//! `POST /v1/sessions/{id}/call/{service}` sends DATA on it and returns the
//! backend's reply; `GET /v1/sessions/{id}/events` streams everything else
//! the session receives — pushes, kicks, GOAWAY — as Server-Sent Events,
//! resumable with `Last-Event-ID`; `DELETE /v1/sessions/{id}` (or
//! `POST …/exit`) ends it.
//!
//! The session is a real one: the same task as a TCP or WebSocket session
//! runs it ([`crate::session`]), with this module as its transport
//! ([`SseIo`]): calls are the frames it reads, and the frames it writes go
//! to the waiting call (by `seq`) or out as events. So it is listed, looked
//! up in the directory, pushed to, kicked, drained and idle-timed like the
//! others; an attached event stream counts as activity.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use gg_proto::control;
use gg_proto::frame::{self, Header, Kind};
use gg_proto::{CloseCode, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use parking_lot::Mutex;
use serde::Serialize;
use subtle::ConstantTimeEq as _;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use super::http::{Body, CallError, full, json_error, read_body, reject_response, request_error};
use crate::Gateway;
use crate::error::{Reject, RequestError};
use crate::metrics::Protocol;
use crate::session::SessionHandle;
use crate::session::io::{ClientIo, ReadError};

/// Events kept for `Last-Event-ID` replay…
const REPLAY: usize = 256;
/// …and at most this many bytes of them (large pushes keep fewer).
const REPLAY_BYTES: usize = 1 << 20;
/// Events queued for an attached stream; a client this far behind is
/// detached (it reconnects with `Last-Event-ID`).
const STREAM_QUEUE: usize = 256;
/// Calls queued for the session task.
const CALL_QUEUE: usize = 64;

pub(crate) const SESSIONS_PATH: &str = "/v1/sessions";

/// What the handlers and the session task share about one HTTP session.
pub(crate) struct HttpSession {
    handle: SessionHandle,
    token: [u8; 32],
    /// Frames for the session task to read (calls, heartbeat PINGs).
    inbound: mpsc::Sender<BytesMut>,
    next_seq: AtomicU32,
    /// Calls waiting for their reply, by `seq`.
    calls: Mutex<HashMap<u32, oneshot::Sender<Frame>>>,
    events: Mutex<Events>,
}

#[derive(Default)]
struct Events {
    next_id: u64,
    /// Bytes held in `ring`.
    ring_bytes: usize,
    /// The last [`REPLAY`] events, rendered.
    ring: VecDeque<(u64, Bytes)>,
    stream: Option<mpsc::Sender<Bytes>>,
    ended: bool,
}

/// The session task's side: frames in from calls, frames out to calls or
/// events.
pub(crate) struct SseIo {
    shared: Arc<HttpSession>,
    rx: mpsc::Receiver<BytesMut>,
}

impl SseIo {
    pub(crate) fn poll_read_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BytesMut, ReadError>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(f)) => Poll::Ready(Ok(f)),
            Poll::Ready(None) => Poll::Ready(Err(ReadError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A frame the session writes to its client.
    pub(crate) fn deliver(&mut self, raw: Bytes) {
        let Ok(f) = frame::decode(&mut BytesMut::from(&raw[..]), u32::MAX) else {
            return;
        };
        let Some(f) = f else { return };
        let h = f.header;
        if matches!(h.kind(), Some(Kind::Data | Kind::Error))
            && h.seq != 0
            && let Some(waiting) = self.shared.calls.lock().remove(&h.seq)
        {
            let _ = waiting.send(f);
            return;
        }
        match h.kind() {
            Some(Kind::Pong) => self.shared.emit_raw(Bytes::from_static(b": heartbeat\n\n")),
            Some(Kind::Data) => {
                let mut ev = serde_json::json!({ "service_type": h.service_type, "seq": h.seq });
                match std::str::from_utf8(&f.payload) {
                    Ok(t) => ev["payload"] = t.into(),
                    Err(_) => {
                        ev["payload_b64"] = base64::engine::general_purpose::STANDARD
                            .encode(&f.payload)
                            .into()
                    }
                }
                self.shared.emit("message", &ev.to_string());
            }
            Some(Kind::Message) => {
                let Ok((room, room_seq, data)) = gg_proto::room::parse_message(&f.payload) else {
                    return;
                };
                let mut ev = serde_json::json!({
                    "room": room, "room_seq": room_seq, "service_type": h.service_type,
                });
                match std::str::from_utf8(data) {
                    Ok(t) => ev["payload"] = t.into(),
                    Err(_) => {
                        ev["payload_b64"] = base64::engine::general_purpose::STANDARD
                            .encode(data)
                            .into()
                    }
                }
                self.shared.emit("room", &ev.to_string());
            }
            Some(Kind::Close) => self.shared.emit("close", payload_json(&f)),
            Some(Kind::GoAway) => self.shared.emit("goaway", payload_json(&f)),
            Some(Kind::Error) => {
                let e: control::Error = f.json().unwrap_or(control::Error {
                    code: 0,
                    message: String::new(),
                });
                let ev = serde_json::json!({
                    "service_type": h.service_type, "seq": h.seq,
                    "code": e.code, "message": e.message,
                });
                self.shared.emit("error", &ev.to_string());
            }
            _ => {}
        }
    }

    /// The session ended: the stream ends after its last event.
    pub(crate) fn end(&mut self) {
        let mut ev = self.shared.events.lock();
        ev.ended = true;
        ev.stream = None;
        self.shared.calls.lock().clear();
    }
}

fn payload_json(f: &Frame) -> &str {
    std::str::from_utf8(&f.payload)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or("{}")
}

impl HttpSession {
    /// One event: numbered, kept for replay, sent to the attached stream.
    fn emit(&self, name: &str, data: &str) {
        let mut ev = self.events.lock();
        ev.next_id += 1;
        let id = ev.next_id;
        let mut text = format!("id: {id}\nevent: {name}\n");
        for line in data.split('\n') {
            text.push_str("data: ");
            text.push_str(line);
            text.push('\n');
        }
        text.push('\n');
        let text = Bytes::from(text);
        ev.ring_bytes += text.len();
        ev.ring.push_back((id, text.clone()));
        while ev.ring.len() > REPLAY || (ev.ring_bytes > REPLAY_BYTES && ev.ring.len() > 1) {
            if let Some((_, old)) = ev.ring.pop_front() {
                ev.ring_bytes -= old.len();
            }
        }
        send_or_detach(&mut ev, text);
    }

    /// A comment line (not numbered, not kept).
    fn emit_raw(&self, text: Bytes) {
        send_or_detach(&mut self.events.lock(), text);
    }

    fn authorized(&self, token: Option<&str>) -> bool {
        let Some(t) = token.and_then(hex_decode) else {
            return false;
        };
        t.len() == 32 && bool::from(t.as_slice().ct_eq(&self.token[..]))
    }
}

fn send_or_detach(ev: &mut Events, text: Bytes) {
    if let Some(s) = &ev.stream
        && s.try_send(text).is_err()
    {
        // Too far behind (or gone): it resumes with Last-Event-ID.
        ev.stream = None;
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Routes `/v1/sessions…`.
pub(crate) async fn route(
    gw: &Arc<Gateway>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix(SESSIONS_PATH).unwrap_or("");
    let method = req.method().clone();
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", []) => start(gw, remote, req).await,
        (_, [id, rest @ ..]) => {
            let Some(s) = id
                .parse::<u64>()
                .ok()
                .and_then(|id| gw.clients.http_sessions.lock().get(&id).cloned())
            else {
                return json_error(
                    StatusCode::NOT_FOUND,
                    0,
                    "unknown_session",
                    "no such HTTP session on this gateway (ended, or started on another gateway)",
                );
            };
            let token = req
                .headers()
                .get("x-session-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| query(&req, "token"));
            if !s.authorized(token.as_deref()) {
                gw.metrics.reject(Reject::Unauthorized);
                return json_error(
                    StatusCode::UNAUTHORIZED,
                    CloseCode::Unauthorized.code(),
                    "unauthorized",
                    "a valid x-session-token header (or ?token=) is required",
                );
            }
            match (method.as_str(), rest) {
                ("POST", ["call", service]) => {
                    let service = service.to_string();
                    session_call(gw, &s, &service, req).await
                }
                ("GET", ["events"]) => events(gw, &s, &req),
                ("DELETE", []) | ("POST", ["exit"]) => exit(&s),
                _ => json_error(
                    StatusCode::NOT_FOUND,
                    0,
                    "not_found",
                    "use POST …/call/{service}, GET …/events, DELETE or POST …/exit",
                ),
            }
        }
        _ => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            0,
            "method_not_allowed",
            "POST /v1/sessions starts a session",
        ),
    }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    realm_id: Option<u32>,
    /// Resume a session (from another gateway's `goaway` event, or a
    /// previous start): its id, as a string, and its resume token.
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    resume_token: Option<String>,
}

#[derive(Serialize)]
struct Started {
    session_id: String,
    session: String,
    session_token: String,
    /// Resumes this session elsewhere (when resume is enabled).
    resume_token: Option<String>,
    resumed: bool,
    gateway_id: String,
    user_id: String,
    region: Option<String>,
    heartbeat_ms: u64,
    started_at: u64,
    status: &'static str,
    events: String,
}

async fn start(gw: &Arc<Gateway>, remote: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    match start_inner(gw, remote, req).await {
        Ok(r) => r,
        Err(CallError::Request(e)) => request_error(&e),
        Err(CallError::Rejected(r, m)) => reject_response(gw, r, &m),
        Err(CallError::Backend { code, message }) => {
            json_error(StatusCode::BAD_GATEWAY, code, "backend_error", &message)
        }
    }
}

async fn start_inner(
    gw: &Arc<Gateway>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    if gw.draining() {
        return Err(RequestError::Draining.into());
    }
    let h = req.headers();
    let mut user: u64 = super::http::header_num(h, "x-user-id")?.unwrap_or(0);
    if let Some(auth) = &gw.cfg.client_auth {
        let token = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        user = auth
            .verify(token, user)
            .map_err(|e| CallError::Rejected(Reject::Unauthorized, e.to_string()))?;
    }
    let header_region = h
        .get("x-region")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read_body(gw, req.into_body()).await?;
    let opts: StartBody = if body.is_empty() {
        StartBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            RequestError::BadRequest(format!(
                "the body must be empty or {{\"region\", \"realm_id\"}}: {e}"
            ))
        })?
    };
    // Long-lived: counted against the connection limits like a socket.
    let guard = gw
        .clients
        .limits
        .try_acquire(remote.ip())
        .map_err(|r| CallError::Rejected(r, "connection limit reached".into()))?;
    let resumed = match (&opts.session_id, &opts.resume_token) {
        (None, None) => None,
        (Some(sid), Some(token)) => {
            let sid: u64 = sid.parse().map_err(|_| {
                RequestError::BadRequest("session_id must be the id as a decimal string".into())
            })?;
            let keys = gw.clients.resume.as_ref().ok_or_else(|| {
                CallError::Rejected(
                    Reject::BadResume,
                    "session resume is not enabled on this gateway".into(),
                )
            })?;
            let claims = keys
                .redeem(token, sid, user)
                .map_err(|e| CallError::Rejected(Reject::BadResume, e.to_string()))?;
            user = claims.user_id;
            Some(sid)
        }
        _ => {
            return Err(RequestError::BadRequest(
                "a resume needs both session_id and resume_token".into(),
            )
            .into());
        }
    };
    let id = resumed.unwrap_or_else(|| gw.clients.ids.next_id());
    let realm = opts.realm_id.unwrap_or(0);
    let (handle, rx) = SessionHandle::new(
        id,
        user,
        realm,
        Protocol::HttpSession,
        remote,
        gw.cfg.limits.session_queue_bound(),
    );
    if let Some(r) = opts.region.as_deref().or(header_region.as_deref()) {
        handle.set_region(r);
    }
    let mut token = [0u8; 32];
    for chunk in token.chunks_mut(8) {
        chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
    }
    let (tx, calls_rx) = mpsc::channel(CALL_QUEUE);
    let shared = Arc::new(HttpSession {
        handle: handle.clone(),
        token,
        inbound: tx,
        next_seq: AtomicU32::new(1),
        calls: Mutex::new(HashMap::new()),
        events: Mutex::new(Events::default()),
    });
    if resumed.is_some() {
        // Resumed here from another connection of this gateway: it moves.
        if let Some(old) = gw.clients.sessions.replace(handle.clone()) {
            old.close(CloseCode::Moved);
        }
    } else if !gw.clients.sessions.insert(handle.clone()) {
        return Err(RequestError::BadState("session id collision, retry".into()).into());
    }
    gw.clients.http_sessions.lock().insert(id, shared.clone());
    crate::session::hello::opened(gw, &handle, resumed.is_some());
    let io = ClientIo::Sse {
        io: Box::new(SseIo {
            shared: shared.clone(),
            rx: calls_rx,
        }),
        pending: Default::default(),
    };
    let gw2 = gw.clone();
    gw.life.tracker.spawn(async move {
        crate::session::live::run_http_session(
            gw2.clone(),
            handle,
            rx,
            io,
            guard,
            resumed.is_some(),
        )
        .await;
        gw2.clients.http_sessions.lock().remove(&id);
    });
    let started = Started {
        session_id: id.to_string(),
        session: format!("{}:{id}", gw.cfg.gateway_id),
        session_token: hex(&shared.token),
        resume_token: (gw.clients.resume.as_ref()).map(|k| k.mint(id, user)),
        resumed: resumed.is_some(),
        gateway_id: gw.cfg.gateway_id.clone(),
        user_id: user.to_string(),
        region: shared.handle.region().map(str::to_string),
        heartbeat_ms: gw.cfg.limits.heartbeat.as_millis() as u64,
        started_at: gg_runtime::clock::now_ms(),
        status: "active",
        events: format!("{SESSIONS_PATH}/{id}/events"),
    };
    info!(session = id, user, %remote, "http session started");
    let mut r = Response::new(full(Bytes::from(
        serde_json::to_vec(&started).unwrap_or_default(),
    )));
    *r.status_mut() = StatusCode::CREATED;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// DATA on the session; the reply (matched by `seq`) is the response.
async fn session_call(
    gw: &Arc<Gateway>,
    s: &Arc<HttpSession>,
    service_key: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let service = {
        let routes = gw.routing.routes.load();
        match routes.service_by_key(service_key) {
            Some(svc) => svc.id,
            None => return request_error(&RequestError::UnknownService(service_key.to_string())),
        }
    };
    let body = match read_body(gw, req.into_body()).await {
        Ok(b) => b,
        Err(CallError::Rejected(r, m)) => return reject_response(gw, r, &m),
        Err(CallError::Request(e)) => return request_error(&e),
        Err(CallError::Backend { code, message }) => {
            return json_error(StatusCode::BAD_GATEWAY, code, "backend_error", &message);
        }
    };
    // seq 0 is "unprompted": calls use 1..=2^31.
    let seq = (s.next_seq.fetch_add(1, Ordering::Relaxed) % 0x7fff_ffff) + 1;
    let (done, reply) = oneshot::channel();
    s.calls.lock().insert(seq, done);
    let mut h = Header::new(Kind::Data);
    h.service_type = service;
    h.session_id = s.handle.id();
    h.user_id = s.handle.user_id();
    h.seq = seq;
    let raw = BytesMut::from(&Frame::new(h, body).to_bytes()[..]);
    if s.inbound.try_send(raw).is_err() {
        s.calls.lock().remove(&seq);
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            0,
            "busy",
            "too many calls in flight on this session; retry",
        );
    }
    let timeout = gw.cfg.backend.request_timeout;
    match tokio::time::timeout(timeout, reply).await {
        Ok(Ok(f)) if f.header.kind() == Some(Kind::Data) => {
            let mut r = Response::new(full(f.payload));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        Ok(Ok(f)) => {
            let e: control::Error = f.json().unwrap_or(control::Error {
                code: 0,
                message: String::new(),
            });
            json_error(StatusCode::BAD_GATEWAY, e.code, "backend_error", &e.message)
        }
        Ok(Err(_)) => json_error(
            StatusCode::GONE,
            0,
            "session_ended",
            "the session ended before the reply",
        ),
        Err(_) => {
            s.calls.lock().remove(&seq);
            request_error(&RequestError::Timeout(timeout.as_millis() as u64))
        }
    }
}

/// The event stream; replaces a stream already attached.
fn events(gw: &Arc<Gateway>, s: &Arc<HttpSession>, req: &Request<Incoming>) -> Response<Body> {
    let last: Option<u64> = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query(req, "last_event_id"))
        .and_then(|v| v.trim().parse().ok());
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_QUEUE + REPLAY + 1);
    {
        let mut ev = s.events.lock();
        if ev.ended {
            return json_error(
                StatusCode::GONE,
                0,
                "session_ended",
                "the session has ended",
            );
        }
        // Without Last-Event-ID: everything since the session started
        // (events pushed before the client attached are not lost).
        let last = last.unwrap_or(0);
        let oldest = ev.ring.front().map_or(ev.next_id + 1, |(id, _)| *id);
        if last + 1 < oldest {
            let gap = format!(
                "event: gap\ndata: {{\"from\":{},\"to\":{}}}\n\n",
                last + 1,
                oldest - 1
            );
            let _ = tx.try_send(Bytes::from(gap));
        }
        for (id, text) in &ev.ring {
            if *id > last {
                let _ = tx.try_send(text.clone());
            }
        }
        ev.stream = Some(tx.clone());
    }
    // Heartbeats: a comment to keep proxies from timing out, and a PING into
    // the session so an attached stream keeps it alive.
    let every = gw.cfg.limits.heartbeat;
    // A weak sender: the stream ends when the session drops its sender.
    let (shared, hb) = (s.clone(), tx.downgrade());
    drop(tx);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if hb.upgrade().is_none_or(|tx| tx.is_closed()) {
                return;
            }
            let mut h = Header::new(Kind::Ping);
            h.session_id = shared.handle.id();
            h.user_id = shared.handle.user_id();
            let _ = shared
                .inbound
                .try_send(BytesMut::from(&Frame::new(h, Bytes::new()).to_bytes()[..]));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| {
            (
                Ok::<_, super::http::BoxError>(hyper::body::Frame::data(b)),
                rx,
            )
        })
    });
    let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn exit(s: &Arc<HttpSession>) -> Response<Body> {
    s.handle.kick(
        CloseCode::Normal.code(),
        crate::session::closing::EXITED_BY_CLIENT.into(),
    );
    let body = serde_json::json!({
        "session_id": s.handle.id().to_string(),
        "exited_at": gg_runtime::clock::now_ms(),
        "status": "exited",
    });
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
