//! A WebSocket echo server speaking the backend protocol, the backend the
//! WebSocket comparison puts behind nginx and HAProxy (`bench/paths`): each
//! binary message holds one frame; DATA is sent back as it came, HELLO and
//! OPEN are taken silently. One thread, like `sample-backend`.
//!
//!   wsecho --listen 127.0.0.1:9100

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use gg_proto::frame::{Header, Kind};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: std::net::SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args.listen))
}

async fn serve(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("wsecho listening on {}", listener.local_addr()?);
    loop {
        let (s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                return;
            };
            // Echo everything the socket has ready, then flush once.
            while let Some(Ok(m)) = ws.next().await {
                let mut next = Some(m);
                while let Some(m) = next.take() {
                    if let Message::Binary(b) = m
                        && Header::peek(&b).is_some_and(|h| h.kind() == Some(Kind::Data))
                        && ws.feed(Message::Binary(b)).await.is_err()
                    {
                        return;
                    }
                    next = match futures_util::FutureExt::now_or_never(ws.next()) {
                        Some(Some(Ok(m))) => Some(m),
                        _ => None,
                    };
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
        });
    }
}
