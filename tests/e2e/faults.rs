//! Fault injection at process level (loopback, bounded): a gateway holding
//! many sessions is killed and another absorbs the reconnect storm within
//! its admission limits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support::*;

/// Connects from `src` and says HELLO until a WELCOME comes back, backing
/// off while the gateway refuses (admission limits close at accept).
async fn connect_until_welcome(addr: SocketAddr, src: IpAddr, user: u64, until: Instant) -> Client {
    let mut delay = Duration::from_millis(20);
    loop {
        assert!(Instant::now() < until, "user {user} never got back in");
        let mut c = Client::tcp_from(addr, src).await;
        c.send_hello(user, serde_json::json!({})).await;
        if let Some(Got::Frame(f)) = c.next(Duration::from_secs(5)).await
            && f.header.kind() == Some(gg_proto::frame::Kind::Welcome)
        {
            return c;
        }
        tokio::time::sleep(delay + Duration::from_millis(fastrand_ms(delay))).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Jitter in [0, d), without a dependency.
fn fastrand_ms(d: Duration) -> u64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    u64::from(n) % (d.as_millis() as u64).max(1)
}

#[tokio::test]
async fn a_killed_gateways_sessions_reconnect_to_another_within_its_limits() {
    const IPS: u8 = 15;
    const PER_IP: u64 = 100;
    let b = backend("b1").await;
    let relaxed = "limits: { max_connections_per_ip: 1000, conn_rate_per_ip: 100000, conn_burst_per_ip: 100000 }\n";
    let mut a = gateway_named("gw-a", &format!("{}{relaxed}", one_service(b.addr))).await;
    let other = gateway_named(
        "gw-b",
        &format!(
            "{}limits: {{ max_connections_per_ip: 1000, conn_rate_per_ip: 50, conn_burst_per_ip: 50 }}\n",
            one_service(b.addr)
        ),
    )
    .await;
    let src = |i: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i));
    let mut held = Vec::new();
    for i in 0..IPS {
        for k in 0..PER_IP {
            let mut c = Client::tcp_from(a.client, src(i)).await;
            c.hello(u64::from(i) * 1000 + k + 1, 0).await;
            held.push(c);
        }
    }
    let total = held.len() as f64;
    a.wait_metric("gg_sessions_active", |v| v == total).await;
    a.proc.signal("KILL");
    assert_eq!(
        a.proc.wait_exit(Duration::from_secs(5)).await,
        None,
        "killed by a signal"
    );
    drop(held);

    // Every client comes back at once, to the other gateway.
    let started = Instant::now();
    let until = started + Duration::from_secs(60);
    let addr = other.client;
    let tasks: Vec<_> = (0..IPS)
        .flat_map(|i| (0..PER_IP).map(move |k| (i, k)))
        .map(|(i, k)| {
            tokio::spawn(connect_until_welcome(
                addr,
                src(i),
                u64::from(i) * 1000 + k + 1,
                until,
            ))
        })
        .collect();
    let mut back = Vec::new();
    for t in tasks {
        back.push(t.await.expect("reconnect task"));
    }
    eprintln!(
        "{} sessions back on gw-b after {:?}",
        back.len(),
        started.elapsed()
    );
    other
        .wait_metric("gg_sessions_active", |v| v == total)
        .await;
    // The storm was shaped by admission, not absorbed blindly.
    assert!(
        other
            .metric("gg_rejections_total{reason=\"conn_rate_per_ip\"}")
            .await
            > 0.0
    );
    assert_eq!(back[0].call_text(1, 1, "alive").await, "alive");
}
