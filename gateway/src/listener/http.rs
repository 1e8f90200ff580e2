//! HTTP/1.1 on the client port (hyper): `GET /v1/ws` upgrades to a
//! WebSocket session; `POST /v1/call/{service}` is a one-shot call carried
//! as one DATA request on an ephemeral session, answered with the backend's
//! DATA reply of the same `seq`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::{Bytes, BytesMut};
use gg_proto::frame::{self, Header, Kind};
use gg_proto::{CloseCode, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{Instrument, debug};

use super::prefixed::PrefixedIo;
use crate::Gateway;
use crate::config::SMALL_FRAME_BYTES;
use crate::error::Reject;
use crate::error::RequestError;
use crate::limits::{Charge, ConnGuard};
use crate::metrics::Protocol;
use crate::session::binding::open_binding;
use crate::session::closing::{BUDGET_SPENT, close_label};
use crate::session::hello::{Admission, start};
use crate::session::io::ClientIo;
use crate::session::{Outbound, SessionHandle};

/// Path of the WebSocket endpoint.
pub(crate) const WS_PATH: &str = "/v1/ws";
/// Prefix of one-shot call paths: `/v1/call/{service name or id}`.
pub(crate) const CALL_PREFIX: &str = "/v1/call/";
/// Concurrent streams per HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 128;
/// The `seq` of the DATA frame an HTTP call sends (one request per session).
const CALL_SEQ: u32 = 1;

/// Errors of streamed bodies (a proxied backend's), boxed.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A whole body.
pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Serves one HTTP connection until it closes, upgrades, or the gateway stops.
pub(crate) async fn serve_conn<I>(
    gw: Arc<Gateway>,
    io: PrefixedIo<I>,
    remote: SocketAddr,
    tls: bool,
    guard: ConnGuard,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let pm = gw.metrics.proto(Protocol::Http).clone();
    pm.connections.inc();
    pm.active.inc();
    // The admission guard moves to the WebSocket task on upgrade.
    let guard = Arc::new(Mutex::new(Some(guard)));
    let svc_gw = gw.clone();
    let service = service_fn(move |req| {
        let (gw, guard) = (svc_gw.clone(), guard.clone());
        async move { Ok::<_, Infallible>(route(gw, remote, tls, req, guard).await) }
    });
    // HTTP/1.1 and HTTP/2 (prior knowledge on plaintext, ALPN `h2` over
    // TLS) on the same port: gRPC clients speak HTTP/2.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(gw.cfg.limits.http_header_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(std::time::Duration::from_secs(20)))
        .keep_alive_timeout(std::time::Duration::from_secs(10));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            // hyper answered 400/431 itself, or the head timed out.
            if let Some(e) = e.downcast_ref::<hyper::Error>()
                && (e.is_parse() || e.is_parse_too_large() || e.is_timeout())
            {
                gw.metrics.reject(Reject::HttpBadHead);
            }
            debug!(%remote, error = %e, "http connection ended with error");
        },
        _ = gw.life.drain_signal.cancelled() => {
            // Finish the requests in flight, then close (no keep-alive;
            // HTTP/2 gets GOAWAY).
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = gw.life.hard_stop.cancelled() => {}
            }
        }
    }
    pm.active.dec();
}

async fn route(
    gw: Arc<Gateway>,
    remote: SocketAddr,
    tls: bool,
    req: Request<Incoming>,
    guard: Arc<Mutex<Option<ConnGuard>>>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    // The path route this request is for (a preflight: for the method it
    // announces), which may carry its own CORS origins.
    let http_route = if path.starts_with("/v1/") {
        None
    } else {
        let table = gw.routing.routes.load_full();
        // HTTP/1.1 names the host in Host, HTTP/2 in :authority.
        let host = (req.headers().get(header::HOST))
            .and_then(|v| v.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
            .or_else(|| req.uri().host())
            .unwrap_or("");
        let method = (req.method() == Method::OPTIONS)
            .then(|| req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD))
            .flatten()
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or_else(|| req.method().clone());
        table.http.find(&method, host, &path).cloned()
    };
    let route_cors = http_route
        .as_ref()
        .filter(|r| !r.route.cors_origins.is_empty())
        .map(|r| crate::config::CorsSettings {
            any: r.route.cors_origins.iter().any(|o| o == "*"),
            origins: r.route.cors_origins.clone(),
            max_age_s: gw.cfg.cors.as_ref().map_or(600, |c| c.max_age_s),
        });
    let cors = route_cors.as_ref().or(gw.cfg.cors.as_ref());
    let origin = cors
        .and(req.headers().get(header::ORIGIN))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if req.method() == Method::OPTIONS
        && let (Some(cors), Some(origin)) = (cors, &origin)
    {
        let resp = preflight(cors, origin);
        gw.metrics
            .http_responses
            .with_label_values(&[resp.status().as_str()])
            .inc();
        return resp;
    }
    let resp = if is_ws_upgrade(req.headers()) {
        if path == WS_PATH {
            upgrade(gw.clone(), remote, req, guard)
        } else {
            json_error(
                StatusCode::NOT_FOUND,
                0,
                "not_found",
                &format!("WebSocket endpoint is {WS_PATH}"),
            )
        }
    } else if path == super::sse::SESSIONS_PATH || path.starts_with("/v1/sessions/") {
        super::sse::route(&gw, remote, req).await
    } else if let Some(service) = path.strip_prefix(CALL_PREFIX) {
        if req.method() == Method::POST {
            let service = service.to_string();
            call(&gw, remote, &service, req).await
        } else {
            json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                0,
                "method_not_allowed",
                "use POST for /v1/call/{service}",
            )
        }
    } else {
        match http_route {
            Some(r) => crate::router::http::proxy(gw.clone(), r, remote, tls, req).await,
            None => json_error(
                StatusCode::NOT_FOUND,
                0,
                "not_found",
                "unknown path; use POST /v1/call/{service}, POST /v1/sessions, GET /v1/ws or a path of http_routes (health and metrics are on the ops port)",
            ),
        }
    };
    let mut resp = resp;
    if let (Some(cors), Some(origin)) = (cors, &origin)
        && cors.allows(origin)
        && let Ok(v) = HeaderValue::from_str(origin)
    {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-gateway-session"),
        );
    }
    gw.metrics
        .http_responses
        .with_label_values(&[resp.status().as_str()])
        .inc();
    resp
}

/// Headers a browser may send cross-origin.
const CORS_HEADERS: &str = "content-type, authorization, x-api-key, x-user-id, x-realm-id, x-region, x-session-token, last-event-id, traceparent";

/// The answer to a CORS preflight: allowed origins get the methods and
/// headers the client port takes; others a 403.
fn preflight(cors: &crate::config::CorsSettings, origin: &str) -> Response<Body> {
    if !cors.allows(origin) {
        return json_error(
            StatusCode::FORBIDDEN,
            0,
            "cors_origin",
            "this origin is not in cors.allow_origins (or the route's cors_origins)",
        );
    }
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_HEADERS),
    );
    if let Ok(v) = HeaderValue::from_str(&cors.max_age_s.to_string()) {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
    }
    r
}

pub(crate) fn is_ws_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub(crate) fn json_error(
    status: StatusCode,
    code: u16,
    name: &str,
    message: &str,
) -> Response<Body> {
    let body = serde_json::json!({ "code": code, "error": name, "message": message });
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The answer to a refused request: the status, close code and label of
/// its [`Reject`], counted in `gg_rejections_total`.
pub(crate) fn reject_response(gw: &Gateway, r: Reject, message: &str) -> Response<Body> {
    gw.metrics.reject(r);
    let status = r
        .http_status()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let code = r.close_code().map_or(0, CloseCode::code);
    let mut resp = json_error(status, code, r.label(), message);
    if matches!(
        r,
        Reject::HttpBodyTimeout | Reject::HttpBadBody | Reject::FrameTooLarge
    ) {
        // The rest of the body is not read: the connection cannot be reused.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if r == Reject::Unauthorized {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

pub(crate) fn request_error(e: &RequestError) -> Response<Body> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    json_error(status, e.code().code(), e.code().name(), &e.to_string())
}

/// Checks an upgrade request (RFC 6455 4.2.1); returns the
/// `Sec-WebSocket-Accept` value, or the answer that refuses it.
pub(crate) fn handshake<B>(req: &Request<B>) -> Result<String, Box<Response<Body>>> {
    let h = req.headers();
    let version_ok = h
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            0,
            "bad_upgrade",
            "missing Sec-WebSocket-Key",
        )));
    };
    let connection_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if req.method() != Method::GET || !connection_upgrade {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            0,
            "bad_upgrade",
            "a WebSocket upgrade needs GET with Connection: Upgrade",
        )));
    }
    if !version_ok {
        // RFC 6455 4.4: name the version this server speaks.
        let mut r = json_error(
            StatusCode::UPGRADE_REQUIRED,
            0,
            "bad_upgrade",
            "WebSocket version 13 is the one supported (Sec-WebSocket-Version: 13)",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(r));
    }
    Ok(key)
}

fn upgrade(
    gw: Arc<Gateway>,
    remote: SocketAddr,
    mut req: Request<Incoming>,
    guard: Arc<Mutex<Option<ConnGuard>>>,
) -> Response<Body> {
    let key = match handshake(&req) {
        Ok(k) => k,
        Err(refused) => return *refused,
    };
    if gw.draining() {
        gw.metrics.reject(Reject::Draining);
        return request_error(&RequestError::Draining);
    }
    let deflate = if gw.cfg.websocket.permessage_deflate {
        let offers = req.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
        super::wsdeflate::negotiate(offers.iter().filter_map(|v| v.to_str().ok()))
    } else {
        None
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let guard = guard.lock().take();
    let task_gw = gw.clone();
    gw.life.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(%remote, error = %e, "websocket upgrade failed");
                return;
            }
        };
        let pm = task_gw.metrics.proto(Protocol::Ws);
        pm.connections.inc();
        pm.active.inc();
        let admission = Admission {
            _guard: guard,
            active: pm.active.clone(),
        };
        let compress = deflate.map(|_| task_gw.cfg.websocket.compress_min_bytes);
        start(
            task_gw,
            ClientIo::ws(TokioIo::new(upgraded), compress),
            remote,
            Protocol::Ws,
            admission,
        )
        .await;
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hm = r.headers_mut();
    hm.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hm.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        hm.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(ext) = deflate {
        hm.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(ext),
        );
    }
    r
}

pub(crate) fn header_num<T: std::str::FromStr>(
    h: &HeaderMap,
    name: &str,
) -> Result<Option<T>, RequestError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| {
                RequestError::BadRequest(format!("header {name} must be a decimal number"))
            }),
    }
}

async fn call(
    gw: &Arc<Gateway>,
    remote: SocketAddr,
    service_key: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let span = tracing::info_span!(
        target: gg_runtime::telemetry::TARGET,
        "http.call",
        otel.kind = "server",
        service = service_key,
        client.address = %remote,
        session_id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let incoming = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    gg_runtime::telemetry::set_parent(&span, incoming.as_deref());
    let trace = gg_runtime::telemetry::traceparent(&span, incoming.as_deref());
    let r = call_response(gw, remote, service_key, req, trace.as_deref())
        .instrument(span.clone())
        .await;
    span.record("http.response.status_code", r.status().as_u16());
    r
}

async fn call_response(
    gw: &Arc<Gateway>,
    remote: SocketAddr,
    service_key: &str,
    req: Request<Incoming>,
    trace: Option<&str>,
) -> Response<Body> {
    match call_inner(gw, remote, service_key, req, trace).await {
        Ok((session, body)) => {
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Ok(v) = HeaderValue::from_str(&session) {
                r.headers_mut().insert("x-gateway-session", v);
            }
            r
        }
        Err(CallError::Request(e)) => {
            gw.metrics
                .errors_sent
                .with_label_values(&[e.code().name()])
                .inc();
            request_error(&e)
        }
        Err(CallError::Rejected(r, message)) => reject_response(gw, r, &message),
        Err(CallError::Backend { code, message }) => {
            json_error(StatusCode::BAD_GATEWAY, code, "backend_error", &message)
        }
    }
}

pub(crate) enum CallError {
    Request(RequestError),
    /// Refused by a check or a limit (counted, with its own status).
    Rejected(Reject, String),
    /// The backend answered with ERROR, or closed the session.
    Backend {
        code: u16,
        message: String,
    },
}

impl From<RequestError> for CallError {
    fn from(e: RequestError) -> Self {
        CallError::Request(e)
    }
}

async fn call_inner(
    gw: &Arc<Gateway>,
    remote: SocketAddr,
    service_key: &str,
    req: Request<Incoming>,
    trace: Option<&str>,
) -> Result<(String, Bytes), CallError> {
    if gw.draining() {
        return Err(RequestError::Draining.into());
    }
    let h = req.headers();
    if h.contains_key("x-session-id") {
        // Joining an existing session needs proof of ownership (resume
        // token); without it any caller could act as any session.
        return Err(RequestError::BadRequest(
            "x-session-id is not accepted: calls run on an ephemeral session; omit the header"
                .into(),
        )
        .into());
    }
    let mut user: u64 = header_num(h, "x-user-id")?.unwrap_or(0);
    if let Some(auth) = &gw.cfg.client_auth {
        let token = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        user = auth
            .verify(token, user)
            .map_err(|e| CallError::Rejected(Reject::Unauthorized, e.to_string()))?;
    }
    let realm: u32 = header_num(h, "x-realm-id")?.unwrap_or(0);
    let region = (h.get("x-region").and_then(|v| v.to_str().ok())).map(str::to_string);
    let (service, service_name) = {
        let routes = gw.routing.routes.load();
        match routes.service_by_key(service_key) {
            Some(s) => (s.id, s.name.clone()),
            None => {
                return Err(RequestError::UnknownService(service_key.to_string()).into());
            }
        }
    };
    let body = read_body(gw, req.into_body()).await?;

    let id = gw.clients.ids.next_id();
    // A call waits for one reply: a small queue, bounded in bytes as
    // every session's is.
    let bound = crate::session::QueueBound {
        frames: 16,
        ..gw.cfg.limits.session_queue_bound()
    };
    let (session, mut rx) = SessionHandle::new(id, user, realm, Protocol::Http, remote, bound);
    if let Some(r) = region.as_deref() {
        session.set_region(r);
    }
    gw.clients.sessions.insert(session.clone());
    gw.metrics.sessions_opened.inc();
    gw.metrics.sessions_active.inc();
    let result = async {
        tracing::Span::current().record("session_id", id);
        let binding = open_binding(gw, &session, service, realm, false, trace)?;
        let mut hd = Header::new(Kind::Data);
        hd.service_type = service;
        hd.realm_id = realm;
        hd.user_id = user;
        hd.session_id = id;
        hd.seq = CALL_SEQ;
        let started = std::time::Instant::now();
        let sent = binding.send(Frame::new(hd, body).to_bytes(), 1);
        let reply = match sent {
            Ok(()) => wait_reply(gw, &mut rx).await,
            Err(e) => Err(e.into()),
        };
        let result = if reply.is_ok() { "ok" } else { "error" };
        (gw.metrics.http_call_seconds)
            .with_label_values(&[service_name.as_str(), result])
            .observe(started.elapsed().as_secs_f64());
        binding.close(id, CloseCode::Normal.code(), "http call complete");
        reply
    }
    .await;
    gw.clients.sessions.remove(id);
    gw.metrics.sessions_active.dec();
    let code = if result.is_ok() {
        CloseCode::Normal.code()
    } else {
        CloseCode::Internal.code()
    };
    gw.metrics
        .closes
        .with_label_values(&[close_label(code)])
        .inc();
    result.map(|b| (format!("{}:{id}", gw.cfg.gateway_id), b))
}

/// The whole request body, as it arrives: at most a frame's payload,
/// within `limits.http_body_timeout_ms`, and beyond [`SMALL_FRAME_BYTES`]
/// only while the process's buffer budget lasts. A declared length over the
/// limit is refused before a byte of the body is read.
pub(crate) async fn read_body(gw: &Gateway, mut body: Incoming) -> Result<Bytes, CallError> {
    let limits = &gw.cfg.limits;
    let max = limits.max_frame_bytes as usize - frame::HEADER_AFTER_LEN;
    let too_large = || {
        CallError::Rejected(
            Reject::FrameTooLarge,
            format!("request body exceeds {max} bytes"),
        )
    };
    if body.size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    let mut charge = None;
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(f) = body.frame().await {
            let f = f.map_err(|e| {
                CallError::Rejected(Reject::HttpBadBody, format!("request body: {e}"))
            })?;
            let Ok(data) = f.into_data() else { continue };
            let total = buf.len() + data.len();
            if total > max {
                return Err(too_large());
            }
            let held = total.saturating_sub(SMALL_FRAME_BYTES as usize) as u64;
            if !Charge::grow_to(&mut charge, &gw.clients.buffered, held) {
                return Err(CallError::Rejected(
                    Reject::BufferBudget,
                    BUDGET_SPENT.into(),
                ));
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(limits.http_body_timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Rejected(
            Reject::HttpBodyTimeout,
            format!(
                "the request body did not arrive within {} ms",
                limits.http_body_timeout.as_millis()
            ),
        )),
    }
}

/// The call's answer if `raw` is its DATA or ERROR (the frame with the
/// call's seq); `None` for anything else (pushes).
fn call_reply(raw: Bytes) -> Option<Result<Bytes, CallError>> {
    let h = Header::peek(&raw)?;
    if h.seq != CALL_SEQ {
        return None;
    }
    let payload = raw.slice(frame::HEADER_BYTES..);
    match h.kind() {
        Some(Kind::Data) => Some(Ok(payload)),
        Some(Kind::Error) => {
            let e: gg_proto::control::Error =
                Frame::new(h, payload)
                    .json()
                    .unwrap_or(gg_proto::control::Error {
                        code: gg_proto::ErrorCode::Internal.code(),
                        message: "backend sent an unreadable ERROR".into(),
                    });
            Some(Err(CallError::Backend {
                code: e.code,
                message: e.message,
            }))
        }
        _ => None,
    }
}

/// Waits for the DATA (or ERROR) with the call's seq; other frames (pushes)
/// are ignored.
async fn wait_reply(gw: &Gateway, rx: &mut crate::session::Inbox) -> Result<Bytes, CallError> {
    let timeout = gw.cfg.backend.request_timeout;
    let wait = async {
        while let Some(m) = rx.recv().await {
            match m {
                Outbound::Frame(raw) => {
                    if let Some(r) = call_reply(raw) {
                        return r;
                    }
                }
                Outbound::Frames { raw, .. } => {
                    if let Some(r) = frame::split_frames(raw).find_map(call_reply) {
                        return r;
                    }
                }
                Outbound::BackendLost { endpoint } => {
                    return Err(RequestError::BackendUnavailable {
                        endpoint: endpoint.to_string(),
                    }
                    .into());
                }
                Outbound::Kicked { code, reason, .. } => {
                    return Err(CallError::Backend {
                        code,
                        message: format!("backend closed the session: {reason}"),
                    });
                }
                Outbound::Close { code, reason } => {
                    return Err(CallError::Backend {
                        code,
                        message: format!("session closed by an operator: {reason}"),
                    });
                }
                // (A call's session never shares a socket: no `Rest`.)
                Outbound::GoAway { .. }
                | Outbound::GoAwayCancelled
                | Outbound::Unbind { .. }
                | Outbound::Rest(_) => {
                    continue;
                }
            }
        }
        Err(RequestError::BackendUnavailable {
            endpoint: "unknown".into(),
        }
        .into())
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => Err(RequestError::Timeout(timeout.as_millis() as u64).into()),
    }
}
