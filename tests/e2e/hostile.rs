//! Hostile input: stalled bodies, oversized first frames, a crowd of large
//! frames against the process's buffer budget, floods of cheap frames, and
//! malformed handshakes. Each is refused with its documented code and
//! counted, and nothing else is disturbed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use gg_proto::frame::{Header, Kind};
use gg_proto::{CloseCode, ErrorCode, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Sends `head` (and `body` bytes), then stalls; returns everything the
/// gateway wrote until it closed the connection.
async fn stalled_request(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(body).await.expect("body");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the gateway must close a stalled request")
        .expect("read");
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn stalled_and_broken_http_bodies_are_refused_and_closed() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ http_body_timeout_ms: 300 }}\n",
        one_service(b.addr)
    ))
    .await;
    let post = "POST /v1/call/echo HTTP/1.1\r\nHost: x\r\n";
    // A declared length, 3 bytes, silence.
    let r = stalled_request(
        gw.client,
        &format!("{post}Content-Length: 100000\r\n\r\n"),
        b"abc",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(r.contains("http_body_timeout"), "{r}");
    // A chunked body that stops part-way.
    let r = stalled_request(
        gw.client,
        &format!("{post}Transfer-Encoding: chunked\r\n\r\n"),
        b"a\r\n12345",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    gw.wait_metric("gg_rejections_total{reason=\"http_body_timeout\"}", |v| {
        v == 2.0
    })
    .await;
    // Broken chunking is a bad request, not "too large".
    let r = stalled_request(
        gw.client,
        &format!("{post}Transfer-Encoding: chunked\r\n\r\n"),
        b"zz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("http_bad_body"), "{r}");
    // A declared length over the limit is refused before the body is read.
    let r = stalled_request(
        gw.client,
        &format!("{post}Content-Length: 900000000\r\n\r\n"),
        b"",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    // A head hyper cannot parse is answered by hyper and counted.
    let r = stalled_request(
        gw.client,
        "POST /v1/call/echo HTTP/1.1\r\nBad Header\r\n\r\n",
        b"",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    gw.wait_metric("gg_rejections_total{reason=\"http_bad_head\"}", |v| {
        v >= 1.0
    })
    .await;
    // Calls still work.
    let (status, body) = http(gw.client, "POST", "/v1/call/echo", &[], b"fine").await;
    assert_eq!((status, body.as_str()), (200, "fine"));
}

#[tokio::test]
async fn a_long_first_frame_is_closed_before_its_body_arrives() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::tcp(gw.client).await;
    // A HELLO announcing 5000 bytes (the default limit is 4096); only the
    // length and the header are sent.
    let mut raw = 5000u32.to_be_bytes().to_vec();
    raw.extend_from_slice(&[1, Kind::Hello as u8, 0, 0]);
    c.send_raw(&raw).await;
    let close = c.expect_close().await;
    assert_eq!(close.code, CloseCode::FrameTooLarge.code());
    assert!(close.reason.contains("max_hello_bytes"), "{}", close.reason);
    gw.wait_metric("gg_rejections_total{reason=\"hello_too_large\"}", |v| {
        v == 1.0
    })
    .await;
    // A 0xFFFFFFFF length is reported as a frame length, on any session.
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    c.send_raw(&[0xff, 0xff, 0xff, 0xff, 1, 2, 0, 0]).await;
    let close = c.expect_close().await;
    assert!(
        close.reason.contains("frame length 4294967295"),
        "{}",
        close.reason
    );
}

#[tokio::test]
async fn a_crowd_of_large_frames_is_stopped_by_the_buffer_budget() {
    let b = backend("b1").await;
    // Frames up to 300 000 bytes, but at most 300 000 bytes buffered beyond
    // the first 64 KiB of each partly read frame, process-wide.
    let gw = gateway(&format!(
        "{}limits: {{ max_frame_bytes: 300000, max_buffered_bytes: 300000 }}\n",
        one_service(b.addr)
    ))
    .await;
    let partial = |n: usize| {
        let mut raw = 290_000u32.to_be_bytes().to_vec();
        let mut h = Header::new(Kind::Data);
        h.service_type = 1;
        let f = Frame::new(h, vec![0u8; 290_000 - 12]).to_bytes();
        raw.extend_from_slice(&f[4..4 + n]);
        raw
    };
    // What one such connection holds against the budget: the length prefix
    // and 200 000 bytes, less the free first 64 KiB.
    let share = (4 + 200_000 - 65_536) as f64;
    let mut held = Vec::new();
    for user in 1..=2 {
        let mut c = Client::tcp(gw.client).await;
        c.hello(user, 0).await;
        // 200 000 bytes of a 290 000-byte frame.
        c.send_raw(&partial(200_000)).await;
        gw.wait_metric("gg_client_buffered_bytes", |v| v == share * user as f64)
            .await;
        held.push(c);
    }
    // The third would take the total past the budget: refused, retryable.
    let mut third = Client::tcp(gw.client).await;
    third.hello(3, 0).await;
    third.send_raw(&partial(200_000)).await;
    let close = third.expect_close().await;
    assert_eq!(close.code, CloseCode::Overloaded.code());
    assert!(
        close.reason.contains("max_buffered_bytes"),
        "{}",
        close.reason
    );
    gw.wait_metric("gg_rejections_total{reason=\"buffer_budget\"}", |v| {
        v == 1.0
    })
    .await;
    // Closing a holder gives its share back; small frames never needed it.
    drop(held.pop());
    gw.wait_metric("gg_client_buffered_bytes", |v| v == share)
        .await;
    let mut small = Client::tcp(gw.client).await;
    small.hello(4, 0).await;
    assert_eq!(small.call_text(1, 1, "small").await, "small");
}

#[tokio::test]
async fn every_client_frame_kind_costs_a_token_and_states_are_checked() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ msg_rate_per_sec: 1, msg_burst: 5 }}\n",
        one_service(b.addr)
    ))
    .await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    // A second HELLO is a frame in the wrong state: 103.
    let mut h = Header::new(Kind::Hello);
    h.seq = 1;
    c.send(&Frame::new(h, Bytes::new())).await;
    let e = c.recv_kind(Kind::Error).await;
    assert_eq!(error_of(&e).code, ErrorCode::BadState.code());
    for seq in 0..30 {
        c.send(&frame(Kind::Ping, 0, seq, Bytes::new())).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 30 {
        let f = c.recv().await;
        match f.header.kind() {
            Some(Kind::Pong) => pongs += 1,
            Some(Kind::Error) => {
                assert_eq!(error_of(&f).code, ErrorCode::RateLimited.code());
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A burst of 5 and 1/s: a slow run may refill a token or two.
    assert!(pongs <= 8, "{pongs} PONGs for a burst of 5");
    assert!(limited >= 22, "{limited}");
    assert!(gw.metric("gg_rejections_total{reason=\"msg_rate\"}").await >= 22.0);
}

#[tokio::test]
async fn a_hello_payload_must_be_an_object() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let mut c = Client::tcp(gw.client).await;
    c.send_hello(1, serde_json::json!([])).await;
    let close = c.expect_close().await;
    assert_eq!(close.code, CloseCode::ProtocolError.code());
    assert!(close.reason.contains("JSON object"), "{}", close.reason);
}

#[tokio::test]
async fn websocket_handshakes_follow_rfc_6455() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    let head = |connection: &str, version: &str| {
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n{connection}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        )
    };
    let r = stalled_request(gw.client, &head("Connection: close\r\n", "13"), b"").await;
    assert!(r.starts_with("HTTP/1.1 400"), "no Connection: Upgrade: {r}");
    let r = stalled_request(gw.client, &head("Connection: close, Upgrade\r\n", "8"), b"").await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("sec-websocket-version: 13"),
        "{r}"
    );
    // A client's Close is answered with a Close.
    use futures_util::{SinkExt, StreamExt};
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/v1/ws", gw.client),
        TcpStream::connect(gw.client).await.expect("connect"),
    )
    .await
    .expect("upgrade");
    let mut h = Header::new(Kind::Hello);
    h.user_id = 1;
    let hello = Frame::new(h, Bytes::new()).to_bytes();
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(hello))
        .await
        .expect("hello");
    let _welcome = ws.next().await.expect("welcome").expect("ok");
    ws.close(None).await.expect("close");
    let echoed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(_)) = m {
                return true;
            }
            if m.is_err() {
                return false;
            }
        }
        false
    })
    .await
    .expect("in time");
    assert!(echoed, "the gateway must answer a Close with a Close");
}

#[tokio::test]
async fn silent_and_half_open_connections_to_the_admin_port_are_closed() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}admin:\n  listen: 127.0.0.1:0\n  idle_timeout_ms: 300\n",
        one_service(b.addr)
    ))
    .await;
    let addr = gw.admin.expect("admin port");
    for sent in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(sent).await.expect("write");
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .expect("the admin port must close a silent connection");
        eprintln!(
            "closed after {:?} having sent {} bytes",
            started.elapsed(),
            sent.len()
        );
    }
    // A real client still works (and reconnects after an idle close).
    let mut a = admin(&gw, None).await;
    a.get_info(gg_proto::pb::admin::GetInfoRequest {})
        .await
        .expect("info");
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.get_info(gg_proto::pb::admin::GetInfoRequest {})
        .await
        .expect("info after the idle close");
}

/// Behind an L4 load balancer speaking PROXY protocol, the player's address
/// is what the limits, the admin API and the logs see; only trusted sources
/// may (and must) send the header.
#[tokio::test]
async fn proxy_protocol_names_the_players_address() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}proxy_protocol: {{ trusted: [127.0.0.1/32] }}\nlimits: {{ max_connections_per_ip: 1 }}\n{}",
        one_service(b.addr),
        admin_yaml()
    ))
    .await;
    let lb: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    // v1 from the trusted balancer: the session belongs to 203.0.113.7.
    let mut p1 = Client::tcp_from(gw.client, lb).await;
    p1.send_raw(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 7000\r\n")
        .await;
    p1.hello(1, 0).await;
    // v2 (binary) for another player.
    let mut p2 = Client::tcp_from(gw.client, lb).await;
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x9c, 0x41, 0x1b, 0x58,
    ]);
    p2.send_raw(&v2).await;
    p2.hello(2, 0).await;
    let mut a = admin(&gw, Some(ADMIN_TOKEN)).await;
    let list = a
        .list_sessions(gg_proto::pb::admin::ListSessionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    let mut remotes: Vec<String> = list
        .sessions
        .iter()
        .map(|s| s.remote_addr.clone())
        .collect();
    remotes.sort();
    assert_eq!(remotes, ["198.51.100.9:40001", "203.0.113.7:40000"]);
    // The per-address limit (1) counts players, not the balancer: a second
    // connection for 203.0.113.7 is refused, the balancer itself is not.
    let mut again = Client::tcp_from(gw.client, lb).await;
    again
        .send_raw(b"PROXY TCP4 203.0.113.7 10.0.0.1 40002 7000\r\n")
        .await;
    again.expect_eof(WAIT).await;
    gw.wait_metric(
        "gg_rejections_total{reason=\"max_connections_per_ip\"}",
        |v| v == 1.0,
    )
    .await;
    // A trusted source must send the header.
    let mut bare = Client::tcp_from(gw.client, lb).await;
    bare.send_hello(3, serde_json::json!({})).await;
    bare.expect_eof(WAIT).await;
    gw.wait_metric("gg_rejections_total{reason=\"proxy_header\"}", |v| v == 1.0)
        .await;
    // Anyone else's header is not honoured: it is read as what it looks
    // like (an HTTP request line, refused), and no session opens.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind");
    let mut spoof = sock.connect(gw.client).await.expect("connect");
    spoof
        .write_all(b"PROXY TCP4 192.0.2.1 10.0.0.1 1 7000\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, spoof.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(gw.metric("gg_sessions_active").await, 2.0);
}

/// A WebSocket client that sends pings and never reads its pongs: once the
/// sockets between them are full the gateway stops reading it (its pings
/// wait on its side), instead of keeping every pong in memory. Reading
/// again, it gets every pong and its session still answers.
#[tokio::test]
async fn a_websocket_ping_flood_that_is_never_read_is_not_buffered() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    // A masked client frame (the mask is zero, so the payload is as is).
    let ws_frame = |op: u8, payload: &[u8]| {
        let mut v = vec![0x80 | op];
        match payload.len() {
            n @ 0..=125 => v.push(0x80 | n as u8),
            n => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(payload);
        v
    };
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut s = sock.connect(gw.client).await.expect("connect");
    s.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .expect("handshake");
    let mut h = Header::new(Kind::Hello);
    h.user_id = 1;
    s.write_all(&ws_frame(0x2, &Frame::new(h, &b"{}"[..]).to_bytes()))
        .await
        .expect("hello");
    // The 101 and the WELCOME message.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.expect("101"));
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    assert_eq!(
        s.read_u8().await.expect("op"),
        0x82,
        "the WELCOME is a binary message"
    );
    let len = match s.read_u8().await.expect("len") {
        126 => usize::from(s.read_u16().await.expect("len16")),
        n => usize::from(n),
    };
    let mut welcome = vec![0; len];
    s.read_exact(&mut welcome).await.expect("welcome");

    // Up to 64 MiB of the largest pings, never reading.
    let ping = ws_frame(0x9, &[b'p'; 125]);
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 8192)
        .collect();
    let before = vm_hwm_kib(gw.proc.pid());
    // A `write` that times out wrote nothing, so `sent` is exact; it may
    // end inside a ping, finished below once the socket has room.
    let mut sent = 0usize;
    while sent < 64 << 20 {
        let at = sent % batch.len();
        match tokio::time::timeout(Duration::from_secs(2), s.write(&batch[at..])).await {
            Ok(n) => sent += n.expect("write"),
            Err(_) => break,
        }
    }
    assert!(
        sent < 32 << 20,
        "the gateway read {sent} bytes of pings whose pongs were never read"
    );
    let grew = vm_hwm_kib(gw.proc.pid()).saturating_sub(before);
    assert!(
        grew < 16 * 1024,
        "the gateway's peak RSS grew by {grew} KiB"
    );

    // Reading again: pongs (answers to what was read) until a DATA echo.
    let (rd, mut wr) = s.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    let reader = tokio::spawn(async move {
        let mut pongs = 0u64;
        loop {
            let op = rd.read_u8().await.expect("op");
            let len = match rd.read_u8().await.expect("len") {
                126 => usize::from(rd.read_u16().await.expect("len16")),
                n => usize::from(n),
            };
            let mut p = vec![0; len];
            rd.read_exact(&mut p).await.expect("payload");
            match op {
                0x8A => {
                    assert_eq!(p, [b'p'; 125]);
                    pongs += 1;
                }
                0x82 => return (pongs, p),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    });
    let rest = (ping.len() - sent % ping.len()) % ping.len();
    wr.write_all(&ping[ping.len() - rest..])
        .await
        .expect("the rest of the last ping");
    let mut h = Header::new(Kind::Data);
    h.service_type = 1;
    h.seq = 1;
    wr.write_all(&ws_frame(
        0x2,
        &Frame::new(h, &b"still here"[..]).to_bytes(),
    ))
    .await
    .expect("data");
    let (pongs, echo) = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the echo in time")
        .expect("reader");
    // Every ping is answered, in order, before the echo.
    assert_eq!(pongs as usize, (sent + rest) / ping.len());
    assert!(echo.ends_with(b"still here"), "{echo:?}");
}

/// The process's peak resident memory (`VmHWM`), in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

/// Players sending the largest frames to a backend that stopped reading:
/// the gateway holds at most `backend.queue_bytes` for the connection and
/// answers the rest "overloaded" (ERROR 105), instead of queueing up to
/// `backend.queue` messages of any size (4 sessions of 1 MB frames grew
/// it by 1.5 GB before the byte bound).
#[tokio::test]
async fn a_stalled_backend_holds_at_most_queue_bytes_of_large_frames() {
    let b = backend("b1").await;
    let gw = gateway_with_flags(
        "gw-e2e",
        &format!(
            "services:\n  - {{ name: echo, id: 1, strategy: round_robin, endpoints: [{}] }}\nbackend: {{ queue_bytes: 1048576, connections_per_endpoint: 1 }}\n",
            b.addr
        ),
        &["--worker-threads", "1"],
    )
    .await;
    let mut staller = Client::tcp(gw.client).await;
    staller.hello(1, 0).await;
    assert_eq!(staller.call_text(1, 1, "stall:8000").await, "stalled");
    let before = vm_hwm_kib(gw.proc.pid());
    let big = Bytes::from(vec![b'x'; 1_000_000]);
    const FRAMES: u32 = 40;
    let sender = {
        let mut tx = Client::tcp(gw.client).await;
        tx.hello(3, 0).await;
        tokio::spawn(async move {
            for seq in 1..=FRAMES {
                tx.send(&frame(Kind::Data, 1, seq, big.clone())).await;
            }
            tx
        })
    };
    let mut tx = sender.await.expect("sender");
    let mut overloaded = 0;
    while overloaded == 0 {
        let f = tx.recv().await;
        assert_eq!(
            f.header.kind(),
            Some(Kind::Error),
            "only refusals while stalled"
        );
        let e = error_of(&f);
        assert_eq!(e.code, ErrorCode::BackendUnavailable.code());
        assert!(e.message.contains("overloaded"), "{}", e.message);
        overloaded += 1;
    }
    let grew = vm_hwm_kib(gw.proc.pid()).saturating_sub(before);
    assert!(
        grew < 16 * 1024,
        "the gateway's peak RSS grew by {grew} KiB for a 1 MiB queue"
    );
    // The session that was refused is not harmed: once the backend reads
    // again, it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seq = 1000;
    loop {
        seq += 1;
        let f = tx.call(1, seq, b"ping").await;
        if f.header.kind() == Some(Kind::Data) {
            assert_eq!(&f.payload[..], b"ping");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backend never answered again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
