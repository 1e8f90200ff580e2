//! DNS discovery: a `dns://name:port` endpoint follows the answers of a
//! DNS server the test controls (a tiny UDP responder on loopback).

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::dns::Dns;
use crate::support::*;

async fn whoami(gw: &Gw) -> String {
    let (code, body) = http(gw.client, "POST", "/v1/call/echo", &[], b"whoami").await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test]
async fn dns_endpoints_follow_the_answers() {
    let (a_ip, b_ip) = (Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12));
    let port = std::net::TcpListener::bind((a_ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let _a = backend_at("a", &format!("{a_ip}:{port}")).await;
    let _b = backend_at("b", &format!("{b_ip}:{port}")).await;
    let dns = Dns::start(&[a_ip]).await;
    let gw = gateway(&format!(
        "services:\n  - {{ name: echo, id: 1, strategy: round_robin, endpoints: [\"dns://backends.test:{port}\"] }}\ndiscovery: {{ nameservers: [\"{}\"], interval_ms: 200, timeout_ms: 500 }}\n",
        dns.addr
    ))
    .await;
    let gauge = format!("gg_discovery_addresses{{endpoint=\"dns://backends.test:{port}\"}}");
    gw.wait_metric(&gauge, |n| n == 1.0).await;
    assert_eq!(whoami(&gw).await, "a");

    // Scaled up: the new address takes calls, no rule changed.
    dns.set(&[a_ip, b_ip]);
    gw.wait_metric(&gauge, |n| n == 2.0).await;
    let deadline = Instant::now() + WAIT;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "only {seen:?} answered");
        seen.insert(whoami(&gw).await);
    }

    // Scaled down: the address that went away is retired, a streaming
    // session bound to it moves, and everything goes to the one left.
    let mut s = Client::tcp(gw.client).await;
    s.hello(9, 0).await;
    let _ = s.call_text(1, 1, "whoami").await;
    dns.set(&[b_ip]);
    gw.wait_metric(&gauge, |n| n == 1.0).await;
    let gone = format!("gg_backend_connections{{endpoint=\"{a_ip}:{port}\"}}");
    eventually("the old address is retired", || async {
        let m = gw.metrics().await;
        !m.lines()
            .any(|l| l.starts_with(&gone) && !l.ends_with(" 0"))
    })
    .await;
    for _ in 0..4 {
        assert_eq!(whoami(&gw).await, "b");
    }
    assert_eq!(s.call_text(1, 2, "whoami").await, "b");

    // The DNS server fails: the last answer stands.
    dns.fail.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(gw.metric(&gauge).await, 1.0);
    assert_eq!(whoami(&gw).await, "b");
    assert!(
        gw.proc
            .log_text()
            .contains("DNS lookup failed; keeping the last answer")
    );
}

#[tokio::test]
async fn invalid_discovery_config_and_dns_realms_are_refused() {
    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\ndiscovery: { nameservers: [\"resolver.local\"], interval_ms: 5 }\nrealms: { 1: \"dns://game:7000\" }\n",
        &["--check"],
    )
    .await;
    assert_eq!(code, Some(64), "{err}");
    for needle in [
        "discovery.nameservers",
        "discovery.interval_ms",
        "only for service endpoints",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}
