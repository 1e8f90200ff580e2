//! Control plane scenarios.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gg_proto::pb::admin as gwpb;
use gg_proto::pb::controlplane as pb;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::redis_proc::{Cluster, Redis, SentinelSetup};
use crate::support::*;

pub(crate) type CpClient =
    pb::control_plane_client::ControlPlaneClient<InterceptedService<Channel, Bearer>>;
type DirClient =
    pb::session_directory_client::SessionDirectoryClient<InterceptedService<Channel, Bearer>>;

pub(crate) struct Cp {
    pub(crate) proc: Proc,
    pub(crate) grpc: SocketAddr,
    pub(crate) ops: SocketAddr,
}

pub(crate) async fn controlplane(id: &str, redis: &str, lease_ms: u64) -> Cp {
    controlplane_with(id, &format!("{{ url: \"{redis}\" }}"), lease_ms).await
}

/// `redis_yaml` is the `redis:` value (single url or cluster seeds).
pub(crate) async fn controlplane_with(id: &str, redis_yaml: &str, lease_ms: u64) -> Cp {
    controlplane_extra(id, redis_yaml, lease_ms, "").await
}

/// With `extra` appended to the config file.
pub(crate) async fn controlplane_extra(
    id: &str,
    redis_yaml: &str,
    lease_ms: u64,
    extra: &str,
) -> Cp {
    controlplane_at(id, redis_yaml, lease_ms, extra, "127.0.0.1:0").await
}

/// With the gRPC listen address given (a fixed port survives a restart).
pub(crate) async fn controlplane_at(
    id: &str,
    redis_yaml: &str,
    lease_ms: u64,
    extra: &str,
    listen: &str,
) -> Cp {
    let config = scratch("cp", "yaml");
    std::fs::write(
        &config,
        format!(
            "id: {id}\nlisten: {listen}\nops_listen: 127.0.0.1:0\nredis: {redis_yaml}\nreconcile_ms: 200\nlease_ms: {lease_ms}\ntokens:\n  - {{ name: reader, scope: read, value: {READ_TOKEN} }}\n  - {{ name: op, scope: operate, value: {OPERATE_TOKEN} }}\n  - {{ name: root, scope: admin, value: {ADMIN_TOKEN} }}\ngateway_admin_token: {{ name: cp, scope: admin, value: {ADMIN_TOKEN} }}\n{extra}"
        ),
    )
    .expect("write cp config");
    let (proc, line) = spawn(
        &bin("controlplane"),
        id,
        &["--config", config.to_str().expect("utf8")],
    )
    .await;
    let field = |k: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bad cp line {line:?}"))
    };
    Cp {
        grpc: field("grpc="),
        ops: field("ops="),
        proc,
    }
}

pub(crate) async fn cp_client(cp: &Cp, token: Option<&str>) -> CpClient {
    pb::control_plane_client::ControlPlaneClient::with_interceptor(
        channel(cp.grpc).await,
        Bearer(token.map(str::to_string)),
    )
}

pub(crate) async fn dir_client(cp: &Cp) -> DirClient {
    pb::session_directory_client::SessionDirectoryClient::with_interceptor(
        channel(cp.grpc).await,
        Bearer(Some(READ_TOKEN.into())),
    )
}

/// A gateway following `cp`, with an admin API and a snapshot file.
pub(crate) async fn cp_gateway(id: &str, cp: SocketAddr, snapshot: &Path) -> Gw {
    gateway_named(
        id,
        &format!(
            "controlplane:\n  url: http://{cp}\n  token: {{ name: cp, scope: operate, value: {OPERATE_TOKEN} }}\n  snapshot_path: {}\n  session_flush_ms: 50\n{}",
            snapshot.display(),
            admin_yaml()
        ),
    )
    .await
}

pub(crate) fn svc(name: &str, id: u32, strategy: &str, eps: &[SocketAddr]) -> pb::Service {
    pb::Service {
        name: name.into(),
        id,
        // Unknown names go out unset, which the control plane refuses.
        strategy: gg_proto::model::Strategy::parse(strategy).map_or(0, |s| s.to_pb()),
        endpoints: eps.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    }
}

fn opts(expected: u64) -> Option<pb::WriteOptions> {
    Some(pb::WriteOptions {
        expected_revision: expected,
        ..Default::default()
    })
}

pub(crate) async fn put_service(c: &mut CpClient, s: pb::Service) -> pb::WriteResponse {
    c.put_service(pb::PutServiceRequest {
        service: Some(s),
        options: None,
    })
    .await
    .expect("put service")
    .into_inner()
}

async fn gw_revision(gw: &Gw) -> u64 {
    match admin(gw, Some(READ_TOKEN))
        .await
        .get_info(gwpb::GetInfoRequest {})
        .await
    {
        Ok(i) => i.into_inner().config_revision,
        Err(_) => 0,
    }
}

async fn call(gw: &Gw, service: &str, body: &[u8]) -> (u16, String) {
    http(gw.client, "POST", &format!("/v1/call/{service}"), &[], body).await
}

#[tokio::test]
async fn rule_change_reaches_three_gateways_and_each_acks() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-1", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    let first = put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    assert_eq!(first.revision, 1);
    assert_eq!(first.diff.len(), 1);

    let mut gws = Vec::new();
    for i in 0..3 {
        gws.push(cp_gateway(&format!("gw-{i}"), cp.grpc, &scratch("snap", "pb")).await);
    }
    for gw in &gws {
        eventually("gateway ready", || async {
            http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
        })
        .await;
        assert_eq!(call(gw, "echo", b"hi").await, (200, "hi".to_string()));
    }

    let b2 = backend("b2").await;
    let w = put_service(&mut c, svc("version", 2, "round_robin", &[b2.addr])).await;
    assert_eq!(w.revision, 2);
    eventually("rollout applied on 3 gateways", || {
        let mut c = c.clone();
        async move {
            let r = c
                .rollout_status(pb::RolloutStatusRequest { revision: 2 })
                .await
                .expect("rollout")
                .into_inner();
            r.applied == 3 && r.pending == 0
        }
    })
    .await;
    for gw in &gws {
        assert_eq!(
            call(gw, "version", b"whoami").await,
            (200, "b2".to_string())
        );
    }
    let list = c
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.gateways.len(), 3);
    for g in &list.gateways {
        assert_eq!(
            (
                pb::SyncStatus::try_from(g.sync_status).expect("known status"),
                g.applied_revision,
                g.connected_to.as_str()
            ),
            (pb::SyncStatus::InSync, 2, "cp-1"),
            "{g:?}"
        );
        assert!(!g.admin_addr.is_empty());
    }
    let h = c
        .history(pb::HistoryRequest { limit: 10 })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(
        h.records.iter().map(|r| r.revision).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(h.records[0].author, "root");
}

#[tokio::test]
async fn validation_cas_auth_rollback_and_apply() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-1", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;

    // Invalid rule: INVALID_ARGUMENT and nothing written.
    let e = c
        .put_service(pb::PutServiceRequest {
            service: Some(svc("bad", 2, "random", &[])),
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("services[bad]: strategy is not set"),
        "{}",
        e.message()
    );
    let v = c
        .get_config(pb::GetConfigRequest {})
        .await
        .expect("get")
        .into_inner();
    assert_eq!(v.revision, 1);

    // CAS: a stale expected revision is refused.
    let e = c
        .put_realm(pb::PutRealmRequest {
            realm_id: 1,
            endpoint: b.addr.to_string(),
            options: opts(7),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let ok = c
        .put_realm(pb::PutRealmRequest {
            realm_id: 1,
            endpoint: b.addr.to_string(),
            options: opts(1),
        })
        .await
        .expect("cas ok")
        .into_inner();
    assert_eq!(ok.revision, 2);

    // Dry run: diff, no write.
    let dry = c
        .put_realm(pb::PutRealmRequest {
            realm_id: 2,
            endpoint: b.addr.to_string(),
            options: Some(pb::WriteOptions {
                dry_run: true,
                ..Default::default()
            }),
        })
        .await
        .expect("dry")
        .into_inner();
    assert!(dry.dry_run);
    assert_eq!(dry.diff, vec![format!("+ realm 2: {}", b.addr)]);
    assert_eq!(
        c.get_config(pb::GetConfigRequest {})
            .await
            .expect("get")
            .into_inner()
            .revision,
        2
    );

    // Apply a whole bundle; an identical apply is a no-op.
    let bundle = pb::ConfigBundle {
        services: vec![svc("echo", 1, "consistent_hash", &[b.addr])],
        ..Default::default()
    };
    let w = c
        .apply(pb::ApplyRequest {
            bundle: Some(bundle.clone()),
            options: None,
        })
        .await
        .expect("apply")
        .into_inner();
    assert_eq!(w.revision, 3);
    assert!(
        w.diff.iter().any(|l| l.starts_with("~ service echo")),
        "{:?}",
        w.diff
    );
    assert!(w.diff.iter().any(|l| l == "- realm 1"), "{:?}", w.diff);
    let same = c
        .apply(pb::ApplyRequest {
            bundle: Some(bundle),
            options: None,
        })
        .await
        .expect("apply")
        .into_inner();
    assert!(same.unchanged);
    assert_eq!(same.revision, 3);

    // Path routes are rules like the others: two routes claiming the same
    // path and method, or one to a frame service, are refused.
    let mut web = svc("web", 9, "round_robin", &[b.addr]);
    web.protocol = pb::BackendProtocol::Http as i32;
    let route = |path: &str, methods: &[&str], service: &str| pb::HttpRoute {
        path: path.into(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        service: service.into(),
        ..Default::default()
    };
    let e = c
        .apply(pb::ApplyRequest {
            bundle: Some(pb::ConfigBundle {
                services: vec![svc("echo", 1, "consistent_hash", &[b.addr]), web.clone()],
                http_routes: vec![
                    route("/api/*", &["GET"], "web"),
                    route("/api/*", &[], "web"),
                    route("/frame/*", &[], "echo"),
                ],
                ..Default::default()
            }),
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("http_routes[/api/*]: conflicts with another route"),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains("speaks the frame protocol"),
        "{}",
        e.message()
    );
    assert_eq!(
        c.get_config(pb::GetConfigRequest {})
            .await
            .expect("get")
            .into_inner()
            .revision,
        3,
        "nothing written"
    );

    // Rollback to revision 2 writes revision 4 with revision 2's bundle.
    let rb = c
        .rollback(pb::RollbackRequest {
            to_revision: 2,
            options: None,
        })
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(rb.revision, 4);
    let v = c
        .get_config(pb::GetConfigRequest {})
        .await
        .expect("get")
        .into_inner();
    let bundle = v.bundle.expect("bundle");
    assert_eq!(bundle.realms.get(&1), Some(&b.addr.to_string()));
    assert_eq!(
        bundle.services[0].strategy,
        gg_proto::model::Strategy::RoundRobin.to_pb()
    );
    let e = c
        .rollback(pb::RollbackRequest {
            to_revision: 99,
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .delete_service(pb::DeleteServiceRequest {
            name: "nope".into(),
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Auth.
    let e = cp_client(&cp, None)
        .await
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = cp_client(&cp, Some(READ_TOKEN))
        .await
        .apply(pb::ApplyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn two_replicas_see_each_others_writes() {
    let redis = Redis::start().await;
    let (cp1, cp2) = (
        controlplane("cp-1", &redis.url(), 5000).await,
        controlplane("cp-2", &redis.url(), 5000).await,
    );
    let b = backend("b1").await;
    let gw = cp_gateway("gw-0", cp2.grpc, &scratch("snap", "pb")).await;
    let mut c1 = cp_client(&cp1, Some(ADMIN_TOKEN)).await;
    let w = put_service(&mut c1, svc("echo", 1, "round_robin", &[b.addr])).await;
    let mut c2 = cp_client(&cp2, Some(READ_TOKEN)).await;
    let v = c2
        .get_config(pb::GetConfigRequest {})
        .await
        .expect("get")
        .into_inner();
    assert_eq!(v.revision, w.revision, "reads go to redis");
    // The gateway on replica 2 gets replica 1's write.
    eventually("gateway on cp-2 applies cp-1's write", || async {
        gw_revision(&gw).await == w.revision
    })
    .await;
    assert_eq!(call(&gw, "echo", b"x").await.0, 200);
    // And replica 1 sees the gateway registered through replica 2.
    let list = c1
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.gateways[0].connected_to, "cp-2");
}

#[tokio::test]
async fn control_plane_down_gateways_keep_routing_and_restart_serves_from_disk() {
    let redis = Redis::start().await;
    let mut cp = controlplane("cp-1", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let snap = scratch("snap", "pb");
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let gw = cp_gateway("gw-0", cp.grpc, &snap).await;
    eventually("config applied", || async { gw_revision(&gw).await == 1 }).await;
    assert!(snap.exists(), "snapshot saved to disk");

    // Control plane killed: the gateway keeps routing on its last config.
    let _ = cp.proc.child.start_kill();
    let _ = cp.proc.child.wait().await;
    assert_eq!(
        call(&gw, "echo", b"still").await,
        (200, "still".to_string())
    );

    // A gateway restarted while the control plane is down serves from disk.
    drop(gw);
    let cp_addr = cp.grpc;
    let gw = cp_gateway("gw-0", cp_addr, &snap).await;
    assert_eq!(http(gw.ops, "GET", "/ready", &[], b"").await.0, 200);
    assert_eq!(
        call(&gw, "echo", b"from disk").await,
        (200, "from disk".to_string())
    );

    // A new replica (same Redis) comes up; a write converges the gateway.
    let cp2 = controlplane("cp-2", &redis.url(), 5000).await;
    let gw2 = cp_gateway("gw-1", cp2.grpc, &scratch("snap", "pb")).await;
    let mut c2 = cp_client(&cp2, Some(ADMIN_TOKEN)).await;
    let w = put_service(&mut c2, svc("echo2", 2, "round_robin", &[b.addr])).await;
    eventually("new gateway converges", || async {
        gw_revision(&gw2).await == w.revision
    })
    .await;
    assert_eq!(call(&gw2, "echo2", b"y").await.0, 200);
}

#[tokio::test]
async fn wiped_store_changes_epoch_and_gateways_resync() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-1", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    for i in 0..3u32 {
        put_service(
            &mut c,
            svc(&format!("s{i}"), i + 1, "round_robin", &[b.addr]),
        )
        .await;
    }
    let gw = cp_gateway("gw-0", cp.grpc, &scratch("snap", "pb")).await;
    eventually("applied 3", || async { gw_revision(&gw).await == 3 }).await;
    let old_epoch = c
        .get_config(pb::GetConfigRequest {})
        .await
        .expect("get")
        .into_inner()
        .epoch;

    assert!(redis.cmd(&["FLUSHALL"]).await.starts_with("+OK"));
    eventually("new epoch", || {
        let mut c = c.clone();
        let old = old_epoch.clone();
        async move {
            let v = c
                .get_config(pb::GetConfigRequest {})
                .await
                .expect("get")
                .into_inner();
            !v.epoch.is_empty() && v.epoch != old
        }
    })
    .await;
    // Revision 0 of a wiped store is not applied: the gateway keeps serving,
    // and the rollout shows the rejection with the gateway's reason.
    assert_eq!(call(&gw, "s1", b"kept").await.0, 200);
    eventually("rollout shows the rejection", || {
        let mut c = c.clone();
        async move {
            let r = c
                .rollout_status(pb::RolloutStatusRequest { revision: 0 })
                .await
                .expect("rollout")
                .into_inner();
            r.rejected == 1 && r.gateways[0].error.contains("no config")
        }
    })
    .await;

    // Revision 1 of the new epoch is applied even though 1 < 3.
    let w = put_service(&mut c, svc("fresh", 9, "round_robin", &[b.addr])).await;
    assert_eq!(w.revision, 1);
    eventually("resynced to the new epoch", || async {
        let i = admin(&gw, Some(READ_TOKEN))
            .await
            .get_info(gwpb::GetInfoRequest {})
            .await
            .expect("info")
            .into_inner();
        i.config_revision == 1 && i.config_epoch == w.epoch
    })
    .await;
    assert_eq!(call(&gw, "fresh", b"new").await.0, 200);
    assert_eq!(call(&gw, "s1", b"gone").await.0, 404);
}

#[tokio::test]
async fn acknowledged_writes_survive_a_redis_crash() {
    let mut redis = Redis::start_durable().await;
    let cp = controlplane("cp-1", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    // The realm map first: a realm service needs a non-empty one.
    c.put_realm(pb::PutRealmRequest {
        realm_id: 1,
        endpoint: b.addr.to_string(),
        options: None,
    })
    .await
    .expect("realm");
    put_service(&mut c, svc("game", 3, "realm", &[])).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let (mut c, stop, ep) = (c.clone(), stop.clone(), b.addr.to_string());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let realm = 1000 + w * 1000 + i;
                match c
                    .put_realm(pb::PutRealmRequest {
                        realm_id: realm,
                        endpoint: ep.clone(),
                        options: None,
                    })
                    .await
                {
                    Ok(r) => acked.push((realm, r.into_inner().revision)),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.kill().await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(
        acked.len() > 5,
        "too few writes before the crash: {}",
        acked.len()
    );
    redis.restart().await;

    // Every acknowledged write is there, and the stored state is whole:
    // the bundle's revision matches the newest history record.
    // GetConfig answers from memory while the store is down, so wait for the
    // control plane to report the store up before reading.
    eventually("control plane reads redis again", || async {
        http(cp.ops, "GET", "/ready", &[], b"").await.0 == 200
    })
    .await;
    let v = c
        .get_config(pb::GetConfigRequest {})
        .await
        .expect("get")
        .into_inner();
    let realms = v.bundle.expect("bundle").realms;
    for (realm, rev) in &acked {
        assert!(
            realms.contains_key(realm),
            "acknowledged realm {realm} (revision {rev}) lost"
        );
        assert!(*rev <= v.revision);
    }
    let h = c
        .history(pb::HistoryRequest { limit: 1 })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(
        h.records[0].revision, v.revision,
        "history and config disagree: partial write"
    );
    let revs: HashSet<u64> = acked.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        revs.len(),
        acked.len(),
        "two writes acknowledged with the same revision"
    );
}

#[tokio::test]
async fn session_directory_lookup_and_lease_expiry() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-1", &redis.url(), 1500).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let gw = cp_gateway("gw-dir", cp.grpc, &scratch("snap", "pb")).await;
    eventually("ready", || async {
        http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
    })
    .await;
    let mut s1 = Client::tcp(gw.client).await;
    s1.hello(31337, 0).await;
    let mut s2 = Client::ws(gw.client).await;
    s2.hello(31337, 0).await;

    let mut d = dir_client(&cp).await;
    let sid = s1.session_id;
    eventually("session in the directory", || {
        let mut d = d.clone();
        async move {
            d.lookup(pb::LookupRequest { session_id: sid })
                .await
                .is_ok()
        }
    })
    .await;
    let o = d
        .lookup(pb::LookupRequest { session_id: sid })
        .await
        .expect("lookup")
        .into_inner()
        .ownership
        .expect("owner");
    assert_eq!((o.gateway_id.as_str(), o.user_id), ("gw-dir", 31337));
    assert_eq!(o.gateway_admin_addr, gw.admin.expect("admin").to_string());
    eventually("both sessions by user", || {
        let mut d = d.clone();
        async move {
            d.lookup_user(pb::LookupUserRequest { user_id: 31337 })
                .await
                .map(|r| r.into_inner().sessions.len() == 2)
                .unwrap_or(false)
        }
    })
    .await;
    let batch = d
        .batch_lookup(pb::BatchLookupRequest {
            session_ids: vec![sid, 42],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(
        (batch.found.len(), batch.missing.as_slice()),
        (1, &[42u64][..])
    );
    assert_eq!(
        d.lookup(pb::LookupRequest { session_id: 42 })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // A closed session leaves the directory.
    let sid2 = s2.session_id;
    drop(s2);
    eventually("closed session removed", || {
        let mut d = d.clone();
        async move {
            d.lookup(pb::LookupRequest { session_id: sid2 })
                .await
                .is_err()
        }
    })
    .await;

    // The gateway dies: its sessions are gone once its lease expires.
    let mut gw = gw;
    let _ = gw.proc.child.start_kill();
    let _ = gw.proc.child.wait().await;
    eventually("dead gateway's sessions expire with its lease", || {
        let mut d = d.clone();
        async move {
            d.lookup(pb::LookupRequest { session_id: sid })
                .await
                .err()
                .map(|e| e.code())
                == Some(Code::NotFound)
        }
    })
    .await;
    let cpm = c
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(
        cpm.gateways.iter().all(|g| g.gateway_id != "gw-dir"),
        "dead gateway still listed"
    );
}

#[tokio::test]
async fn drain_a_gateway_through_the_control_plane() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-1", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let gw = cp_gateway("gw-drain", cp.grpc, &scratch("snap", "pb")).await;
    eventually("registered", || {
        let mut c = c.clone();
        async move {
            c.list_gateways(pb::ListGatewaysRequest {})
                .await
                .map(|l| !l.into_inner().gateways.is_empty())
                .unwrap_or(false)
        }
    })
    .await;
    let mut s = Client::tcp(gw.client).await;
    s.hello(1, 0).await;
    let r = c
        .drain_gateway(pb::DrainGatewayRequest {
            gateway_id: "gw-drain".into(),
            request_id: "r1".into(),
            deadline_ms: 60_000,
            spread_ms: 0,
            reason: "rollout".into(),
        })
        .await
        .expect("drain")
        .into_inner();
    assert_eq!(r.sessions_at_start, 1);
    s.recv_kind(gg_proto::Kind::GoAway).await;
    assert_eq!(http(gw.ops, "GET", "/ready", &[], b"").await.0, 503);
    let e = c
        .drain_gateway(pb::DrainGatewayRequest {
            gateway_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// One `gwctl drain start … --wait` through the control plane is one
/// trace at a real OTLP receiver: gwctl's span is the root, the control
/// plane's DrainGateway is its child, the gateway's StartDrain is the
/// control plane's child, and gwctl's WatchDrain on the gateway is gwctl's
/// child. Both servers sample nothing of their own (`sample_ratio: 0`), so
/// every server span there was continued from the caller's context.
#[tokio::test]
async fn one_drain_is_one_trace_across_gwctl_the_control_plane_and_the_gateway() {
    use crate::otlp::{Receiver, hex};
    let (rx, otlp) = Receiver::start().await;
    let telemetry = |name: &str| {
        format!(
            "telemetry:\n  otlp_endpoint: http://{otlp}\n  service_name: {name}\n  sample_ratio: 0.0\n  export_interval_ms: 100\n"
        )
    };
    let redis = Redis::start().await;
    let cp = controlplane_extra(
        "cp-trace",
        &format!("{{ url: \"{}\" }}", redis.url()),
        5000,
        &telemetry("cp-under-test"),
    )
    .await;
    let gw = gateway_named(
        "gw-trace",
        &format!(
            "controlplane:\n  url: http://{}\n  token: {{ name: cp, scope: operate, value: {OPERATE_TOKEN} }}\n  snapshot_path: {}\n{}{}",
            cp.grpc,
            scratch("snap", "pb").display(),
            admin_yaml(),
            telemetry("gw-under-test")
        ),
    )
    .await;
    let c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    eventually("registered", || {
        let mut c = c.clone();
        async move {
            c.list_gateways(pb::ListGatewaysRequest {})
                .await
                .map(|l| !l.into_inner().gateways.is_empty())
                .unwrap_or(false)
        }
    })
    .await;
    let out = tokio::process::Command::new(bin("gwctl"))
        .args(["--controlplane", &format!("http://{}", cp.grpc)])
        .args(["--otlp-endpoint", &format!("http://{otlp}")])
        .args([
            "drain",
            "start",
            "gw-trace",
            "--deadline",
            "5s",
            "--spread",
            "0s",
            "--wait",
        ])
        .env("GWCTL_TOKEN", ADMIN_TOKEN)
        .env_remove("GWCTL_CONFIG")
        .env("XDG_CONFIG_HOME", scratch("no-config", "d"))
        .output()
        .await
        .expect("gwctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let trace = stderr
        .lines()
        .find_map(|l| l.strip_prefix("gwctl: trace "))
        .unwrap_or_else(|| panic!("gwctl printed no trace id: {stderr}"))
        .to_string();

    let wanted = [
        ("gwctl", "gwctl drain start"),
        (
            "cp-under-test",
            "/controlplane.v1.ControlPlane/DrainGateway",
        ),
        ("gw-under-test", "/gateway.admin.v1.GatewayAdmin/StartDrain"),
        ("gw-under-test", "/gateway.admin.v1.GatewayAdmin/WatchDrain"),
    ];
    let deadline = Instant::now() + WAIT;
    let spans = loop {
        let spans: Vec<_> = rx
            .all()
            .into_iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace)
            .collect();
        let all = wanted.iter().all(|(svc, name)| {
            spans
                .iter()
                .any(|(s, sp)| s.contains(svc) && sp.name == *name)
        });
        if all {
            break spans;
        }
        if Instant::now() > deadline {
            let seen: Vec<_> = rx
                .all()
                .iter()
                .map(|(svc, s)| format!("{svc} {} trace={}", s.name, hex(&s.trace_id)))
                .collect();
            panic!(
                "trace {trace}: not all of {wanted:?} exported; seen: {seen:#?}; gwctl: {stderr}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id_of = |name: &str| {
        let (_, s) = spans.iter().find(|(_, s)| s.name == name).expect("span");
        (hex(&s.span_id), hex(&s.parent_span_id))
    };
    let (root, root_parent) = id_of("gwctl drain start");
    assert_eq!(root_parent, "", "gwctl's span is the root");
    let (cp_span, cp_parent) = id_of("/controlplane.v1.ControlPlane/DrainGateway");
    assert_eq!(cp_parent, root);
    let (_, start_parent) = id_of("/gateway.admin.v1.GatewayAdmin/StartDrain");
    assert_eq!(
        start_parent, cp_span,
        "the gateway continues the control plane's span"
    );
    let (_, watch_parent) = id_of("/gateway.admin.v1.GatewayAdmin/WatchDrain");
    assert_eq!(watch_parent, root);
    drop(gw);
}

/// The backend kit's `Directory`: who owns a session, and a push to it
/// through the owning gateway, with the tokens a backend team gets.
#[tokio::test]
async fn backend_kit_directory_finds_the_owner_and_pushes_through_it() {
    use gg_backend::{Directory, DirectoryError};
    let redis = Redis::start().await;
    let cp = controlplane("cp-kit", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let gw = cp_gateway("gw-kit", cp.grpc, &scratch("snap", "pb")).await;
    eventually("gateway ready", || async {
        http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
    })
    .await;
    let mut s = Client::tcp(gw.client).await;
    s.hello(77, 0).await;
    let sid = s.session_id;

    let url = format!("http://{}", cp.grpc);
    let dir = Directory::new(&url, Some(READ_TOKEN.into()), Some(OPERATE_TOKEN.into()))
        .expect("directory");
    let deadline = Instant::now() + WAIT;
    let o = loop {
        if let Some(o) = dir.lookup(sid).await.expect("lookup") {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "the directory never knew session {sid}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((o.gateway_id.as_str(), o.user_id), ("gw-kit", 77));
    assert_eq!(dir.lookup_user(77).await.expect("by user").len(), 1);

    assert!(
        dir.push(sid, 1, b"from the kit".to_vec())
            .await
            .expect("push")
    );
    let f = s.recv_kind(gg_proto::Kind::Data).await;
    assert_eq!(&f.payload[..], b"from the kit");

    // Watch presence from the oldest kept: this session's open is there.
    let mut w = dir.watch("0", vec![77]).await.expect("watch");
    let batch = tokio::time::timeout(WAIT, w.message())
        .await
        .expect("in time")
        .expect("stream")
        .expect("batch");
    assert!(
        batch.events.iter().any(|e| e.session_id == sid),
        "{batch:?}"
    );
    // Many at once through the control plane (operate token).
    let ops = Directory::new(&url, Some(OPERATE_TOKEN.into()), None).expect("dir");
    let r = ops
        .push_many(vec![sid], vec![], 1, b"batch".to_vec())
        .await
        .expect("push_many");
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].status,
        gg_proto::pb::controlplane::PushStatus::Delivered as i32
    );
    assert_eq!(
        &s.recv_kind(gg_proto::Kind::Data).await.payload[..],
        b"batch"
    );

    // Unknown ids are "nobody", not errors; a wrong token is an error.
    assert!(dir.lookup(sid + 1_000_000).await.expect("lookup").is_none());
    assert!(
        !dir.push(sid + 1_000_000, 1, b"x".to_vec())
            .await
            .expect("push")
    );
    let bad = Directory::new(&url, Some("not-a-real-token-at-all".into()), None).expect("dir");
    match bad.lookup(sid).await {
        Err(DirectoryError::Status(Code::Unauthenticated, _)) => {}
        other => panic!("expected unauthenticated, got {other:?}"),
    }
}

/// Fleet-wide IP lists set with gwctl reach every gateway: new connections
/// from a denied block are refused at accept, open sessions from it are
/// closed 3505, an allow list admits only its blocks, bad blocks are
/// refused with the reason, and removing a block admits it again.
#[tokio::test]
async fn fleet_ip_lists_set_with_gwctl_apply_on_every_gateway() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-ip", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let gws = [
        cp_gateway("gw-ip-0", cp.grpc, &scratch("snap", "pb")).await,
        cp_gateway("gw-ip-1", cp.grpc, &scratch("snap", "pb")).await,
    ];
    for gw in &gws {
        eventually("gateway ready", || async {
            http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
        })
        .await;
    }
    let mut abuser = Client::tcp_from(gws[0].client, "127.0.0.2".parse().expect("ip")).await;
    abuser.hello(2, 0).await;
    let gwctl = |args: &[&str]| {
        let out = std::process::Command::new(bin("gwctl"))
            .args(["--controlplane", &format!("http://{}", cp.grpc)])
            .args(args)
            .env("GWCTL_TOKEN", ADMIN_TOKEN)
            .env_remove("GWCTL_CONFIG")
            .env("XDG_CONFIG_HOME", scratch("no-config", "d"))
            .output()
            .expect("gwctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    let (code, text) = gwctl(&[
        "ip-lists",
        "add",
        "deny",
        "127.0.0.2/32",
        "--comment",
        "abuse",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let started = Instant::now();
    for gw in &gws {
        eventually("127.0.0.2 refused", || refused_from(gw.client, "127.0.0.2")).await;
    }
    eprintln!(
        "deny list applied on both gateways after {:?}",
        started.elapsed()
    );
    assert_eq!(abuser.expect_close().await.code, 3505);
    for gw in &gws {
        assert!(!refused_from(gw.client, "127.0.0.1").await);
        assert!(gw.metric("gg_rejections_total{reason=\"ip_denied\"}").await >= 1.0);
    }
    let (_, listed) = gwctl(&["ip-lists", "list", "-o", "json"]);
    assert!(listed.contains("\"block\": \"127.0.0.2/32\""), "{listed}");

    // Bad input is refused with the reason, by gwctl and by the control plane.
    let (code, text) = gwctl(&["ip-lists", "add", "deny", "10.0.0.0/33"]);
    assert_eq!(code, Some(1));
    assert!(text.contains("prefix must be 0-32"), "{text}");
    let bad = scratch("bad-bundle", "yaml");
    std::fs::write(
        &bad,
        format!("services:\n  - {{ name: echo, id: 1, strategy: round_robin, endpoints: [{}] }}\nip_lists: {{ deny: [not-an-address] }}\n", b.addr),
    )
    .expect("write");
    let (code, text) = gwctl(&["apply", "-f", bad.to_str().expect("utf8")]);
    assert_eq!(code, Some(1));
    assert!(text.contains("not-an-address"), "{text}");
    let (code, text) = gwctl(&["ip-lists", "remove", "deny", "192.0.2.1"]);
    assert_eq!(code, Some(1), "{text}");

    // An allow list admits only its blocks.
    let (code, text) = gwctl(&["ip-lists", "add", "allow", "127.0.0.1"]);
    assert_eq!(code, Some(0), "{text}");
    for gw in &gws {
        eventually("127.0.0.3 not allowed", || {
            refused_from(gw.client, "127.0.0.3")
        })
        .await;
        assert!(!refused_from(gw.client, "127.0.0.1").await);
    }
    // Removing both admits everyone again.
    assert_eq!(
        gwctl(&["ip-lists", "remove", "allow", "127.0.0.1"]).0,
        Some(0)
    );
    assert_eq!(
        gwctl(&["ip-lists", "remove", "deny", "127.0.0.2/32"]).0,
        Some(0)
    );
    for gw in &gws {
        eventually("127.0.0.2 admitted", || async {
            !refused_from(gw.client, "127.0.0.2").await
        })
        .await;
    }
}

/// Session policy across two gateways: a second login kicks the first
/// (3508) with `kick_oldest`, or is closed itself (3509) with
/// `reject_new`; of two logins at once exactly one survives; a resume
/// keeps its session id and is not a second session; a limit of 0 is
/// refused.
#[tokio::test]
async fn one_session_per_user_across_two_gateways() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-pol", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let secret = scratch("resume", "key");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").expect("secret");
    let mut gws = Vec::new();
    for id in ["gw-pol-0", "gw-pol-1"] {
        let gw = gateway_named(
            id,
            &format!(
                "controlplane:\n  url: http://{}\n  token: {{ name: cp, scope: operate, value: {OPERATE_TOKEN} }}\n  snapshot_path: {}\n  session_flush_ms: 20\n{}resume: {{ secret_file: {} }}\n",
                cp.grpc,
                scratch("snap", "pb").display(),
                admin_yaml(),
                secret.display()
            ),
        )
        .await;
        eventually("gateway ready", || async {
            http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
        })
        .await;
        gws.push(gw);
    }
    let gwctl = |args: &[&str]| {
        let out = std::process::Command::new(bin("gwctl"))
            .args(["--controlplane", &format!("http://{}", cp.grpc)])
            .args(args)
            .env("GWCTL_TOKEN", ADMIN_TOKEN)
            .env_remove("GWCTL_CONFIG")
            .env("XDG_CONFIG_HOME", scratch("no-config", "d"))
            .output()
            .expect("gwctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = gwctl(&[
        "session-policy",
        "set",
        "--max-per-user",
        "0",
        "--on-excess",
        "kick-oldest",
    ]);
    assert_eq!(code, Some(1));
    assert!(text.contains("at least 1"), "{text}");
    let (code, text) = gwctl(&[
        "session-policy",
        "set",
        "--max-per-user",
        "1",
        "--on-excess",
        "kick-oldest",
    ]);
    assert_eq!(code, Some(0), "{text}");

    // A second login on the other gateway replaces the first.
    let mut first = Client::tcp(gws[0].client).await;
    first.hello(5, 0).await;
    let mut second = Client::tcp(gws[1].client).await;
    let w = second.hello(5, 0).await;
    let started = Instant::now();
    let close = first.expect_close().await;
    eprintln!(
        "first login closed {:?} after the second",
        started.elapsed()
    );
    assert_eq!(close.code, 3508, "{close:?}");
    assert_eq!(second.call_text(1, 1, "still here").await, "still here");

    // Resuming the survivor elsewhere is the same session, not a second one.
    let token = w.resume_token.expect("resume token");
    let mut resumed = Client::tcp(gws[0].client).await;
    resumed.resume(5, second.session_id, &token).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(resumed.call_text(1, 2, "resumed").await, "resumed");

    // Two logins at once: exactly one survives.
    let (mut x, mut y) = (
        Client::tcp(gws[0].client).await,
        Client::tcp(gws[1].client).await,
    );
    tokio::join!(x.hello(6, 0), y.hello(6, 0));
    let closed = tokio::select! {
        c = x.expect_close() => { assert_eq!(y.call_text(1, 3, "y").await, "y"); c }
        c = y.expect_close() => { assert_eq!(x.call_text(1, 3, "x").await, "x"); c }
    };
    assert_eq!(closed.code, 3508);

    // reject_new: the newest login is the one closed.
    let (code, text) = gwctl(&[
        "session-policy",
        "set",
        "--max-per-user",
        "1",
        "--on-excess",
        "reject-new",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let mut early = Client::tcp(gws[1].client).await;
    early.hello(7, 0).await;
    let mut late = Client::tcp(gws[0].client).await;
    late.hello(7, 0).await;
    assert_eq!(late.expect_close().await.code, 3509);
    assert_eq!(early.call_text(1, 4, "early").await, "early");
    // Counted once the gateway answered the close, which may be just after
    // the client saw it.
    eventually("three policy closes counted", || async {
        http(cp.ops, "GET", "/metrics", &[], b"")
            .await
            .1
            .contains("cp_session_policy_closes_total 3")
    })
    .await;
    let (_, shown) = gwctl(&["session-policy", "get"]);
    assert!(
        shown.contains("max 1 session(s) per user; excess: reject_new"),
        "{shown}"
    );
}

/// Regions: gateways and endpoints carry one; a service prefers the
/// gateway's region or the client's, falls back when none there is
/// available (and ExplainRoute says so); the fleet list and the directory
/// show regions; a whole region drains one gateway at a time, and running
/// it again skips what is drained.
#[tokio::test]
async fn regions_prefer_fall_back_list_and_drain() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-reg", &redis.url(), 5000).await;
    let mut a = backend("a").await;
    let b = backend("b").await;
    let gwctl = |args: &[&str]| {
        let out = std::process::Command::new(bin("gwctl"))
            .args(["--controlplane", &format!("http://{}", cp.grpc)])
            .args(args)
            .env("GWCTL_TOKEN", ADMIN_TOKEN)
            .env_remove("GWCTL_CONFIG")
            .env("XDG_CONFIG_HOME", scratch("no-config", "d"))
            .output()
            .expect("gwctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (ea, eb) = (format!("{}@eu", a.addr), format!("{}@us", b.addr));
    let (code, text) = gwctl(&[
        "routes",
        "set",
        "echo",
        "--id",
        "1",
        "--strategy",
        "round_robin",
        "--endpoint",
        &ea,
        "--endpoint",
        &eb,
        "--prefer-region",
        "gateway",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = gwctl(&[
        "routes",
        "set",
        "bad",
        "--id",
        "2",
        "--strategy",
        "round_robin",
        "--endpoint",
        "h:1@EU",
    ]);
    assert_eq!(code, Some(1));
    assert!(text.contains("the region must be"), "{text}");
    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nregion: EU\n",
        &["--check"],
    )
    .await;
    assert_eq!(code, Some(64));
    assert!(err.contains("region \"EU\""), "{err}");

    let mut gws = Vec::new();
    for (id, region) in [("gw-eu-0", "eu"), ("gw-eu-1", "eu"), ("gw-us-0", "us")] {
        let gw = gateway_named(
            id,
            &format!(
                "region: {region}\ncontrolplane:\n  url: http://{}\n  token: {{ name: cp, scope: operate, value: {OPERATE_TOKEN} }}\n  snapshot_path: {}\n  session_flush_ms: 20\n{}drain: {{ deadline_ms: 2000, spread_ms: 0, reconnect_after_ms: 0 }}\n",
                cp.grpc,
                scratch("snap", "pb").display(),
                admin_yaml()
            ),
        )
        .await;
        eventually("gateway ready", || async {
            http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
        })
        .await;
        gws.push(gw);
    }
    let whoami = |gw: &Gw, hdrs: &'static [(&'static str, &'static str)]| {
        let addr = gw.client;
        async move { http(addr, "POST", "/v1/call/echo", hdrs, b"whoami").await.1 }
    };
    for _ in 0..3 {
        assert_eq!(whoami(&gws[0], &[]).await, "a", "eu gateway prefers eu");
        assert_eq!(whoami(&gws[2], &[]).await, "b", "us gateway prefers us");
    }

    // The client's region wins where the service says so.
    let (code, text) = gwctl(&[
        "routes",
        "set",
        "echo",
        "--id",
        "1",
        "--strategy",
        "round_robin",
        "--endpoint",
        &ea,
        "--endpoint",
        &eb,
        "--prefer-region",
        "client",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = gwctl(&["rollout", "status", "--wait", "--wait-timeout", "10s"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(whoami(&gws[2], &[("x-region", "eu")]).await, "a");
    assert_eq!(
        whoami(&gws[2], &[]).await,
        "b",
        "no client region: the gateway's"
    );
    let mut c = Client::tcp(gws[0].client).await;
    c.hello_json(3, serde_json::json!({ "region": "us" })).await;
    assert_eq!(c.call_text(1, 1, "whoami").await, "b");

    // Nothing available in the preferred region: the fallback, explained.
    a.proc.child.kill().await.expect("kill a");
    eventually("eu gateways fall back to us", || async {
        whoami(&gws[0], &[]).await == "b"
    })
    .await;
    let explained = admin(&gws[0], Some(READ_TOKEN))
        .await
        .explain_route(gwpb::ExplainRouteRequest {
            service_type: 1,
            ..Default::default()
        })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(
        (
            explained.preferred_region.as_str(),
            explained.endpoint_region.as_str()
        ),
        ("eu", "us")
    );
    assert!(
        explained.why.contains("fell back to us"),
        "{}",
        explained.why
    );

    // The fleet list and the directory show regions.
    let (_, fleet) = gwctl(&["fleet", "list", "--region", "eu", "-o", "json"]);
    assert!(
        fleet.contains("gw-eu-0") && fleet.contains("gw-eu-1") && !fleet.contains("gw-us-0"),
        "{fleet}"
    );
    let deadline = Instant::now() + WAIT;
    let o = loop {
        let r = dir_client(&cp)
            .await
            .lookup(pb::LookupRequest {
                session_id: c.session_id,
            })
            .await;
        if let Ok(r) = r {
            break r.into_inner().ownership.expect("ownership");
        }
        assert!(
            Instant::now() < deadline,
            "the directory never knew the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(o.gateway_region, "eu");

    // Drain the region, one gateway at a time; again: nothing to do.
    let (code, text) = gwctl(&[
        "drain",
        "start",
        "--region",
        "eu",
        "--max-unavailable",
        "1",
        "--wait",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("gw-eu-0: drained") && text.contains("gw-eu-1: drained"),
        "{text}"
    );
    for gw in &gws[..2] {
        assert_eq!(http(gw.ops, "GET", "/ready", &[], b"").await.0, 503);
    }
    assert_eq!(http(gws[2].ops, "GET", "/ready", &[], b"").await.0, 200);
    let (code, text) = gwctl(&["drain", "start", "--region", "eu"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("already drained").count(), 2, "{text}");
    let (code, text) = gwctl(&["drain", "start", "--region", "asia"]);
    assert_eq!(code, Some(1));
    assert!(text.contains("no live gateway in region"), "{text}");
}

/// A `dns://` endpoint set through the control plane: every gateway
/// resolves it with its own resolver and follows the answers.
#[tokio::test]
async fn dns_endpoints_set_through_the_control_plane() {
    use std::net::Ipv4Addr;
    let (a_ip, b_ip) = (Ipv4Addr::new(127, 0, 0, 21), Ipv4Addr::new(127, 0, 0, 22));
    let port = std::net::TcpListener::bind((a_ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let _a = backend_at("a", &format!("{a_ip}:{port}")).await;
    let _b = backend_at("b", &format!("{b_ip}:{port}")).await;
    let dns = crate::dns::Dns::start(&[a_ip]).await;
    let redis = Redis::start().await;
    let cp = controlplane("cp-dns", &redis.url(), 5000).await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    let mut s = svc("echo", 1, "round_robin", &[]);
    s.endpoints = vec![format!("dns://backends.test:{port}")];
    put_service(&mut c, s).await;
    let gw = gateway_named(
        "gw-dns",
        &format!(
            "controlplane:\n  url: http://{}\n  token: {{ name: cp, scope: operate, value: {OPERATE_TOKEN} }}\n  snapshot_path: {}\ndiscovery: {{ nameservers: [\"{}\"], interval_ms: 200 }}\n",
            cp.grpc,
            scratch("snap", "pb").display(),
            dns.addr
        ),
    )
    .await;
    let call = || async {
        http(gw.client, "POST", "/v1/call/echo", &[], b"whoami")
            .await
            .1
    };
    eventually("a answers", || async { call().await == "a" }).await;
    dns.set(&[b_ip]);
    eventually("b answers after the DNS change", || async {
        call().await == "b"
    })
    .await;
}

/// Batch push through the directory: sessions and users on two gateways in
/// one call, a result per session, unknown targets reported, operate scope.
#[tokio::test]
async fn batch_push_reaches_sessions_and_users_on_every_gateway() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-push", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let g0 = cp_gateway("gw-push-0", cp.grpc, &scratch("snap", "pb")).await;
    let g1 = cp_gateway("gw-push-1", cp.grpc, &scratch("snap", "pb")).await;
    for gw in [&g0, &g1] {
        eventually("gateway ready", || async {
            http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
        })
        .await;
    }
    let mut s1 = Client::tcp(g0.client).await;
    s1.hello(1, 0).await;
    let mut s2 = Client::tcp(g1.client).await;
    s2.hello(2, 0).await;
    let mut s3 = Client::tcp(g0.client).await;
    s3.hello(2, 0).await;
    let mut dir = dir_client(&cp).await;
    eventually("the directory knows user 2's sessions", || {
        let mut d = dir.clone();
        async move {
            d.lookup_user(pb::LookupUserRequest { user_id: 2 })
                .await
                .is_ok_and(|r| r.into_inner().sessions.len() == 2)
        }
    })
    .await;
    let req = pb::BatchPushRequest {
        session_ids: vec![s1.session_id, 424_242],
        user_ids: vec![2, 77],
        service_type: 1,
        payload: b"to all".to_vec(),
    };
    let e = dir.push(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "read scope cannot push");
    let mut op = pb::session_directory_client::SessionDirectoryClient::with_interceptor(
        channel(cp.grpc).await,
        Bearer(Some(OPERATE_TOKEN.into())),
    );
    let r = op.push(req).await.expect("push").into_inner().results;
    let status = |sid: u64, uid: u64| {
        r.iter()
            .find(|x| x.session_id == sid && x.user_id == uid)
            .map(|x| {
                (
                    pb::PushStatus::try_from(x.status).expect("status"),
                    x.gateway_id.clone(),
                )
            })
            .unwrap_or_else(|| panic!("no result for {sid}/{uid}: {r:?}"))
    };
    assert_eq!(
        status(s1.session_id, 0),
        (pb::PushStatus::Delivered, "gw-push-0".into())
    );
    assert_eq!(status(424_242, 0).0, pb::PushStatus::NotFound);
    assert_eq!(
        status(s2.session_id, 2),
        (pb::PushStatus::Delivered, "gw-push-1".into())
    );
    assert_eq!(
        status(s3.session_id, 2),
        (pb::PushStatus::Delivered, "gw-push-0".into())
    );
    assert_eq!(status(0, 77).0, pb::PushStatus::NotFound);
    assert_eq!(r.len(), 5, "{r:?}");
    for c in [&mut s1, &mut s2, &mut s3] {
        let f = c.recv_kind(gg_proto::Kind::Data).await;
        assert_eq!((&f.payload[..], f.header.seq), (&b"to all"[..], 0));
    }
    drop(dir);
    let e = op
        .push(pb::BatchPushRequest {
            service_type: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// Presence: a watcher sees opens and closes as batches with a cursor;
/// reconnecting with the last cursor delivers what happened meanwhile;
/// filters apply; a bad cursor is refused.
#[tokio::test]
async fn presence_watch_with_a_cursor_misses_nothing() {
    use futures_util::StreamExt;
    let redis = Redis::start().await;
    let cp = controlplane("cp-pres", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let gw = cp_gateway("gw-presence", cp.grpc, &scratch("snap", "pb")).await;
    eventually("gateway ready", || async {
        http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
    })
    .await;
    let mut dir = dir_client(&cp).await;
    let mut stream = dir
        .watch(pb::WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let mut first = Client::tcp(gw.client).await;
    first.hello(11, 3).await;
    let batch = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a batch in time")
        .expect("stream open")
        .expect("batch");
    let e = &batch.events[0];
    assert_eq!(
        (
            e.session_id,
            e.user_id,
            e.realm_id,
            e.gateway_id.as_str(),
            e.kind
        ),
        (
            first.session_id,
            11,
            3,
            "gw-presence",
            pb::PresenceKind::Open as i32
        )
    );
    let cursor = batch.cursor.clone();
    drop(stream);

    // While nobody watches: the first leaves, a second arrives.
    let first_id = first.session_id;
    first
        .send(&frame(gg_proto::Kind::Close, 0, 0, &b"{\"code\":3500}"[..]))
        .await;
    // The close is reported asynchronously; the order this test asserts
    // is the order things happened, so the second arrives only after the
    // directory has recorded the first leaving.
    eventually("the directory saw the first session close", || {
        let mut d = dir.clone();
        async move {
            d.lookup_user(pb::LookupUserRequest { user_id: 11 })
                .await
                .is_ok_and(|r| r.into_inner().sessions.is_empty())
        }
    })
    .await;
    let mut second = Client::tcp(gw.client).await;
    second.hello(12, 0).await;
    let mut stream = dir
        .watch(pb::WatchRequest {
            cursor,
            ..Default::default()
        })
        .await
        .expect("watch again")
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let b = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a batch in time")
            .expect("open")
            .expect("batch");
        assert!(!b.gap);
        seen.extend(b.events.into_iter().map(|e| (e.session_id, e.kind)));
    }
    assert_eq!(
        seen,
        [
            (first_id, pb::PresenceKind::Close as i32),
            (second.session_id, pb::PresenceKind::Open as i32)
        ]
    );

    // From the oldest kept, only user 12.
    let mut only = dir
        .watch(pb::WatchRequest {
            cursor: "0".into(),
            user_ids: vec![12],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let b = tokio::time::timeout(WAIT, only.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("batch");
    assert!(b.events.iter().all(|e| e.user_id == 12) && !b.events.is_empty());
    let out = tokio::process::Command::new(bin("gwctl"))
        .args(["--controlplane", &format!("http://{}", cp.grpc)])
        .args([
            "presence", "watch", "--cursor", "0", "--user", "12", "--limit", "1", "-o", "json",
        ])
        .env("GWCTL_TOKEN", READ_TOKEN)
        .env_remove("GWCTL_CONFIG")
        .env("XDG_CONFIG_HOME", scratch("no-config", "d"))
        .output()
        .await
        .expect("gwctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("\"session_id\":{}", second.session_id))
            && text.contains("\"kind\":\"open\""),
        "{text}"
    );
    let e = dir
        .watch(pb::WatchRequest {
            cursor: "not-a-cursor".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn fails_fast_when_redis_is_unreachable() {
    let dead = dead_addr();
    let (code, err) = run_to_exit(
        "controlplane",
        &format!(
            "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nredis: {{ url: \"redis://{dead}/\" }}\n"
        ),
        &[],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("cannot reach Redis") && err.contains("is it running?"),
        "{err}"
    );

    let (code, _) = run_to_exit(
        "controlplane",
        "listen: 0.0.0.0:0\nops_listen: 127.0.0.1:0\nredis: { url: \"redis://127.0.0.1:1/\" }\nbogus: 1\n",
        &[],
    )
    .await;
    assert_eq!(code, Some(64));
}

#[tokio::test]
async fn works_against_a_real_redis_cluster() {
    let cluster = Cluster::start().await;
    let seeds: Vec<String> = cluster.seeds().iter().map(|s| format!("\"{s}\"")).collect();
    let cp = controlplane_with(
        "cp-c",
        &format!("{{ cluster: [{}] }}", seeds.join(", ")),
        5000,
    )
    .await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    let w1 = put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let w2 = c
        .put_realm(pb::PutRealmRequest {
            realm_id: 1,
            endpoint: b.addr.to_string(),
            options: opts(w1.revision),
        })
        .await
        .expect("cas")
        .into_inner();
    assert_eq!(w2.revision, 2);
    let gw = cp_gateway("gw-c", cp.grpc, &scratch("snap", "pb")).await;
    eventually(
        "gateway applies from the cluster-backed control plane",
        || async { gw_revision(&gw).await == 2 },
    )
    .await;
    assert_eq!(
        call(&gw, "echo", b"cluster").await,
        (200, "cluster".to_string())
    );

    // Directory keys spread over slots; lookups work across nodes.
    let mut clients = Vec::new();
    for u in 0..20u64 {
        let mut s = Client::tcp(gw.client).await;
        s.hello(5000 + u, 0).await;
        clients.push(s);
    }
    let mut d = dir_client(&cp).await;
    let ids: Vec<u64> = clients.iter().map(|c| c.session_id).collect();
    eventually("all 20 sessions in the directory", || {
        let mut d = d.clone();
        let ids = ids.clone();
        async move {
            d.batch_lookup(pb::BatchLookupRequest { session_ids: ids })
                .await
                .map(|r| r.into_inner().found.len() == 20)
                .unwrap_or(false)
        }
    })
    .await;
    let o = d
        .lookup_user(pb::LookupUserRequest { user_id: 5007 })
        .await
        .expect("user")
        .into_inner();
    assert_eq!(o.sessions.len(), 1);
    let h = c
        .history(pb::HistoryRequest { limit: 5 })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(h.records.len(), 2);
}

#[tokio::test]
async fn redis_acl_user_is_required_and_works() {
    let redis = Redis::start().await;
    // A dedicated ACL user; the default user is switched off.
    let set = redis
        .cmd(&[
            "ACL",
            "SETUSER",
            "gg",
            "on",
            ">cp-secret-0123456789",
            "~*",
            "&*",
            "+@all",
        ])
        .await;
    assert!(set.starts_with("+OK"), "{set}");
    let off = redis.cmd(&["ACL", "SETUSER", "default", "off"]).await;
    assert!(off.starts_with("+OK"), "{off}");

    // Without credentials the control plane refuses to start, with a clear message.
    let (code, err) = run_to_exit(
        "controlplane",
        &format!(
            "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nredis: {{ url: \"{}\" }}\n",
            redis.url()
        ),
        &[],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains("authentication failed"), "{err}");
    // A wrong password reads as such too, not as a timeout.
    let (code, err) = run_to_exit(
        "controlplane",
        &format!(
            "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nredis: {{ url: \"redis://gg:wrong-password-0000@127.0.0.1:{}/\" }}\n",
            redis.port
        ),
        &[],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains("authentication failed"), "{err}");
    assert!(
        !err.contains("wrong-password-0000"),
        "password leaked: {err}"
    );

    // With the ACL user it serves, and the password never appears in its log.
    let url = format!("redis://gg:cp-secret-0123456789@127.0.0.1:{}/", redis.port);
    let cp = controlplane("cp-acl", &url, 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr]))
            .await
            .revision,
        1
    );
    assert!(
        !cp.proc.log_text().contains("cp-secret-0123456789"),
        "redis password leaked into the log"
    );
}

#[tokio::test]
async fn redis_over_tls() {
    let dir = scratch("tls", "d");
    std::fs::create_dir_all(&dir).expect("dir");
    make_certs(&dir);
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut redis = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--tls-cert-file",
            &p("server.crt"),
            "--tls-key-file",
            &p("server.key"),
            "--tls-ca-cert-file",
            &p("ca.crt"),
            "--tls-auth-clients",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "TLS redis did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let cp = controlplane_with(
        "cp-tls",
        &format!(
            "{{ url: \"rediss://127.0.0.1:{port}/\", tls_ca_file: \"{}\" }}",
            p("ca.crt")
        ),
        5000,
    )
    .await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr]))
            .await
            .revision,
        1
    );
    let gw = cp_gateway("gw-tls", cp.grpc, &scratch("snap", "pb")).await;
    eventually(
        "gateway syncs through a TLS-backed control plane",
        || async { gw_revision(&gw).await == 1 },
    )
    .await;

    // Plain text to the TLS port, or TLS without trusting the CA: refused at start.
    for redis_yaml in [
        format!("{{ url: \"redis://127.0.0.1:{port}/\" }}"),
        format!("{{ url: \"rediss://127.0.0.1:{port}/\" }}"),
    ] {
        let (code, err) = run_to_exit(
            "controlplane",
            &format!("listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nredis: {redis_yaml}\n"),
            &[],
        )
        .await;
        assert_ne!(code, Some(0), "started with {redis_yaml}");
        assert!(err.contains("cannot reach Redis"), "{err}");
    }
    let _ = redis.start_kill();
}

#[tokio::test]
async fn sentinel_failover_after_a_master_crash_moves_writes_to_the_new_master() {
    let setup = SentinelSetup::start().await;
    let nodes: Vec<String> = setup.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let cp = controlplane_with(
        "cp-sentinel",
        &format!(
            "{{ sentinel: {{ nodes: [{}], master: gg-master }} }}",
            nodes.join(", ")
        ),
        5000,
    )
    .await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr]))
            .await
            .revision,
        1
    );
    assert_eq!(setup.master_port().await, Some(setup.master.port));
    // Replication is asynchronous: let revision 1 reach the replica first.
    eventually("revision 1 replicated", || async {
        setup.replica.cmd(&["GET", "{gg}:rev"]).await == "$1\r\n1\r\n"
    })
    .await;

    // The master crashes; the sentinels promote the replica.
    let mut setup = setup;
    setup.master.kill().await;
    let replica_port = setup.replica.port;
    eventually("sentinel promotes the replica", || async {
        setup.master_port().await == Some(replica_port)
    })
    .await;

    // Writes follow the new master (the old one is now a read-only replica).
    eventually("a write succeeds on the new master", || {
        let mut c = c.clone();
        let ep = b.addr.to_string();
        async move {
            c.put_realm(pb::PutRealmRequest {
                realm_id: 7,
                endpoint: ep,
                options: None,
            })
            .await
            .is_ok()
        }
    })
    .await;
    let rev = setup.replica.cmd(&["GET", "{gg}:rev"]).await;
    assert_eq!(
        rev, "$1\r\n2\r\n",
        "the write did not land on the new master"
    );
    let v = c
        .get_config(pb::GetConfigRequest {})
        .await
        .expect("get")
        .into_inner();
    assert_eq!(v.revision, 2);
}

#[tokio::test]
async fn readiness_without_config_and_with_redis_down() {
    let mut redis = Redis::start().await;
    let cp = controlplane("cp-1", &redis.url(), 5000).await;
    assert_eq!(
        http(cp.ops, "GET", "/ready", &[], b"").await,
        (200, "ready store=up\n".to_string())
    );
    let (status, metrics) = http(cp.ops, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    assert_metrics_documented(&metrics);

    // A gateway with no config anywhere (empty store, no snapshot) is not ready.
    let gw = cp_gateway("gw-0", cp.grpc, &scratch("snap", "pb")).await;
    let (st, body) = http(gw.ops, "GET", "/ready", &[], b"").await;
    assert_eq!(st, 503);
    assert!(body.contains("no routing config"), "{body}");

    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    eventually("gateway ready once a config arrives", || async {
        http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
    })
    .await;

    // Redis down: the control plane says so, keeps serving reads, refuses writes.
    redis.kill().await;
    eventually("store=down", || async {
        http(cp.ops, "GET", "/ready", &[], b"").await
            == (503, "not ready: store=down\n".to_string())
    })
    .await;
    let v = c
        .get_config(pb::GetConfigRequest {})
        .await
        .expect("reads still served")
        .into_inner();
    assert_eq!(v.revision, 1);
    let e = c
        .put_realm(pb::PutRealmRequest {
            realm_id: 1,
            endpoint: b.addr.to_string(),
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("nothing was written"),
        "{}",
        e.message()
    );
    // The gateway keeps routing.
    assert_eq!(
        call(&gw, "echo", b"still").await,
        (200, "still".to_string())
    );
}

/// Explain on a gateway's admin API.
async fn explain(gw: &Gw, user: u64) -> gwpb::ExplainRouteResponse {
    admin(gw, Some(READ_TOKEN))
        .await
        .explain_route(gwpb::ExplainRouteRequest {
            service_type: 1,
            user_id: user,
            ..Default::default()
        })
        .await
        .expect("explain")
        .into_inner()
}

async fn backend_addrs(gw: &Gw) -> Vec<String> {
    admin(gw, Some(READ_TOKEN))
        .await
        .list_backends(gwpb::ListBackendsRequest {})
        .await
        .expect("list backends")
        .into_inner()
        .backends
        .into_iter()
        .map(|b| b.endpoint)
        .collect()
}

async fn rollout_done(c: &CpClient, revision: u64, gateways: u32) {
    eventually("rollout applied on every gateway", || {
        let mut c = c.clone();
        async move {
            let r = c
                .rollout_status(pb::RolloutStatusRequest { revision })
                .await
                .expect("rollout")
                .into_inner();
            r.applied == gateways && r.pending == 0
        }
    })
    .await;
}

/// One routing decision: a cluster override written through the control
/// plane is named by explain on every gateway and followed by traffic;
/// explain changes nothing; the backend pool drops an override target once
/// the override expires, and an endpoint once the rules stop naming it
/// (moving the sessions bound there).
#[tokio::test]
async fn cluster_override_is_explained_and_followed_and_the_pool_follows_the_rules() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-1", &redis.url(), 5000).await;
    let (b1, b2, b3) = (
        backend("b1").await,
        backend("b2").await,
        backend("b3").await,
    );
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(
        &mut c,
        svc("acct", 1, "consistent_hash", &[b1.addr, b2.addr]),
    )
    .await;
    let gws = [
        cp_gateway("gw-a", cp.grpc, &scratch("snap", "pb")).await,
        cp_gateway("gw-b", cp.grpc, &scratch("snap", "pb")).await,
    ];
    for gw in &gws {
        eventually("gateway ready", || async {
            http(gw.ops, "GET", "/ready", &[], b"").await.0 == 200
        })
        .await;
    }
    let user = 4242;
    let natural = explain(&gws[0], user).await;
    assert_eq!(natural.override_id, "");
    assert!(natural.why.contains("consistent_hash"), "{}", natural.why);

    // A cluster override to an endpoint no rule names, expiring by itself.
    let w = c
        .put_override(pb::PutOverrideRequest {
            r#override: Some(pb::ClusterOverride {
                id: "to-b3".into(),
                service_type: 1,
                user_id: user,
                target: b3.addr.to_string(),
                reason: "canary for one player".into(),
                ..Default::default()
            }),
            ttl_ms: 4000,
            options: None,
        })
        .await
        .expect("put override")
        .into_inner();
    rollout_done(&c, w.revision, 2).await;
    let b3_addr = b3.addr.to_string();
    for gw in &gws {
        let ex = explain(gw, user).await;
        assert_eq!(
            (ex.override_id.as_str(), ex.endpoint.as_str()),
            ("to-b3", b3_addr.as_str()),
            "{ex:?}"
        );
        assert!(ex.why.contains("cluster override to-b3"), "{}", ex.why);
        // Explain is read-only: asking twice gives the same answer.
        assert_eq!(explain(gw, user).await.endpoint, ex.endpoint);
        let user_hdr = user.to_string();
        let (status, body) = http(
            gw.client,
            "POST",
            "/v1/call/acct",
            &[("x-user-id", user_hdr.as_str())],
            b"whoami",
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "b3"));
        assert!(backend_addrs(gw).await.contains(&b3_addr));
    }

    // Expiry: explain falls back to the rule, and b3 leaves the pool.
    for gw in &gws {
        eventually("override target retired", || async {
            !backend_addrs(gw).await.contains(&b3_addr)
        })
        .await;
        let ex = explain(gw, user).await;
        assert_eq!(
            (ex.override_id.as_str(), ex.endpoint.as_str()),
            ("", natural.endpoint.as_str())
        );
    }

    // A session bound to b2, then b2 removed from the rules: the session is
    // moved to b1 and b2's connections close.
    let b2_addr = b2.addr.to_string();
    let mut u2 = 0;
    for u in 1..200 {
        if explain(&gws[0], u).await.endpoint == b2_addr {
            u2 = u;
            break;
        }
    }
    assert_ne!(u2, 0, "no user hashes to b2");
    let mut client = Client::tcp(gws[0].client).await;
    client.hello(u2, 0).await;
    assert_eq!(client.call_text(1, 1, "whoami").await, "b2");
    let w = put_service(&mut c, svc("acct", 1, "consistent_hash", &[b1.addr])).await;
    rollout_done(&c, w.revision, 2).await;
    for gw in &gws {
        eventually("removed endpoint retired", || async {
            !backend_addrs(gw).await.contains(&b2_addr)
        })
        .await;
    }
    assert_eq!(client.call_text(1, 2, "whoami").await, "b1");
}

/// Redis stops answering (SIGSTOP, a blackhole): readiness turns within
/// about a second or two, writes answer UNAVAILABLE within about
/// `redis.timeout_ms` each and in parallel, and everything recovers when
/// Redis answers again. A write retried with its request id is applied
/// once; an empty fleet is an empty list.
#[tokio::test]
async fn redis_outage_fails_fast_in_parallel_and_retries_are_idempotent() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-outage", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    let fleet = c
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .expect("an empty fleet is not an error")
        .into_inner();
    assert!(fleet.gateways.is_empty());

    let with_id = |id: &str| {
        Some(pb::WriteOptions {
            request_id: id.into(),
            ..Default::default()
        })
    };
    let first = c
        .put_service(pb::PutServiceRequest {
            service: Some(svc("echo", 1, "round_robin", &[b.addr])),
            options: with_id("req-1"),
        })
        .await
        .expect("write")
        .into_inner();
    assert_eq!((first.revision, first.replayed), (1, false));
    assert_eq!(first.request_id, "req-1");
    // The same request again (say its answer was lost): the first result,
    // no second revision — even though the retry's content differs.
    let again = c
        .put_service(pb::PutServiceRequest {
            service: Some(svc("other", 2, "round_robin", &[b.addr])),
            options: with_id("req-1"),
        })
        .await
        .expect("replay")
        .into_inner();
    assert_eq!((again.revision, again.replayed), (1, true));
    assert_eq!(again.diff, first.diff);
    let v = c
        .get_config(pb::GetConfigRequest {})
        .await
        .expect("get")
        .into_inner();
    assert_eq!(v.revision, 1);
    assert_eq!(v.bundle.expect("bundle").services.len(), 1);

    redis.proc.signal("STOP");
    let stopped = Instant::now();
    eventually("store=down while redis is stopped", || async {
        http(cp.ops, "GET", "/ready", &[], b"").await.0 == 503
    })
    .await;
    eprintln!("/ready 503 after {:?}", stopped.elapsed());
    // Eight writes at once: each fails on its own bound, none queues
    // behind another.
    let started = Instant::now();
    let writes = (0..8u32).map(|i| {
        let mut c = c.clone();
        async move {
            c.put_realm(pb::PutRealmRequest {
                realm_id: 10 + i,
                endpoint: "127.0.0.1:1".into(),
                options: None,
            })
            .await
        }
    });
    let results = futures_util::future::join_all(writes).await;
    let took = started.elapsed();
    eprintln!("8 writes during the outage answered within {took:?}");
    for r in &results {
        let e = r
            .as_ref()
            .expect_err("no write succeeds while redis is stopped");
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    assert!(took < Duration::from_secs(6), "writes queued: {took:?}");

    redis.proc.signal("CONT");
    eventually("store=up once redis answers", || async {
        http(cp.ops, "GET", "/ready", &[], b"").await.0 == 200
    })
    .await;
    let w = put_service(&mut c, svc("after", 3, "round_robin", &[b.addr])).await;
    assert_eq!(w.revision, 2);
}

/// The control plane stops answering (SIGSTOP: no FIN, no RST): the gateway
/// notices through its HTTP/2 keepalive (10 s + 5 s), keeps routing on its
/// last config meanwhile, and converges once the control plane is back.
#[tokio::test]
async fn a_stopped_control_plane_is_noticed_and_gateways_keep_serving() {
    let redis = Redis::start().await;
    let cp = controlplane("cp-stop", &redis.url(), 5000).await;
    let b = backend("b1").await;
    let mut c = cp_client(&cp, Some(ADMIN_TOKEN)).await;
    put_service(&mut c, svc("echo", 1, "round_robin", &[b.addr])).await;
    let gw = cp_gateway("gw-stop", cp.grpc, &scratch("snap", "pb")).await;
    eventually("config applied", || async { gw_revision(&gw).await == 1 }).await;

    cp.proc.signal("STOP");
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(40);
    while !gw.proc.log_text().contains("control plane stream down") {
        assert!(Instant::now() < deadline, "the gateway never noticed");
        assert_eq!(call(&gw, "echo", b"meanwhile").await.0, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("stream loss noticed after {:?}", stopped.elapsed());
    assert_eq!(
        call(&gw, "echo", b"still").await,
        (200, "still".to_string())
    );

    cp.proc.signal("CONT");
    let w = put_service(&mut c, svc("echo2", 2, "round_robin", &[b.addr])).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw_revision(&gw).await != w.revision {
        assert!(Instant::now() < deadline, "the gateway never converged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(call(&gw, "echo2", b"back").await.0, 200);
}
