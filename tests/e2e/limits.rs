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

/// Standalone IP lists: the config's and its file's blocks are refused at
/// accept (counted by reason); SIGHUP reloads the file, closing open
/// sessions the new lists refuse; a bad file at SIGHUP keeps the lists,
/// and a bad file at start is a config error.
#[tokio::test]
async fn ip_lists_from_the_config_and_a_file_reloaded_on_sighup() {
    let b = backend("b1").await;
    let file = scratch("ips", "txt");
    std::fs::write(&file, "# abuse\ndeny 127.0.0.5\n").expect("write");
    let gw = gateway(&format!(
        "{}ip_lists:\n  deny: [127.0.0.4/32]\n  file: {}\n",
        one_service(b.addr),
        file.display()
    ))
    .await;
    assert!(refused_from(gw.client, "127.0.0.4").await);
    assert!(refused_from(gw.client, "127.0.0.5").await);
    assert!(!refused_from(gw.client, "127.0.0.6").await);
    assert_eq!(
        gw.metric("gg_rejections_total{reason=\"ip_denied\"}").await,
        2.0
    );
    let mut open = Client::tcp_from(gw.client, "127.0.0.6".parse().expect("ip")).await;
    open.hello(6, 0).await;

    // Only the office may connect now: 127.0.0.6 is refused and its open
    // session closed 3505; 127.0.0.1 still works.
    std::fs::write(&file, "allow 127.0.0.1\n").expect("write");
    gw.proc.signal("HUP");
    assert_eq!(open.expect_close().await.code, 3505);
    assert!(refused_from(gw.client, "127.0.0.6").await);
    assert!(
        gw.metric("gg_rejections_total{reason=\"ip_not_allowed\"}")
            .await
            >= 1.0
    );
    let mut c = Client::tcp(gw.client).await;
    c.hello(1, 0).await;
    assert_eq!(c.call_text(1, 1, "ok").await, "ok");

    // A broken file: the lists in force stay.
    std::fs::write(&file, "allow 127.0.0.1\nallow 300.1.1.1\n").expect("write");
    gw.proc.signal("HUP");
    eventually("the failed reload is logged", || {
        std::future::ready(gw.proc.log_text().contains("ip_lists reload failed"))
    })
    .await;
    assert!(refused_from(gw.client, "127.0.0.6").await);
    assert!(!refused_from(gw.client, "127.0.0.1").await);

    // At start it is a config error naming the line's block.
    let (code, err) = run_to_exit(
        "gateway",
        &format!(
            "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\n{}ip_lists: {{ file: {} }}\n",
            one_service(b.addr),
            file.display()
        ),
        &["--check"],
    )
    .await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("300.1.1.1"), "{err}");
}
