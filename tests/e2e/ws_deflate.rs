//! WebSocket permessage-deflate with a hand-made client (no client library
//! here speaks the extension): negotiation, compressed messages both ways,
//! uncompressed ones still accepted, a decompression bomb refused, and the
//! offer ignored when the gateway does not enable it.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use gg_proto::frame::{self, Frame, Header, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

struct RawWs {
    s: TcpStream,
    buf: BytesMut,
}

/// One server frame: (RSV1, opcode, payload).
type WsFrame = (bool, u8, Vec<u8>);

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync)
        .expect("deflate");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 21);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("inflate");
    out
}

impl RawWs {
    /// Upgrades with `offer` as Sec-WebSocket-Extensions; returns the
    /// response head.
    async fn connect(gw: &Gw, offer: &str) -> (RawWs, String) {
        let mut s = TcpStream::connect(gw.client).await.expect("connect");
        let req = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = BytesMut::new();
        let head = loop {
            s.read_buf(&mut buf).await.expect("read");
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_string();
                buf.advance(i + 4);
                break head;
            }
        };
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        (RawWs { s, buf }, head)
    }

    async fn send(&mut self, b0: u8, payload: &[u8]) {
        let key = [0x11, 0x22, 0x33, 0x44];
        let mut v = vec![b0];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n <= 0xffff => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&key);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.s.write_all(&v).await.expect("send");
    }

    /// A binary message holding `f`, compressed or not.
    async fn send_frame(&mut self, f: &Frame, compressed: bool) {
        let bytes = f.to_bytes();
        if compressed {
            self.send(0x80 | 0x40 | 0x02, &deflate(&bytes)).await;
        } else {
            self.send(0x82, &bytes).await;
        }
    }

    /// The next server frame, or `None` at EOF / timeout.
    async fn recv(&mut self) -> Option<WsFrame> {
        loop {
            let b = &self.buf[..];
            if b.len() >= 2 {
                let (len, at) = match b[1] & 0x7f {
                    126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                    127 if b.len() >= 10 => (
                        u64::from_be_bytes(b[2..10].try_into().expect("8")) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && b.len() >= at + len {
                    let (b0, payload) = (b[0], b[at..at + len].to_vec());
                    self.buf.advance(at + len);
                    return Some((b0 & 0x40 != 0, b0 & 0x0f, payload));
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// The next frame-protocol frame (inflating when RSV1 is set).
    async fn recv_frame(&mut self) -> (bool, Frame) {
        loop {
            let (rsv1, op, payload) = self.recv().await.expect("a message");
            if op != 2 {
                continue;
            }
            let bytes = if rsv1 { inflate(&payload) } else { payload };
            let f = frame::decode(&mut BytesMut::from(&bytes[..]), u32::MAX)
                .expect("frame")
                .expect("whole");
            return (rsv1, f);
        }
    }
}

fn data(seq: u32, payload: &[u8]) -> Frame {
    let mut h = Header::new(Kind::Data);
    h.service_type = 1;
    h.seq = seq;
    Frame::new(h, payload.to_vec())
}

#[tokio::test]
async fn permessage_deflate_both_ways_and_bombs_refused() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}websocket: {{ permessage_deflate: true, compress_min_bytes: 64 }}\n",
        one_service(b.addr)
    ))
    .await;
    let (mut ws, head) = RawWs::connect(&gw, "permessage-deflate; client_max_window_bits").await;
    assert!(
        head.to_ascii_lowercase().contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{head}"
    );
    // HELLO compressed.
    let mut h = Header::new(Kind::Hello);
    h.user_id = 7;
    ws.send_frame(&Frame::new(h, &b"{}"[..]), true).await;
    let (_, welcome) = ws.recv_frame().await;
    assert_eq!(welcome.header.kind(), Some(Kind::Welcome));
    // A large, compressible echo: compressed both ways.
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(200);
    ws.send_frame(&data(2, text.as_bytes()), true).await;
    let (rsv1, reply) = ws.recv_frame().await;
    assert!(rsv1, "a large reply goes out compressed");
    assert_eq!((reply.header.seq, &reply.payload[..]), (2, text.as_bytes()));
    // Uncompressed messages still work; small replies go out plain.
    ws.send_frame(&data(3, b"tiny"), false).await;
    let (rsv1, reply) = ws.recv_frame().await;
    assert!(!rsv1, "below compress_min_bytes: plain");
    assert_eq!(&reply.payload[..], b"tiny");
    // A bomb: 4 MiB of zeros inflates beyond max_frame_bytes (1 MiB).
    let mut big = data(4, &vec![0u8; 4 << 20]).to_bytes().to_vec();
    big.truncate(4 << 20);
    ws.send(0x80 | 0x40 | 0x02, &deflate(&big)).await;
    let mut close_code = None;
    while let Some((_, op, payload)) = ws.recv().await {
        if op == 8 {
            close_code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            break;
        }
    }
    assert_eq!(
        close_code,
        Some(3501),
        "the bomb ends the session as a protocol error"
    );
    gw.wait_metric("gg_sessions_active", |v| v == 0.0).await;

    // The offer is ignored when the gateway does not enable it.
    let plain = gateway(&one_service(b.addr)).await;
    let (mut ws, head) = RawWs::connect(&plain, "permessage-deflate").await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    let mut h = Header::new(Kind::Hello);
    h.user_id = 8;
    ws.send_frame(&Frame::new(h, &b"{}"[..]), false).await;
    let (rsv1, welcome) = ws.recv_frame().await;
    assert!(!rsv1);
    assert_eq!(welcome.header.kind(), Some(Kind::Welcome));
}
