//! `httpbench`: closed-loop HTTP/1.1 keep-alive load — `--conns`
//! connections each sending one request after the other for
//! `--duration-s` — printing requests per second and latency percentiles
//! (one line of JSON with `--json`). Also `--serve ADDR`: the echo backend
//! both proxies forward to (answers every request with its body).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(
    name = "httpbench",
    about = "HTTP keep-alive load generator and echo backend"
)]
struct Args {
    /// Where to send requests.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Run the echo backend on this address instead.
    #[arg(long)]
    serve: Option<SocketAddr>,
    #[arg(long, default_value_t = 100)]
    conns: usize,
    #[arg(long, default_value_t = 5)]
    duration_s: u64,
    #[arg(long, default_value = "/echo")]
    path: String,
    /// Request body bytes (the echo answers as many).
    #[arg(long, default_value_t = 64)]
    body: usize,
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One worker: the load generator and the echo take a fixed share.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if let Some(addr) = args.serve {
        return rt.block_on(serve(addr));
    }
    let target = args
        .target
        .ok_or_else(|| anyhow::anyhow!("--target or --serve"))?;
    rt.block_on(load(target, &args))
}

/// Reads one response (head + Content-Length body) from `buf`/`s`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                if s.read_buf(buf).await? == 0 {
                    anyhow::bail!("connection closed mid-response");
                }
            }
            buf.drain(..total);
            return Ok(status);
        }
        if s.read_buf(buf).await? == 0 {
            anyhow::bail!("connection closed");
        }
    }
}

async fn load(target: SocketAddr, a: &Args) -> anyhow::Result<()> {
    let req = {
        let mut r = format!(
            "POST {} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
            a.path, a.body
        )
        .into_bytes();
        r.extend(std::iter::repeat_n(b'x', a.body));
        r
    };
    let deadline = Instant::now() + Duration::from_secs(a.duration_s);
    let mut tasks = Vec::new();
    for _ in 0..a.conns {
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(target).await?;
            s.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(4096);
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                s.write_all(&req).await?;
                let status = match read_response(&mut s, &mut buf).await {
                    Ok(st) => st,
                    Err(_) if Instant::now() < deadline => {
                        // The proxy ended the keep-alive connection: reconnect.
                        s = TcpStream::connect(target).await?;
                        s.set_nodelay(true)?;
                        buf.clear();
                        errors += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if status != 200 {
                    errors += 1;
                }
                lat.push(t.elapsed().as_micros() as u32);
            }
            Ok::<_, anyhow::Error>((lat, errors))
        }));
    }
    let started = Instant::now();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await??;
        all.extend(lat);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let rps = all.len() as f64 / secs;
    if a.json {
        println!(
            "{{\"requests\":{},\"rps\":{rps:.0},\"p50_us\":{},\"p99_us\":{},\"errors\":{errors}}}",
            all.len(),
            pct(0.5),
            pct(0.99)
        );
    } else {
        println!(
            "{} requests in {secs:.1} s: {rps:.0} req/s, p50 {} µs, p99 {} µs, {errors} non-200",
            all.len(),
            pct(0.5),
            pct(0.99)
        );
    }
    Ok(())
}

/// The echo backend: keep-alive, answers each request with its body.
async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr).await?;
    println!("listening {}", l.local_addr()?);
    loop {
        let (mut s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            let mut out = Vec::with_capacity(4096);
            loop {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match s.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    }
                };
                let len: usize = std::str::from_utf8(&buf[..end])
                    .ok()
                    .and_then(|h| {
                        h.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                    })
                    .unwrap_or(0);
                while buf.len() < end + 4 + len {
                    match s.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                out.clear();
                out.extend_from_slice(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
                );
                out.extend_from_slice(&buf[end + 4..end + 4 + len]);
                buf.drain(..end + 4 + len);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}
