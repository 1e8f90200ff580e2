//! `sample-backend`: a complete backend for Game Gateway, built on the
//! `gg-backend` kit. Copy it as the starting point for a real service.
//!
//! What a backend must do (the kit does all of it; the handler below only
//! answers DATA):
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
//! - `join:ROOM` / `leave:ROOM` → puts the session into / out of a room, replies `joined` / `left`
//! - `publish:ROOM:TEXT` → publishes TEXT to the room (with the request's service_type), replies `published`
//! - anything else      → echoed back unchanged

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use gg_backend::{Close, CloseCode, ErrorCode, Handler, Open, Request, Server, Session, Sessions};
use parking_lot::Mutex;

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
    #[arg(long, default_value_t = gg_proto::frame::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: u32,
}

struct Sample {
    name: String,
    /// DATA frames per session, kept across moves (resume).
    counts: Mutex<HashMap<u64, u64>>,
    sessions: OnceLock<Sessions>,
}

impl Handler for Sample {
    async fn on_open(&self, session: &Session, _open: &Open) {
        self.counts.lock().entry(session.id()).or_insert(0);
    }

    async fn on_data(&self, session: &Session, req: Request) {
        let count = {
            let mut counts = self.counts.lock();
            let c = counts.entry(session.id()).or_insert(0);
            *c += 1;
            *c
        };
        // A reply that cannot be queued is lost like one to a vanished
        // player: the gateway tells the client, nothing to do here.
        let payload = req.payload().clone();
        let text = std::str::from_utf8(&payload).unwrap_or("");
        let _ = match text {
            "whoami" => req.reply(self.name.clone()),
            "trace" => req.reply(session.open().traceparent.unwrap_or_else(|| "-".into())),
            "count" => req.reply(count.to_string()),
            "error" => req.error(ErrorCode::Internal, "sample error"),
            "sessions" => {
                let n = self.sessions.get().map_or(0, Sessions::connected);
                req.reply(n.to_string())
            }
            _ => self.command(session, req, text).await,
        };
    }

    async fn on_close(&self, session: &Session, _close: &Close) {
        self.counts.lock().remove(&session.id());
    }
}

impl Sample {
    /// The commands with arguments; anything else is echoed.
    async fn command(
        &self,
        session: &Session,
        req: Request,
        text: &str,
    ) -> Result<(), gg_backend::SendError> {
        let num = |s: &str| s.parse::<u64>().unwrap_or(0).min(60_000);
        if let Some(room) = text.strip_prefix("join:") {
            match session.join(room) {
                Ok(()) => req.reply("joined"),
                Err(e) => req.error(ErrorCode::BadPayload, &e.to_string()),
            }
        } else if let Some(room) = text.strip_prefix("leave:") {
            match session.leave(room) {
                Ok(()) => req.reply("left"),
                Err(e) => req.error(ErrorCode::BadPayload, &e.to_string()),
            }
        } else if let Some(spec) = text.strip_prefix("publish:") {
            let (room, body) = spec.split_once(':').unwrap_or((spec, ""));
            match session.publish(room, req.header().service_type, body.as_bytes()) {
                Ok(()) => req.reply("published"),
                Err(e) => req.error(ErrorCode::BadPayload, &e.to_string()),
            }
        } else if let Some(reason) = text.strip_prefix("kick") {
            let reason = reason
                .strip_prefix(':')
                .unwrap_or("kicked by sample backend");
            session.close(CloseCode::Kicked, reason)
        } else if let Some(spec) = text.strip_prefix("flood:") {
            let mut it = spec.split(':').map(|x| x.parse::<usize>().unwrap_or(0));
            let n = it.next().unwrap_or(0).min(1_000_000);
            let body = Bytes::from(vec![b'x'; it.next().unwrap_or(0).min(1 << 20)]);
            for _ in 0..n {
                req.reply_wait(body.clone()).await?;
            }
            Ok(())
        } else if let Some(ms) = text.strip_prefix("sleep:") {
            let ms = num(ms);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let _ = req.reply("slept");
            });
            Ok(())
        } else if let Some(ms) = text.strip_prefix("stall:") {
            // Handlers run in the connection's read loop: waiting here
            // stops reading this gateway connection.
            let r = req.reply("stalled");
            tokio::time::sleep(Duration::from_millis(num(ms))).await;
            r
        } else {
            req.reply(req.payload().clone())
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    // Machine-readable: scripts and tests parse this line.
    println!("listening {}", listener.local_addr()?);
    let server = Server::new(Sample {
        name: args.name,
        counts: Mutex::default(),
        sessions: OnceLock::new(),
    })
    .max_frame_bytes(args.max_frame_bytes);
    let _ = server.handler().sessions.set(server.sessions());
    server.serve(listener).await
}
