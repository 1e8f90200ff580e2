//! A private `redis-server` per test, on a free port, killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Proc, scratch};

pub struct Redis {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Redis {
    /// A throwaway Redis (no persistence).
    pub async fn start() -> Redis {
        Redis::start_with(&["--save", "", "--appendonly", "no"]).await
    }

    /// A durable Redis: AOF with fsync on every write.
    pub async fn start_durable() -> Redis {
        Redis::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .await
    }

    pub async fn start_with(extra: &[&str]) -> Redis {
        let dir = scratch("redis", "d");
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = Redis {
            proc: spawn(free_port(), &dir, extra),
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.port = port_of(&r.proc);
        r.wait_up().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL (no chance to flush anything not already fsynced).
    pub async fn kill(&mut self) {
        let _ = self.proc.child.start_kill();
        let _ = self.proc.child.wait().await;
    }

    /// Starts again on the same port and directory (AOF replayed).
    pub async fn restart(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.proc = spawn(self.port, &self.dir, &extra);
        self.wait_up().await;
    }

    pub async fn cmd(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(self.addr())
            .await
            .expect("connect redis");
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("redis reply")
            .expect("read");
        String::from_utf8_lossy(&buf[..n]).to_string()
    }

    async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(self.addr()).await {
                let _ = s.write_all(b"PING\r\n").await;
                let mut b = [0u8; 16];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await
                    && b[..n].starts_with(b"+PONG")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis did not start; log: {}",
                self.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn port_of(p: &Proc) -> u16 {
    p.name
        .rsplit(':')
        .next()
        .and_then(|x| x.parse().ok())
        .expect("port in name")
}

fn spawn(port: u16, dir: &std::path::Path, extra: &[&str]) -> Proc {
    let log = dir.join("redis.log");
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            dir.to_str().expect("utf8"),
        ])
        .args(extra)
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed (./.ci/test installs it)");
    Proc {
        child,
        log,
        name: format!("redis:{port}"),
    }
}

/// A local Redis Cluster: three primaries joined with `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

/// A port whose cluster bus port (+10000) is free as well.
fn cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl Cluster {
    pub async fn start() -> Cluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let dir = scratch("redis-cluster", "d");
            std::fs::create_dir_all(&dir).expect("dir");
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--save",
                "",
                "--appendonly",
                "no",
            ];
            let port = cluster_port();
            let mut r = Redis {
                proc: spawn(port, &dir, &extra),
                port,
                dir,
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            r.port = port;
            r.wait_up().await;
            nodes.push(r);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli must be installed (./.ci/test installs redis-tools)");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n
                .cmd(&["CLUSTER", "INFO"])
                .await
                .contains("cluster_state:ok")
            {
                assert!(Instant::now() < deadline, "cluster never became ok");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Cluster { nodes }
    }

    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }
}

/// A master, one replica and three sentinels watching them as `gg-master`.
pub struct SentinelSetup {
    pub master: Redis,
    pub replica: Redis,
    pub sentinels: Vec<(Proc, u16)>,
}

impl SentinelSetup {
    pub async fn start() -> SentinelSetup {
        let master = Redis::start().await;
        let replica_of = master.port.to_string();
        let replica = Redis::start_with(&[
            "--save",
            "",
            "--appendonly",
            "no",
            "--replicaof",
            "127.0.0.1",
            &replica_of,
        ])
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let dir = scratch("sentinel", "d");
            std::fs::create_dir_all(&dir).expect("dir");
            let port = free_port();
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor gg-master 127.0.0.1 {} 2\nsentinel down-after-milliseconds gg-master 1000\nsentinel failover-timeout gg-master 5000\n",
                    master.port
                ),
            )
            .expect("conf");
            let log = dir.join("sentinel.log");
            let child = tokio::process::Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(std::fs::File::create(&log).expect("log"))
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server --sentinel");
            sentinels.push((
                Proc {
                    child,
                    log,
                    name: format!("sentinel:{port}"),
                },
                port,
            ));
        }
        let setup = SentinelSetup {
            master,
            replica,
            sentinels,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ok = 0;
            for (_, p) in &setup.sentinels {
                let r = sentinel_cmd(*p, &["SENTINEL", "replicas", "gg-master"]).await;
                if r.contains(&setup.replica.port.to_string()) {
                    ok += 1;
                }
            }
            if ok == 3 {
                return setup;
            }
            assert!(Instant::now() < deadline, "sentinels never saw the replica");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(_, p)| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// The port Sentinel reports as master now.
    pub async fn master_port(&self) -> Option<u16> {
        let r = sentinel_cmd(
            self.sentinels[0].1,
            &["SENTINEL", "get-master-addr-by-name", "gg-master"],
        )
        .await;
        r.lines()
            .filter_map(|l| l.trim().parse::<u16>().ok())
            .next()
    }
}

async fn sentinel_cmd(port: u16, args: &[&str]) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut buf = vec![0u8; 8192];
    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).to_string(),
        _ => String::new(),
    }
}
