//! OpenTelemetry: spans reach a real OTLP/gRPC receiver, continue the
//! caller's trace, and the trace context reaches the backend in OPEN.

use crate::otlp::{Receiver, hex};
use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn spans_continue_the_callers_trace_and_reach_the_backend() {
    let (rx, otlp) = Receiver::start().await;
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}telemetry:\n  otlp_endpoint: http://{otlp}\n  service_name: gg-test\n  sample_ratio: 0.0\n  export_interval_ms: 100\n",
        one_service(b.addr)
    ))
    .await;
    let tp = format!("00-{TRACE}-{PARENT}-01");

    // HTTP: the span is a child of the caller's span (sampled parent wins
    // over sample_ratio 0), and the backend sees the gateway's span as its
    // parent in OPEN.
    let (status, body) = http(
        gw.client,
        "POST",
        "/v1/call/echo",
        &[("traceparent", &tp)],
        b"trace",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (service, span) = rx.span("http.call").await;
    assert!(service.contains("gg-test"), "{service}");
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(body, format!("00-{TRACE}-{}-01", hex(&span.span_id)));

    // A streaming session: HELLO carries the client's context.
    let mut c = Client::tcp(gw.client).await;
    c.hello_json(7, serde_json::json!({ "traceparent": tp }))
        .await;
    assert_eq!(
        c.call_text(1, 1, "trace").await,
        format!(
            "00-{TRACE}-{}-01",
            hex(&rx.span("session.open").await.1.span_id)
        )
    );

    // Without a sampled parent, sample_ratio 0 exports nothing and the
    // backend gets an unsampled context (flags 00).
    let (status, body) = http(gw.client, "POST", "/v1/call/echo", &[], b"trace").await;
    assert_eq!(status, 200);
    assert!(body.ends_with("-00"), "{body}");
}

#[tokio::test]
async fn without_telemetry_the_callers_context_is_passed_on() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let (_, body) = http(
        gw.client,
        "POST",
        "/v1/call/echo",
        &[("traceparent", &tp)],
        b"trace",
    )
    .await;
    assert_eq!(body, tp);
    let (_, body) = http(
        gw.client,
        "POST",
        "/v1/call/echo",
        &[("traceparent", "nonsense")],
        b"trace",
    )
    .await;
    assert_eq!(body, "-", "an invalid traceparent is not passed on");
}

#[tokio::test]
async fn invalid_telemetry_config_is_refused() {
    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\ntelemetry: { otlp_endpoint: \"localhost:4317\", sample_ratio: 2 }\n",
        &[],
    )
    .await;
    assert_eq!(code, Some(64));
    assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
    assert!(err.contains("telemetry.sample_ratio"), "{err}");
}
