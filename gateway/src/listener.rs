//! The client port: accept → admission limits → protocol sniffing → hand the
//! connection to the TCP session task or the HTTP server (which upgrades
//! WebSocket requests into sessions and serves one-shot calls).

pub(crate) mod http;
pub(crate) mod prefixed;
pub(crate) mod proxy;
pub(crate) mod sniff;
pub(crate) mod sse;
pub(crate) mod wsdeflate;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Gateway;
use crate::error::Reject;
use crate::limits::ConnGuard;
use crate::metrics::Protocol;
use crate::session::hello::{Admission, start};
use crate::session::io::ClientIo;
use sniff::Sniffed;

pub(crate) use gg_runtime::listener::bind;

/// Accepts client connections until `shutdown` is cancelled. Each admitted
/// connection runs in its own tracked task.
pub(crate) async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    // EMFILE and friends back off instead of spinning.
    let mut acceptor = gg_runtime::listener::Acceptor::new("client");
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            x = acceptor.accept(&listener) => x,
        };
        if gw.cfg.proxy_trusted.iter().any(|c| c.contains(remote.ip())) {
            // The player's address (and so the admission decision) comes
            // with the PROXY header.
            let g = gw.clone();
            gw.workers
                .spawn_conn(&gw.life.tracker, stream, move |s, placed| {
                    proxied(g, s, remote, placed)
                });
            continue;
        }
        let Some(mut guard) = admit(&gw, remote) else {
            drop(stream);
            continue;
        };
        let g = gw.clone();
        gw.workers
            .spawn_conn(&gw.life.tracker, stream, move |s, placed| {
                guard.place(placed);
                handle_conn(g, s, remote, guard, bytes::BytesMut::new())
            });
    }
}

/// The IP lists and admission limits for `remote`; refused connections are
/// counted and closed before any byte is read (the client should back off
/// and retry).
fn admit(gw: &Gateway, remote: SocketAddr) -> Option<ConnGuard> {
    if let Err(refused) = gw.ip_admitted(remote.ip()) {
        gw.metrics.reject(refused);
        debug!(%remote, reason = refused.label(), "connection refused by an IP list");
        return None;
    }
    match gw.clients.limits.try_acquire(remote.ip()) {
        Ok(g) => Some(g),
        Err(refused) => {
            gw.metrics.reject(refused);
            debug!(%remote, reason = refused.label(), "connection refused by limit");
            None
        }
    }
}

/// A connection from a trusted load balancer: the PROXY header first
/// (within the sniff timeout), then admission for the player's address.
async fn proxied(
    gw: Arc<Gateway>,
    mut stream: TcpStream,
    peer: SocketAddr,
    placed: crate::workers::Placed,
) {
    let (player, rest) = match proxy::read_header(&mut stream, gw.cfg.limits.sniff_timeout).await {
        Ok(x) => x,
        Err(reason) => {
            gw.metrics.reject(reason);
            debug!(%peer, reason = reason.label(), "no valid PROXY header from a trusted source");
            return;
        }
    };
    let remote = player.unwrap_or(peer);
    if let Some(mut guard) = admit(&gw, remote) {
        guard.place(placed);
        handle_conn(gw, stream, remote, guard, rest).await;
    }
}

/// `first`: bytes already read after a PROXY header (sniffed from them).
async fn handle_conn(
    gw: Arc<Gateway>,
    stream: TcpStream,
    remote: SocketAddr,
    guard: ConnGuard,
    first: bytes::BytesMut,
) {
    let _ = stream.set_nodelay(true);
    let sniffed = if first.is_empty() {
        sniff::sniff(stream, gw.cfg.limits.sniff_timeout).await
    } else {
        Ok((stream, sniff::classify(&first), first))
    };
    let (stream, sniffed, prefix) = match sniffed {
        Ok(x) => x,
        Err(reason) => {
            gw.metrics.reject(reason);
            debug!(%remote, reason = reason.label(), "connection dropped during protocol detection");
            return;
        }
    };
    match sniffed {
        Sniffed::Frames => frames(gw, ClientIo::tcp(stream, prefix), remote, guard).await,
        Sniffed::Http => {
            let io = prefixed::PrefixedIo::new(prefix, stream);
            http::serve_conn(gw, io, remote, false, guard).await;
        }
        Sniffed::Tls => match gw.clients.tls.load_full() {
            Some(server) => tls_conn(gw, stream, prefix, remote, guard, server).await,
            None => {
                gw.metrics.reject(Reject::TlsNotEnabled);
                debug!(%remote, "TLS client hello on a plaintext port; closed");
            }
        },
    }
}

/// A frame session (plain or TLS): counted as protocol `tcp`.
async fn frames(gw: Arc<Gateway>, io: ClientIo, remote: SocketAddr, guard: ConnGuard) {
    let pm = gw.metrics.proto(Protocol::Tcp);
    pm.connections.inc();
    pm.active.inc();
    let admission = Admission {
        _guard: Some(guard),
        active: pm.active.clone(),
    };
    start(gw.clone(), io, remote, Protocol::Tcp, admission).await;
}

/// TLS on the client port: handshake (the sniffed bytes are its first
/// bytes), then sniff again inside TLS — frames or HTTP/WebSocket, exactly
/// as in plaintext.
async fn tls_conn(
    gw: Arc<Gateway>,
    stream: TcpStream,
    prefix: bytes::BytesMut,
    remote: SocketAddr,
    guard: ConnGuard,
    server: Arc<rustls::ServerConfig>,
) {
    let limit = gw.cfg.limits.sniff_timeout;
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let io = prefixed::PrefixedIo::new(prefix, stream);
    let tls = match tokio::time::timeout(limit, acceptor.accept(io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            gw.metrics.reject(Reject::TlsHandshake);
            debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            gw.metrics.reject(Reject::TlsHandshake);
            debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    let (tls, sniffed, first) = match sniff::sniff(tls, limit).await {
        Ok(x) => x,
        Err(reason) => {
            gw.metrics.reject(reason);
            return;
        }
    };
    match sniffed {
        Sniffed::Frames => frames(gw, ClientIo::tls(tls, first), remote, guard).await,
        Sniffed::Http => {
            http::serve_conn(
                gw,
                prefixed::PrefixedIo::new(first, tls),
                remote,
                true,
                guard,
            )
            .await
        }
        Sniffed::Tls => {
            gw.metrics.reject(Reject::TlsInTls);
            debug!(%remote, "TLS inside TLS; closed");
        }
    }
}
