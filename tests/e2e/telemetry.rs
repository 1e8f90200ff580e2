//! OpenTelemetry: spans reach a real OTLP/gRPC receiver, continue the
//! caller's trace, and the trace context reaches the backend in OPEN.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::support::*;

/// A minimal OTLP trace receiver: keeps every span it is sent, with the
/// `service.name` of its resource.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("lock");
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let r = Receiver::default();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let svc = TraceServiceServer::new(r.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await;
        });
        (r, addr)
    }

    /// The first span called `name`, waiting for the batch exporter.
    async fn span(&self, name: &str) -> (String, Span) {
        let mut found = None;
        eventually(&format!("span {name} exported"), || {
            found = self
                .0
                .lock()
                .expect("lock")
                .iter()
                .find(|(_, s)| s.name == name)
                .cloned();
            std::future::ready(found.is_some())
        })
        .await;
        found.expect("found")
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

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
