//! The gRPC edge: `ControlPlane` (operators), `SessionDirectory`
//! (backends), `GatewaySync` (gateways, in `sync.rs`), plus health and
//! reflection. Store errors become `UNAVAILABLE`, validation
//! `INVALID_ARGUMENT`, CAS mismatches `FAILED_PRECONDITION`, unknown ids
//! `NOT_FOUND`.

use std::sync::Arc;

use gg_proto::pb::admin as gwpb;
use gg_proto::pb::common::DrainPhase;
use gg_proto::pb::controlplane as pb;
use gg_proto::pb::controlplane::control_plane_server::{ControlPlane, ControlPlaneServer};
use gg_proto::pb::controlplane::gateway_sync_server::GatewaySyncServer;
use gg_proto::pb::controlplane::session_directory_server::{
    SessionDirectory, SessionDirectoryServer,
};
use gg_runtime::auth::{Scope, Token, auth_interceptor, require};
use gg_runtime::clock::now_ms;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{error, info};

use crate::Cp;
use crate::store::{ConfigStore as _, StoreError};

pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict { expected, current } => Status::failed_precondition(format!(
            "revision conflict: expected {expected}, current is {current}; re-read the config and retry"
        )),
        StoreError::Redis(e) => {
            Status::unavailable(format!("redis unavailable ({})", crate::redis_error(&e)))
        }
        StoreError::Corrupt(m) => {
            error!(error = %m, "corrupt data in redis");
            Status::internal(format!("stored data is corrupt: {m}"))
        }
    }
}

pub async fn serve(
    cp: Arc<Cp>,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let tokens: Arc<[Token]> = cp.cfg.tokens.clone().into();
    let auth = auth_interceptor(tokens);
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<ControlPlaneServer<Api>>().await;
    health.set_serving::<SessionDirectoryServer<Api>>().await;
    health
        .set_serving::<gg_proto::pb::controlplane::rooms_server::RoomsServer<crate::rooms::RoomsApi>>()
        .await;
    let (v1, v1alpha) = gg_runtime::grpc::reflection(gg_proto::pb::CONTROL_PLANE_SERVICES)?;
    let api = Api { cp: cp.clone() };
    let idle = cp.cfg.idle_timeout;
    gg_runtime::grpc::server(cp.cfg.tls.clone(), cp.metrics.rpc_seconds.clone())?
        .add_service(health_svc)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(ControlPlaneServer::with_interceptor(
            api.clone(),
            auth.clone(),
        ))
        .add_service(SessionDirectoryServer::with_interceptor(api, auth.clone()))
        .add_service(
            gg_proto::pb::controlplane::rooms_server::RoomsServer::with_interceptor(
                crate::rooms::RoomsApi { cp: cp.clone() },
                auth.clone(),
            ),
        )
        .add_service(GatewaySyncServer::with_interceptor(
            crate::sync::SyncService::new(cp, stop.clone()),
            auth,
        ))
        .serve_with_incoming_shutdown(
            gg_runtime::grpc::incoming(listener, "grpc", idle),
            stop.cancelled(),
        )
        .await?;
    Ok(())
}

#[derive(Clone)]
pub struct Api {
    cp: Arc<Cp>,
}

impl Api {
    /// One configuration write ([`crate::write::mutate`]); what it wrote is
    /// published to this replica's gateways at once.
    async fn mutate(
        &self,
        author: String,
        opts: Option<pb::WriteOptions>,
        change: impl FnMut(&mut pb::ConfigBundle) -> Result<(), Status>,
    ) -> Result<pb::WriteResponse, Status> {
        let opts = opts.unwrap_or_default();
        let req = crate::write::Request {
            author,
            opts: &opts,
            lock_wait: self.cp.cfg.redis_timeout,
        };
        let out = crate::write::mutate(&self.cp.store, &self.cp.write_lock, req, change).await?;
        if let Some(v) = out.published {
            self.cp.metrics.writes.inc();
            self.cp.publish(v);
        }
        Ok(out.response)
    }
}

fn caller_name<T>(req: &Request<T>, scope: Scope) -> Result<String, Status> {
    Ok(require(req, scope)?.name)
}

#[tonic::async_trait]
impl ControlPlane for Api {
    async fn get_config(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::Versioned>, Status> {
        require(&req, Scope::Read)?;
        // Read from Redis when it is up; the last known config otherwise
        // (without waiting on a Redis that the reconcile loop knows is down).
        if !self.cp.store_ok() {
            return Ok(Response::new((**self.cp.current.borrow()).clone()));
        }
        match self.cp.store.load().await {
            Ok(v) => Ok(Response::new(v)),
            Err(_) => Ok(Response::new((**self.cp.current.borrow()).clone())),
        }
    }

    async fn put_service(
        &self,
        req: Request<pb::PutServiceRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = caller_name(&req, Scope::Admin)?;
        let r = req.into_inner();
        let svc = r
            .service
            .ok_or_else(|| Status::invalid_argument("service is required"))?;
        let resp = self
            .mutate(who, r.options, |b| {
                b.services.retain(|s| s.name != svc.name);
                b.services.push(svc.clone());
                Ok(())
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn delete_service(
        &self,
        req: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = caller_name(&req, Scope::Admin)?;
        let r = req.into_inner();
        let resp = self
            .mutate(who, r.options, |b| {
                let before = b.services.len();
                b.services.retain(|s| s.name != r.name);
                if b.services.len() == before {
                    return Err(Status::not_found(format!("no service named {:?}", r.name)));
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn put_realm(
        &self,
        req: Request<pb::PutRealmRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = caller_name(&req, Scope::Admin)?;
        let r = req.into_inner();
        let resp = self
            .mutate(who, r.options, |b| {
                b.realms.insert(r.realm_id, r.endpoint.clone());
                Ok(())
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn delete_realm(
        &self,
        req: Request<pb::DeleteRealmRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = caller_name(&req, Scope::Admin)?;
        let r = req.into_inner();
        let resp = self
            .mutate(who, r.options, |b| {
                b.realms.remove(&r.realm_id).map(|_| ()).ok_or_else(|| {
                    Status::not_found(format!("realm {} is not in the realm map", r.realm_id))
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn put_override(
        &self,
        req: Request<pb::PutOverrideRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = caller_name(&req, Scope::Operate)?;
        let r = req.into_inner();
        let mut o = r
            .r#override
            .ok_or_else(|| Status::invalid_argument("override is required"))?;
        if o.id.is_empty() {
            o.id = format!("co-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        }
        if o.author.is_empty() {
            o.author = who.clone();
        }
        if r.ttl_ms > 0 {
            o.expires_at_ms = now_ms() + r.ttl_ms;
        }
        let resp = self
            .mutate(who, r.options, |b| {
                b.overrides.retain(|x| x.id != o.id);
                b.overrides.push(o.clone());
                Ok(())
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn delete_override(
        &self,
        req: Request<pb::DeleteOverrideRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = caller_name(&req, Scope::Operate)?;
        let r = req.into_inner();
        let resp = self
            .mutate(who, r.options, |b| {
                let before = b.overrides.len();
                b.overrides.retain(|x| x.id != r.id);
                if b.overrides.len() == before {
                    return Err(Status::not_found(format!("no cluster override {:?}", r.id)));
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = caller_name(&req, Scope::Admin)?;
        let r = req.into_inner();
        let bundle = r.bundle.unwrap_or_default();
        let resp = self
            .mutate(who, r.options, |b| {
                *b = bundle.clone();
                Ok(())
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        require(&req, Scope::Read)?;
        let limit = match req.into_inner().limit {
            0 => 50,
            n if n > 1000 => return Err(Status::invalid_argument("limit must be at most 1000")),
            n => n,
        };
        let records = self
            .cp
            .store
            .history(limit as usize)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::HistoryResponse { records }))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let who = caller_name(&req, Scope::Admin)?;
        let r = req.into_inner();
        let target = self
            .cp
            .store
            .bundle_at(r.to_revision)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "revision {} is not in history (only the last {} are kept)",
                    r.to_revision,
                    crate::store::HISTORY_KEEP
                ))
            })?;
        let mut opts = r.options.unwrap_or_default();
        if opts.comment.is_empty() {
            opts.comment = format!("rollback to revision {}", r.to_revision);
        }
        let resp = self
            .mutate(who, Some(opts), |b| {
                *b = target.clone();
                Ok(())
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn list_gateways(
        &self,
        req: Request<pb::ListGatewaysRequest>,
    ) -> Result<Response<pb::ListGatewaysResponse>, Status> {
        require(&req, Scope::Read)?;
        let (gws, _) = self.cp.store.gateways().await.map_err(store_status)?;
        let cur = self.cp.current.borrow().clone();
        let gateways = gws
            .into_iter()
            .map(|g| {
                let sync_status = if g.connected_to.is_empty() {
                    pb::SyncStatus::Disconnected
                } else if g.applied_epoch == cur.epoch && g.applied_rev == cur.revision {
                    pb::SyncStatus::InSync
                } else if !g.last_error.is_empty() && g.error_rev >= cur.revision {
                    pb::SyncStatus::Rejected
                } else {
                    pb::SyncStatus::Behind
                };
                pb::GatewayStatus {
                    gateway_id: g.id,
                    client_addr: g.client_addr,
                    admin_addr: g.admin_addr,
                    version: g.version,
                    state: g.state as i32,
                    applied_revision: g.applied_rev,
                    applied_epoch: g.applied_epoch,
                    sync_status: sync_status as i32,
                    last_error: g.last_error,
                    sessions: g.sessions,
                    last_seen_ms: g.last_seen_ms,
                    connected_to: g.connected_to,
                    region: g.region,
                }
            })
            .collect();
        Ok(Response::new(pb::ListGatewaysResponse {
            gateways,
            revision: cur.revision,
            epoch: cur.epoch.clone(),
            controlplane_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn drain_gateway(
        &self,
        req: Request<pb::DrainGatewayRequest>,
    ) -> Result<Response<pb::DrainGatewayResponse>, Status> {
        let who = caller_name(&req, Scope::Operate)?;
        let r = req.into_inner();
        let addr = self
            .cp
            .store
            .gateway_admin_addr(&r.gateway_id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no live gateway {:?} (see ListGateways)",
                    r.gateway_id
                ))
            })?;
        if addr.is_empty() {
            return Err(Status::failed_precondition(format!(
                "gateway {} has no admin API configured",
                r.gateway_id
            )));
        }
        let mut admin = crate::gwadmin::connect(&self.cp, &addr)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "cannot reach gateway {} admin API at {addr}: {e}",
                    r.gateway_id
                ))
            })?;
        let call = crate::gwadmin::request(
            &self.cp,
            gwpb::StartDrainRequest {
                request_id: if r.request_id.is_empty() {
                    format!("cp-{}", uuid::Uuid::new_v4())
                } else {
                    r.request_id
                },
                deadline_ms: r.deadline_ms,
                spread_ms: r.spread_ms,
                reason: if r.reason.is_empty() {
                    format!("drain requested by {who} via the control plane")
                } else {
                    r.reason
                },
                reconnect_after_ms: 0,
            },
        )?;
        let s = admin
            .start_drain(call)
            .await
            .map_err(|e| {
                Status::new(
                    e.code(),
                    format!("gateway {}: {}", r.gateway_id, e.message()),
                )
            })?
            .into_inner();
        info!(caller = %who, gateway = %r.gateway_id, "drain requested through the control plane");
        Ok(Response::new(pb::DrainGatewayResponse {
            gateway_id: r.gateway_id,
            phase: DrainPhase::try_from(s.phase).unwrap_or_default() as i32,
            sessions_at_start: s.sessions_at_start,
        }))
    }

    async fn rollout_status(
        &self,
        req: Request<pb::RolloutStatusRequest>,
    ) -> Result<Response<pb::RolloutStatusResponse>, Status> {
        require(&req, Scope::Read)?;
        let cur = self.cp.current.borrow().clone();
        let rev = match req.into_inner().revision {
            0 => cur.revision,
            r => r,
        };
        let (gws, _) = self.cp.store.gateways().await.map_err(store_status)?;
        let mut resp = pb::RolloutStatusResponse {
            revision: rev,
            ..Default::default()
        };
        for g in gws {
            let status = if g.applied_epoch == cur.epoch && g.applied_rev >= rev {
                resp.applied += 1;
                pb::RolloutStatus::Applied
            } else if !g.last_error.is_empty() && g.error_rev >= rev {
                resp.rejected += 1;
                pb::RolloutStatus::Rejected
            } else {
                resp.pending += 1;
                pb::RolloutStatus::Pending
            };
            resp.gateways.push(pb::GatewayRollout {
                gateway_id: g.id,
                status: status as i32,
                applied_revision: g.applied_rev,
                error: if status == pb::RolloutStatus::Rejected {
                    g.last_error
                } else {
                    String::new()
                },
            });
        }
        Ok(Response::new(resp))
    }
}

impl Api {
    pub(crate) async fn ownership(&self, sid: u64) -> Result<Option<pb::Ownership>, Status> {
        let Some((user, gw, epoch)) = self.cp.store.session(sid).await.map_err(store_status)?
        else {
            return Ok(None);
        };
        // A dead gateway's sessions are gone as soon as its lease expires,
        // even before the sweeper deletes them.
        let Some((admin, region)) = self
            .cp
            .store
            .gateway_contact(&gw)
            .await
            .map_err(store_status)?
        else {
            return Ok(None);
        };
        Ok(Some(pb::Ownership {
            gateway_region: region,
            session_id: sid,
            user_id: user,
            gateway_id: gw,
            gateway_admin_addr: admin,
            epoch,
        }))
    }
}

#[tonic::async_trait]
impl SessionDirectory for Api {
    type WatchStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::WatchBatch, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        require(&req, Scope::Read)?;
        let r = req.into_inner();
        let rx = crate::presence::watch(self.cp.clone(), r).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn push(
        &self,
        req: Request<pb::BatchPushRequest>,
    ) -> Result<Response<pb::BatchPushResponse>, Status> {
        require(&req, Scope::Operate)?;
        let r = req.into_inner();
        crate::push::batch_push(&self.cp, r, |sid| self.ownership(sid))
            .await
            .map(Response::new)
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        require(&req, Scope::Read)?;
        let sid = req.into_inner().session_id;
        let o = self.ownership(sid).await?.ok_or_else(|| {
            Status::not_found(format!("session {sid} is not owned by any live gateway"))
        })?;
        Ok(Response::new(pb::LookupResponse { ownership: Some(o) }))
    }

    async fn lookup_user(
        &self,
        req: Request<pb::LookupUserRequest>,
    ) -> Result<Response<pb::LookupUserResponse>, Status> {
        require(&req, Scope::Read)?;
        let uid = req.into_inner().user_id;
        let mut sessions = Vec::new();
        for sid in self
            .cp
            .store
            .user_sessions(uid)
            .await
            .map_err(store_status)?
        {
            if let Some(o) = self.ownership(sid).await?
                && o.user_id == uid
            {
                sessions.push(o);
            }
        }
        Ok(Response::new(pb::LookupUserResponse { sessions }))
    }

    async fn batch_lookup(
        &self,
        req: Request<pb::BatchLookupRequest>,
    ) -> Result<Response<pb::BatchLookupResponse>, Status> {
        require(&req, Scope::Read)?;
        let ids = req.into_inner().session_ids;
        if ids.len() > 1000 {
            return Err(Status::invalid_argument(
                "at most 1000 session ids per batch",
            ));
        }
        // One read for all the entries, one per distinct gateway.
        let entries = self.cp.store.sessions(&ids).await.map_err(store_status)?;
        let mut contacts: std::collections::HashMap<String, Option<(String, String)>> =
            std::collections::HashMap::new();
        let mut resp = pb::BatchLookupResponse::default();
        for (sid, entry) in ids.into_iter().zip(entries) {
            let Some((user, gw, epoch)) = entry else {
                resp.missing.push(sid);
                continue;
            };
            if !contacts.contains_key(&gw) {
                let c = self
                    .cp
                    .store
                    .gateway_contact(&gw)
                    .await
                    .map_err(store_status)?;
                contacts.insert(gw.clone(), c);
            }
            // A dead gateway's sessions are gone with its lease.
            match &contacts[&gw] {
                Some((admin, region)) => resp.found.push(pb::Ownership {
                    gateway_region: region.clone(),
                    session_id: sid,
                    user_id: user,
                    gateway_admin_addr: admin.clone(),
                    gateway_id: gw,
                    epoch,
                }),
                None => resp.missing.push(sid),
            }
        }
        Ok(Response::new(resp))
    }
}
