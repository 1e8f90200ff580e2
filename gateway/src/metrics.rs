//! Prometheus metric families, registered once. Hot paths hold pre-resolved
//! handles ([`ProtoMetrics`]) picked when a connection is classified, so no
//! label lookup happens per frame. Every family is listed in `docs/metrics.md`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Client protocol, a label on per-connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Tcp,
    Ws,
    /// One HTTP call (an ephemeral session).
    Http,
    /// An HTTP session (`POST /v1/sessions`, events over SSE): counted with
    /// HTTP, but a real session (directory, idle timeout).
    HttpSession,
}

impl Protocol {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Ws => "ws",
            Protocol::Http | Protocol::HttpSession => "http",
        }
    }
}

/// Handles for one protocol, resolved once.
#[derive(Clone)]
pub(crate) struct ProtoMetrics {
    pub(crate) connections: IntCounter,
    pub(crate) active: IntGauge,
    pub(crate) frames_in: IntCounter,
    pub(crate) bytes_in: IntCounter,
    pub(crate) frames_out: IntCounter,
    pub(crate) bytes_out: IntCounter,
}

pub(crate) struct Metrics {
    registry: Registry,
    tcp: ProtoMetrics,
    ws: ProtoMetrics,
    http: ProtoMetrics,
    pub(crate) sessions_active: IntGauge,
    /// Client bytes held against `limits.max_buffered_bytes` (set at scrape).
    pub(crate) buffered_bytes: IntGauge,
    /// Client connections on each worker thread (set at scrape).
    pub(crate) worker_connections: IntGaugeVec,
    pub(crate) sessions_opened: IntCounter,
    pub(crate) rejections: IntCounterVec,
    pub(crate) closes: IntCounterVec,
    pub(crate) errors_sent: IntCounterVec,
    pub(crate) http_responses: IntCounterVec,
    pub(crate) backend_connections: IntGaugeVec,
    pub(crate) backend_errors: IntCounterVec,
    pub(crate) backend_frames_in: IntCounterVec,
    pub(crate) backend_frames_out: IntCounterVec,
    pub(crate) backend_unknown_session: IntCounterVec,
    pub(crate) drain_goaway_sent: IntCounter,
    pub(crate) drain_force_closed: IntCounter,
    pub(crate) tls_reloads: IntCounterVec,
    /// PING → PONG on pooled backend connections, by endpoint.
    pub(crate) backend_rtt: HistogramVec,
    /// HTTP calls: the body sent to the backend → its reply, by service and result.
    pub(crate) http_call_seconds: HistogramVec,
    /// Building and swapping in a config revision from the control plane.
    pub(crate) config_apply_seconds: Histogram,
    /// The config revision this gateway serves (control-plane mode).
    pub(crate) config_revision: IntGauge,
    /// Addresses of each `dns://` endpoint in the last good answer.
    pub(crate) discovery_addresses: IntGaugeVec,
    /// Admin API calls, by method (the runtime's gRPC layer observes them).
    pub(crate) admin_rpc_seconds: HistogramVec,
    pub(crate) rooms: RoomMetrics,
    /// Requests proxied to HTTP services, by service and outcome.
    pub(crate) http_proxy_requests: IntCounterVec,
    pub(crate) http_proxy_retries: IntCounterVec,
    pub(crate) http_proxy_seconds: HistogramVec,
}

/// Rooms on this gateway.
pub(crate) struct RoomMetrics {
    /// Rooms with at least one member here.
    pub(crate) active: IntGauge,
    /// Room memberships of sessions here.
    pub(crate) members: IntGauge,
    /// PUBLISH frames and admin publishes accepted here.
    pub(crate) published: IntCounter,
    /// Room messages received for delivery (once per gateway, not per member).
    pub(crate) messages: IntCounter,
    /// MESSAGE frames queued to members.
    pub(crate) deliveries: IntCounter,
    /// Recoveries from the history (a gap, or a stream that came back).
    pub(crate) recoveries: IntCounter,
    /// Messages skipped because the history no longer kept them.
    pub(crate) lost: IntCounter,
}

/// Buckets for network round trips and calls: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let v = IntCounter::new(name, help).expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let v = IntGauge::new(name, help).expect("valid metric definition");
    r.register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

/// The per-protocol families, resolved for TCP, WebSocket and HTTP.
fn protocols(r: &Registry) -> [ProtoMetrics; 3] {
    let family = |name: &str, help: &str| counter_vec(r, name, help, &["protocol"]);
    let conns = family(
        "gg_connections_total",
        "Client connections accepted, by sniffed protocol.",
    );
    let active = gauge_vec(
        r,
        "gg_connections_active",
        "Client connections open now, by protocol.",
        &["protocol"],
    );
    let frames_in = family("gg_frames_in_total", "Frames received from clients.");
    let bytes_in = family("gg_bytes_in_total", "Frame bytes received from clients.");
    let frames_out = family("gg_frames_out_total", "Frames sent to clients.");
    let bytes_out = family("gg_bytes_out_total", "Frame bytes sent to clients.");
    [Protocol::Tcp, Protocol::Ws, Protocol::Http].map(|p| {
        let l = [p.name()];
        ProtoMetrics {
            connections: conns.with_label_values(&l),
            active: active.with_label_values(&l),
            frames_in: frames_in.with_label_values(&l),
            bytes_in: bytes_in.with_label_values(&l),
            frames_out: frames_out.with_label_values(&l),
            bytes_out: bytes_out.with_label_values(&l),
        }
    })
}

impl Metrics {
    // `expect` here: metric definitions are static; a failure is a programming
    // error caught by the first test that builds a gateway.
    #[allow(clippy::expect_used)]
    pub(crate) fn new() -> Metrics {
        let r = Registry::new();
        let [tcp, ws, http] = protocols(&r);
        let sessions_active = gauge(&r, "gg_sessions_active", "Sessions open now.");
        let sessions_opened = counter(
            &r,
            "gg_sessions_opened_total",
            "Sessions opened (HELLO accepted or HTTP call).",
        );
        let drain_goaway_sent = counter(
            &r,
            "gg_drain_goaway_total",
            "GOAWAY frames sent while draining.",
        );
        let drain_force_closed = counter(
            &r,
            "gg_drain_force_closed_total",
            "Sessions still open at the drain deadline and closed by the gateway.",
        );
        let buffered_bytes = gauge(
            &r,
            "gg_client_buffered_bytes",
            "Client bytes buffered in large frames and HTTP bodies, against limits.max_buffered_bytes.",
        );
        let worker_connections = gauge_vec(
            &r,
            "gg_worker_connections",
            "Client connections placed on each worker thread (a connection stays on one from accept to close).",
            &["worker"],
        );
        let rooms = RoomMetrics {
            active: gauge(
                &r,
                "gg_rooms_active",
                "Rooms with at least one member on this gateway.",
            ),
            members: gauge(
                &r,
                "gg_room_members",
                "Room memberships of sessions on this gateway.",
            ),
            published: counter(
                &r,
                "gg_room_published_total",
                "Room publishes accepted here (backend PUBLISH frames; the control plane numbers and fans them out).",
            ),
            messages: counter(
                &r,
                "gg_room_messages_total",
                "Room messages received for delivery to members here (once per message, not per member).",
            ),
            deliveries: counter(
                &r,
                "gg_room_deliveries_total",
                "MESSAGE frames queued to room members here.",
            ),
            recoveries: counter(
                &r,
                "gg_room_recoveries_total",
                "Room recoveries from the room's history: a gap noticed in a room's sequence, or every room again after the control-plane stream came back.",
            ),
            lost: counter(
                &r,
                "gg_room_lost_total",
                "Room messages skipped because the history no longer kept them when a gap was recovered.",
            ),
        };
        let m = Metrics {
            http_proxy_requests: counter_vec(
                &r,
                "gg_http_proxy_requests_total",
                "Requests proxied to HTTP services (http_routes), by service and outcome: 2xx/3xx/4xx/5xx (the backend's status), timeout, shed (max_concurrency), unavailable.",
                &["service", "code"],
            ),
            http_proxy_retries: counter_vec(
                &r,
                "gg_http_proxy_retries_total",
                "Retries of idempotent requests to HTTP services (after a failure to connect or a 502/503/504), by service.",
                &["service"],
            ),
            http_proxy_seconds: histogram_vec(
                &r,
                "gg_http_proxy_duration_seconds",
                "Proxied HTTP requests until the backend's response head (or the gateway's error), by service.",
                &["service"],
                LATENCY_BUCKETS,
            ),
            rooms,
            buffered_bytes,
            worker_connections,
            tcp,
            ws,
            http,
            sessions_active,
            sessions_opened,
            drain_goaway_sent,
            drain_force_closed,
            tls_reloads: counter_vec(
                &r,
                "gg_tls_reloads_total",
                "Client-port certificate reloads (SIGHUP), by result (ok, error).",
                &["result"],
            ),
            rejections: counter_vec(
                &r,
                "gg_rejections_total",
                "Connections or requests refused by a limit, by reason.",
                &["reason"],
            ),
            closes: counter_vec(
                &r,
                "gg_session_closes_total",
                "Sessions and connections closed, by close code name.",
                &["code"],
            ),
            errors_sent: counter_vec(
                &r,
                "gg_errors_sent_total",
                "ERROR frames sent to clients, by error code name.",
                &["code"],
            ),
            http_responses: counter_vec(
                &r,
                "gg_http_responses_total",
                "HTTP responses on the client port, by status.",
                &["status"],
            ),
            backend_connections: gauge_vec(
                &r,
                "gg_backend_connections",
                "Pooled backend connections up now.",
                &["endpoint"],
            ),
            backend_errors: counter_vec(
                &r,
                "gg_backend_errors_total",
                "Backend connection failures, by endpoint and kind (connect, timeout, io, protocol, queue_full).",
                &["endpoint", "kind"],
            ),
            backend_frames_in: counter_vec(
                &r,
                "gg_backend_frames_in_total",
                "Frames received from backends.",
                &["endpoint"],
            ),
            backend_frames_out: counter_vec(
                &r,
                "gg_backend_frames_out_total",
                "Frames sent to backends.",
                &["endpoint"],
            ),
            backend_unknown_session: counter_vec(
                &r,
                "gg_backend_unknown_session_total",
                "Backend frames for a session not open on that connection (dropped).",
                &["endpoint"],
            ),
            backend_rtt: histogram_vec(
                &r,
                "gg_backend_rtt_seconds",
                "Round trip of the heartbeat PING on pooled backend connections, by endpoint.",
                &["endpoint"],
                LATENCY_BUCKETS,
            ),
            http_call_seconds: histogram_vec(
                &r,
                "gg_http_call_duration_seconds",
                "HTTP calls from the whole body sent to the backend to its reply, by service and result (ok, error).",
                &["service", "result"],
                LATENCY_BUCKETS,
            ),
            config_apply_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "gg_config_apply_duration_seconds",
                        "Time to build and swap in a config revision from the control plane.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid metric definition");
                r.register(Box::new(h.clone()))
                    .expect("metric registered once");
                h
            },
            discovery_addresses: gauge_vec(
                &r,
                "gg_discovery_addresses",
                "Addresses each dns:// service endpoint resolved to in its last good answer.",
                &["endpoint"],
            ),
            config_revision: gauge(
                &r,
                "gg_config_revision",
                "Config revision this gateway serves (control-plane mode; 0 standalone or before the first).",
            ),
            admin_rpc_seconds: histogram_vec(
                &r,
                "gg_admin_rpc_duration_seconds",
                "Admin API calls until the response starts (a stream: until it opens), by method.",
                &["method"],
                gg_runtime::grpc::RPC_BUCKETS,
            ),
            registry: r,
        };
        // Every reason is exported from the start (at 0), so alerts and
        // dashboards see the series before the first refusal.
        for reason in crate::error::Reject::ALL {
            m.rejections.with_label_values(&[reason.label()]);
        }
        m
    }

    /// Pre-resolved handles for one protocol.
    pub(crate) fn proto(&self, p: Protocol) -> &ProtoMetrics {
        match p {
            Protocol::Tcp => &self.tcp,
            Protocol::Ws => &self.ws,
            Protocol::Http | Protocol::HttpSession => &self.http,
        }
    }

    /// Counts a refused connection or request.
    pub(crate) fn reject(&self, reason: crate::error::Reject) {
        self.rejections.with_label_values(&[reason.label()]).inc();
    }

    /// Prometheus text exposition of every family.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod doc_tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Metric families named in docs/metrics.md tables (`a` / `b` cells too).
    fn documented() -> BTreeSet<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let doc = std::fs::read_to_string(root.join("docs/metrics.md")).expect("docs");
        doc.lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| {
                let first = l.split('|').nth(1).unwrap_or_default().to_string();
                first
                    .split('`')
                    .filter(|t| t.starts_with("gg_") || t.starts_with("cp_"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Metric names registered in the sources of both processes.
    fn registered() -> BTreeSet<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut out = BTreeSet::new();
        for f in ["gateway/src/metrics.rs", "controlplane/src/lib.rs"] {
            let text = std::fs::read_to_string(root.join(f)).expect("source");
            for piece in text.split('"').skip(1).step_by(2) {
                if (piece.starts_with("gg_") || piece.starts_with("cp_"))
                    && !piece.ends_with('_')
                    && piece.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    out.insert(piece.to_string());
                }
            }
        }
        out
    }

    #[test]
    fn every_metric_is_documented() {
        let (doc, reg) = (documented(), registered());
        let missing: Vec<_> = reg.difference(&doc).collect();
        let stale: Vec<_> = doc.difference(&reg).collect();
        assert!(
            missing.is_empty(),
            "registered but not in docs/metrics.md: {missing:?}"
        );
        assert!(
            stale.is_empty(),
            "in docs/metrics.md but not registered: {stale:?}"
        );
        // And what a gateway exposes is among them.
        let m = super::Metrics::new();
        for line in m.render().lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                assert!(doc.contains(name), "{name} is exposed but not documented");
            }
        }
    }

    /// Family → (type, label names) from the docs/metrics.md tables.
    fn documented_families() -> std::collections::BTreeMap<String, (String, Vec<String>)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let doc = std::fs::read_to_string(root.join("docs/metrics.md")).expect("docs");
        let ticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        let mut out = std::collections::BTreeMap::new();
        for l in doc.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = l.split('|').collect();
            let labels = ticked(cells[3]);
            for name in ticked(cells[1]) {
                out.insert(name, (cells[2].trim().to_string(), labels.clone()));
            }
        }
        out
    }

    /// A label matcher: (label, value, is a regex).
    type Matcher = (String, String, bool);

    /// What a PromQL expression uses: selectors (name, matchers) and
    /// grouping labels.
    #[derive(Default)]
    struct Uses {
        selectors: Vec<(String, Vec<Matcher>)>,
        grouping: Vec<String>,
    }

    impl promql_parser::util::ExprVisitor for Uses {
        type Error = String;
        fn pre_visit(&mut self, e: &promql_parser::parser::Expr) -> Result<bool, String> {
            use promql_parser::label::MatchOp;
            use promql_parser::parser::{Expr, LabelModifier};
            let vs = match e {
                Expr::VectorSelector(vs) => Some(vs),
                Expr::MatrixSelector(ms) => Some(&ms.vs),
                Expr::Aggregate(a) => {
                    if let Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) = &a.modifier
                    {
                        self.grouping.extend(l.labels.iter().cloned());
                    }
                    None
                }
                _ => None,
            };
            if let Some(vs) = vs {
                let matchers = vs
                    .matchers
                    .matchers
                    .iter()
                    .map(|m| {
                        let regex = matches!(m.op, MatchOp::Re(_) | MatchOp::NotRe(_));
                        (m.name.clone(), m.value.clone(), regex)
                    })
                    .collect();
                self.selectors
                    .push((vs.name.clone().unwrap_or_default(), matchers));
            }
            Ok(true)
        }
    }

    /// Every expression of the Grafana dashboard and the alert rules in
    /// deploy/observability parses as PromQL and names documented metrics
    /// (histogram series by their `_bucket`/`_sum`/`_count`), labels those
    /// metrics have, and label values the docs define.
    #[test]
    fn deploy_observability_names_real_metrics() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability");
        let families = documented_families();
        let docs = ["docs/metrics.md", "docs/protocol.md"]
            .map(|f| std::fs::read_to_string(root.join("../..").join(f)).expect("docs"))
            .join("\n");
        // Labels every scraped series has, from Prometheus itself.
        let target_labels = ["instance", "job"];
        let mut exprs: Vec<(String, String)> = Vec::new();
        let dash: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("grafana-dashboard.json")).expect("dashboard"),
        )
        .expect("dashboard json");
        let panels = dash["panels"].as_array().expect("panels");
        for p in panels.iter().filter(|p| p["type"] != "row") {
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
            for t in targets {
                exprs.push((
                    format!("panel {}", p["title"]),
                    t["expr"].as_str().expect("expr").into(),
                ));
            }
        }
        let rules: yaml_serde::Value = yaml_serde::from_str(
            &std::fs::read_to_string(root.join("alerts.yaml")).expect("alerts"),
        )
        .expect("alerts yaml");
        let mut alerts = 0;
        for g in rules["groups"].as_sequence().expect("groups") {
            for r in g["rules"].as_sequence().expect("rules") {
                alerts += 1;
                let name = r["alert"].as_str().expect("alert name");
                assert!(
                    r["annotations"]["summary"].is_string(),
                    "{name}: no summary"
                );
                exprs.push((
                    format!("alert {name}"),
                    r["expr"].as_str().expect("expr").into(),
                ));
            }
        }
        assert!(
            alerts >= 10 && exprs.len() >= 30,
            "{alerts} alerts, {} expressions",
            exprs.len()
        );
        let mut used = std::collections::BTreeSet::new();
        for (what, expr) in &exprs {
            let e = expr
                .replace("$__rate_interval", "5m")
                .replace("$instance", "x");
            let ast = promql_parser::parser::parse(&e)
                .unwrap_or_else(|err| panic!("{what}: {expr:?} is not PromQL: {err}"));
            let mut uses = Uses::default();
            promql_parser::util::walk_expr(&mut uses, &ast).expect("walk");
            let mut labels_here: Vec<&str> = target_labels.to_vec();
            for (name, matchers) in &uses.selectors {
                if name == "up" {
                    continue;
                }
                let (family, suffix_ok) = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|sfx| name.strip_suffix(sfx).map(|b| (b, *sfx)))
                    .filter(|(b, _)| families.get(*b).is_some_and(|f| f.0 == "histogram"))
                    .map_or((name.as_str(), ""), |(b, s)| (b, s));
                let Some((kind, labels)) = families.get(family) else {
                    panic!("{what}: {name} is not a documented metric");
                };
                assert!(
                    kind != "histogram" || !suffix_ok.is_empty(),
                    "{what}: histogram {name} is queried without _bucket/_sum/_count"
                );
                used.insert(family.to_string());
                labels_here.extend(labels.iter().map(String::as_str));
                if suffix_ok == "_bucket" {
                    labels_here.push("le");
                }
                for (label, value, regex) in matchers {
                    assert!(
                        target_labels.contains(&label.as_str())
                            || labels.contains(label)
                            || (label == "le" && suffix_ok == "_bucket"),
                        "{what}: {name} has no label {label}"
                    );
                    if target_labels.contains(&label.as_str()) {
                        continue;
                    }
                    let values: Vec<&str> = if *regex {
                        value.split('|').collect()
                    } else {
                        vec![value]
                    };
                    for v in values {
                        let word = |t: &str| {
                            t.match_indices(v).any(|(i, _)| {
                                let ok = |c: Option<char>| {
                                    !c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                                };
                                ok(t[..i].chars().next_back())
                                    && ok(t[i + v.len()..].chars().next())
                            })
                        };
                        assert!(
                            word(&docs),
                            "{what}: {label}={v:?} is no value the docs define"
                        );
                    }
                }
            }
            for g in &uses.grouping {
                assert!(
                    labels_here.contains(&g.as_str()),
                    "{what}: groups by {g}, which none of its metrics has"
                );
            }
        }
        // The dashboard shows every family the gateway and control plane export.
        let shown: Vec<_> = families.keys().filter(|f| !used.contains(*f)).collect();
        assert!(
            shown.is_empty(),
            "neither dashboard nor alerts use {shown:?}"
        );
    }
}
