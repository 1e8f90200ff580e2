//! `deflatebench`: what WebSocket permessage-deflate costs per message with
//! the gateway's own codec (`websocket.permessage_deflate`): for game-like
//! payloads of several sizes, the compressed size and the CPU time to
//! deflate (server → client) and inflate (client → server) one message, and
//! what it costs per session.
//!
//! `target/release/deflatebench [--iterations N]`

use std::time::Instant;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "deflatebench", about = "permessage-deflate cost per message")]
struct Args {
    /// Messages per size.
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
}

/// A JSON state update like a game sends: `n` entities.
fn payload(n: usize) -> Vec<u8> {
    let mut s = String::from("{\"tick\":1842,\"entities\":[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{},\"x\":{:.2},\"y\":{:.2},\"hp\":{},\"state\":\"running\"}}",
            1000 + i,
            (i * 37 % 1000) as f64 / 3.0,
            (i * 91 % 1000) as f64 / 7.0,
            100 - i % 50
        ));
    }
    s.push_str("]}");
    s.into_bytes()
}

fn main() {
    let args = Args::parse();
    println!("| payload | bytes | compressed | ratio | deflate µs/msg | inflate µs/msg |");
    println!("|---|---|---|---|---|---|");
    for (name, data) in [
        (
            "64 B binary-ish",
            b"{\"op\":\"move\",\"x\":12.5,\"y\":40.25,\"seq\":77}".repeat(2)[..64].to_vec(),
        ),
        ("1 entity", payload(1)),
        ("10 entities", payload(10)),
        ("100 entities", payload(100)),
        ("1000 entities", payload(1000)),
    ] {
        let z = gateway::ws_deflate(&data);
        let t = Instant::now();
        let mut total = 0;
        for _ in 0..args.iterations {
            total += gateway::ws_deflate(std::hint::black_box(&data)).len();
        }
        let d_us = t.elapsed().as_secs_f64() * 1e6 / args.iterations as f64;
        let t = Instant::now();
        for _ in 0..args.iterations {
            total += gateway::ws_inflate(std::hint::black_box(&z), 1 << 20).map_or(0, |v| v.len());
        }
        let i_us = t.elapsed().as_secs_f64() * 1e6 / args.iterations as f64;
        std::hint::black_box(total);
        println!(
            "| {name} | {} | {} | {:.2} | {d_us:.2} | {i_us:.2} |",
            data.len(),
            z.len(),
            data.len() as f64 / z.len() as f64
        );
    }
}
