//! `gwbench`: load generator for Game Gateway (and for the proxies it is
//! compared with). It speaks frame protocol v1 with `gg-proto`.
//!
//! Modes of talking to the target:
//! - `--mode gateway`: a client of the gateway (HELLO → WELCOME, then DATA);
//! - `--mode backend`: a gateway-like peer of an echo backend (HELLO with a
//!   gateway id, OPEN per connection, then DATA by session id). This is what
//!   goes through a plain TCP proxy (nginx `stream`, HAProxy `mode tcp`) or
//!   straight to the backend, so every path runs the same DATA echo.
//!
//! Scenarios: `closed` (N sessions × k frames in flight), `open` (fixed total
//! rate; latency from the scheduled send time, so no coordinated omission),
//! `idle` (hold sessions, report the target's RSS per session) and `churn`
//! (connect → HELLO → WELCOME → close, as fast as possible). `--procs P`
//! splits the sessions over P worker processes, each on its own 127.0.0.x
//! source address, to stay under the per-process open-files cap. Results go
//! to stdout as one JSON object (and a human line on stderr).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use gg_proto::control::{self, BackendHello, Open};
use gg_proto::frame::{self, Frame, Header, Kind};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
#[command(name = "gwbench", about = "Load generator for Game Gateway")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Closed loop: every session keeps `--inflight` requests outstanding.
    Closed(Load),
    /// Open loop: `--rate` requests/s in total, spread over the sessions.
    Open(Load),
    /// Hold idle sessions and report the target's RSS per session.
    Idle(IdleArgs),
    /// Connect, HELLO, WELCOME, close — repeatedly. Connections come from
    /// 127.(16+w).0.1–16, ports 10000–32767, in turn (w: the worker plus
    /// `--ip-offset`), so the client's source ports are not the limit.
    Churn(ChurnArgs),
}

#[derive(Parser, Debug, Clone)]
struct Common {
    /// Address to load.
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum, default_value = "gateway")]
    mode: Mode,
    #[arg(long, value_enum, default_value = "tcp")]
    proto: Proto,
    /// Sessions (connections) in total.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Worker processes to spread the sessions over.
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// PIDs of the system under test (CPU time and RSS are read from /proc).
    #[arg(long, value_delimiter = ',')]
    sut_pids: Vec<u32>,
    /// service_type of the DATA frames.
    #[arg(long, default_value_t = 1)]
    service: u16,
    /// Offset of the 127.0.x.y source addresses, so several gwbench runs at
    /// once do not share source ports.
    #[arg(long, default_value_t = 0)]
    ip_offset: usize,
    /// Connect with TLS (TCP only), trusting the PEM CA certificates in
    /// this file; the name verified is `localhost`.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Internal: worker index (set by the parent process).
    #[arg(long, hide = true)]
    worker: Option<usize>,
}

#[derive(Parser, Debug, Clone)]
struct Load {
    #[command(flatten)]
    common: Common,
    /// Requests in flight per session (closed loop).
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Payload bytes per DATA frame.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Total requests per second (open loop).
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
}

#[derive(Parser, Debug, Clone)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds to hold the sessions after all are open.
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
}

#[derive(Parser, Debug, Clone)]
struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Mode {
    Gateway,
    Backend,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Proto {
    Tcp,
    Ws,
}

/// What one worker (or the merged run) measured.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Report {
    scenario: String,
    sessions: usize,
    requests: u64,
    errors: u64,
    seconds: f64,
    throughput: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// CPU seconds the SUT used during the measured window.
    sut_cpu_s: f64,
    /// SUT CPU microseconds per request.
    sut_cpu_us_per_req: f64,
    /// SUT RSS growth per idle session (idle scenario), bytes.
    rss_per_session: f64,
    sut_rss_kb: u64,
    /// Raw latency samples (µs), only between workers and the parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    samples: Vec<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let common = match &args.cmd {
            Cmd::Closed(l) | Cmd::Open(l) => &l.common,
            Cmd::Idle(i) => &i.common,
            Cmd::Churn(c) => &c.common,
        };
        if common.worker.is_some() {
            exit_with_parent();
        }
        let report = if common.procs > 1 && common.worker.is_none() {
            fan_out(&args, common).await?
        } else {
            run_worker(&args).await?
        };
        print(&report, common.worker.is_some());
        Ok(())
    })
}

fn print(r: &Report, worker: bool) {
    if !worker {
        eprintln!(
            "{}: sessions={} requests={} errors={} throughput={:.0}/s p50={:.0}us p99={:.0}us p999={:.0}us sut_cpu={:.2}s ({:.1}us/req) rss/session={:.0}B",
            r.scenario,
            r.sessions,
            r.requests,
            r.errors,
            r.throughput,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.sut_cpu_s,
            r.sut_cpu_us_per_req,
            r.rss_per_session
        );
    }
    println!("{}", serde_json::to_string(r).unwrap_or_default());
}

/// Runs `procs` copies of this process, each with a share of the sessions.
/// A worker exits as soon as its stdin (a pipe from the parent) closes, so
/// killing the parent never leaves workers holding connections.
fn exit_with_parent() {
    std::thread::spawn(|| {
        use std::io::Read;
        let mut b = [0u8; 64];
        while matches!(std::io::stdin().read(&mut b), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

/// For `idle`, the SUT's RSS is read once every worker reports its sessions
/// open (a line `OPEN` on its stdout) and before any of them closes.
async fn fan_out(args: &Args, common: &Common) -> anyhow::Result<Report> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe()?;
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let before = sut_snapshot(&common.sut_pids);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, String)>(64);
    let mut children = Vec::new();
    for w in 0..common.procs {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&raw).arg("--worker").arg(w.to_string());
        cmd.stdout(std::process::Stdio::piped());
        // The worker watches this pipe: it exits when the parent goes away,
        // even if the parent was killed.
        cmd.stdin(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send((w, l)).await;
            }
        });
        children.push(child);
    }
    drop(tx);
    let mut opened = 0;
    let mut idle_after = None;
    let mut merged = Report::default();
    while let Some((_, line)) = rx.recv().await {
        if line == "OPEN" {
            opened += 1;
            if opened == common.procs {
                tokio::time::sleep(Duration::from_millis(500)).await;
                idle_after = Some(sut_snapshot(&common.sut_pids));
            }
            continue;
        }
        let r: Report = serde_json::from_str(line.trim())?;
        merged.scenario = r.scenario;
        merged.sessions += r.sessions;
        merged.requests += r.requests;
        merged.errors += r.errors;
        merged.throughput += r.throughput;
        merged.seconds = merged.seconds.max(r.seconds);
        merged.samples.extend(r.samples);
    }
    for mut c in children {
        c.wait().await?;
    }
    let after = sut_snapshot(&common.sut_pids);
    finish(&mut merged, before, after);
    if let (Cmd::Idle(_), Some(at)) = (&args.cmd, idle_after) {
        merged.rss_per_session =
            (at.1.saturating_sub(before.1) * 1024) as f64 / merged.sessions.max(1) as f64;
        merged.sut_rss_kb = at.1;
    }
    merged.samples.clear();
    Ok(merged)
}

/// (CPU ticks, RSS KiB) summed over the SUT processes.
fn sut_snapshot(pids: &[u32]) -> (u64, u64) {
    let mut ticks = 0;
    let mut rss = 0;
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the ")" of the command name: utime is 14th, stime 15th overall.
            let rest = stat.rsplit(')').next().unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            ticks += n(11) + n(12);
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            rss += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (ticks, rss)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

fn finish(r: &mut Report, before: (u64, u64), after: (u64, u64)) {
    r.samples.sort_unstable();
    r.p50_us = percentile(&r.samples, 0.50);
    r.p99_us = percentile(&r.samples, 0.99);
    r.p999_us = percentile(&r.samples, 0.999);
    // Linux USER_HZ is 100.
    r.sut_cpu_s = after.0.saturating_sub(before.0) as f64 / 100.0;
    if r.requests > 0 {
        r.sut_cpu_us_per_req = r.sut_cpu_s * 1e6 / r.requests as f64;
    }
    r.sut_rss_kb = after.1;
}

fn source_ip(common: &Common) -> IpAddr {
    // Worker w uses 127.0.0.(w+2): per-IP limits and ephemeral ports per source.
    let w = common.worker.unwrap_or(0) + common.ip_offset;
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        ((w + 2) / 250) as u8,
        ((w + 2) % 250) as u8 + 1,
    ))
}

fn my_sessions(common: &Common) -> usize {
    match common.worker {
        Some(w) => common.sessions / common.procs + usize::from(w < common.sessions % common.procs),
        None => common.sessions,
    }
}

async fn run_worker(args: &Args) -> anyhow::Result<Report> {
    match &args.cmd {
        Cmd::Closed(l) => load(l, false).await,
        Cmd::Open(l) => load(l, true).await,
        Cmd::Idle(i) => idle(i).await,
        Cmd::Churn(c) => churn(c).await,
    }
}

/// A plaintext or TLS byte stream.
type Stream =
    tokio_util::either::Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// The TLS client for `--tls-ca`, built once per process.
fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    if let Some(c) = CONNECTOR.get() {
        return Ok(c.clone());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(CONNECTOR
        .get_or_init(|| tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)))
        .clone())
}

/// One session's connection.
enum Conn {
    Tcp {
        s: Stream,
        rbuf: BytesMut,
        wbuf: BytesMut,
    },
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
}

/// Source addresses for churn: [`CHURN_IPS`] loopback addresses per
/// worker, each with the ports [`CHURN_PORTS`], taken in turn.
const CHURN_IPS: u32 = 16;
const CHURN_PORTS: std::ops::Range<u32> = 10_000..32_768;

/// The next churn source address of this process. Letting `connect()` pick
/// the port caps churn at about 14,000 connections per second from one
/// address to one target: a port's TIME_WAIT 4-tuple may be reused only
/// after a second, and the kernel's search for a free one (`__inet_hash_connect`,
/// `__inet_check_established`) then took most of this generator's CPU.
/// Taking the addresses in turn, a 4-tuple comes back every
/// `CHURN_IPS × 22,768` connections (about 20 s at 20,000 per second),
/// below the ephemeral range the proxies use for their own connections.
fn churn_source(common: &Common) -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let w = (common.worker.unwrap_or(0) + common.ip_offset) as u32;
    let ports = CHURN_PORTS.end - CHURN_PORTS.start;
    let ip = Ipv4Addr::new(127, (16 + w % 200) as u8, 0, (1 + n % CHURN_IPS) as u8);
    let port = CHURN_PORTS.start + (n / CHURN_IPS) % ports;
    SocketAddr::new(IpAddr::V4(ip), port as u16)
}

/// A connected socket: from a churn source address when `churn` (a few
/// tries past addresses in use), else from the worker's address.
async fn connect_socket(common: &Common, churn: bool) -> anyhow::Result<TcpStream> {
    if churn {
        let mut last = None;
        for _ in 0..8 {
            let sock = TcpSocket::new_v4()?;
            sock.set_reuseaddr(true)?;
            if let Err(e) = sock.bind(churn_source(common)) {
                last = Some(e);
                continue;
            }
            match sock.connect(common.target).await {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        return Err(last.map_or_else(|| anyhow::anyhow!("no churn source address"), Into::into));
    }
    let sock = TcpSocket::new_v4()?;
    // Without SO_REUSEADDR, bind(port 0) searches for a port that is not
    // even in TIME_WAIT and takes milliseconds under churn.
    sock.set_reuseaddr(true)?;
    // A single process lets connect() pick the source (fastest); workers
    // each take their own 127.0.0.x for more ports and per-IP limits.
    if common.worker.is_some() {
        sock.bind(SocketAddr::new(source_ip(common), 0))?;
    }
    Ok(sock.connect(common.target).await?)
}

impl Conn {
    async fn connect(common: &Common, index: u64) -> anyhow::Result<(Conn, u64)> {
        Conn::connect_from(common, index, false).await
    }

    async fn connect_from(common: &Common, index: u64, churn: bool) -> anyhow::Result<(Conn, u64)> {
        let s = connect_socket(common, churn).await?;
        s.set_nodelay(true)?;
        let s = match &common.tls_ca {
            None => Stream::Left(s),
            Some(ca) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                Stream::Right(Box::new(tls_connector(ca)?.connect(name, s).await?))
            }
        };
        let mut conn = match common.proto {
            Proto::Tcp => Conn::Tcp {
                s,
                rbuf: BytesMut::with_capacity(16 * 1024),
                wbuf: BytesMut::new(),
            },
            Proto::Ws => {
                let Stream::Left(s) = s else {
                    anyhow::bail!("--tls-ca is for --proto tcp")
                };
                let (ws, _) =
                    tokio_tungstenite::client_async(format!("ws://{}/v1/ws", common.target), s)
                        .await?;
                Conn::Ws(Box::new(ws))
            }
        };
        let sid = match common.mode {
            Mode::Gateway => {
                let mut h = Header::new(Kind::Hello);
                h.user_id = index + 1;
                conn.send(&[Frame::new(h, &b"{}"[..]).to_bytes()]).await?;
                loop {
                    let f = conn
                        .recv()
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("closed before WELCOME"))?;
                    if f.header.kind() == Some(Kind::Welcome) {
                        break f.header.session_id;
                    }
                }
            }
            Mode::Backend => {
                let sid = (common.worker.unwrap_or(0) as u64) << 32 | (index + 1);
                let hello = control::control_frame(
                    Kind::Hello,
                    Header::new(Kind::Hello),
                    &BackendHello {
                        gateway_id: "gwbench".into(),
                    },
                );
                let mut h = Header::new(Kind::Open);
                h.session_id = sid;
                h.service_type = common.service;
                let open = control::control_frame(
                    Kind::Open,
                    h,
                    &Open {
                        protocol: "tcp".into(),
                        remote_addr: "gwbench".into(),
                        traceparent: None,
                        resumed: false,
                    },
                );
                conn.send(&[hello.to_bytes(), open.to_bytes()]).await?;
                sid
            }
        };
        Ok((conn, sid))
    }

    async fn send(&mut self, frames: &[Bytes]) -> anyhow::Result<()> {
        match self {
            Conn::Tcp { s, wbuf, .. } => {
                for f in frames {
                    wbuf.extend_from_slice(f);
                }
                s.write_all(wbuf).await?;
                wbuf.clear();
            }
            Conn::Ws(ws) => {
                for f in frames {
                    ws.feed(Message::Binary(f.clone())).await?;
                }
                ws.flush().await?;
            }
        }
        Ok(())
    }

    /// A frame already buffered, without reading (TCP only).
    fn buffered(&mut self) -> Option<Frame> {
        match self {
            Conn::Tcp { rbuf, .. } => frame::decode(rbuf, 1 << 24).ok().flatten(),
            Conn::Ws(_) => None,
        }
    }

    /// The next frame (cancel-safe); `None` on EOF.
    async fn recv(&mut self) -> anyhow::Result<Option<Frame>> {
        match self {
            Conn::Tcp { s, rbuf, .. } => loop {
                if let Some(f) = frame::decode(rbuf, 1 << 24)? {
                    return Ok(Some(f));
                }
                if s.read_buf(rbuf).await? == 0 {
                    return Ok(None);
                }
            },
            Conn::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        let mut m = BytesMut::from(&b[..]);
                        return Ok(frame::decode(&mut m, 1 << 24)?);
                    }
                    Some(Ok(_)) => continue,
                    _ => return Ok(None),
                }
            },
        }
    }
}

fn data(sid: u64, service: u16, seq: u32, payload: &Bytes) -> Bytes {
    let mut h = Header::new(Kind::Data);
    h.session_id = sid;
    h.service_type = service;
    h.seq = seq;
    Frame::new(h, payload.clone()).to_bytes()
}

async fn load(l: &Load, open_loop: bool) -> anyhow::Result<Report> {
    let common = &l.common;
    let n = my_sessions(common);
    let base = common.worker.unwrap_or(0) as u64 * 1_000_000;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(Conn::connect(common, base + i as u64).await?);
    }
    let payload = Bytes::from(vec![b'x'; l.size]);
    let start = Instant::now() + Duration::from_secs_f64(l.warmup);
    let end = start + Duration::from_secs_f64(l.duration);
    let per_session_rate = l.rate / common.sessions.max(1) as f64;
    let before = sut_snapshot(&common.sut_pids);
    let mut tasks = Vec::new();
    for (conn, sid) in conns {
        let (payload, service, inflight) = (payload.clone(), common.service, l.inflight.max(1));
        tasks.push(tokio::spawn(async move {
            if open_loop {
                session_open(conn, sid, service, payload, per_session_rate, start, end).await
            } else {
                session_closed(conn, sid, service, payload, inflight, start, end).await
            }
        }));
    }
    let mut r = Report {
        scenario: if open_loop {
            "open".into()
        } else {
            "closed".into()
        },
        sessions: n,
        ..Default::default()
    };
    for t in tasks {
        match t.await? {
            Ok((count, samples)) => {
                r.requests += count;
                r.samples.extend(samples);
            }
            Err(_) => r.errors += 1,
        }
    }
    let after = sut_snapshot(&common.sut_pids);
    r.seconds = l.duration;
    r.throughput = r.requests as f64 / l.duration;
    // CPU over the whole run includes the warm-up; scale to the window.
    let total = l.duration + l.warmup;
    finish(&mut r, before, after);
    r.sut_cpu_s *= l.duration / total;
    if r.requests > 0 {
        r.sut_cpu_us_per_req = r.sut_cpu_s * 1e6 / r.requests as f64;
    }
    if common.worker.is_some() {
        // Send at most 200k samples to the parent.
        let step = (r.samples.len() / 200_000).max(1);
        r.samples = r.samples.iter().step_by(step).copied().collect();
    } else {
        r.samples.clear();
    }
    Ok(r)
}

async fn session_closed(
    mut conn: Conn,
    sid: u64,
    service: u16,
    payload: Bytes,
    inflight: usize,
    start: Instant,
    end: Instant,
) -> anyhow::Result<(u64, Vec<u32>)> {
    let mut sent_at = vec![Instant::now(); inflight];
    let mut next_seq: u32 = 0;
    let mut first = Vec::with_capacity(inflight);
    for slot in sent_at.iter_mut() {
        next_seq += 1;
        *slot = Instant::now();
        first.push(data(sid, service, next_seq, &payload));
    }
    conn.send(&first).await?;
    let (mut count, mut samples, mut errors) = (0u64, Vec::new(), 0u64);
    let mut batch = Vec::with_capacity(inflight);
    loop {
        let Some(f) = conn.recv().await? else {
            anyhow::bail!("target closed the connection")
        };
        let mut got = vec![f];
        while let Some(more) = conn.buffered() {
            got.push(more);
        }
        let now = Instant::now();
        for f in got {
            match f.header.kind() {
                Some(Kind::Data) => {}
                // An ERROR answers the request too (counted, not timed).
                Some(Kind::Error) => errors += 1,
                _ => continue,
            }
            let slot = (f.header.seq.max(1) as usize - 1) % inflight;
            if now >= start && now < end && f.header.kind() == Some(Kind::Data) {
                count += 1;
                samples.push(now.duration_since(sent_at[slot]).as_micros() as u32);
            }
            if now < end {
                next_seq += 1;
                sent_at[(next_seq as usize - 1) % inflight] = now;
                batch.push(data(sid, service, next_seq, &payload));
            }
        }
        if now >= end {
            if errors > 0 && count == 0 {
                anyhow::bail!("every reply was an ERROR ({errors})");
            }
            return Ok((count, samples));
        }
        if !batch.is_empty() {
            conn.send(&batch).await?;
            batch.clear();
        }
    }
}

async fn session_open(
    mut conn: Conn,
    sid: u64,
    service: u16,
    payload: Bytes,
    rate: f64,
    start: Instant,
    end: Instant,
) -> anyhow::Result<(u64, Vec<u32>)> {
    let every = Duration::from_secs_f64(1.0 / rate.max(0.001));
    // Random phase so sessions do not all fire together.
    let phase = Duration::from_nanos(
        sid.wrapping_mul(0x9e37_79b9_7f4a_7c15) % (every.as_nanos().max(1) as u64),
    );
    let mut next = Instant::now() + phase;
    let mut scheduled = std::collections::HashMap::new();
    let (mut seq, mut count, mut samples) = (0u32, 0u64, Vec::new());
    let drain_until = end + Duration::from_secs(2);
    loop {
        let now = Instant::now();
        if now >= drain_until || (now >= end && scheduled.is_empty()) {
            return Ok((count, samples));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()), if now < end => {
                seq += 1;
                // Latency counts from the intended send time.
                scheduled.insert(seq, next);
                next += every;
                conn.send(&[data(sid, service, seq, &payload)]).await?;
            }
            f = conn.recv() => {
                let Some(f) = f? else { anyhow::bail!("target closed the connection") };
                if let Some(at) = scheduled.remove(&f.header.seq) {
                    let now = Instant::now();
                    if at >= start && at < end {
                        count += 1;
                        samples.push(now.duration_since(at).as_micros() as u32);
                    }
                }
            }
            _ = tokio::time::sleep_until(drain_until.into()) => {}
        }
    }
}

async fn idle(a: &IdleArgs) -> anyhow::Result<Report> {
    let common = &a.common;
    let n = my_sessions(common);
    let base = common.worker.unwrap_or(0) as u64 * 1_000_000;
    let before = sut_snapshot(&common.sut_pids);
    let mut conns = Vec::with_capacity(n);
    let mut errors = 0;
    for i in 0..n {
        match Conn::connect(common, base + i as u64).await {
            Ok(c) => conns.push(c),
            Err(_) => errors += 1,
        }
    }
    if common.worker.is_some() {
        // Tell the parent; it reads the SUT's RSS while every worker holds.
        println!("OPEN");
    }
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let after = sut_snapshot(&common.sut_pids);
    let mut r = Report {
        scenario: "idle".into(),
        sessions: conns.len(),
        errors,
        ..Default::default()
    };
    r.rss_per_session =
        (after.1.saturating_sub(before.1) * 1024) as f64 / conns.len().max(1) as f64;
    r.sut_rss_kb = after.1;
    if common.worker.is_some() {
        // Hold until every worker has measured: the parent measures RSS after all exit,
        // so keep the sessions a little longer.
        tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    }
    drop(conns);
    Ok(r)
}

async fn churn(c: &ChurnArgs) -> anyhow::Result<Report> {
    let common = &c.common;
    let n = my_sessions(common).max(1);
    let before = sut_snapshot(&common.sut_pids);
    let end = Instant::now() + Duration::from_secs_f64(c.duration);
    let mut tasks = Vec::new();
    for w in 0..n {
        let common = common.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err, mut samples) = (0u64, 0u64, Vec::new());
            let mut i = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                // A new session and one request/reply on it, on every path.
                let attempt = async {
                    let (mut conn, sid) =
                        Conn::connect_from(&common, (w as u64) << 20 | i, true).await?;
                    conn.send(&[data(sid, common.service, 1, &Bytes::from_static(b"hi"))])
                        .await?;
                    while let Some(f) = conn.recv().await? {
                        if f.header.kind() == Some(Kind::Data) {
                            return Ok(());
                        }
                    }
                    anyhow::bail!("closed before the reply")
                };
                match attempt.await {
                    Ok(()) => {
                        ok += 1;
                        samples.push(t.elapsed().as_micros() as u32);
                    }
                    Err(_) => err += 1,
                }
                i += 1;
            }
            (ok, err, samples)
        }));
    }
    let mut r = Report {
        scenario: "churn".into(),
        sessions: n,
        ..Default::default()
    };
    for t in tasks {
        let (ok, err, s) = t.await?;
        r.requests += ok;
        r.errors += err;
        r.samples.extend(s);
    }
    let after = sut_snapshot(&common.sut_pids);
    r.seconds = c.duration;
    r.throughput = r.requests as f64 / c.duration;
    finish(&mut r, before, after);
    if common.worker.is_none() {
        r.samples.clear();
    }
    Ok(r)
}
