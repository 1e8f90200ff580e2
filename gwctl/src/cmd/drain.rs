//! `drain start | status | cancel`, and following a drain to its end.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures_util::StreamExt;
use gg_proto::pb::admin as gw;
use gg_proto::pb::common::DrainPhase;
use gg_proto::pb::controlplane as cp;
use serde::Serialize;

use super::fleet::list_gateways;
use super::{Status, enum_name, progress, progress_done};
use crate::cli;
use crate::ctx::{Auth, Ctx, explain};
use crate::out::{Table, View, time};

type Admin = gw::gateway_admin_client::GatewayAdminClient<Auth>;

fn phase_name(p: i32) -> String {
    DrainPhase::try_from(p).map_or("unknown".into(), |p| {
        enum_name(p.as_str_name(), "DRAIN_PHASE_")
    })
}

fn finished(p: i32) -> bool {
    matches!(
        DrainPhase::try_from(p),
        Ok(DrainPhase::Done | DrainPhase::Cancelled | DrainPhase::Idle)
    )
}

#[derive(Serialize)]
struct DrainRow<'a> {
    phase: String,
    request_id: &'a str,
    reason: &'a str,
    sessions_at_start: u64,
    remaining: u64,
    advised: u64,
    closed: u64,
    force_closed: u64,
    started_at_ms: u64,
    deadline_at_ms: u64,
}

fn view(s: &gw::DrainStatus) -> View {
    let table = Table::Fields(vec![
        ("phase", phase_name(s.phase)),
        ("request id", s.request_id.clone()),
        ("reason", s.reason.clone()),
        (
            "sessions",
            format!("{} of {} left", s.remaining, s.sessions_at_start),
        ),
        (
            "advised / closed / force-closed",
            format!("{} / {} / {}", s.advised, s.closed, s.force_closed),
        ),
        ("started", time(s.started_at_ms)),
        ("deadline", time(s.deadline_at_ms)),
    ]);
    let row = DrainRow {
        phase: phase_name(s.phase),
        request_id: &s.request_id,
        reason: &s.reason,
        sessions_at_start: s.sessions_at_start,
        remaining: s.remaining,
        advised: s.advised,
        closed: s.closed,
        force_closed: s.force_closed,
        started_at_ms: s.started_at_ms,
        deadline_at_ms: s.deadline_at_ms,
    };
    View::of(&row, table)
}

/// After a drain start: follow it (`--wait`), or this answer.
enum Started {
    Follow(Admin),
    Answer(View),
}

/// What a drain start asks for.
struct Start {
    request_id: String,
    deadline_ms: u64,
    spread_ms: u64,
    reason: String,
}

pub(super) async fn run(ctx: &Ctx, c: cli::Drain) -> anyhow::Result<(View, Status)> {
    match c {
        cli::Drain::Start {
            gateway_id,
            region,
            max_unavailable,
            deadline,
            spread,
            reason,
            request_id,
            wait,
            wait_timeout,
        } => {
            let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
            let start = Start {
                request_id: request_id.unwrap_or_default(),
                deadline_ms: ms(deadline),
                spread_ms: ms(spread),
                reason,
            };
            if let Some(region) = region {
                return drain_region(ctx, &region, start, max_unavailable, wait_timeout).await;
            }
            let started = match gateway_id {
                Some(id) => start_via_controlplane(ctx, &id, start, wait).await?,
                None => start_direct(ctx, start, wait).await?,
            };
            match started {
                Started::Follow(mut admin) => follow(&mut admin, wait_timeout).await,
                Started::Answer(view) => Ok((view, Status::Ok)),
            }
        }
        cli::Drain::Status => {
            let s = ctx
                .gw()
                .await?
                .get_drain(gw::GetDrainRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            Ok((view(&s), Status::Ok))
        }
        cli::Drain::Cancel => {
            let s = ctx
                .gw()
                .await?
                .cancel_drain(gw::CancelDrainRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            Ok((view(&s), Status::Ok))
        }
    }
}

#[derive(Serialize)]
struct StartedRow<'a> {
    gateway_id: &'a str,
    phase: String,
    sessions_at_start: u64,
}

/// Through the control plane (the operator needs only its token). Returns
/// the gateway's admin client to follow it with `--wait`.
async fn start_via_controlplane(
    ctx: &Ctx,
    id: &str,
    s: Start,
    wait: bool,
) -> anyhow::Result<Started> {
    let r = ctx
        .cp()
        .await?
        .drain_gateway(cp::DrainGatewayRequest {
            gateway_id: id.to_string(),
            request_id: s.request_id,
            deadline_ms: s.deadline_ms,
            spread_ms: s.spread_ms,
            reason: s.reason,
        })
        .await
        .map_err(explain)?
        .into_inner();
    if !wait {
        let lines = vec![format!(
            "drain of {} started: {} sessions, phase {}",
            r.gateway_id,
            r.sessions_at_start,
            phase_name(r.phase)
        )];
        let data = StartedRow {
            gateway_id: &r.gateway_id,
            phase: phase_name(r.phase),
            sessions_at_start: r.sessions_at_start,
        };
        return Ok(Started::Answer(View::of(&data, Table::Lines(lines))));
    }
    let fleet = list_gateways(ctx).await?;
    let g = fleet
        .gateways
        .iter()
        .find(|g| g.gateway_id == id)
        .ok_or_else(|| anyhow!("gateway {id:?} is not in the fleet list"))?;
    let admin = ctx
        .gw_at(&g.admin_addr)
        .await
        .with_context(|| format!("to follow the drain, gwctl reads {id}'s admin API"))?;
    Ok(Started::Follow(admin))
}

#[derive(Serialize)]
struct RegionRow {
    gateway_id: String,
    outcome: String,
    sessions_at_start: u64,
    force_closed: u64,
}

/// Every gateway of `region`, `batch` at a time, each followed to its end.
/// Re-running is safe: a finished drain is skipped, a running one joined,
/// and each gateway's start carries the same request id every run.
async fn drain_region(
    ctx: &Ctx,
    region: &str,
    s: Start,
    batch: u32,
    limit: Duration,
) -> anyhow::Result<(View, Status)> {
    let fleet = list_gateways(ctx).await?;
    let members: Vec<&cp::GatewayStatus> = fleet
        .gateways
        .iter()
        .filter(|g| g.region == region)
        .collect();
    if members.is_empty() {
        anyhow::bail!(
            "no live gateway in region {region:?} (gwctl fleet list shows each gateway's region)"
        );
    }
    let mut rows = Vec::new();
    let mut status = Status::Ok;
    for chunk in members.chunks(batch as usize) {
        let runs = chunk.iter().map(|g| drain_one(ctx, g, &s, region, limit));
        for r in futures_util::future::join_all(runs).await {
            let (row, st) = r?;
            if st == Status::Incomplete {
                status = Status::Incomplete;
            }
            rows.push(row);
        }
        if status == Status::Incomplete {
            // One still draining: do not take down more of the region.
            break;
        }
    }
    let lines = rows
        .iter()
        .map(|r: &RegionRow| {
            format!(
                "{}: {} ({} sessions at start, {} force-closed)",
                r.gateway_id, r.outcome, r.sessions_at_start, r.force_closed
            )
        })
        .collect();
    Ok((View::of(&rows, Table::Lines(lines)), status))
}

/// One gateway of a region drain: skip, join or start, then follow.
async fn drain_one(
    ctx: &Ctx,
    g: &cp::GatewayStatus,
    s: &Start,
    region: &str,
    limit: Duration,
) -> anyhow::Result<(RegionRow, Status)> {
    let id = &g.gateway_id;
    let mut admin = ctx
        .gw_at(&g.admin_addr)
        .await
        .with_context(|| format!("a region drain reads {id}'s admin API"))?;
    let now = admin
        .get_drain(gw::GetDrainRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    let row = |outcome: &str, st: &gw::DrainStatus| RegionRow {
        gateway_id: id.clone(),
        outcome: outcome.into(),
        sessions_at_start: st.sessions_at_start,
        force_closed: st.force_closed,
    };
    if DrainPhase::try_from(now.phase) == Ok(DrainPhase::Done) {
        return Ok((row("already drained", &now), Status::Ok));
    }
    let outcome = if finished(now.phase) {
        let request_id = if s.request_id.is_empty() {
            format!("drain-region-{region}-{id}")
        } else {
            format!("{}-{id}", s.request_id)
        };
        ctx.cp()
            .await?
            .drain_gateway(cp::DrainGatewayRequest {
                gateway_id: id.clone(),
                request_id,
                deadline_ms: s.deadline_ms,
                spread_ms: s.spread_ms,
                reason: s.reason.clone(),
            })
            .await
            .map_err(explain)?;
        "drained"
    } else {
        "drained (joined a running drain)"
    };
    let (_, st) = follow(&mut admin, limit).await?;
    let last = admin
        .get_drain(gw::GetDrainRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    let outcome = if st == Status::Ok {
        outcome
    } else {
        "still draining"
    };
    Ok((row(outcome, &last), st))
}

/// On the `--gateway` admin address.
async fn start_direct(ctx: &Ctx, s: Start, wait: bool) -> anyhow::Result<Started> {
    let mut admin = ctx.gw().await?;
    let st = admin
        .start_drain(gw::StartDrainRequest {
            request_id: s.request_id,
            deadline_ms: s.deadline_ms,
            spread_ms: s.spread_ms,
            reason: s.reason,
            reconnect_after_ms: 0,
        })
        .await
        .map_err(explain)?
        .into_inner();
    Ok(if wait {
        Started::Follow(admin)
    } else {
        Started::Answer(view(&st))
    })
}

/// Follows WatchDrain until the drain finishes (or `limit` passes: exit 2).
async fn follow(admin: &mut Admin, limit: Duration) -> anyhow::Result<(View, Status)> {
    let mut stream = admin
        .watch_drain(gw::WatchDrainRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    let until = tokio::time::Instant::now() + limit;
    let mut last = None;
    while let Ok(Some(next)) = tokio::time::timeout_at(until, stream.next()).await {
        let s = next.map_err(explain)?;
        progress(&format!(
            "{}: {}/{} sessions left (advised {}, closed {}, force-closed {})",
            phase_name(s.phase),
            s.remaining,
            s.sessions_at_start,
            s.advised,
            s.closed,
            s.force_closed
        ));
        let done = finished(s.phase);
        last = Some(s);
        if done {
            break;
        }
    }
    progress_done();
    let s = last.ok_or_else(|| anyhow!("the gateway sent no drain status"))?;
    let status = if finished(s.phase) {
        Status::Ok
    } else {
        Status::Incomplete
    };
    Ok((view(&s), status))
}
