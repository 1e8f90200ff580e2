//! WebSocket `permessage-deflate` (RFC 7692), off unless
//! `websocket.permessage_deflate` is set.
//!
//! The gateway always answers `server_no_context_takeover;
//! client_no_context_takeover`: every message is compressed and
//! decompressed on its own, so a session keeps no compression state at all
//! between messages (an idle session costs nothing extra) and each worker
//! thread reuses one compressor and one decompressor (32 KiB windows)
//! for every session it runs. Offers that ask for a smaller server window
//! than 15 bits are declined (the session runs uncompressed).
//!
//! tungstenite (the WebSocket codec) has no extension support: it refuses
//! frames with RSV1 set. [`WsIo`] sits between it and the socket: on the
//! way in it gathers the frames of a compressed message, inflates it
//! (never beyond `limits.max_frame_bytes`) and hands tungstenite one plain
//! frame; control and uncompressed frames pass untouched. On the way out
//! the session writes compressed messages as raw frames with RSV1 set
//! ([`compressed_frame`]).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// The answer to an acceptable offer.
pub(crate) const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Picks the first acceptable `permessage-deflate` offer in the request's
/// `Sec-WebSocket-Extensions` values; `Some(ACCEPTED)` to answer with it.
pub(crate) fn negotiate<'a>(offers: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    for offer in offers.flat_map(|v| v.split(',')) {
        let mut parts = offer.split(';').map(str::trim);
        if parts.next() != Some("permessage-deflate") {
            continue;
        }
        let ok = parts.all(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            let value = value.trim().trim_matches('"');
            match name.trim() {
                "server_no_context_takeover" | "client_no_context_takeover" => value.is_empty(),
                // We compress with a 15-bit window only.
                "server_max_window_bits" => value == "15",
                // We inflate any window up to 15 bits.
                "client_max_window_bits" => {
                    value.is_empty() || value.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b))
                }
                _ => false,
            }
        });
        if ok {
            return Some(ACCEPTED);
        }
    }
    None
}

thread_local! {
    static COMPRESS: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    static DECOMPRESS: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Deflates one message (no context takeover), without the trailing
/// `00 00 ff ff` (RFC 7692 7.2.1).
pub fn deflate(data: &[u8]) -> Bytes {
    COMPRESS.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut input = data;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = c.total_in();
            // Sync flush ends the block on a byte boundary with 00 00 ff ff.
            let _ = c.compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(c.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
        }
        Bytes::from(out)
    })
}

/// Inflates one message; `None` if it is corrupt or would exceed `max`.
pub fn inflate(data: &[u8], max: usize) -> Option<Vec<u8>> {
    DECOMPRESS.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out = Vec::with_capacity((data.len() * 4).min(max).max(64));
        for input in [data, &[0, 0, 0xff, 0xff][..]] {
            let mut input = input;
            loop {
                if out.len() == out.capacity() {
                    if out.len() >= max {
                        return None;
                    }
                    out.reserve(out.capacity().min(max - out.len()).max(64));
                }
                let before = d.total_in();
                let st = d
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .ok()?;
                input = &input[(d.total_in() - before) as usize..];
                if out.len() > max {
                    return None;
                }
                if st == Status::StreamEnd || (input.is_empty() && out.len() < out.capacity()) {
                    break;
                }
            }
        }
        Some(out)
    })
}

/// A compressed binary message as one raw frame with RSV1 set.
pub(crate) fn compressed_frame(payload: Bytes) -> Frame {
    let mut f = Frame::message(payload, OpCode::Data(Data::Binary), true);
    f.header_mut().rsv1 = true;
    f
}

/// What inflating the incoming side needs.
struct Inflating {
    /// Bytes from the socket not yet parsed into frames.
    raw: BytesMut,
    /// Plain frames ready for tungstenite.
    out: BytesMut,
    /// The compressed message being gathered: its opcode and payload.
    msg: Option<(u8, BytesMut)>,
    max: usize,
}

/// The socket under tungstenite; see the module docs.
pub(crate) struct WsIo<S> {
    inner: S,
    inflating: Option<Box<Inflating>>,
    /// What tungstenite wrote since the last flush: the frames of one
    /// flush go out in one write. Empty (no allocation) between flushes.
    wbuf: Vec<u8>,
}

impl<S> WsIo<S> {
    /// `deflate`: the extension was negotiated; `max` bounds an inflated message.
    pub(crate) fn new(inner: S, deflate: bool, max: usize) -> WsIo<S> {
        WsIo {
            inner,
            inflating: deflate.then(|| {
                Box::new(Inflating {
                    raw: BytesMut::new(),
                    out: BytesMut::new(),
                    msg: None,
                    max,
                })
            }),
            wbuf: Vec::new(),
        }
    }
}

/// Most bytes gathered before a write goes out without waiting for a flush.
const WRITE_GATHER: usize = 64 * 1024;

impl<S: AsyncWrite + Unpin> WsIo<S> {
    /// Writes out what was gathered; the buffer is released once empty.
    fn poll_write_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut done = 0;
        let res = loop {
            if done == self.wbuf.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[done..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        if done == self.wbuf.len() {
            self.wbuf = Vec::new();
        } else {
            self.wbuf.drain(..done);
        }
        res
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Inflating {
    /// Parses whole frames from `raw` into `out`; `Ok(false)` when more
    /// bytes are needed.
    fn step(&mut self) -> io::Result<bool> {
        let r = &self.raw[..];
        if r.len() < 2 {
            return Ok(false);
        }
        let (b0, b1) = (r[0], r[1]);
        let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 if r.len() >= 4 => (u64::from(u16::from_be_bytes([r[2], r[3]])), 4),
            127 if r.len() >= 10 => (
                u64::from_be_bytes([r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]]),
                10,
            ),
            126 | 127 => return Ok(false),
            n => (u64::from(n), 2),
        };
        if len > self.max as u64 {
            return Err(bad("WebSocket frame exceeds the maximum frame size"));
        }
        let key = if masked {
            let Some(k) = r.get(at..at + 4) else {
                return Ok(false);
            };
            at += 4;
            [k[0], k[1], k[2], k[3]]
        } else {
            [0; 4]
        };
        let total = at + len as usize;
        if r.len() < total {
            return Ok(false);
        }
        let compressed_start = rsv1 && (opcode == 1 || opcode == 2);
        let continuation = opcode == 0 && self.msg.is_some();
        if !compressed_start && !continuation {
            if rsv1 {
                return Err(bad("RSV1 set on a frame that cannot be compressed"));
            }
            // Control and plain data frames pass through untouched.
            let frame = self.raw.split_to(total);
            self.out.extend_from_slice(&frame);
            return Ok(true);
        }
        if compressed_start && self.msg.is_some() {
            return Err(bad("a new message started inside a fragmented one"));
        }
        let mut frame = self.raw.split_to(total);
        frame.advance(at);
        for (i, b) in frame.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
        let (op, data) = self.msg.get_or_insert_with(|| (opcode, BytesMut::new()));
        if data.len() + frame.len() > self.max {
            return Err(bad("compressed WebSocket message exceeds the maximum size"));
        }
        data.extend_from_slice(&frame);
        if fin {
            let op = *op;
            let data = std::mem::take(data);
            self.msg = None;
            let plain = inflate(&data, self.max).ok_or_else(|| {
                bad("compressed WebSocket message is corrupt or inflates beyond the maximum size")
            })?;
            // Re-framed unfragmented, masked with a zero key (the payload is
            // unchanged), as a client frame must be.
            self.out.put_u8(0x80 | op);
            match plain.len() {
                n if n < 126 => self.out.put_u8(0x80 | n as u8),
                n if n <= 0xffff => {
                    self.out.put_u8(0x80 | 126);
                    self.out.put_u16(n as u16);
                }
                n => {
                    self.out.put_u8(0x80 | 127);
                    self.out.put_u64(n as u64);
                }
            }
            self.out.put_slice(&[0; 4]);
            self.out.put_slice(&plain);
        }
        Ok(true)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inf) = this.inflating.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if !inf.out.is_empty() {
                let n = inf.out.len().min(buf.remaining());
                buf.put_slice(&inf.out[..n]);
                inf.out.advance(n);
                if inf.out.is_empty() {
                    inf.out = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if inf.step()? {
                continue;
            }
            if inf.raw.len() > inf.max + 14 {
                return Poll::Ready(Err(bad("WebSocket frame exceeds the maximum frame size")));
            }
            inf.raw.reserve(4096);
            let n = match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut inf.raw)
            {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if inf.raw.is_empty() {
                        // Nothing half-read: hold no buffer while idle.
                        inf.raw = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            };
            if n == 0 {
                // EOF: tungstenite sees it as such.
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Writes are gathered until tungstenite flushes (it does after every batch
/// of messages the session sends, and after its own control frames), so a
/// batch of frames costs one `write`, not one per message.
impl<S: AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.wbuf.is_empty() && this.wbuf.len() + buf.len() > WRITE_GATHER {
            ready!(this.poll_write_gathered(cx))?;
        }
        if buf.len() >= WRITE_GATHER {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.wbuf.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_gathered(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_gathered(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_accepted_only_when_we_can_honour_them() {
        let one = |s: &'static str| negotiate(std::iter::once(s));
        assert_eq!(one("permessage-deflate"), Some(ACCEPTED));
        assert_eq!(
            one("permessage-deflate; client_max_window_bits"),
            Some(ACCEPTED)
        );
        assert_eq!(
            one("permessage-deflate; server_max_window_bits=10"),
            None,
            "a smaller server window than 15 is declined"
        );
        assert_eq!(
            one("permessage-deflate; server_max_window_bits=10, permessage-deflate"),
            Some(ACCEPTED),
            "the next offer is taken"
        );
        assert_eq!(one("x-webkit-deflate-frame"), None);
        assert_eq!(one("permessage-deflate; unknown=1"), None);
        assert_eq!(negotiate(std::iter::empty()), None);
    }

    #[test]
    fn deflate_and_inflate_round_trip_and_bombs_are_refused() {
        let text = br#"{"op":"move","x":12,"y":40,"room":"lobby"}"#.repeat(50);
        let z = deflate(&text);
        assert!(z.len() < text.len() / 10, "{} → {}", text.len(), z.len());
        assert_eq!(inflate(&z, 1 << 20).unwrap(), text);
        assert_eq!(inflate(&deflate(b""), 16).unwrap(), b"");
        // 1 MiB of zeros deflates to a few KiB; a 64 KiB cap refuses it.
        let bomb = deflate(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        assert!(inflate(&bomb, 64 * 1024).is_none());
        assert!(inflate(b"\xff\xff\xff garbage", 1 << 20).is_none());
    }

    fn client_frame(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut v = vec![b0, 0x80 | payload.len() as u8];
        v.extend_from_slice(&key);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        v
    }

    #[tokio::test]
    async fn compressed_fragments_become_one_plain_frame() {
        use tokio::io::AsyncReadExt;
        let z = deflate(b"hello hello hello");
        let (a, b) = z.split_at(z.len() / 2);
        let mut wire = client_frame(0x40 | 0x02, a, [1, 2, 3, 4]); // RSV1, binary, not final
        wire.extend(client_frame(0x89, b"p", [9, 9, 9, 9])); // a ping between fragments
        wire.extend(client_frame(0x80, b, [5, 6, 7, 8])); // final continuation
        wire.extend(client_frame(0x82, b"raw", [0, 1, 0, 1])); // uncompressed
        let mut io = WsIo::new(&wire[..], true, 1 << 20);
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        let mut want = client_frame(0x89, b"p", [9, 9, 9, 9]);
        want.extend(client_frame(0x82, b"hello hello hello", [0; 4]));
        want.extend(client_frame(0x82, b"raw", [0, 1, 0, 1]));
        assert_eq!(out, want);
        // RSV1 on a control frame is an error.
        let bad = client_frame(0x40 | 0x89, b"p", [0; 4]);
        let mut io = WsIo::new(&bad[..], true, 1 << 20);
        assert!(io.read_to_end(&mut Vec::new()).await.is_err());
    }
}

#[cfg(test)]
mod size {
    /// What a negotiated session holds between messages (the figure in
    /// docs/benchmarks.md): the boxed inflater with empty buffers.
    #[test]
    fn per_session_state_is_small() {
        let n = std::mem::size_of::<super::Inflating>();
        assert!(n <= 160, "{n} bytes");
        println!("Inflating: {n} bytes");
    }
}
