//! `GatewayAdmin` RPCs. Each checks its scope first, validates its input
//! (INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION with a message that
//! says what to do), then acts on the gateway's shared state.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use gg_proto::frame::{Header, Kind};
use gg_proto::pb::admin as pb;
use gg_proto::pb::admin::gateway_admin_server::GatewayAdmin;
use gg_proto::{CloseCode, Frame};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::info;

use super::require;
use crate::Gateway;
use crate::backend::AdminState;
use crate::drain::{DrainCtl, DrainError, DrainRequest, DrainStatus, Phase};
use crate::router;
use crate::router::overrides::LocalOverride;
use crate::session::{Outbound, SessionHandle};
use gg_proto::model::{Override, RouteKey};
use gg_proto::pb::common::DrainPhase;
use gg_runtime::auth::Scope;
use gg_runtime::clock::now_ms;

pub(super) struct AdminService {
    gw: Arc<Gateway>,
    /// Ends server streams on shutdown (tonic waits for open streams).
    stop: CancellationToken,
}

impl AdminService {
    pub(super) fn new(gw: Arc<Gateway>, stop: CancellationToken) -> AdminService {
        AdminService { gw, stop }
    }
}

const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

fn drain_pb(s: &DrainStatus) -> pb::DrainStatus {
    let phase = match s.phase {
        Phase::Idle => DrainPhase::Idle,
        Phase::Advising => DrainPhase::Advising,
        Phase::Waiting => DrainPhase::Waiting,
        Phase::ForceClosing => DrainPhase::ForceClosing,
        Phase::Done => DrainPhase::Done,
        Phase::Cancelled => DrainPhase::Cancelled,
    };
    pb::DrainStatus {
        phase: phase as i32,
        request_id: s.request_id.clone(),
        reason: s.reason.clone(),
        sessions_at_start: s.sessions_at_start,
        remaining: s.remaining,
        advised: s.advised,
        closed: s.closed,
        force_closed: s.force_closed,
        started_at_ms: s.started_at_ms,
        deadline_at_ms: s.deadline_at_ms,
    }
}

fn session_pb(gw: &Gateway, s: &SessionHandle) -> pb::Session {
    pb::Session {
        session_id: s.id(),
        display_id: format!("{}:{}", gw.cfg.gateway_id, s.id()),
        user_id: s.user_id(),
        realm_id: s.realm_id(),
        protocol: s.protocol().name().to_string(),
        remote_addr: s.remote().to_string(),
        age_ms: s.age().as_millis() as u64,
        bindings: s
            .bindings()
            .into_iter()
            .map(|(service, ep)| pb::SessionBinding {
                service_type: u32::from(service),
                endpoint: ep.to_string(),
            })
            .collect(),
        rooms: gw.rooms.of_session(s.id()),
    }
}

fn backend_pb(ep: &crate::backend::Endpoint) -> pb::Backend {
    let now = std::time::Instant::now();
    pb::Backend {
        endpoint: ep.addr.to_string(),
        connections_up: ep.connections_up() as u32,
        connections: ep.conns.len() as u32,
        sessions: ep.sessions() as u64,
        in_flight: ep.queued() as u64,
        circuit: ep.breaker.state_name(now).to_string(),
        state: ep.admin_state().name().to_string(),
        unknown_session_replies: ep.unknown_session.get(),
        consecutive_failures: ep.breaker.consecutive_failures(),
    }
}

fn override_pb(l: &LocalOverride) -> pb::RouteOverride {
    let o = &l.o;
    pb::RouteOverride {
        id: o.id.clone(),
        service_type: u32::from(o.key.service),
        user_id: o.key.user,
        realm_id: o.key.realm,
        session_id: o.key.session,
        target: o.target.clone(),
        reason: o.reason.clone(),
        author: o.author.clone(),
        ttl_ms: o.expires_at_ms.saturating_sub(o.created_at_ms),
        expires_at_ms: o.expires_at_ms,
        created_at_ms: o.created_at_ms,
        move_existing: l.move_existing,
    }
}

fn u16_arg(name: &str, v: u32) -> Result<u16, Status> {
    u16::try_from(v)
        .map_err(|_| Status::invalid_argument(format!("{name} {v} does not fit in u16")))
}

/// Whether a session matches a selector's non-zero fields.
fn selected(s: &SessionHandle, user: u64, realm: u32, service: u32, protocol: &str) -> bool {
    (user == 0 || s.user_id() == user)
        && (realm == 0 || s.realm_id() == realm)
        && (service == 0
            || s.bindings()
                .iter()
                .any(|(svc, _)| u32::from(*svc) == service))
        && (protocol.is_empty() || s.protocol().name() == protocol)
}

fn check_protocol(p: &str) -> Result<(), Status> {
    if p.is_empty() || ["tcp", "ws", "http"].contains(&p) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "protocol {p:?} must be tcp, ws or http"
        )))
    }
}

fn drain_status_err(e: DrainError) -> Status {
    match e {
        DrainError::AlreadyRunning { .. } | DrainError::NotRunning => {
            Status::failed_precondition(e.to_string())
        }
        DrainError::BadWindow { .. } => Status::invalid_argument(e.to_string()),
    }
}

type DrainStream = Pin<Box<dyn Stream<Item = Result<pb::DrainStatus, Status>> + Send>>;

#[tonic::async_trait]
impl GatewayAdmin for AdminService {
    async fn get_info(
        &self,
        req: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GatewayInfo>, Status> {
        require(&req, Scope::Read)?;
        let gw = &self.gw;
        let addrs = gw.addrs.get();
        let ready = gw.readiness();
        let (config_revision, config_epoch) = gw.routing.applied();
        Ok(Response::new(pb::GatewayInfo {
            gateway_id: gw.cfg.gateway_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            client_addr: addrs.map(|a| a.client.to_string()).unwrap_or_default(),
            ops_addr: addrs.map(|a| a.ops.to_string()).unwrap_or_default(),
            admin_addr: addrs
                .and_then(|a| a.admin)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            ready: ready.is_ok(),
            not_ready_reason: ready.err().unwrap_or_default().to_string(),
            draining: gw.draining(),
            sessions: gw.clients.sessions.len() as u64,
            connections: gw.clients.limits.active() as u64,
            uptime_ms: gw.started.elapsed().as_millis() as u64,
            resume_enabled: gw.clients.resume.is_some(),
            config_revision,
            config_epoch,
        }))
    }

    async fn start_drain(
        &self,
        req: Request<pb::StartDrainRequest>,
    ) -> Result<Response<pb::DrainStatus>, Status> {
        let caller = require(&req, Scope::Operate)?;
        let r = req.into_inner();
        if r.request_id.is_empty() {
            return Err(Status::invalid_argument(
                "request_id is required (retries with the same id are idempotent)",
            ));
        }
        let d = &self.gw.cfg.drain;
        let ms_or = |v: u64, def: Duration| {
            if v == 0 {
                def
            } else {
                Duration::from_millis(v)
            }
        };
        let deadline = ms_or(r.deadline_ms, d.deadline);
        let drain = DrainRequest {
            request_id: r.request_id,
            deadline,
            spread: if r.spread_ms == 0 {
                d.spread.min(deadline)
            } else {
                Duration::from_millis(r.spread_ms)
            },
            reconnect_after: ms_or(r.reconnect_after_ms, d.reconnect_after),
            reason: if r.reason.is_empty() {
                format!("drain requested by {}", caller.name)
            } else {
                r.reason
            },
        };
        info!(caller = %caller.name, request_id = %drain.request_id, "StartDrain");
        let s = DrainCtl::start(&self.gw, drain).map_err(drain_status_err)?;
        Ok(Response::new(drain_pb(&s)))
    }

    async fn get_drain(
        &self,
        req: Request<pb::GetDrainRequest>,
    ) -> Result<Response<pb::DrainStatus>, Status> {
        require(&req, Scope::Read)?;
        Ok(Response::new(drain_pb(&self.gw.life.drain.status())))
    }

    type WatchDrainStream = DrainStream;

    async fn watch_drain(
        &self,
        req: Request<pb::WatchDrainRequest>,
    ) -> Result<Response<DrainStream>, Status> {
        require(&req, Scope::Read)?;
        let rx = self.gw.life.drain.subscribe();
        let stop = self.stop.clone();
        // The current status first, then every change; the stream ends after
        // a finished phase (or at shutdown).
        let stream =
            futures_util::stream::unfold((rx, true, false), move |(mut rx, first, ended)| {
                let stop = stop.clone();
                async move {
                    if ended {
                        return None;
                    }
                    if !first {
                        tokio::select! {
                            r = rx.changed() => r.ok()?,
                            _ = stop.cancelled() => return None,
                        }
                    }
                    let s = rx.borrow_and_update().clone();
                    let ended = s.phase.finished();
                    Some((Ok(drain_pb(&s)), (rx, false, ended)))
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_drain(
        &self,
        req: Request<pb::CancelDrainRequest>,
    ) -> Result<Response<pb::DrainStatus>, Status> {
        let caller = require(&req, Scope::Operate)?;
        info!(caller = %caller.name, "CancelDrain");
        let s = DrainCtl::cancel(&self.gw).map_err(drain_status_err)?;
        Ok(Response::new(drain_pb(&s)))
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        require(&req, Scope::Read)?;
        let id = req.into_inner().session_id;
        let s = self.gw.clients.sessions.get(id).ok_or_else(|| {
            Status::not_found(format!(
                "no session {id} on gateway {}",
                self.gw.cfg.gateway_id
            ))
        })?;
        Ok(Response::new(session_pb(&self.gw, &s)))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        require(&req, Scope::Read)?;
        let r = req.into_inner();
        check_protocol(&r.protocol)?;
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size must be at most {MAX_PAGE}"
                )));
            }
            n => n,
        } as usize;
        let after: u64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| Status::invalid_argument("page_token is not one this API returned"))?
        };
        let mut all: Vec<SessionHandle> = self
            .gw
            .clients
            .sessions
            .all()
            .into_iter()
            .filter(|s| selected(s, r.user_id, r.realm_id, r.service_type, &r.protocol))
            .collect();
        all.sort_by_key(SessionHandle::id);
        let total = all.len() as u64;
        let page: Vec<&SessionHandle> = all.iter().filter(|s| s.id() > after).take(size).collect();
        let next = match page.last() {
            Some(last) if all.iter().any(|s| s.id() > last.id()) => last.id().to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.into_iter().map(|s| session_pb(&self.gw, s)).collect(),
            next_page_token: next,
            total,
        }))
    }

    async fn kick_sessions(
        &self,
        req: Request<pb::KickSessionsRequest>,
    ) -> Result<Response<pb::KickSessionsResponse>, Status> {
        let caller = require(&req, Scope::Operate)?;
        let r = req.into_inner();
        let sel = r.selector.unwrap_or_default();
        check_protocol(&sel.protocol)?;
        let has_selector = sel.user_id != 0
            || sel.realm_id != 0
            || sel.service_type != 0
            || !sel.protocol.is_empty();
        if r.session_ids.is_empty() != has_selector {
            return Err(Status::invalid_argument(
                "give either session_ids or a selector with at least one field, not both",
            ));
        }
        let code = match r.code {
            0 => CloseCode::Kicked.code(),
            c @ 3000..=4999 => c as u16,
            c => {
                return Err(Status::invalid_argument(format!(
                    "code {c} must be in 3000..=4999 (see docs/protocol.md)"
                )));
            }
        };
        let reason = if r.reason.is_empty() {
            format!("kicked by {}", caller.name)
        } else {
            r.reason
        };
        let mut not_found = Vec::new();
        let targets: Vec<SessionHandle> = if has_selector {
            self.gw
                .clients
                .sessions
                .all()
                .into_iter()
                .filter(|s| {
                    selected(
                        s,
                        sel.user_id,
                        sel.realm_id,
                        sel.service_type,
                        &sel.protocol,
                    )
                })
                .collect()
        } else {
            r.session_ids
                .iter()
                .filter_map(|id| {
                    let s = self.gw.clients.sessions.get(*id);
                    if s.is_none() {
                        not_found.push(*id);
                    }
                    s
                })
                .collect()
        };
        let matched = targets.len() as u64;
        if r.dry_run {
            return Ok(Response::new(pb::KickSessionsResponse {
                matched,
                kicked: 0,
                not_found,
            }));
        }
        info!(caller = %caller.name, matched, code, %reason, rate = r.rate_per_sec, "KickSessions");
        if r.rate_per_sec == 0 {
            for s in &targets {
                s.kick(code, reason.clone());
            }
        } else {
            // Paced: at most rate_per_sec closes per second, within this call.
            let every = Duration::from_secs(1) / r.rate_per_sec;
            let mut tick = tokio::time::interval(every);
            for s in &targets {
                tokio::select! {
                    _ = tick.tick() => s.kick(code, reason.clone()),
                    _ = self.stop.cancelled() => return Err(Status::unavailable("gateway shutting down")),
                }
            }
        }
        Ok(Response::new(pb::KickSessionsResponse {
            matched,
            kicked: matched,
            not_found,
        }))
    }

    async fn set_room_membership(
        &self,
        req: Request<pb::SetRoomMembershipRequest>,
    ) -> Result<Response<pb::SetRoomMembershipResponse>, Status> {
        use crate::rooms::JoinError;
        require(&req, Scope::Operate)?;
        let r = req.into_inner();
        if !gg_proto::room::valid_room(&r.room) {
            return Err(Status::invalid_argument(
                gg_proto::room::RoomError::BadName(r.room).to_string(),
            ));
        }
        let s = (self.gw.clients.sessions.get(r.session_id)).ok_or_else(|| {
            Status::not_found(format!("no session {} on this gateway", r.session_id))
        })?;
        if !r.join {
            self.gw.rooms.leave(s.id(), s.user_id(), &r.room);
            return Ok(Response::new(pb::SetRoomMembershipResponse { seq: 0 }));
        }
        let seq = match self.gw.rooms.join(&s, &r.room) {
            Ok(j) => j.seq(std::time::Duration::from_secs(5)).await,
            Err(e) => Err(e),
        };
        match seq {
            Ok(seq) => Ok(Response::new(pb::SetRoomMembershipResponse { seq })),
            Err(e @ (JoinError::Name(_) | JoinError::TooMany(_))) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e @ JoinError::Closed(_)) => Err(Status::not_found(e.to_string())),
            Err(e @ JoinError::Busy) => Err(Status::resource_exhausted(e.to_string())),
            // The member is in; whether the control plane heard is unknown.
            Err(e @ JoinError::Timeout) => Err(Status::deadline_exceeded(format!(
                "{e}: the session is in the room here, but messages may not reach it until the control plane answers"
            ))),
        }
    }

    async fn push(
        &self,
        req: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        require(&req, Scope::Operate)?;
        let r = req.into_inner();
        let service = u16_arg("service_type", r.service_type)?;
        let max = self.gw.cfg.limits.max_frame_bytes as usize - gg_proto::frame::HEADER_AFTER_LEN;
        if r.payload.len() > max {
            return Err(Status::invalid_argument(format!(
                "payload exceeds {max} bytes (max_frame_bytes)"
            )));
        }
        let mut missing = Vec::new();
        let targets =
            match (r.session_id, r.user_id) {
                (0, 0) if !r.session_ids.is_empty() => (r.session_ids.iter())
                    .filter_map(|id| {
                        let s = self.gw.clients.sessions.get(*id);
                        if s.is_none() {
                            missing.push(*id);
                        }
                        s
                    })
                    .collect(),
                (0, 0) | (1.., 1..) => {
                    return Err(Status::invalid_argument(
                        "give exactly one of session_id, user_id or session_ids",
                    ));
                }
                (id, 0) => vec![self.gw.clients.sessions.get(id).ok_or_else(|| {
                    Status::not_found(format!("no session {id} on this gateway"))
                })?],
                (0, user) => {
                    let v = self.gw.clients.sessions.by_user(user);
                    if v.is_empty() {
                        return Err(Status::not_found(format!(
                            "user {user} has no session on this gateway"
                        )));
                    }
                    v
                }
            };
        let mut resp = pb::PushResponse {
            missing,
            ..Default::default()
        };
        for s in targets {
            let mut h = Header::new(Kind::Data);
            h.service_type = service;
            h.realm_id = s.realm_id();
            h.user_id = s.user_id();
            h.session_id = s.id();
            h.seq = r.seq;
            let f = Frame::new(h, r.payload.clone()).to_bytes();
            if s.deliver(Outbound::Frame(f)) {
                resp.delivered.push(s.id());
            } else {
                resp.failed.push(s.id());
            }
        }
        Ok(Response::new(resp))
    }

    async fn set_route_override(
        &self,
        req: Request<pb::SetRouteOverrideRequest>,
    ) -> Result<Response<pb::RouteOverride>, Status> {
        let caller = require(&req, Scope::Admin)?;
        let o = req
            .into_inner()
            .r#override
            .ok_or_else(|| Status::invalid_argument("override is required"))?;
        let service = u16_arg("service_type", o.service_type)?;
        if !self
            .gw
            .routing
            .routes
            .load()
            .services
            .contains_key(&service)
        {
            return Err(Status::invalid_argument(format!(
                "no service with service_type {service} is configured"
            )));
        }
        let now = now_ms();
        let ovr = Override {
            id: o.id,
            key: RouteKey {
                service,
                user: o.user_id,
                realm: o.realm_id,
                session: o.session_id,
            },
            target: o.target.clone(),
            reason: o.reason,
            author: if o.author.is_empty() {
                caller.name.clone()
            } else {
                o.author
            },
            expires_at_ms: if o.ttl_ms == 0 { 0 } else { now + o.ttl_ms },
            created_at_ms: now,
        };
        let mut errs = Vec::new();
        ovr.check("override", None, &mut errs);
        if !errs.is_empty() {
            return Err(Status::invalid_argument(errs.join("; ")));
        }
        // Warm the pool so the target's connections are up before use.
        self.gw.routing.backends.endpoint(&o.target);
        let set = self.gw.routing.overrides.set(LocalOverride {
            o: ovr,
            move_existing: o.move_existing,
        });
        info!(caller = %caller.name, id = %set.o.id, service, target = %set.o.target, expires_at_ms = set.o.expires_at_ms, "route override set");
        if set.move_existing {
            for s in self.gw.clients.sessions.all() {
                let binding = RouteKey {
                    service,
                    realm: s.realm_id(),
                    user: s.user_id(),
                    session: s.id(),
                };
                if set.o.key.matches(&binding) {
                    s.deliver(Outbound::Unbind {
                        endpoint: None,
                        service: Some(service),
                        reason: format!("moved by override {}", set.o.id),
                    });
                }
            }
        }
        Ok(Response::new(override_pb(&set)))
    }

    async fn list_route_overrides(
        &self,
        req: Request<pb::ListRouteOverridesRequest>,
    ) -> Result<Response<pb::ListRouteOverridesResponse>, Status> {
        require(&req, Scope::Read)?;
        let overrides = self
            .gw
            .routing
            .overrides
            .list(now_ms())
            .iter()
            .map(|o| override_pb(o))
            .collect();
        Ok(Response::new(pb::ListRouteOverridesResponse { overrides }))
    }

    async fn delete_route_override(
        &self,
        req: Request<pb::DeleteRouteOverrideRequest>,
    ) -> Result<Response<pb::DeleteRouteOverrideResponse>, Status> {
        let caller = require(&req, Scope::Admin)?;
        let id = req.into_inner().id;
        if !self.gw.routing.overrides.delete(&id) {
            return Err(Status::not_found(format!(
                "no route override {id:?} (it may have expired)"
            )));
        }
        info!(caller = %caller.name, %id, "route override deleted");
        self.gw.routing.retire_unused_endpoints();
        Ok(Response::new(pb::DeleteRouteOverrideResponse {}))
    }

    async fn explain_route(
        &self,
        req: Request<pb::ExplainRouteRequest>,
    ) -> Result<Response<pb::ExplainRouteResponse>, Status> {
        require(&req, Scope::Read)?;
        let r = req.into_inner();
        let key = RouteKey {
            service: u16_arg("service_type", r.service_type)?,
            realm: r.realm_id,
            user: r.user_id,
            session: r.session_id,
        };
        // The very decision traffic makes, in the mode that changes nothing.
        let routes = self.gw.routing.routes.load();
        let regions = router::Regions {
            gateway: self.gw.cfg.region.as_deref(),
            client: Some(r.client_region.as_str()).filter(|c| !c.is_empty()),
        };
        let d = router::decide(
            &routes,
            &self.gw.routing.overrides,
            &self.gw.routing.backends,
            &key,
            &regions,
            now_ms(),
            router::Mode::Explain,
        )
        .map_err(|e| Status::not_found(format!("{e}; see `gwctl routes list`")))?;
        let mut out = pb::ExplainRouteResponse {
            service: d.service,
            strategy: d.strategy.to_pb(),
            override_id: d
                .source
                .override_ref()
                .map(|o| o.id.clone())
                .unwrap_or_default(),
            hash_key: d.hash_key,
            candidates: d.candidates.iter().map(|e| e.addr.to_string()).collect(),
            why: d.why,
            preferred_region: d.preferred_region.unwrap_or_default(),
            endpoint_region: d.endpoint_region.unwrap_or_default(),
            ..Default::default()
        };
        // On failure, show what was tried first so the operator sees its state.
        let shown = match &d.endpoint {
            Ok(ep) => Some(ep.clone()),
            Err(e) => {
                out.why = format!("{}; requests get: {e}", out.why);
                d.source
                    .override_ref()
                    .and_then(|o| self.gw.routing.backends.get(&o.target))
                    .or_else(|| d.candidates.first().cloned())
            }
        };
        if let Some(ep) = shown {
            let now = std::time::Instant::now();
            out.endpoint = ep.addr.to_string();
            out.endpoint_healthy = ep.healthy();
            out.circuit = ep.breaker.state_name(now).to_string();
            out.endpoint_state = ep.admin_state().name().to_string();
        } else if let Some(o) = d.source.override_ref() {
            out.endpoint = o.target.clone();
        }
        Ok(Response::new(out))
    }

    async fn list_backends(
        &self,
        req: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        require(&req, Scope::Read)?;
        let backends = self
            .gw
            .routing
            .backends
            .endpoints()
            .iter()
            .map(|ep| backend_pb(ep))
            .collect();
        Ok(Response::new(pb::ListBackendsResponse { backends }))
    }

    async fn set_backend_state(
        &self,
        req: Request<pb::SetBackendStateRequest>,
    ) -> Result<Response<pb::Backend>, Status> {
        let caller = require(&req, Scope::Operate)?;
        let r = req.into_inner();
        let state = AdminState::parse(&r.state).ok_or_else(|| {
            Status::invalid_argument(format!("state {:?} must be ready, drain or maint", r.state))
        })?;
        let ep = self.gw.routing.backends.get(&r.endpoint).ok_or_else(|| {
            Status::not_found(format!(
                "no backend endpoint {:?}; see ListBackends",
                r.endpoint
            ))
        })?;
        ep.set_admin_state(state);
        info!(caller = %caller.name, endpoint = %ep.addr, state = state.name(), "backend state set");
        Ok(Response::new(backend_pb(&ep)))
    }
}
