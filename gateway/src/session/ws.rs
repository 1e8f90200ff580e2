//! WebSocket (RFC 6455) for client sessions, server side, once hyper has
//! answered the upgrade: the frame codec a session reads and writes through.
//!
//! Written here rather than taken from tungstenite because of what an idle
//! session holds: tungstenite keeps a read buffer (allocated up front), its
//! last write's buffer, two waker proxies and its context per connection,
//! about 1 KB an idle session. This codec holds no buffer between messages:
//! it reads into a stack scratch first and keeps only what arrived, and
//! encodes outgoing frames into a buffer released once written. It also
//! writes each batch of replies with one write, headers and payloads
//! together, where tungstenite copied every frame twice.
//!
//! What it enforces, each refused with a protocol error (the session closes
//! with `PROTOCOL_ERROR`): client frames must be masked; reserved bits only
//! as permessage-deflate allows (RSV1 on the first frame of a data message,
//! when negotiated); no reserved opcodes; control frames final and at most
//! 125 bytes; continuation only inside a fragmented message and no new
//! message inside one; a Close payload of 0 or at least 2 bytes with a
//! valid code and UTF-8 reason. A message over the size limit is refused
//! as soon as its length is known (`FRAME_TOO_LARGE`), before its payload
//! is read. Pings are answered, pongs ignored, a Close is echoed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use gg_proto::frame;
use tokio::io::{AsyncRead, AsyncWrite};

use super::io::ReadError;
use crate::config::SMALL_FRAME_BYTES;
use crate::limits::{ByteBudget, Charge};

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Most bytes of answers to the peer's control frames (pongs) held
/// unwritten: past this the peer is not read until they are written, so a
/// peer that pings without reading gets its pings held in its own socket,
/// not its pongs in ours (about 32 pongs of the largest size).
const MAX_CONTROL_UNSENT: usize = 4 * 1024;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;

/// A fragmented data message being gathered.
struct Partial {
    buf: BytesMut,
    compressed: bool,
}

/// One WebSocket connection (server side) over `S`.
pub(crate) struct WsConn<S> {
    io: S,
    /// Bytes read and not yet parsed; released whenever it empties.
    rbuf: BytesMut,
    charge: Option<Charge>,
    partial: Option<Box<Partial>>,
    /// Encoded frames not yet written; released once written.
    wbuf: BytesMut,
    /// Bytes of pongs (and the Close echo) in `wbuf`, answered to what
    /// the peer sent; reset once `wbuf` is written.
    control_unsent: usize,
    /// permessage-deflate negotiated: incoming RSV1 messages are inflated,
    /// outgoing messages of at least this many bytes are compressed.
    compress_min: Option<usize>,
    close_sent: bool,
}

/// What one parse step over the read buffer found.
enum Step {
    /// A whole data message.
    Message(BytesMut),
    /// A control frame or a fragment was consumed; parse again.
    Again,
    /// More bytes are needed: about this many.
    Need(usize),
}

fn protocol(msg: &'static str) -> ReadError {
    ReadError::Protocol(msg)
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    pub(crate) fn new(io: S, compress_min: Option<usize>) -> WsConn<S> {
        WsConn {
            io,
            rbuf: BytesMut::new(),
            charge: None,
            partial: None,
            wbuf: BytesMut::new(),
            control_unsent: 0,
            compress_min,
            close_sent: false,
        }
    }

    /// Reads one data message: a whole raw gateway frame (length prefix
    /// included) that arrived as one binary message, or `Pending`.
    pub(crate) fn poll_read_frame(
        &mut self,
        cx: &mut Context<'_>,
        max: u32,
        budget: &Arc<ByteBudget>,
    ) -> Poll<Result<BytesMut, ReadError>> {
        let max_msg = max as usize + frame::LEN_BYTES;
        loop {
            if self.control_unsent > MAX_CONTROL_UNSENT {
                // Waits for the peer to read (the write registered the
                // waker); nothing more is read meanwhile.
                ready!(self.poll_write_out(cx)).map_err(ReadError::Io)?;
            }
            let want = match self.parse(max_msg)? {
                Step::Message(m) => {
                    return Poll::Ready(match frame::check(&m, max) {
                        Ok(Some(total)) if total == m.len() => Ok(m),
                        Ok(_) => Err(protocol(
                            "a WebSocket binary message must carry exactly one whole frame",
                        )),
                        Err(e) => Err(ReadError::Frame(e)),
                    });
                }
                Step::Again => continue,
                Step::Need(n) => n,
            };
            let held = (self.rbuf.len() + self.partial.as_ref().map_or(0, |p| p.buf.len()))
                .saturating_sub(SMALL_FRAME_BYTES as usize) as u64;
            if !Charge::grow_to(&mut self.charge, budget, held) {
                return Poll::Ready(Err(ReadError::Budget));
            }
            // Pongs (and a Close echo) go out without waiting for data.
            if !self.wbuf.is_empty()
                && let Poll::Ready(Err(e)) = self.poll_write_out(cx)
            {
                return Poll::Ready(Err(ReadError::Io(e)));
            }
            match ready!(super::io::poll_read_some(
                &mut self.io,
                &mut self.rbuf,
                want,
                cx
            )) {
                Ok(0) => return Poll::Ready(Err(ReadError::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(ReadError::Io(e))),
            }
        }
    }

    /// Parses one frame from the read buffer, if it is all there.
    fn parse(&mut self, max_msg: usize) -> Result<Step, ReadError> {
        let b = &self.rbuf[..];
        if b.len() < 2 {
            return Ok(Step::Need(2 - b.len()));
        }
        let (b0, b1) = (b[0], b[1]);
        let (fin, op) = (b0 & FIN != 0, b0 & 0x0F);
        let rsv1 = b0 & RSV1 != 0;
        if b1 & 0x80 == 0 {
            return Err(protocol("unmasked WebSocket frame from the client"));
        }
        if b0 & 0x30 != 0 {
            return Err(protocol("reserved WebSocket bits set (RSV2/RSV3)"));
        }
        let (len, at) = match b1 & 0x7F {
            126 if b.len() < 4 => return Ok(Step::Need(4 - b.len())),
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() < 10 => return Ok(Step::Need(10 - b.len())),
            127 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(l), 10)
            }
            n => (u64::from(n), 2),
        };
        let control = op & 0x8 != 0;
        match op {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > 125 {
                    return Err(protocol(
                        "WebSocket control frames must be final and at most 125 bytes",
                    ));
                }
                if rsv1 {
                    return Err(protocol("RSV1 set on a WebSocket control frame"));
                }
            }
            OP_CONT => {
                if self.partial.is_none() {
                    return Err(protocol("WebSocket continuation frame outside a message"));
                }
                if rsv1 {
                    return Err(protocol("RSV1 set on a WebSocket continuation frame"));
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(protocol(
                        "new WebSocket message before the previous one was finished",
                    ));
                }
                if rsv1 && self.compress_min.is_none() {
                    return Err(protocol(
                        "RSV1 set but permessage-deflate was not negotiated",
                    ));
                }
            }
            _ => return Err(protocol("reserved WebSocket opcode")),
        }
        if !control {
            // Refused by its announced size, before reading it.
            let so_far = self.partial.as_ref().map_or(0, |p| p.buf.len()) as u64;
            let compressed = rsv1 || self.partial.as_ref().is_some_and(|p| p.compressed);
            // Compressed data can be slightly larger than what it encodes.
            let limit = if compressed {
                max_msg + max_msg / 16 + 64
            } else {
                max_msg
            };
            if so_far + len > limit as u64 {
                return Err(ReadError::WsTooLarge(
                    usize::try_from(so_far + len).unwrap_or(usize::MAX),
                ));
            }
        }
        let len = len as usize;
        let total = at + 4 + len;
        if b.len() < total {
            return Ok(Step::Need(total - b.len()));
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        let mut payload = self.rbuf.split_to(total);
        payload.advance(at + 4);
        if self.rbuf.is_empty() {
            // The payload keeps the allocation until it is forwarded.
            self.rbuf = BytesMut::new();
            self.charge = None;
        }
        unmask(&mut payload, mask);
        match op {
            OP_PING => {
                if !self.close_sent {
                    self.encode(OP_PONG, false, &payload);
                    self.control_unsent += payload.len() + 2;
                }
                Ok(Step::Again)
            }
            OP_PONG => Ok(Step::Again),
            OP_CLOSE => {
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(protocol("WebSocket Close payload of 1 byte")),
                    _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
                };
                if let Some(c) = code
                    && !close_code_valid(c)
                {
                    return Err(protocol("invalid WebSocket close code"));
                }
                if std::str::from_utf8(&payload[payload.len().min(2)..]).is_err() {
                    return Err(protocol("WebSocket close reason is not UTF-8"));
                }
                // Echo the code (RFC 6455 5.5.1); the caller flushes.
                if !self.close_sent {
                    let echo = code.map(u16::to_be_bytes);
                    self.encode(OP_CLOSE, false, echo.as_ref().map_or(&[][..], |e| &e[..]));
                    self.close_sent = true;
                }
                Err(ReadError::Closed)
            }
            OP_TEXT => Err(protocol(
                "text WebSocket messages are not accepted; send frames as binary messages",
            )),
            _ => {
                if let Some(p) = &mut self.partial {
                    p.buf.extend_from_slice(&payload);
                } else if !fin {
                    self.partial = Some(Box::new(Partial {
                        buf: payload,
                        compressed: rsv1,
                    }));
                    return Ok(Step::Again);
                } else {
                    return self.finish(payload, rsv1, max_msg);
                }
                if !fin {
                    return Ok(Step::Again);
                }
                let p = self.partial.take().map(|p| *p);
                let Some(Partial { buf, compressed }) = p else {
                    return Ok(Step::Again);
                };
                self.finish(buf, compressed, max_msg)
            }
        }
    }

    /// A whole message, inflated when it was compressed.
    fn finish(
        &mut self,
        msg: BytesMut,
        compressed: bool,
        max_msg: usize,
    ) -> Result<Step, ReadError> {
        if !compressed {
            return Ok(Step::Message(msg));
        }
        match crate::listener::wsdeflate::inflate(&msg, max_msg) {
            Some(plain) => Ok(Step::Message(BytesMut::from(&plain[..]))),
            None => Err(protocol("invalid compressed WebSocket message")),
        }
    }

    /// Appends one frame (server frames are not masked) to the write buffer.
    fn encode(&mut self, op: u8, rsv1: bool, payload: &[u8]) {
        let w = &mut self.wbuf;
        w.reserve(payload.len() + 10);
        w.put_u8(FIN | if rsv1 { RSV1 } else { 0 } | op);
        match payload.len() {
            n @ 0..=125 => w.put_u8(n as u8),
            n @ 126..=0xFFFF => {
                w.put_u8(126);
                w.put_u16(n as u16);
            }
            n => {
                w.put_u8(127);
                w.put_u64(n as u64);
            }
        }
        w.put_slice(payload);
    }

    /// Queues `count` gateway frames that sit back to back in `raw`, one
    /// binary message each (compressed when negotiated and large enough).
    pub(crate) fn queue(&mut self, raw: &[u8], count: u32) {
        let mut rest = raw;
        for _ in 0..count.max(1) {
            let n = match frame::check(rest, u32::MAX) {
                Ok(Some(n)) if count > 1 => n,
                _ => rest.len(),
            };
            let (f, tail) = rest.split_at(n);
            rest = tail;
            match self.compress_min {
                Some(min) if f.len() >= min => {
                    let z = crate::listener::wsdeflate::deflate(f);
                    self.encode(OP_BINARY, true, &z);
                }
                _ => self.encode(OP_BINARY, false, f),
            }
            if rest.is_empty() {
                break;
            }
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes what is buffered, then releases the buffer.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        self.wbuf = BytesMut::new();
        self.control_unsent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes every queued frame and flushes the transport.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Sends a Close with `code` and `reason` (cut to 123 bytes on a
    /// character boundary), unless one was sent, then ends the transport.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        if !self.close_sent {
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let mut p = Vec::with_capacity(2 + end);
            p.extend_from_slice(&code.to_be_bytes());
            p.extend_from_slice(&reason.as_bytes()[..end]);
            self.encode(OP_CLOSE, false, &p);
            self.close_sent = true;
        }
        if std::future::poll_fn(|cx| self.poll_flush(cx)).await.is_ok() {
            let _ = std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
        }
    }
}

/// The fuzz property (`gateway::fuzzing::ws_frames`): parses `data` as
/// client bytes with permessage-deflate on until it needs more or refuses.
pub(crate) fn check_parse(data: &[u8], max: u32) {
    let max_msg = max as usize + frame::LEN_BYTES;
    let mut ws = WsConn::new(tokio::io::empty(), Some(usize::MAX));
    ws.rbuf = BytesMut::from(data);
    for _ in 0..data.len() + 1 {
        match ws.parse(max_msg) {
            Ok(Step::Message(m)) => assert!(m.len() <= max_msg, "{} > {max_msg}", m.len()),
            Ok(Step::Again) => {}
            Ok(Step::Need(n)) => {
                assert!(n > 0);
                break;
            }
            Err(_) => break,
        }
        assert!(ws.rbuf.capacity() <= data.len(), "the buffer grew");
    }
}

/// Close codes a peer may send (RFC 6455 7.4; 1004-1006 and 1015 are never
/// sent on the wire).
fn close_code_valid(c: u16) -> bool {
    matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs the client's masking key over the payload, eight bytes at a time.
fn unmask(p: &mut [u8], key: [u8; 4]) {
    let k8 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = p.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ k8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client_frame(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut v = vec![b0];
        match payload.len() {
            n @ 0..=125 => v.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
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
        v
    }

    fn gw_frame(payload: &[u8]) -> Vec<u8> {
        let h = frame::Header::new(frame::Kind::Data);
        frame::Frame::new(h, bytes::Bytes::copy_from_slice(payload))
            .to_bytes()
            .to_vec()
    }

    fn budget() -> Arc<ByteBudget> {
        ByteBudget::new(1 << 30)
    }

    async fn read(ws: &mut WsConn<tokio::io::DuplexStream>) -> Result<BytesMut, ReadError> {
        let b = budget();
        std::future::poll_fn(|cx| ws.poll_read_frame(cx, 1 << 20, &b)).await
    }

    fn pair(compress: Option<usize>) -> (WsConn<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(1 << 22);
        (WsConn::new(a, compress), b)
    }

    #[test]
    fn unmask_matches_the_bytewise_rule() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for n in [0, 1, 7, 8, 9, 64, 1000] {
            let plain: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let mut p: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            unmask(&mut p, key);
            assert_eq!(p, plain, "{n} bytes");
        }
    }

    #[tokio::test]
    async fn messages_fragments_pings_and_a_close() {
        let (mut ws, mut peer) = pair(None);
        let f = gw_frame(b"hello");
        let big = gw_frame(&vec![7u8; 70_000]);
        let mut wire = client_frame(0x82, &f, [1, 2, 3, 4]);
        // Fragmented, with a ping in the middle.
        wire.extend(client_frame(0x02, &f[..10], [5, 6, 7, 8]));
        wire.extend(client_frame(0x89, b"hi", [9, 9, 9, 9]));
        wire.extend(client_frame(0x80, &f[10..], [1, 1, 1, 1]));
        wire.extend(client_frame(0x82, &big, [3, 1, 4, 1]));
        wire.extend(client_frame(0x88, &[0x03, 0xE8, b'o', b'k'], [2, 2, 2, 2]));
        peer.write_all(&wire).await.unwrap();
        assert_eq!(&read(&mut ws).await.unwrap()[..], &f[..]);
        assert_eq!(&read(&mut ws).await.unwrap()[..], &f[..]);
        assert_eq!(&read(&mut ws).await.unwrap()[..], &big[..]);
        assert!(matches!(read(&mut ws).await, Err(ReadError::Closed)));
        std::future::poll_fn(|cx| ws.poll_flush(cx)).await.unwrap();
        // The pong, then the Close echo with the client's code.
        let mut got = [0u8; 8];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x8A, 2, b'h', b'i', 0x88, 2, 0x03, 0xE8]);
        assert!(!ws.has_pending());
        assert_eq!(ws.rbuf.capacity(), 0, "no read buffer kept");
    }

    #[tokio::test]
    async fn a_ping_alone_is_answered_without_waiting_for_data() {
        let (mut ws, mut peer) = pair(None);
        peer.write_all(&client_frame(0x89, b"are you there", [7, 7, 7, 7]))
            .await
            .unwrap();
        let b = budget();
        // No message arrives, so the read waits; the pong has gone out.
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            std::future::poll_fn(|cx| ws.poll_read_frame(cx, 1 << 20, &b)),
        )
        .await;
        assert!(waited.is_err(), "a read returned without a message");
        let mut got = [0u8; 15];
        tokio::time::timeout(std::time::Duration::from_secs(1), peer.read_exact(&mut got))
            .await
            .expect("the pong within 1 s")
            .unwrap();
        assert_eq!(&got[..2], &[0x8A, 13]);
        assert_eq!(&got[2..], b"are you there");
    }

    /// A peer that pings and never reads: once its pongs fill the socket,
    /// the pongs held back stay under the cap and the peer is no longer
    /// read (its pings wait in its own socket), so memory stays bounded.
    #[tokio::test]
    async fn a_peer_that_pings_without_reading_is_not_read_further() {
        // 64 KiB each way, like a small socket buffer.
        let (a, peer) = tokio::io::duplex(64 * 1024);
        let (mut from_gw, mut to_gw) = tokio::io::split(peer);
        let mut ws = WsConn::new(a, None);
        const PINGS: usize = 5_000;
        let ping = client_frame(0x89, &[b'p'; 125], [1, 2, 3, 4]);
        let flood: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * PINGS)
            .collect();
        let writer = tokio::spawn(async move { to_gw.write_all(&flood).await });
        let b = budget();
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            std::future::poll_fn(|cx| ws.poll_read_frame(cx, 1 << 20, &b)),
        )
        .await;
        assert!(waited.is_err(), "a read returned without a message");
        assert!(
            ws.wbuf.len() <= MAX_CONTROL_UNSENT + 127,
            "{} bytes of pongs held",
            ws.wbuf.len()
        );
        assert!(!writer.is_finished(), "every ping was read");
        // Once the peer reads its pongs, reading goes on: every ping is
        // answered, in full.
        let mut pongs = vec![0u8; 127 * PINGS];
        tokio::select! {
            r = from_gw.read_exact(&mut pongs) => { r.unwrap(); }
            r = std::future::poll_fn(|cx| ws.poll_read_frame(cx, 1 << 20, &b)) => {
                panic!("a read returned without a message: {r:?}")
            }
        }
        assert!(
            pongs
                .chunks(127)
                .all(|p| p[..2] == [0x8A, 125] && p[2..] == [b'p'; 125])
        );
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn frames_written_as_binary_messages_and_compressed_when_negotiated() {
        let (mut ws, mut peer) = pair(None);
        let (a, b) = (gw_frame(b"one"), gw_frame(&[9u8; 200]));
        let mut both = a.clone();
        both.extend_from_slice(&b);
        ws.queue(&both, 2);
        std::future::poll_fn(|cx| ws.poll_flush(cx)).await.unwrap();
        let mut want = vec![0x82, a.len() as u8];
        want.extend_from_slice(&a);
        want.extend_from_slice(&[0x82, 126]);
        want.extend_from_slice(&(b.len() as u16).to_be_bytes());
        want.extend_from_slice(&b);
        let mut got = vec![0u8; want.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
        assert_eq!(ws.wbuf.capacity(), 0, "write buffer released");

        let (mut ws, mut peer) = pair(Some(64));
        ws.queue(&b, 1);
        std::future::poll_fn(|cx| ws.poll_flush(cx)).await.unwrap();
        let mut head = [0u8; 2];
        peer.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x80 | 0x40 | 0x02, "final, RSV1, binary");
        let mut z = vec![0u8; head[1] as usize];
        peer.read_exact(&mut z).await.unwrap();
        assert_eq!(crate::listener::wsdeflate::inflate(&z, 1 << 20).unwrap(), b);
        // And a compressed, fragmented message from the client.
        let z = crate::listener::wsdeflate::deflate(&b);
        let (x, y) = z.split_at(z.len() / 2);
        let mut wire = client_frame(0x40 | 0x02, x, [1, 2, 3, 4]);
        wire.extend(client_frame(0x80, y, [4, 3, 2, 1]));
        peer.write_all(&wire).await.unwrap();
        assert_eq!(&read(&mut ws).await.unwrap()[..], &b[..]);
    }

    #[tokio::test]
    async fn protocol_violations_are_refused() {
        let f = gw_frame(b"x");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut v = client_frame(0x82, &f, [0; 4]);
                    v[1] &= 0x7F; // unmasked
                    v.drain(2..6);
                    v
                },
                "unmasked",
            ),
            (client_frame(0x81, b"text", [1; 4]), "text"),
            (client_frame(0x83, b"", [1; 4]), "reserved WebSocket opcode"),
            (client_frame(0x80, &f, [1; 4]), "continuation"),
            (client_frame(0x09, b"", [1; 4]), "control"),
            (client_frame(0x89, &[0u8; 126], [1; 4]), "control"),
            (client_frame(0x92, &f, [1; 4]), "RSV2"),
            (client_frame(0xC2, &f, [1; 4]), "not negotiated"),
            (client_frame(0x88, &[3], [1; 4]), "1 byte"),
            (client_frame(0x88, &[0x03, 0xED], [1; 4]), "close code"),
            (client_frame(0x88, &[0x03, 0xE8, 0xFF], [1; 4]), "not UTF-8"),
            (
                client_frame(0x82, b"abc", [1; 4]),
                "exactly one whole frame",
            ),
            (
                {
                    let mut v = client_frame(0x02, &f[..3], [1; 4]);
                    v.extend(client_frame(0x82, &f, [1; 4]));
                    v
                },
                "before the previous one",
            ),
        ];
        for (wire, want) in cases {
            let (mut ws, mut peer) = pair(None);
            peer.write_all(&wire).await.unwrap();
            match read(&mut ws).await {
                Err(ReadError::Protocol(m)) => assert!(m.contains(want), "{want}: got {m}"),
                other => panic!("{want}: got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_by_its_announced_length() {
        let (mut ws, mut peer) = pair(None);
        // Announces 16 MiB; only the header is sent.
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&(16u64 << 20).to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        peer.write_all(&head).await.unwrap();
        assert!(matches!(read(&mut ws).await, Err(ReadError::WsTooLarge(n)) if n == 16 << 20));
        assert!(ws.rbuf.capacity() < 64 * 1024, "allocated by the claim");
        // Fragments that add up past the limit.
        let (mut ws, mut peer) = pair(None);
        let part = vec![0u8; 600 * 1024];
        let mut wire = client_frame(0x02, &part, [1; 4]);
        wire.extend(client_frame(0x80, &part, [1; 4]));
        peer.write_all(&wire).await.unwrap();
        assert!(matches!(read(&mut ws).await, Err(ReadError::WsTooLarge(_))));
    }

    #[tokio::test]
    async fn a_close_from_the_gateway_carries_code_and_reason() {
        let (mut ws, mut peer) = pair(None);
        ws.close(4001, &"é".repeat(100)).await;
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got[0], 0x88);
        let n = got[1] as usize;
        assert!(n <= 125);
        assert_eq!(&got[2..4], &4001u16.to_be_bytes());
        assert!(
            std::str::from_utf8(&got[4..2 + n]).is_ok(),
            "cut on a char boundary"
        );
    }
}
