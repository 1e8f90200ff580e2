//! Process lifecycle: config errors, ops endpoints, SIGTERM drain.

use std::time::{Duration, Instant};

use gg_proto::CloseCode;
use gg_proto::frame::Kind;

use crate::support::*;

#[tokio::test]
async fn bad_config_exits_64_and_lists_every_error() {
    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: nope\nservices:\n  - { name: a, id: 1, strategy: round_robin, endpoints: [] }\nlimits: { max_connections: 0 }\n",
        &["--gateway-id", "gw-bad"],
    )
    .await;
    assert_eq!(code, Some(64));
    for needle in [
        "ops_listen",
        "services[a]: needs at least one endpoint",
        "limits.max_connections must be greater than 0",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }

    // A value the file's types cannot hold is a parse error naming the
    // valid values.
    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nservices:\n  - { name: a, id: 1, strategy: magic, endpoints: [h:1] }\n",
        &["--gateway-id", "gw-bad"],
    )
    .await;
    assert_eq!(code, Some(64));
    assert!(err.contains("unknown variant `magic`"), "{err}");
    assert!(err.contains("consistent_hash"), "{err}");

    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nsurprise: 1\n",
        &["--gateway-id", "gw-bad"],
    )
    .await;
    assert_eq!(code, Some(64));
    assert!(err.contains("surprise"));
}

#[tokio::test]
async fn ops_health_ready_metrics() {
    let b = backend("b1").await;
    let gw = gateway(&one_service(b.addr)).await;
    assert_eq!(http(gw.ops, "GET", "/health", &[], b"").await.0, 200);
    assert_eq!(
        http(gw.ops, "GET", "/ready", &[], b"").await,
        (200, "ready\n".to_string())
    );
    let m = gw.metrics().await;
    assert_metrics_documented(&m);
    for family in [
        "gg_connections_total",
        "gg_sessions_active",
        "gg_backend_connections",
        "gg_frames_in_total",
    ] {
        assert!(m.contains(family), "missing {family}");
    }
    assert_eq!(http(gw.ops, "GET", "/nope", &[], b"").await.0, 404);
}

#[tokio::test]
async fn sigterm_sends_goaway_then_force_closes_and_exits_zero() {
    let b = backend("b1").await;
    let mut gw = gateway(&format!(
        "{}drain: {{ deadline_ms: 1500, spread_ms: 300, reconnect_after_ms: 250 }}\n",
        one_service(b.addr)
    ))
    .await;
    let mut polite = Client::tcp(gw.client).await;
    polite.hello(1, 0).await;
    let mut stubborn = Client::ws(gw.client).await;
    stubborn.hello(2, 0).await;

    let t0 = Instant::now();
    gw.proc.sigterm();

    // Readiness drops at once.
    let deadline = Instant::now() + WAIT;
    loop {
        let (st, body) = http(gw.ops, "GET", "/ready", &[], b"").await;
        if st == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/ready never went 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The listener is closed before readiness drops: new connections are
    // refused by the kernel, so clients go to another gateway at once.
    assert!(
        tokio::net::TcpStream::connect(gw.client).await.is_err(),
        "still accepting while draining"
    );

    for c in [&mut polite, &mut stubborn] {
        let g = c.recv_kind(Kind::GoAway).await;
        let ga: gg_proto::control::GoAway = g.json().expect("goaway json");
        assert_eq!(ga.reconnect_after_ms, 250);
        assert!(ga.deadline_ms <= 1500 && ga.deadline_ms > 0, "{ga:?}");
    }
    // The polite client leaves on GOAWAY.
    polite
        .send(&frame(Kind::Close, 0, 0, &b"{\"code\":3500}"[..]))
        .await;
    polite.expect_eof(WAIT).await;

    // The stubborn one is closed by the gateway at the deadline.
    let close = stubborn.expect_close().await;
    assert_eq!(close.code, CloseCode::Shutdown.code());
    assert!(
        t0.elapsed() >= Duration::from_millis(1200),
        "closed before the deadline: {:?}",
        t0.elapsed()
    );

    assert_eq!(gw.proc.wait_exit(WAIT).await, Some(0));
    let log = gw.proc.log_text();
    assert!(
        log.contains("force_closed=1"),
        "drain report missing:\n{log}"
    );
}

/// Threads of a running process named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("proc")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim().starts_with(name))
        .count()
}

/// `--worker-threads N` runs N workers (the main thread and N - 1
/// `gw-worker-*` threads, no work-stealing runtime); connections are spread
/// over them, each worker gets its own backend connection, and traffic
/// works on every one.
#[tokio::test]
async fn worker_threads_flag_sets_the_workers_and_spreads_connections() {
    let be = backend("wt").await;
    for n in [1usize, 2] {
        let arg = n.to_string();
        let body = format!(
            "{}backend: {{ connections_per_endpoint: 1 }}\n",
            one_service(be.addr)
        );
        let gw = gateway_with_flags("gw-wt", &body, &["--worker-threads", &arg]).await;
        let pid = gw.proc.pid();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            threads_named(pid, "gw-worker-"),
            n - 1,
            "--worker-threads {n}"
        );
        assert_eq!(threads_named(pid, "tokio-rt-worker"), 0, "no tokio pool");
        // connections_per_endpoint is rounded up to one per worker.
        let up = format!("gg_backend_connections{{endpoint=\"{}\"}}", be.addr);
        gw.wait_metric(&up, |v| v == n as f64).await;

        let mut clients = Vec::new();
        for i in 0..4u32 {
            let mut c = Client::tcp(gw.client).await;
            c.hello(100 + u64::from(i), 0).await;
            let got = c.call_text(1, 1, &format!("ping-{i}")).await;
            assert!(got.contains(&format!("ping-{i}")), "{got}");
            clients.push(c);
        }
        for w in 0..n {
            let sample = format!("gg_worker_connections{{worker=\"{w}\"}}");
            assert_eq!(
                gw.metric(&sample).await,
                (4 / n) as f64,
                "{sample}, N = {n}"
            );
        }
        // Every client keeps working where it was placed.
        for (i, c) in clients.iter_mut().enumerate() {
            let got = c.call_text(1, 2, &format!("again-{i}")).await;
            assert!(got.contains(&format!("again-{i}")), "{got}");
        }
        drop(clients);
        for w in 0..n {
            let sample = format!("gg_worker_connections{{worker=\"{w}\"}}");
            gw.wait_metric(&sample, |v| v == 0.0).await;
        }
    }
    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\n",
        &["--gateway-id", "gw", "--worker-threads", "0"],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains("--worker-threads"), "{err}");
}

/// `--io-uring auto` (the default) and `off` both deliver every reply, in
/// order, when one backend read carries replies for many sessions and
/// several for each (the batched path and the one-`send`-each path), and
/// the startup log says which is in use; a bad value is refused.
#[tokio::test]
async fn io_uring_flag_chooses_how_replies_are_written_and_both_deliver_in_order() {
    let be = backend("uring").await;
    for mode in ["off", "auto"] {
        let gw = gateway_with_flags(
            "gw-uring",
            &one_service(be.addr),
            &["--worker-threads", "1", "--io-uring", mode],
        )
        .await;
        // The log line follows the stdout line the harness waits for.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut log = gw.proc.log_text();
        while !log.contains("gateway listening") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            log = gw.proc.log_text();
        }
        if mode == "off" {
            assert!(log.contains("io_uring=false"), "{log}");
        } else {
            assert!(
                log.contains("io_uring=true") || log.contains("io_uring is unavailable"),
                "{log}"
            );
        }
        let mut clients = Vec::new();
        for i in 0..16u64 {
            let mut c = Client::tcp(gw.client).await;
            c.hello(500 + i, 0).await;
            clients.push(c);
        }
        // Every client sends its frames before any reads: the backend's
        // replies come back many sessions and many frames to a read.
        const PER: u32 = 32;
        for (i, c) in clients.iter_mut().enumerate() {
            for seq in 1..=PER {
                c.send(&frame(Kind::Data, 1, seq, format!("{mode}-{i}-{seq}")))
                    .await;
            }
        }
        for (i, c) in clients.iter_mut().enumerate() {
            for seq in 1..=PER {
                let f = c.recv_kind(Kind::Data).await;
                assert_eq!(f.header.seq, seq, "{mode}: client {i} in order");
                let text = String::from_utf8_lossy(&f.payload);
                assert!(text.contains(&format!("{mode}-{i}-{seq}")), "{text}");
            }
        }
    }
    let (code, err) = run_to_exit(
        "gateway",
        "listen: 127.0.0.1:0\nops_listen: 127.0.0.1:0\n",
        &["--gateway-id", "gw", "--io-uring", "sometimes"],
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(err.contains("--io-uring"), "{err}");
}
