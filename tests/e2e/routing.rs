//! Each routing strategy, end to end.

use std::collections::{HashMap, HashSet};

use gg_proto::ErrorCode;

use crate::support::*;

/// Which backend serves `user` through HTTP calls on service 1.
async fn owner(gw: &Gw, user: u64) -> String {
    let (st, body) = http(
        gw.client,
        "POST",
        "/v1/call/1",
        &[("x-user-id", &user.to_string())],
        b"whoami",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    body
}

fn service(strategy: &str, eps: &[&Backend]) -> String {
    let list: Vec<String> = eps.iter().map(|b| b.addr.to_string()).collect();
    format!(
        "services:\n  - {{ name: svc, id: 1, strategy: {strategy}, endpoints: [{}] }}\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn round_robin_spreads_sessions_and_pins_each() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let gw = gateway(&service("round_robin", &[&b1, &b2])).await;
    let mut seen = HashSet::new();
    for user in 0..4 {
        let mut c = Client::tcp(gw.client).await;
        c.hello(user, 0).await;
        let first = c.call_text(1, 1, "whoami").await;
        // Pinned: the same session keeps its backend.
        for seq in 2..5 {
            assert_eq!(c.call_text(1, seq, "whoami").await, first);
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "round robin used {seen:?}");
}

#[tokio::test]
async fn consistent_hash_agrees_across_gateways_and_moves_few_users() {
    let bs = [
        backend("b1").await,
        backend("b2").await,
        backend("b3").await,
        backend("b4").await,
    ];
    let three = service("consistent_hash", &[&bs[0], &bs[1], &bs[2]]);
    let gw_a = gateway(&three).await;
    let gw_b = gateway(&three).await;
    let gw_four = gateway(&service(
        "consistent_hash",
        &[&bs[0], &bs[1], &bs[2], &bs[3]],
    ))
    .await;

    let users: Vec<u64> = (1..=60).map(|u| u * 7919).collect();
    let mut before = HashMap::new();
    for &u in &users {
        let a = owner(&gw_a, u).await;
        // Same user, same answer on every call and on every gateway.
        assert_eq!(owner(&gw_a, u).await, a);
        assert_eq!(owner(&gw_b, u).await, a, "gateways disagree for user {u}");
        before.insert(u, a);
    }
    let used: HashSet<_> = before.values().collect();
    assert_eq!(used.len(), 3, "60 users should reach all 3 endpoints");

    let mut moved = 0;
    for &u in &users {
        let now = owner(&gw_four, u).await;
        if now != before[&u] {
            assert_eq!(now, "b4", "user {u} moved between old endpoints");
            moved += 1;
        }
    }
    // Expect about 1/4 of users to move; allow wide statistical slack.
    assert!((5..=28).contains(&moved), "{moved} of 60 users moved");
}

#[tokio::test]
async fn realm_routing_maps_realms_to_game_servers() {
    let (g1, g2) = (backend("game-1").await, backend("game-2").await);
    let gw = gateway(&format!(
        "services:\n  - {{ name: game, id: 3, strategy: realm }}\nrealms: {{ \"1\": {}, \"2\": {} }}\n",
        g1.addr, g2.addr
    ))
    .await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(10, 1).await;
    // realm_id 0 in the frame = the realm given at HELLO.
    assert_eq!(c.call_text(3, 1, "whoami").await, "game-1");
    // A frame naming realm 2 goes to realm 2's server.
    let mut h = gg_proto::Header::new(gg_proto::Kind::Data);
    h.service_type = 3;
    h.realm_id = 2;
    h.seq = 2;
    c.send(&gg_proto::Frame::new(h, &b"whoami"[..])).await;
    let f = c.recv_kind(gg_proto::Kind::Data).await;
    assert_eq!(&f.payload[..], b"game-2");
    // Back to realm 1 keeps the realm-1 binding.
    assert_eq!(c.call_text(3, 3, "whoami").await, "game-1");

    let (st, body) = http(
        gw.client,
        "POST",
        "/v1/call/game",
        &[("x-realm-id", "2")],
        b"whoami",
    )
    .await;
    assert_eq!((st, body.as_str()), (200, "game-2"));
    let (st, body) = http(
        gw.client,
        "POST",
        "/v1/call/game",
        &[("x-realm-id", "9")],
        b"whoami",
    )
    .await;
    assert_eq!(st, 404);
    assert!(
        body.contains(&format!("\"code\":{}", ErrorCode::NoRoute.code())),
        "{body}"
    );
}
