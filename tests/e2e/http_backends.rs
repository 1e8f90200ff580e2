//! HTTP backends behind path routes: a real gateway process proxying to
//! HTTP servers on loopback (started in the test, real sockets): longest
//! match, exact, method and host routes; X-Forwarded-For/Forwarded;
//! streaming upload and download without buffering (the gateway's memory
//! is measured); retries of idempotent requests only; timeouts; the
//! concurrency limit sheds.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

type Out = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct Hits {
    flaky: AtomicUsize,
    flaky_post: AtomicUsize,
    uploaded: AtomicUsize,
}

fn text(s: impl Into<String>) -> Response<Out> {
    Response::new(http_body_util::Full::new(Bytes::from(s.into())).boxed())
}

/// An HTTP backend named `name`.
async fn http_backend(name: &'static str, hits: Arc<Hits>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let hits = hits.clone();
                    async move { Ok::<_, Infallible>(handle(name, &hits, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn handle(name: &str, hits: &Hits, req: Request<Incoming>) -> Response<Out> {
    let path = req.uri().path().to_string();
    let h = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    match path.as_str() {
        "/api/upload" => {
            // Count the body as it streams; never hold it.
            let mut body = req.into_body();
            let mut n = 0;
            while let Some(Ok(f)) = body.frame().await {
                if let Some(d) = f.data_ref() {
                    n += d.len();
                }
            }
            hits.uploaded.store(n, Ordering::SeqCst);
            text(format!("{n}"))
        }
        "/api/download" => {
            let total: usize = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let chunk = Bytes::from(vec![b'd'; 64 * 1024]);
            let stream = futures_util::stream::iter(
                (0..total / chunk.len())
                    .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
            );
            Response::new(StreamBody::new(stream).boxed())
        }
        "/api/flaky" => {
            let n = hits.flaky.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= 2 {
                let mut r = text("not yet");
                *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                r
            } else {
                text(format!("ok after {n}"))
            }
        }
        "/api/flaky-post" => {
            hits.flaky_post.fetch_add(1, Ordering::SeqCst);
            let mut r = text("down");
            *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
            r
        }
        p if p.starts_with("/api/limited/slow") || p == "/api/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            text("slow")
        }
        _ => text(format!(
            "{name} {} {path} xff={} fwd={} xfh={} conn={} user={} key={} rawkey={}",
            req.method(),
            h("x-forwarded-for"),
            h("forwarded"),
            h("x-forwarded-host"),
            h("x-hop"),
            h("x-gateway-user"),
            h("x-gateway-api-key"),
            h("x-api-key"),
        )),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn path_routes_proxy_stream_retry_time_out_and_shed() {
    let hits = Arc::new(Hits::default());
    let shop = http_backend("shop", hits.clone()).await;
    let cart = http_backend("cart", hits.clone()).await;
    let gw = gateway(&format!(
        "services:\n  - {{ name: shop, id: 10, strategy: round_robin, protocol: http, endpoints: [\"{shop}\"] }}\n  - {{ name: cart, id: 11, strategy: round_robin, protocol: http, endpoints: [\"{cart}\"] }}\n  - {{ name: gone, id: 12, strategy: round_robin, protocol: http, endpoints: [\"{}\"] }}\nhttp_routes:\n  - {{ path: \"/api/*\", service: shop, retries: 2, timeout_ms: 1000 }}\n  - {{ path: \"/api/shop/cart\", service: cart, methods: [GET] }}\n  - {{ path: \"/api/limited/*\", service: shop, max_concurrency: 1, timeout_ms: 5000 }}\n  - {{ path: \"/games/*\", host: games.example, service: cart }}\n  - {{ path: \"/down/*\", service: gone, retries: 1 }}\n",
        dead_addr()
    ))
    .await;

    // Longest match, exact path with a method, host routes.
    let (st, body) = http(
        gw.client,
        "GET",
        "/api/shop/items?x=1",
        &[("Connection", "close, x-hop"), ("x-hop", "secret")],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    assert!(body.starts_with("shop GET /api/shop/items"), "{body}");
    assert!(
        body.contains("xff=127.0.0.1 ") && body.contains("fwd=for=127.0.0.1;proto=http"),
        "{body}"
    );
    assert!(
        body.contains("conn=-"),
        "hop-by-hop headers are not forwarded: {body}"
    );
    let (_, body) = http(gw.client, "GET", "/api/shop/cart", &[], b"").await;
    assert!(body.starts_with("cart GET"), "{body}");
    let (_, body) = http(gw.client, "POST", "/api/shop/cart", &[], b"x").await;
    assert!(
        body.starts_with("shop POST"),
        "another method falls to the prefix: {body}"
    );
    let (st, _) = http(gw.client, "GET", "/games/1", &[], b"").await;
    assert_eq!(st, 404, "a host route does not answer another host");
    let mut s = TcpStream::connect(gw.client).await.expect("connect");
    s.write_all(b"GET /games/1 HTTP/1.1\r\nHost: games.example:8080\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let body = body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    assert!(
        body.starts_with("cart") && body.contains("xfh=games.example"),
        "{body}"
    );
    let (st, body) = http(gw.client, "GET", "/nowhere", &[], b"").await;
    assert_eq!(st, 404);
    assert!(body.contains("http_routes"), "{body}");

    // Retries: a GET that failed twice succeeds on the third try; a POST
    // is never repeated.
    let (st, body) = http(gw.client, "GET", "/api/flaky", &[], b"").await;
    assert_eq!((st, body.as_str()), (200, "ok after 3"));
    let (st, _) = http(gw.client, "POST", "/api/flaky-post", &[], b"order=1").await;
    assert_eq!(st, 503);
    assert_eq!(
        hits.flaky_post.load(Ordering::SeqCst),
        1,
        "a POST is sent once"
    );
    assert!(
        gw.metric("gg_http_proxy_retries_total{service=\"shop\"}")
            .await
            >= 2.0
    );
    // An unreachable backend: 502 after its retry.
    let (st, body) = http(gw.client, "GET", "/down/x", &[], b"").await;
    assert_eq!(st, 502, "{body}");
    assert!(body.contains("backend_unavailable"), "{body}");

    // The route's timeout: 504.
    let (st, body) = http(gw.client, "GET", "/api/slow", &[], b"").await;
    assert_eq!(st, 504, "{body}");

    // max_concurrency 1: while one request is in flight, the next is shed.
    let slow = tokio::spawn(http(gw.client, "GET", "/api/limited/slow", &[], b""));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, body) = http(gw.client, "GET", "/api/limited/other", &[], b"").await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("max_concurrency"), "{body}");
    assert_eq!(slow.await.expect("slow").0, 200);
    assert!(
        gw.metric("gg_http_proxy_requests_total{code=\"shed\",service=\"shop\"}")
            .await
            >= 1.0
    );

    // Streaming: 256 MiB up and down; the gateway's memory stays flat.
    let pid = gw.proc.pid();
    let before = rss_kib(pid);
    let total: usize = 256 << 20;
    let mut s = TcpStream::connect(gw.client).await.expect("connect");
    s.write_all(format!("POST /api/upload HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: {total}\r\n\r\n").as_bytes())
        .await
        .expect("head");
    let chunk = vec![b'u'; 1 << 20];
    let mut peak = 0;
    for _ in 0..total / chunk.len() {
        s.write_all(&chunk).await.expect("chunk");
        peak = peak.max(rss_kib(pid));
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("response");
    assert!(resp.ends_with(&format!("\r\n\r\n{total}")), "{resp}");
    assert_eq!(hits.uploaded.load(Ordering::SeqCst), total);
    let mut s = TcpStream::connect(gw.client).await.expect("connect");
    s.write_all(
        format!("GET /api/download?n={total} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("head");
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        got += n;
        if got % (8 << 20) < n {
            peak = peak.max(rss_kib(pid));
        }
    }
    assert!(
        got > total,
        "the whole body (and its chunk framing) arrived: {got}"
    );
    let grew = peak.saturating_sub(before);
    println!(
        "gateway RSS: {before} KiB before, peak {peak} KiB while streaming 256 MiB each way (+{grew} KiB)"
    );
    assert!(
        grew < 48 * 1024,
        "the gateway buffered the body: +{grew} KiB"
    );
}

/// Credentials on path routes: public routes, API keys stored hashed and
/// scoped to routes, JWTs beside them, identity headers only the gateway
/// sets; and CORS origins per route.
#[tokio::test]
async fn api_keys_jwts_and_cors_per_route() {
    use sha2::Digest;
    let hits = Arc::new(Hits::default());
    let web = http_backend("web", hits).await;
    let secret = scratch("jwt", "secret");
    std::fs::write(&secret, crate::client_auth::SECRET).expect("secret");
    let key = "k3y-partner-0123456789";
    let hash: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let gw = gateway(&format!(
        "client_auth:\n  secret_file: {}\n  issuer: idp\napi_keys:\n  - {{ name: partner, sha256: \"{hash}\", routes: [\"/api/*\"] }}\nservices:\n  - {{ name: web, id: 10, strategy: round_robin, protocol: http, endpoints: [\"{web}\"] }}\nhttp_routes:\n  - {{ path: \"/pub/*\", service: web, public: true }}\n  - {{ path: \"/api/*\", service: web }}\n  - {{ path: \"/other/*\", service: web }}\n  - {{ path: \"/cors/*\", service: web, public: true, cors_origins: [\"https://game.example\"] }}\n",
        secret.display()
    ))
    .await;
    let (st, body) = http(
        gw.client,
        "GET",
        "/pub/x",
        &[("x-gateway-user", "666")],
        b"",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("user=-"),
        "a client cannot set the identity headers: {body}"
    );
    let (st, body) = http(gw.client, "GET", "/api/x", &[], b"").await;
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("X-Api-Key"), "{body}");
    let (st, body) = http(gw.client, "GET", "/api/x", &[("X-Api-Key", key)], b"").await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("key=partner") && body.contains("rawkey=-"),
        "the key itself is not forwarded: {body}"
    );
    let auth = format!("ApiKey {key}");
    let (st, _) = http(
        gw.client,
        "GET",
        "/api/x",
        &[("Authorization", auth.as_str())],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    let (st, body) = http(gw.client, "GET", "/other/x", &[("X-Api-Key", key)], b"").await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("not scoped to route /other/*"), "{body}");
    let (st, _) = http(gw.client, "GET", "/api/x", &[("X-Api-Key", "wrong")], b"").await;
    assert_eq!(st, 401);
    let bearer = format!(
        "Bearer {}",
        crate::client_auth::token("77", 60, crate::client_auth::SECRET)
    );
    let (st, body) = http(
        gw.client,
        "GET",
        "/other/x",
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("user=77"), "{body}");

    // CORS for one route only.
    let pre = |origin: &'static str| {
        let addr = gw.client;
        async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("OPTIONS /cors/x HTTP/1.1\r\nHost: gw\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: GET\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out.to_ascii_lowercase()
        }
    };
    let ok = pre("https://game.example").await;
    assert!(ok.starts_with("http/1.1 204"), "{ok}");
    assert!(
        ok.contains("access-control-allow-origin: https://game.example"),
        "{ok}"
    );
    let no = pre("https://evil.example").await;
    assert!(no.starts_with("http/1.1 403"), "{no}");
    let mut s = TcpStream::connect(gw.client).await.expect("connect");
    s.write_all(b"GET /cors/x HTTP/1.1\r\nHost: gw\r\nOrigin: https://game.example\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(
        out.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://game.example"),
        "{out}"
    );
    // A route without its own origins gets none (no gateway-wide cors here).
    let mut s = TcpStream::connect(gw.client).await.expect("connect");
    s.write_all(b"GET /pub/x HTTP/1.1\r\nHost: gw\r\nOrigin: https://game.example\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(
        !out.to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{out}"
    );
}

/// TLS to an HTTP backend: verified against `backend.tls_ca_file`;
/// without that CA the backend is refused (502), never trusted blindly.
#[tokio::test]
async fn tls_to_an_http_backend_is_verified() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = scratch("certs", "d");
    std::fs::create_dir_all(&dir).expect("dir");
    make_certs(&dir);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("key");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let hits = Arc::new(Hits::default());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let hits = hits.clone();
                    async move { Ok::<_, Infallible>(handle("secure", &hits, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let routes = format!(
        "services:\n  - {{ name: secure, id: 10, strategy: round_robin, protocol: http, tls: true, endpoints: [\"localhost:{}\"] }}\nhttp_routes:\n  - {{ path: \"/s/*\", service: secure }}\n",
        addr.port()
    );
    let trusted = gateway(&format!(
        "{routes}backend: {{ tls_ca_file: {} }}\n",
        dir.join("ca.crt").display()
    ))
    .await;
    let (st, body) = http(trusted.client, "GET", "/s/x", &[], b"").await;
    assert_eq!(st, 200, "{body}");
    assert!(body.starts_with("secure GET /s/x"), "{body}");
    let untrusted = gateway(&routes).await;
    let (st, body) = http(untrusted.client, "GET", "/s/x", &[], b"").await;
    assert_eq!(st, 502, "an unknown CA is not trusted: {body}");
}
