//! `backends list | set-state` and `info` (one gateway's admin API).

use gg_proto::pb::admin as gw;
use serde::Serialize;

use crate::cli;
use crate::ctx::{Ctx, explain};
use crate::out::{Table, View, dur, opt};

#[derive(Serialize)]
struct BackendRow<'a> {
    endpoint: &'a str,
    connections_up: u32,
    connections: u32,
    sessions: u64,
    in_flight: u64,
    circuit: &'a str,
    state: &'a str,
    unknown_session_replies: u64,
    consecutive_failures: u32,
}

fn backend_row(b: &gw::Backend) -> BackendRow<'_> {
    BackendRow {
        endpoint: &b.endpoint,
        connections_up: b.connections_up,
        connections: b.connections,
        sessions: b.sessions,
        in_flight: b.in_flight,
        circuit: &b.circuit,
        state: &b.state,
        unknown_session_replies: b.unknown_session_replies,
        consecutive_failures: b.consecutive_failures,
    }
}

pub(super) async fn run(ctx: &Ctx, c: cli::Backends) -> anyhow::Result<View> {
    let mut admin = ctx.gw().await?;
    match c {
        cli::Backends::List => {
            let list = admin
                .list_backends(gw::ListBackendsRequest {})
                .await
                .map_err(explain)?
                .into_inner()
                .backends;
            let headers = vec![
                "ENDPOINT", "STATE", "CIRCUIT", "CONNS", "SESSIONS", "QUEUED", "FAILURES",
            ];
            let table_row = |b: &gw::Backend| {
                vec![
                    b.endpoint.clone(),
                    b.state.clone(),
                    b.circuit.clone(),
                    format!("{}/{}", b.connections_up, b.connections),
                    b.sessions.to_string(),
                    b.in_flight.to_string(),
                    b.consecutive_failures.to_string(),
                ]
            };
            Ok(View::list(
                "backends",
                &list,
                headers,
                backend_row,
                table_row,
            ))
        }
        cli::Backends::SetState { endpoint, state } => {
            let b = admin
                .set_backend_state(gw::SetBackendStateRequest { endpoint, state })
                .await
                .map_err(explain)?
                .into_inner();
            let lines = vec![format!("{} is now {}", b.endpoint, b.state)];
            Ok(View::of(&backend_row(&b), Table::Lines(lines)))
        }
    }
}

#[derive(Serialize)]
struct Info<'a> {
    gateway_id: &'a str,
    version: &'a str,
    client_addr: &'a str,
    ops_addr: &'a str,
    admin_addr: &'a str,
    ready: bool,
    not_ready_reason: &'a str,
    draining: bool,
    sessions: u64,
    connections: u64,
    uptime_ms: u64,
    resume_enabled: bool,
    config_revision: u64,
    config_epoch: &'a str,
}

pub(super) async fn info(ctx: &Ctx) -> anyhow::Result<View> {
    let i = ctx
        .gw()
        .await?
        .get_info(gw::GetInfoRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    let ready = if i.ready {
        "yes".to_string()
    } else {
        format!("no ({})", i.not_ready_reason)
    };
    let table = Table::Fields(vec![
        ("gateway", i.gateway_id.clone()),
        ("version", i.version.clone()),
        ("ready", ready),
        ("draining", i.draining.to_string()),
        ("sessions", i.sessions.to_string()),
        ("connections", i.connections.to_string()),
        ("uptime", dur(i.uptime_ms)),
        (
            "client / ops / admin",
            format!("{} / {} / {}", i.client_addr, i.ops_addr, i.admin_addr),
        ),
        ("config revision", opt(i.config_revision)),
    ]);
    let data = Info {
        gateway_id: &i.gateway_id,
        version: &i.version,
        client_addr: &i.client_addr,
        ops_addr: &i.ops_addr,
        admin_addr: &i.admin_addr,
        ready: i.ready,
        not_ready_reason: &i.not_ready_reason,
        draining: i.draining,
        sessions: i.sessions,
        connections: i.connections,
        uptime_ms: i.uptime_ms,
        resume_enabled: i.resume_enabled,
        config_revision: i.config_revision,
        config_epoch: &i.config_epoch,
    };
    Ok(View::of(&data, table))
}
