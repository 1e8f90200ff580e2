//! One function per command: call the API, build a [`View`].

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures_util::StreamExt;
use gg_proto::model::{Bundle, Strategy};
use gg_proto::pb::admin as gw;
use gg_proto::pb::common::{DrainPhase, GatewayState};
use gg_proto::pb::controlplane as cp;
use serde_json::{Value, json};

use crate::cli::{self, Cmd, Format, WriteArgs};
use crate::ctx::{Ctx, explain};
use crate::out::{Table, View, dur, opt, time};

/// Exit status of a command that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// A diff exists (`diff`) or an operation is not complete (`--wait`).
    Incomplete,
}

pub async fn run(ctx: &Ctx, cmd: Cmd, format: Format) -> anyhow::Result<Status> {
    let (view, status) = match cmd {
        Cmd::Routes(c) => (routes(ctx, c).await?, Status::Ok),
        Cmd::Realms(c) => (realms(ctx, c).await?, Status::Ok),
        Cmd::Overrides(c) => (overrides(ctx, c).await?, Status::Ok),
        Cmd::Apply(a) => {
            let bundle = read_bundle(&a.file.file)?;
            let r = ctx
                .cp()
                .await?
                .apply(cp::ApplyRequest {
                    bundle: Some(bundle),
                    options: Some(options(&a.write)),
                })
                .await
                .map_err(explain)?
                .into_inner();
            (write_view(&r), Status::Ok)
        }
        Cmd::Diff(f) => {
            let bundle = read_bundle(&f.file)?;
            let r = ctx
                .cp()
                .await?
                .apply(cp::ApplyRequest {
                    bundle: Some(bundle),
                    options: Some(options(&WriteArgs {
                        dry_run: true,
                        ..WriteArgs::default()
                    })),
                })
                .await
                .map_err(explain)?
                .into_inner();
            let status = if r.unchanged || r.diff.is_empty() {
                Status::Ok
            } else {
                Status::Incomplete
            };
            (write_view(&r), status)
        }
        Cmd::Dump => {
            let v = get_config(ctx).await?;
            let file = bundle_file(&v.bundle.unwrap_or_default())?;
            let data = serde_json::to_value(&file)?;
            // A dump is meant for `apply -f`: YAML unless JSON is asked for.
            let text = match format {
                Format::Json => format!("{}\n", serde_json::to_string_pretty(&data)?),
                _ => format!(
                    "# revision {} (epoch {})\n{}",
                    v.revision,
                    v.epoch,
                    yaml_serde::to_string(&data)?
                ),
            };
            print!("{text}");
            return Ok(Status::Ok);
        }
        Cmd::History { limit } => (history(ctx, limit).await?, Status::Ok),
        Cmd::Rollback { revision, write } => {
            let r = ctx
                .cp()
                .await?
                .rollback(cp::RollbackRequest {
                    to_revision: revision,
                    options: Some(options(&write)),
                })
                .await
                .map_err(explain)?
                .into_inner();
            (write_view(&r), Status::Ok)
        }
        Cmd::Rollout(cli::Rollout::Status {
            revision,
            wait,
            wait_timeout,
        }) => rollout(ctx, revision, wait, wait_timeout).await?,
        Cmd::Fleet(cli::Fleet::List) => (fleet(ctx).await?, Status::Ok),
        Cmd::Drain(c) => drain(ctx, c).await?,
        Cmd::Sessions(c) => (sessions(ctx, c).await?, Status::Ok),
        Cmd::Backends(c) => (backends(ctx, c).await?, Status::Ok),
        Cmd::Info => (info(ctx).await?, Status::Ok),
        Cmd::Completions { .. } => unreachable!("handled before connecting"),
    };
    print!("{}", view.render(format)?);
    Ok(status)
}

fn options(w: &WriteArgs) -> cp::WriteOptions {
    cp::WriteOptions {
        expected_revision: w.expected_revision.unwrap_or(0),
        dry_run: w.dry_run,
        author: String::new(),
        comment: w.comment.clone().unwrap_or_default(),
    }
}

fn write_view(r: &cp::WriteResponse) -> View {
    let mut lines = r.diff.clone();
    lines.push(if r.dry_run {
        format!(
            "dry run: nothing written (revision {}){}",
            r.revision,
            if r.unchanged { "; no changes" } else { "" }
        )
    } else if r.unchanged {
        format!("unchanged: revision {}", r.revision)
    } else {
        format!("written: revision {}", r.revision)
    });
    View {
        data: json!({
            "revision": r.revision,
            "epoch": r.epoch,
            "diff": r.diff,
            "dry_run": r.dry_run,
            "unchanged": r.unchanged,
        }),
        table: Table::Lines(lines),
    }
}

async fn get_config(ctx: &Ctx) -> anyhow::Result<cp::Versioned> {
    Ok(ctx
        .cp()
        .await?
        .get_config(cp::GetConfigRequest {})
        .await
        .map_err(explain)?
        .into_inner())
}

// ---------- the bundle file of apply / diff / dump ----------

/// The file `apply -f` reads and `dump` writes is the domain model's
/// [`Bundle`] (unknown keys rejected): the same type the control plane
/// validates and gateways apply. Services are listed by id.
fn bundle_file(b: &cp::ConfigBundle) -> anyhow::Result<Bundle> {
    let mut f = Bundle::from_pb(b)
        .map_err(|e| anyhow!("the control plane returned a bundle this gwctl cannot read: {e}"))?;
    f.services.sort_by_key(|s| s.id);
    Ok(f)
}

/// A strategy's name, or `unspecified`.
fn strategy_name(v: i32) -> &'static str {
    Strategy::from_pb(v).map_or("unspecified", Strategy::name)
}

/// `SYNC_STATUS_IN_SYNC` → `in_sync`: the lower-case name without the
/// enum's prefix, as shown in tables and JSON.
fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// Reads a bundle file (YAML, which also reads JSON). Unknown keys are
/// errors, so a typo never silently drops part of the routing.
pub fn read_bundle(path: &std::path::Path) -> anyhow::Result<cp::ConfigBundle> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let f: Bundle = yaml_serde::from_str(&text)
        .map_err(|e| anyhow!("{} is not a valid bundle file: {e}", path.display()))?;
    Ok(f.to_pb())
}

// ---------- routes, realms, overrides ----------

fn service_json(s: &cp::Service) -> Value {
    json!({"name": s.name, "id": s.id, "strategy": strategy_name(s.strategy), "endpoints": s.endpoints})
}

fn services_view(mut list: Vec<cp::Service>, revision: u64) -> View {
    list.sort_by_key(|s| s.id);
    View::list(
        "services",
        &list,
        vec!["NAME", "ID", "STRATEGY", "ENDPOINTS"],
        service_json,
        |s| {
            vec![
                s.name.clone(),
                s.id.to_string(),
                strategy_name(s.strategy).to_string(),
                s.endpoints.join(","),
            ]
        },
    )
    .with("revision", revision)
}

async fn routes(ctx: &Ctx, c: cli::Routes) -> anyhow::Result<View> {
    match c {
        cli::Routes::List => {
            let v = get_config(ctx).await?;
            Ok(services_view(
                v.bundle.unwrap_or_default().services,
                v.revision,
            ))
        }
        cli::Routes::Get { name } => {
            let v = get_config(ctx).await?;
            let s = v
                .bundle
                .unwrap_or_default()
                .services
                .into_iter()
                .find(|s| s.name == name)
                .ok_or_else(|| {
                    anyhow!("no service named {name:?}; `gwctl routes list` shows them")
                })?;
            Ok(View {
                data: service_json(&s),
                table: Table::Fields(vec![
                    ("name", s.name.clone()),
                    ("id", s.id.to_string()),
                    ("strategy", strategy_name(s.strategy).to_string()),
                    ("endpoints", s.endpoints.join(", ")),
                ]),
            })
        }
        cli::Routes::Set {
            name,
            id,
            strategy,
            endpoints,
            write,
        } => {
            let r = ctx
                .cp()
                .await?
                .put_service(cp::PutServiceRequest {
                    service: Some(cp::Service {
                        name,
                        id,
                        strategy: strategy.to_pb(),
                        endpoints,
                    }),
                    options: Some(options(&write)),
                })
                .await
                .map_err(explain)?
                .into_inner();
            Ok(write_view(&r))
        }
        cli::Routes::Delete { name, write } => {
            let r = ctx
                .cp()
                .await?
                .delete_service(cp::DeleteServiceRequest {
                    name,
                    options: Some(options(&write)),
                })
                .await
                .map_err(explain)?
                .into_inner();
            Ok(write_view(&r))
        }
        cli::Routes::Explain {
            service,
            user,
            realm,
            session,
        } => {
            let r = ctx
                .gw()
                .await?
                .explain_route(gw::ExplainRouteRequest {
                    service_type: service,
                    realm_id: realm,
                    user_id: user,
                    session_id: session,
                })
                .await
                .map_err(explain)?
                .into_inner();
            Ok(View {
                data: json!({
                    "service": r.service, "strategy": strategy_name(r.strategy), "override_id": r.override_id,
                    "hash_key": r.hash_key, "endpoint": r.endpoint, "endpoint_healthy": r.endpoint_healthy,
                    "circuit": r.circuit, "endpoint_state": r.endpoint_state, "why": r.why,
                    "candidates": r.candidates,
                }),
                table: Table::Fields(vec![
                    ("service", r.service.clone()),
                    ("strategy", strategy_name(r.strategy).to_string()),
                    ("endpoint", r.endpoint.clone()),
                    (
                        "healthy",
                        format!(
                            "{} (circuit {}, state {})",
                            r.endpoint_healthy, r.circuit, r.endpoint_state
                        ),
                    ),
                    (
                        "override",
                        if r.override_id.is_empty() {
                            "-".into()
                        } else {
                            r.override_id.clone()
                        },
                    ),
                    (
                        "hash key",
                        if r.hash_key.is_empty() {
                            "-".into()
                        } else {
                            r.hash_key.clone()
                        },
                    ),
                    ("candidates", r.candidates.join(", ")),
                    ("why", r.why.clone()),
                ]),
            })
        }
    }
}

async fn realms(ctx: &Ctx, c: cli::Realms) -> anyhow::Result<View> {
    let r = match c {
        cli::Realms::List => {
            let v = get_config(ctx).await?;
            let realms: BTreeMap<u32, String> =
                v.bundle.unwrap_or_default().realms.into_iter().collect();
            return Ok(View {
                data: json!({"revision": v.revision, "realms": realms}),
                table: Table::Rows {
                    headers: vec!["REALM", "ENDPOINT"],
                    rows: realms
                        .iter()
                        .map(|(k, v)| vec![k.to_string(), v.clone()])
                        .collect(),
                },
            });
        }
        cli::Realms::Set {
            realm,
            endpoint,
            write,
        } => {
            ctx.cp()
                .await?
                .put_realm(cp::PutRealmRequest {
                    realm_id: realm,
                    endpoint,
                    options: Some(options(&write)),
                })
                .await
        }
        cli::Realms::Delete { realm, write } => {
            ctx.cp()
                .await?
                .delete_realm(cp::DeleteRealmRequest {
                    realm_id: realm,
                    options: Some(options(&write)),
                })
                .await
        }
    };
    Ok(write_view(&r.map_err(explain)?.into_inner()))
}

fn local_override_json(o: &gw::RouteOverride) -> Value {
    json!({
        "id": o.id, "service_type": o.service_type, "user_id": o.user_id, "realm_id": o.realm_id,
        "session_id": o.session_id, "target": o.target, "reason": o.reason, "author": o.author,
        "expires_at_ms": o.expires_at_ms, "created_at_ms": o.created_at_ms,
    })
}

/// Local and cluster overrides, shown the same way (cluster ones have no
/// session and no creation time).
fn overrides_view(list: &[gw::RouteOverride]) -> View {
    View::list(
        "overrides",
        list,
        vec![
            "ID", "SERVICE", "USER", "REALM", "SESSION", "TARGET", "EXPIRES", "REASON",
        ],
        local_override_json,
        |o| {
            vec![
                o.id.clone(),
                o.service_type.to_string(),
                opt(o.user_id),
                opt(o.realm_id.into()),
                opt(o.session_id),
                o.target.clone(),
                time(o.expires_at_ms),
                o.reason.clone(),
            ]
        },
    )
}

async fn overrides(ctx: &Ctx, c: cli::Overrides) -> anyhow::Result<View> {
    match c {
        cli::Overrides::List { local: true } => {
            let list = ctx
                .gw()
                .await?
                .list_route_overrides(gw::ListRouteOverridesRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .overrides;
            Ok(overrides_view(&list))
        }
        cli::Overrides::List { local: false } => {
            let v = get_config(ctx).await?;
            let list: Vec<gw::RouteOverride> = v
                .bundle
                .unwrap_or_default()
                .overrides
                .into_iter()
                .map(|o| gw::RouteOverride {
                    id: o.id,
                    service_type: o.service_type,
                    user_id: o.user_id,
                    realm_id: o.realm_id,
                    target: o.target,
                    reason: o.reason,
                    author: o.author,
                    expires_at_ms: o.expires_at_ms,
                    ..Default::default()
                })
                .collect();
            Ok(overrides_view(&list).with("revision", v.revision))
        }
        cli::Overrides::Set(s) if s.local => {
            let o = ctx
                .gw()
                .await?
                .set_route_override(gw::SetRouteOverrideRequest {
                    r#override: Some(gw::RouteOverride {
                        service_type: s.service,
                        user_id: s.user,
                        realm_id: s.realm,
                        session_id: s.session,
                        target: s.target,
                        reason: s.reason,
                        ttl_ms: s.ttl.map_or(0, |d| d.as_millis() as u64),
                        move_existing: s.move_existing,
                        ..Default::default()
                    }),
                })
                .await
                .map_err(explain)?
                .into_inner();
            Ok(View {
                data: local_override_json(&o),
                table: Table::Lines(vec![format!(
                    "override {} set on the gateway (expires {})",
                    o.id,
                    time(o.expires_at_ms)
                )]),
            })
        }
        cli::Overrides::Set(s) => {
            if s.session != 0 || s.move_existing {
                bail!(
                    "--session and --move-existing apply to one gateway's overrides: add --local"
                );
            }
            let r = ctx
                .cp()
                .await?
                .put_override(cp::PutOverrideRequest {
                    r#override: Some(cp::ClusterOverride {
                        service_type: s.service,
                        user_id: s.user,
                        realm_id: s.realm,
                        target: s.target,
                        reason: s.reason,
                        ..Default::default()
                    }),
                    ttl_ms: s.ttl.map_or(0, |d| d.as_millis() as u64),
                    options: Some(options(&s.write)),
                })
                .await
                .map_err(explain)?
                .into_inner();
            Ok(write_view(&r))
        }
        cli::Overrides::Delete {
            id, local: true, ..
        } => {
            ctx.gw()
                .await?
                .delete_route_override(gw::DeleteRouteOverrideRequest { id: id.clone() })
                .await
                .map_err(explain)?;
            Ok(View {
                data: json!({"deleted": id}),
                table: Table::Lines(vec![format!("override {id} deleted on the gateway")]),
            })
        }
        cli::Overrides::Delete { id, write, .. } => {
            let r = ctx
                .cp()
                .await?
                .delete_override(cp::DeleteOverrideRequest {
                    id,
                    options: Some(options(&write)),
                })
                .await
                .map_err(explain)?
                .into_inner();
            Ok(write_view(&r))
        }
    }
}

async fn history(ctx: &Ctx, limit: u32) -> anyhow::Result<View> {
    let recs = ctx
        .cp()
        .await?
        .history(cp::HistoryRequest { limit })
        .await
        .map_err(explain)?
        .into_inner()
        .records;
    Ok(View::list(
        "records",
        &recs,
        vec!["REVISION", "AT", "AUTHOR", "COMMENT", "CHANGES"],
        |r| {
            json!({
                "revision": r.revision, "author": r.author, "at_ms": r.at_ms,
                "comment": r.comment, "diff": r.diff,
            })
        },
        |r| {
            vec![
                r.revision.to_string(),
                time(r.at_ms),
                r.author.clone(),
                r.comment.clone(),
                r.diff.join("; "),
            ]
        },
    ))
}

// ---------- fleet and rollout ----------

async fn list_gateways(ctx: &Ctx) -> anyhow::Result<cp::ListGatewaysResponse> {
    Ok(ctx
        .cp()
        .await?
        .list_gateways(cp::ListGatewaysRequest {})
        .await
        .map_err(explain)?
        .into_inner())
}

async fn fleet(ctx: &Ctx) -> anyhow::Result<View> {
    let r = list_gateways(ctx).await?;
    let current = r.revision;
    Ok(View::list(
        "gateways",
        &r.gateways,
        vec![
            "GATEWAY",
            "STATE",
            "SYNC",
            "REVISION",
            "SESSIONS",
            "ADMIN",
            "VERSION",
            "CONTROLPLANE",
        ],
        |g| {
            json!({
                "gateway_id": g.gateway_id, "client_addr": g.client_addr, "admin_addr": g.admin_addr,
                "version": g.version, "state": state_name(g.state), "applied_revision": g.applied_revision,
                "sync_status": sync_name(g.sync_status), "last_error": g.last_error, "sessions": g.sessions,
                "last_seen_ms": g.last_seen_ms, "connected_to": g.connected_to,
            })
        },
        |g| {
            vec![
                g.gateway_id.clone(),
                state_name(g.state),
                if g.last_error.is_empty() {
                    sync_name(g.sync_status)
                } else {
                    format!("{} ({})", sync_name(g.sync_status), g.last_error)
                },
                format!("{}/{current}", g.applied_revision),
                g.sessions.to_string(),
                g.admin_addr.clone(),
                g.version.clone(),
                g.connected_to.clone(),
            ]
        },
    )
    .with("revision", r.revision)
    .with("epoch", r.epoch))
}

async fn rollout(
    ctx: &Ctx,
    revision: u64,
    wait: bool,
    wait_timeout: Duration,
) -> anyhow::Result<(View, Status)> {
    let mut client = ctx.cp().await?;
    let until = Instant::now() + wait_timeout;
    let r = loop {
        let r = client
            .rollout_status(cp::RolloutStatusRequest { revision })
            .await
            .map_err(explain)?
            .into_inner();
        if !wait || r.pending == 0 || Instant::now() >= until {
            break r;
        }
        progress(&format!(
            "revision {}: {} applied, {} rejected, {} pending",
            r.revision, r.applied, r.rejected, r.pending
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    progress_done();
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
    let view = View::list(
        "gateways",
        &r.gateways,
        vec!["GATEWAY", "STATUS", "APPLIED", "ERROR"],
        |g| {
            json!({
                "gateway_id": g.gateway_id, "status": rollout_name(g.status),
                "applied_revision": g.applied_revision, "error": g.error,
            })
        },
        |g| {
            vec![
                g.gateway_id.clone(),
                rollout_name(g.status),
                g.applied_revision.to_string(),
                g.error.clone(),
            ]
        },
    )
    .with("revision", r.revision)
    .with("applied", r.applied)
    .with("rejected", r.rejected)
    .with("pending", r.pending);
    Ok((view, status))
}

// ---------- drain ----------

fn phase_name(p: i32) -> String {
    DrainPhase::try_from(p).map_or("unknown".into(), |p| {
        enum_name(p.as_str_name(), "DRAIN_PHASE_")
    })
}

fn rollout_name(s: i32) -> String {
    cp::RolloutStatus::try_from(s).map_or("unknown".into(), |s| {
        enum_name(s.as_str_name(), "ROLLOUT_STATUS_")
    })
}

fn sync_name(s: i32) -> String {
    cp::SyncStatus::try_from(s).map_or("unknown".into(), |s| {
        enum_name(s.as_str_name(), "SYNC_STATUS_")
    })
}

fn state_name(s: i32) -> String {
    GatewayState::try_from(s).map_or("unknown".into(), |s| {
        enum_name(s.as_str_name(), "GATEWAY_STATE_")
    })
}

fn drain_view(s: &gw::DrainStatus) -> View {
    View {
        data: json!({
            "phase": phase_name(s.phase), "request_id": s.request_id, "reason": s.reason,
            "sessions_at_start": s.sessions_at_start, "remaining": s.remaining,
            "advised": s.advised, "closed": s.closed, "force_closed": s.force_closed,
            "started_at_ms": s.started_at_ms, "deadline_at_ms": s.deadline_at_ms,
        }),
        table: Table::Fields(vec![
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
        ]),
    }
}

fn drain_finished(p: i32) -> bool {
    matches!(
        DrainPhase::try_from(p),
        Ok(DrainPhase::Done | DrainPhase::Cancelled | DrainPhase::Idle)
    )
}

async fn drain(ctx: &Ctx, c: cli::Drain) -> anyhow::Result<(View, Status)> {
    match c {
        cli::Drain::Start {
            gateway_id,
            deadline,
            spread,
            reason,
            request_id,
            wait,
            wait_timeout,
        } => {
            let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
            let request_id = request_id.unwrap_or_default();
            let mut admin = match gateway_id {
                Some(id) => {
                    // Through the control plane: the operator needs only its token.
                    let r = ctx
                        .cp()
                        .await?
                        .drain_gateway(cp::DrainGatewayRequest {
                            gateway_id: id.clone(),
                            request_id,
                            deadline_ms: ms(deadline),
                            spread_ms: ms(spread),
                            reason,
                        })
                        .await
                        .map_err(explain)?
                        .into_inner();
                    let started = View {
                        data: json!({"gateway_id": r.gateway_id, "phase": phase_name(r.phase), "sessions_at_start": r.sessions_at_start}),
                        table: Table::Lines(vec![format!(
                            "drain of {} started: {} sessions, phase {}",
                            r.gateway_id,
                            r.sessions_at_start,
                            phase_name(r.phase)
                        )]),
                    };
                    if !wait {
                        return Ok((started, Status::Ok));
                    }
                    let fleet = list_gateways(ctx).await?;
                    let g = fleet
                        .gateways
                        .iter()
                        .find(|g| g.gateway_id == id)
                        .ok_or_else(|| anyhow!("gateway {id:?} is not in the fleet list"))?;
                    ctx.gw_at(&g.admin_addr).await.with_context(|| {
                        format!("to follow the drain, gwctl reads {id}'s admin API")
                    })?
                }
                None => {
                    let mut admin = ctx.gw().await?;
                    let s = admin
                        .start_drain(gw::StartDrainRequest {
                            request_id,
                            deadline_ms: ms(deadline),
                            spread_ms: ms(spread),
                            reason,
                            reconnect_after_ms: 0,
                        })
                        .await
                        .map_err(explain)?
                        .into_inner();
                    if !wait {
                        return Ok((drain_view(&s), Status::Ok));
                    }
                    admin
                }
            };
            follow_drain(&mut admin, wait_timeout).await
        }
        cli::Drain::Status => {
            let s = ctx
                .gw()
                .await?
                .get_drain(gw::GetDrainRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            Ok((drain_view(&s), Status::Ok))
        }
        cli::Drain::Cancel => {
            let s = ctx
                .gw()
                .await?
                .cancel_drain(gw::CancelDrainRequest {})
                .await
                .map_err(explain)?
                .into_inner();
            Ok((drain_view(&s), Status::Ok))
        }
    }
}

/// Follows WatchDrain until the drain finishes (or `limit` passes: exit 2).
async fn follow_drain(
    admin: &mut gg_proto::pb::admin::gateway_admin_client::GatewayAdminClient<crate::ctx::Auth>,
    limit: Duration,
) -> anyhow::Result<(View, Status)> {
    let mut stream = admin
        .watch_drain(gw::WatchDrainRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    let until = tokio::time::Instant::now() + limit;
    let mut last = None;
    loop {
        let next = tokio::time::timeout_at(until, stream.next()).await;
        match next {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(explain(e)),
            Ok(Some(Ok(s))) => {
                progress(&format!(
                    "{}: {}/{} sessions left (advised {}, closed {}, force-closed {})",
                    phase_name(s.phase),
                    s.remaining,
                    s.sessions_at_start,
                    s.advised,
                    s.closed,
                    s.force_closed
                ));
                let done = drain_finished(s.phase);
                last = Some(s);
                if done {
                    break;
                }
            }
        }
    }
    progress_done();
    let s = last.ok_or_else(|| anyhow!("the gateway sent no drain status"))?;
    let status = if drain_finished(s.phase) {
        Status::Ok
    } else {
        Status::Incomplete
    };
    Ok((drain_view(&s), status))
}

/// A progress line on stderr: redrawn in place on a terminal, one line per
/// update otherwise (so CI logs stay readable).
fn progress(msg: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{msg}");
    } else {
        eprintln!("{msg}");
    }
}

fn progress_done() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}

// ---------- sessions ----------

fn session_json(s: &gw::Session) -> Value {
    json!({
        "session_id": s.session_id, "display_id": s.display_id, "user_id": s.user_id,
        "realm_id": s.realm_id, "protocol": s.protocol, "remote_addr": s.remote_addr,
        "age_ms": s.age_ms,
        "bindings": s.bindings.iter().map(|b| json!({"service_type": b.service_type, "endpoint": b.endpoint})).collect::<Vec<_>>(),
    })
}

fn bindings(s: &gw::Session) -> String {
    if s.bindings.is_empty() {
        return "-".into();
    }
    s.bindings
        .iter()
        .map(|b| format!("{}→{}", b.service_type, b.endpoint))
        .collect::<Vec<_>>()
        .join(",")
}

fn selector(user: u64, realm: u32, service: u32, protocol: String) -> Option<gw::SessionSelector> {
    (user != 0 || realm != 0 || service != 0 || !protocol.is_empty()).then_some(
        gw::SessionSelector {
            user_id: user,
            realm_id: realm,
            service_type: service,
            protocol,
        },
    )
}

async fn sessions(ctx: &Ctx, c: cli::Sessions) -> anyhow::Result<View> {
    match c {
        cli::Sessions::Get { id } => {
            let s = ctx
                .gw()
                .await?
                .get_session(gw::GetSessionRequest { session_id: id })
                .await
                .map_err(explain)?
                .into_inner();
            Ok(View {
                data: session_json(&s),
                table: Table::Fields(vec![
                    ("session", format!("{} ({})", s.session_id, s.display_id)),
                    ("user", s.user_id.to_string()),
                    ("realm", opt(s.realm_id.into())),
                    ("protocol", s.protocol.clone()),
                    ("remote", s.remote_addr.clone()),
                    ("age", dur(s.age_ms)),
                    ("bindings", bindings(&s)),
                ]),
            })
        }
        cli::Sessions::List {
            user,
            realm,
            service,
            protocol,
            limit,
        } => {
            let mut admin = ctx.gw().await?;
            let mut all = Vec::new();
            let mut token = String::new();
            let mut total;
            loop {
                let r = admin
                    .list_sessions(gw::ListSessionsRequest {
                        user_id: user,
                        realm_id: realm,
                        service_type: service,
                        protocol: protocol.clone(),
                        page_size: (limit - all.len()).clamp(1, 1000) as u32,
                        page_token: token,
                    })
                    .await
                    .map_err(explain)?
                    .into_inner();
                total = r.total;
                all.extend(r.sessions);
                token = r.next_page_token;
                if token.is_empty() || all.len() >= limit {
                    break;
                }
            }
            all.truncate(limit);
            if total as usize > all.len() {
                eprintln!(
                    "{} of {total} sessions shown; raise --limit for more",
                    all.len()
                );
            }
            Ok(View::list(
                "sessions",
                &all,
                vec![
                    "SESSION", "USER", "REALM", "PROTO", "REMOTE", "AGE", "BINDINGS",
                ],
                session_json,
                |s| {
                    vec![
                        s.session_id.to_string(),
                        s.user_id.to_string(),
                        opt(s.realm_id.into()),
                        s.protocol.clone(),
                        s.remote_addr.clone(),
                        dur(s.age_ms),
                        bindings(s),
                    ]
                },
            )
            .with("total", total))
        }
        cli::Sessions::Kick {
            ids,
            user,
            realm,
            service,
            protocol,
            code,
            reason,
            dry_run,
            rate,
        } => {
            let selector = selector(user, realm, service, protocol);
            if ids.is_empty() && selector.is_none() {
                bail!("name the sessions to kick: give ids, or filters such as --user or --realm");
            }
            let r = ctx
                .gw()
                .await?
                .kick_sessions(gw::KickSessionsRequest {
                    session_ids: ids,
                    selector,
                    code,
                    reason,
                    dry_run,
                    rate_per_sec: rate,
                })
                .await
                .map_err(explain)?
                .into_inner();
            let mut lines = vec![if dry_run {
                format!("dry run: {} sessions match; none kicked", r.matched)
            } else {
                format!("kicked {} of {} matching sessions", r.kicked, r.matched)
            }];
            if !r.not_found.is_empty() {
                lines.push(format!(
                    "not found: {}",
                    r.not_found
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Ok(View {
                data: json!({"matched": r.matched, "kicked": r.kicked, "not_found": r.not_found, "dry_run": dry_run}),
                table: Table::Lines(lines),
            })
        }
        cli::Sessions::Push {
            session,
            user,
            service,
            seq,
            payload,
        } => {
            if (session == 0) == (user == 0) {
                bail!("push to exactly one of --session or --user");
            }
            let payload = match payload.strip_prefix('@') {
                Some(path) => std::fs::read(path).with_context(|| format!("cannot read {path}"))?,
                None => payload.into_bytes(),
            };
            let r = ctx
                .gw()
                .await?
                .push(gw::PushRequest {
                    session_id: session,
                    user_id: user,
                    service_type: service,
                    seq,
                    payload,
                })
                .await
                .map_err(explain)?
                .into_inner();
            Ok(View {
                data: json!({"delivered": r.delivered, "failed": r.failed}),
                table: Table::Lines(vec![format!(
                    "delivered to {} sessions{}",
                    r.delivered.len(),
                    if r.failed.is_empty() {
                        String::new()
                    } else {
                        format!("; failed for {} (queue full or closing)", r.failed.len())
                    }
                )]),
            })
        }
        cli::Sessions::Lookup { id, user } => {
            let mut dir = ctx.directory().await?;
            let owners = match (id, user) {
                (Some(id), None) => dir
                    .lookup(cp::LookupRequest { session_id: id })
                    .await
                    .map_err(explain)?
                    .into_inner()
                    .ownership
                    .into_iter()
                    .collect::<Vec<_>>(),
                (None, Some(user)) => {
                    dir.lookup_user(cp::LookupUserRequest { user_id: user })
                        .await
                        .map_err(explain)?
                        .into_inner()
                        .sessions
                }
                _ => bail!("look up either a session id or --user, not both"),
            };
            Ok(View::list(
                "sessions",
                &owners,
                vec!["SESSION", "USER", "GATEWAY", "ADMIN", "SINCE"],
                |o| {
                    json!({
                        "session_id": o.session_id, "user_id": o.user_id, "gateway_id": o.gateway_id,
                        "gateway_admin_addr": o.gateway_admin_addr, "epoch": o.epoch,
                    })
                },
                |o| {
                    vec![
                        o.session_id.to_string(),
                        o.user_id.to_string(),
                        o.gateway_id.clone(),
                        o.gateway_admin_addr.clone(),
                        time(o.epoch),
                    ]
                },
            ))
        }
    }
}

// ---------- backends and info ----------

fn backend_json(b: &gw::Backend) -> Value {
    json!({
        "endpoint": b.endpoint, "connections_up": b.connections_up, "connections": b.connections,
        "sessions": b.sessions, "in_flight": b.in_flight, "circuit": b.circuit, "state": b.state,
        "unknown_session_replies": b.unknown_session_replies, "consecutive_failures": b.consecutive_failures,
    })
}

async fn backends(ctx: &Ctx, c: cli::Backends) -> anyhow::Result<View> {
    let mut admin = ctx.gw().await?;
    match c {
        cli::Backends::List => {
            let list = admin
                .list_backends(gw::ListBackendsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .backends;
            Ok(View::list(
                "backends",
                &list,
                vec![
                    "ENDPOINT", "STATE", "CIRCUIT", "CONNS", "SESSIONS", "QUEUED", "FAILURES",
                ],
                backend_json,
                |b| {
                    vec![
                        b.endpoint.clone(),
                        b.state.clone(),
                        b.circuit.clone(),
                        format!("{}/{}", b.connections_up, b.connections),
                        b.sessions.to_string(),
                        b.in_flight.to_string(),
                        b.consecutive_failures.to_string(),
                    ]
                },
            ))
        }
        cli::Backends::SetState { endpoint, state } => {
            let b = admin
                .set_backend_state(gw::SetBackendStateRequest { endpoint, state })
                .await
                .map_err(explain)?
                .into_inner();
            Ok(View {
                data: backend_json(&b),
                table: Table::Lines(vec![format!("{} is now {}", b.endpoint, b.state)]),
            })
        }
    }
}

async fn info(ctx: &Ctx) -> anyhow::Result<View> {
    let i = ctx
        .gw()
        .await?
        .get_info(gw::GetInfoRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    Ok(View {
        data: json!({
            "gateway_id": i.gateway_id, "version": i.version, "client_addr": i.client_addr,
            "ops_addr": i.ops_addr, "admin_addr": i.admin_addr, "ready": i.ready,
            "not_ready_reason": i.not_ready_reason, "draining": i.draining, "sessions": i.sessions,
            "connections": i.connections, "uptime_ms": i.uptime_ms, "resume_enabled": i.resume_enabled,
            "config_revision": i.config_revision, "config_epoch": i.config_epoch,
        }),
        table: Table::Fields(vec![
            ("gateway", i.gateway_id.clone()),
            ("version", i.version.clone()),
            (
                "ready",
                if i.ready {
                    "yes".to_string()
                } else {
                    format!("no ({})", i.not_ready_reason)
                },
            ),
            ("draining", i.draining.to_string()),
            ("sessions", i.sessions.to_string()),
            ("connections", i.connections.to_string()),
            ("uptime", dur(i.uptime_ms)),
            (
                "client / ops / admin",
                format!("{} / {} / {}", i.client_addr, i.ops_addr, i.admin_addr),
            ),
            ("config revision", opt(i.config_revision)),
        ]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_file_round_trips_and_rejects_typos() {
        let text = "services:\n  - { name: account, id: 1, strategy: consistent_hash, endpoints: [a:1, b:2] }\nrealms: { 7: g:1 }\n";
        let f: Bundle = yaml_serde::from_str(text).expect("parses");
        let b = f.to_pb();
        assert_eq!(b.services[0].endpoints, vec!["a:1", "b:2"]);
        assert_eq!(b.realms.get(&7).map(String::as_str), Some("g:1"));
        let back = bundle_file(&b).expect("valid");
        assert_eq!(back, f);
        let e = yaml_serde::from_str::<Bundle>(
            "services:\n  - { name: a, id: 1, strategy: round_robin, endpoint: [a:1] }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("endpoint"), "{e}");
        assert!(yaml_serde::from_str::<Bundle>("servics: []\n").is_err());
    }

    #[test]
    fn enum_names_drop_their_prefix() {
        assert_eq!(
            enum_name(cp::SyncStatus::InSync.as_str_name(), "SYNC_STATUS_"),
            "in_sync"
        );
        assert_eq!(strategy_name(0), "unspecified");
        assert_eq!(strategy_name(Strategy::Realm.to_pb()), "realm");
    }
}
