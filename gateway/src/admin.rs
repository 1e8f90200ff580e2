//! The gRPC admin API (`gateway.admin.v1.GatewayAdmin`) with
//! `grpc.health.v1` and server reflection (v1 and v1alpha, so `grpcurl list`
//! works). Bearer tokens carry a scope (read < operate < admin); the
//! interceptor authenticates, each RPC checks the scope it needs.

mod service;

use std::sync::Arc;

use gg_proto::pb::admin::gateway_admin_server::GatewayAdminServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use tracing::{error, warn};

use crate::Gateway;
use crate::config::{Scope, Token};

/// Who is calling, attached to each request by the interceptor.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
}

/// Constant-time equality: the time taken does not depend on where the
/// inputs differ (only on the candidate's length, which is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Authenticates a request from its `authorization: Bearer …` header.
/// Every configured token is compared (no early exit), and the token is never
/// logged.
pub fn authenticate(tokens: &[Token], header: Option<&str>) -> Result<Caller, Status> {
    if tokens.is_empty() {
        // Only possible on a loopback listener (config validation).
        return Ok(Caller {
            name: "anonymous-loopback".into(),
            scope: Scope::Admin,
        });
    }
    let Some(value) = header else {
        return Err(Status::unauthenticated(
            "missing credentials: send the header `authorization: Bearer <token>`",
        ));
    };
    let Some(presented) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Err(Status::unauthenticated(
            "authorization header must be `Bearer <token>`",
        ));
    };
    let mut found: Option<&Token> = None;
    for t in tokens {
        if ct_eq(presented.as_bytes(), &t.secret) && found.is_none() {
            found = Some(t);
        }
    }
    found
        .map(|t| Caller {
            name: t.name.clone(),
            scope: t.scope,
        })
        .ok_or_else(|| Status::unauthenticated("invalid token: check the token for this gateway"))
}

/// A tonic interceptor that authenticates every call and attaches the
/// [`Caller`] for [`require`]. Shared by the gateway and the control plane.
pub fn auth_interceptor(
    tokens: Arc<[Token]>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let caller = authenticate(&tokens, header)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// Fails with PERMISSION_DENIED unless the caller's scope covers `need`.
pub fn require<T>(req: &Request<T>, need: Scope) -> Result<Caller, Status> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("request was not authenticated"))?;
    if caller.scope < need {
        return Err(Status::permission_denied(format!(
            "token {:?} has scope {}, this call needs {}",
            caller.name,
            caller.scope.name(),
            need.name()
        )));
    }
    Ok(caller)
}

/// Serves the admin API on `listener` until `stop` is cancelled.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener, stop: CancellationToken) {
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
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(gg_proto::pb::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (v1, v1alpha) = match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            error!(error = %e, "cannot build gRPC reflection; admin API not served");
            return;
        }
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = gw.cfg.admin.as_ref().and_then(|a| a.tls.clone()) {
        builder = match builder.tls_config(tls) {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "admin API TLS config rejected; admin API not served");
                return;
            }
        };
    }
    let res = builder
        .add_service(health_svc)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(GatewayAdminServer::with_interceptor(svc, interceptor))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled())
        .await;
    if let Err(e) = res {
        error!(error = %e, "admin API server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Vec<Token> {
        vec![
            Token {
                name: "reader".into(),
                scope: Scope::Read,
                secret: b"read-token-0123456789".to_vec(),
            },
            Token {
                name: "op".into(),
                scope: Scope::Operate,
                secret: b"operate-token-0123456789".to_vec(),
            },
        ]
    }

    #[test]
    fn tokens_authenticate_with_their_scope() {
        let t = tokens();
        let c = authenticate(&t, Some("Bearer operate-token-0123456789")).unwrap();
        assert_eq!((c.name.as_str(), c.scope), ("op", Scope::Operate));
        for bad in [
            None,
            Some("operate-token-0123456789"),
            Some("Bearer nope"),
            Some("Bearer operate-token-012345678"),
        ] {
            let e = authenticate(&t, bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(
                !e.message().contains("0123456789"),
                "secret echoed: {}",
                e.message()
            );
        }
    }

    #[test]
    fn scope_check() {
        let mut req = Request::new(());
        req.extensions_mut().insert(Caller {
            name: "reader".into(),
            scope: Scope::Read,
        });
        assert!(require(&req, Scope::Read).is_ok());
        assert_eq!(
            require(&req, Scope::Operate).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn constant_time_eq_is_correct() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
    }
}
