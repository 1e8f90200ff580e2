//! `overrides`: cluster-wide ones in the control plane, `--local` ones on
//! one gateway. Both are shown as the same rows.

use anyhow::bail;
use gg_proto::pb::admin as gw;
use gg_proto::pb::controlplane as cp;
use serde::Serialize;

use super::{get_config, options, write_view};
use crate::cli;
use crate::ctx::{Ctx, explain};
use crate::out::{Table, View, opt, time};

/// One override, local or cluster (cluster ones have no session and no
/// creation time).
#[derive(Serialize)]
struct Row<'a> {
    id: &'a str,
    service_type: u32,
    user_id: u64,
    realm_id: u32,
    session_id: u64,
    target: &'a str,
    reason: &'a str,
    author: &'a str,
    expires_at_ms: u64,
    created_at_ms: u64,
}

fn row(o: &gw::RouteOverride) -> Row<'_> {
    Row {
        id: &o.id,
        service_type: o.service_type,
        user_id: o.user_id,
        realm_id: o.realm_id,
        session_id: o.session_id,
        target: &o.target,
        reason: &o.reason,
        author: &o.author,
        expires_at_ms: o.expires_at_ms,
        created_at_ms: o.created_at_ms,
    }
}

fn view(list: &[gw::RouteOverride]) -> View {
    View::list(
        "overrides",
        list,
        vec![
            "ID", "SERVICE", "USER", "REALM", "SESSION", "TARGET", "EXPIRES", "REASON",
        ],
        row,
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

pub(super) async fn run(ctx: &Ctx, c: cli::Overrides) -> anyhow::Result<View> {
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
            Ok(view(&list))
        }
        cli::Overrides::List { local: false } => list_cluster(ctx).await,
        cli::Overrides::Set(s) if s.local => set_local(ctx, s).await,
        cli::Overrides::Set(s) => set_cluster(ctx, s).await,
        cli::Overrides::Delete {
            id, local: true, ..
        } => {
            ctx.gw()
                .await?
                .delete_route_override(gw::DeleteRouteOverrideRequest { id: id.clone() })
                .await
                .map_err(explain)?;
            #[derive(Serialize)]
            struct Deleted<'a> {
                deleted: &'a str,
            }
            let lines = vec![format!("override {id} deleted on the gateway")];
            Ok(View::of(&Deleted { deleted: &id }, Table::Lines(lines)))
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

async fn list_cluster(ctx: &Ctx) -> anyhow::Result<View> {
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
    Ok(view(&list).with("revision", v.revision))
}

async fn set_local(ctx: &Ctx, s: cli::OverrideSet) -> anyhow::Result<View> {
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
    let lines = vec![format!(
        "override {} set on the gateway (expires {})",
        o.id,
        time(o.expires_at_ms)
    )];
    Ok(View::of(&row(&o), Table::Lines(lines)))
}

async fn set_cluster(ctx: &Ctx, s: cli::OverrideSet) -> anyhow::Result<View> {
    if s.session != 0 || s.move_existing {
        bail!("--session and --move-existing apply to one gateway's overrides: add --local");
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
