//! The reference backend in another language (examples/python-backend),
//! behind a real gateway: HELLO, OPEN, DATA, PING/PONG, push and kick.

use std::path::Path;

use gg_proto::Kind;

use crate::support::*;

#[tokio::test]
async fn python_reference_backend_serves_a_real_gateway() {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python-backend/backend.py");
    let (_py, line) = spawn(
        "python3",
        "python-backend",
        &[
            script.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
            "--name",
            "py-test",
        ],
    )
    .await;
    let addr = line
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let gw = gateway(&format!(
        "{}backend: {{ ping_interval_ms: 50 }}\n",
        one_service(addr)
    ))
    .await;

    let mut c = Client::tcp(gw.client).await;
    c.hello(42, 0).await;
    assert_eq!(c.call_text(1, 1, "whoami").await, "py-test");
    assert_eq!(c.call_text(1, 2, "ping me back").await, "ping me back");
    assert_eq!(c.call_text(1, 3, "count").await, "3", "per-session state");

    // A push (seq 0) arrives before the reply to the command that made it.
    c.send(&frame(Kind::Data, 1, 4, &b"push:news"[..])).await;
    let pushed = c.recv_kind(Kind::Data).await;
    assert_eq!((pushed.header.seq, &pushed.payload[..]), (0, &b"news"[..]));
    let reply = c.recv_kind(Kind::Data).await;
    assert_eq!((reply.header.seq, &reply.payload[..]), (4, &b"pushed"[..]));

    // HTTP calls reach it too, on their own ephemeral session.
    let (status, body) = http(gw.client, "POST", "/v1/call/echo", &[], b"whoami").await;
    assert_eq!((status, body.as_str()), (200, "py-test"));

    // The gateway's heartbeat PINGs are answered (the round trips are timed).
    let rtt = format!("gg_backend_rtt_seconds_count{{endpoint=\"{addr}\"}}");
    gw.wait_metric(&rtt, |n| n >= 2.0).await;

    // A kick closes the session with the backend's code and reason.
    c.send(&frame(Kind::Data, 1, 5, &b"kick:bye"[..])).await;
    let close = c.expect_close().await;
    assert_eq!((close.code, close.reason.as_str()), (3506, "bye"));
}
