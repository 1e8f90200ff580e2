//! Client authentication with JWTs: TCP/WebSocket HELLO `token` and the
//! HTTP `Authorization: Bearer` header.

use gg_proto::CloseCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use crate::support::*;

pub(crate) const SECRET: &str = "jwt-secret-for-tests-0123456789";

pub(crate) fn token(sub: &str, exp_in_s: i64, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": sub, "exp": now + exp_in_s, "iss": "idp" }),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

async fn gateway_with_auth() -> (Gw, Backend) {
    let b = backend("b1").await;
    let secret = scratch("jwt", "secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("secret");
    let gw = gateway(&format!(
        "{}client_auth:\n  secret_file: {}\n  issuer: idp\n{}",
        one_service(b.addr),
        secret.display(),
        admin_yaml()
    ))
    .await;
    (gw, b)
}

#[tokio::test]
async fn hello_needs_a_valid_token_which_names_the_user() {
    let (gw, _b) = gateway_with_auth().await;

    // A valid token: the session belongs to the token's user.
    let mut ok = Client::tcp(gw.client).await;
    ok.hello_json(0, json!({ "token": token("42", 60, SECRET) }))
        .await;
    assert_eq!(ok.call_text(1, 1, "hi").await, "hi");
    let listed = admin(&gw, Some(READ_TOKEN))
        .await
        .list_sessions(gg_proto::pb::admin::ListSessionsRequest {
            user_id: 42,
            ..Default::default()
        })
        .await
        .expect("list sessions")
        .into_inner();
    assert_eq!(listed.total, 1, "the session belongs to the token's user");

    // Refused, each with 3505 and a reason that says what is wrong.
    let cases = [
        (0, json!({}), "authentication required"),
        (0, json!({ "token": token("42", -300, SECRET) }), "xpired"),
        (
            0,
            json!({ "token": token("42", 60, "another-secret-0123456789abc") }),
            "invalid token",
        ),
        (
            7,
            json!({ "token": token("42", 60, SECRET) }),
            "claims user 7",
        ),
        (0, json!({ "token": token("x", 60, SECRET) }), "`sub` claim"),
    ];
    for (user, payload, why) in cases {
        let mut c = Client::tcp(gw.client).await;
        c.send_hello(user, payload).await;
        let close = c.expect_close().await;
        assert_eq!(close.code, CloseCode::Unauthorized.code(), "{why}");
        assert!(close.reason.contains(why), "{why}: {}", close.reason);
    }
    gw.wait_metric("gg_rejections_total{reason=\"unauthorized\"}", |v| v >= 5.0)
        .await;

    // WebSocket clients authenticate the same way.
    let mut ws = Client::ws(gw.client).await;
    ws.hello_json(0, json!({ "token": token("43", 60, SECRET) }))
        .await;
    assert_eq!(ws.call_text(1, 1, "ws").await, "ws");
}

#[tokio::test]
async fn http_calls_need_a_bearer_token() {
    let (gw, _b) = gateway_with_auth().await;
    let (status, body) = http(gw.client, "POST", "/v1/call/echo", &[], b"hi").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"code\":3505"), "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let bearer = format!("Bearer {}", token("42", 60, SECRET));
    let (status, body) = http(
        gw.client,
        "POST",
        "/v1/call/echo",
        &[("authorization", &bearer)],
        b"hi",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "hi");
    let (status, body) = http(
        gw.client,
        "POST",
        "/v1/call/echo",
        &[("authorization", &bearer), ("x-user-id", "7")],
        b"hi",
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("claims user 7"), "{body}");
}

#[tokio::test]
async fn invalid_client_auth_config_is_refused() {
    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nclient_auth: { algorithm: none, secret_env: X }\n",
        &[],
    )
    .await;
    assert_eq!(code, Some(64));
    assert!(err.contains("client_auth.algorithm \"none\""), "{err}");
    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nclient_auth: { algorithm: RS256 }\n",
        &[],
    )
    .await;
    assert_eq!(code, Some(64));
    assert!(err.contains("public_key_file is required"), "{err}");
}
