//! Protocol detection from the first bytes, with one timed read. The bytes
//! read are returned so the chosen protocol parses them first (replay).
//!
//! The first byte is enough: a v1 frame starts with the big-endian length,
//! whose top byte is 0 for any frame under 16 MiB; TLS starts with 0x16
//! (handshake record); HTTP/1.x starts with an upper-case method token.
//! Anything else is treated as frames, which fails on the length check with
//! a clear close code rather than hanging.

use crate::error::Reject;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    Frames,
    Http,
    Tls,
}

/// Classifies already-read bytes (at least one).
pub(crate) fn classify(prefix: &[u8]) -> Sniffed {
    match prefix.first() {
        Some(0x16) => Sniffed::Tls,
        Some(b) if b.is_ascii_uppercase() => Sniffed::Http,
        _ => Sniffed::Frames,
    }
}

/// Bytes read per sniff: enough for a HELLO or a request line at once.
const SNIFF_BUF: usize = 1024;

/// Waits (up to `timeout`) for the first bytes and classifies them. Errors
/// are the metric reason: `sniff_timeout` or `closed_before_data`.
pub(crate) async fn sniff<S: AsyncRead + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> Result<(S, Sniffed, BytesMut), Reject> {
    let mut buf = BytesMut::with_capacity(SNIFF_BUF);
    match tokio::time::timeout(timeout, stream.read_buf(&mut buf)).await {
        Err(_) => Err(Reject::SniffTimeout),
        Ok(Ok(0)) | Ok(Err(_)) => Err(Reject::ClosedBeforeData),
        Ok(Ok(_)) => {
            let kind = classify(&buf);
            Ok((stream, kind, buf))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gg_proto::{Frame, Header, Kind};

    #[test]
    fn classifies_each_protocol() {
        let hello = Frame::new(Header::new(Kind::Hello), &b"{}"[..]).to_bytes();
        assert_eq!(classify(&hello), Sniffed::Frames);
        assert_eq!(classify(b"GET /v1/ws HTTP/1.1\r\n"), Sniffed::Http);
        assert_eq!(classify(b"POST /v1/call/1 HTTP/1.1\r\n"), Sniffed::Http);
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Sniffed::Tls);
        // Garbage goes to the frame path, which rejects it by length.
        assert_eq!(classify(&[0xff, 0xff]), Sniffed::Frames);
    }
}
