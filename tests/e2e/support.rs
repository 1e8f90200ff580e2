//! Test support: real processes on free ports (killed on drop), a frame
//! client over TCP and WebSocket, a tiny HTTP/1.1 client and metric scraping.
//! No fixed ports, no bare sleeps: everything waits with a deadline.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use gg_proto::Frame;
use gg_proto::control::{self, Welcome};
use gg_proto::frame::{self, Header, Kind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// Default wait for anything that should happen "now".
pub const WAIT: Duration = Duration::from_secs(10);

/// A child process, killed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Sends SIGTERM (graceful drain for the gateway).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends signal `name` (`TERM`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for exit and returns the exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let st = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not exit within {within:?}; log: {}",
                    self.name,
                    self.log.display()
                )
            })
            .expect("wait");
        st.code()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh path in the temp dir for a test's files (configs, logs, Redis
/// data). The first call of a test process removes what earlier test
/// processes left there, so the last run's files stay for a look after a
/// failure but runs do not pile up.
pub fn scratch(name: &str, ext: &str) -> PathBuf {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_stale_scratch);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("gg-e2e-{}-{n}-{name}.{ext}", std::process::id()))
}

/// Removes `gg-e2e-<pid>-…` entries of test processes that are gone.
fn sweep_stale_scratch() {
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("gg-e2e-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = e.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Path of a workspace binary. Inside its own package's tests Cargo gives
/// the path; elsewhere the binaries are (re)built once into the same target
/// directory, so they are never stale.
pub fn bin(name: &str) -> String {
    let known = match name {
        "gateway" => option_env!("CARGO_BIN_EXE_gateway"),
        "sample-backend" => option_env!("CARGO_BIN_EXE_sample-backend"),
        "controlplane" => option_env!("CARGO_BIN_EXE_controlplane"),
        "gwctl" => option_env!("CARGO_BIN_EXE_gwctl"),
        _ => None,
    };
    if let Some(p) = known {
        return p.to_string();
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe path");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target root").to_path_buf();
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "gateway",
            "-p",
            "gg-backend",
            "-p",
            "controlplane",
            "-p",
            "gwctl",
            "--bins",
            "--target-dir",
        ])
        .arg(&target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd
            .status()
            .expect("run cargo build for the gateway and control plane binaries");
        assert!(
            st.success(),
            "building the gateway and control plane binaries failed"
        );
        profile_dir
    });
    dir.join(name).to_string_lossy().to_string()
}

/// Runs binary `name` with `--config` (`yaml` written to a scratch file) and
/// `extra` arguments until it exits; returns its exit code and stderr. For
/// the "refuses to start" cases.
pub async fn run_to_exit(name: &str, yaml: &str, extra: &[&str]) -> (Option<i32>, String) {
    let config = scratch(name, "yaml");
    std::fs::write(&config, yaml).expect("write config");
    let out = tokio::process::Command::new(bin(name))
        .arg("--config")
        .arg(&config)
        .args(extra)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    let _ = std::fs::remove_file(&config);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Spawns `bin` and waits for its first stdout line.
pub async fn spawn(bin: &str, name: &str, args: &[&str]) -> (Proc, String) {
    let log = scratch(name, "log");
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let proc = Proc {
        child,
        log,
        name: name.to_string(),
    };
    let line = match tokio::time::timeout(WAIT, lines.next_line()).await {
        Ok(Ok(Some(l))) => l,
        other => panic!(
            "{name} printed no address line ({other:?}); log:\n{}",
            proc.log_text()
        ),
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (proc, line)
}

pub struct Backend {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub name: String,
}

/// Starts a sample backend on a free port (or on `addr` when given).
pub async fn backend_at(name: &str, addr: &str) -> Backend {
    let (proc, line) = spawn(
        &bin("sample-backend"),
        name,
        &["--listen", addr, "--name", name],
    )
    .await;
    let addr = line
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected backend line {line:?}"));
    Backend {
        proc,
        addr,
        name: name.to_string(),
    }
}

pub async fn backend(name: &str) -> Backend {
    backend_at(name, "127.0.0.1:0").await
}

/// A port that nothing listens on (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

pub struct Gw {
    pub proc: Proc,
    pub client: SocketAddr,
    pub ops: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub config: PathBuf,
}

/// YAML for one round-robin service `echo` (id 1) on `ep`.
pub fn one_service(ep: impl std::fmt::Display) -> String {
    format!("services:\n  - {{ name: echo, id: 1, strategy: round_robin, endpoints: [{ep}] }}\n")
}

/// Starts a gateway whose config is `body` (YAML without the listen keys;
/// both listeners use port 0).
pub async fn gateway(body: &str) -> Gw {
    gateway_named("gw-e2e", body).await
}

/// Like [`gateway`] with a chosen gateway id.
pub async fn gateway_named(id: &str, body: &str) -> Gw {
    gateway_with_flags(id, body, &[]).await
}

/// Like [`gateway_named`] with more command-line flags.
pub async fn gateway_with_flags(id: &str, body: &str, flags: &[&str]) -> Gw {
    let config = scratch("gw", "yaml");
    let yaml = format!("gateway_id: {id}\nlisten: 127.0.0.1:0\nops_listen: 127.0.0.1:0\n{body}");
    std::fs::write(&config, yaml).expect("write config");
    let mut args = vec![
        "--config",
        config.to_str().expect("utf8 path"),
        "--log",
        "debug",
    ];
    args.extend_from_slice(flags);
    let (proc, line) = spawn(&bin("gateway"), "gateway", &args).await;
    let field = |k: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    let gw = Gw {
        client: field("client="),
        ops: field("ops="),
        admin: line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("admin="))
            .and_then(|a| a.parse().ok()),
        proc,
        config,
    };
    gw.wait_backends_connected().await;
    gw
}

impl Gw {
    /// Waits until every configured endpoint that is reachable has a pooled
    /// connection, so tests do not race the first connect.
    async fn wait_backends_connected(&self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let m = self.metrics().await;
            let down = m
                .lines()
                .filter(|l| l.starts_with("gg_backend_connections{"))
                .filter(|l| l.ends_with(" 0"))
                .count();
            if down == 0 || Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        http(self.ops, "GET", "/metrics", &[], b"").await.1
    }

    /// Value of one sample, e.g. `gg_rejections_total{reason="x"}`; 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let m = self.metrics().await;
        m.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Sum of every sample of a family whose line starts with `prefix`.
    pub async fn metric_sum(&self, prefix: &str) -> f64 {
        let m = self.metrics().await;
        m.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    /// Polls a metric until `pred` holds (or panics after `WAIT`).
    pub async fn wait_metric(&self, sample: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(sample).await;
            if pred(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "metric {sample} stuck at {v}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("http response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// What a read from the gateway produced.
#[derive(Debug)]
pub enum Got {
    Frame(Frame),
    Eof,
}

/// A frame-protocol client over TCP or WebSocket.
pub struct Client {
    io: ClientIo,
    pub session_id: u64,
    pub user_id: u64,
}

enum ClientIo {
    Tcp { s: TcpStream, buf: BytesMut },
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
}

pub fn frame(kind: Kind, service: u16, seq: u32, payload: impl Into<Bytes>) -> Frame {
    let mut h = Header::new(kind);
    h.service_type = service;
    h.seq = seq;
    Frame::new(h, payload)
}

impl Client {
    pub async fn tcp(addr: SocketAddr) -> Client {
        Client::tcp_from(addr, "127.0.0.1".parse().expect("ip")).await
    }

    /// Connects from a chosen loopback source address (per-IP limit tests).
    pub async fn tcp_from(addr: SocketAddr, src: IpAddr) -> Client {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(src, 0)).expect("bind source");
        let s = sock.connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Client {
            io: ClientIo::Tcp {
                s,
                buf: BytesMut::new(),
            },
            session_id: 0,
            user_id: 0,
        }
    }

    pub async fn ws(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws"), s)
            .await
            .expect("websocket handshake");
        Client {
            io: ClientIo::Ws(Box::new(ws)),
            session_id: 0,
            user_id: 0,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.io {
            ClientIo::Tcp { s, .. } => s.write_all(bytes).await.expect("write"),
            ClientIo::Ws(ws) => ws
                .send(Message::Binary(Bytes::copy_from_slice(bytes)))
                .await
                .expect("ws send"),
        }
    }

    pub async fn send_ws_text(&mut self, text: &str) {
        let ClientIo::Ws(ws) = &mut self.io else {
            panic!("not ws")
        };
        ws.send(Message::Text(text.into())).await.expect("ws send");
    }

    pub async fn send(&mut self, f: &Frame) {
        self.send_raw(&f.to_bytes()).await;
    }

    /// Next frame or EOF within `within`; `None` on timeout.
    pub async fn next(&mut self, within: Duration) -> Option<Got> {
        tokio::time::timeout(within, self.read()).await.ok()
    }

    async fn read(&mut self) -> Got {
        match &mut self.io {
            ClientIo::Tcp { s, buf } => loop {
                match frame::decode(buf, 64 << 20) {
                    Ok(Some(f)) => return Got::Frame(f),
                    Ok(None) => {}
                    Err(e) => panic!("gateway sent an undecodable frame: {e}"),
                }
                match s.read_buf(buf).await {
                    Ok(0) | Err(_) => return Got::Eof,
                    Ok(_) => {}
                }
            },
            ClientIo::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        let mut bm = BytesMut::from(&b[..]);
                        let f = frame::decode(&mut bm, 64 << 20)
                            .expect("valid frame")
                            .expect("whole frame per message");
                        assert!(bm.is_empty(), "one frame per message");
                        return Got::Frame(f);
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Got::Eof,
                    Some(Ok(_)) => continue,
                }
            },
        }
    }

    /// The WebSocket close code the gateway sent (reads until the close).
    pub async fn ws_close_code(&mut self) -> Option<u16> {
        let ClientIo::Ws(ws) = &mut self.io else {
            panic!("not ws")
        };
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match tokio::time::timeout(WAIT, ws.next()).await.ok()? {
                Some(Ok(Message::Close(Some(c)))) => return Some(c.code.into()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
        None
    }

    /// The next frame; panics on EOF or timeout.
    pub async fn recv(&mut self) -> Frame {
        match self.next(WAIT).await {
            Some(Got::Frame(f)) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame of `kind`, skipping others.
    pub async fn recv_kind(&mut self, kind: Kind) -> Frame {
        loop {
            let f = self.recv().await;
            if f.header.kind() == Some(kind) {
                return f;
            }
        }
    }

    /// HELLO → WELCOME; remembers the session id.
    pub async fn hello(&mut self, user: u64, realm: u32) -> Welcome {
        let mut h = Header::new(Kind::Hello);
        h.user_id = user;
        h.realm_id = realm;
        self.send(&Frame::new(h, &b"{}"[..])).await;
        self.welcome(user).await
    }

    /// Sends HELLO with `payload` (a JSON object) and nothing else.
    pub async fn send_hello(&mut self, user: u64, payload: serde_json::Value) {
        let mut h = Header::new(Kind::Hello);
        h.user_id = user;
        self.send(&Frame::new(h, payload.to_string())).await;
    }

    /// HELLO with `payload` (e.g. `traceparent`, `token`) → WELCOME.
    pub async fn hello_json(&mut self, user: u64, payload: serde_json::Value) -> Welcome {
        self.send_hello(user, payload).await;
        self.welcome(user).await
    }

    /// HELLO resuming `session_id` with `token` → WELCOME.
    pub async fn resume(&mut self, user: u64, session_id: u64, token: &str) -> Welcome {
        let mut h = Header::new(Kind::Hello);
        h.user_id = user;
        h.session_id = session_id;
        let body = serde_json::json!({ "resume_token": token }).to_string();
        self.send(&Frame::new(h, body)).await;
        let w = self.welcome(user).await;
        assert_eq!(
            self.session_id, session_id,
            "resume must keep the session id"
        );
        w
    }

    async fn welcome(&mut self, user: u64) -> Welcome {
        let f = self.recv().await;
        assert_eq!(
            f.header.kind(),
            Some(Kind::Welcome),
            "expected WELCOME, got {f:?}"
        );
        assert_ne!(f.header.session_id, 0);
        self.session_id = f.header.session_id;
        self.user_id = user;
        f.json().expect("welcome json")
    }

    /// Sends DATA and waits for the DATA or ERROR with the same seq.
    pub async fn call(&mut self, service: u16, seq: u32, payload: &[u8]) -> Frame {
        self.send(&frame(
            Kind::Data,
            service,
            seq,
            Bytes::copy_from_slice(payload),
        ))
        .await;
        loop {
            let f = self.recv().await;
            if f.header.seq == seq && matches!(f.header.kind(), Some(Kind::Data | Kind::Error)) {
                return f;
            }
        }
    }

    /// `call` returning the reply payload as text; panics on ERROR.
    pub async fn call_text(&mut self, service: u16, seq: u32, payload: &str) -> String {
        let f = self.call(service, seq, payload.as_bytes()).await;
        assert_eq!(
            f.header.kind(),
            Some(Kind::Data),
            "expected DATA, got {f:?} ({:?})",
            String::from_utf8_lossy(&f.payload)
        );
        String::from_utf8(f.payload.to_vec()).expect("utf8")
    }

    /// Reads until a CLOSE frame; returns its payload. Then expects EOF.
    pub async fn expect_close(&mut self) -> control::Close {
        loop {
            match self.next(WAIT).await {
                Some(Got::Frame(f)) if f.header.kind() == Some(Kind::Close) => {
                    let c: control::Close = f.json().expect("close json");
                    return c;
                }
                Some(Got::Frame(_)) => continue,
                other => panic!("expected CLOSE, got {other:?}"),
            }
        }
    }

    /// Reads until EOF (skipping frames), panicking after `within`.
    pub async fn expect_eof(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Got::Eof) => return,
                Some(Got::Frame(_)) => continue,
                None => panic!("connection still open after {within:?}"),
            }
        }
    }
}

/// Whether the gateway closes a TCP connection from `src` before anything
/// is sent on it (refused at accept); an admitted one waits for bytes.
pub async fn refused_from(addr: SocketAddr, src: &str) -> bool {
    let mut c = Client::tcp_from(addr, src.parse().expect("ip")).await;
    matches!(c.next(Duration::from_millis(300)).await, Some(Got::Eof))
}

/// The ERROR payload of a frame (panics if it is not an ERROR).
pub fn error_of(f: &Frame) -> control::Error {
    assert_eq!(
        f.header.kind(),
        Some(Kind::Error),
        "expected ERROR, got {f:?}"
    );
    f.json().expect("error json")
}

/// Test tokens (config `value:`; real deployments use `env:` or `file:`).
pub const READ_TOKEN: &str = "read-token-0123456789abcdef";
pub const OPERATE_TOKEN: &str = "operate-token-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// YAML for an admin API on a free loopback port with the three test tokens.
pub fn admin_yaml() -> String {
    format!(
        "admin:\n  listen: 127.0.0.1:0\n  tokens:\n    - {{ name: reader, scope: read, value: {READ_TOKEN} }}\n    - {{ name: op, scope: operate, value: {OPERATE_TOKEN} }}\n    - {{ name: root, scope: admin, value: {ADMIN_TOKEN} }}\n"
    )
}

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            let v = format!("Bearer {t}").parse().expect("ascii token");
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

pub type Admin = gg_proto::pb::admin::gateway_admin_client::GatewayAdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

pub async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect admin")
}

/// An admin client for `gw` presenting `token` (None = no credentials).
pub async fn admin(gw: &Gw, token: Option<&str>) -> Admin {
    let addr = gw.admin.expect("gateway has no admin listener");
    gg_proto::pb::admin::gateway_admin_client::GatewayAdminClient::with_interceptor(
        channel(addr).await,
        Bearer(token.map(str::to_string)),
    )
}

/// Polls `f` until it returns true (panics after `WAIT`).
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A CA (`ca.crt`), a server certificate (`server.crt`, `server.key`) for
/// 127.0.0.1 and localhost, and a client certificate (`client.crt`,
/// `client.key`) in `dir`, made with the openssl CLI
/// (`./.ci/test` installs it).
pub fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(st.success(), "openssl {args:?} failed");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=gg-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // A client certificate from the same CA, for mutual TLS.
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=gg-test-client",
    ]);
    // Extensions make it an X.509 v3 certificate (rustls accepts no v1).
    std::fs::write(
        dir.join("client.cnf"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .expect("client ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.crt",
        "-days",
        "2",
        "-extfile",
        "client.cnf",
    ]);
}

/// Panics if a `/metrics` text exposes a family docs/metrics.md does not
/// list.
pub fn assert_metrics_documented(metrics: &str) {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"),
    )
    .expect("docs/metrics.md");
    let mut seen = 0;
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            assert!(
                doc.contains(&format!("`{name}`")),
                "{name} is exposed but not in docs/metrics.md"
            );
            seen += 1;
        }
    }
    assert!(seen > 0, "no metric families in {metrics:?}");
}
