//! The README's run command, for real: `deploy/run-local.sh` starts Redis,
//! the control plane, two gateways and the backends, applies the bundle and
//! writes a gwctl context; plain gwctl then sees the fleet, a route change
//! reaches both gateways, a drain finishes, and SIGTERM (what Ctrl-C is in
//! a terminal) stops everything it started.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::*;

/// A port base whose every derived port is free now.
fn free_base() -> u16 {
    let offsets = [
        0u16, 1, 101, 102, 201, 202, 379, 400, 2100, 2101, 2200, 2201, 2400,
    ];
    for k in 0..400u16 {
        let base = 30_000
            + ((std::process::id() as u16)
                .wrapping_mul(7)
                .wrapping_add(k * 37)
                % 2_500)
                * 10;
        let free = offsets
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port base");
}

async fn gwctl(config: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(bin("gwctl"))
        .args(args)
        .env("GWCTL_CONFIG", config)
        .env_remove("GWCTL_CONTROLPLANE")
        .env_remove("GWCTL_GATEWAY")
        .output()
        .await
        .expect("run gwctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn run_local_starts_the_whole_system_and_stops_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = free_base();
    let dir = scratch("local", "d");
    let ctx = scratch("gwctl", "yaml");
    let bin_dir = Path::new(&bin("gateway"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    for b in ["controlplane", "gwctl", "sample-backend"] {
        let _ = bin(b);
    }
    let mut script = tokio::process::Command::new("bash")
        .arg(root.join("deploy/run-local.sh"))
        .env("GG_BASE", base.to_string())
        .env("GG_BIN", &bin_dir)
        .env("GG_DIR", &dir)
        .env("GWCTL_CONFIG", &ctx)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run deploy/run-local.sh");
    let mut lines = BufReader::new(script.stdout.take().expect("stdout")).lines();
    let up = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(l) = lines.next_line().await.expect("read") {
            if l.starts_with("stack running") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the stack starts within 2 minutes");
    assert!(up, "run-local.sh ended before the stack was up");

    let (ok, fleet) = gwctl(&ctx, &["fleet", "list", "-o", "json"]).await;
    assert!(ok, "{fleet}");
    let fleet: serde_json::Value = serde_json::from_str(&fleet).expect("json");
    let ids: Vec<&str> = fleet["gateways"]
        .as_array()
        .expect("gateways")
        .iter()
        .filter_map(|g| g["gateway_id"].as_str())
        .collect();
    assert_eq!(ids, ["gw-local-0", "gw-local-1"]);

    // A route change reaches both gateways.
    let ep = format!("127.0.0.1:{}", base + 102);
    let (ok, out) = gwctl(
        &ctx,
        &[
            "routes",
            "set",
            "version",
            "--id",
            "2",
            "--strategy",
            "round_robin",
            "--endpoint",
            &ep,
        ],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = gwctl(
        &ctx,
        &["rollout", "status", "--wait", "--wait-timeout", "30s"],
    )
    .await;
    assert!(ok, "{out}");
    for port in [base, base + 1] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (status, body) = http(addr, "POST", "/v1/call/version", &[], b"whoami").await;
        assert_eq!((status, body.as_str()), (200, "account-b"));
    }

    // A drain through the control plane finishes.
    let (ok, out) = gwctl(&ctx, &["drain", "start", "gw-local-0", "--wait"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("done"), "{out}");

    // SIGTERM stops everything it started.
    let pid = script.id().expect("pid");
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let started = Instant::now();
    let st = tokio::time::timeout(Duration::from_secs(60), script.wait())
        .await
        .expect("run-local.sh stops")
        .expect("wait");
    assert!(st.success(), "{st:?}");
    let mut rest = String::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert!(rest.contains("stopped"), "{rest}");
    eprintln!("stopped in {:?}", started.elapsed());
    for o in [0u16, 1, 101, 102, 201, 202, 379, 400] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", base + o)).is_err(),
            "port {} still open after the stop",
            base + o
        );
    }
}
