//! gwctl end to end: the real `gwctl` binary against a real `redis-server`,
//! `controlplane`, `gateway` and backend, all on free loopback ports.

#[path = "../e2e/support.rs"]
mod support;

// Shared with the control plane's tests, which use all of it.
#[allow(dead_code)]
#[path = "../cp_e2e/redis_proc.rs"]
mod redis_proc;

use std::net::SocketAddr;

use serde_json::Value;

use redis_proc::Redis;
use support::*;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    #[track_caller]
    fn ok(self) -> Out {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The planes gwctl talks to, and how it finds them.
struct Stack {
    cp: SocketAddr,
    gw: Gw,
    _redis: Redis,
    _cp_proc: Proc,
    backend: Backend,
    home: std::path::PathBuf,
}

impl Stack {
    async fn start() -> Stack {
        let redis = Redis::start().await;
        let (cp_proc, cp) = start_cp(&redis, "").await;
        let backend = backend("b1").await;
        let gw = gateway_named(
            "gw-ctl",
            &format!(
                "controlplane:\n  url: http://{cp}\n  token: {{ name: cp, scope: operate, value: {OPERATE_TOKEN} }}\n  snapshot_path: {}\n  session_flush_ms: 50\n{}",
                scratch("snap", "pb").display(),
                admin_yaml()
            ),
        )
        .await;
        let home = scratch("home", "d");
        std::fs::create_dir_all(&home).expect("home");
        Stack {
            cp,
            gw,
            _redis: redis,
            _cp_proc: cp_proc,
            backend,
            home,
        }
    }

    /// `routes set echo` (service 1, round robin) to the test backend.
    async fn route_echo(&self, extra: &[&str]) -> Out {
        let b = self.backend.addr.to_string();
        let mut args = vec![
            "routes",
            "set",
            "echo",
            "--id",
            "1",
            "--strategy",
            "round_robin",
            "--endpoint",
            &b,
        ];
        args.extend_from_slice(extra);
        self.gwctl(Some(ADMIN_TOKEN), &args).await.ok()
    }

    /// Runs `gwctl -o json ARGS`, expects success and parses the output.
    async fn json(&self, token: &str, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        self.gwctl(Some(token), &all).await.ok().json()
    }

    /// Runs gwctl with `token` in GWCTL_TOKEN and both addresses in env.
    async fn gwctl(&self, token: Option<&str>, args: &[&str]) -> Out {
        let mut env = vec![
            ("GWCTL_CONTROLPLANE", self.cp.to_string()),
            (
                "GWCTL_GATEWAY",
                self.gw.admin.expect("admin listener").to_string(),
            ),
        ];
        if let Some(t) = token {
            env.push(("GWCTL_TOKEN", t.to_string()));
        }
        run_gwctl(&self.home, &env, args).await
    }
}

/// A control plane on `redis` with the three test tokens; `extra` is more
/// YAML (e.g. `tls:`). Returns the process and its gRPC address.
async fn start_cp(redis: &Redis, extra: &str) -> (Proc, SocketAddr) {
    let config = scratch("cp", "yaml");
    std::fs::write(
        &config,
        format!(
            "id: cp-gwctl\nlisten: 127.0.0.1:0\nops_listen: 127.0.0.1:0\nredis: {{ url: \"{}\" }}\nreconcile_ms: 200\nlease_ms: 5000\ntokens:\n  - {{ name: reader, scope: read, value: {READ_TOKEN} }}\n  - {{ name: op, scope: operate, value: {OPERATE_TOKEN} }}\n  - {{ name: root, scope: admin, value: {ADMIN_TOKEN} }}\ngateway_admin_token: {{ name: cp, scope: admin, value: {ADMIN_TOKEN} }}\n{extra}",
            redis.url()
        ),
    )
    .expect("write cp config");
    let (proc, line) = spawn(
        &bin("controlplane"),
        "cp-gwctl",
        &["--config", config.to_str().expect("utf8")],
    )
    .await;
    let cp: SocketAddr = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("grpc="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad cp line {line:?}"));
    (proc, cp)
}

/// Runs gwctl with a clean environment (HOME = `home`, so no user config).
async fn run_gwctl(home: &std::path::Path, env: &[(&str, String)], args: &[&str]) -> Out {
    let mut cmd = tokio::process::Command::new(bin("gwctl"));
    cmd.env_clear().env("HOME", home).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = tokio::time::timeout(WAIT * 3, cmd.output())
        .await
        .expect("gwctl finished")
        .expect("run gwctl");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

async fn revision(s: &Stack) -> u64 {
    s.json(READ_TOKEN, &["routes", "list"]).await["revision"]
        .as_u64()
        .expect("revision")
}

#[tokio::test]
async fn routes_apply_diff_rollout_and_fleet() {
    let s = Stack::start().await;
    let b = s.backend.addr.to_string();

    // Imperative write, then the fleet converges on it.
    let out = s.route_echo(&["--comment", "first"]).await;
    assert!(out.stdout.contains("written: revision 1"), "{}", out.stdout);
    let list = s.json(READ_TOKEN, &["routes", "list"]).await;
    assert_eq!(list["services"][0]["name"], "echo");
    assert_eq!(list["services"][0]["endpoints"][0], b.as_str());
    let r = s
        .json(
            READ_TOKEN,
            &["rollout", "status", "--wait", "--wait-timeout", "20s"],
        )
        .await;
    assert_eq!(r["pending"], 0, "{r}");
    assert_eq!(r["gateways"][0]["gateway_id"], "gw-ctl");
    assert_eq!(r["gateways"][0]["status"], "applied");
    let fleet = s
        .gwctl(Some(READ_TOKEN), &["-o", "yaml", "fleet", "list"])
        .await
        .ok();
    assert!(
        fleet.stdout.contains("gateway_id: gw-ctl"),
        "{}",
        fleet.stdout
    );
    let table = s.gwctl(Some(READ_TOKEN), &["fleet", "list"]).await.ok();
    assert!(table.stdout.starts_with("GATEWAY"), "{}", table.stdout);

    // Declarative: dump → diff (none, exit 0) → edit → diff (exit 2) → apply.
    let dump = s.gwctl(Some(READ_TOKEN), &["dump"]).await.ok();
    let file = scratch("bundle", "yaml");
    std::fs::write(&file, &dump.stdout).expect("write dump");
    let f = file.to_str().expect("utf8");
    let same = s.gwctl(Some(ADMIN_TOKEN), &["diff", "-f", f]).await;
    assert_eq!(same.code, 0, "{} {}", same.stdout, same.stderr);
    let edited = dump
        .stdout
        .replace("realms: {}", &format!("realms:\n  7: {b}"));
    assert_ne!(
        edited, dump.stdout,
        "the dump has an empty realm map: {}",
        dump.stdout
    );
    std::fs::write(&file, &edited).expect("write edit");
    let diff = s.gwctl(Some(ADMIN_TOKEN), &["diff", "-f", f]).await;
    assert_eq!(
        diff.code, 2,
        "a pending change exits 2: {} {}",
        diff.stdout, diff.stderr
    );
    assert!(diff.stdout.contains("realm 7"), "{}", diff.stdout);
    assert_eq!(revision(&s).await, 1, "diff writes nothing");
    s.gwctl(Some(ADMIN_TOKEN), &["apply", "-f", f]).await.ok();
    assert_eq!(revision(&s).await, 2);
    let again = s.gwctl(Some(ADMIN_TOKEN), &["diff", "-f", f]).await;
    assert_eq!(again.code, 0, "{} {}", again.stdout, again.stderr);
    let realms = s.json(READ_TOKEN, &["realms", "list"]).await;
    assert_eq!(realms["realms"]["7"], b.as_str());
    let history = s.json(READ_TOKEN, &["history", "--limit", "5"]).await;
    assert_eq!(history["records"][0]["revision"], 2);
    assert_eq!(history["records"][1]["comment"], "first");

    // Bad input: a typo in the file, an invalid rule, a stale CAS. Each is
    // a clear error (exit 1) and writes nothing.
    std::fs::write(
        &file,
        format!("services:\n  - {{ name: echo, id: 1, strategy: round_robin, endpoint: [{b}] }}\n"),
    )
    .expect("write typo");
    let typo = s.gwctl(Some(ADMIN_TOKEN), &["apply", "-f", f]).await;
    assert_eq!(typo.code, 1);
    assert!(typo.stderr.contains("endpoint"), "{}", typo.stderr);
    let invalid = s
        .gwctl(
            Some(ADMIN_TOKEN),
            &[
                "routes",
                "set",
                "x",
                "--id",
                "9",
                "--strategy",
                "round_robin",
                "--endpoint",
                "no-port",
            ],
        )
        .await;
    assert_eq!(invalid.code, 1);
    assert!(
        invalid.stderr.contains("invalid argument") && invalid.stderr.contains("no-port"),
        "{}",
        invalid.stderr
    );
    // An unknown strategy never leaves gwctl: the model's parser names the
    // valid ones.
    let bogus = s
        .gwctl(
            Some(ADMIN_TOKEN),
            &["routes", "set", "x", "--id", "9", "--strategy", "bogus"],
        )
        .await;
    assert_eq!(bogus.code, 1);
    assert!(
        bogus.stderr.contains("unknown strategy \"bogus\""),
        "{}",
        bogus.stderr
    );
    assert!(invalid.stderr.contains("host:port"), "{}", invalid.stderr);
    let stale = s
        .gwctl(
            Some(ADMIN_TOKEN),
            &["realms", "delete", "7", "--expected-revision", "1"],
        )
        .await;
    assert_eq!(stale.code, 1);
    assert!(
        stale.stderr.contains("failed precondition"),
        "{}",
        stale.stderr
    );
    assert_eq!(revision(&s).await, 2);

    // Rollback writes revision 1's bundle as revision 3.
    s.gwctl(Some(ADMIN_TOKEN), &["rollback", "1"]).await.ok();
    assert_eq!(revision(&s).await, 3);
    let realms = s.json(READ_TOKEN, &["realms", "list"]).await;
    assert_eq!(realms["realms"], serde_json::json!({}));

    // Cluster overrides: written as a revision, listed with their expiry.
    s.gwctl(
        Some(OPERATE_TOKEN),
        &[
            "overrides",
            "set",
            "--service",
            "1",
            "--user",
            "9",
            "--target",
            &b,
            "--ttl",
            "10m",
            "--reason",
            "vip",
        ],
    )
    .await
    .ok();
    let o = s.json(READ_TOKEN, &["overrides", "list"]).await;
    assert_eq!(o["revision"], 4);
    assert_eq!(o["overrides"][0]["user_id"], 9);
    assert_eq!(o["overrides"][0]["reason"], "vip");
    assert!(o["overrides"][0]["expires_at_ms"].as_u64() > Some(0), "{o}");
    let local_only = s
        .gwctl(
            Some(OPERATE_TOKEN),
            &[
                "overrides",
                "set",
                "--service",
                "1",
                "--session",
                "5",
                "--target",
                &b,
            ],
        )
        .await;
    assert_eq!(local_only.code, 1);
    assert!(
        local_only.stderr.contains("--local"),
        "{}",
        local_only.stderr
    );
}

#[tokio::test]
async fn auth_and_target_errors_say_what_to_do() {
    let s = Stack::start().await;
    let none = s.gwctl(None, &["routes", "list"]).await;
    assert_eq!(none.code, 1);
    assert!(none.stderr.contains("unauthenticated"), "{}", none.stderr);
    assert!(none.stderr.contains("GWCTL_TOKEN"), "{}", none.stderr);
    let low = s
        .gwctl(Some(READ_TOKEN), &["routes", "delete", "echo"])
        .await;
    assert_eq!(low.code, 1);
    assert!(low.stderr.contains("permission denied"), "{}", low.stderr);
    // No address anywhere.
    let bare = run_gwctl(&s.home, &[], &["fleet", "list"]).await;
    assert_eq!(bare.code, 1);
    assert!(bare.stderr.contains("--controlplane"), "{}", bare.stderr);
    // A context that does not exist, and a config with a typo.
    let cfg = scratch("gwctl", "yaml");
    std::fs::write(
        &cfg,
        format!("current_context: local\ncontexts:\n  - {{ name: local, controlplane: {}, token_file: /nonexistent/token }}\n", s.cp),
    )
    .expect("write config");
    let c = cfg.to_str().expect("utf8");
    let missing = run_gwctl(
        &s.home,
        &[],
        &["--config", c, "--context", "prod", "fleet", "list"],
    )
    .await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no context named \"prod\""),
        "{}",
        missing.stderr
    );
    assert!(missing.stderr.contains("local"), "{}", missing.stderr);
    let no_token = run_gwctl(&s.home, &[], &["--config", c, "fleet", "list"]).await;
    assert_eq!(no_token.code, 1);
    assert!(
        no_token.stderr.contains("/nonexistent/token"),
        "{}",
        no_token.stderr
    );
    // The context's token file works.
    let token = scratch("token", "txt");
    std::fs::write(&token, format!("{READ_TOKEN}\n")).expect("token");
    std::fs::write(
        &cfg,
        format!("current_context: local\ncontexts:\n  - {{ name: local, controlplane: {}, token_file: {} }}\n", s.cp, token.display()),
    )
    .expect("write config");
    run_gwctl(&s.home, &[], &["--config", c, "fleet", "list"])
        .await
        .ok();
    std::fs::write(&cfg, "contexts:\n  - { name: local, controlplne: x }\n").expect("typo");
    let typo = run_gwctl(&s.home, &[], &["--config", c, "fleet", "list"]).await;
    assert_eq!(typo.code, 1);
    assert!(typo.stderr.contains("controlplne"), "{}", typo.stderr);
    // Nothing listening.
    let dead = dead_addr().to_string();
    let down = run_gwctl(
        &s.home,
        &[("GWCTL_CONTROLPLANE", dead.clone())],
        &["--timeout", "2s", "fleet", "list"],
    )
    .await;
    assert_eq!(down.code, 1);
    assert!(
        down.stderr.contains("cannot reach the control plane"),
        "{}",
        down.stderr
    );
    // A usage error is exit 1 too (2 means "diff" or "not complete").
    let usage = run_gwctl(&s.home, &[], &["routes", "frobnicate"]).await;
    assert_eq!(usage.code, 1, "{}", usage.stderr);
    let completions = run_gwctl(&s.home, &[], &["completions", "bash"]).await.ok();
    assert!(
        completions.stdout.contains("gwctl"),
        "{}",
        completions.stdout
    );
}

#[tokio::test]
async fn sessions_overrides_and_a_drain_with_wait() {
    let s = Stack::start().await;
    let b = s.backend.addr.to_string();
    s.route_echo(&[]).await;
    s.gwctl(Some(READ_TOKEN), &["rollout", "status", "--wait"])
        .await
        .ok();

    let mut c = Client::tcp(s.gw.client).await;
    let w = c.hello(42, 0).await;
    assert_eq!(c.call_text(1, 1, "hi").await, "hi");
    let id = w.session.rsplit(':').next().expect("id").to_string();

    let list = s
        .json(READ_TOKEN, &["sessions", "list", "--user", "42"])
        .await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["sessions"][0]["session_id"].to_string(), id);
    assert_eq!(list["sessions"][0]["bindings"][0]["endpoint"], b.as_str());
    let get = s
        .gwctl(Some(READ_TOKEN), &["sessions", "get", &id])
        .await
        .ok();
    assert!(get.stdout.contains("user:"), "{}", get.stdout);
    let unknown = s
        .gwctl(Some(READ_TOKEN), &["sessions", "get", "12345"])
        .await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("not found"), "{}", unknown.stderr);

    // The cluster directory knows the owner.
    eventually("directory has the session", || async {
        let o = s
            .gwctl(Some(READ_TOKEN), &["-o", "json", "sessions", "lookup", &id])
            .await;
        o.code == 0 && o.json()["sessions"][0]["gateway_id"] == "gw-ctl"
    })
    .await;

    // Push reaches the client.
    let push = s
        .json(
            OPERATE_TOKEN,
            &[
                "sessions",
                "push",
                "--user",
                "42",
                "--service",
                "1",
                "--payload",
                "hello",
            ],
        )
        .await;
    assert_eq!(push["delivered"].as_array().map(Vec::len), Some(1));
    let f = c.recv_kind(gg_proto::Kind::Data).await;
    assert_eq!(&f.payload[..], b"hello");

    // A local override, seen by explain; then deleted.
    let o = s
        .json(
            ADMIN_TOKEN,
            &[
                "overrides",
                "set",
                "--local",
                "--service",
                "1",
                "--user",
                "7",
                "--target",
                &b,
                "--reason",
                "debug",
                "--ttl",
                "10m",
            ],
        )
        .await;
    let oid = o["id"].as_str().expect("override id").to_string();
    let why = s
        .json(
            READ_TOKEN,
            &["routes", "explain", "--service", "1", "--user", "7"],
        )
        .await;
    assert_eq!(why["override_id"], oid.as_str());
    s.gwctl(Some(ADMIN_TOKEN), &["overrides", "delete", "--local", &oid])
        .await
        .ok();
    let gone = s.json(READ_TOKEN, &["overrides", "list", "--local"]).await;
    assert_eq!(gone["overrides"], serde_json::json!([]));
    let backends = s.json(READ_TOKEN, &["backends", "list"]).await;
    assert_eq!(backends["backends"][0]["endpoint"], b.as_str());

    // Kick needs a target; a dry run kicks nothing.
    let vague = s.gwctl(Some(OPERATE_TOKEN), &["sessions", "kick"]).await;
    assert_eq!(vague.code, 1);
    let dry = s
        .json(
            OPERATE_TOKEN,
            &["sessions", "kick", "--user", "42", "--dry-run"],
        )
        .await;
    assert_eq!(dry["matched"], 1);
    assert_eq!(dry["kicked"], 0);

    // Drain through the control plane and follow it to the end: the client
    // is told to go away, does not, and is closed at the deadline.
    let drain = s
        .gwctl(
            Some(ADMIN_TOKEN),
            &[
                "-o",
                "json",
                "drain",
                "start",
                "gw-ctl",
                "--deadline",
                "1s",
                "--spread",
                "0s",
                "--wait",
                "--wait-timeout",
                "20s",
            ],
        )
        .await
        .ok();
    let d = drain.json();
    assert_eq!(d["phase"], "done", "{d}");
    assert_eq!(d["sessions_at_start"], 1);
    assert_eq!(d["force_closed"], 1);
    assert!(
        drain.stderr.contains("sessions left"),
        "progress on stderr: {}",
        drain.stderr
    );
    c.recv_kind(gg_proto::Kind::GoAway).await;
    let status = s.json(READ_TOKEN, &["drain", "status"]).await;
    assert_eq!(status["phase"], "done");
    let info = s.json(READ_TOKEN, &["info"]).await;
    assert_eq!(info["draining"], true);
    // A finished drain cannot be cancelled: a clear error, exit 1.
    let cancel = s.gwctl(Some(OPERATE_TOKEN), &["drain", "cancel"]).await;
    assert_eq!(cancel.code, 1);
    assert!(
        cancel.stderr.contains("no drain is running"),
        "{}",
        cancel.stderr
    );
}

#[tokio::test]
async fn everything_over_mutual_tls() {
    // One CA signs the servers' and the clients' certificates; every gRPC
    // hop (gwctl → control plane, gateway → control plane, control plane →
    // gateway admin, gwctl → gateway admin) uses TLS with client certificates.
    let dir = scratch("mtls", "d");
    std::fs::create_dir_all(&dir).expect("dir");
    make_certs(&dir);
    let f = |n: &str| dir.join(n).display().to_string();
    let (ca, cert, key, ccert, ckey) = (
        f("ca.crt"),
        f("server.crt"),
        f("server.key"),
        f("client.crt"),
        f("client.key"),
    );
    let server_tls = format!("{{ cert_file: {cert}, key_file: {key}, client_ca_file: {ca} }}");
    let client_tls = format!("{{ ca_file: {ca}, cert_file: {ccert}, key_file: {ckey} }}");
    let redis = Redis::start().await;
    let (_cp, cp) = start_cp(
        &redis,
        &format!("tls: {server_tls}\ngateway_admin_tls: {client_tls}\n"),
    )
    .await;
    let b = backend("b1").await;
    let gw = gateway_named(
        "gw-tls",
        &format!(
            "controlplane:\n  url: https://{cp}\n  token: {{ name: cp, scope: operate, value: {OPERATE_TOKEN} }}\n  snapshot_path: {}\n  tls: {client_tls}\nadmin:\n  listen: 127.0.0.1:0\n  tokens: [ {{ name: root, scope: admin, value: {ADMIN_TOKEN} }} ]\n  tls: {server_tls}\n",
            scratch("snap", "pb").display()
        ),
    )
    .await;
    let home = scratch("home", "d");
    std::fs::create_dir_all(&home).expect("home");
    let env = vec![
        ("GWCTL_CONTROLPLANE", cp.to_string()),
        ("GWCTL_GATEWAY", gw.admin.expect("admin").to_string()),
        ("GWCTL_TOKEN", ADMIN_TOKEN.to_string()),
        ("GWCTL_CA_FILE", ca.clone()),
        ("GWCTL_CERT_FILE", ccert.clone()),
        ("GWCTL_KEY_FILE", ckey.clone()),
    ];
    let ep = b.addr.to_string();
    run_gwctl(
        &home,
        &env,
        &[
            "routes",
            "set",
            "echo",
            "--id",
            "1",
            "--strategy",
            "round_robin",
            "--endpoint",
            &ep,
        ],
    )
    .await
    .ok();
    // The gateway got it over its TLS stream to the control plane.
    let r = run_gwctl(&home, &env, &["-o", "json", "rollout", "status", "--wait"])
        .await
        .ok()
        .json();
    assert_eq!(r["gateways"][0]["status"], "applied", "{r}");
    let info = run_gwctl(&home, &env, &["-o", "json", "info"])
        .await
        .ok()
        .json();
    assert_eq!(info["gateway_id"], "gw-tls");
    // The control plane reaches the gateway's admin API over mutual TLS.
    let d = run_gwctl(
        &home,
        &env,
        &[
            "-o",
            "json",
            "drain",
            "start",
            "gw-tls",
            "--deadline",
            "30s",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(d["gateway_id"], "gw-tls");
    // Without a client certificate the servers refuse the connection.
    let no_cert: Vec<(&str, String)> = env
        .iter()
        .filter(|(k, _)| !k.ends_with("CERT_FILE") && !k.ends_with("KEY_FILE"))
        .cloned()
        .collect();
    let refused = run_gwctl(&home, &no_cert, &["--timeout", "3s", "fleet", "list"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    // And plaintext is refused as well.
    let plain: Vec<(&str, String)> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("GWCTL_C") || *k == "GWCTL_CONTROLPLANE")
        .filter(|(k, _)| *k != "GWCTL_KEY_FILE")
        .cloned()
        .collect();
    let refused = run_gwctl(&home, &plain, &["--timeout", "3s", "fleet", "list"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
}

/// Contexts are managed by gwctl itself (`context set | use | list`), and
/// `version` reports each server's version through the current context;
/// `completions` still works as an alias of `completion`.
#[tokio::test]
async fn contexts_version_and_completion() {
    let s = Stack::start().await;
    let config = s.home.join("gwctl.yaml");
    let env = |_: &[()]| {
        vec![
            ("GWCTL_CONFIG", config.display().to_string()),
            ("GWCTL_TOKEN", ADMIN_TOKEN.to_string()),
        ]
    };
    let cp = format!("http://{}", s.cp);
    let admin = format!("http://{}", s.gw.admin.expect("admin"));
    run_gwctl(
        &s.home,
        &env(&[]),
        &[
            "context",
            "set",
            "here",
            "--controlplane",
            &cp,
            "--gateway",
            &admin,
        ],
    )
    .await
    .ok();
    run_gwctl(
        &s.home,
        &env(&[]),
        &[
            "context",
            "set",
            "elsewhere",
            "--controlplane",
            "http://127.0.0.1:1",
        ],
    )
    .await
    .ok();
    // The first context became current; a second `set` does not steal it.
    let list = run_gwctl(&s.home, &env(&[]), &["-o", "json", "context", "list"])
        .await
        .ok()
        .json();
    let current: Vec<&str> = list["contexts"]
        .as_array()
        .expect("contexts")
        .iter()
        .filter(|c| c["current"] == true)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(current, ["here"]);
    let v = run_gwctl(&s.home, &env(&[]), &["-o", "json", "version"])
        .await
        .ok()
        .json();
    let me = v["gwctl"].as_str().expect("gwctl version");
    assert_eq!(v["controlplane"].as_str(), Some(me));
    assert_eq!(v["gateway"].as_str(), Some(me));
    // Switching contexts: the other control plane does not answer, and
    // `version` says so instead of failing.
    run_gwctl(&s.home, &env(&[]), &["context", "use", "elsewhere"])
        .await
        .ok();
    let v = run_gwctl(&s.home, &env(&[]), &["-o", "json", "version"])
        .await
        .ok()
        .json();
    assert!(
        v["controlplane"]
            .as_str()
            .expect("cp")
            .starts_with("unreachable"),
        "{v}"
    );
    let e = run_gwctl(&s.home, &env(&[]), &["context", "use", "nowhere"]).await;
    assert_eq!(e.code, 1);
    assert!(
        e.stderr.contains("no context named \"nowhere\""),
        "{}",
        e.stderr
    );
    for name in ["completion", "completions"] {
        let out = run_gwctl(&s.home, &env(&[]), &[name, "bash"]).await.ok();
        assert!(out.stdout.contains("_gwctl"), "{name}");
    }
}

/// `gwctl import go-gateway` against a real Redis seeded the way the Go
/// gateway keeps its routing: a dry run shows the change (exit 2) and
/// writes nothing, `--yes` applies it with ids from the file, kept or
/// assigned; broken sources are refused with what is wrong.
#[tokio::test]
async fn import_from_the_go_gateways_redis() {
    let s = Stack::start().await;
    let go = Redis::start().await;
    let rules = r#"{"chat":{"strategy":"consistent_hash","endpoints":["10.1.0.1:9001","10.1.0.2:9001"]},"login":{"strategy":"round_robin","endpoints":["10.1.0.3:9000"]},"battle":{"strategy":"realm","endpoints":[]}}"#;
    assert!(
        go.cmd(&["SET", "game-gateway:routing:rules", rules])
            .await
            .contains("OK")
    );
    go.cmd(&[
        "HSET",
        "game-gateway:realm:mapping",
        "1",
        "10.2.0.1:7000",
        "2",
        "10.2.0.2:7000",
    ])
    .await;
    let ids = s.home.join("ids.yaml");
    std::fs::write(&ids, "chat: 10\n").expect("write ids");
    let url = go.url();
    let ids_arg = ids.to_str().expect("utf8");
    let before = revision(&s).await;

    let dry = s
        .gwctl(
            Some(ADMIN_TOKEN),
            &["import", "go-gateway", "--redis", &url, "--ids", ids_arg],
        )
        .await;
    assert_eq!(dry.code, 2, "{}{}", dry.stdout, dry.stderr);
    for needle in [
        "+ service chat",
        "+ service login",
        "+ realm 1",
        "gets id",
        "--yes",
    ] {
        assert!(dry.stdout.contains(needle), "{needle}: {}", dry.stdout);
    }
    assert_eq!(revision(&s).await, before, "a dry run writes nothing");

    s.gwctl(
        Some(ADMIN_TOKEN),
        &[
            "import",
            "go-gateway",
            "--redis",
            &url,
            "--ids",
            ids_arg,
            "--yes",
        ],
    )
    .await
    .ok();
    let routes = s.json(READ_TOKEN, &["routes", "list"]).await;
    let text = routes.to_string();
    assert!(
        text.contains("\"chat\"") && text.contains("10.1.0.2:9001"),
        "{text}"
    );
    let id_of = |name: &str| {
        routes["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|x| x["name"] == name)
            .and_then(|x| x["id"].as_u64())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(id_of("chat"), 10, "from --ids");
    assert!(id_of("login") != 10 && id_of("battle") != 10);
    let realms = s.json(READ_TOKEN, &["realms", "list"]).await.to_string();
    assert!(realms.contains("10.2.0.2:7000"), "{realms}");
    // Again: nothing left to change, ids kept.
    let again = s
        .gwctl(
            Some(ADMIN_TOKEN),
            &["import", "go-gateway", "--redis", &url],
        )
        .await
        .ok();
    assert!(again.stdout.contains("no changes"), "{}", again.stdout);

    // Broken sources.
    let empty = Redis::start().await;
    let out = s
        .gwctl(
            Some(ADMIN_TOKEN),
            &["import", "go-gateway", "--redis", &empty.url()],
        )
        .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("has no game-gateway:routing:rules"),
        "{}",
        out.stderr
    );
    empty
        .cmd(&["SET", "game-gateway:routing:rules", "{not json"])
        .await;
    let out = s
        .gwctl(
            Some(ADMIN_TOKEN),
            &["import", "go-gateway", "--redis", &empty.url()],
        )
        .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("is not the Go gateway's JSON rules"),
        "{}",
        out.stderr
    );
    empty
        .cmd(&[
            "SET",
            "game-gateway:routing:rules",
            r#"{"x":{"strategy":"least_conn","endpoints":["a:1"]}}"#,
        ])
        .await;
    let out = s
        .gwctl(
            Some(ADMIN_TOKEN),
            &["import", "go-gateway", "--redis", &empty.url()],
        )
        .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("least_conn"), "{}", out.stderr);
    let out = s
        .gwctl(
            Some(ADMIN_TOKEN),
            &[
                "import",
                "go-gateway",
                "--redis",
                &format!("redis://{}", dead_addr()),
            ],
        )
        .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot reach the Go gateway's Redis"),
        "{}",
        out.stderr
    );
}

/// `gwctl rooms join|members|list|publish|history|leave` and
/// `presence watch --room` against a real control plane and gateway.
#[tokio::test]
async fn rooms_and_presence_by_room() {
    let s = Stack::start().await;
    s.route_echo(&[]).await;
    s.gwctl(Some(READ_TOKEN), &["rollout", "status", "--wait"])
        .await
        .ok();
    let mut c = Client::tcp(s.gw.client).await;
    let w = c.hello(5, 0).await;
    let id = w.session.rsplit(':').next().expect("id").to_string();
    eventually("the directory has the session", || async {
        s.gwctl(Some(OPERATE_TOKEN), &["rooms", "join", &id, "guild-7"])
            .await
            .code
            == 0
    })
    .await;
    let m = s.json(READ_TOKEN, &["rooms", "members", "guild-7"]).await;
    assert_eq!(m["total"], 1);
    assert_eq!(m["members"][0]["session_id"].to_string(), id);
    assert_eq!(m["members"][0]["gateway_id"], "gw-ctl");
    let p = s
        .json(
            OPERATE_TOKEN,
            &[
                "rooms",
                "publish",
                "guild-7",
                "hello guild",
                "--service",
                "1",
                "--request-id",
                "r1",
            ],
        )
        .await;
    assert_eq!(
        (p["seq"].as_u64(), p["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    let again = s
        .json(
            OPERATE_TOKEN,
            &[
                "rooms",
                "publish",
                "guild-7",
                "hello guild",
                "--request-id",
                "r1",
            ],
        )
        .await;
    assert_eq!(again["duplicate"], true);
    let f = c.recv_kind(gg_proto::Kind::Message).await;
    assert_eq!(
        gg_proto::room::parse_message(&f.payload).expect("message"),
        ("guild-7", 1, &b"hello guild"[..])
    );
    let l = s
        .json(READ_TOKEN, &["rooms", "list", "--prefix", "guild"])
        .await;
    assert_eq!(l["rooms"][0]["name"], "guild-7");
    assert_eq!(
        (
            l["rooms"][0]["members"].as_u64(),
            l["rooms"][0]["seq"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let h = s.json(READ_TOKEN, &["rooms", "history", "guild-7"]).await;
    assert_eq!(h["messages"][0]["payload"], "hello guild");
    // The presence stream from the oldest kept, only this room: the join.
    let watch = s
        .gwctl(
            Some(READ_TOKEN),
            &[
                "-o", "json", "presence", "watch", "--cursor", "0", "--room", "guild-7", "--limit",
                "1",
            ],
        )
        .await
        .ok();
    let ev: Value =
        serde_json::from_str(watch.stdout.lines().next().expect("a line")).expect("json");
    assert_eq!(
        (ev["kind"].as_str(), ev["room"].as_str()),
        (Some("join"), Some("guild-7"))
    );
    s.gwctl(Some(OPERATE_TOKEN), &["rooms", "leave", &id, "guild-7"])
        .await
        .ok();
    assert_eq!(
        s.json(READ_TOKEN, &["rooms", "members", "guild-7"]).await["total"],
        0
    );
    // Refusals: a bad name, a read token publishing, an unknown session.
    let bad = s
        .gwctl(Some(OPERATE_TOKEN), &["rooms", "publish", "no spaces", "x"])
        .await;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("invalid room name"), "{}", bad.stderr);
    let denied = s
        .gwctl(Some(READ_TOKEN), &["rooms", "publish", "guild-7", "x"])
        .await;
    assert!(denied.stderr.contains("scope"), "{}", denied.stderr);
    let unknown = s
        .gwctl(Some(OPERATE_TOKEN), &["rooms", "join", "4242", "guild-7"])
        .await;
    assert!(
        unknown.stderr.contains("not in the directory"),
        "{}",
        unknown.stderr
    );
}
