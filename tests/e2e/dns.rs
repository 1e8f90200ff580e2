//! A tiny DNS responder on loopback that tests control (A records only).
#![allow(dead_code)] // shared by two test binaries; each uses a part

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::net::UdpSocket;

/// Answers A queries with `answers` (no AAAA records), or SERVFAIL while
/// `fail` is set.
pub struct Dns {
    pub addr: SocketAddr,
    answers: Arc<Mutex<Vec<Ipv4Addr>>>,
    pub fail: Arc<AtomicBool>,
}

impl Dns {
    pub async fn start(answers: &[Ipv4Addr]) -> Dns {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = sock.local_addr().expect("addr");
        let answers = Arc::new(Mutex::new(answers.to_vec()));
        let fail = Arc::new(AtomicBool::new(false));
        let (a, f) = (answers.clone(), fail.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let ips = a.lock().clone();
                if let Some(reply) = answer(&buf[..n], &ips, f.load(Ordering::Relaxed)) {
                    let _ = sock.send_to(&reply, peer).await;
                }
            }
        });
        Dns {
            addr,
            answers,
            fail,
        }
    }

    pub fn set(&self, answers: &[Ipv4Addr]) {
        *self.answers.lock() = answers.to_vec();
    }
}

/// A response to the first question of `q` (RFC 1035 layout).
fn answer(q: &[u8], ips: &[Ipv4Addr], fail: bool) -> Option<Vec<u8>> {
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + usize::from(q[i]);
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let question = &q[12..i + 5];
    let ips: &[Ipv4Addr] = if qtype == 1 && !fail { ips } else { &[] };
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[..2]);
    r.extend_from_slice(if fail { &[0x81, 0x82] } else { &[0x81, 0x80] });
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for ip in ips {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}
