//! PROXY protocol v1 and v2 on the client port: a connection from a
//! trusted load balancer starts with a header naming the player's address,
//! which then counts for the per-address limits, the logs, the admin API
//! and the session directory. Only sources in `proxy_protocol.trusted` may
//! send one (and must); from anyone else a header is not honoured.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::error::Reject;

/// Longest header read: v1 is at most 107 bytes; v2 is 16 plus addresses
/// and TLVs, which load balancers keep small.
const MAX_HEADER: usize = 1024;

pub(crate) use gg_proto::ip::Cidr;

/// Reads the header within `timeout`. Returns the client's address (`None`
/// for a LOCAL / UNKNOWN header, e.g. a load balancer's health check: keep
/// the peer's) and whatever followed the header (the client's first bytes).
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<(Option<SocketAddr>, BytesMut), Reject> {
    let mut buf = BytesMut::with_capacity(256);
    let read = async {
        loop {
            if buf.len() >= MAX_HEADER {
                return Err(Reject::ProxyHeader);
            }
            let n = stream
                .read_buf(&mut buf)
                .await
                .map_err(|_| Reject::ClosedBeforeData)?;
            if n == 0 {
                return Err(Reject::ClosedBeforeData);
            }
            if let Some(r) = parse(&buf) {
                return r;
            }
        }
    };
    let (addr, len) = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Reject::SniffTimeout)??;
    let rest = buf.split_off(len);
    Ok((addr, rest))
}

/// `None` while the header is incomplete; else the address and its length.
pub(crate) fn parse(buf: &[u8]) -> Option<Result<(Option<SocketAddr>, usize), Reject>> {
    let r = HeaderResult::parse(buf);
    if r.is_incomplete() {
        return None;
    }
    Some(match r {
        HeaderResult::V1(Ok(h)) => {
            let addr = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Ok((addr, h.header.len()))
        }
        HeaderResult::V2(Ok(h)) => {
            let addr = match h.addresses {
                ppp::v2::Addresses::IPv4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v2::Addresses::IPv6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Ok((addr, h.len()))
        }
        _ => Err(Reject::ProxyHeader),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()), "v4-mapped");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn v1_and_v2_headers() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 7000\r\nHELLO";
        let (addr, len) = parse(v1).unwrap().unwrap();
        assert_eq!(addr, Some("203.0.113.7:40000".parse().unwrap()));
        assert_eq!(&v1[len..], b"HELLO");
        assert!(parse(b"PROXY TCP4 203.0.113.7").is_none(), "incomplete");
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(unknown).unwrap().unwrap(), (None, unknown.len()));
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x9c, 0x40, 0x1b, 0x58,
        ]);
        v2.extend_from_slice(b"rest");
        let (addr, len) = parse(&v2).unwrap().unwrap();
        assert_eq!(addr, Some("198.51.100.9:40000".parse().unwrap()));
        assert_eq!(&v2[len..], b"rest");
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Some(Err(Reject::ProxyHeader))
        );
    }
}
