//! Ops HTTP for the control plane: `/health`, `/ready` (503 `store=down`
//! while Redis is unreachable; reads still serve the last known config) and
//! `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Cp;

pub async fn serve(cp: Arc<Cp>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let cp = cp.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let cp = cp.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/health" => (StatusCode::OK, "ok\n".to_string()),
                        "/ready" if cp.store_ok() => {
                            (StatusCode::OK, "ready store=up\n".to_string())
                        }
                        "/ready" => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: store=down\n".to_string(),
                        ),
                        "/metrics" => {
                            let mut out = Vec::new();
                            let _ =
                                TextEncoder::new().encode(&cp.metrics.registry.gather(), &mut out);
                            (StatusCode::OK, String::from_utf8(out).unwrap_or_default())
                        }
                        _ => (
                            StatusCode::NOT_FOUND,
                            "paths: /health /ready /metrics\n".to_string(),
                        ),
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
