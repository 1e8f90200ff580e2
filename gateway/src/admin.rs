//! The gRPC admin API (`gateway.admin.v1.GatewayAdmin`) with
//! `grpc.health.v1` and server reflection (v1 and v1alpha, so `grpcurl list`
//! works). Bearer tokens carry a scope (read < operate < admin); the
//! interceptor authenticates, each RPC checks the scope it needs (both from
//! the shared runtime, as is the server builder with its limits).

mod service;

use std::sync::Arc;

use gg_proto::pb::admin::gateway_admin_server::GatewayAdminServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::Gateway;
pub(crate) use gg_runtime::auth::require;
use gg_runtime::auth::{Token, auth_interceptor};

/// Serves the admin API on `listener` until `stop` is cancelled.
pub(crate) async fn serve(gw: Arc<Gateway>, listener: TcpListener, stop: CancellationToken) {
    let tokens: Arc<[Token]> = gw
        .cfg
        .admin
        .as_ref()
        .map(|a| a.tokens.clone())
        .unwrap_or_default()
        .into();
    if tokens.is_empty() {
        warn!("admin API has no tokens: every local caller has the admin scope (loopback only)");
    }
    let interceptor = auth_interceptor(tokens);
    let svc = service::AdminService::new(gw.clone(), stop.clone());
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<GatewayAdminServer<service::AdminService>>()
        .await;
    let (v1, v1alpha) = match gg_runtime::grpc::reflection(&[gg_proto::pb::GATEWAY_ADMIN_SERVICE]) {
        Ok(x) => x,
        Err(e) => {
            error!(error = %e, "cannot build gRPC reflection; admin API not served");
            return;
        }
    };
    let tls = gw.cfg.admin.as_ref().and_then(|a| a.tls.clone());
    let idle = (gw.cfg.admin.as_ref()).map_or(gg_runtime::listener::DEFAULT_IDLE_TIMEOUT, |a| {
        a.idle_timeout
    });
    let mut builder = match gg_runtime::grpc::server(tls, gw.metrics.admin_rpc_seconds.clone()) {
        Ok(b) => b,
        Err(e) => {
            error!(error = %e, "admin API TLS config rejected; admin API not served");
            return;
        }
    };
    let res = builder
        .add_service(health_svc)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(GatewayAdminServer::with_interceptor(svc, interceptor))
        .serve_with_incoming_shutdown(
            gg_runtime::grpc::incoming(listener, "admin", idle),
            stop.cancelled(),
        )
        .await;
    if let Err(e) = res {
        error!(error = %e, "admin API server failed");
    }
}
