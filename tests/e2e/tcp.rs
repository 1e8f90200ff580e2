//! TCP frame clients: session lifecycle, relaying, and every way a client
//! frame can be wrong.

use std::time::Duration;

use bytes::Bytes;
use gg_proto::frame::{Header, Kind};
use gg_proto::{CloseCode, ErrorCode, Frame};

use crate::support::*;

#[tokio::test]
async fn hello_data_ping_close() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::tcp(gw.client).await;
    let w = c.hello(42, 3).await;
    assert_eq!(w.gateway_id, "gw-e2e");
    assert_eq!(w.session, format!("gw-e2e:{}", c.session_id));
    assert!(w.heartbeat_ms > 0);

    // DATA is relayed and the reply carries our seq and session.
    let f = c.call(1, 7, b"hello").await;
    assert_eq!(f.header.kind(), Some(Kind::Data));
    assert_eq!(&f.payload[..], b"hello");
    assert_eq!(f.header.session_id, c.session_id);
    // The backend sees our user id stamped by the gateway: per-session counter works.
    assert_eq!(c.call_text(1, 8, "count").await, "2");

    c.send(&frame(Kind::Ping, 0, 99, Bytes::new())).await;
    let pong = c.recv_kind(Kind::Pong).await;
    assert_eq!(pong.header.seq, 99);

    assert_eq!(gw.metric("gg_sessions_active").await, 1.0);
    c.send(&frame(Kind::Close, 0, 0, &b"{\"code\":3500}"[..]))
        .await;
    c.expect_eof(WAIT).await;
    gw.wait_metric("gg_sessions_active", |v| v == 0.0).await;
    gw.wait_metric("gg_session_closes_total{code=\"normal\"}", |v| v >= 1.0)
        .await;
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::tcp(gw.client).await;
    c.send(&frame(Kind::Data, 1, 1, &b"x"[..])).await;
    let close = c.expect_close().await;
    assert_eq!(close.code, CloseCode::ProtocolError.code());
    assert!(close.reason.contains("HELLO"), "{}", close.reason);
    c.expect_eof(WAIT).await;
}

#[tokio::test]
async fn oversized_frame_is_rejected_from_the_header() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ max_frame_bytes: 4096 }}\n",
        one_service(b.addr)
    ))
    .await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    // Only the length prefix (and a header) is sent: the gateway must decide
    // without waiting for (or buffering) the claimed 2 MiB.
    let mut raw = (2u32 * 1024 * 1024).to_be_bytes().to_vec();
    raw.extend_from_slice(&[1, Kind::Data as u8, 0, 1]);
    c.send_raw(&raw).await;
    let close = c.expect_close().await;
    assert_eq!(close.code, CloseCode::FrameTooLarge.code());
    assert!(close.reason.contains("4096"), "{}", close.reason);
    c.expect_eof(WAIT).await;
    gw.wait_metric("gg_session_closes_total{code=\"frame_too_large\"}", |v| {
        v >= 1.0
    })
    .await;
}

#[tokio::test]
async fn frame_claiming_another_session_is_refused() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut victim = Client::tcp(gw.client).await;
    victim.hello(1, 0).await;
    let mut attacker = Client::tcp(gw.client).await;
    attacker.hello(2, 0).await;

    let mut h = Header::new(Kind::Data);
    h.service_type = 1;
    h.session_id = victim.session_id;
    attacker.send(&Frame::new(h, &b"steal"[..])).await;
    let close = attacker.expect_close().await;
    assert_eq!(close.code, CloseCode::SessionMismatch.code());

    // Claiming another user id is refused the same way.
    let mut other = Client::tcp(gw.client).await;
    other.hello(3, 0).await;
    let mut h = Header::new(Kind::Data);
    h.service_type = 1;
    h.user_id = 1;
    other.send(&Frame::new(h, &b"steal"[..])).await;
    assert_eq!(
        other.expect_close().await.code,
        CloseCode::SessionMismatch.code()
    );

    // The victim never saw anything and still works.
    assert_eq!(victim.call_text(1, 5, "count").await, "1");
}

#[tokio::test]
async fn unknown_kind_gets_error_unknown_version_closes() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    let mut h = Header::new(Kind::Data);
    h.kind = 0x42;
    h.service_type = 1;
    h.seq = 77;
    c.send(&Frame::new(h, &b"?"[..])).await;
    let e = c.recv_kind(Kind::Error).await;
    assert_eq!(e.header.seq, 77);
    assert_eq!(error_of(&e).code, ErrorCode::UnknownKind.code());
    // The session survives an unknown kind.
    assert_eq!(c.call_text(1, 78, "still here").await, "still here");

    let mut h = Header::new(Kind::Ping);
    h.version = 2;
    c.send(&Frame::new(h, Bytes::new())).await;
    assert_eq!(
        c.expect_close().await.code,
        CloseCode::UnsupportedVersion.code()
    );
}

#[tokio::test]
async fn malformed_hello_payload_and_resume_are_refused() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::tcp(gw.client).await;
    c.send(&frame(Kind::Hello, 0, 0, &b"not json"[..])).await;
    let close = c.expect_close().await;
    assert_eq!(close.code, CloseCode::ProtocolError.code());
    assert!(close.reason.contains("JSON"), "{}", close.reason);

    let mut c = Client::tcp(gw.client).await;
    let mut h = Header::new(Kind::Hello);
    h.session_id = 12345;
    c.send(&Frame::new(h, &b"{}"[..])).await;
    assert_eq!(c.expect_close().await.code, CloseCode::BadResume.code());
}

#[tokio::test]
async fn hello_timeout_closes_silent_clients() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ hello_timeout_ms: 300 }}\n",
        one_service(b.addr)
    ))
    .await;
    let mut c = Client::tcp(gw.client).await;
    // Two bytes of a length prefix, then nothing (slowloris).
    c.send_raw(&[0, 0]).await;
    let close = c.expect_close().await;
    assert_eq!(close.code, CloseCode::HelloTimeout.code());
    c.expect_eof(WAIT).await;
    gw.wait_metric("gg_rejections_total{reason=\"hello_timeout\"}", |v| {
        v >= 1.0
    })
    .await;
}

#[tokio::test]
async fn idle_session_times_out() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ heartbeat_ms: 100, idle_timeout_ms: 400 }}\n",
        one_service(b.addr)
    ))
    .await;
    let mut c = Client::tcp(gw.client).await;
    let w = c.hello(1, 0).await;
    assert_eq!(w.heartbeat_ms, 100);
    assert_eq!(
        c.expect_close().await.code,
        CloseCode::HeartbeatTimeout.code()
    );
}

#[tokio::test]
async fn replies_reach_the_right_client_among_many() {
    let b1 = backend("b1").await;
    let b2 = backend("b2").await;
    let gw = gateway(&format!(
        "services:\n  - {{ name: echo, id: 1, strategy: round_robin, endpoints: [{}, {}] }}\n",
        b1.addr, b2.addr
    ))
    .await;
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let addr = gw.client;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::tcp(addr).await;
            c.hello(1000 + i, 0).await;
            // Pipeline 10 requests, then check each reply is ours and in order.
            for seq in 0..10u32 {
                c.send(&frame(Kind::Data, 1, seq, format!("client-{i}-msg-{seq}")))
                    .await;
            }
            for seq in 0..10u32 {
                let f = c.recv_kind(Kind::Data).await;
                assert_eq!(f.header.seq, seq);
                assert_eq!(
                    String::from_utf8_lossy(&f.payload),
                    format!("client-{i}-msg-{seq}")
                );
                assert_eq!(f.header.session_id, c.session_id);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert_eq!(gw.metric_sum("gg_backend_unknown_session_total").await, 0.0);
    assert!(gw.metric_sum("gg_backend_frames_out_total").await >= 400.0);
}

/// Frames that arrive in one write travel to the backend and back in
/// batches; each is still answered on its own, in order, and what cannot be
/// forwarded is refused frame by frame.
#[tokio::test]
async fn frames_in_one_write_are_answered_one_by_one_in_order() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(7, 0).await;
    let mut wire = bytes::BytesMut::new();
    for (kind, service, seq) in [
        (Kind::Data, 1, 1),
        (Kind::Data, 1, 2),
        (Kind::Data, 1, 3),
        (Kind::Ping, 0, 4),
        (Kind::Data, 1, 5),
        (Kind::Data, 9, 6),
        (Kind::Data, 1, 7),
    ] {
        let f = frame(kind, service, seq, format!("m{seq}"));
        f.encode(&mut wire);
    }
    c.send_raw(&wire).await;
    let mut echoes = Vec::new();
    let (mut pong, mut refused) = (None, None);
    while echoes.len() < 5 || pong.is_none() || refused.is_none() {
        let f = c.recv().await;
        match f.header.kind() {
            Some(Kind::Data) => {
                assert_eq!(&f.payload[..], format!("m{}", f.header.seq).as_bytes());
                assert_eq!(f.header.session_id, c.session_id);
                echoes.push(f.header.seq);
            }
            Some(Kind::Pong) => pong = Some(f.header.seq),
            Some(Kind::Error) => refused = Some((f.header.seq, error_of(&f).code)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoes, [1, 2, 3, 5, 7], "every DATA echoed once, in order");
    assert_eq!(pong, Some(4));
    assert_eq!(refused, Some((6, ErrorCode::NoRoute.code())));
    assert_eq!(
        gw.metric("gg_frames_in_total{protocol=\"tcp\"}").await,
        // HELLO + the 7 above.
        8.0
    );
    // OPEN and the 5 DATA, counted as frames however they were batched.
    assert!(gw.metric_sum("gg_backend_frames_out_total").await >= 6.0);
}

#[tokio::test]
async fn backend_kick_closes_the_session_with_its_reason() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    c.send(&frame(Kind::Data, 1, 1, &b"kick:cheating"[..]))
        .await;
    let close = c.expect_close().await;
    assert_eq!(close.code, CloseCode::Kicked.code());
    assert_eq!(close.reason, "cheating");
    c.expect_eof(WAIT).await;
    gw.wait_metric("gg_session_closes_total{code=\"kicked\"}", |v| v >= 1.0)
        .await;
}

/// Replies are written straight to an idle client's socket by the backend
/// reader; when the socket is full the session task takes over. A client
/// that reads slowly while it also gets frames of the session's own (PONG)
/// still receives every frame whole.
#[tokio::test]
async fn a_flood_read_slowly_arrives_whole_beside_the_sessions_own_frames() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ session_queue: 4096, session_queue_bytes: 33554432, write_timeout_ms: 20000 }}\n",
        one_service(b.addr)
    ))
    .await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    const N: usize = 300;
    c.send(&frame(Kind::Data, 1, 1, &b"flood:300:40000"[..]))
        .await;
    // Let the socket fill up before reading, then ping while it drains.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut data, mut pongs, mut pings) = (0, 0, 0u32);
    while data < N || pongs < 20 {
        if pings < 20 && (data >= N || data >= 15 * pings as usize) {
            c.send(&frame(Kind::Ping, 0, 100 + pings, Bytes::new()))
                .await;
            pings += 1;
        }
        let f = c.recv().await;
        match f.header.kind() {
            Some(Kind::Data) => {
                assert_eq!(f.payload.len(), 40000);
                assert!(f.payload.iter().all(|&b| b == b'x'), "a frame arrived torn");
                data += 1;
            }
            Some(Kind::Pong) => {
                assert_eq!(f.header.seq, 100 + pongs as u32, "PONGs in order");
                pongs += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(c.call_text(1, 2, "after").await, "after");
    assert_eq!(
        gw.metric("gg_frames_out_total{protocol=\"tcp\"}").await,
        // WELCOME, the flood, the PONGs and the last echo.
        (1 + N + 20 + 1) as f64
    );
}

#[tokio::test]
async fn slow_consumer_is_closed_and_memory_stays_bounded() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ session_queue: 16, write_timeout_ms: 1000 }}\n",
        one_service(b.addr)
    ))
    .await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    // Ask for ~256 MiB and do not read.
    c.send(&frame(Kind::Data, 1, 1, &b"flood:4096:65536"[..]))
        .await;
    gw.wait_metric("gg_session_closes_total{code=\"slow_consumer\"}", |v| {
        v >= 1.0
    })
    .await;
    // The gateway let go of the client: reading now reaches the end.
    c.expect_eof(Duration::from_secs(30)).await;
    gw.wait_metric("gg_sessions_active", |v| v == 0.0).await;
    // Bounded memory: far less than what the backend tried to push.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", gw.proc.pid())).expect("proc status");
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    assert!(
        rss_kb < 128 * 1024,
        "peak RSS {rss_kb} KiB: outbound data was buffered without bound"
    );
}

#[tokio::test]
async fn backend_down_gives_error_not_hang() {
    let dead = dead_addr();
    let gw = gateway(&one_service(dead)).await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    let f = c.call(1, 5, b"anyone?").await;
    let e = error_of(&f);
    assert_eq!(e.code, ErrorCode::BackendUnavailable.code());
    assert_eq!(f.header.seq, 5);
    // Unknown service: NoRoute, and the session stays usable.
    let f = c.call(9, 6, b"x").await;
    assert_eq!(error_of(&f).code, ErrorCode::NoRoute.code());
    c.send(&frame(Kind::Ping, 0, 1, Bytes::new())).await;
    c.recv_kind(Kind::Pong).await;
}

#[tokio::test]
async fn backend_restart_reconnects_and_rebinds() {
    let b = backend("b1").await;
    let addr = b.addr;
    let gw = gateway(&format!(
        "{}backend: {{ backoff_initial_ms: 20, backoff_max_ms: 200 }}\n",
        one_service(addr)
    ))
    .await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    assert_eq!(c.call_text(1, 1, "whoami").await, "b1");
    drop(b);
    // The session is told its backend connection is gone (seq 0 = not one request).
    let lost = c.recv_kind(Kind::Error).await;
    assert_eq!(error_of(&lost).code, ErrorCode::BackendUnavailable.code());
    assert_eq!(lost.header.service_type, 1);

    let _b2 = backend_at("b1-again", &addr.to_string()).await;
    gw.wait_metric(
        &format!("gg_backend_connections{{endpoint=\"{addr}\"}}"),
        |v| v >= 2.0,
    )
    .await;
    // The next DATA re-opens the session on the new connection.
    assert_eq!(c.call_text(1, 2, "whoami").await, "b1-again");
    assert_eq!(c.call_text(1, 3, "count").await, "2");
}

/// The default limits, and a backend answering with the largest frames a
/// client that does not read: the session's queue is bounded in bytes
/// (`limits.session_queue_bytes`), not only in frames (256 frames of 1 MB
/// each were held for 4 such sessions: 1.4 GB).
#[tokio::test]
async fn large_frames_to_a_client_that_does_not_read_are_bounded_in_bytes() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let before = {
        let status = std::fs::read_to_string(format!("/proc/{}/status", gw.proc.pid()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .expect("VmHWM")
    };
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    c.send(&frame(Kind::Data, 1, 1, &b"flood:200:1000000"[..]))
        .await;
    gw.wait_metric("gg_session_closes_total{code=\"slow_consumer\"}", |v| {
        v >= 1.0
    })
    .await;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", gw.proc.pid())).expect("proc status");
    let peak: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    assert!(
        peak.saturating_sub(before) < 48 * 1024,
        "peak RSS grew by {} KiB for 200 MB the client never read",
        peak.saturating_sub(before)
    );
}
