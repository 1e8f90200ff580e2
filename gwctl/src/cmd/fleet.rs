//! `fleet list` and `rollout status`.

use std::time::{Duration, Instant};

use anyhow::bail;
use gg_proto::pb::common::GatewayState;
use gg_proto::pb::controlplane as cp;
use serde::Serialize;

use super::{Status, enum_name, progress, progress_done};
use crate::cli;
use crate::ctx::{Ctx, explain};
use crate::out::View;

pub(super) fn rollout_name(s: i32) -> String {
    cp::RolloutStatus::try_from(s).map_or("unknown".into(), |s| {
        enum_name(s.as_str_name(), "ROLLOUT_STATUS_")
    })
}

pub(super) fn sync_name(s: i32) -> String {
    cp::SyncStatus::try_from(s).map_or("unknown".into(), |s| {
        enum_name(s.as_str_name(), "SYNC_STATUS_")
    })
}

pub(super) fn state_name(s: i32) -> String {
    GatewayState::try_from(s).map_or("unknown".into(), |s| {
        enum_name(s.as_str_name(), "GATEWAY_STATE_")
    })
}

pub(super) async fn list_gateways(ctx: &Ctx) -> anyhow::Result<cp::ListGatewaysResponse> {
    Ok(ctx
        .cp()
        .await?
        .list_gateways(cp::ListGatewaysRequest {})
        .await
        .map_err(explain)?
        .into_inner())
}

/// One gateway of the fleet.
#[derive(Serialize)]
struct GatewayRow<'a> {
    gateway_id: &'a str,
    client_addr: &'a str,
    admin_addr: &'a str,
    version: &'a str,
    state: String,
    applied_revision: u64,
    sync_status: String,
    last_error: &'a str,
    sessions: u64,
    last_seen_ms: u64,
    connected_to: &'a str,
    region: &'a str,
}

fn gateway_row(g: &cp::GatewayStatus) -> GatewayRow<'_> {
    GatewayRow {
        gateway_id: &g.gateway_id,
        client_addr: &g.client_addr,
        admin_addr: &g.admin_addr,
        version: &g.version,
        state: state_name(g.state),
        applied_revision: g.applied_revision,
        sync_status: sync_name(g.sync_status),
        last_error: &g.last_error,
        sessions: g.sessions,
        last_seen_ms: g.last_seen_ms,
        connected_to: &g.connected_to,
        region: &g.region,
    }
}

pub(super) async fn list(ctx: &Ctx, region: Option<&str>) -> anyhow::Result<View> {
    let mut r = list_gateways(ctx).await?;
    if let Some(region) = region {
        r.gateways.retain(|g| g.region == region);
    }
    let current = r.revision;
    let headers = vec![
        "GATEWAY",
        "REGION",
        "STATE",
        "SYNC",
        "REVISION",
        "SESSIONS",
        "ADMIN",
        "VERSION",
        "CONTROLPLANE",
    ];
    let table_row = |g: &cp::GatewayStatus| {
        let sync = if g.last_error.is_empty() {
            sync_name(g.sync_status)
        } else {
            format!("{} ({})", sync_name(g.sync_status), g.last_error)
        };
        vec![
            g.gateway_id.clone(),
            if g.region.is_empty() {
                "-".into()
            } else {
                g.region.clone()
            },
            state_name(g.state),
            sync,
            format!("{}/{current}", g.applied_revision),
            g.sessions.to_string(),
            g.admin_addr.clone(),
            g.version.clone(),
            g.connected_to.clone(),
        ]
    };
    Ok(
        View::list("gateways", &r.gateways, headers, gateway_row, table_row)
            .with("revision", r.revision)
            .with("epoch", r.epoch),
    )
}

#[derive(Serialize)]
struct RolloutRow<'a> {
    gateway_id: &'a str,
    status: String,
    applied_revision: u64,
    error: &'a str,
}

fn rollout_row(g: &cp::GatewayRollout) -> RolloutRow<'_> {
    RolloutRow {
        gateway_id: &g.gateway_id,
        status: rollout_name(g.status),
        applied_revision: g.applied_revision,
        error: &g.error,
    }
}

/// Polls until no gateway is pending (with `--wait`) or once.
async fn poll_rollout(
    ctx: &Ctx,
    revision: u64,
    wait: bool,
    limit: Duration,
) -> anyhow::Result<cp::RolloutStatusResponse> {
    let mut client = ctx.cp().await?;
    let until = Instant::now() + limit;
    loop {
        let r = client
            .rollout_status(cp::RolloutStatusRequest { revision })
            .await
            .map_err(explain)?
            .into_inner();
        if !wait || r.pending == 0 || Instant::now() >= until {
            progress_done();
            return Ok(r);
        }
        progress(&format!(
            "revision {}: {} applied, {} rejected, {} pending",
            r.revision, r.applied, r.rejected, r.pending
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(super) async fn rollout(ctx: &Ctx, c: cli::Rollout) -> anyhow::Result<(View, Status)> {
    let cli::Rollout::Status {
        revision,
        wait,
        wait_timeout,
    } = c;
    let r = poll_rollout(ctx, revision, wait, wait_timeout).await?;
    if r.rejected > 0 {
        let who: Vec<String> = r
            .gateways
            .iter()
            .filter(|g| g.status == cp::RolloutStatus::Rejected as i32)
            .map(|g| format!("{} ({})", g.gateway_id, g.error))
            .collect();
        bail!(
            "revision {} was rejected by {}; those gateways keep their previous config",
            r.revision,
            who.join(", ")
        );
    }
    let status = if r.pending > 0 {
        Status::Incomplete
    } else {
        Status::Ok
    };
    let table_row = |g: &cp::GatewayRollout| {
        vec![
            g.gateway_id.clone(),
            rollout_name(g.status),
            g.applied_revision.to_string(),
            g.error.clone(),
        ]
    };
    let headers = vec!["GATEWAY", "STATUS", "APPLIED", "ERROR"];
    let view = View::list("gateways", &r.gateways, headers, rollout_row, table_row)
        .with("revision", r.revision)
        .with("applied", r.applied)
        .with("rejected", r.rejected)
        .with("pending", r.pending);
    Ok((view, status))
}
