//! The client transport of a session: raw TCP (plain or TLS) carrying frames
//! back to back, or WebSocket carrying exactly one frame per binary message. Both read
//! whole raw frames and batch outgoing frames until flushed. Reads and
//! writes are `poll_*` functions so the session task can drive them by hand,
//! without a future per source in its (long-lived, per-session) state.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use gg_proto::frame::{self, FrameError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::config::SMALL_FRAME_BYTES;
use crate::limits::{ByteBudget, Charge};
use crate::listener::prefixed::PrefixedIo;

/// A WebSocket over an HTTP/1.1 connection upgraded by hyper.
pub(crate) type WsStream = super::ws::WsConn<TokioIo<Upgraded>>;

/// A TLS connection on the client port (the sniffed bytes replayed into
/// the handshake).
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<PrefixedIo<TcpStream>>;

/// Why reading the next frame failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The client closed the connection (EOF or WebSocket close).
    Closed,
    Io(io::Error),
    /// The bytes are not a valid frame (see [`FrameError::stream_in_sync`]).
    Frame(FrameError),
    /// A transport-level rule was broken (text WebSocket message, several
    /// frames in one message, …).
    Protocol(&'static str),
    /// The process-wide budget for buffered client bytes is spent.
    Budget,
    /// A WebSocket message of this many bytes, over the limit.
    WsTooLarge(usize),
}

/// Encoded frames waiting for a flush. Two fit inline, so a session that
/// answers one request at a time never allocates here; a burst spills to
/// the heap and gives it back once written.
type Pending = SmallVec<[Bytes; 2]>;

pub(crate) enum ClientIo {
    /// Frames over plain TCP. Reads go through the read half; writes
    /// through the socket it shares ([`TcpWriter`]). The write half stays
    /// here until the session shares it with direct writers
    /// ([`ClientIo::take_writer`]), and comes back for the end.
    Tcp {
        stream: OwnedReadHalf,
        wr: Option<OwnedWriteHalf>,
        /// Bytes read and not yet framed; released whenever it empties, so
        /// an idle session holds no read buffer.
        rbuf: BytesMut,
        /// What `rbuf` holds against the process's [`ByteBudget`] beyond
        /// [`SMALL_FRAME_BYTES`].
        charge: Option<Charge>,
        pending: Pending,
    },
    /// Frames over TLS. Boxed: rustls's state is large, and only TLS
    /// sessions should pay for it.
    Tls {
        stream: Box<TlsStream>,
        rbuf: BytesMut,
        charge: Option<Charge>,
        pending: Pending,
    },
    /// One binary message per frame; boxed, so TCP sessions do not pay
    /// for its state.
    Ws { ws: Box<WsStream> },
    /// An HTTP session: calls arrive as frames, what the session writes
    /// goes to waiting calls or out as Server-Sent Events.
    Sse {
        io: Box<crate::listener::sse::SseIo>,
        pending: Pending,
    },
}

/// Read-buffer growth step for TCP.
const READ_CHUNK: usize = 4 * 1024;

/// Most frames handed to one `writev`.
const MAX_IOVECS: usize = 64;

impl ClientIo {
    /// A TCP transport whose first bytes (already read while sniffing) are
    /// `prefix`: they are parsed first, never lost.
    pub(crate) fn tcp(stream: TcpStream, prefix: BytesMut) -> ClientIo {
        let (stream, wr) = stream.into_split();
        ClientIo::Tcp {
            stream,
            wr: Some(wr),
            rbuf: prefix,
            charge: None,
            pending: Pending::new(),
        }
    }

    /// Frames over TLS; `prefix` holds plaintext already read (while
    /// sniffing inside TLS).
    pub(crate) fn tls(stream: TlsStream, prefix: BytesMut) -> ClientIo {
        ClientIo::Tls {
            stream: Box::new(stream),
            rbuf: prefix,
            charge: None,
            pending: Pending::new(),
        }
    }

    /// A WebSocket over `io`; `compress_min` when permessage-deflate was
    /// negotiated (messages of at least this many bytes go out compressed).
    pub(crate) fn ws(io: TokioIo<Upgraded>, compress_min: Option<usize>) -> ClientIo {
        ClientIo::Ws {
            ws: Box::new(WsStream::new(io, compress_min)),
        }
    }

    /// Reads one or more (at most `most`) whole raw frames (length prefixes
    /// included) that sit back to back, or registers the task's waker and
    /// returns `Pending`. A byte stream hands over every whole frame it has
    /// buffered, so the session walks them in place; WebSocket and SSE give
    /// one frame per message.
    pub(crate) fn poll_read_frames(
        &mut self,
        cx: &mut Context<'_>,
        max: u32,
        most: usize,
        budget: &Arc<ByteBudget>,
    ) -> Poll<Result<BytesMut, ReadError>> {
        match self {
            ClientIo::Tcp {
                stream,
                rbuf,
                charge,
                ..
            } => {
                let mut rb = ReadBuf {
                    rbuf,
                    charge,
                    budget,
                };
                poll_frame(stream, &mut rb, cx, max, most)
            }
            ClientIo::Tls {
                stream,
                rbuf,
                charge,
                ..
            } => {
                let mut rb = ReadBuf {
                    rbuf,
                    charge,
                    budget,
                };
                poll_frame(&mut **stream, &mut rb, cx, max, most)
            }
            ClientIo::Sse { io, .. } => io.poll_read_frame(cx),
            ClientIo::Ws { ws } => ws.poll_read_frame(cx, max, budget),
        }
    }

    /// The write half of a plain TCP session, to share with direct writers
    /// ([`super::Inbox::share_writer`]); `None` for other transports.
    pub(crate) fn take_writer(&mut self) -> Option<OwnedWriteHalf> {
        match self {
            ClientIo::Tcp { wr, .. } => wr.take(),
            _ => None,
        }
    }

    /// Takes back the write half (for the end: FIN after CLOSE).
    pub(crate) fn restore_writer(&mut self, half: OwnedWriteHalf) {
        if let ClientIo::Tcp { wr, .. } = self {
            *wr = Some(half);
        }
    }

    /// Reads one whole raw frame (see [`ClientIo::poll_read_frames`]).
    pub(crate) async fn read_frame(
        &mut self,
        max: u32,
        budget: &Arc<ByteBudget>,
    ) -> Result<BytesMut, ReadError> {
        std::future::poll_fn(|cx| self.poll_read_frames(cx, max, 1, budget)).await
    }

    /// Queues `count` encoded frames that sit back to back in `raw`;
    /// nothing is written until a flush. A byte stream takes them as one
    /// slice; WebSocket and SSE need a message per frame.
    pub(crate) fn queue(&mut self, raw: Bytes, count: u32) {
        match self {
            ClientIo::Tcp { pending, .. } | ClientIo::Tls { pending, .. } => pending.push(raw),
            ClientIo::Ws { ws } => ws.queue(&raw, count),
            ClientIo::Sse { pending, .. } if count > 1 => {
                pending.extend(frame::split_frames(raw));
            }
            ClientIo::Sse { pending, .. } => pending.push(raw),
        }
    }

    fn pending(&mut self) -> Option<&mut Pending> {
        match self {
            ClientIo::Tcp { pending, .. }
            | ClientIo::Tls { pending, .. }
            | ClientIo::Sse { pending, .. } => Some(pending),
            ClientIo::Ws { .. } => None,
        }
    }

    /// Whether frames are queued.
    pub(crate) fn has_pending(&self) -> bool {
        match self {
            ClientIo::Tcp { pending, .. }
            | ClientIo::Tls { pending, .. }
            | ClientIo::Sse { pending, .. } => !pending.is_empty(),
            ClientIo::Ws { ws } => ws.has_pending(),
        }
    }

    /// Writes every queued frame: one `writev` for TCP when the socket keeps
    /// up, with no copy. Makes what progress it can before `Pending`.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = match self {
            ClientIo::Tcp {
                stream, pending, ..
            } => poll_writev(&mut TcpWriter(stream.as_ref()), pending, cx),
            ClientIo::Tls {
                stream, pending, ..
            } => poll_writev(&mut **stream, pending, cx),
            ClientIo::Ws { ws } => ws.poll_flush(cx),
            ClientIo::Sse { io, pending } => {
                for f in pending.drain(..) {
                    io.deliver(f);
                }
                Poll::Ready(Ok(()))
            }
        };
        if let Some(pending) = self.pending()
            && pending.is_empty()
            && pending.spilled()
        {
            *pending = Pending::new();
        }
        res
    }

    /// Writes every queued frame (see [`ClientIo::poll_flush`]).
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Ends the transport: TCP half-close, or a WebSocket close frame with
    /// `code` (the same number as the CLOSE frame's code).
    pub(crate) async fn shutdown(&mut self, code: u16, reason: &str) {
        match self {
            ClientIo::Tcp { wr, .. } => {
                if let Some(wr) = wr {
                    let _ = wr.shutdown().await;
                }
            }
            ClientIo::Tls { stream, .. } => {
                // close_notify, then FIN.
                let _ = stream.shutdown().await;
            }
            ClientIo::Sse { io, .. } => io.end(),
            ClientIo::Ws { ws } => ws.close(code, reason).await,
        }
    }
}

/// A transport's read buffer and what it holds against the budget.
struct ReadBuf<'a> {
    rbuf: &'a mut BytesMut,
    charge: &'a mut Option<Charge>,
    budget: &'a Arc<ByteBudget>,
}

/// Most bytes reserved ahead of what has arrived: a frame's announced
/// length is a claim, not a reason to allocate.
const READ_AHEAD: usize = 64 * 1024;

/// Reads until the buffer holds a whole frame, and returns the whole
/// frames at its front (at most `most`). While the buffer is empty it
/// reads into a stack scratch ([`poll_read_some`]), so an idle session holds
/// no read buffer and nothing is allocated before bytes arrive. Bytes of a
/// partly read frame beyond [`SMALL_FRAME_BYTES`] are charged to the budget
/// as they arrive; a spent budget refuses the frame.
fn poll_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    rb: &mut ReadBuf<'_>,
    cx: &mut Context<'_>,
    max: u32,
    most: usize,
) -> Poll<Result<BytesMut, ReadError>> {
    loop {
        let rbuf = &mut *rb.rbuf;
        match frame::check(rbuf, max) {
            Ok(Some(mut total)) => {
                // The whole frames that follow come along; a bad one stays
                // at the front, for the next call to report.
                let mut n = 1;
                while n < most
                    && let Ok(Some(next)) = frame::check(&rbuf[total..], max)
                {
                    total += next;
                    n += 1;
                }
                // The frames keep the allocation alive until they are
                // forwarded; the session itself holds nothing. A buffer of
                // whole frames only is handed over whole (not split:
                // splitting makes it shared, one more allocation).
                let raw = if total == rbuf.len() {
                    std::mem::take(rbuf)
                } else {
                    rbuf.split_to(total)
                };
                *rb.charge = None;
                return Poll::Ready(Ok(raw));
            }
            Ok(None) => {}
            Err(e) => return Poll::Ready(Err(ReadError::Frame(e))),
        }
        let held = rbuf.len().saturating_sub(SMALL_FRAME_BYTES as usize) as u64;
        if !Charge::grow_to(rb.charge, rb.budget, held) {
            return Poll::Ready(Err(ReadError::Budget));
        }
        // Room for what the announced frame still needs, but never more
        // than a read-ahead beyond what has arrived.
        let want = if rbuf.len() >= frame::LEN_BYTES {
            let len = u32::from_be_bytes([rbuf[0], rbuf[1], rbuf[2], rbuf[3]]) as usize;
            (frame::LEN_BYTES + len)
                .saturating_sub(rbuf.len())
                .clamp(READ_CHUNK, READ_AHEAD)
        } else {
            READ_CHUNK
        };
        // `poll_read` (not `try_read`): tokio clears the readiness after a
        // short read, which saves the spurious EAGAIN read per frame that
        // `try_read` would cost. An empty buffer reads into a stack scratch
        // and keeps exactly what arrived ([`poll_read_some`]).
        let read = poll_read_sized(stream, rbuf, want, frame_total, cx);
        match ready!(read) {
            Ok(0) => return Poll::Ready(Err(ReadError::Closed)),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(ReadError::Io(e))),
        }
    }
}

/// Bytes read at most per `read` into the stack scratch.
const SCRATCH: usize = 4 * 1024;

/// Reads more into `rbuf` (about `want` bytes are expected, at most
/// [`READ_AHEAD`] reserved). An empty buffer reads into a stack scratch and
/// keeps exactly what arrived — room for the rest of a frame that is only
/// partly there, nothing more when the read holds whole frames (the common
/// case: one small allocation per read, sized by what came) — so a
/// transport without a readiness check holds no buffer while it waits.
pub(super) fn poll_read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    poll_read_sized(stream, rbuf, want, |_| None, cx)
}

/// The bytes of the frame that `b` starts with, if its length prefix is
/// there.
fn frame_total(b: &[u8]) -> Option<usize> {
    match b {
        [a, b, c, d, ..] => Some(frame::LEN_BYTES + u32::from_be_bytes([*a, *b, *c, *d]) as usize),
        _ => None,
    }
}

/// [`poll_read_some`], where `first` tells how long the unit (frame,
/// message) that the bytes start with is, when it can.
fn poll_read_sized<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    want: usize,
    first: impl Fn(&[u8]) -> Option<usize>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if rbuf.is_empty() {
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); SCRATCH];
        let mut rb = tokio::io::ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(stream).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        if !got.is_empty() {
            let cap = match first(got) {
                // A full scratch: more has arrived than it holds, so the
                // next read takes a read-ahead's worth at once (16 KiB
                // frames at 16 in flight came half a frame per read).
                _ if got.len() == SCRATCH => got.len() + READ_AHEAD,
                Some(n) if n <= got.len() => got.len(),
                Some(n) => got.len() + (n - got.len()).min(READ_AHEAD),
                None => got.len().max(want.min(READ_AHEAD)),
            };
            let mut b = BytesMut::with_capacity(cap);
            b.extend_from_slice(got);
            *rbuf = b;
        }
        return Poll::Ready(Ok(got.len()));
    }
    // A buffer that already holds a scratch's worth came from a burst:
    // read ahead as far as the bound allows.
    let ahead = if rbuf.len() >= SCRATCH {
        READ_AHEAD
    } else {
        want.clamp(SCRATCH, READ_AHEAD)
    };
    rbuf.reserve(ahead);
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, rbuf)
}

/// Writes to a TCP socket through a shared reference, as direct writers
/// do ([`super::SessionHandle::deliver_frames`]): who writes is decided by
/// the session's queue, not by who holds the socket.
struct TcpWriter<'a>(&'a TcpStream);

impl AsyncWrite for TcpWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // `try_write_vectored` cleared the readiness: this
                    // registers the waker (or finds new readiness).
                    ready!(self.0.poll_write_ready(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Writes `pending` with vectored writes, dropping what was written, then
/// flushes (a no-op for TCP; TLS pushes its records out).
fn poll_writev<W: AsyncWrite + Unpin>(
    stream: &mut W,
    pending: &mut Pending,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !pending.is_empty() {
        let n = {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let k = pending.len().min(MAX_IOVECS);
            for (s, f) in slices.iter_mut().zip(pending.iter()) {
                *s = IoSlice::new(f);
            }
            ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..k]))?
        };
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        // Drop whole frames written; advance into a partly written one.
        let mut left = n;
        let whole = pending
            .iter()
            .take_while(|f| {
                let fits = f.len() <= left;
                if fits {
                    left -= f.len();
                }
                fits
            })
            .count();
        pending.drain(..whole);
        if left > 0 {
            pending[0].advance(left);
        }
    }
    Pin::new(stream).poll_flush(cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn frame_bytes(payload: usize) -> Vec<u8> {
        let mut h = frame::Header::new(frame::Kind::Data);
        h.service_type = 1;
        let mut out = BytesMut::new();
        gg_proto::Frame::new(h, Bytes::from(vec![7u8; payload])).encode(&mut out);
        out.to_vec()
    }

    async fn read(
        io: &mut tokio::io::DuplexStream,
        rbuf: &mut BytesMut,
    ) -> Poll<Result<BytesMut, ReadError>> {
        let budget = ByteBudget::new(1 << 30);
        let mut charge = None;
        std::future::poll_fn(|cx| {
            let mut rb = ReadBuf {
                rbuf: &mut *rbuf,
                charge: &mut charge,
                budget: &budget,
            };
            Poll::Ready(poll_frame(io, &mut rb, cx, 1 << 30, 32))
        })
        .await
    }

    #[tokio::test]
    async fn a_read_of_one_whole_frame_is_handed_over_as_its_own_buffer() {
        let (mut io, mut peer) = tokio::io::duplex(1 << 16);
        let wire = frame_bytes(100);
        peer.write_all(&wire).await.unwrap();
        let mut rbuf = BytesMut::new();
        let Poll::Ready(Ok(raw)) = read(&mut io, &mut rbuf).await else {
            panic!("a whole frame is there");
        };
        assert_eq!(&raw[..], &wire[..]);
        assert_eq!(raw.capacity(), wire.len(), "sized by what arrived");
        assert_eq!(rbuf.capacity(), 0, "the session keeps no buffer");
    }

    #[tokio::test]
    async fn a_frame_announced_large_reserves_no_more_than_the_read_ahead() {
        let (mut io, mut peer) = tokio::io::duplex(1 << 16);
        let mut wire = frame_bytes(100);
        // Claims 16 MiB; 100 bytes follow.
        wire[..4].copy_from_slice(&(16u32 << 20).to_be_bytes());
        peer.write_all(&wire).await.unwrap();
        let mut rbuf = BytesMut::new();
        assert!(read(&mut io, &mut rbuf).await.is_pending());
        assert_eq!(rbuf.len(), wire.len());
        // Never more than a read-ahead beyond what arrived.
        assert!(
            rbuf.capacity() <= rbuf.len() + READ_AHEAD,
            "allocated by the claim"
        );
    }
}
