//! `cpbench`: control-plane fan-out benchmark. Starts a private
//! `redis-server`, one `controlplane`, N gateways (control-plane mode) and a
//! sample backend, all on free loopback ports, then measures:
//! - the time from a write acknowledged by the control plane to that revision
//!   applied on all N gateways (p50/p99 over `--writes` writes), polling each
//!   gateway's admin `GetInfo` every millisecond;
//! - directory efficiency: session events written per Redis round trip while
//!   `--sessions` clients connect at once;
//! - rooms (`--room-members N`, 0 = skip): N clients spread over the
//!   gateways join one room through the sample backend, then
//!   `--room-publishes` messages are published one at a time with
//!   `Rooms.Publish`: the time from the call to the first and to the last
//!   delivery (each client reads its MESSAGE), and the CPU the gateways and
//!   the control plane (and Redis) spent per delivery.
//!
//! Every child is killed when the program exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use gg_proto::frame::{Frame, Header, Kind};
use gg_proto::pb::admin as gwpb;
use gg_proto::pb::controlplane as pb;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

#[derive(Parser, Debug)]
#[command(
    name = "cpbench",
    about = "Control-plane fan-out and directory benchmark"
)]
struct Args {
    #[arg(long, default_value_t = 4)]
    gateways: usize,
    #[arg(long, default_value_t = 50)]
    writes: usize,
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Room members for the rooms benchmark (0: skip it).
    #[arg(long, default_value_t = 0)]
    room_members: usize,
    /// Messages published (one at a time) to the room.
    #[arg(long, default_value_t = 50)]
    room_publishes: usize,
    /// Simulated gateways (real Sync streams that ack every snapshot and
    /// report sessions), for the fleet-scale run (0: skip it).
    #[arg(long, default_value_t = 0)]
    sim_gateways: usize,
    /// Run Redis as a 3-node Cluster (three primaries, `redis-cli --cluster
    /// create`) instead of one node; memory and CPU are summed over the nodes.
    #[arg(long)]
    redis_cluster: bool,
    /// Sessions the simulated gateways report, spread evenly.
    #[arg(long, default_value_t = 1_000_000)]
    sim_sessions: usize,
    /// Directory with the gateway, controlplane and sample-backend binaries
    /// (default: this program's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.start_kill();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

async fn spawn(kids: &mut Kids, bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    Ok(spawn_pid(kids, bin, args).await?.0)
}

/// Like [`spawn`], with the child's pid.
async fn spawn_pid(kids: &mut Kids, bin: &Path, args: &[&str]) -> anyhow::Result<(String, u32)> {
    let mut c = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = c.id().unwrap_or(0);
    let out = c
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    kids.0.push(c);
    let mut lines = BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await??
        .unwrap_or_default();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((line, pid))
}

fn field(line: &str, key: &str) -> anyhow::Result<SocketAddr> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key))
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {key} in {line:?}"))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = match args.bin_dir.clone() {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let tmp = std::env::temp_dir().join(format!("cpbench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut kids = Kids(Vec::new());

    let nodes = if args.redis_cluster { 3 } else { 1 };
    let mut rports = Vec::new();
    let mut redis_pids = Vec::new();
    for i in 0..nodes {
        // A cluster node also listens on its port + 10000 (the bus).
        let rport = loop {
            let p = free_port();
            if !args.redis_cluster
                || (p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok())
            {
                break p;
            }
        };
        let node_dir = tmp.join(format!("redis-{i}"));
        std::fs::create_dir_all(&node_dir)?;
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &rport.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(&node_dir);
        if args.redis_cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        let redis = cmd.stdout(Stdio::null()).kill_on_drop(true).spawn()?;
        redis_pids.push(redis.id().unwrap_or(0));
        kids.0.push(redis);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", rport)).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rports.push(rport);
    }
    let redis_cfg = if args.redis_cluster {
        let addrs: Vec<String> = rports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every node must see the whole slot map before the control plane
        // connects.
        let deadline = Instant::now() + Duration::from_secs(20);
        for p in &rports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .await?;
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "the cluster never became ok");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let seeds: Vec<String> = rports
            .iter()
            .map(|p| format!("\"redis://127.0.0.1:{p}/\""))
            .collect();
        format!("{{ cluster: [{}] }}", seeds.join(", "))
    } else {
        format!("{{ url: \"redis://127.0.0.1:{}/\" }}", rports[0])
    };
    println!(
        "redis: {}",
        if args.redis_cluster {
            "3-node cluster"
        } else {
            "one node"
        }
    );

    let cp_cfg = tmp.join("cp.yaml");
    std::fs::write(
        &cp_cfg,
        format!(
            "id: cp-bench\nlisten: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nredis: {redis_cfg}\nreconcile_ms: 1000\nlease_ms: 15000\n"
        ),
    )?;
    let (line, cp_pid) = spawn_pid(
        &mut kids,
        &dir.join("controlplane"),
        &[
            "--config",
            cp_cfg.to_str().unwrap_or_default(),
            "--log",
            "warn",
        ],
    )
    .await?;
    let (cp_grpc, cp_ops) = (field(&line, "grpc=")?, field(&line, "ops=")?);
    let line = spawn(
        &mut kids,
        &dir.join("sample-backend"),
        &["--listen", "127.0.0.1:0", "--name", "b"],
    )
    .await?;
    let backend: SocketAddr = line.trim_start_matches("listening ").parse()?;

    let channel = tonic::transport::Channel::from_shared(format!("http://{cp_grpc}"))?
        .connect()
        .await?;
    let mut cp = pb::control_plane_client::ControlPlaneClient::new(channel);
    cp.put_service(pb::PutServiceRequest {
        service: Some(pb::Service {
            name: "echo".into(),
            id: 1,
            strategy: gg_proto::model::Strategy::RoundRobin.to_pb(),
            endpoints: vec![backend.to_string()],
            ..Default::default()
        }),
        options: None,
    })
    .await?;

    let mut gws = Vec::new();
    let mut gw_pids = Vec::new();
    for i in 0..args.gateways {
        let cfg = tmp.join(format!("gw{i}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "gateway_id: bench-gw-{i}\nlisten: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nlimits: {{ max_connections: 100000, max_connections_per_ip: 100000, conn_rate_per_ip: 1000000, conn_burst_per_ip: 1000000 }}\ncontrolplane:\n  url: http://{cp_grpc}\n  snapshot_path: {}\n",
                tmp.join(format!("gw{i}.pb")).display()
            ),
        )?;
        let (line, pid) = spawn_pid(
            &mut kids,
            &dir.join("gateway"),
            &[
                "--config",
                cfg.to_str().unwrap_or_default(),
                "--log",
                "warn",
            ],
        )
        .await?;
        gw_pids.push(pid);
        let admin = field(&line, "admin=")?;
        let client = field(&line, "client=")?;
        let ch = tonic::transport::Channel::from_shared(format!("http://{admin}"))?
            .connect()
            .await?;
        gws.push((
            client,
            gwpb::gateway_admin_client::GatewayAdminClient::new(ch),
        ));
    }
    // Wait until every gateway serves revision 1.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (_, a) in &mut gws {
        while a
            .get_info(gwpb::GetInfoRequest {})
            .await?
            .into_inner()
            .config_revision
            < 1
        {
            anyhow::ensure!(Instant::now() < deadline, "gateways did not sync");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    let (mut all, mut first) = (Vec::new(), Vec::new());
    for i in 0..args.writes {
        let w = cp
            .put_realm(pb::PutRealmRequest {
                realm_id: 10 + i as u32,
                endpoint: backend.to_string(),
                options: None,
            })
            .await?
            .into_inner();
        let acked = Instant::now();
        let mut waits = Vec::new();
        for (_, a) in &gws {
            let mut a = a.clone();
            waits.push(tokio::spawn(async move {
                loop {
                    if let Ok(i) = a.get_info(gwpb::GetInfoRequest {}).await
                        && i.into_inner().config_revision >= w.revision
                    {
                        return acked.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        let mut times = Vec::new();
        for t in waits {
            times.push(t.await?.as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        first.push(times[0]);
        all.push(times[times.len() - 1]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    all.sort_by(f64::total_cmp);
    first.sort_by(f64::total_cmp);
    println!(
        "fan-out: {} writes, {} gateways: ack → applied on all: p50 {:.2} ms, p99 {:.2} ms (first gateway: p50 {:.2} ms)",
        args.writes,
        args.gateways,
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&first, 0.5)
    );

    // Directory: a burst of sessions across the gateways.
    let before = metric(cp_ops, "cp_directory_events_total").await?;
    let before_rt = metric(cp_ops, "cp_directory_roundtrips_total").await?;
    let mut conns = Vec::new();
    for i in 0..args.sessions {
        let (client, _) = &gws[i % gws.len()];
        let mut s = TcpStream::connect(client).await?;
        let mut h = Header::new(Kind::Hello);
        h.user_id = i as u64 + 1;
        s.write_all(&Frame::new(h, &b"{}"[..]).to_bytes()).await?;
        conns.push(s);
    }
    let t0 = Instant::now();
    loop {
        let ev = metric(cp_ops, "cp_directory_events_total").await? - before;
        if ev >= args.sessions as f64 || t0.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = metric(cp_ops, "cp_directory_events_total").await? - before;
    let rts = metric(cp_ops, "cp_directory_roundtrips_total").await? - before_rt;
    println!(
        "directory: {} session opens → {:.0} events in {:.0} Redis round trips = {:.1} events per round trip (all in directory after {:.0} ms)",
        args.sessions,
        events,
        rts,
        events / rts.max(1.0),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    drop(conns);
    if args.sim_gateways > 0 {
        fleet(&args, cp_grpc, cp_ops, &rports, &backend.to_string()).await?;
    }
    if args.room_members > 0 {
        let clients: Vec<SocketAddr> = gws.iter().map(|(c, _)| *c).collect();
        rooms(&args, &clients, cp_grpc, &gw_pids, cp_pid, &redis_pids).await?;
    }
    drop(kids);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// `used_memory` summed over the Redis nodes at `ports`.
async fn redis_used_memory_sum(ports: &[u16]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for p in ports {
        sum += redis_used_memory(*p).await?;
    }
    Ok(sum)
}

/// `used_memory` of the Redis at `port`.
async fn redis_used_memory(port: u16) -> anyhow::Result<u64> {
    let text = redis_info(port, "memory").await?;
    text.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO"))
}

/// One `INFO <section>` of the Redis at `port`, over a raw connection (the
/// reply is one RESP bulk string: read until its declared length is in).
async fn redis_info(port: u16, section: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("INFO {section}\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await??;
        anyhow::ensure!(n > 0, "Redis closed before INFO was complete");
        buf.extend_from_slice(&chunk[..n]);
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        let len: usize = std::str::from_utf8(&buf[1..eol])?.parse()?;
        if buf.len() >= eol + 2 + len {
            return Ok(String::from_utf8_lossy(&buf[eol + 2..eol + 2 + len]).into_owned());
        }
    }
}

/// Redis CPU by command over `ports` (from `INFO commandstats`): one line
/// per command that ran, with calls and µs per call, and the total.
async fn redis_command_costs(ports: &[u16]) -> anyhow::Result<String> {
    let mut by: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for p in ports {
        for l in redis_info(*p, "commandstats").await?.lines() {
            let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |k: &str| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let e = by.entry(name.to_string()).or_default();
            e.0 += field("calls");
            e.1 += field("usec");
        }
    }
    let total: u64 = by.values().map(|v| v.1).sum();
    let mut out = String::new();
    for (name, (calls, usec)) in by.iter().filter(|(_, v)| v.1 * 100 >= total) {
        out.push_str(&format!(
            "  {name}: {calls} calls, {:.2} µs/call, {:.1} s\n",
            *usec as f64 / (*calls).max(1) as f64,
            *usec as f64 / 1e6
        ));
    }
    out.push_str(&format!(
        "  all commands: {:.1} s of Redis CPU",
        total as f64 / 1e6
    ));
    Ok(out)
}

/// `--sim-gateways`: that many real Sync streams (hello, ack every
/// snapshot, heartbeat) as the fleet; then config writes timed from the
/// write's ack to every stream having the revision; then the streams
/// report `--sim-sessions` opens in batches: directory events per second
/// and Redis memory per session.
async fn fleet(
    args: &Args,
    cp_grpc: SocketAddr,
    cp_ops: SocketAddr,
    redis_ports: &[u16],
    backend: &str,
) -> anyhow::Result<()> {
    use gg_proto::pb::controlplane::control_message::Msg as In;
    use gg_proto::pb::controlplane::gateway_message::Msg as Out;
    use std::sync::Arc;
    let k = args.sim_gateways;
    // Revision → when each simulated gateway got it.
    let seen = Arc::new(seen::Seen::default());
    let mut outboxes = Vec::new();
    // One HTTP/2 connection per 50 streams.
    let mut channels = Vec::new();
    for _ in 0..k.div_ceil(50) {
        channels.push(
            tonic::transport::Channel::from_shared(format!("http://{cp_grpc}"))?
                .connect()
                .await?,
        );
    }
    let t_connect = Instant::now();
    for i in 0..k {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::GatewayMessage>(64);
        tx.send(pb::GatewayMessage {
            msg: Some(Out::Hello(pb::GatewayHello {
                gateway_id: format!("sim-{i}"),
                version: "sim".into(),
                ..Default::default()
            })),
        })
        .await?;
        let mut client = pb::gateway_sync_client::GatewaySyncClient::new(channels[i / 50].clone());
        let mut inbound = client
            .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let (seen, out) = (seen.clone(), tx.clone());
        tokio::spawn(async move {
            let mut hb = tokio::time::interval(Duration::from_secs(3));
            loop {
                tokio::select! {
                    m = inbound.message() => {
                        let Ok(Some(pb::ControlMessage { msg: Some(m) })) = m else { return };
                        if let In::Snapshot(v) = m {
                            seen.record(v.revision, Instant::now());
                            let ack = pb::Ack { revision: v.revision, epoch: v.epoch, error: String::new() };
                            if out.send(pb::GatewayMessage { msg: Some(Out::Ack(ack)) }).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ = hb.tick() => {
                        let h = pb::Heartbeat { state: gg_proto::pb::common::GatewayState::Ready as i32, sessions: 0 };
                        if out.send(pb::GatewayMessage { msg: Some(Out::Heartbeat(h)) }).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        outboxes.push(tx);
    }
    println!(
        "fleet: {k} simulated gateways connected in {:.1} s",
        t_connect.elapsed().as_secs_f64()
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{cp_grpc}"))?
        .connect()
        .await?;
    let mut cp = pb::control_plane_client::ControlPlaneClient::new(channel);
    let mut all = Vec::new();
    for w in 0..args.writes {
        let r = cp
            .put_realm(pb::PutRealmRequest {
                realm_id: 5000 + w as u32,
                endpoint: backend.to_string(),
                options: None,
            })
            .await?
            .into_inner();
        let acked = Instant::now();
        let deadline = acked + Duration::from_secs(30);
        loop {
            if let Some(last) = seen.all_after(r.revision, k, acked) {
                all.push(last.as_secs_f64() * 1000.0);
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "revision {} did not reach all {k}",
                r.revision
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    all.sort_by(f64::total_cmp);
    println!(
        "fleet: {} writes to {k} gateways: ack → snapshot on all: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.writes,
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0)
    );

    // Directory at scale.
    let mem0 = redis_used_memory_sum(redis_ports).await?;
    for p in redis_ports {
        let mut s = TcpStream::connect(("127.0.0.1", *p)).await?;
        s.write_all(b"CONFIG RESETSTAT\r\n").await?;
        let mut ok = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut ok)).await??;
    }
    let ev0 = metric(cp_ops, "cp_directory_events_total").await?;
    let per = args.sim_sessions / k;
    let t0 = Instant::now();
    let mut senders = Vec::new();
    for (g, tx) in outboxes.iter().enumerate() {
        let tx = tx.clone();
        senders.push(tokio::spawn(async move {
            let mut events = Vec::with_capacity(500);
            for j in 0..per {
                let sid = ((g as u64 + 1) << 32) | (j as u64 + 1);
                events.push(pb::SessionEvent {
                    session_id: sid,
                    user_id: sid ^ 0x5555,
                    open: true,
                    epoch: 1,
                    realm_id: 0,
                    resumed: false,
                });
                if events.len() == 500 || j + 1 == per {
                    let batch = pb::SessionEvents {
                        events: std::mem::take(&mut events),
                    };
                    tx.send(pb::GatewayMessage {
                        msg: Some(Out::Sessions(batch)),
                    })
                    .await?;
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let total = (per * k) as f64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_report = Instant::now();
    loop {
        let ev = metric(cp_ops, "cp_directory_events_total").await? - ev0;
        if ev >= total {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "directory: {ev} of {total} events after 600 s"
        );
        if last_report.elapsed() > Duration::from_secs(10) {
            let failed = metric(cp_ops, "cp_directory_errors_total").await?;
            println!(
                "fleet: … {ev:.0} of {total:.0} events written, {failed:.0} directory batches failed (dropped)"
            );
            anyhow::ensure!(
                failed == 0.0,
                "directory batches failed under this burst (each was dropped; a real gateway resends its sessions when its stream reconnects)"
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let mem1 = redis_used_memory_sum(redis_ports).await?;
    println!(
        "fleet: directory of {total:.0} sessions from {k} gateways written in {secs:.1} s = {:.0} events/s; Redis used_memory {:.1} MB → {:.1} MB = {:.0} B per session (ownership hash, user index, gateway set, and the capped presence stream)",
        total / secs,
        mem0 as f64 / 1e6,
        mem1 as f64 / 1e6,
        (mem1.saturating_sub(mem0)) as f64 / total
    );
    println!(
        "fleet: Redis time by command during the directory burst (the commands with ≥ 1 % of it):\n{}",
        redis_command_costs(redis_ports).await?
    );
    drop(outboxes);
    Ok(())
}

/// When each simulated gateway received each revision.
mod seen {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    #[derive(Default)]
    pub(super) struct Seen(Mutex<HashMap<u64, Vec<Instant>>>);

    impl Seen {
        pub(super) fn record(&self, rev: u64, at: Instant) {
            if let Ok(mut m) = self.0.lock() {
                m.entry(rev).or_default().push(at);
            }
        }

        /// Once `n` streams have `rev`: the latest arrival after `since`.
        pub(super) fn all_after(&self, rev: u64, n: usize, since: Instant) -> Option<Duration> {
            let m = self.0.lock().ok()?;
            let v = m.get(&rev)?;
            (v.len() >= n).then(|| {
                v.iter()
                    .map(|t| t.saturating_duration_since(since))
                    .max()
                    .unwrap_or_default()
            })
        }
    }
}

/// CPU ticks (user + system) of these processes.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // After the ")" of the command name: utime and stime are fields 14 and 15.
            let rest = stat.rsplit(')').next().unwrap_or("").to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            n(11) + n(12)
        })
        .sum()
}

/// Per publish: clients that got it, and the first and last arrival (ns
/// after the benchmark's start).
struct Arrivals {
    count: std::sync::atomic::AtomicUsize,
    first_ns: std::sync::atomic::AtomicU64,
    last_ns: std::sync::atomic::AtomicU64,
}

/// One room of `members` clients over the gateways; publishes one at a
/// time and waits for every member to have it.
async fn rooms(
    args: &Args,
    gateways: &[SocketAddr],
    cp_grpc: SocketAddr,
    gw_pids: &[u32],
    cp_pid: u32,
    redis_pids: &[u32],
) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    let n = args.room_members;
    let start = Instant::now();
    let arrivals: Arc<Vec<Arrivals>> = Arc::new(
        (0..args.room_publishes)
            .map(|_| Arrivals {
                count: 0.into(),
                first_ns: u64::MAX.into(),
                last_ns: 0.into(),
            })
            .collect(),
    );
    let joined = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let t_join = Instant::now();
    for i in 0..n {
        let addr = gateways[i % gateways.len()];
        let (arrivals, joined) = (arrivals.clone(), joined.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            let mut h = Header::new(Kind::Hello);
            h.user_id = 1_000_000 + i as u64;
            s.write_all(&Frame::new(h, &b"{}"[..]).to_bytes()).await?;
            let mut d = Header::new(Kind::Data);
            d.service_type = 1;
            d.seq = 1;
            s.write_all(&Frame::new(d, &b"join:bench-room"[..]).to_bytes())
                .await?;
            let mut buf = bytes::BytesMut::with_capacity(4096);
            loop {
                while let Some(f) = gg_proto::frame::decode(&mut buf, 1 << 20)? {
                    match f.header.kind() {
                        Some(Kind::Data) if f.header.seq == 1 => {
                            joined.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Kind::Message) => {
                            let now = start.elapsed().as_nanos() as u64;
                            let (_, seq, _) = gg_proto::room::parse_message(&f.payload)?;
                            if let Some(a) =
                                (seq as usize).checked_sub(1).and_then(|i| arrivals.get(i))
                            {
                                a.count.fetch_add(1, Ordering::Relaxed);
                                a.first_ns.fetch_min(now, Ordering::Relaxed);
                                a.last_ns.fetch_max(now, Ordering::Relaxed);
                            }
                        }
                        Some(Kind::Close) => anyhow::bail!("session closed: {f:?}"),
                        _ => {}
                    }
                }
                if s.read_buf(&mut buf).await? == 0 {
                    return Ok::<(), anyhow::Error>(());
                }
            }
        }));
        if i % 500 == 499 {
            // Spread the connects so no accept queue overflows.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while joined.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} clients joined",
            joined.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{cp_grpc}"))?
        .connect()
        .await?;
    let mut api = pb::rooms_client::RoomsClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let total = api
            .members(pb::MembersRequest {
                room: "bench-room".into(),
                limit: 1,
            })
            .await?
            .into_inner()
            .total;
        if total as usize >= n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the member index has {total} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "rooms: {n} members on {} gateways joined in {:.1} s",
        gateways.len(),
        t_join.elapsed().as_secs_f64()
    );
    let payload = vec![b'r'; 64];
    let (gw0, cp0, r0) = (
        cpu_ticks(gw_pids),
        cpu_ticks(&[cp_pid]),
        cpu_ticks(redis_pids),
    );
    let (mut last, mut first) = (Vec::new(), Vec::new());
    for (i, a) in arrivals.iter().enumerate() {
        let sent = start.elapsed().as_nanos() as u64;
        let r = api
            .publish(pb::PublishRequest {
                room: "bench-room".into(),
                service_type: 1,
                payload: payload.clone(),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        anyhow::ensure!(r.seq == i as u64 + 1, "seq {} for publish {}", r.seq, i + 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.count.load(Ordering::Relaxed) < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "publish {}: {} of {n} delivered",
                i + 1,
                a.count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        last.push((a.last_ns.load(Ordering::Relaxed) - sent) as f64 / 1e6);
        first.push((a.first_ns.load(Ordering::Relaxed).saturating_sub(sent)) as f64 / 1e6);
    }
    let (gw1, cp1, r1) = (
        cpu_ticks(gw_pids),
        cpu_ticks(&[cp_pid]),
        cpu_ticks(redis_pids),
    );
    // Exactly once: no member got any message twice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, a) in arrivals.iter().enumerate() {
        let got = a.count.load(Ordering::Relaxed);
        anyhow::ensure!(
            got == n,
            "publish {}: {got} deliveries for {n} members",
            i + 1
        );
    }
    let deliveries = (n * args.room_publishes) as f64;
    // Ticks are 1/100 s.
    let us = |ticks: u64| ticks as f64 * 10_000.0 / deliveries;
    last.sort_by(f64::total_cmp);
    first.sort_by(f64::total_cmp);
    println!(
        "rooms: {} publishes to {n} members: publish → last delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; → first delivery p50 {:.2} ms",
        args.room_publishes,
        pct(&last, 0.5),
        pct(&last, 0.99),
        pct(&last, 1.0),
        pct(&first, 0.5),
    );
    println!(
        "rooms: CPU per delivery: gateways {:.2} µs, control plane {:.3} µs, redis {:.3} µs ({} deliveries, exactly once each)",
        us(gw1 - gw0),
        us(cp1 - cp0),
        us(r1 - r0),
        deliveries
    );
    for t in tasks {
        t.abort();
    }
    Ok(())
}

async fn metric(ops: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(ops).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0))
}
