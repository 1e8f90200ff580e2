//! The client transport of a session: raw TCP carrying frames back to back,
//! or WebSocket carrying exactly one frame per binary message. Both read
//! whole raw frames (cancel-safe, so the session can `select!` on them) and
//! batch outgoing frames until [`ClientIo::flush`].

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use gg_proto::frame::{self, FrameError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

/// A WebSocket over an HTTP/1.1 connection upgraded by hyper.
pub type WsStream = WebSocketStream<TokioIo<Upgraded>>;

/// Why reading the next frame failed.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed the connection (EOF or WebSocket close).
    Closed,
    Io(io::Error),
    /// The bytes are not a valid frame (see [`FrameError::stream_in_sync`]).
    Frame(FrameError),
    /// A transport-level rule was broken (text WebSocket message, several
    /// frames in one message, …).
    Protocol(&'static str),
}

pub enum ClientIo {
    Tcp {
        stream: TcpStream,
        /// Bytes read and not yet framed; released whenever it empties, so
        /// an idle session holds no read buffer.
        rbuf: BytesMut,
        /// Encoded frames waiting for `flush`.
        pending: Vec<Bytes>,
    },
    Ws {
        ws: Box<WsStream>,
        pending: Vec<Bytes>,
    },
}

/// Read-buffer growth step for TCP.
const READ_CHUNK: usize = 4 * 1024;

impl ClientIo {
    /// A TCP transport whose first bytes (already read while sniffing) are
    /// `prefix`: they are parsed first, never lost.
    pub fn tcp(stream: TcpStream, prefix: BytesMut) -> ClientIo {
        ClientIo::Tcp {
            stream,
            rbuf: prefix,
            pending: Vec::new(),
        }
    }

    pub fn ws(ws: WsStream) -> ClientIo {
        ClientIo::Ws {
            ws: Box::new(ws),
            pending: Vec::new(),
        }
    }

    /// Reads one whole raw frame (length prefix included). Cancel-safe.
    pub async fn read_frame(&mut self, max: u32) -> Result<BytesMut, ReadError> {
        match self {
            ClientIo::Tcp { stream, rbuf, .. } => loop {
                match frame::check(rbuf, max) {
                    Ok(Some(total)) => {
                        let raw = rbuf.split_to(total);
                        if rbuf.is_empty() {
                            // The frame keeps the allocation alive until it is
                            // forwarded; the session itself holds nothing.
                            *rbuf = BytesMut::new();
                        }
                        return Ok(raw);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(ReadError::Frame(e)),
                }
                // Wait for data before allocating (cancel-safe).
                if let Err(e) = stream.readable().await {
                    return Err(ReadError::Io(e));
                }
                // Reserve exactly what the announced frame still needs
                // (bounded by `max` above), at least a chunk.
                let want = if rbuf.len() >= frame::LEN_BYTES {
                    let len = u32::from_be_bytes([rbuf[0], rbuf[1], rbuf[2], rbuf[3]]) as usize;
                    (frame::LEN_BYTES + len)
                        .saturating_sub(rbuf.len())
                        .max(READ_CHUNK)
                } else {
                    READ_CHUNK
                };
                rbuf.reserve(want);
                // `read_buf` (not `try_read_buf`): tokio clears the
                // readiness after a short read, which saves the spurious
                // EAGAIN read per frame that `try_read` would cost.
                match stream.read_buf(rbuf).await {
                    Ok(0) => return Err(ReadError::Closed),
                    Ok(_) => {}
                    Err(e) => return Err(ReadError::Io(e)),
                }
            },
            ClientIo::Ws { ws, .. } => loop {
                let msg = match ws.next().await {
                    None => return Err(ReadError::Closed),
                    Some(Ok(m)) => m,
                    Some(Err(tungstenite::Error::Capacity(_))) => {
                        return Err(ReadError::Frame(FrameError::TooLarge {
                            len: u32::MAX,
                            max,
                        }));
                    }
                    Some(Err(
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                    )) => {
                        return Err(ReadError::Closed);
                    }
                    Some(Err(tungstenite::Error::Io(e))) => return Err(ReadError::Io(e)),
                    Some(Err(_)) => return Err(ReadError::Protocol("invalid WebSocket framing")),
                };
                match msg {
                    Message::Binary(b) => {
                        return match frame::check(&b, max) {
                            Ok(Some(total)) if total == b.len() => {
                                Ok(b.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..])))
                            }
                            Ok(_) => Err(ReadError::Protocol(
                                "a WebSocket binary message must carry exactly one whole frame",
                            )),
                            Err(e) => Err(ReadError::Frame(e)),
                        };
                    }
                    Message::Text(_) => {
                        return Err(ReadError::Protocol(
                            "text WebSocket messages are not accepted; send frames as binary messages",
                        ));
                    }
                    Message::Close(_) => return Err(ReadError::Closed),
                    // Pings are answered by tungstenite itself.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                }
            },
        }
    }

    /// Queues an encoded frame; nothing is written until [`ClientIo::flush`].
    pub fn queue(&mut self, frame: Bytes) {
        match self {
            ClientIo::Tcp { pending, .. } => pending.push(frame),
            ClientIo::Ws { pending, .. } => pending.push(frame),
        }
    }

    /// Whether frames are queued.
    pub fn has_pending(&self) -> bool {
        match self {
            ClientIo::Tcp { pending, .. } => !pending.is_empty(),
            ClientIo::Ws { pending, .. } => !pending.is_empty(),
        }
    }

    /// Writes every queued frame (one syscall for TCP when the socket keeps up).
    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientIo::Tcp {
                stream, pending, ..
            } => {
                match pending.len() {
                    0 => {}
                    // One frame: write it as is, no copy.
                    1 => stream.write_all(&pending[0]).await?,
                    // Several: one buffer, one syscall (when the socket keeps up).
                    _ => {
                        let total = pending.iter().map(Bytes::len).sum();
                        let mut batch = BytesMut::with_capacity(total);
                        for f in pending.iter() {
                            batch.extend_from_slice(f);
                        }
                        stream.write_all(&batch).await?;
                    }
                }
                pending.clear();
                if pending.capacity() > 4 {
                    *pending = Vec::new();
                }
                Ok(())
            }
            ClientIo::Ws { ws, pending } => {
                for f in pending.drain(..) {
                    ws.feed(Message::Binary(f)).await.map_err(ws_io)?;
                }
                ws.flush().await.map_err(ws_io)
            }
        }
    }

    /// Ends the transport: TCP half-close, or a WebSocket close frame with
    /// `code` (the same number as the CLOSE frame's code).
    pub async fn shutdown(&mut self, code: u16, reason: &str) {
        match self {
            ClientIo::Tcp { stream, .. } => {
                let _ = stream.shutdown().await;
            }
            ClientIo::Ws { ws, .. } => {
                // WebSocket close reasons are limited to 123 bytes.
                let mut end = reason.len().min(123);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                let frame = CloseFrame {
                    code: code.into(),
                    reason: reason[..end].to_string().into(),
                };
                let _ = WsStream::close(ws, Some(frame)).await;
            }
        }
    }
}

fn ws_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}
