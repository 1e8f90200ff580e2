//! gRPC pass-through: a tonic client speaks HTTP/2 (h2c) to the gateway's
//! client port; a path route sends `/gateway.admin.v1.GatewayAdmin/*` to a
//! `protocol: grpc` service — here another gateway's admin API, a real
//! tonic server in its own process. Unary and server-streaming calls go
//! through, statuses in trailers arrive intact, and the gateway's own
//! failures are gRPC statuses.

use std::time::Duration;

use gg_proto::pb::admin as pb;
use tonic::Code;

use crate::support::*;

/// A GatewayAdmin client whose calls go to `gw`'s client port.
async fn through(gw: &Gw, token: Option<&str>) -> Admin {
    pb::gateway_admin_client::GatewayAdminClient::with_interceptor(
        channel(gw.client).await,
        Bearer(token.map(str::to_string)),
    )
}

#[tokio::test]
async fn grpc_unary_and_server_streaming_pass_through() {
    let b = backend("b1").await;
    let back = gateway_named(
        "gw-back",
        &format!("{}{}", one_service(b.addr), admin_yaml()),
    )
    .await;
    let back_admin = back.admin.expect("admin");
    let descriptors = scratch("descriptors", "pb");
    std::fs::write(&descriptors, gg_proto::pb::DESCRIPTOR_SET).expect("descriptor set");
    let front = gateway_named(
        "gw-front",
        &format!(
            "transcoding: {{ descriptor_set_file: {} }}\nservices:\n  - {{ name: echo, id: 1, strategy: round_robin, endpoints: [{}] }}\n  - {{ name: admin-api, id: 30, strategy: round_robin, protocol: grpc, endpoints: [\"{back_admin}\"] }}\n  - {{ name: nothing, id: 31, strategy: round_robin, protocol: grpc, endpoints: [\"{}\"] }}\nhttp_routes:\n  - {{ path: \"/gateway.admin.v1.GatewayAdmin/*\", service: admin-api, timeout_ms: 5000 }}\n  - {{ path: \"/grpc.health.v1.Health/*\", service: nothing }}\n  - {{ path: \"/api/info\", service: admin-api, grpc_method: gateway.admin.v1.GatewayAdmin/GetInfo }}\n  - {{ path: \"/api/session\", service: admin-api, grpc_method: gateway.admin.v1.GatewayAdmin/GetSession }}\n  - {{ path: \"/api/broken\", service: admin-api, grpc_method: gateway.admin.v1.GatewayAdmin/Nope }}\n",
            descriptors.display(),
            b.addr,
            dead_addr()
        ),
    )
    .await;

    // Unary: the answer is the back gateway's.
    let mut c = through(&front, Some(READ_TOKEN)).await;
    let info = c
        .get_info(pb::GetInfoRequest {})
        .await
        .expect("GetInfo through the gateway")
        .into_inner();
    assert_eq!(info.gateway_id, "gw-back");
    // Statuses travel in trailers: NOT_FOUND and UNAUTHENTICATED arrive intact.
    let e = c
        .get_session(pb::GetSessionRequest { session_id: 4242 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = through(&front, None)
        .await
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // Server streaming: a drain of the back gateway (holding one session
    // until the deadline), started and watched through the front.
    let mut held = Client::tcp(back.client).await;
    held.hello(9, 0).await;
    through(&front, Some(OPERATE_TOKEN))
        .await
        .start_drain(pb::StartDrainRequest {
            request_id: "via-front".into(),
            deadline_ms: 1500,
            spread_ms: 0,
            reconnect_after_ms: 0,
            reason: "test".into(),
        })
        .await
        .expect("StartDrain through the gateway");
    let mut watch = c
        .watch_drain(pb::WatchDrainRequest {})
        .await
        .expect("WatchDrain")
        .into_inner();
    let mut phases = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("in time");
        let Some(s) = next.unwrap_or_else(|e| panic!("stream failed after {phases:?}: {e:?}"))
        else {
            break;
        };
        phases.push(s.phase);
    }
    let done = gg_proto::pb::common::DrainPhase::Done as i32;
    assert!(phases.len() >= 2, "streamed statuses: {phases:?}");
    assert_ne!(phases[0], done, "{phases:?}");
    assert_eq!(phases.last().copied(), Some(done), "{phases:?}");
    drop(held);

    // HTTP/JSON → gRPC: the same GetInfo as JSON, statuses as HTTP codes.
    let bearer = format!("Bearer {READ_TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let (st, body) = http(front.client, "POST", "/api/info", &auth, b"{}").await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON reply");
    assert_eq!(v["gatewayId"], "gw-back", "{body}");
    let (st, body) = http(
        front.client,
        "POST",
        "/api/session",
        &auth,
        br#"{"sessionId": "4242"}"#,
    )
    .await;
    assert_eq!(st, 404, "{body}");
    assert!(body.contains("grpc status 5"), "{body}");
    let (st, body) = http(front.client, "POST", "/api/info", &[], b"").await;
    assert_eq!(st, 401, "no token: UNAUTHENTICATED is 401: {body}");
    let (st, body) = http(
        front.client,
        "POST",
        "/api/session",
        &auth,
        br#"{"sessionId": true}"#,
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("GetSessionRequest"), "{body}");
    let (st, body) = http(front.client, "POST", "/api/broken", &auth, b"{}").await;
    assert_eq!(st, 500, "{body}");
    assert!(
        body.contains("not in transcoding.descriptor_set_file"),
        "{body}"
    );

    // The gateway's own failure is a gRPC status: the service is down.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(channel(front.client).await);
    let e = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        front
            .metric("gg_http_proxy_requests_total{code=\"2xx\",service=\"admin-api\"}")
            .await
            >= 3.0
    );
}
