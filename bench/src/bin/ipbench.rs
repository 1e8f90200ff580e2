//! `ipbench`: the cost of the IP allow/deny check at accept, with large
//! lists. Builds a deny list of `--blocks` random IPv4 blocks (/16 to /32)
//! and a tenth as many IPv6 ones, then checks `--lookups` random addresses
//! (half taken from inside listed blocks) and prints the build time, the
//! merged ranges and their memory, and nanoseconds per check.
//!
//!     cargo run --release -p bench --bin ipbench -- --blocks 100000

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use clap::Parser;
use gg_proto::ip::IpLists;

#[derive(Parser)]
struct Args {
    /// IPv4 blocks in the deny list (plus a tenth as many IPv6 ones).
    #[arg(long, default_value_t = 100_000)]
    blocks: usize,
    /// Addresses checked.
    #[arg(long, default_value_t = 10_000_000)]
    lookups: usize,
}

fn main() {
    let a = Args::parse();
    fastrand::seed(7);
    let mut deny = Vec::with_capacity(a.blocks + a.blocks / 10);
    for _ in 0..a.blocks {
        let prefix = fastrand::u8(16..=32);
        deny.push(format!("{}/{prefix}", Ipv4Addr::from(fastrand::u32(..))));
    }
    for _ in 0..a.blocks / 10 {
        let prefix = fastrand::u8(32..=128);
        deny.push(format!("{}/{prefix}", Ipv6Addr::from(fastrand::u128(..))));
    }
    let probes: Vec<IpAddr> = (0..a.lookups.min(1 << 20))
        .map(|i| {
            if i % 2 == 0 {
                // Near a listed block: its network address.
                let b = &deny[fastrand::usize(..a.blocks)];
                b.split('/')
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
            } else {
                IpAddr::V4(Ipv4Addr::from(fastrand::u32(..)))
            }
        })
        .collect();
    let lists = IpLists {
        allow: Vec::new(),
        deny,
    };
    let t = Instant::now();
    let mut errs = Vec::new();
    let filter = lists.compile("ip_lists", &mut errs);
    let build = t.elapsed();
    assert!(errs.is_empty(), "{errs:?}");
    let t = Instant::now();
    let mut refused = 0usize;
    for i in 0..a.lookups {
        if black_box(&filter)
            .check(black_box(probes[i % probes.len()]))
            .is_err()
        {
            refused += 1;
        }
    }
    let took = t.elapsed();
    let ranges = filter.deny.ranges();
    println!(
        "blocks={} merged_ranges={ranges} memory={:.1}MiB build={:.1}ms lookups={} refused={refused} ns/check={:.1}",
        lists.deny.len(),
        (ranges * 32) as f64 / (1 << 20) as f64,
        build.as_secs_f64() * 1e3,
        a.lookups,
        took.as_nanos() as f64 / a.lookups as f64,
    );
}
