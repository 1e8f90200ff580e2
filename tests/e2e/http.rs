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
