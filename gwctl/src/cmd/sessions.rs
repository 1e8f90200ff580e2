//! `sessions get | list | kick | push | lookup`.

use anyhow::{Context as _, bail};
use gg_proto::pb::admin as gw;
use gg_proto::pb::controlplane as cp;
use serde::Serialize;

use crate::cli;
use crate::ctx::{Ctx, explain};
use crate::out::{Table, View, dur, opt, time};

#[derive(Serialize)]
struct Binding<'a> {
    service_type: u32,
    endpoint: &'a str,
}

#[derive(Serialize)]
struct SessionRow<'a> {
    session_id: u64,
    display_id: &'a str,
    user_id: u64,
    realm_id: u32,
    protocol: &'a str,
    remote_addr: &'a str,
    age_ms: u64,
    bindings: Vec<Binding<'a>>,
}

fn session_row(s: &gw::Session) -> SessionRow<'_> {
    SessionRow {
        session_id: s.session_id,
        display_id: &s.display_id,
        user_id: s.user_id,
        realm_id: s.realm_id,
        protocol: &s.protocol,
        remote_addr: &s.remote_addr,
        age_ms: s.age_ms,
        bindings: s
            .bindings
            .iter()
            .map(|b| Binding {
                service_type: b.service_type,
                endpoint: &b.endpoint,
            })
            .collect(),
    }
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

pub(super) async fn run(ctx: &Ctx, c: cli::Sessions) -> anyhow::Result<View> {
    match c {
        cli::Sessions::Get { id } => get(ctx, id).await,
        cli::Sessions::List {
            user,
            realm,
            service,
            protocol,
            limit,
        } => {
            let filter = gw::ListSessionsRequest {
                user_id: user,
                realm_id: realm,
                service_type: service,
                protocol,
                ..Default::default()
            };
            list(ctx, filter, limit).await
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
            let req = gw::KickSessionsRequest {
                session_ids: ids,
                selector,
                code,
                reason,
                dry_run,
                rate_per_sec: rate,
            };
            kick(ctx, req).await
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
            let req = gw::PushRequest {
                session_id: session,
                user_id: user,
                service_type: service,
                seq,
                payload,
                session_ids: Vec::new(),
            };
            push(ctx, req).await
        }
        cli::Sessions::Lookup { id, user } => lookup(ctx, id, user).await,
    }
}

async fn get(ctx: &Ctx, id: u64) -> anyhow::Result<View> {
    let s = ctx
        .gw()
        .await?
        .get_session(gw::GetSessionRequest { session_id: id })
        .await
        .map_err(explain)?
        .into_inner();
    let table = Table::Fields(vec![
        ("session", format!("{} ({})", s.session_id, s.display_id)),
        ("user", s.user_id.to_string()),
        ("realm", opt(s.realm_id.into())),
        ("protocol", s.protocol.clone()),
        ("remote", s.remote_addr.clone()),
        ("age", dur(s.age_ms)),
        ("bindings", bindings(&s)),
    ]);
    Ok(View::of(&session_row(&s), table))
}

/// Pages through ListSessions up to `limit` sessions.
async fn list(ctx: &Ctx, filter: gw::ListSessionsRequest, limit: usize) -> anyhow::Result<View> {
    let mut admin = ctx.gw().await?;
    let mut all = Vec::new();
    let mut token = String::new();
    let total = loop {
        let r = admin
            .list_sessions(gw::ListSessionsRequest {
                page_size: (limit - all.len()).clamp(1, 1000) as u32,
                page_token: token,
                ..filter.clone()
            })
            .await
            .map_err(explain)?
            .into_inner();
        all.extend(r.sessions);
        token = r.next_page_token;
        if token.is_empty() || all.len() >= limit {
            break r.total;
        }
    };
    all.truncate(limit);
    if total as usize > all.len() {
        eprintln!(
            "{} of {total} sessions shown; raise --limit for more",
            all.len()
        );
    }
    let headers = vec![
        "SESSION", "USER", "REALM", "PROTO", "REMOTE", "AGE", "BINDINGS",
    ];
    let table_row = |s: &gw::Session| {
        vec![
            s.session_id.to_string(),
            s.user_id.to_string(),
            opt(s.realm_id.into()),
            s.protocol.clone(),
            s.remote_addr.clone(),
            dur(s.age_ms),
            bindings(s),
        ]
    };
    Ok(View::list("sessions", &all, headers, session_row, table_row).with("total", total))
}

#[derive(Serialize)]
struct Kicked<'a> {
    matched: u64,
    kicked: u64,
    not_found: &'a [u64],
    dry_run: bool,
}

async fn kick(ctx: &Ctx, req: gw::KickSessionsRequest) -> anyhow::Result<View> {
    let dry_run = req.dry_run;
    let r = ctx
        .gw()
        .await?
        .kick_sessions(req)
        .await
        .map_err(explain)?
        .into_inner();
    let mut lines = vec![if dry_run {
        format!("dry run: {} sessions match; none kicked", r.matched)
    } else {
        format!("kicked {} of {} matching sessions", r.kicked, r.matched)
    }];
    if !r.not_found.is_empty() {
        let ids: Vec<String> = r.not_found.iter().map(u64::to_string).collect();
        lines.push(format!("not found: {}", ids.join(", ")));
    }
    let data = Kicked {
        matched: r.matched,
        kicked: r.kicked,
        not_found: &r.not_found,
        dry_run,
    };
    Ok(View::of(&data, Table::Lines(lines)))
}

#[derive(Serialize)]
struct Pushed<'a> {
    delivered: &'a [u64],
    failed: &'a [u64],
}

async fn push(ctx: &Ctx, req: gw::PushRequest) -> anyhow::Result<View> {
    let r = ctx
        .gw()
        .await?
        .push(req)
        .await
        .map_err(explain)?
        .into_inner();
    let failed = if r.failed.is_empty() {
        String::new()
    } else {
        format!("; failed for {} (queue full or closing)", r.failed.len())
    };
    let lines = vec![format!(
        "delivered to {} sessions{failed}",
        r.delivered.len()
    )];
    let data = Pushed {
        delivered: &r.delivered,
        failed: &r.failed,
    };
    Ok(View::of(&data, Table::Lines(lines)))
}

#[derive(Serialize)]
struct Owner<'a> {
    session_id: u64,
    user_id: u64,
    gateway_id: &'a str,
    gateway_admin_addr: &'a str,
    epoch: u64,
}

fn owner(o: &cp::Ownership) -> Owner<'_> {
    Owner {
        session_id: o.session_id,
        user_id: o.user_id,
        gateway_id: &o.gateway_id,
        gateway_admin_addr: &o.gateway_admin_addr,
        epoch: o.epoch,
    }
}

/// Where sessions live, from the control plane's directory.
async fn lookup(ctx: &Ctx, id: Option<u64>, user: Option<u64>) -> anyhow::Result<View> {
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
    let table_row = |o: &cp::Ownership| {
        vec![
            o.session_id.to_string(),
            o.user_id.to_string(),
            o.gateway_id.clone(),
            o.gateway_admin_addr.clone(),
            time(o.epoch),
        ]
    };
    let headers = vec!["SESSION", "USER", "GATEWAY", "ADMIN", "SINCE"];
    Ok(View::list("sessions", &owners, headers, owner, table_row))
}

/// `presence watch`: streams lines until `limit` events (0: forever).
pub(super) async fn watch(
    ctx: &Ctx,
    req: cp::WatchRequest,
    limit: u64,
    format: crate::cli::Format,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use std::io::Write;
    let mut stream = ctx
        .directory()
        .await?
        .watch(req)
        .await
        .map_err(explain)?
        .into_inner();
    let mut n = 0u64;
    let mut out = std::io::stdout();
    while let Some(batch) = stream.next().await {
        let b = batch.map_err(explain)?;
        if b.gap {
            writeln!(
                out,
                "# gap: events before cursor {} are no longer kept",
                b.cursor
            )?;
        }
        for e in &b.events {
            let kind = match cp::PresenceKind::try_from(e.kind) {
                Ok(cp::PresenceKind::Open) => "open",
                Ok(cp::PresenceKind::Resume) => "resume",
                Ok(cp::PresenceKind::RoomJoin) => "join",
                Ok(cp::PresenceKind::RoomLeave) => "leave",
                _ => "close",
            };
            match format {
                crate::cli::Format::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "kind": kind, "session_id": e.session_id, "user_id": e.user_id,
                        "realm_id": e.realm_id, "gateway_id": e.gateway_id, "room": e.room,
                        "cursor": b.cursor,
                    })
                )?,
                _ => writeln!(
                    out,
                    "{kind:<6} session={} user={} realm={} gateway={}{} cursor={}",
                    e.session_id,
                    e.user_id,
                    e.realm_id,
                    e.gateway_id,
                    if e.room.is_empty() {
                        String::new()
                    } else {
                        format!(" room={}", e.room)
                    },
                    b.cursor
                )?,
            }
            n += 1;
            if limit != 0 && n >= limit {
                return Ok(());
            }
        }
        out.flush()?;
    }
    anyhow::bail!("the control plane ended the stream")
}
