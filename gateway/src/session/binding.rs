//! A session's binding to a backend per service: choosing the endpoint
//! (the router's decision), the OPEN that binds it, DATA through it and
//! the CLOSE that releases it.

use std::sync::Arc;

use bytes::Bytes;
use gg_proto::control::{self, Open};
use gg_proto::frame::{Header, Kind};

use super::SessionHandle;
use crate::Gateway;
use crate::backend::{Endpoint, SendError, ToBackend};
use crate::error::RequestError;
use gg_proto::model::{RouteKey, Strategy};

/// A session's pinned choice of backend for one service (and, for realm
/// routing, one realm).
pub(crate) struct Binding {
    pub(crate) service: u16,
    /// `Some(realm)` for realm-routed services: a new realm is a new binding.
    pub(crate) realm: Option<u32>,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
}

impl Binding {
    /// Whether the connection this binding was opened on is still the live one.
    pub(super) fn live(&self) -> bool {
        self.endpoint.conns[self.slot].live_generation() == Some(self.generation)
    }

    /// Queues `count` whole frames (back to back in `frames`) for this
    /// binding's backend, as one message.
    pub(crate) fn send(&self, frames: Bytes, count: u32) -> Result<(), RequestError> {
        self.try_send(frames, count).map_err(|(e, _)| e)
    }

    /// [`Binding::send`], giving the frames back when they cannot be
    /// queued (so the caller need not keep a copy to answer them).
    pub(crate) fn try_send(&self, frames: Bytes, count: u32) -> Result<(), (RequestError, Bytes)> {
        self.endpoint.conns[self.slot]
            .try_send(self.generation, ToBackend::frames(frames, count))
            .map_err(|(e, msg)| (send_error(e, &self.endpoint, count), msg.into_bytes()))
    }

    /// Unbinds the session on the backend; the CLOSE is never dropped
    /// (see [`crate::backend::Conn::send_close`]).
    pub(crate) fn close(&self, session_id: u64, code: u16, reason: &str) {
        let mut h = Header::new(Kind::Close);
        h.service_type = self.service;
        h.session_id = session_id;
        let f = control::control_frame(
            Kind::Close,
            h,
            &control::Close {
                code,
                reason: reason.to_string(),
            },
        );
        self.endpoint.conns[self.slot].send_close(self.generation, session_id, f.to_bytes());
    }
}

fn send_error(e: SendError, ep: &Endpoint, frames: u32) -> RequestError {
    match e {
        SendError::Down => RequestError::BackendUnavailable {
            endpoint: ep.addr.to_string(),
        },
        SendError::Full => {
            ep.queue_full.inc_by(u64::from(frames));
            RequestError::BackendOverloaded {
                endpoint: ep.addr.to_string(),
            }
        }
    }
}

/// Binds `session` to the endpoint the routes pick for `(service, realm)`
/// and queues its OPEN. Shared by streaming sessions and HTTP calls.
pub(crate) fn open_binding(
    gw: &Gateway,
    session: &SessionHandle,
    service: u16,
    realm: u32,
    resumed: bool,
    traceparent: Option<&str>,
) -> Result<Binding, RequestError> {
    let routes = gw.routing.routes.load();
    let key = RouteKey {
        service,
        realm,
        user: session.user_id(),
        session: session.id(),
    };
    let regions = crate::router::Regions {
        gateway: gw.cfg.region.as_deref(),
        client: session.region(),
    };
    let endpoint = crate::router::resolve(
        &routes,
        &gw.routing.overrides,
        &gw.routing.backends,
        &key,
        &regions,
    )?;
    let realm_key = routes
        .services
        .get(&service)
        .is_some_and(|s| s.strategy == Strategy::Realm)
        .then_some(realm);
    bind_on(
        session,
        service,
        realm,
        realm_key,
        endpoint,
        resumed,
        traceparent,
    )
}

pub(super) fn bind_on(
    session: &SessionHandle,
    service: u16,
    realm: u32,
    realm_key: Option<u32>,
    endpoint: Arc<Endpoint>,
    resumed: bool,
    traceparent: Option<&str>,
) -> Result<Binding, RequestError> {
    let (slot, generation) =
        endpoint
            .conn_for(session.id())
            .ok_or_else(|| RequestError::BackendUnavailable {
                endpoint: endpoint.addr.to_string(),
            })?;
    let mut h = Header::new(Kind::Open);
    h.service_type = service;
    h.realm_id = realm;
    h.user_id = session.user_id();
    h.session_id = session.id();
    let open = control::control_frame(
        Kind::Open,
        h,
        &Open {
            protocol: session.protocol().name().to_string(),
            remote_addr: session.remote().to_string(),
            resumed,
            traceparent: traceparent.map(str::to_string),
        },
    );
    endpoint.conns[slot]
        .send(
            generation,
            ToBackend::Open {
                session: session.clone(),
                frame: open.to_bytes(),
            },
        )
        .map_err(|e| send_error(e, &endpoint, 1))?;
    Ok(Binding {
        service,
        realm: realm_key,
        endpoint,
        slot,
        generation,
    })
}
