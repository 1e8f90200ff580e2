//! `sample-backend`: the smallest complete backend for Game Gateway, built on
//! the `gg-proto` codec. Copy it as the starting point for a real service.
//!
//! What a backend must do:
//! 1. accept TCP connections from gateways; the first frame on each is HELLO
//!    `{"gateway_id": …}`;
//! 2. track sessions: OPEN binds a session (ids in the header) to this
//!    connection, CLOSE unbinds it; many sessions share one connection;
//! 3. answer DATA on the connection it came from, with the request's
//!    `session_id` and `seq` (the gateway finds the client by session id);
//! 4. answer PING with PONG (gateways PING every pooled connection and drop
//!    connections that stay silent); send CLOSE `{code, reason}` to kick;
//! 5. keep session state across gateways: a session that moves (GOAWAY +
//!    resume) arrives as OPEN `resumed: true` from the new gateway, and the
//!    old gateway's CLOSE (reason `moved`) may come before or after it — so a
//!    CLOSE only ends the session if it comes from the connection that owns it.
//!
//! DATA commands this sample understands (UTF-8 payload):
//! - `whoami`           → replies with `--name`
//! - `count`            → replies with how many DATA frames this session sent
//! - `kick[:reason]`    → CLOSE with code 3506 (kicked)
//! - `flood:N:BYTES`    → N DATA frames of BYTES bytes each (load/slow-consumer tests)
//! - `sleep:MS`         → replies `slept` after MS milliseconds
//! - `stall:MS`         → replies `stalled`, then stops reading this gateway
//!   connection for MS milliseconds (a backend that falls behind)
//! - `sessions`         → how many sessions this backend holds open now
//! - `error`            → ERROR frame `{code: 100, message}` with the request's seq
//! - `trace`            → the W3C `traceparent` the session's OPEN carried (`-` if none)
//! - anything else      → echoed back unchanged

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use gg_proto::control::{self, BackendHello};
use gg_proto::frame::{self, Header, Kind};
use gg_proto::{CloseCode, ErrorCode, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(
    name = "sample-backend",
    about = "Echo/counter/kick sample backend for Game Gateway"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:7101")]
    listen: String,
    /// Name returned by the `whoami` command.
    #[arg(long, default_value = "backend")]
    name: String,
    /// Largest frame accepted from a gateway.
    #[arg(long, default_value_t = frame::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: u32,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen).await?;
    // Machine-readable: scripts and tests parse this line.
    println!("listening {}", listener.local_addr()?);
    let sessions: Sessions = Arc::default();
    let conn_ids = AtomicU64::new(0);
    loop {
        let (stream, peer) = listener.accept().await?;
        let name = args.name.clone();
        let max = args.max_frame_bytes;
        let sessions = sessions.clone();
        let conn = conn_ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = serve_gateway(stream, conn, sessions, name, max).await {
                eprintln!("sample-backend: gateway {peer}: {e}");
            }
        });
    }
}

/// Per-session state: which gateway connection owns it, and a counter.
struct SessionState {
    owner: u64,
    data_frames: u64,
    /// From OPEN: continue the gateway's trace in your own spans.
    traceparent: Option<String>,
    /// Set when the session moved away (CLOSE `moved`): the state waits for
    /// the resumed OPEN from the next gateway, for at most `DETACHED_TTL`.
    detached_at: Option<Instant>,
}

/// How long the state of a moved session waits for its resumed OPEN.
const DETACHED_TTL: Duration = Duration::from_secs(60);

/// Sessions of every gateway connection, by session id (ids are cluster-unique).
type Sessions = Arc<Mutex<HashMap<u64, SessionState>>>;

async fn serve_gateway(
    stream: TcpStream,
    conn: u64,
    sessions: Sessions,
    name: String,
    max: u32,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    // One writer task per connection: replies from delayed commands
    // (`sleep`) and direct replies share it, and writes are batched.
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(f) = rx.recv().await {
            buf.extend_from_slice(&f);
            while let Ok(more) = rx.try_recv() {
                buf.extend_from_slice(&more);
                if buf.len() > 256 * 1024 {
                    break;
                }
            }
            wr.write_all(&buf).await?;
            buf.clear();
        }
        Ok::<_, std::io::Error>(())
    });

    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut greeted = false;
    'read: loop {
        if rd.read_buf(&mut rbuf).await? == 0 {
            break;
        }
        loop {
            let f = match frame::decode(&mut rbuf, max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) if e.stream_in_sync() => {
                    eprintln!("sample-backend: skipping frame: {e}");
                    continue;
                }
                Err(e) => {
                    eprintln!("sample-backend: closing gateway connection: {e}");
                    break 'read;
                }
            };
            let h = f.header;
            match h.kind() {
                Some(Kind::Hello) => {
                    let hello: Result<BackendHello, _> = f.json();
                    if let Ok(hello) = hello {
                        eprintln!("sample-backend: gateway {} connected", hello.gateway_id);
                    }
                    greeted = true;
                }
                _ if !greeted => {
                    eprintln!("sample-backend: first frame was not HELLO; closing");
                    break 'read;
                }
                Some(Kind::Open) => {
                    let open = f.json::<control::Open>().ok();
                    let resumed = open.as_ref().is_some_and(|o| o.resumed);
                    let traceparent = open.and_then(|o| o.traceparent);
                    let mut map = sessions.lock().unwrap_or_else(|p| p.into_inner());
                    map.retain(|_, s| s.detached_at.is_none_or(|t| t.elapsed() < DETACHED_TTL));
                    match map.get_mut(&h.session_id) {
                        // Resumed (or re-opened after a reconnect): keep the state.
                        Some(s) if resumed => {
                            s.owner = conn;
                            s.detached_at = None;
                            s.traceparent = traceparent;
                        }
                        _ => {
                            let fresh = SessionState {
                                owner: conn,
                                data_frames: 0,
                                detached_at: None,
                                traceparent,
                            };
                            map.insert(h.session_id, fresh);
                        }
                    }
                }
                Some(Kind::Close) => {
                    let moved = f
                        .json::<control::Close>()
                        .is_ok_and(|c| c.code == CloseCode::Moved.code());
                    let mut map = sessions.lock().unwrap_or_else(|p| p.into_inner());
                    // Only the owning connection can end or detach the session:
                    // a resumed OPEN from the next gateway may already have arrived.
                    if let Some(s) = map.get_mut(&h.session_id).filter(|s| s.owner == conn) {
                        if moved {
                            s.detached_at = Some(Instant::now());
                        } else {
                            map.remove(&h.session_id);
                        }
                    }
                }
                Some(Kind::Ping) => {
                    let mut r = h;
                    r.kind = Kind::Pong as u8;
                    send(&tx, Frame::new(r, Bytes::new())).await;
                }
                Some(Kind::Data) => {
                    let state = {
                        let mut map = sessions.lock().unwrap_or_else(|p| p.into_inner());
                        map.get_mut(&h.session_id).map(|s| {
                            s.data_frames += 1;
                            (s.data_frames, s.traceparent.clone())
                        })
                    };
                    let Some((count, trace)) = state else {
                        // DATA for a session never opened here: tell the client.
                        let e = control::error_frame(
                            &h,
                            ErrorCode::BadState,
                            "session not open on this backend",
                        );
                        send(&tx, e).await;
                        continue;
                    };
                    let text = std::str::from_utf8(&f.payload).unwrap_or("");
                    if text == "sessions" {
                        let open = sessions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .values()
                            .filter(|s| s.detached_at.is_none())
                            .count();
                        send(&tx, Frame::new(h, Bytes::from(open.to_string()))).await;
                        continue;
                    }
                    if let Some(ms) = text.strip_prefix("stall:") {
                        let ms = ms.parse().unwrap_or(0u64).min(60_000);
                        send(&tx, Frame::new(h, Bytes::from_static(b"stalled"))).await;
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        continue;
                    }
                    if handle_data(&tx, &name, h, f.payload, count, trace).await {
                        sessions
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&h.session_id);
                    }
                }
                _ => {}
            }
        }
    }
    // The gateway connection is gone: so are the sessions it still owns.
    sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|_, s| s.owner != conn || s.detached_at.is_some());
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// Runs one DATA command; returns true when the session was kicked.
async fn handle_data(
    tx: &mpsc::Sender<Bytes>,
    name: &str,
    h: Header,
    payload: Bytes,
    count: u64,
    trace: Option<String>,
) -> bool {
    let reply = |body: Bytes| Frame::new(h, body);
    let text = std::str::from_utf8(&payload).unwrap_or("");
    if text == "whoami" {
        send(tx, reply(Bytes::from(name.to_string()))).await;
    } else if text == "trace" {
        let tp = trace.unwrap_or_else(|| "-".into());
        send(tx, reply(Bytes::from(tp))).await;
    } else if text == "count" {
        send(tx, reply(Bytes::from(count.to_string()))).await;
    } else if text == "error" {
        send(
            tx,
            control::error_frame(&h, ErrorCode::Internal, "sample error"),
        )
        .await;
    } else if let Some(reason) = text.strip_prefix("kick") {
        let reason = reason
            .strip_prefix(':')
            .unwrap_or("kicked by sample backend");
        send(
            tx,
            control::close_frame(h.session_id, CloseCode::Kicked, reason),
        )
        .await;
        return true;
    } else if let Some(spec) = text.strip_prefix("flood:") {
        let mut it = spec.split(':').map(|x| x.parse::<usize>().unwrap_or(0));
        let (n, size) = (
            it.next().unwrap_or(0).min(1_000_000),
            it.next().unwrap_or(0).min(1 << 20),
        );
        let body = Bytes::from(vec![b'x'; size]);
        for _ in 0..n {
            send(tx, reply(body.clone())).await;
        }
    } else if let Some(ms) = text.strip_prefix("sleep:") {
        let ms = ms.parse().unwrap_or(0u64).min(60_000);
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            send(&tx, Frame::new(h, Bytes::from_static(b"slept"))).await;
        });
    } else {
        send(tx, reply(payload)).await;
    }
    false
}

async fn send(tx: &mpsc::Sender<Bytes>, f: Frame) {
    let _ = tx.send(f.to_bytes()).await;
}
