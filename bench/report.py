#!/usr/bin/env python3
"""Turns bench/compare's results (JSON lines) into docs/benchmarks.md and an SVG chart.

usage: report.py RESULTS.jsonl OUT.md OUT.svg MACHINE PEERS COMMAND
Medians over rounds; ratios against the peers measured in the same run.
"""
import json
import statistics
import sys

results_path, md_path, svg_path, machine, peers, command = sys.argv[1:7]
ALL = [json.loads(l) for l in open(results_path) if l.strip()]
for r in ALL:
    r.setdefault("threads", 1)
THREADS = sorted({r["threads"] for r in ALL}) or [1]
TARGETS = ["direct", "gateway", "nginx", "haproxy"]
rows = ALL  # the rows of the thread count being reported (set below)


def med(target, scenario, key):
    vals = [r[key] for r in rows if r["target"] == target and r["scenario"] == scenario]
    return statistics.median(vals) if vals else None


def syscalls_per_rt(target):
    vals = []
    for r in rows:
        if r["target"] == target and r["scenario"] == "closed1" and r.get("syscalls") and r["throughput"]:
            # perf counted over warm-up + measured window; requests over the window.
            window = r["seconds"] + 1.0
            vals.append(r["syscalls"] / (r["throughput"] * window))
    return statistics.median(vals) if vals else None


def fmt(v, spec="{:.0f}"):
    return "n/a" if v is None else spec.format(v)


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


lines = ["# Benchmarks", ""]
lines += [
    "Produced by `bench/compare` (load generator: `gwbench`; the report: `bench/report.py`). "
    "All paths were measured in the same run, interleaved round by round, with the same echo backend "
    "(`sample-backend`) behind them. The gateway speaks the client protocol (HELLO/WELCOME, then DATA). "
    "Direct, nginx and HAProxy carry the backend protocol (HELLO and OPEN, then DATA), so every path runs "
    "the same DATA echo. Figures are medians over the rounds.",
    "",
    f"- Machine: {machine}. The load generator, the backend and the proxy share these cores.",
    f"- Peers: nginx {peers.split(',')[0].strip()} (`stream`, `worker_processes N`), HAProxy {peers.split(',')[1].strip()} (`mode tcp`, `nbthread N`); the gateway runs `--worker-threads N`: every proxy gets the same threads, for N = {', '.join(map(str, THREADS))}.",
    f"- Command: `{command}`",
    "- The raw results are in `docs/benchmarks.jsonl`.",
    "",
    "![throughput](benchmarks.svg)",
    "",
    "## Results",
]
for N in THREADS:
    rows = [r for r in ALL if r["threads"] == N]
    lines += ["", f"### N = {N} thread{'s' if N > 1 else ''} each", "",
              "| scenario | metric | direct | gateway | nginx | haproxy |",
              "|---|---|---|---|---|---|"]
    for sc, label in [("closed1", "closed loop, 100 sessions × 1 in flight, 64 B"), ("closed16", "closed loop, 100 sessions × 16 in flight"), ("open20k", "open loop, 20k msg/s"), ("churn", "connect churn (new session + 1 round trip)")]:
        for key, name, spec in [("throughput", "throughput /s", "{:.0f}"), ("p50_us", "p50 µs", "{:.0f}"), ("p99_us", "p99 µs", "{:.0f}"), ("p999_us", "p99.9 µs", "{:.0f}"), ("sut_cpu_us_per_req", "CPU µs/req (proxy)", "{:.1f}")]:
            if sc == "churn" and key == "p999_us":
                continue
            vals = [fmt(med(t, sc, key), spec) for t in TARGETS]
            lines.append(f"| {label} | {name} | " + " | ".join(vals) + " |")
    vals = [fmt(syscalls_per_rt(t), "{:.2f}") if t != "direct" else "—" for t in TARGETS]
    lines.append("| closed loop, 1 in flight | syscalls per round trip (proxy process) | " + " | ".join(vals) + " |")
    for sc, label in [("idle", "idle TCP sessions (fresh process)"), ("idle_ws", "idle WebSocket sessions (fresh process)")]:
        vals = [fmt(med(t, sc, "rss_per_session"), "{:.0f} B") if med(t, sc, "rss_per_session") is not None else "—" for t in TARGETS]
        lines.append(f"| {label} | RSS per session | " + " | ".join(vals) + " |")

    # Goals at equal threads (issue 15), against the best peer of this run.
    def best(sc, key, low=False):
        vals = [v for v in (med("nginx", sc, key), med("haproxy", sc, key)) if v is not None]
        return (min(vals) if low else max(vals)) if vals else None
    def by_round(target, sc, key):
        return {r["round"]: r[key] for r in rows if r["target"] == target and r["scenario"] == sc and "round" in r}

    def rounds(sc, key, low=False, peers=("nginx", "haproxy")):
        # The goal's ratio in each round, against the best peer of that
        # round (the paths are interleaved, so a round shares conditions).
        gw = by_round("gateway", sc, key)
        out = []
        for rd, v in sorted(gw.items()):
            p = [x for x in (by_round(t, sc, key).get(rd) for t in peers) if x is not None]
            if p and (min(p) if low else max(p)):
                out.append(v / (min(p) if low else max(p)))
        return out
    gw1, gw16 = med("gateway", "closed1", "throughput"), med("gateway", "closed16", "throughput")
    cpu1, cpu16 = med("gateway", "closed1", "sut_cpu_us_per_req"), med("gateway", "closed16", "sut_cpu_us_per_req")
    churn_gw, churn_ha = med("gateway", "churn", "throughput"), med("haproxy", "churn", "throughput")
    goals = [
        ("1 in flight: throughput ≥ 1.6× the best peer", ratio(gw1, best("closed1", "throughput")), 1.6, True, rounds("closed1", "throughput")),
        ("16 in flight: throughput ≥ 1.2× the best peer", ratio(gw16, best("closed16", "throughput")), 1.2, True, rounds("closed16", "throughput")),
        ("1 in flight: CPU per round trip ≤ 0.6× the best peer", ratio(cpu1, best("closed1", "sut_cpu_us_per_req", True)), 0.6, False, rounds("closed1", "sut_cpu_us_per_req", True)),
        ("16 in flight: CPU per round trip ≤ 0.8× the best peer", ratio(cpu16, best("closed16", "sut_cpu_us_per_req", True)), 0.8, False, rounds("closed16", "sut_cpu_us_per_req", True)),
        ("idle TCP, fresh gateway: ≤ 1.5 KB per session (KB)", (med("gateway", "idle", "rss_per_session") or 0) / 1024 or None, 1.5, False, []),
        ("idle WebSocket, fresh gateway: ≤ 2 KB per session (KB)", (med("gateway", "idle_ws", "rss_per_session") or 0) / 1024 or None, 2.0, False, []),
        ("connect churn: ≥ 1.5× HAProxy", ratio(churn_gw, churn_ha), 1.5, True, rounds("churn", "throughput", peers=("haproxy",))),
    ]
    lines += ["", f"Goals at N = {N} (measured: the ratio of the medians; rounds: the ratio within each round, against that round's best peer, and how many rounds met the goal):", "",
              "| goal | measured | met | rounds: lowest–highest | rounds met |", "|---|---|---|---|---|"]
    for name, v, target, higher, per in goals:
        ok = (lambda x: x >= target) if higher else (lambda x: x <= target)
        met = "n/a" if v is None else ("yes" if ok(v) else "no")
        spread = f"{min(per):.3f}–{max(per):.3f}" if per else "—"
        count = f"{sum(1 for x in per if ok(x))} of {len(per)}" if per else "—"
        lines.append(f"| {name} | {fmt(v, '{:.3f}')} | {met} | {spread} | {count} |")
rows = [r for r in ALL if r["threads"] == THREADS[0]]
lines.append("")
# Hand-written sections (before/after, control plane, scale-out) live below
# this marker in the existing file and are kept.
MARKER = "<!-- hand-written below: kept by bench/report.py -->"
try:
    old = open(md_path).read()
    kept = old[old.index(MARKER):] if MARKER in old else MARKER + "\n"
except FileNotFoundError:
    kept = MARKER + "\n"
open(md_path, "w").write("\n".join(lines) + "\n" + kept)

# Grouped bar chart: closed-loop throughput per path.
groups = [("closed1", "1 in flight"), ("closed16", "16 in flight")]
colors = {"direct": "#999999", "gateway": "#2b7bb9", "nginx": "#3a9d23", "haproxy": "#d9822b"}
vmax = max([med(t, g, "throughput") or 0 for t in TARGETS for g, _ in groups] + [1])
W, H, pad, bw = 640, 320, 50, 28
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<text x="{W/2}" y="18" text-anchor="middle" font-size="14">Closed-loop throughput (median, requests/s)</text>']
for gi, (g, label) in enumerate(groups):
    x0 = pad + gi * (W - pad) / len(groups)
    for ti, t in enumerate(TARGETS):
        v = med(t, g, "throughput") or 0
        h = (H - 90) * v / vmax
        x = x0 + ti * (bw + 8)
        svg.append(f'<rect x="{x:.0f}" y="{H - 50 - h:.0f}" width="{bw}" height="{h:.0f}" fill="{colors[t]}"/>')
        svg.append(f'<text x="{x + bw/2:.0f}" y="{H - 54 - h:.0f}" text-anchor="middle" font-size="10">{v/1000:.0f}k</text>')
    svg.append(f'<text x="{x0 + 2*(bw+8):.0f}" y="{H - 32}" text-anchor="middle">{label}</text>')
for ti, t in enumerate(TARGETS):
    svg.append(f'<rect x="{pad + ti*120}" y="{H - 18}" width="10" height="10" fill="{colors[t]}"/><text x="{pad + ti*120 + 14}" y="{H - 9}">{t}</text>')
svg.append("</svg>")
open(svg_path, "w").write("\n".join(svg) + "\n")
