//! The ops HTTP port: `GET /health` (process alive), `GET /ready` (routes
//! loaded and not draining; 503 with the reason otherwise) and
//! `GET /metrics` (Prometheus text format). Kept off the client port so load
//! balancers and scrapers never compete with clients for admission limits.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Gateway;

/// Serves the ops port until `stop` is cancelled.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "ops accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let gw = gw.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(handle(&gw, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, ctype: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn handle(gw: &Gateway, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n", "text/plain");
    }
    match req.uri().path() {
        "/health" => text(StatusCode::OK, "ok\n", "text/plain"),
        "/ready" => match gw.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n", "text/plain"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => text(
            StatusCode::OK,
            gw.metrics.render(),
            "text/plain; version=0.0.4",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "paths: /health /ready /metrics\n",
            "text/plain",
        ),
    }
}
