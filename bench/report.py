#!/usr/bin/env python3
"""Turn the JSON results of one `bench/compare` run into the comparison
section of docs/benchmarks.md (tables) and PNG plots.

Usage: report.py RESULTS_DIR DOC IMAGES_DIR

RESULTS_DIR holds `<scenario>[-<variant>]-<system>.json` files written by
`herald-bench compare --out`, plus `run.json` (machine, versions,
parameters). Only the part of DOC between the `<!-- compare:begin -->` and
`<!-- compare:end -->` markers is replaced; the markers are appended to the
end of DOC if it has none.
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SYSTEMS = ["herald", "centrifugo", "nats"]
# Herald with an ephemeral namespace (no Raft), when the run has it.
EXTRA = ["herald-ephemeral"]
COLORS = {"herald": "tab:blue", "centrifugo": "tab:orange", "nats": "tab:green",
          "herald-ephemeral": "tab:purple"}
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
P99_LIMIT_MS = 100.0


def load(results, name):
    """Per system, the `result` of `<name>-<system>.json` (None if absent)."""
    out = {}
    for system in SYSTEMS:
        path = os.path.join(results, f"{name}-{system}.json")
        try:
            with open(path) as f:
                out[system] = json.load(f)["result"]
        except (OSError, ValueError, KeyError):
            out[system] = None
    for system in EXTRA:
        path = os.path.join(results, f"{name}-{system}.json")
        if os.path.exists(path):
            with open(path) as f:
                out[system] = json.load(f)["result"]
    return out


def fmt(x, places=1):
    if x is None:
        return "–"
    if isinstance(x, (int, float)) and abs(x) >= 1000:
        return f"{x:,.0f}".replace(",", " ")
    return f"{x:.{places}f}" if isinstance(x, float) else str(x)


def sustained(steps):
    """The step with the highest delivered rate that kept p99 within the
    limit, delivered (almost) everything and had no errors."""
    good = [
        s for s in steps
        if s["latency_ms"]["p99"] <= P99_LIMIT_MS
        and (s.get("delivered_percent") or 0) >= 99.0
        and s["errors"] == 0
    ]
    return max(good, key=lambda s: s["received_per_sec"], default=None)


def ratio(a, b, higher_is_better=True):
    if not a or not b:
        return "–"
    r = a / b if higher_is_better else b / a
    return f"{r:.2f}×"


def delivery_section(results, images, name, title):
    runs = load(results, name)
    subscribers = next((r["subscribers"] for r in runs.values() if r), 0)
    title = title.format(subscribers=f"{subscribers:,}")
    lines = [f"### {title}", ""]
    best = {s: sustained(r["steps"]) if r else None for s, r in runs.items()}
    lines += [
        "| system | highest sustained delivered msg/s (p99 ≤ 100 ms) | at publications/s | p50 ms | p99 ms | server CPU % | server RSS MiB | Herald ÷ system |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    h = best.get("herald")
    for system in runs:
        b = best[system]
        if runs[system] is None:
            lines.append(f"| {system} | not run | | | | | | |")
            continue
        if b is None:
            lines.append(f"| {system} | none (first step already over the limit) | | | | | | |")
            continue
        lines.append(
            f"| {system} | {fmt(b['received_per_sec'])} | {b['rate']} | {fmt(b['latency_ms']['p50'], 2)} | "
            f"{fmt(b['latency_ms']['p99'], 2)} | {fmt(b['usage']['servers_cpu_percent'], 0)} | "
            f"{fmt(b['usage']['servers_rss_mib'])} | "
            f"{ratio(h['received_per_sec'] if h else None, b['received_per_sec']) if system in ('centrifugo', 'nats') else ''} |"
        )
    lines += ["", "Every step:", "",
              "| system | publications/s | delivered msg/s | delivered % | p50 ms | p90 ms | p99 ms | max ms | ack p50 / p99 ms | errors | server CPU % | server RSS MiB | bench CPU % | other CPU % |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for system in runs:
        r = runs[system]
        if not r:
            continue
        for s in r["steps"]:
            u = s["usage"]
            lat = s["latency_ms"]
            lines.append(
                f"| {system} | {s['rate']}{' (again)' if s.get('repeat') else ''} | {fmt(s['received_per_sec'])} | {fmt(s.get('delivered_percent'))} | "
                f"{fmt(lat['p50'], 2)} | {fmt(lat['p90'], 2)} | {fmt(lat['p99'], 2)} | {fmt(lat['max'], 1)} | "
                f"{fmt(s['ack_ms']['p50'], 2)} / {fmt(s['ack_ms']['p99'], 2)} | {s['errors']} | "
                f"{fmt(u['servers_cpu_percent'], 0)} | {fmt(u['servers_rss_mib'])} | {fmt(u['bench_cpu_percent'], 0)} | "
                f"{fmt(u.get('other_cpu_percent'), 0)} |"
            )
    fails = {s: r["connect_failures"] for s, r in runs.items() if r and r["connect_failures"]}
    if fails:
        lines += ["", f"Subscribers that could not connect: {json.dumps(fails)}"]
    image = plot_latency(runs, images, name, title)
    lines += ["", f"![{title}: latency against delivered rate](bench/{image})", ""]
    return lines, best


def plot_latency(runs, images, name, title):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system in runs:
        r = runs[system]
        if not r or not r["steps"]:
            continue
        xs = [max(s["received_per_sec"], 1) for s in r["steps"]]
        ax.plot(xs, [max(s["latency_ms"]["p99"], 0.01) for s in r["steps"]], "-o",
                color=COLORS[system], label=f"{system} p99")
        ax.plot(xs, [max(s["latency_ms"]["p50"], 0.01) for s in r["steps"]], "--s",
                color=COLORS[system], alpha=0.6, label=f"{system} p50")
    ax.axhline(P99_LIMIT_MS, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("delivered messages/s (all subscribers)")
    ax.set_ylabel("end-to-end latency, ms")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    image = f"{name}.png"
    fig.savefig(os.path.join(images, image), dpi=110)
    plt.close(fig)
    return image


def durable_section(results, images):
    runs = load(results, "durable")
    lines = ["### Durable publish (3 replicas, acknowledged)", "",
             "| system | publishers | acked publishes/s | p50 ms | p90 ms | p99 ms | max ms | errors | server CPU % | Herald ÷ system (publishes/s) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    herald = {s["publishers"]: s for s in (runs["herald"] or {}).get("steps", [])}
    for system in SYSTEMS:
        r = runs[system]
        if not r:
            lines.append(f"| {system} | not run | | | | | | | | |")
            continue
        for s in r["steps"]:
            lat = s["latency_ms"]
            errors = sum(s["errors"].values())
            h = herald.get(s["publishers"])
            lines.append(
                f"| {system} | {s['publishers']} | {fmt(s['acked_per_sec'])} | {fmt(lat['p50'], 2)} | "
                f"{fmt(lat['p90'], 2)} | {fmt(lat['p99'], 2)} | {fmt(lat['max'], 1)} | "
                f"{errors}{' ' + json.dumps(s['errors']) if errors else ''} | {fmt(s['usage']['servers_cpu_percent'], 0)} | "
                f"{ratio(h['acked_per_sec'] if h else None, s['acked_per_sec']) if system != 'herald' else ''} |"
            )
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system in SYSTEMS:
        r = runs[system]
        if not r:
            continue
        xs = [s["acked_per_sec"] for s in r["steps"]]
        ax.plot(xs, [s["latency_ms"]["p99"] for s in r["steps"]], "-o", color=COLORS[system], label=f"{system} p99")
        ax.plot(xs, [s["latency_ms"]["p50"] for s in r["steps"]], "--s", color=COLORS[system], alpha=0.6, label=f"{system} p50")
        for s in r["steps"]:
            ax.annotate(str(s["publishers"]), (s["acked_per_sec"], s["latency_ms"]["p99"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("acknowledged publishes/s (labels: publishers)")
    ax.set_ylabel("publish-ack latency, ms")
    ax.set_title("Durable publish, 3 replicas")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(images, "durable.png"), dpi=110)
    plt.close(fig)
    lines += ["", "![Durable publish: ack latency against acknowledged rate](bench/durable.png)", ""]
    return lines


def idle_section(results, images):
    runs = load(results, "idle")
    lines = ["### Idle connections: memory per connection", "",
             "| system | servers | connections held | failed | server RSS MiB | KiB / connection | marginal KiB / connection | connect ramp s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for system in SYSTEMS:
        r = runs[system]
        if not r:
            lines.append(f"| {system} | not run | | | | | | |")
            continue
        for s in r["steps"]:
            lines.append(
                f"| {system} | {r['servers']} ({r['server_processes']} processes) | {fmt(s['held'])} | {s['failed']} | "
                f"{fmt(s['servers_rss_mib'])} | {fmt(s['kib_per_connection'], 2)} | "
                f"{fmt(s['marginal_kib_per_connection'], 2)} | {fmt(s['ramp_secs'])} |"
            )
    fig, ax = plt.subplots(figsize=(7, 4.2))
    levels = sorted({s["connections"] for r in runs.values() if r for s in r["steps"]})
    width = 0.8 / len(SYSTEMS)
    for i, system in enumerate(SYSTEMS):
        r = runs[system]
        if not r:
            continue
        by = {s["connections"]: s["kib_per_connection"] for s in r["steps"]}
        xs = [j + i * width for j in range(len(levels))]
        bars = ax.bar(xs, [by.get(level, 0) for level in levels], width, color=COLORS[system], label=system)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width for j in range(len(levels))])
    ax.set_xticklabels([f"{level:,} connections" for level in levels])
    ax.set_ylabel("server RSS growth per connection, KiB")
    ax.set_title("Idle connections: memory per connection")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(images, "idle.png"), dpi=110)
    plt.close(fig)
    lines += ["", "![Idle connections: memory per connection](bench/idle.png)", ""]
    return lines


def storm_section(results):
    runs = load(results, "storm")
    lines = ["### Reconnect storm", "",
             "| system | clients | missed each | recovered | failed | all recovered after s | per client p50 / p99 / max ms | server CPU % |",
             "|---|---:|---:|---:|---|---:|---|---:|"]
    for system in SYSTEMS:
        r = runs[system]
        if not r:
            lines.append(f"| {system} | not run | | | | | | |")
            continue
        c = r["client_recover_ms"]
        lines.append(
            f"| {system} | {fmt(r['clients'])} | {r['missed']} | {fmt(r['recovered'])} | {json.dumps(r['failed']) if r['failed'] else 0} | "
            f"{fmt(r['all_recovered_secs'], 2)} | {fmt(c['p50'], 0)} / {fmt(c['p99'], 0)} / {fmt(c['max'], 0)} | "
            f"{fmt(r['usage']['servers_cpu_percent'], 0)} |"
        )
    return lines + [""]


def main():
    results, doc, images = sys.argv[1:4]
    os.makedirs(images, exist_ok=True)
    with open(os.path.join(results, "run.json")) as f:
        run = json.load(f)
    lines = [BEGIN, "", "<!-- Written by bench/compare; edits here are overwritten. -->", ""]
    lines += ["### Machine, versions, parameters", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in run["facts"].items()]
    lines += ["", "Parameters of this run (the same for every system):", ""]
    lines += [f"* {p}" for p in run["parameters"]]
    lines += [""]
    summary = []
    for name, title in run["delivery"]:
        section, best = delivery_section(results, images, name, title)
        lines += section
        summary.append((title, best))
    lines += durable_section(results, images)
    lines += idle_section(results, images)
    lines += storm_section(results)
    lines += [END]
    text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(doc, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
