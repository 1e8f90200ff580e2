//! HTTP backends behind path routes: a request on the client port whose
//! path matches an `http_routes` entry is reverse-proxied to that route's
//! service (`protocol: http`), bodies streamed both ways (never buffered
//! whole), over a pooled keep-alive client.
//!
//! Each route is a `tower` stack, outermost first:
//! load-shed → concurrency limit (`max_concurrency`) → timeout
//! (`timeout_ms`, the whole request with its retries) → retry (`retries`:
//! idempotent methods without a body only, within a retry budget, with
//! exponential backoff) → the proxy (round robin over the endpoints).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gg_proto::model::HttpRoute;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use crate::listener::http::{Body, BoxError};

/// The pooled client every HTTP route shares (plain or TLS by scheme).
pub(crate) type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// The clients of HTTP services (HTTP/1.1) and gRPC services (HTTP/2
/// with prior knowledge), both pooled.
#[derive(Clone)]
pub(crate) struct Clients {
    http: HttpClient,
    grpc: HttpClient,
}

pub(crate) fn clients(
    connect_timeout: Duration,
    extra_ca: &[rustls::pki_types::CertificateDer<'static>],
) -> Clients {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(connect_timeout));
    c.set_nodelay(true);
    // https:// too: TLS is layered on by the connector below.
    c.enforce_http(false);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for cert in extra_ca {
        let _ = roots.add(cert.clone());
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let tls = match tls {
        Ok(t) => t,
        // The ring provider supports the default versions; unreachable.
        Err(e) => unreachable!("rustls defaults: {e}"),
    };
    let connector = |h2: bool| {
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http();
        if h2 {
            b.enable_http2().wrap_connector(c.clone())
        } else {
            b.enable_http1().wrap_connector(c.clone())
        }
    };
    let http = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(connector(false));
    let grpc = Client::builder(TokioExecutor::new())
        // HTTP/2 keep-alive pings need a timer.
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .http2_only(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .build(connector(true));
    Clients { http, grpc }
}

type Stack = BoxCloneSyncService<Request<Body>, Response<Incoming>, BoxError>;

/// One compiled route.
#[derive(Clone)]
pub(crate) struct Compiled {
    pub(crate) route: Arc<HttpRoute>,
    /// The service speaks gRPC: the gateway's own errors are gRPC statuses.
    grpc: bool,
    /// JSON → gRPC for this route's `grpc_method`.
    transcode: Option<Transcode>,
    /// Metric handles resolved once (no label lookup per request).
    metrics: Arc<RouteMetrics>,
    stack: Stack,
}

struct RouteMetrics {
    ok2: prometheus::IntCounter,
    ok3: prometheus::IntCounter,
    c4: prometheus::IntCounter,
    c5: prometheus::IntCounter,
    timeout: prometheus::IntCounter,
    shed: prometheus::IntCounter,
    unavailable: prometheus::IntCounter,
    unauthorized: prometheus::IntCounter,
    seconds: prometheus::Histogram,
}

impl RouteMetrics {
    fn outcome(&self, code: &str) -> &prometheus::IntCounter {
        match code {
            "2xx" => &self.ok2,
            "3xx" => &self.ok3,
            "4xx" => &self.c4,
            "timeout" => &self.timeout,
            "shed" => &self.shed,
            "unavailable" => &self.unavailable,
            "unauthorized" => &self.unauthorized,
            _ => &self.c5,
        }
    }
}

/// A route's transcoding target, or why it has none.
#[derive(Clone)]
enum Transcode {
    Method(prost_reflect::MethodDescriptor),
    Broken(Arc<str>),
}

fn transcode_target(method: &str, pool: Option<&prost_reflect::DescriptorPool>) -> Transcode {
    let Some(pool) = pool else {
        return Transcode::Broken(
            "grpc_method needs transcoding.descriptor_set_file in the gateway's config".into(),
        );
    };
    let (svc, m) = method.split_once('/').unwrap_or((method, ""));
    match pool
        .get_service_by_name(svc)
        .and_then(|s| s.methods().find(|x| x.name() == m))
    {
        Some(md) if md.is_client_streaming() || md.is_server_streaming() => {
            Transcode::Broken(format!("{method} streams; only unary methods are transcoded").into())
        }
        Some(md) => Transcode::Method(md),
        None => {
            Transcode::Broken(format!("{method} is not in transcoding.descriptor_set_file").into())
        }
    }
}

/// The routes of one config revision, most specific first.
#[derive(Default)]
pub(crate) struct HttpRoutes {
    routes: Vec<Compiled>,
}

/// Methods whose repetition has the effect of one (RFC 9110 9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

#[derive(Clone)]
struct Proxy {
    client: HttpClient,
    /// `https` for a `tls: true` service.
    scheme: &'static str,
    /// HTTP/2 (gRPC) or HTTP/1.1 to the backend, whatever the client spoke.
    version: hyper::Version,
    endpoints: Arc<[String]>,
    next: Arc<AtomicUsize>,
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<Incoming>, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let client = self.client.clone();
        let n = self.endpoints.len();
        let scheme = self.scheme;
        *req.version_mut() = self.version;
        let ep =
            (n > 0).then(|| self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n].clone());
        Box::pin(async move {
            let ep = ep.ok_or_else(|| BoxError::from(ProxyError::NoEndpoint))?;
            let pq = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            *req.uri_mut() = Uri::builder()
                .scheme(scheme)
                .authority(ep.as_str())
                .path_and_query(pq)
                .build()
                .map_err(|e| BoxError::from(format!("bad upstream uri: {e}")))?;
            client
                .request(req)
                .await
                .map_err(|e| BoxError::from(ProxyError::Upstream(e.to_string())))
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("the service has no endpoint")]
    NoEndpoint,
    #[error("backend unreachable: {0}")]
    Upstream(String),
}

/// Retries idempotent, bodiless requests that failed to reach a backend or
/// got 502/503/504, while the budget allows.
#[derive(Clone)]
struct RetryPolicy {
    left: u32,
    attempt: u32,
    budget: Arc<TpsBudget>,
    retries: prometheus::IntCounter,
}

impl tower::retry::Policy<Request<Body>, Response<Incoming>, BoxError> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Request<Body>,
        result: &mut Result<Response<Incoming>, BoxError>,
    ) -> Option<Self::Future> {
        let failed = match result {
            Ok(r) => matches!(r.status().as_u16(), 502..=504),
            Err(_) => true,
        };
        if !failed || self.left == 0 || !self.budget.withdraw() {
            return None;
        }
        self.left -= 1;
        self.attempt += 1;
        self.retries.inc();
        // 25 ms, 50 ms, 100 ms … with full jitter.
        let cap = 25u64 << self.attempt.min(6);
        Some(tokio::time::sleep(Duration::from_millis(fastrand::u64(
            cap / 2..=cap,
        ))))
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        if self.attempt == 0 {
            self.budget.deposit();
        }
        // A streamed body cannot be sent twice; a POST is never repeated.
        if !idempotent(req.method()) || req.body().size_hint().exact() != Some(0) {
            return None;
        }
        let mut r = Request::new(crate::listener::http::full(Bytes::new()));
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.version_mut() = req.version();
        *r.headers_mut() = req.headers().clone();
        Some(r)
    }
}

impl HttpRoutes {
    /// Compiles the routes of a bundle; `default_timeout` for routes
    /// without `timeout_ms`.
    pub(crate) fn build(
        cfg: &crate::config::RoutesConfig,
        clients: &Clients,
        descriptors: Option<&prost_reflect::DescriptorPool>,
        default_timeout: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> HttpRoutes {
        let mut routes: Vec<Compiled> = cfg
            .http_routes
            .iter()
            .map(|r| {
                let svc = cfg.services.iter().find(|s| s.name == r.service);
                let grpc =
                    svc.is_some_and(|s| s.protocol == gg_proto::model::BackendProtocol::Grpc);
                let endpoints: Arc<[String]> =
                    svc.map(|s| s.endpoints.clone()).unwrap_or_default().into();
                let proxy = Proxy {
                    scheme: if svc.is_some_and(|s| s.tls) {
                        "https"
                    } else {
                        "http"
                    },
                    client: if grpc {
                        clients.grpc.clone()
                    } else {
                        clients.http.clone()
                    },
                    version: if grpc {
                        hyper::Version::HTTP_2
                    } else {
                        hyper::Version::HTTP_11
                    },
                    endpoints,
                    next: Arc::new(AtomicUsize::new(0)),
                };
                let policy = RetryPolicy {
                    left: r.retries,
                    attempt: 0,
                    // At most 20 % extra requests from retries, after 10/s.
                    budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
                    retries: metrics.http_proxy_retries.with_label_values(&[&r.service]),
                };
                let timeout = if r.timeout_ms == 0 {
                    default_timeout
                } else {
                    Duration::from_millis(r.timeout_ms)
                };
                // Layers a route does not use are left out: each costs
                // something per request (a permit, a budget deposit).
                let limit = (r.max_concurrency != 0).then_some(r.max_concurrency as usize);
                let stack = ServiceBuilder::new()
                    .option_layer(limit.map(|_| tower::load_shed::LoadShedLayer::new()))
                    .option_layer(limit.map(tower::limit::ConcurrencyLimitLayer::new))
                    .timeout(timeout)
                    .option_layer((r.retries > 0).then(|| tower::retry::RetryLayer::new(policy)))
                    .service(proxy);
                let transcode = (!r.grpc_method.is_empty()).then(|| {
                    let t = transcode_target(&r.grpc_method, descriptors);
                    if let Transcode::Broken(why) = &t {
                        tracing::warn!(path = %r.path, %why, "http route cannot transcode; its requests get 500");
                    }
                    t
                });
                let outcome = |code: &str| metrics.http_proxy_requests.with_label_values(&[&r.service, code]);
                let m = RouteMetrics {
                    ok2: outcome("2xx"),
                    ok3: outcome("3xx"),
                    c4: outcome("4xx"),
                    c5: outcome("5xx"),
                    timeout: outcome("timeout"),
                    shed: outcome("shed"),
                    unavailable: outcome("unavailable"),
                    unauthorized: outcome("unauthorized"),
                    seconds: metrics.http_proxy_seconds.with_label_values(&[&r.service]),
                };
                Compiled {
                    grpc,
                    transcode,
                    metrics: Arc::new(m),
                    route: Arc::new(r.clone()),
                    stack: BoxCloneSyncService::new(stack.map_err(BoxError::from)),
                }
            })
            .collect();
        routes.sort_by_key(|c| std::cmp::Reverse(c.route.specificity()));
        HttpRoutes { routes }
    }

    /// The most specific route for this request (path, then host, then method).
    pub(crate) fn find(&self, method: &Method, host: &str, path: &str) -> Option<&Compiled> {
        self.routes.iter().find(|c| {
            let r = &c.route;
            r.matches_path(path)
                && (r.host.is_empty() || r.host.eq_ignore_ascii_case(host))
                && (r.methods.is_empty() || r.methods.iter().any(|m| m == method.as_str()))
        })
    }
}

/// Headers only the gateway may set: what it verified about the caller.
const IDENTITY_HEADERS: &[&str] = &["x-gateway-user", "x-gateway-api-key"];

/// Checks the caller's credential for a non-public route on a gateway that
/// has `client_auth` or `api_keys`: an API key scoped to the route
/// (`X-Api-Key`, or `Authorization: ApiKey …`), or a JWT (`Authorization:
/// Bearer …`). Passes what was verified to the backend (`x-gateway-user`,
/// `x-gateway-api-key`) and never the API key itself.
fn authorize(
    gw: &crate::Gateway,
    route: &Compiled,
    h: &mut HeaderMap,
) -> Result<(), Box<Response<Body>>> {
    use crate::listener::http::json_error;
    for n in IDENTITY_HEADERS {
        h.remove(*n);
    }
    let auth = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let key = h
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            auth.as_deref()
                .and_then(|a| a.strip_prefix("ApiKey "))
                .map(str::to_string)
        });
    if key.is_some() {
        h.remove("x-api-key");
        if auth.as_deref().is_some_and(|a| a.starts_with("ApiKey ")) {
            h.remove(header::AUTHORIZATION);
        }
    }
    let keys = &gw.cfg.api_keys;
    if route.route.public || (gw.cfg.client_auth.is_none() && keys.is_empty()) {
        return Ok(());
    }
    let unauthorized = |msg: &str| {
        gw.metrics.reject(crate::error::Reject::Unauthorized);
        let mut r = json_error(StatusCode::UNAUTHORIZED, 0, "unauthorized", msg);
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(Box::new(r))
    };
    if let Some(key) = key {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        let digest: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
        // Every key is compared, in constant time.
        let found = keys.iter().fold(None, |hit, k| {
            if bool::from(k.hash.ct_eq(&digest)) {
                Some(k)
            } else {
                hit
            }
        });
        return match found {
            None => unauthorized("unknown API key"),
            Some(k) if !k.allows(&route.route.path) => Err(Box::new(json_error(
                StatusCode::FORBIDDEN,
                0,
                "forbidden",
                &format!(
                    "API key {} is not scoped to route {}",
                    k.name, route.route.path
                ),
            ))),
            Some(k) => {
                if let Ok(v) = HeaderValue::from_str(&k.name) {
                    h.insert("x-gateway-api-key", v);
                }
                Ok(())
            }
        };
    }
    let Some(ca) = &gw.cfg.client_auth else {
        return unauthorized("this route needs an API key (X-Api-Key)");
    };
    let token = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
    match ca.verify(token, 0) {
        Ok(user) => {
            h.insert("x-gateway-user", HeaderValue::from(user));
            Ok(())
        }
        Err(e) => unauthorized(&format!(
            "this route needs Authorization: Bearer <jwt>{}: {e}",
            if keys.is_empty() { "" } else { " or X-Api-Key" }
        )),
    }
}

/// HTTP/JSON → unary gRPC → JSON, with the route's layers. The JSON is
/// the proto3 JSON mapping (lowerCamelCase names; 64-bit integers as
/// strings in answers, either in requests).
async fn transcode(
    gw: &crate::Gateway,
    route: &Compiled,
    target: Transcode,
    mut parts: hyper::http::request::Parts,
    body: Incoming,
) -> Response<Body> {
    use crate::listener::http::json_error;
    let service = route.route.service.clone();
    let method = match target {
        Transcode::Method(m) => m,
        Transcode::Broken(why) => {
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, 0, "transcoding", &why);
        }
    };
    let max = gw.cfg.limits.max_frame_bytes as usize;
    let input = match http_body_util::Limited::new(body, max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                0,
                "bad_body",
                &format!("request body: {e} (at most {max} bytes)"),
            );
        }
    };
    let input: &[u8] = if input.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &input
    };
    let mut de = serde_json::Deserializer::from_slice(input);
    let msg = match prost_reflect::DynamicMessage::deserialize(method.input(), &mut de) {
        Ok(m) => m,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                0,
                "bad_json",
                &format!(
                    "the body is not a {} in JSON: {e}",
                    method.input().full_name()
                ),
            );
        }
    };
    let encoded = prost::Message::encode_to_vec(&msg);
    let mut framed = Vec::with_capacity(5 + encoded.len());
    framed.push(0);
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    parts.method = Method::POST;
    parts.uri = match format!("/{}/{}", method.parent_service().full_name(), method.name()).parse()
    {
        Ok(u) => u,
        Err(_) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                0,
                "transcoding",
                "bad method path",
            );
        }
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert("te", HeaderValue::from_static("trailers"));
    let req = Request::from_parts(parts, crate::listener::http::full(framed));
    let res = call_stack(route.stack.clone(), req).await;
    let out = async {
        let resp = res.map_err(|e| (StatusCode::BAD_GATEWAY, format!("service {service}: {e}")))?;
        let head_status = resp.headers().get("grpc-status").cloned();
        let head_message = resp.headers().get("grpc-message").cloned();
        let collected = Limited::new(resp.into_body(), max)
            .collect()
            .await
            .map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("service {service}: reply: {e}"),
                )
            })?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let code = trailers.get("grpc-status").cloned().or(head_status);
        let message = trailers.get("grpc-message").cloned().or(head_message);
        let code: i32 = code
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        if code != 0 {
            let msg = message.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
            return Err((grpc_to_http(code), format!("grpc status {code}: {msg}")));
        }
        let bytes = collected.to_bytes();
        let payload = bytes.get(5..).filter(|_| bytes[0] == 0).ok_or((
            StatusCode::BAD_GATEWAY,
            "the reply is not one uncompressed gRPC message".to_string(),
        ))?;
        let reply =
            prost_reflect::DynamicMessage::decode(method.output(), payload).map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("reply is not a {}: {e}", method.output().full_name()),
                )
            })?;
        serde_json::to_vec(&reply).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }
    .await;
    let (resp, code) = match out {
        Ok(json) => {
            let mut r = Response::new(crate::listener::http::full(json));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            (r, "2xx")
        }
        Err((status, msg)) => {
            let class = match status.as_u16() {
                504 => "timeout",
                400..=499 => "4xx",
                _ => "5xx",
            };
            (json_error(status, 0, "grpc_error", &msg), class)
        }
    };
    gw.metrics
        .http_proxy_requests
        .with_label_values(&[&service, code])
        .inc();
    resp
}

/// The HTTP status for a gRPC status code (as grpc-gateway maps them).
fn grpc_to_http(code: i32) -> StatusCode {
    match code {
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A gRPC "trailers-only" answer for the gateway's own failure: HTTP 200
/// with `grpc-status` (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED or
/// UNAVAILABLE) and `grpc-message`, as gRPC clients expect.
fn grpc_error(code: &str, msg: &str) -> Response<Body> {
    let status = match code {
        "shed" => 8,
        "timeout" => 4,
        _ => 14,
    };
    let mut r = Response::new(crate::listener::http::full(Bytes::new()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(status));
    // grpc-message is percent-encoded; keep it to safe characters.
    let safe: String = msg
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .,:;_-/()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&safe) {
        h.insert("grpc-message", v);
    }
    r
}

/// The stack's future, boxed (as a `dyn Future + Send` the compiler need
/// not prove `Send` through the layers' generic futures inside an async fn).
fn call_stack(
    svc: Stack,
    req: Request<Body>,
) -> futures_util::future::BoxFuture<'static, Result<Response<Incoming>, BoxError>> {
    Box::pin(svc.oneshot(req))
}

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

/// Proxies `req` through `route`; the answer is the backend's (streamed)
/// or the gateway's own error.
pub(crate) fn proxy(
    gw: Arc<crate::Gateway>,
    route: Compiled,
    remote: std::net::SocketAddr,
    tls: bool,
    req: Request<Incoming>,
) -> futures_util::future::BoxFuture<'static, Response<Body>> {
    Box::pin(proxy_inner(gw, route, remote, tls, req))
}

async fn proxy_inner(
    gw: Arc<crate::Gateway>,
    route: Compiled,
    remote: std::net::SocketAddr,
    tls: bool,
    req: Request<Incoming>,
) -> Response<Body> {
    let service = route.route.service.clone();
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Err(refused) = authorize(&gw, &route, &mut parts.headers) {
        route.metrics.unauthorized.inc();
        return *refused;
    }
    // HTTP/2 names the host in :authority; an HTTP/1.1 backend wants Host.
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    let ip = remote.ip().to_string();
    let xff = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.clone(),
    };
    let proto = if tls { "https" } else { "http" };
    let host = (parts.headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let for_ = if remote.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip.clone()
    };
    let mut forwarded = format!("for={for_};proto={proto}");
    if !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        forwarded.push_str(&format!(";host=\"{host}\""));
    }
    for (k, v) in [
        ("x-forwarded-for", xff),
        ("x-forwarded-proto", proto.to_string()),
        ("forwarded", forwarded),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            parts.headers.insert(k, v);
        }
    }
    if !host.is_empty()
        && let Ok(v) = HeaderValue::from_str(&host)
    {
        parts.headers.insert("x-forwarded-host", v);
    }
    if let Some(t) = route.transcode.clone() {
        return transcode(&gw, &route, t, parts, body).await;
    }
    let body: Body = body.map_err(BoxError::from).boxed();
    let req: Request<Body> = Request::from_parts(parts, body);
    let started = std::time::Instant::now();
    let res = call_stack(route.stack.clone(), req).await;
    let (resp, code) = match res {
        Ok(r) => {
            let class = match r.status().as_u16() {
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            };
            let (mut parts, body) = r.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            (
                Response::from_parts(parts, body.map_err(BoxError::from).boxed()),
                class,
            )
        }
        Err(e) => {
            let (status, code, name, msg) = if e.is::<tower::load_shed::error::Overloaded>() {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shed",
                    "overloaded",
                    format!(
                        "route {} is at max_concurrency {}; retry later",
                        route.route.path, route.route.max_concurrency
                    ),
                )
            } else if e.is::<tower::timeout::error::Elapsed>() {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    "timeout",
                    format!("service {service} did not answer in time"),
                )
            } else if let Some(p) = e.downcast_ref::<ProxyError>() {
                let status = match p {
                    ProxyError::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
                    ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
                };
                (
                    status,
                    "unavailable",
                    "backend_unavailable",
                    format!("service {service}: {p}"),
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    "unavailable",
                    "backend_unavailable",
                    format!("service {service}: {e}"),
                )
            };
            let resp = if route.grpc {
                grpc_error(code, &msg)
            } else {
                crate::listener::http::json_error(status, 0, name, &msg)
            };
            (resp, code)
        }
    };
    route.metrics.outcome(code).inc();
    route
        .metrics
        .seconds
        .observe(started.elapsed().as_secs_f64());
    resp
}
