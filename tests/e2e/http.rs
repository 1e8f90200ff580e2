//! One-shot HTTP calls on the client port.

use crate::support::*;

#[tokio::test]
async fn http_calls_and_their_errors() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}backend: {{ request_timeout_ms: 300 }}\nlimits: {{ max_frame_bytes: 2048 }}\n",
        one_service(b.addr)
    ))
    .await;

    // By name and by id; the body is the backend's reply.
    let (st, body) = http(
        gw.client,
        "POST",
        "/v1/call/echo",
        &[("x-user-id", "5")],
        b"ping me",
    )
    .await;
    assert_eq!((st, body.as_str()), (200, "ping me"));
    let (st, body) = http(gw.client, "POST", "/v1/call/1", &[], b"whoami").await;
    assert_eq!((st, body.as_str()), (200, "b1"));

    let (st, body) = http(gw.client, "POST", "/v1/call/nope", &[], b"x").await;
    assert_eq!(st, 404);
    assert!(body.contains("\"code\":104"), "{body}");

    let (st, body) = http(gw.client, "POST", "/v1/call/echo", &[], b"sleep:2000").await;
    assert_eq!(st, 504, "{body}");
    assert!(body.contains("300 ms"), "{body}");

    let (st, _) = http(gw.client, "POST", "/v1/call/echo", &[], &[b'a'; 4096]).await;
    assert_eq!(st, 413);

    let (st, body) = http(gw.client, "POST", "/v1/call/echo", &[], b"error").await;
    assert_eq!(st, 502);
    assert!(body.contains("sample error"), "{body}");

    let (st, body) = http(
        gw.client,
        "POST",
        "/v1/call/echo",
        &[("x-user-id", "abc")],
        b"x",
    )
    .await;
    assert_eq!(st, 400);
    assert!(body.contains("x-user-id"), "{body}");

    let (st, _) = http(
        gw.client,
        "POST",
        "/v1/call/echo",
        &[("x-session-id", "1")],
        b"x",
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = http(gw.client, "GET", "/v1/call/echo", &[], b"").await;
    assert_eq!(st, 405);
    let (st, _) = http(gw.client, "GET", "/", &[], b"").await;
    assert_eq!(st, 404);

    gw.wait_metric("gg_http_responses_total{status=\"504\"}", |v| v == 1.0)
        .await;
    // Ephemeral sessions do not outlive their call.
    gw.wait_metric("gg_sessions_active", |v| v == 0.0).await;
}

#[tokio::test]
async fn http_call_to_a_down_backend_is_502() {
    let gw = gateway(&one_service(dead_addr())).await;
    let (st, body) = http(gw.client, "POST", "/v1/call/echo", &[], b"x").await;
    assert_eq!(st, 502, "{body}");
    assert!(body.contains("\"code\":105"), "{body}");
}

/// The latency histograms operators alert on are observed: an HTTP call by
/// service and result, the heartbeat round trip by endpoint.
#[tokio::test]
async fn http_calls_and_backend_round_trips_are_timed() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}backend: {{ ping_interval_ms: 50 }}\n",
        one_service(b.addr)
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            http(gw.client, "POST", "/v1/call/echo", &[], b"hi").await.0,
            200
        );
    }
    assert_eq!(
        gw.metric("gg_http_call_duration_seconds_count{result=\"ok\",service=\"echo\"}")
            .await,
        3.0
    );
    let rtt = format!("gg_backend_rtt_seconds_count{{endpoint=\"{}\"}}", b.addr);
    gw.wait_metric(&rtt, |n| n >= 2.0).await;
    // A call to a service nobody configured is not a label.
    assert_eq!(
        http(gw.client, "POST", "/v1/call/nope", &[], b"hi").await.0,
        404
    );
    assert!(!gw.metrics().await.contains("service=\"nope\""));
}

/// One raw HTTP/1.1 request; returns the whole response text (head and body).
async fn raw_http(addr: std::net::SocketAddr, req: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("in time")
        .expect("read");
    String::from_utf8_lossy(&out).to_lowercase()
}

/// CORS: allowed origins get the headers and a preflight answer, others
/// none (and a 403 preflight); a bad origin in the config is refused.
#[tokio::test]
async fn cors_lets_configured_origins_call_from_a_browser() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}cors: {{ allow_origins: [\"https://game.example.com\"], max_age_s: 60 }}\n",
        one_service(b.addr)
    ))
    .await;
    let call = |origin: &str| {
        format!(
            "POST /v1/call/echo HTTP/1.1\r\nHost: gw\r\nOrigin: {origin}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        )
    };
    let ok = raw_http(gw.client, call("https://game.example.com")).await;
    assert!(ok.starts_with("http/1.1 200"), "{ok}");
    assert!(
        ok.contains("access-control-allow-origin: https://game.example.com"),
        "{ok}"
    );
    let other = raw_http(gw.client, call("https://evil.example")).await;
    assert!(
        other.starts_with("http/1.1 200") && !other.contains("access-control-allow-origin"),
        "{other}"
    );
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /v1/sessions HTTP/1.1\r\nHost: gw\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        )
    };
    let p = raw_http(gw.client, preflight("https://game.example.com")).await;
    assert!(p.starts_with("http/1.1 204"), "{p}");
    assert!(
        p.contains("access-control-allow-methods: get, head, post, put, patch, delete, options"),
        "{p}"
    );
    assert!(
        p.contains("x-session-token") && p.contains("access-control-max-age: 60"),
        "{p}"
    );
    let denied = raw_http(gw.client, preflight("https://evil.example")).await;
    assert!(denied.starts_with("http/1.1 403"), "{denied}");
    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\ncors: { allow_origins: [\"game.example.com/\"] }\n",
        &["--check"],
    )
    .await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("is not an origin"), "{err}");
}
