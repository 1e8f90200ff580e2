//! The session directory's store against a real Redis, one node and a
//! 3-node Cluster: ownership by epoch, closes only by the owner, batches
//! that open and close one session, and the sweep of a dead gateway
//! (including a set left by the layout before the sub-sets).

use std::time::Duration;

use controlplane::config::RedisTarget;
use controlplane::store::{RoomLimits, Store};
use gg_proto::pb::controlplane::SessionEvent;

use crate::redis_proc::{Cluster, Redis};

fn ev(sid: u64, user: u64, open: bool, epoch: u64) -> SessionEvent {
    SessionEvent {
        session_id: sid,
        user_id: user,
        open,
        epoch,
        realm_id: 0,
        resumed: false,
    }
}

async fn store(target: RedisTarget) -> Store {
    Store::new(
        controlplane::connect(&target, None, Duration::from_secs(5))
            .await
            .expect("connect"),
    )
}

const LIMITS: RoomLimits = RoomLimits {
    history_size: 10,
    history_ttl_ms: 60_000,
    log_keep: 1000,
    resume_keep_ms: 1000,
};

async fn owner(s: &Store, sid: u64) -> Option<(u64, String, u64)> {
    s.session(sid).await.expect("lookup")
}

async fn users(s: &Store, uid: u64) -> Vec<u64> {
    s.user_sessions(uid).await.expect("user lookup")
}

/// What every topology must do.
async fn ownership_rules(s: &Store) {
    // The first owner.
    s.sessions_apply("gw-1", &[ev(100, 7, true, 5)])
        .await
        .expect("open");
    assert_eq!(owner(s, 100).await, Some((7, "gw-1".into(), 5)));
    assert_eq!(users(s, 7).await, vec![100]);
    // A stale owner (older epoch) cannot take it; another gateway cannot
    // close it.
    s.sessions_apply("gw-2", &[ev(100, 7, true, 4), ev(100, 7, false, 4)])
        .await
        .expect("stale");
    assert_eq!(owner(s, 100).await, Some((7, "gw-1".into(), 5)));
    assert_eq!(users(s, 7).await, vec![100]);
    // A newer epoch moves it (a resume elsewhere); the old owner's close is
    // then ignored; the new owner's close removes both entries.
    s.sessions_apply("gw-2", &[ev(100, 7, true, 6)])
        .await
        .expect("move");
    assert_eq!(owner(s, 100).await, Some((7, "gw-2".into(), 6)));
    s.sessions_apply("gw-1", &[ev(100, 7, false, 5)])
        .await
        .expect("old close");
    assert_eq!(owner(s, 100).await, Some((7, "gw-2".into(), 6)));
    s.sessions_apply("gw-2", &[ev(100, 7, false, 6)])
        .await
        .expect("close");
    assert_eq!(owner(s, 100).await, None);
    assert!(users(s, 7).await.is_empty());

    // A gateway id that ends like another's is not that other gateway.
    s.sessions_apply("a|b", &[ev(200, 8, true, 1)])
        .await
        .expect("open");
    s.sessions_apply("b", &[ev(200, 8, false, 1)])
        .await
        .expect("foreign close");
    assert_eq!(owner(s, 200).await, Some((8, "a|b".into(), 1)));

    // Open and close of one session in one batch, among others: in order.
    let mut batch: Vec<SessionEvent> = (1..=300).map(|i| ev(1000 + i, 9, true, 1)).collect();
    batch.push(ev(1001, 9, false, 1));
    batch.push(ev(5000, 0, true, 1));
    s.sessions_apply("gw-3", &batch).await.expect("batch");
    assert_eq!(owner(s, 1001).await, None);
    let sids: Vec<u64> = (1000..=1300).chain([5000]).collect();
    let found = s.sessions(&sids).await.expect("sessions");
    assert_eq!(found[0], None);
    assert_eq!(found[1], None, "closed in the same batch");
    assert!(
        found[2..]
            .iter()
            .all(|o| o.as_ref().is_some_and(|o| o.1 == "gw-3"))
    );
    assert_eq!(users(s, 9).await.len(), 299);

    // The dead gateway's sweep removes every session it still owns (user
    // entries too) and no one else's.
    let n = s.sweep_gateway("gw-3", LIMITS).await.expect("sweep");
    assert_eq!(n, 300, "299 of user 9 and one without a user");
    assert!(
        s.sessions(&sids)
            .await
            .expect("sessions")
            .iter()
            .all(Option::is_none)
    );
    assert!(users(s, 9).await.is_empty());
    assert_eq!(owner(s, 200).await, Some((8, "a|b".into(), 1)));
    // Sweeping an unknown gateway is a no-op.
    assert_eq!(s.sweep_gateway("gw-none", LIMITS).await.expect("sweep"), 0);
}

#[tokio::test]
async fn directory_ownership_on_one_node() {
    let redis = Redis::start().await;
    let s = store(RedisTarget::Single(redis.url())).await;
    ownership_rules(&s).await;

    // The session set is kept as small integer sets: ids with the top bit
    // set (a random gateway prefix) are stored as signed integers.
    let big = 0xF000_0000_0000_0001u64;
    s.sessions_apply("gw-4", &[ev(big, 1, true, 1)])
        .await
        .expect("open");
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("gg:gs:{gw-4}:*")
        .query_async(&mut c)
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1);
    let enc: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(&keys[0])
        .query_async(&mut c)
        .await
        .expect("encoding");
    assert_eq!(enc, "intset");

    // A gateway set in the layout before the sub-sets (one set, unsigned
    // members) is still swept.
    let old = 0xF000_0000_0000_0002u64;
    s.sessions_apply("gw-4", &[ev(old, 2, true, 1)])
        .await
        .expect("open");
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(
            keys.iter()
                .cloned()
                .chain((0..64).map(|b| format!("gg:gs:{{gw-4}}:{b}")))
                .collect::<Vec<_>>(),
        )
        .cmd("SADD")
        .arg("gg:gs:{gw-4}")
        .arg(big.to_string())
        .arg(old.to_string())
        .query_async(&mut c)
        .await
        .expect("legacy set");
    assert_eq!(s.sweep_gateway("gw-4", LIMITS).await.expect("sweep"), 2);
    assert_eq!(owner(&s, big).await, None);
    assert_eq!(owner(&s, old).await, None);
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("gg:gs:{gw-4}*")
        .query_async(&mut c)
        .await
        .expect("keys");
    assert!(left.is_empty(), "gateway sets left behind: {left:?}");
}

#[tokio::test]
async fn directory_ownership_on_a_cluster() {
    let cluster = Cluster::start().await;
    let s = store(RedisTarget::Cluster(cluster.seeds())).await;
    ownership_rules(&s).await;

    // A batch goes to each node as one script call per 128 entries (keys
    // of many slots), not one per slot.
    let mut nodes = Vec::new();
    for url in cluster.seeds() {
        let client = redis::Client::open(url).expect("client");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut c)
            .await
            .expect("resetstat");
        nodes.push(c);
    }
    let batch: Vec<SessionEvent> = (1..=300).map(|i| ev(90_000 + i, 50 + i, true, 1)).collect();
    s.sessions_apply("gw-5", &batch).await.expect("batch");
    let mut calls = 0u64;
    for c in &mut nodes {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(c)
            .await
            .expect("info");
        calls += info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|v| v.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    // 600 entries: 3 nodes × at most 5 calls of 128, not ~600 calls.
    assert!(
        (1..=15).contains(&calls),
        "{calls} script calls for 600 entries"
    );
    let sids: Vec<u64> = (90_001..=90_300).collect();
    let found = s.sessions(&sids).await.expect("sessions");
    assert!(
        found
            .iter()
            .all(|o| o.as_ref().is_some_and(|o| o.1 == "gw-5"))
    );
    assert_eq!(users(&s, 51).await, vec![90_001]);
}
