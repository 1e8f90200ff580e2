//! Listening sockets and accept loops that survive file-descriptor
//! exhaustion: on EMFILE / ENFILE / ENOBUFS / ENOMEM an accept loop backs
//! off (10 ms doubling to 1 s) instead of spinning a core, logs at most
//! once per 5 s with a count of what it suppressed, and accepts again as
//! soon as descriptors are free.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::warn;

/// Listen backlog (the machine caps it at 4096).
pub const BACKLOG: u32 = 4096;

/// Binds `addr` with SO_REUSEADDR and [`BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accept-error state of one accept loop.
#[derive(Debug)]
pub struct Acceptor {
    name: &'static str,
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Acceptor {
    /// `name` labels the log lines (e.g. "client", "ops", "admin").
    pub fn new(name: &'static str) -> Acceptor {
        Acceptor {
            name,
            delay: FIRST_DELAY,
            last_log: None,
            suppressed: 0,
        }
    }

    /// The next connection. Errors that concern one connection (reset
    /// before accept) are skipped; resource exhaustion backs off.
    pub async fn accept(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(x) => {
                    self.delay = FIRST_DELAY;
                    return x;
                }
                Err(e) if per_connection(&e) => continue,
                Err(e) => {
                    self.log(&e);
                    tokio::time::sleep(self.delay).await;
                    self.delay = (self.delay * 2).min(MAX_DELAY);
                }
            }
        }
    }

    fn log(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < LOG_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        warn!(listener = self.name, error = %e, suppressed = self.suppressed, backoff_ms = self.delay.as_millis() as u64,
            "accept failed (out of file descriptors?); backing off");
        self.last_log = Some(now);
        self.suppressed = 0;
    }
}

/// Errors about one pending connection, not the listener.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Default for [`IdleTimeout`] on the gRPC and ops ports.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection that is closed (reads fail with `TimedOut`) once nothing
/// has arrived from the peer for `idle`: one that never sends a byte, or
/// stops part-way through a request head or an HTTP/2 preface. A live
/// HTTP/2 peer answers the server's keepalive PINGs, so it is never idle
/// for long. The timer is one boxed `Sleep` per connection, reset as bytes
/// arrive.
pub struct IdleTimeout<T> {
    inner: T,
    idle: std::time::Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, idle: std::time::Duration) -> IdleTimeout<T> {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let at = tokio::time::Instant::now() + this.idle;
                    this.deadline.as_mut().reset(at);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing received for {} ms", this.idle.as_millis()),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for IdleTimeout<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod idle_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let mut s = IdleTimeout::new(s, std::time::Duration::from_millis(200));
        let mut buf = [0u8; 8];
        // Bytes every 100 ms keep it open past the idle time.
        for _ in 0..4 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            c.write_all(b"x").await.unwrap();
            assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        }
        let started = std::time::Instant::now();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    }
}
