//! Admission limits and per-session rate limits.

use gg_proto::ErrorCode;
use gg_proto::frame::Kind;

use crate::support::*;

#[tokio::test]
async fn per_ip_connection_limit() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ max_connections_per_ip: 2 }}\n",
        one_service(b.addr)
    ))
    .await;
    let ip1 = "127.0.0.1".parse().expect("ip");
    let mut held = Vec::new();
    for u in 0..2 {
        let mut c = Client::tcp_from(gw.client, ip1).await;
        c.hello(u, 0).await;
        held.push(c);
    }
    // The third connection from the same IP is closed before any byte is read.
    let mut third = Client::tcp_from(gw.client, ip1).await;
    third.expect_eof(WAIT).await;
    gw.wait_metric(
        "gg_rejections_total{reason=\"max_connections_per_ip\"}",
        |v| v >= 1.0,
    )
    .await;

    // Another source address is not affected.
    let mut other = Client::tcp_from(gw.client, "127.0.0.2".parse().expect("ip")).await;
    other.hello(9, 0).await;
    assert_eq!(other.call_text(1, 1, "hi").await, "hi");

    // Releasing a connection frees its place.
    drop(held.pop());
    gw.wait_metric("gg_connections_active{protocol=\"tcp\"}", |v| v == 2.0)
        .await;
    let mut again = Client::tcp_from(gw.client, ip1).await;
    again.hello(3, 0).await;
}

#[tokio::test]
async fn per_ip_connection_rate_limit() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ conn_rate_per_ip: 1, conn_burst_per_ip: 3 }}\n",
        one_service(b.addr)
    ))
    .await;
    let ip = "127.0.0.4".parse().expect("ip");
    // Three connect-and-close rounds use the burst; closing gives nothing back.
    for u in 0..3 {
        let mut c = Client::tcp_from(gw.client, ip).await;
        c.hello(u, 0).await;
    }
    let mut fourth = Client::tcp_from(gw.client, ip).await;
    fourth.expect_eof(WAIT).await;
    gw.wait_metric("gg_rejections_total{reason=\"conn_rate_per_ip\"}", |v| {
        v >= 1.0
    })
    .await;
    // Another address has its own bucket.
    let mut other = Client::tcp_from(gw.client, "127.0.0.5".parse().expect("ip")).await;
    other.hello(9, 0).await;
}

#[tokio::test]
async fn global_connection_limit() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ max_connections: 1 }}\n",
        one_service(b.addr)
    ))
    .await;
    let mut first = Client::tcp(gw.client).await;
    first.hello(1, 0).await;
    let mut second = Client::tcp_from(gw.client, "127.0.0.3".parse().expect("ip")).await;
    second.expect_eof(WAIT).await;
    gw.wait_metric("gg_rejections_total{reason=\"max_connections\"}", |v| {
        v >= 1.0
    })
    .await;
}

#[tokio::test]
async fn message_rate_limit_answers_rate_limited() {
    let b = backend("b1").await;
    let gw = gateway(&format!(
        "{}limits: {{ msg_rate_per_sec: 1, msg_burst: 2 }}\n",
        one_service(b.addr)
    ))
    .await;
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    assert_eq!(c.call_text(1, 1, "a").await, "a");
    assert_eq!(c.call_text(1, 2, "b").await, "b");
    let f = c.call(1, 3, b"c").await;
    assert_eq!(f.header.kind(), Some(Kind::Error));
    assert_eq!(error_of(&f).code, ErrorCode::RateLimited.code());
    gw.wait_metric("gg_rejections_total{reason=\"msg_rate\"}", |v| v >= 1.0)
        .await;
}
