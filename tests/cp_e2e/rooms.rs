//! Rooms across the fleet: real Redis, control plane replicas, gateways,
//! a backend and clients.

use std::time::Duration;

use gg_proto::Kind;
use gg_proto::pb::controlplane as pb;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cp::*;
use crate::redis_proc::Redis;
use crate::support::*;

type RoomsClient = pb::rooms_client::RoomsClient<InterceptedService<Channel, Bearer>>;

async fn rooms(cp: &Cp, token: &str) -> RoomsClient {
    pb::rooms_client::RoomsClient::with_interceptor(
        channel(cp.grpc).await,
        Bearer(Some(token.into())),
    )
}

/// The (room, seq, payload) of the next MESSAGE, skipping other kinds.
async fn next_message(c: &mut Client) -> (String, u64, String) {
    let f = c.recv_kind(Kind::Message).await;
    let (room, seq, data) = gg_proto::room::parse_message(&f.payload).expect("MESSAGE payload");
    assert_eq!(
        f.header.seq, seq as u32,
        "header seq is the low bits of room_seq"
    );
    (
        room.to_string(),
        seq,
        String::from_utf8_lossy(data).into_owned(),
    )
}

/// No MESSAGE arrives within `within`.
async fn no_message(c: &mut Client, within: Duration) {
    let end = tokio::time::Instant::now() + within;
    while let Some(got) = c
        .next(end.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        if let Got::Frame(f) = got {
            assert_ne!(f.header.kind(), Some(Kind::Message), "unexpected {f:?}");
        } else {
            break;
        }
    }
}

async fn members(r: &mut RoomsClient, room: &str) -> u64 {
    r.members(pb::MembersRequest {
        room: room.into(),
        limit: 0,
    })
    .await
    .map(|m| m.into_inner().total)
    .unwrap_or(0)
}

async fn wait_members(r: &RoomsClient, room: &str, n: u64) {
    eventually(&format!("{room} has {n} members"), || {
        let mut r = r.clone();
        async move { members(&mut r, room).await == n }
    })
    .await;
}

async fn ready(gw: &Gw) {
    eventually("gateway ready", || async {
        http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
    })
    .await;
}

/// Three gateways, clients in one room on each: publishes from gRPC and
/// from a backend reach every member exactly once, numbered without gaps,
/// in publish order; retries with a request id publish once; joins and
/// leaves through the control plane; history, list and refusals.
#[tokio::test]
async fn a_publish_reaches_every_member_on_three_gateways_once_and_in_order() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-rooms", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let mut gws = Vec::new();
    for i in 0..3 {
        gws.push(cp_gateway(&format!("gw-room-{i}"), cp.grpc, &scratch("snap", "pb")).await);
    }
    let mut clients = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        ready(gw).await;
        for j in 0..2 {
            let mut cl = Client::tcp(gw.client).await;
            cl.hello(10 + (i * 2 + j) as u64, 0).await;
            assert_eq!(cl.call_text(1, 1, "join:lobby").await, "joined");
            clients.push(cl);
        }
    }
    let mut op = rooms(&cp, OPERATE_TOKEN).await;
    wait_members(&op, "lobby", 6).await;

    // Ten from gRPC (in order), ten through the backend connection.
    for i in 1..=10u64 {
        let r = op
            .publish(pb::PublishRequest {
                room: "lobby".into(),
                service_type: 1,
                payload: format!("g{i}").into_bytes(),
                request_id: format!("req-{i}"),
            })
            .await
            .expect("publish")
            .into_inner();
        assert_eq!((r.seq, r.duplicate), (i, false));
    }
    // A retry after an unknown outcome: the same id publishes nothing new.
    let again = op
        .publish(pb::PublishRequest {
            room: "lobby".into(),
            service_type: 1,
            payload: b"g3".to_vec(),
            request_id: "req-3".into(),
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!((again.seq, again.duplicate), (3, true));
    // A session not in the room publishes through the backend (a member's
    // own calls would skip the MESSAGEs arriving meanwhile).
    let mut publisher = Client::tcp(gws[0].client).await;
    publisher.hello(50, 0).await;
    for i in 1..=10 {
        assert_eq!(
            publisher
                .call_text(1, 100 + i, &format!("publish:lobby:b{i}"))
                .await,
            "published"
        );
    }
    for (n, cl) in clients.iter_mut().enumerate() {
        for want in 1..=20u64 {
            let (room, seq, body) = next_message(cl).await;
            assert_eq!((room.as_str(), seq), ("lobby", want), "client {n}");
            let expect = if want <= 10 {
                format!("g{want}")
            } else {
                format!("b{}", want - 10)
            };
            assert_eq!(body, expect, "client {n}: publish order is kept");
        }
    }
    no_message(&mut clients[5], Duration::from_millis(300)).await;

    // Join through the control plane: the answer is the room's seq.
    let mut late = Client::tcp(gws[2].client).await;
    late.hello(99, 0).await;
    eventually("the directory knows the late session", || {
        let mut d = op.clone();
        let sid = late.session_id;
        async move {
            d.join(pb::RoomMembershipRequest {
                session_id: sid,
                room: "lobby".into(),
            })
            .await
            .is_ok_and(|r| {
                let r = r.into_inner();
                r.seq == 20 && r.gateway_id == "gw-room-2"
            })
        }
    })
    .await;
    // A leave through the control plane: that client gets nothing more.
    op.leave(pb::RoomMembershipRequest {
        session_id: clients[1].session_id,
        room: "lobby".into(),
    })
    .await
    .expect("leave");
    wait_members(&op, "lobby", 6).await;
    op.publish(pb::PublishRequest {
        room: "lobby".into(),
        service_type: 1,
        payload: b"last".to_vec(),
        request_id: String::new(),
    })
    .await
    .expect("publish");
    assert_eq!(next_message(&mut late).await.1, 21);
    assert_eq!(next_message(&mut clients[0]).await.1, 21);
    no_message(&mut clients[1], Duration::from_millis(300)).await;

    // History, list, members.
    let mut reader = rooms(&cp, READ_TOKEN).await;
    let h = reader
        .history(pb::RoomHistoryRequest {
            room: "lobby".into(),
            after_seq: 18,
            limit: 0,
        })
        .await
        .expect("history")
        .into_inner();
    let seqs: Vec<u64> = h.messages.iter().map(|m| m.seq).collect();
    assert_eq!((seqs, h.seq, h.gap), (vec![19, 20, 21], 21, false));
    assert_eq!(&h.messages[2].payload[..], b"last");
    let l = reader
        .list(pb::ListRoomsRequest {
            prefix: "lob".into(),
            limit: 0,
        })
        .await
        .expect("list")
        .into_inner()
        .rooms;
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0].name.as_str(), l[0].members, l[0].seq),
        ("lobby", 6, 21)
    );

    // Refusals: bad names, unknown sessions, scope, oversize.
    let bad = op
        .publish(pb::PublishRequest {
            room: "no spaces".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("invalid room name"), "{bad:?}");
    let unknown = op
        .join(pb::RoomMembershipRequest {
            session_id: 4242,
            room: "lobby".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let denied = reader
        .publish(pb::PublishRequest {
            room: "lobby".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let big = op
        .publish(pb::PublishRequest {
            room: "lobby".into(),
            payload: vec![0; 2 << 20],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(big.code(), Code::InvalidArgument);
    // A backend's bad room is an ERROR to the backend; the client is told by the sample.
    let f = publisher.call(1, 500, b"join:bad room").await;
    assert_eq!(f.header.kind(), Some(Kind::Error));
    // A client may not send room kinds itself.
    publisher
        .send(&frame(
            Kind::Publish,
            1,
            501,
            gg_proto::room::publish_payload("lobby", b"x").unwrap(),
        ))
        .await;
    let e = publisher.recv_kind(Kind::Error).await;
    assert_eq!((error_of(&e).code, e.header.seq), (103, 501));

    // Sessions leave their rooms when they end.
    let gone = clients.pop().expect("client");
    drop(gone);
    wait_members(&op, "lobby", 5).await;
}

/// A control plane replica dies while messages are published through
/// another; its gateway reconnects and recovers the missed messages from
/// the room history, in order. A drained gateway's client resumes on
/// another gateway and stays in its room. A client that does not read is
/// closed 3003 and the room goes on. A crashed gateway's sessions leave
/// their rooms, seen by a presence watcher.
#[tokio::test]
async fn rooms_survive_a_control_plane_restart_a_drain_a_slow_client_and_a_crash() {
    use futures_util::StreamExt;
    let redis = Redis::start().await;
    let port = free_port();
    // cp-a on a fixed port so it can come back where its gateway dials.
    let cp_a = controlplane_on("cp-ra", &redis.url(), port).await;
    let cp_b = controlplane("cp-rb", &redis.url(), 2000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp_b, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let secret = scratch("resume", "key");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("secret");
    let extra = format!(
        "resume: {{ secret_file: {} }}\nlimits: {{ session_queue: 32, session_queue_bytes: 16777216, write_timeout_ms: 500 }}\n",
        secret.display()
    );
    let g0 = room_gateway("gw-r0", cp_a.grpc, &extra).await;
    let g1 = room_gateway("gw-r1", cp_b.grpc, &extra).await;
    let g2 = room_gateway("gw-r2", cp_b.grpc, &extra).await;
    for g in [&g0, &g1, &g2] {
        ready(g).await;
    }
    let mut op = rooms(&cp_b, OPERATE_TOKEN).await;
    let join = |gw: &Gw, user: u64| {
        let addr = gw.client;
        async move {
            let mut cl = Client::tcp(addr).await;
            let w = cl.hello(user, 0).await;
            assert_eq!(cl.call_text(1, 1, "join:match").await, "joined");
            (cl, w)
        }
    };
    let (mut a, _) = join(&g0, 1).await;
    let (mut m1, w1) = join(&g1, 2).await;
    let (mut stays, _) = join(&g2, 3).await;
    wait_members(&op, "match", 3).await;
    let mut dir = pb::session_directory_client::SessionDirectoryClient::with_interceptor(
        channel(cp_b.grpc).await,
        Bearer(Some(READ_TOKEN.into())),
    );
    let mut watch = dir
        .watch(pb::WatchRequest {
            cursor: String::new(),
            rooms: vec!["match".into()],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();

    let publish = |op: &mut RoomsClient, i: u64| {
        let mut op = op.clone();
        async move {
            op.publish(pb::PublishRequest {
                room: "match".into(),
                service_type: 1,
                payload: format!("m{i}").into_bytes(),
                request_id: String::new(),
            })
            .await
            .expect("publish")
            .into_inner()
            .seq
        }
    };
    for i in 1..=5 {
        assert_eq!(publish(&mut op, i).await, i);
    }
    // cp-a dies: g0's stream is down while 6..=15 are published.
    let mut cp_a = cp_a;
    cp_a.proc.signal("KILL");
    cp_a.proc.wait_exit(Duration::from_secs(5)).await;
    for i in 6..=15 {
        publish(&mut op, i).await;
    }
    let cp_a = controlplane_on("cp-ra", &redis.url(), port).await;
    for i in 16..=20 {
        publish(&mut op, i).await;
    }
    for (n, cl) in [&mut a, &mut m1, &mut stays].into_iter().enumerate() {
        for want in 1..=20u64 {
            let (_, seq, body) = next_message(cl).await;
            assert_eq!((seq, body), (want, format!("m{want}")), "client {n}");
        }
    }
    g0.wait_metric("gg_room_recoveries_total", |v| v >= 1.0)
        .await;

    // g1 drains: m1 resumes on g2 with its token and is still in the room.
    admin(&g1, Some(OPERATE_TOKEN))
        .await
        .start_drain(gg_proto::pb::admin::StartDrainRequest {
            request_id: "move".into(),
            deadline_ms: 5_000,
            spread_ms: 0,
            reconnect_after_ms: 0,
            reason: "rollout".into(),
        })
        .await
        .expect("drain");
    let goaway: gg_proto::control::GoAway =
        m1.recv_kind(Kind::GoAway).await.json().expect("goaway");
    let token = goaway
        .resume_token
        .or(w1.resume_token)
        .expect("resume token");
    drop(m1);
    let mut moved = Client::tcp(g2.client).await;
    let sid = w1.session.rsplit(':').next().unwrap().parse().unwrap();
    moved.resume(2, sid, &token).await;
    eventually("the resumed session is in the room on gw-r2", || {
        let mut r = op.clone();
        async move {
            r.members(pb::MembersRequest {
                room: "match".into(),
                limit: 0,
            })
            .await
            .is_ok_and(|m| {
                m.into_inner()
                    .members
                    .iter()
                    .any(|m| m.session_id == sid && m.gateway_id == "gw-r2")
            })
        }
    })
    .await;
    publish(&mut op, 21).await;
    assert_eq!(next_message(&mut moved).await.1, 21);
    assert_eq!(next_message(&mut a).await.1, 21);
    assert_eq!(next_message(&mut stays).await.1, 21);

    // A client that stops reading: closed as a slow consumer; the others
    // get everything.
    let (slow, _) = join(&g2, 4).await;
    wait_members(&op, "match", 4).await;
    let big = "x".repeat(256 * 1024);
    let mut last = 0;
    for _ in 0..40 {
        last = op
            .publish(pb::PublishRequest {
                room: "match".into(),
                service_type: 1,
                payload: big.clone().into_bytes(),
                request_id: String::new(),
            })
            .await
            .expect("publish big")
            .into_inner()
            .seq;
    }
    for cl in [&mut a, &mut stays] {
        for want in 22..=last {
            assert_eq!(next_message(cl).await.1, want);
        }
    }
    // Closed 3003: by its full queue (CLOSE), or by a stalled write (the
    // socket is full, so no CLOSE can be written — the connection ends).
    g2.wait_metric("gg_session_closes_total{code=\"slow_consumer\"}", |v| {
        v >= 1.0
    })
    .await;
    drop(slow);

    // g0 crashes: after its lease, its session leaves the room, and the
    // presence watcher sees it.
    let a_sid = a.session_id;
    let g0 = g0;
    g0.proc.signal("KILL");
    eventually("the crashed gateway's member is gone", || {
        let mut r = op.clone();
        async move {
            r.members(pb::MembersRequest {
                room: "match".into(),
                limit: 0,
            })
            .await
            .is_ok_and(|m| !m.into_inner().members.iter().any(|m| m.session_id == a_sid))
        }
    })
    .await;
    let mut saw_leave = false;
    while !saw_leave {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("presence batch in time")
            .expect("stream open")
            .expect("batch");
        saw_leave = batch.events.iter().any(|e| {
            e.session_id == a_sid
                && e.kind == pb::PresenceKind::RoomLeave as i32
                && e.room == "match"
                && e.gateway_id == "gw-r0"
        });
    }
    drop(cp_a);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A control plane listening on a fixed port (so it can restart there).
async fn controlplane_on(id: &str, redis: &str, port: u16) -> Cp {
    controlplane_at(
        id,
        &format!("{{ url: \"{redis}\" }}"),
        2000,
        "",
        &format!("127.0.0.1:{port}"),
    )
    .await
}

async fn room_gateway(id: &str, cp: std::net::SocketAddr, extra: &str) -> Gw {
    gateway_named(
        id,
        &format!(
            "controlplane:\n  url: http://{cp}\n  token: {{ name: cp, scope: operate, value: {OPERATE_TOKEN} }}\n  snapshot_path: {}\n  session_flush_ms: 50\n{}{extra}",
            scratch("snap", "pb").display(),
            admin_yaml()
        ),
    )
    .await
}
