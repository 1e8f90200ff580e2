//! The admin gRPC API with real gRPC clients against real gateways.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gg_proto::frame::Kind;
use gg_proto::pb::admin as pb;
use gg_proto::{CloseCode, ErrorCode};
use tonic::Code;

use crate::support::*;

const SECRET_ENV: &str = "fleet-resume-secret-0123456789";

fn services(eps: &[&Backend]) -> String {
    let list: Vec<String> = eps.iter().map(|b| b.addr.to_string()).collect();
    format!(
        "services:\n  - {{ name: echo, id: 1, strategy: round_robin, endpoints: [{l}] }}\n  - {{ name: acct, id: 2, strategy: consistent_hash, endpoints: [{l}] }}\n",
        l = list.join(", ")
    )
}

fn resume_yaml() -> String {
    format!("resume: {{ secret_file: {} }}\n", secret_file().display())
}

fn secret_file() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("gg-e2e-resume-{}.secret", std::process::id()));
    std::fs::write(&p, SECRET_ENV).expect("write secret");
    p
}

#[tokio::test]
async fn auth_scopes_and_refusals() {
    let b = backend("b1").await;
    let gw = gateway(&format!("{}{}", services(&[&b]), admin_yaml())).await;

    let e = admin(&gw, None)
        .await
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("Bearer"), "{}", e.message());
    let e = admin(&gw, Some("wrong-token-0123456789"))
        .await
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let mut reader = admin(&gw, Some(READ_TOKEN)).await;
    let info = reader
        .get_info(pb::GetInfoRequest {})
        .await
        .expect("read scope")
        .into_inner();
    assert_eq!(info.gateway_id, "gw-e2e");
    assert!(info.ready);
    assert_eq!(info.client_addr, gw.client.to_string());

    let e = reader
        .start_drain(pb::StartDrainRequest {
            request_id: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("needs operate"), "{}", e.message());
    let e = admin(&gw, Some(OPERATE_TOKEN))
        .await
        .set_route_override(pb::SetRouteOverrideRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The token never shows up in the gateway's log.
    assert!(!gw.proc.log_text().contains("0123456789abcdef"));

    // grpc.health.v1 answers for the admin service.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(channel(gw.admin.expect("admin")).await);
    let st = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "gateway.admin.v1.GatewayAdmin".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        st.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn refuses_a_public_admin_address_without_tokens() {
    let (code, err) = run_to_exit(
        "gateway",
        "gateway_id: gw\nlisten: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nadmin: { listen: 0.0.0.0:0 }\n",
        &[],
    )
    .await;
    assert_eq!(code, Some(64));
    assert!(err.contains("not a loopback address"));
}

#[tokio::test]
async fn sessions_lookup_push_and_kick() {
    let b = backend("b1").await;
    let gw = gateway(&format!("{}{}", services(&[&b]), admin_yaml())).await;
    let mut a = admin(&gw, Some(OPERATE_TOKEN)).await;
    let mut c1 = Client::tcp(gw.client).await;
    c1.hello(500, 1).await;
    assert_eq!(c1.call_text(1, 1, "bind me").await, "bind me");
    let mut c2 = Client::ws(gw.client).await;
    c2.hello(500, 2).await;
    let mut c3 = Client::tcp(gw.client).await;
    c3.hello(600, 1).await;

    let s = a
        .get_session(pb::GetSessionRequest {
            session_id: c1.session_id,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (s.user_id, s.realm_id, s.protocol.as_str()),
        (500, 1, "tcp")
    );
    assert_eq!(s.display_id, format!("gw-e2e:{}", c1.session_id));
    assert_eq!(s.bindings.len(), 1);
    assert_eq!(s.bindings[0].endpoint, b.addr.to_string());
    let e = a
        .get_session(pb::GetSessionRequest { session_id: 1 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Filters and paging.
    let page = a
        .list_sessions(pb::ListSessionsRequest {
            user_id: 500,
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!((page.total, page.sessions.len()), (2, 1));
    assert!(!page.next_page_token.is_empty());
    let page2 = a
        .list_sessions(pb::ListSessionsRequest {
            user_id: 500,
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page2.sessions.len(), 1);
    assert!(page2.next_page_token.is_empty());
    assert_ne!(page.sessions[0].session_id, page2.sessions[0].session_id);
    let ws = a
        .list_sessions(pb::ListSessionsRequest {
            protocol: "ws".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(ws.total, 1);
    let bound = a
        .list_sessions(pb::ListSessionsRequest {
            service_type: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(bound.total, 1);
    let e = a
        .list_sessions(pb::ListSessionsRequest {
            protocol: "udp".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Push to every session of user 500.
    let pushed = a
        .push(pb::PushRequest {
            user_id: 500,
            service_type: 9,
            seq: 77,
            payload: b"news".to_vec(),
            ..Default::default()
        })
        .await
        .expect("push")
        .into_inner();
    assert_eq!(pushed.delivered.len(), 2);
    for c in [&mut c1, &mut c2] {
        let f = c.recv_kind(Kind::Data).await;
        assert_eq!(
            (f.header.seq, f.header.service_type, &f.payload[..]),
            (77, 9, &b"news"[..])
        );
        assert_eq!(f.header.session_id, c.session_id);
    }
    let e = a
        .push(pb::PushRequest {
            user_id: 999,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a
        .push(pb::PushRequest {
            user_id: 1,
            session_id: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Kick: dry run counts, the real one closes with the code and reason.
    let sel = Some(pb::SessionSelector {
        user_id: 500,
        ..Default::default()
    });
    let dry = a
        .kick_sessions(pb::KickSessionsRequest {
            selector: sel.clone(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect("kick")
        .into_inner();
    assert_eq!((dry.matched, dry.kicked), (2, 0));
    let k = a
        .kick_sessions(pb::KickSessionsRequest {
            selector: sel,
            code: 3010,
            reason: "maintenance".into(),
            ..Default::default()
        })
        .await
        .expect("kick")
        .into_inner();
    assert_eq!(k.kicked, 2);
    for c in [&mut c1, &mut c2] {
        let close = c.expect_close().await;
        assert_eq!((close.code, close.reason.as_str()), (3010, "maintenance"));
    }
    // c3 (another user) is untouched.
    assert_eq!(c3.call_text(1, 1, "alive").await, "alive");
    let k = a
        .kick_sessions(pb::KickSessionsRequest {
            session_ids: vec![c3.session_id, 42],
            ..Default::default()
        })
        .await
        .expect("kick")
        .into_inner();
    assert_eq!((k.kicked, k.not_found.as_slice()), (1, &[42u64][..]));
    assert_eq!(c3.expect_close().await.code, CloseCode::Kicked.code());

    // Paced kicks: 3 sessions at 10 per second take at least ~200 ms.
    let mut paced = Vec::new();
    for u in 0..3 {
        let mut c = Client::tcp(gw.client).await;
        c.hello(800, u).await;
        paced.push(c);
    }
    let t0 = std::time::Instant::now();
    let k = a
        .kick_sessions(pb::KickSessionsRequest {
            selector: Some(pb::SessionSelector {
                user_id: 800,
                ..Default::default()
            }),
            rate_per_sec: 10,
            ..Default::default()
        })
        .await
        .expect("paced kick")
        .into_inner();
    assert_eq!(k.kicked, 3);
    assert!(
        t0.elapsed() >= Duration::from_millis(190),
        "not paced: {:?}",
        t0.elapsed()
    );
    for c in &mut paced {
        assert_eq!(c.expect_close().await.code, CloseCode::Kicked.code());
    }
    let e = a
        .kick_sessions(pb::KickSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// Drain with two gateways: clients that honour GOAWAY resume on the other
/// gateway with the same session and lose no request; a client that ignores
/// it is force-closed at the deadline.
#[tokio::test]
async fn drain_moves_honouring_clients_without_loss() {
    let b = backend("b1").await;
    let body = format!("{}{}{}", services(&[&b]), admin_yaml(), resume_yaml());
    let gw1 = gateway_named("gw-one", &body).await;
    let gw2 = gateway_named("gw-two", &body).await;
    let mut a = admin(&gw1, Some(OPERATE_TOKEN)).await;

    // Honouring clients run a request loop and move when told to.
    let mut honouring = Vec::new();
    for i in 0..4u64 {
        let (addr1, addr2) = (gw1.client, gw2.client);
        honouring.push(tokio::spawn(async move {
            let user = 7000 + i;
            let mut c = Client::tcp(addr1).await;
            let w = c.hello(user, 0).await;
            assert!(w.resume_token.is_some(), "WELCOME carries a resume token");
            let sid = c.session_id;
            let mut replies = HashMap::new();
            let mut seq = 0u32;
            let mut moved = false;
            let started = Instant::now();
            while seq < 60 && started.elapsed() < Duration::from_secs(20) {
                seq += 1;
                c.send(&frame(Kind::Data, 1, seq, format!("req-{seq}")))
                    .await;
                loop {
                    let f = c.recv().await;
                    match f.header.kind() {
                        Some(Kind::Data) => {
                            assert_eq!(
                                String::from_utf8_lossy(&f.payload),
                                format!("req-{}", f.header.seq)
                            );
                            *replies.entry(f.header.seq).or_insert(0) += 1;
                            if f.header.seq == seq {
                                break;
                            }
                        }
                        Some(Kind::GoAway) if !moved => {
                            let ga: gg_proto::control::GoAway = f.json().expect("goaway");
                            let token = ga.resume_token.expect("GOAWAY carries a resume token");
                            // Finish the request in flight on the old gateway first.
                            let reply = c.recv_kind(Kind::Data).await;
                            *replies.entry(reply.header.seq).or_insert(0) += 1;
                            let mut next = Client::tcp(addr2).await;
                            next.resume(user, sid, &token).await;
                            c.send(&frame(Kind::Close, 0, 0, &b"{\"code\":3500}"[..]))
                                .await;
                            c = next;
                            moved = true;
                            break;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(moved, "client {i} never received GOAWAY");
            // The backend kept the session's state across gateways.
            let count: u64 = c
                .call_text(1, 10_000, "count")
                .await
                .parse()
                .expect("count");
            assert_eq!(count, u64::from(seq) + 1, "backend session state continued");
            (seq, replies)
        }));
    }
    let mut stubborn = Client::tcp(gw1.client).await;
    stubborn.hello(9999, 0).await;
    eventually("all sessions on gw1", || async {
        gw1.metric("gg_sessions_active").await >= 5.0
    })
    .await;

    let started = a
        .start_drain(pb::StartDrainRequest {
            request_id: "rollout-1".into(),
            deadline_ms: 3000,
            spread_ms: 600,
            reason: "rollout".into(),
            reconnect_after_ms: 10,
        })
        .await
        .expect("start")
        .into_inner();
    assert_eq!(
        started.phase,
        gg_proto::pb::common::DrainPhase::Advising as i32
    );
    assert_eq!(started.sessions_at_start, 5);
    let mut watch = admin(&gw1, Some(READ_TOKEN))
        .await
        .watch_drain(pb::WatchDrainRequest {})
        .await
        .expect("watch")
        .into_inner();
    // Idempotent on the request id; another id is refused while it runs.
    let again = a
        .start_drain(pb::StartDrainRequest {
            request_id: "rollout-1".into(),
            ..Default::default()
        })
        .await
        .expect("same id")
        .into_inner();
    assert_eq!(again.request_id, "rollout-1");
    let e = a
        .start_drain(pb::StartDrainRequest {
            request_id: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(http(gw1.ops, "GET", "/ready", &[], b"").await.0, 503);

    for h in honouring {
        let (sent, replies) = h.await.expect("client");
        for seq in 1..=sent {
            assert_eq!(
                replies.get(&seq),
                Some(&1),
                "request {seq} lost or duplicated"
            );
        }
    }
    let close = stubborn.expect_close().await;
    assert_eq!(close.code, CloseCode::Shutdown.code());

    let mut last = None;
    while let Some(s) = watch.message().await.expect("watch stream") {
        last = Some(s);
    }
    let last = last.expect("watch sent updates");
    assert_eq!(last.phase, gg_proto::pb::common::DrainPhase::Done as i32);
    assert_eq!((last.advised, last.force_closed, last.remaining), (5, 1, 0));
    let e = a.cancel_drain(pb::CancelDrainRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        gw2.metric("gg_sessions_opened_total").await,
        4.0,
        "every honouring client resumed on gw2"
    );
}

#[tokio::test]
async fn cancel_drain_makes_the_gateway_ready_again() {
    let b = backend("b1").await;
    let gw = gateway(&format!("{}{}", services(&[&b]), admin_yaml())).await;
    let mut a = admin(&gw, Some(OPERATE_TOKEN)).await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    a.start_drain(pb::StartDrainRequest {
        request_id: "d".into(),
        deadline_ms: 60_000,
        spread_ms: 0,
        ..Default::default()
    })
    .await
    .expect("start");
    assert_eq!(
        c.recv_kind(Kind::GoAway).await.header.session_id,
        c.session_id
    );
    assert_eq!(http(gw.ops, "GET", "/ready", &[], b"").await.0, 503);
    // New sessions are refused (reconnect-allowed code) while draining.
    let mut late = Client::tcp(gw.client).await;
    late.send(&frame(Kind::Hello, 0, 0, &b"{}"[..])).await;
    assert_eq!(late.expect_close().await.code, CloseCode::Shutdown.code());

    let s = a
        .cancel_drain(pb::CancelDrainRequest {})
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(s.phase, gg_proto::pb::common::DrainPhase::Cancelled as i32);
    assert_eq!(http(gw.ops, "GET", "/ready", &[], b"").await.0, 200);
    let mut fresh = Client::tcp(gw.client).await;
    fresh.hello(2, 0).await;
    // The advised session is no longer under a deadline.
    assert_eq!(c.call_text(1, 1, "still").await, "still");
    let e = a
        .start_drain(pb::StartDrainRequest {
            request_id: "bad".into(),
            deadline_ms: 10,
            spread_ms: 20,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn resume_refuses_forged_tokens() {
    let b = backend("b1").await;
    let gw = gateway(&format!("{}{}", services(&[&b]), resume_yaml())).await;
    let mut c = Client::tcp(gw.client).await;
    let w = c.hello(5, 0).await;
    let token = w.resume_token.expect("token");
    let mut forged = token.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let mut evil = Client::tcp(gw.client).await;
    let mut h = gg_proto::Header::new(Kind::Hello);
    h.session_id = c.session_id;
    h.user_id = 5;
    evil.send(&gg_proto::Frame::new(
        h,
        serde_json::json!({"resume_token": String::from_utf8(forged).expect("utf8")}).to_string(),
    ))
    .await;
    assert_eq!(evil.expect_close().await.code, CloseCode::BadResume.code());
    // A valid token for another session id is refused too.
    let mut evil = Client::tcp(gw.client).await;
    h.session_id = c.session_id + 1;
    evil.send(&gg_proto::Frame::new(
        h,
        serde_json::json!({"resume_token": token}).to_string(),
    ))
    .await;
    assert_eq!(evil.expect_close().await.code, CloseCode::BadResume.code());
    // The genuine owner resuming on the same gateway takes over; the old connection is told "moved".
    let mut again = Client::tcp(gw.client).await;
    let w2 = again.resume(5, c.session_id, &token).await;
    assert_eq!(c.expect_close().await.code, CloseCode::Moved.code());
    assert_eq!(again.call_text(1, 1, "mine").await, "mine");
    // A token resumes once: the replay is refused, the fresh one works.
    let fresh = w2.resume_token.expect("a resumed WELCOME carries a token");
    assert_ne!(fresh, token, "the resumed WELCOME needs a fresh token");
    let mut replay = Client::tcp(gw.client).await;
    h.session_id = c.session_id;
    replay
        .send(&gg_proto::Frame::new(
            h,
            serde_json::json!({"resume_token": token}).to_string(),
        ))
        .await;
    let close = replay.expect_close().await;
    assert_eq!(close.code, CloseCode::BadResume.code());
    assert!(close.reason.contains("already used"), "{}", close.reason);
    let mut third = Client::tcp(gw.client).await;
    third.resume(5, c.session_id, &fresh).await;
    assert_eq!(again.expect_close().await.code, CloseCode::Moved.code());
    assert!(
        gw.metric("gg_rejections_total{reason=\"bad_resume\"}")
            .await
            >= 3.0
    );
}

/// A resume while the old connection's writes are stalled (its client
/// stopped reading) takes over at once: WELCOME to the new connection, the
/// old one is closed as moved, and the session table holds one session.
#[tokio::test]
async fn resume_takes_over_a_stalled_connection() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}{}limits: {{ write_timeout_ms: 60000, msg_rate_per_sec: 10000, msg_burst: 10000, session_queue_bytes: 67108864 }}\n",
        services(&[&b]),
        resume_yaml()
    ))
    .await;
    let mut old = Client::tcp(gw.client).await;
    let token = old.hello(6, 0).await.resume_token.expect("token");
    let sid = old.session_id;
    // Echoes of 40 MB the old client never reads: the gateway's writes to
    // it stall once the socket buffers fill (and so, in turn, do the
    // client's writes: they run in a task that is dropped at the end).
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 200_000];
        for seq in 0..200 {
            old.send(&frame(Kind::Data, 1, seq, chunk.clone())).await;
        }
        old
    });
    gw.wait_metric("gg_bytes_out_total{protocol=\"tcp\"}", |v| v >= 4e6)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut new = Client::tcp(gw.client).await;
    let started = Instant::now();
    new.resume(6, sid, &token).await;
    eprintln!("takeover WELCOME after {:?}", started.elapsed());
    assert_eq!(new.call_text(1, 9_999, "here").await, "here");
    gw.wait_metric("gg_session_closes_total{code=\"moved\"}", |v| v == 1.0)
        .await;
    assert_eq!(gw.metric("gg_sessions_active").await, 1.0);
    writer.abort();
}

#[tokio::test]
async fn overrides_with_ttl_and_explain() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let gw = gateway(&format!("{}{}", services(&[&b1, &b2]), admin_yaml())).await;
    let mut a = admin(&gw, Some(ADMIN_TOKEN)).await;
    let user = 4242;
    let ex = a
        .explain_route(pb::ExplainRouteRequest {
            service_type: 2,
            user_id: user,
            ..Default::default()
        })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(
        (ex.service.as_str(), ex.strategy),
        ("acct", gg_proto::model::Strategy::ConsistentHash.to_pb())
    );
    assert_eq!(ex.hash_key, format!("user_id={user}"));
    assert_eq!(ex.candidates.len(), 2);
    assert_eq!(ex.endpoint, ex.candidates[0]);
    assert!(ex.endpoint_healthy);
    assert_eq!(ex.circuit, "closed");
    let natural = ex.endpoint.clone();
    let other = if natural == b1.addr.to_string() {
        b2.addr.to_string()
    } else {
        b1.addr.to_string()
    };
    let name_of = |addr: &str| {
        if addr == b1.addr.to_string() {
            "b1"
        } else {
            "b2"
        }
    };

    let mut c = Client::tcp(gw.client).await;
    c.hello(user, 0).await;
    assert_eq!(c.call_text(2, 1, "whoami").await, name_of(&natural));

    let o = a
        .set_route_override(pb::SetRouteOverrideRequest {
            r#override: Some(pb::RouteOverride {
                service_type: 2,
                user_id: user,
                target: other.clone(),
                reason: "debug player".into(),
                ttl_ms: 1500,
                move_existing: true,
                ..Default::default()
            }),
        })
        .await
        .expect("set")
        .into_inner();
    assert!(!o.id.is_empty());
    assert_eq!(o.author, "root");
    assert!(o.expires_at_ms > 0);
    let ex = a
        .explain_route(pb::ExplainRouteRequest {
            service_type: 2,
            user_id: user,
            ..Default::default()
        })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(
        (ex.override_id.as_str(), ex.endpoint.as_str()),
        (o.id.as_str(), other.as_str())
    );
    assert!(ex.why.contains("debug player"), "{}", ex.why);
    // move_existing: the bound session moves on its next DATA.
    assert_eq!(c.call_text(2, 2, "whoami").await, name_of(&other));
    // Other users are not affected.
    let mut d = Client::tcp(gw.client).await;
    d.hello(user + 1, 0).await;
    let listed = a
        .list_route_overrides(pb::ListRouteOverridesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.overrides.len(), 1);

    // The TTL expires by itself.
    eventually("override expiry", || {
        let mut a = a.clone();
        async move {
            a.list_route_overrides(pb::ListRouteOverridesRequest {})
                .await
                .map(|r| r.into_inner().overrides.is_empty())
                .unwrap_or(false)
        }
    })
    .await;
    let ex = a
        .explain_route(pb::ExplainRouteRequest {
            service_type: 2,
            user_id: user,
            ..Default::default()
        })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(
        (ex.override_id.as_str(), ex.endpoint.as_str()),
        ("", natural.as_str())
    );
    let mut fresh = Client::tcp(gw.client).await;
    fresh.hello(user, 0).await;
    assert_eq!(fresh.call_text(2, 1, "whoami").await, name_of(&natural));

    // Bad input.
    let bad = |target: &str, service: u32, reason: &str| pb::SetRouteOverrideRequest {
        r#override: Some(pb::RouteOverride {
            service_type: service,
            target: target.into(),
            reason: reason.into(),
            ..Default::default()
        }),
    };
    for (req, code) in [
        (bad("not-an-endpoint", 2, "x"), Code::InvalidArgument),
        (bad("127.0.0.1:1", 77, "x"), Code::InvalidArgument),
        (bad("127.0.0.1:1", 2, ""), Code::InvalidArgument),
    ] {
        assert_eq!(a.set_route_override(req).await.unwrap_err().code(), code);
    }
    let e = a
        .delete_route_override(pb::DeleteRouteOverrideRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a
        .explain_route(pb::ExplainRouteRequest {
            service_type: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn breaker_opens_when_a_backend_dies_and_recovers() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let addr1 = b1.addr;
    let gw = gateway(&format!(
        "{}{}backend: {{ backoff_initial_ms: 20, backoff_max_ms: 100, ping_interval_ms: 200 }}\nbreaker: {{ failure_threshold: 3, open_ms: 300, open_max_ms: 600 }}\n",
        services(&[&b1, &b2]),
        admin_yaml()
    ))
    .await;
    let mut a = admin(&gw, Some(OPERATE_TOKEN)).await;
    let backend_of = |list: &pb::ListBackendsResponse, addr: &str| {
        list.backends
            .iter()
            .find(|b| b.endpoint == addr)
            .cloned()
            .expect("endpoint listed")
    };

    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    // Bind service 2 (consistent hash) to whichever endpoint, then stop b1.
    drop(b1);
    eventually("circuit opens", || {
        let mut a = a.clone();
        async move {
            let l = a
                .list_backends(pb::ListBackendsRequest {})
                .await
                .expect("list")
                .into_inner();
            backend_of(&l, &addr1.to_string()).circuit == "open"
        }
    })
    .await;
    // With b1 open, every new session goes to b2.
    for seq in 1..=4 {
        let mut s = Client::tcp(gw.client).await;
        s.hello(100 + seq, 0).await;
        assert_eq!(s.call_text(1, seq as u32, "whoami").await, "b2");
    }

    let _b1 = backend_at("b1-back", &addr1.to_string()).await;
    eventually("circuit closes after the backend returns", || {
        let mut a = a.clone();
        async move {
            let l = a
                .list_backends(pb::ListBackendsRequest {})
                .await
                .expect("list")
                .into_inner();
            let b = backend_of(&l, &addr1.to_string());
            b.circuit == "closed" && b.connections_up == 2
        }
    })
    .await;

    // Maintenance moves a bound session on its next DATA.
    let mut m = Client::tcp(gw.client).await;
    m.hello(77, 0).await;
    let first = m.call_text(1, 1, "whoami").await;
    let bound_to = if first == "b2" {
        b2.addr.to_string()
    } else {
        addr1.to_string()
    };
    let st = a
        .set_backend_state(pb::SetBackendStateRequest {
            endpoint: bound_to,
            state: "maint".into(),
        })
        .await
        .expect("maint")
        .into_inner();
    assert_eq!(st.state, "maint");
    let second = m.call_text(1, 2, "whoami").await;
    assert_ne!(
        first, second,
        "session should have moved off the endpoint in maintenance"
    );

    let e = a
        .set_backend_state(pb::SetBackendStateRequest {
            endpoint: "10.9.9.9:1".into(),
            state: "ready".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a
        .set_backend_state(pb::SetBackendStateRequest {
            endpoint: addr1.to_string(),
            state: "off".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Sessions left on the dead backend were told with ERROR 105 (seq 0).
    let _ = ErrorCode::BackendUnavailable;
}

/// A session that ends while its backend's queue is full still tells the
/// backend: the binding is released at once (ListBackends agrees with the
/// sessions that exist) and the CLOSE arrives once the backend reads again.
/// One worker thread, so both sessions share the one backend connection.
#[tokio::test]
async fn a_close_that_finds_the_backend_queue_full_still_arrives() {
    let b = backend("b1").await;
    let gw = gateway_with_flags(
        "gw-e2e",
        &format!(
            "services:\n  - {{ name: echo, id: 1, strategy: round_robin, endpoints: [{}] }}\nbackend: {{ queue: 8, connections_per_endpoint: 1 }}\n{}",
            b.addr,
            admin_yaml()
        ),
        &["--worker-threads", "1"],
    )
    .await;
    let a = admin(&gw, Some(ADMIN_TOKEN)).await;
    let mut staller = Client::tcp(gw.client).await;
    staller.hello(1, 0).await;
    assert_eq!(staller.call_text(1, 1, "stall:3000").await, "stalled");
    // The backend reads nothing now: fill the socket and then the queue
    // until the gateway answers "overloaded".
    let mut c = Client::tcp(gw.client).await;
    c.hello(2, 0).await;
    let big = vec![b'x'; 400_000];
    for seq in 0..60 {
        c.send(&frame(Kind::Data, 1, seq, big.clone())).await;
    }
    loop {
        let f = c.recv().await;
        if f.header.kind() == Some(Kind::Error) {
            assert_eq!(error_of(&f).code, ErrorCode::BackendUnavailable.code());
            assert!(error_of(&f).message.contains("overloaded"));
            break;
        }
    }
    c.send(&frame(Kind::Close, 0, 0, bytes::Bytes::new())).await;
    drop(c);
    let bound = || {
        let mut a = a.clone();
        let addr = b.addr.to_string();
        async move {
            let l = a
                .list_backends(pb::ListBackendsRequest {})
                .await
                .expect("list")
                .into_inner();
            l.backends
                .iter()
                .find(|b| b.endpoint == addr)
                .expect("endpoint listed")
                .sessions
        }
    };
    eventually(
        "the closed session's binding is released at once",
        || async { bound().await == 1 },
    )
    .await;
    assert_eq!(gw.metric("gg_sessions_active").await, 1.0);
    // Once the backend reads again it gets the CLOSE: it holds one session.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seq = 100;
    loop {
        seq += 1;
        let f = staller.call(1, seq, b"sessions").await;
        // "overloaded" while the queue drains; then the backend's count.
        if f.header.kind() == Some(Kind::Data) && &f.payload[..] == b"1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backend never learnt the session ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
