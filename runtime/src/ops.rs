//! The ops HTTP server of both processes (`/health`, `/ready`, `/metrics`):
//! HTTP/1 with a header-read timeout (which also closes idle keep-alive
//! connections), accept back-off, and GET only. What each path answers is
//! the caller's [`OpsHandler`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::Acceptor;

/// A request head must arrive within this, and an idle keep-alive
/// connection is closed after it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Content type of Prometheus' text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// What the process reports on its ops port.
pub trait OpsHandler: Send + Sync + 'static {
    /// `Err(reason)` turns `/ready` into 503 `not ready: {reason}`.
    fn readiness(&self) -> Result<String, String>;
    /// Prometheus text format.
    fn metrics(&self) -> String;
}

/// A plain-text response.
pub fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    ctype: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// Answers one request.
pub fn respond<H: OpsHandler + ?Sized>(
    h: &H,
    method: &Method,
    path: &str,
) -> Response<Full<Bytes>> {
    if method != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n", "text/plain");
    }
    match path {
        "/health" => text(StatusCode::OK, "ok\n", "text/plain"),
        "/ready" => match h.readiness() {
            Ok(detail) if detail.is_empty() => text(StatusCode::OK, "ready\n", "text/plain"),
            Ok(detail) => text(StatusCode::OK, format!("ready {detail}\n"), "text/plain"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => text(StatusCode::OK, h.metrics(), PROMETHEUS_TEXT),
        _ => text(
            StatusCode::NOT_FOUND,
            "paths: /health /ready /metrics\n",
            "text/plain",
        ),
    }
}

/// Serves `listener` until `stop` is cancelled.
pub async fn serve<H: OpsHandler>(handler: Arc<H>, listener: TcpListener, stop: CancellationToken) {
    let mut acceptor = Acceptor::new("ops");
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            (s, _) = acceptor.accept(&listener) => s,
        };
        let handler = handler.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let r = respond(&*handler, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    TokioIo::new(crate::listener::IdleTimeout::new(
                        stream,
                        crate::listener::DEFAULT_IDLE_TIMEOUT,
                    )),
                    svc,
                );
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H(bool);
    impl OpsHandler for H {
        fn readiness(&self) -> Result<String, String> {
            if self.0 {
                Ok("store=up".into())
            } else {
                Err("store=down".into())
            }
        }
        fn metrics(&self) -> String {
            "m 1\n".into()
        }
    }

    #[test]
    fn paths_and_methods() {
        assert_eq!(
            respond(&H(true), &Method::GET, "/ready").status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&H(false), &Method::GET, "/ready").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let m = respond(&H(true), &Method::GET, "/metrics");
        assert_eq!(m.headers()[CONTENT_TYPE], PROMETHEUS_TEXT);
        assert_eq!(
            respond(&H(true), &Method::POST, "/health").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            respond(&H(true), &Method::GET, "/x").status(),
            StatusCode::NOT_FOUND
        );
    }
}
