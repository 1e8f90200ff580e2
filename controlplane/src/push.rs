//! Batch push (`SessionDirectory.Push`): one payload to many sessions and
//! users, routed through the directory to the owning gateways — one admin
//! `Push` per gateway, in parallel — with a result per session.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use gg_proto::pb::admin as gwpb;
use gg_proto::pb::controlplane as pb;
use pb::PushStatus;
use tonic::Status;

use crate::Cp;

/// Most targets (sessions plus users) in one call.
pub(crate) const MAX_TARGETS: usize = 10_000;
/// Largest payload (the gateways' default frame limit applies too).
pub(crate) const MAX_PAYLOAD: usize = 1 << 20;

/// Where each resolved session goes: gateway → (admin address, sessions
/// with the user target they came from, 0 for a session target).
type Plan = BTreeMap<String, (String, Vec<(u64, u64)>)>;

pub(crate) async fn batch_push<F, Fut>(
    cp: &Arc<Cp>,
    r: pb::BatchPushRequest,
    ownership: F,
) -> Result<pb::BatchPushResponse, Status>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<Option<pb::Ownership>, Status>>,
{
    if r.session_ids.len() + r.user_ids.len() > MAX_TARGETS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_TARGETS} targets per call"
        )));
    }
    if r.session_ids.is_empty() && r.user_ids.is_empty() {
        return Err(Status::invalid_argument("give session_ids and/or user_ids"));
    }
    if u16::try_from(r.service_type).is_err() {
        return Err(Status::invalid_argument("service_type must fit in u16"));
    }
    if r.payload.len() > MAX_PAYLOAD {
        return Err(Status::invalid_argument(format!(
            "payload exceeds {MAX_PAYLOAD} bytes"
        )));
    }
    let mut results = Vec::new();
    let mut plan: Plan = BTreeMap::new();
    let add = |o: pb::Ownership, user: u64, plan: &mut Plan| {
        plan.entry(o.gateway_id)
            .or_insert_with(|| (o.gateway_admin_addr, Vec::new()))
            .1
            .push((o.session_id, user));
    };
    for sid in &r.session_ids {
        match ownership(*sid).await? {
            Some(o) => add(o, 0, &mut plan),
            None => results.push(result(*sid, 0, "", PushStatus::NotFound, "")),
        }
    }
    for uid in &r.user_ids {
        let mut any = false;
        for sid in cp
            .store
            .user_sessions(*uid)
            .await
            .map_err(crate::api::store_status)?
        {
            if let Some(o) = ownership(sid).await?
                && o.user_id == *uid
            {
                any = true;
                add(o, *uid, &mut plan);
            }
        }
        if !any {
            results.push(result(
                0,
                *uid,
                "",
                PushStatus::NotFound,
                "the user has no live session",
            ));
        }
    }
    let sends = plan.into_iter().map(|(gw, (addr, targets))| {
        let cp = cp.clone();
        let (service_type, payload) = (r.service_type, r.payload.clone());
        async move { send(&cp, gw, addr, targets, service_type, payload).await }
    });
    for part in futures_util::future::join_all(sends).await {
        results.extend(part);
    }
    Ok(pb::BatchPushResponse { results })
}

/// One gateway's share.
async fn send(
    cp: &Cp,
    gw: String,
    addr: String,
    targets: Vec<(u64, u64)>,
    service_type: u32,
    payload: Vec<u8>,
) -> Vec<pb::PushResult> {
    let all = |status, error: &str| {
        targets
            .iter()
            .map(|(sid, uid)| result(*sid, *uid, &gw, status, error))
            .collect::<Vec<_>>()
    };
    if addr.is_empty() {
        return all(
            PushStatus::GatewayUnreachable,
            "the gateway has no admin API",
        );
    }
    let mut admin = match crate::gwadmin::connect(cp, &addr).await {
        Ok(a) => a,
        Err(e) => return all(PushStatus::GatewayUnreachable, &e),
    };
    let req = match crate::gwadmin::request(
        cp,
        gwpb::PushRequest {
            session_ids: targets.iter().map(|(sid, _)| *sid).collect(),
            service_type,
            payload,
            ..Default::default()
        },
    ) {
        Ok(r) => r,
        Err(e) => return all(PushStatus::GatewayUnreachable, e.message()),
    };
    match admin.push(req).await {
        Ok(r) => {
            let r = r.into_inner();
            targets
                .iter()
                .map(|(sid, uid)| {
                    let status = if r.delivered.contains(sid) {
                        PushStatus::Delivered
                    } else if r.failed.contains(sid) {
                        PushStatus::QueueFull
                    } else {
                        PushStatus::NotFound
                    };
                    result(*sid, *uid, &gw, status, "")
                })
                .collect()
        }
        // Sent, no answer: it may have been delivered.
        Err(e) => all(PushStatus::OutcomeUnknown, e.message()),
    }
}

fn result(
    session_id: u64,
    user_id: u64,
    gw: &str,
    status: PushStatus,
    error: &str,
) -> pb::PushResult {
    pb::PushResult {
        session_id,
        user_id,
        gateway_id: gw.to_string(),
        status: status as i32,
        error: error.to_string(),
    }
}
