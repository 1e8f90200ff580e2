//! Listening sockets and accept loops that survive file-descriptor
//! exhaustion: on EMFILE / ENFILE / ENOBUFS / ENOMEM an accept loop backs
//! off (10 ms doubling to 1 s) instead of spinning a core, logs at most
//! once per 5 s with a count of what it suppressed, and accepts again as
//! soon as descriptors are free.

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
