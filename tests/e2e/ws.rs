//! WebSocket clients: one frame per binary message, same session semantics
//! as TCP, close codes mirrored in the WebSocket close frame.

use gg_proto::CloseCode;
use gg_proto::frame::Kind;

use crate::support::*;

#[tokio::test]
async fn ws_session_echo_ping_and_kick() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::ws(gw.client).await;
    let w = c.hello(7, 0).await;
    assert!(w.session.starts_with("gw-e2e:"));
    assert_eq!(c.call_text(1, 1, "over websocket").await, "over websocket");
    c.send(&frame(Kind::Ping, 0, 4, bytes::Bytes::new())).await;
    assert_eq!(c.recv_kind(Kind::Pong).await.header.seq, 4);
    gw.wait_metric("gg_connections_active{protocol=\"ws\"}", |v| v == 1.0)
        .await;

    c.send(&frame(Kind::Data, 1, 2, &b"kick:bye"[..])).await;
    let close = c.expect_close().await;
    assert_eq!(close.code, CloseCode::Kicked.code());
    assert_eq!(c.ws_close_code().await, Some(CloseCode::Kicked.code()));
    gw.wait_metric("gg_connections_active{protocol=\"ws\"}", |v| v == 0.0)
        .await;
}

/// Replies a backend sends back to back reach a WebSocket client as one
/// message per frame (the reader asserts it), all of them, in order.
#[tokio::test]
async fn ws_pipelined_replies_arrive_one_frame_per_message() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::ws(gw.client).await;
    c.hello(8, 0).await;
    for seq in 1..=64u32 {
        c.send(&frame(Kind::Data, 1, seq, format!("r{seq}"))).await;
    }
    for seq in 1..=64u32 {
        let f = c.recv_kind(Kind::Data).await;
        assert_eq!(f.header.seq, seq);
        assert_eq!(&f.payload[..], format!("r{seq}").as_bytes());
    }
    assert_eq!(
        gw.metric("gg_frames_out_total{protocol=\"ws\"}").await,
        // WELCOME + 64 replies.
        65.0
    );
}

#[tokio::test]
async fn ws_text_and_multi_frame_messages_are_protocol_errors() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::ws(gw.client).await;
    c.hello(7, 0).await;
    c.send_ws_text("hello").await;
    let close = c.expect_close().await;
    assert_eq!(close.code, CloseCode::ProtocolError.code());
    assert!(close.reason.contains("binary"), "{}", close.reason);

    // Two frames in one binary message break the one-frame-per-message rule.
    let mut c = Client::ws(gw.client).await;
    c.hello(8, 0).await;
    let mut two = frame(Kind::Ping, 0, 1, bytes::Bytes::new())
        .to_bytes()
        .to_vec();
    two.extend_from_slice(&frame(Kind::Ping, 0, 2, bytes::Bytes::new()).to_bytes());
    c.send_raw(&two).await;
    assert_eq!(c.expect_close().await.code, CloseCode::ProtocolError.code());
}

#[tokio::test]
async fn ws_oversized_message_is_refused() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ max_frame_bytes: 1024 }}\n",
        one_service(b.addr)
    ))
    .await;
    let mut c = Client::ws(gw.client).await;
    c.hello(7, 0).await;
    c.send(&frame(Kind::Data, 1, 1, vec![0u8; 4096])).await;
    // Either the CLOSE frame or the WebSocket close carries 3502.
    let code = match c.next(WAIT).await {
        Some(Got::Frame(f)) if f.header.kind() == Some(Kind::Close) => {
            f.json::<gg_proto::control::Close>().expect("json").code
        }
        _ => c.ws_close_code().await.unwrap_or(0),
    };
    assert_eq!(code, CloseCode::FrameTooLarge.code());
}

#[tokio::test]
async fn ws_upgrade_on_other_paths_is_404() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let s = tokio::net::TcpStream::connect(gw.client)
        .await
        .expect("connect");
    let err = tokio_tungstenite::client_async(format!("ws://{}/elsewhere", gw.client), s)
        .await
        .expect_err("upgrade must fail");
    assert!(err.to_string().contains("404"), "{err}");
}
