//! Accepting gateway connections and running the protocol on each.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gg_proto::control::{BackendHello, Close, Open};
use gg_proto::frame::{self, Kind};
use gg_proto::{ErrorCode, Frame, control};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::session::{Link, Request, Session, Table};

/// What a game service does with its players' traffic. Only
/// [`Handler::on_data`] is required.
pub trait Handler: Send + Sync + 'static {
    /// A gateway connected (its HELLO).
    fn on_gateway(&self, gateway_id: &str) {
        let _ = gateway_id;
    }

    /// A session is bound to this backend: a new one, or the same one
    /// again (`open.resumed`, or re-opened after a lost connection) — the
    /// [`Session`] handle is then the one you already hold.
    fn on_open(&self, session: &Session, open: &Open) -> impl Future<Output = ()> + Send {
        let _ = (session, open);
        async {}
    }

    /// A DATA frame from the player.
    fn on_data(&self, session: &Session, request: Request) -> impl Future<Output = ()> + Send;

    /// The session ended (the player left, was kicked, timed out, or moved
    /// away and did not come back within the detached TTL). Runs once.
    fn on_close(&self, session: &Session, close: &Close) -> impl Future<Output = ()> + Send {
        let _ = (session, close);
        async {}
    }
}

/// Serves gateway connections with one [`Handler`].
pub struct Server<H> {
    handler: Arc<H>,
    sessions: Arc<Table>,
    max_frame_bytes: u32,
    idle_timeout: Duration,
    detached_ttl: Duration,
    queue: usize,
}

impl<H: Handler> Server<H> {
    pub fn new(handler: H) -> Server<H> {
        Server {
            handler: Arc::new(handler),
            sessions: Arc::default(),
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            idle_timeout: Duration::from_secs(30),
            detached_ttl: Duration::from_secs(60),
            queue: 1024,
        }
    }

    /// Largest frame accepted from a gateway (default 1 MiB, as the
    /// gateway's). A longer one closes that connection.
    pub fn max_frame_bytes(mut self, n: u32) -> Self {
        self.max_frame_bytes = n;
        self
    }

    /// A connection nothing arrives on for this long is closed (default
    /// 30 s; gateways PING every `backend.ping_interval_ms`, 5 s).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// How long a session that moved, or whose connection was lost, waits
    /// for its next OPEN before it ends (default 60 s).
    pub fn detached_ttl(mut self, d: Duration) -> Self {
        self.detached_ttl = d;
        self
    }

    /// Frames queued per gateway connection; beyond it pushes fail with
    /// [`crate::SendError::Overloaded`] (default 1024).
    pub fn queue(mut self, n: usize) -> Self {
        self.queue = n.max(1);
        self
    }

    /// The sessions of this server, to look up or count from anywhere
    /// (a handler can keep this handle too).
    pub fn sessions(&self) -> Sessions {
        Sessions(self.sessions.clone())
    }

    /// The handler, e.g. to hand it [`Server::sessions`] before serving.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Accepts gateway connections until the listener fails for good.
    /// Running out of file descriptors backs off instead of spinning.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        let me = Arc::new(self);
        let ids = AtomicU64::new(1);
        let sweeper = tokio::spawn(sweep(me.clone()));
        let res = loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let conn = ids.fetch_add(1, Ordering::Relaxed);
                    let me = me.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.connection(stream, conn).await {
                            warn!(%peer, error = %e, "gateway connection ended");
                        }
                    });
                }
                Err(e) if is_transient(&e) => {
                    warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => break Err(e),
            }
        };
        sweeper.abort();
        res
    }

    async fn connection(&self, stream: TcpStream, conn: u64) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(self.queue);
        // One writer per connection: everything queued goes out in one write.
        let writer = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(16 * 1024);
            while let Some(f) = rx.recv().await {
                buf.extend_from_slice(&f);
                while buf.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => buf.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                wr.write_all(&buf).await?;
                buf.clear();
            }
            Ok::<_, io::Error>(())
        });
        let res = self.read_loop(&mut rd, conn, &tx).await;
        self.sessions.detach_conn(conn);
        drop(tx);
        writer.abort();
        res
    }

    async fn read_loop(
        &self,
        rd: &mut (impl tokio::io::AsyncRead + Unpin),
        conn: u64,
        tx: &mpsc::Sender<Bytes>,
    ) -> io::Result<()> {
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        let mut gateway: Option<Arc<str>> = None;
        loop {
            let n = tokio::time::timeout(self.idle_timeout, rd.read_buf(&mut rbuf))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing from the gateway for {:?}", self.idle_timeout),
                    )
                })??;
            if n == 0 {
                return Ok(());
            }
            loop {
                let f = match frame::decode(&mut rbuf, self.max_frame_bytes) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) if e.stream_in_sync() => {
                        debug!(error = %e, "skipping a frame this backend does not understand");
                        continue;
                    }
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                };
                let Some(gw) = &gateway else {
                    let hello = (f.header.kind() == Some(Kind::Hello))
                        .then(|| f.json::<BackendHello>().ok())
                        .flatten()
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                "the first frame was not HELLO",
                            )
                        })?;
                    info!(gateway = %hello.gateway_id, "gateway connected");
                    self.handler.on_gateway(&hello.gateway_id);
                    gateway = Some(hello.gateway_id.into());
                    continue;
                };
                self.frame(f, conn, gw, tx).await;
            }
        }
    }

    async fn frame(&self, f: Frame, conn: u64, gw: &Arc<str>, tx: &mpsc::Sender<Bytes>) {
        let h = f.header;
        match h.kind() {
            Some(Kind::Open) => {
                let open = f.json::<Open>().unwrap_or(Open {
                    protocol: String::new(),
                    remote_addr: String::new(),
                    resumed: false,
                    traceparent: None,
                });
                let link = Link {
                    conn,
                    tx: tx.clone(),
                    gateway_id: gw.clone(),
                };
                let session = self.sessions.open(&h, open.clone(), link);
                self.handler.on_open(&session, &open).await;
            }
            Some(Kind::Close) => {
                let close = f.json::<Close>().unwrap_or(Close {
                    code: gg_proto::CloseCode::Normal.code(),
                    reason: String::new(),
                });
                if let Some(s) = self.sessions.close(h.session_id, conn, close.clone()) {
                    self.handler.on_close(&s, &close).await;
                }
            }
            Some(Kind::Data) => match self.sessions.get(h.session_id) {
                Some(s) => {
                    let req = Request::new(s.clone(), h, f.payload);
                    self.handler.on_data(&s, req).await;
                }
                None => {
                    let e = control::error_frame(
                        &h,
                        ErrorCode::BadState,
                        "session not open on this backend",
                    );
                    let _ = tx.try_send(e.to_bytes());
                }
            },
            Some(Kind::Ping) => {
                let mut pong = h;
                pong.kind = Kind::Pong as u8;
                let _ = tx.try_send(Frame::new(pong, Bytes::new()).to_bytes());
            }
            _ => {}
        }
    }
}

/// A handle on a server's sessions.
#[derive(Clone)]
pub struct Sessions(Arc<Table>);

impl Sessions {
    /// Sessions connected now (not counting those between gateways).
    pub fn connected(&self) -> usize {
        self.0.connected()
    }

    /// A session by id, if this backend holds it.
    pub fn get(&self, id: u64) -> Option<Session> {
        self.0.get(id)
    }
}

/// Ends sessions that stayed detached past the TTL.
async fn sweep<H: Handler>(me: Arc<Server<H>>) {
    let every = (me.detached_ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::time::sleep(every).await;
        for (s, close) in me.sessions.expire(me.detached_ttl) {
            me.handler.on_close(&s, &close).await;
        }
    }
}

/// Accept errors worth retrying: out of descriptors or memory, or a
/// connection that died in the backlog.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105))
}
