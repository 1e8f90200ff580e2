//! `gwctl rooms`: the control plane's `Rooms` API.

use gg_proto::pb::controlplane as cp;

use crate::cli::RoomsCmd;
use crate::ctx::{Ctx, explain};
use crate::out::{Table, View};

pub(super) async fn run(ctx: &Ctx, c: RoomsCmd) -> anyhow::Result<View> {
    let mut api = ctx.rooms().await?;
    Ok(match c {
        RoomsCmd::List { prefix, limit } => {
            let r = api
                .list(cp::ListRoomsRequest { prefix, limit })
                .await
                .map_err(explain)?
                .into_inner();
            View::list(
                "rooms",
                &r.rooms,
                vec!["ROOM", "MEMBERS", "SEQ"],
                |i| serde_json::json!({"name": i.name, "members": i.members, "seq": i.seq}),
                |i| vec![i.name.clone(), i.members.to_string(), i.seq.to_string()],
            )
        }
        RoomsCmd::Members { room, limit } => {
            let r = api
                .members(cp::MembersRequest { room, limit })
                .await
                .map_err(explain)?
                .into_inner();
            View::list(
                "members",
                &r.members,
                vec!["SESSION", "USER", "GATEWAY"],
                |m| {
                    serde_json::json!({"session_id": m.session_id, "user_id": m.user_id, "gateway_id": m.gateway_id})
                },
                |m| {
                    vec![
                        m.session_id.to_string(),
                        m.user_id.to_string(),
                        m.gateway_id.clone(),
                    ]
                },
            )
            .with("total", r.total)
        }
        RoomsCmd::Publish {
            room,
            payload,
            service,
            request_id,
        } => {
            let r = api
                .publish(cp::PublishRequest {
                    room: room.clone(),
                    service_type: service,
                    payload: payload.into_bytes(),
                    request_id,
                })
                .await
                .map_err(explain)?
                .into_inner();
            let line = if r.duplicate {
                format!(
                    "already published to {room} as seq {} (same request id)",
                    r.seq
                )
            } else {
                format!("published to {room} as seq {}", r.seq)
            };
            View::of(
                &serde_json::json!({"room": room, "seq": r.seq, "duplicate": r.duplicate}),
                Table::Lines(vec![line]),
            )
        }
        RoomsCmd::History { room, after, limit } => {
            let r = api
                .history(cp::RoomHistoryRequest {
                    room,
                    after_seq: after,
                    limit,
                })
                .await
                .map_err(explain)?
                .into_inner();
            View::list(
                "messages",
                &r.messages,
                vec!["SEQ", "SERVICE", "PUBLISHED_MS", "PAYLOAD"],
                |m| {
                    serde_json::json!({"seq": m.seq, "service_type": m.service_type,
                        "published_ms": m.published_ms, "payload": String::from_utf8_lossy(&m.payload)})
                },
                |m| {
                    vec![
                        m.seq.to_string(),
                        m.service_type.to_string(),
                        m.published_ms.to_string(),
                        String::from_utf8_lossy(&m.payload).into_owned(),
                    ]
                },
            )
            .with("seq", r.seq)
            .with("gap", r.gap)
        }
        RoomsCmd::Join { session_id, room } => {
            let r = api
                .join(cp::RoomMembershipRequest {
                    session_id,
                    room: room.clone(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            View::of(
                &serde_json::json!({"session_id": session_id, "room": room, "gateway_id": r.gateway_id, "seq": r.seq}),
                Table::Lines(vec![format!(
                    "session {session_id} joined {room} on {} at seq {}",
                    r.gateway_id, r.seq
                )]),
            )
        }
        RoomsCmd::Leave { session_id, room } => {
            let r = api
                .leave(cp::RoomMembershipRequest {
                    session_id,
                    room: room.clone(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            View::of(
                &serde_json::json!({"session_id": session_id, "room": room, "gateway_id": r.gateway_id}),
                Table::Lines(vec![format!(
                    "session {session_id} left {room} on {}",
                    r.gateway_id
                )]),
            )
        }
    })
}
