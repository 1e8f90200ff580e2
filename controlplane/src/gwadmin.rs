//! Calls from the control plane to a gateway's admin API (DrainGateway,
//! session policy kicks): TLS when configured, the control plane's admin
//! token, and the caller's trace context.

use std::time::Duration;

use gg_proto::pb::admin::gateway_admin_client::GatewayAdminClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::Cp;

/// A client for the admin API at `addr` (connect within 3 s; each call
/// within 10 s).
pub(crate) async fn connect(cp: &Cp, addr: &str) -> Result<GatewayAdminClient<Channel>, String> {
    let tls = cp.cfg.gateway_admin_tls.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| e.to_string())?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(GatewayAdminClient::new(channel))
}

/// `msg` with `gateway_admin_token` and the current trace context.
pub(crate) fn request<T>(cp: &Cp, msg: T) -> Result<Request<T>, Status> {
    let mut call = Request::new(msg);
    if let Some(t) = &cp.cfg.gateway_admin_token {
        let v = format!("Bearer {}", String::from_utf8_lossy(&t.secret))
            .parse()
            .map_err(|_| Status::internal("gateway_admin_token is not valid header text"))?;
        call.metadata_mut().insert("authorization", v);
    }
    // The gateway's span joins this call's trace.
    gg_runtime::telemetry::inject(call.metadata_mut());
    Ok(call)
}
