//! The gRPC server both processes run: one builder with keepalive, per-call
//! timeout, per-connection concurrency limit with load shedding, HTTP/2
//! stream and header limits, a request span (with the caller's
//! `x-request-id` or a fresh one, continuing the caller's W3C trace) and a
//! latency histogram as a `tower` layer, `grpc.health.v1`, and reflection of
//! only the services this process serves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::http;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::Server;
use tower::{Layer, Service};
use tracing::Instrument;

/// A unary call (or a stream's opening) taking longer than this fails
/// with DEADLINE_EXCEEDED; a client's shorter `grpc-timeout` wins.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls in progress per connection; beyond it new calls are shed
/// (UNAVAILABLE) rather than queued.
pub const CONCURRENCY_PER_CONNECTION: usize = 256;
/// HTTP/2 streams per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 512;
/// HTTP/2 PING interval and the time to wait for its answer: a peer that
/// vanished without a FIN is dropped within about 30 s. A live peer's
/// answers also keep its connection under the listener's idle timeout.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest request header block.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// A server builder with the limits above, the request-span layer (which
/// also observes each call's latency in `rpc_seconds`, labelled `method`)
/// and TLS when given.
pub fn server(
    tls: Option<ServerTlsConfig>,
    rpc_seconds: prometheus::HistogramVec,
) -> Result<
    Server<tower::layer::util::Stack<RequestSpanLayer, tower::layer::util::Identity>>,
    tonic::transport::Error,
> {
    let mut b = Server::builder()
        .timeout(CALL_TIMEOUT)
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        .load_shed(true)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .tcp_nodelay(true)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES);
    if let Some(tls) = tls {
        b = b.tls_config(tls)?;
    }
    Ok(b.layer(RequestSpanLayer { rpc_seconds }))
}

/// Buckets for RPC latency: 0.5 ms to 10 s.
pub const RPC_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Reflection (v1 and v1alpha, so `grpcurl` 1.8 and newer both work)
/// advertising exactly `services` plus health.
pub fn reflection(
    services: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let build = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(gg_proto::pb::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    Ok((build().build_v1()?, build().build_v1alpha()?))
}

/// Puts every call in a `grpc` span with its method and request id, as a
/// child of the caller's `traceparent` metadata (the span is exported when
/// telemetry is on), and observes the time until the response starts — for
/// a stream, until it opens — in the histogram. A method the server does
/// not have (UNIMPLEMENTED) is counted as `method="other"`, so callers
/// cannot grow the label set.
#[derive(Debug, Clone)]
pub struct RequestSpanLayer {
    rpc_seconds: prometheus::HistogramVec,
}

impl<S> Layer<S> for RequestSpanLayer {
    type Service = RequestSpan<S>;
    fn layer(&self, inner: S) -> RequestSpan<S> {
        RequestSpan {
            inner,
            rpc_seconds: self.rpc_seconds.clone(),
        }
    }
}

/// See [`RequestSpanLayer`].
#[derive(Debug, Clone)]
pub struct RequestSpan<S> {
    inner: S,
    rpc_seconds: prometheus::HistogramVec,
}

impl<S, B, R> Service<http::Request<B>> for RequestSpan<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 128)
            .map_or_else(|| format!("{:016x}", fastrand::u64(..)), str::to_string);
        let method = req.uri().path().to_string();
        let span = tracing::info_span!(
            target: crate::telemetry::TARGET,
            "grpc",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            method = %method,
            request_id = %id,
        );
        let parent = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        crate::telemetry::set_parent(&span, parent);
        let histogram = self.rpc_seconds.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let res = fut.await;
                let known = match &res {
                    Ok(r) => r.headers().get("grpc-status").is_none_or(|c| c != "12"),
                    Err(_) => true,
                };
                let label = if known { method.as_str() } else { "other" };
                histogram
                    .with_label_values(&[label])
                    .observe(started.elapsed().as_secs_f64());
                res
            }
            .instrument(span),
        )
    }
}

/// The connections of a gRPC listener for `serve_with_incoming*`, accepted
/// with back-off on descriptor exhaustion (see [`crate::listener`]), each
/// closed once nothing arrives from the peer for `idle` (a connection that
/// never sends its HTTP/2 preface, or stops part-way).
pub fn incoming(
    listener: tokio::net::TcpListener,
    name: &'static str,
    idle: Duration,
) -> impl futures_util::Stream<
    Item = Result<crate::listener::IdleTimeout<tokio::net::TcpStream>, std::io::Error>,
> + Send
+ 'static {
    Box::pin(futures_util::stream::unfold(
        (listener, crate::listener::Acceptor::new(name)),
        move |(l, mut a)| async move {
            let (s, _) = a.accept(&l).await;
            let _ = s.set_nodelay(true);
            Some((Ok(crate::listener::IdleTimeout::new(s, idle)), (l, a)))
        },
    ))
}
