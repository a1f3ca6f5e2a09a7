"""docs/benchmarks.md and docs/bench/*.png from bench/results/results.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import systems

ROOT = systems.ROOT


def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "?"


def machine_info(env: dict[str, str], cfg: Any) -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError):
        pass
    hv = _cmd(["sh", "-c", "lscpu | grep -i 'hypervisor vendor'"])
    virt = f"{hv.split(':', 1)[1].strip()} virtual machine" if ":" in hv else "bare metal?"
    return {
        "cpu": model, "cores": os.cpu_count(), "memory": mem, "virtualization": virt,
        "kernel": platform.release(), "os": _cmd(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "python_ours": _cmd([str(systems.MAIN_VENV / "bin" / "python"), "-c",
                             "import platform; print(platform.python_version())"]),
        "node": systems.node_version(),
        "fd_limit": cfg.fd_limit, "server_core": cfg.server_core, "gen_core": cfg.gen_core,
        "tick_ms": cfg.tick * 1000, **env,
    }


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:,.0f}{unit}"
    if x >= 10:
        return f"{x:.1f}{unit}"
    return f"{x:.2f}{unit}"


def _ratio(x: float | None, ours: float | None, lower_is_better: bool = False) -> str:
    if x is None or not ours:
        return "—"
    return f"{x / ours:.2f}×"


def _label(results: dict[str, Any], name: str) -> str:
    v = results.get("versions", {}).get(name, {})
    return v.get("label", name)


def _order(names: set[str]) -> list[str]:
    return [n for n in systems.ORDER if n in names] + sorted(names - set(systems.ORDER))


# ------------------------------------------------------------------------------ plots

#: our own systems (the native protocol and the Pusher one): never a peer
_OURS = {name for name, s in systems.SYSTEMS.items() if s.ours}
COLORS = {"ours": "#d62728", "pusher": "#bcbd22", "raw": "#7f7f7f", "node-ws": "#2ca02c",
          "node-socketio": "#9467bd", "websockets": "#1f77b4", "python-socketio": "#ff7f0e", "ours-trio": "#8c564b",
          "ours-gevent": "#e377c2"}


def _style(name: str) -> dict[str, Any]:
    return {"color": COLORS.get(name), "linewidth": 2.8 if name == "ours" else 1.5,
            "linestyle": "--" if name == "raw" else "-", "marker": "o"}


def _plots(results: dict[str, Any], outdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    made = []
    sc = results.get("scenarios", {})
    fan = sc.get("fanout", {}).get("runs", [])
    if fan:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name in _order({r["system"] for r in fan}):
            pts = sorted((r["n"], r["rate"]) for r in fan if r["system"] == name and r.get("rate"))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], **_style(name),
                        label=_label(results, name))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("subscribers on the channel")
        ax.set_ylabel("deliveries per second")
        ax.set_title("Fan-out throughput (WebSocket)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        fig.savefig(outdir / "fanout_throughput.png", dpi=110)
        plt.close(fig)
        made.append("fanout_throughput.png")
    lat = sc.get("latency", {}).get("runs", [])
    if lat:
        import numpy as np

        heavy = [r for r in lat if r.get("rate", 0) * r.get("n", 0) >= 50_000]
        light = [r for r in lat if r.get("rate", 0) * r.get("n", 0) < 50_000]
        panels = (["p50_ms", "p99_ms"] if heavy else []) + (["light"] if light else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
        axes = np.atleast_1d(axes)
        for ax, key in zip(axes, panels, strict=False):
            if key == "light":
                names = _order({r["system"] for r in light})
                r0 = light[0]
                xs = np.arange(len(names))
                for j, (k, alpha) in enumerate((("p50_ms", 0.5), ("p99_ms", 1.0))):
                    vals = [next((r.get(k) or 0 for r in light if r["system"] == nm), 0) for nm in names]
                    ax.bar(xs + (j - 0.5) * 0.38, vals, 0.38, alpha=alpha,
                           color=[COLORS.get(nm) for nm in names], label=k[:3])
                ax.set_xticks(xs, names, rotation=35, ha="right", fontsize=8)
                ax.set_yscale("log")
                ax.set_ylabel("ms")
                ax.set_title(f"N = {r0['n']:,} at {r0['rate']:g} msg/s: p50 (pale), p99", fontsize=9)
                ax.grid(True, axis="y", which="both", alpha=0.3)
                continue
            for name in _order({r["system"] for r in heavy}):
                pts = sorted((r["n"], r[key]) for r in heavy if r["system"] == name and r.get(key))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], **_style(name),
                            label=_label(results, name))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("subscribers (× rate = 100,000 deliveries/s)")
            ax.set_ylabel("ms")
            ax.set_title(f"latency {key[:3]} at 100,000 deliveries/s", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        if heavy:
            axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(outdir / "latency.png", dpi=110)
        plt.close(fig)
        made.append("latency.png")
    mem = sc.get("memory", {}).get("runs", [])
    if mem:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name in _order({r["system"] for r in mem}):
            r = next(x for x in mem if x["system"] == name)
            pts = [(s["connections"], s["rss_kib"] / 1024) for s in r.get("steps", [])]
            if pts:
                ax.plot([0] + [p[0] for p in pts], [r["base_rss_kib"] / 1024] + [p[1] for p in pts],
                        **_style(name), label=_label(results, name))
        ax.set_xlabel("idle subscribed WebSocket connections")
        ax.set_ylabel("server RSS (MiB)")
        ax.set_title("Server memory against connections")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / "memory.png", dpi=110)
        plt.close(fig)
        made.append("memory.png")
    return made


# ----------------------------------------------------------------------------- markdown


def _cpu(r: dict[str, Any]) -> str:
    c = r.get("cores") or {}
    if not c:
        return "—"
    return " / ".join(f"{float(v):.0%}" for _, v in sorted(c.items(), key=lambda kv: int(kv[0])))


def _fanout_section(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    runs = sc.get("runs", [])
    ns = sorted({r["n"] for r in runs})
    names = _order({r["system"] for r in runs})
    by = {(r["system"], r["n"]): r for r in runs}
    out = ["Deliveries per second (messages × subscribers reached, per second from the first "
           f"publish to the last delivery of a {sc.get('duration', '?'):g} s run after a 2 s "
           "warm-up) and their ratio to ours. ✓: every subscriber received every message "
           "exactly once.", ""]
    head = "| system | " + " | ".join(f"N = {n:,}" for n in ns) + " | " + \
           " | ".join(f"× ours at {n:,}" for n in ns) + " |"
    out += [head, "|" + "---|" * (1 + 2 * len(ns))]
    for name in names:
        cells, ratios = [], []
        for n in ns:
            r = by.get((name, n), {})
            rate = r.get("rate")
            ok = " ✓" if r.get("all_delivered") else (" ✗" if rate else "")
            cells.append((_fmt(rate) + ok) if rate else ("failed" if r.get("error") else "—"))
            ratios.append(_ratio(rate, by.get(("ours", n), {}).get("rate")))
        out.append(f"| {_label(results, name)} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    out += ["", "<details><summary>run details (CPU per core: server core / load-generator "
            "core; other processes' CPU; flow-control window)</summary>", "",
            "| system | N | deliveries/s | each second | median second | published | "
            "delivered/expected | cores busy | server proc | load gen procs | others | window | "
            "sweep ms | sub procs |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        for n in ns:
            r = by.get((name, n))
            if not r:
                continue
            if r.get("error"):
                out.append(f"| {name} | {n:,} | failed: {str(r['error'])[:80]} | | | | | | | | | | | |")
                continue
            each = ", ".join(f"{x / 1000:.0f}k" for x in r.get("per_second", []))
            out.append(
                f"| {name} | {n:,} | {_fmt(r.get('rate'))} | {each} | {_fmt(r.get('median_second'))} | "
                f"{r.get('published', 0):,} | "
                f"{r.get('delivered', 0):,}/{r.get('expected', 0):,} | {_cpu(r)} | "
                f"{r.get('server_cpu', 0):.0%} | {r.get('loadgen_cpu', 0):.0%} | "
                f"{r.get('foreign_cpu', 0):.0%} | {r.get('window', '—')}→{r.get('final_window', '—')} | "
                f"{r.get('tick', 0) * 1000:.0f} | {r.get('workers', '—')} |")
    out += ["", "</details>", ""]
    return out


def _latency_section(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    runs = sc.get("runs", [])
    points = sorted({(r["n"], r["rate"]) for r in runs})
    names = _order({r["system"] for r in runs})
    by = {(r["system"], r["n"], r["rate"]): r for r in runs}
    out = ["Publish-to-receipt latency in milliseconds: the publisher stamps each message with "
           "`CLOCK_MONOTONIC` (system-wide on Linux) and each subscriber process subtracts it "
           "from the time it read the chunk that carried the message. Every delivery is a "
           "sample. Ratio: p99 against ours.", ""]
    for n, rate in points:
        out += [f"**N = {n:,} subscribers, {rate:g} messages/s** "
                f"({rate * n:,.0f} deliveries/s for {sc.get('duration', '?')} s)", "",
                "| system | min | p50 | p90 | p99 | p99.9 | max | p99 × ours | all delivered |",
                "|---|---|---|---|---|---|---|---|---|"]
        ours = by.get(("ours", n, rate), {}).get("p99_ms")
        for name in names:
            r = by.get((name, n, rate))
            if not r:
                continue
            if r.get("overloaded"):
                out.append(f"| {_label(results, name)} | overloaded: fell more than 2 s behind "
                           f"{rate:g} msg/s after {r.get('published', 0):,} messages "
                           f"{'in the warm-up' if r.get('note') else ''} | | | | | | | ✗ |")
                continue
            if r.get("error") or "p50_ms" not in r:
                out.append(f"| {_label(results, name)} | failed: {str(r.get('error', 'no samples'))[:80]} "
                           "| | | | | | | |")
                continue
            out.append(
                f"| {_label(results, name)} | {_fmt(r.get('min_ms'))} | {_fmt(r['p50_ms'])} | "
                f"{_fmt(r['p90_ms'])} | "
                f"{_fmt(r['p99_ms'])} | {_fmt(r['p999_ms'])} | {_fmt(r['max_ms'])} | "
                f"{_ratio(r['p99_ms'], ours)} | {'✓' if r.get('all_delivered') else '✗'} |")
        out.append("")
    return out


def _memory_section(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    runs = sc.get("runs", [])
    names = _order({r["system"] for r in runs})
    by = {r["system"]: r for r in runs}
    steps = sc.get("steps", [])
    out = [f"Server RSS growth per idle subscribed WebSocket connection (RSS after N connections "
           f"minus RSS at rest after a warm-up, divided by N), measured at "
           f"{', '.join(f'{s:,}' for s in steps)} connections; the slope is a least-squares fit "
           "over those steps; *held*: connections open at the end, *verified*: how many of them "
           "received one more published message. The projection to 100,000 connections "
           "extrapolates the slope (the open-file limit stops a real test there).", ""]
    at = 10000 if 10000 in steps else steps[-1] if steps else 0
    out += [f"| system | KiB/conn at {at:,} | slope KiB/conn | base RSS MiB | held | verified | "
            "RSS MiB at held | projected MiB at 100k | × ours (KiB/conn) |",
            "|---|---|---|---|---|---|---|---|---|"]
    ours_k = None
    if "ours" in by:
        ours_k = _kib_at(by["ours"], at)
    for name in names:
        r = by[name]
        if r.get("error") and not r.get("steps"):
            out.append(f"| {_label(results, name)} | failed: {str(r['error'])[:80]} | | | | | | | |")
            continue
        k = _kib_at(r, at)
        last = (r.get("steps") or [{}])[-1]
        out.append(
            f"| {_label(results, name)} | {_fmt(k)} | {_fmt(r.get('slope_kib'))} | "
            f"{r.get('base_rss_kib', 0) / 1024:.1f} | {r.get('held', 0):,} | "
            f"{r.get('verified', 0):,} | {last.get('rss_kib', 0) / 1024:.1f} | "
            f"{_fmt(r.get('projection_100k_mib'))} | {_ratio(k, ours_k)} |")
    out += ["", "<details><summary>KiB per connection at each step</summary>", "",
            "| system | " + " | ".join(f"{s:,}" for s in steps) + " |",
            "|---|" + "---|" * len(steps)]
    for name in names:
        r = by[name]
        cells = []
        for s in steps:
            st = next((x for x in r.get("steps", []) if abs(x["connections"] - s) <= s * 0.02), None)
            cells.append(_fmt(st["kib_per_conn"]) if st else "—")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "</details>", "", _MEMORY_ANALYSIS, ""]
    return out


_MEMORY_ANALYSIS = (
    "Where ours goes, per connection and by component, is measured by `bench/memprofile.py` "
    "(tracemalloc; `--sockets` counts the adapter and uvloop too): about 1.25 KB is uvloop's "
    "own transport, libuv handle and bookkeeping, which the raw server pays as well; ours is "
    "about 1.1 KB: slotted records (the Hub's connection, the WebSocket framing, the Node's "
    "transport and backlog, the adapter's protocol), two ids, the peer's address and the "
    "channel's name, with no buffer, list or dict kept while a connection is idle (wsproto "
    "reads no frames after the handshake: 1.7 KB of it used to stay). The breakdown is in "
    "*Where the time and the memory go* below.")


def _kib_at(r: dict[str, Any], at: int) -> float | None:
    for s in r.get("steps", []):
        if abs(s["connections"] - at) <= at * 0.02:
            return s["kib_per_conn"]
    return None


def _transports_section(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    if sc.get("pending"):
        return [f"*Pending:* {sc['pending']}.", ""]
    runs = sc.get("runs", [])
    out = ["Ours only: the same fan-out with subscribers on Server-Sent Events (`GET /sse?channels=bench`) "
           "and on long-polling (`GET /poll`, then `GET /poll?connection_id=…&cursor=…` in a loop, "
           "each answer carrying every message queued since the last), against WebSocket in the "
           "same run.", "",
           "| transport | N | deliveries/s | × WebSocket | all delivered |", "|---|---|---|---|---|"]
    ws = {r["n"]: r.get("rate") for r in runs if r.get("transport") == "ws"}
    for r in runs:
        if r.get("error"):
            out.append(f"| {r.get('transport')} | {r['n']:,} | failed: {str(r['error'])[:80]} | | |")
            continue
        out.append(f"| {r['transport']} | {r['n']:,} | {_fmt(r.get('rate'))} | "
                   f"{_ratio(r.get('rate'), ws.get(r['n']))} | {'✓' if r.get('all_delivered') else '✗'} |")
    out.append("")
    return out


def _loadgen_section(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    out = []
    cap = sc.get("capacity", {})
    fastest = 0.0
    fan = results.get("scenarios", {}).get("fanout", {}).get("runs", [])
    tr = results.get("scenarios", {}).get("transports", {}).get("runs", [])
    peer_best = max((r.get("rate") or 0 for r in fan if r.get("system") not in _OURS), default=0)
    fastest = max((r.get("rate") or 0 for r in fan + tr), default=0)
    if cap.get("rate"):
        out += [
            f"* **Capacity.** Against the raw server in its coalescing mode (every frame queued "
            f"for a connection written in one write per loop turn: `bench/peers/raw_uvloop.py "
            f"--batch`), the subscribers counted **{cap['rate']:,.0f} deliveries/s** "
            f"(N = {cap.get('n', 0):,}) with the load-generator core {_cpu(cap).split(' / ')[-1]} "
            f"busy and its processes at {cap.get('loadgen_cpu', 0):.0%} of a core. That is "
            f"{cap['rate'] / peer_best:.1f}× the fastest peer measured here ({peer_best:,.0f}/s)"
            + (f" and {cap['rate'] / fastest:.1f}× the fastest figure in this report "
               f"({fastest:,.0f}/s)" if fastest and fastest != peer_best else "")
            + "." if peer_best else "."]
    sc_runs = [r for r in sc.get("scaling", []) if r.get("rate")]
    if len(sc_runs) >= 2:
        a, b = sc_runs[0], sc_runs[1]
        out += [
            f"* **More subscriber processes do not raise the figure.** {_label(results, a['system'])} at "
            f"N = {a['n']:,}: {a['rate']:,.0f} deliveries/s with {a['workers']} subscriber "
            f"processes, {b['rate']:,.0f}/s with {b['workers']} ({b['rate'] / a['rate'] - 1:+.0%}, "
            "within run-to-run noise): nothing in one subscriber process held it back; "
            f"load-generator processes at {a.get('loadgen_cpu', 0):.0%} and "
            f"{b.get('loadgen_cpu', 0):.0%} of their core, the server core at "
            f"{_cpu(a).split(' / ')[0]} and {_cpu(b).split(' / ')[0]}."]
    if fan:
        worst = max((r.get("loadgen_cpu", 0) for r in fan if r.get("rate")), default=0)
        out += [f"* **Headroom in every run.** In the fan-out runs the load-generator processes "
                f"used at most {worst:.0%} of their core (per-run figures in the details tables), "
                "while the server core was busy."]
    out.append("")
    return out


def _runtimes_section(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    if sc.get("pending"):
        return [f"*Pending:* {sc['pending']}.", ""]
    runs = sc.get("runs", [])
    base = {r["n"]: r.get("rate") for r in runs if r.get("system") == "ours" and r.get("rate")}
    out = ["The same WebSocket fan-out, ours on each runtime (`realtime serve --runtime …`), in "
           "one run; ratio: the runtime's deliveries/s against asyncio's at the same N.", "",
           "| runtime | N | deliveries/s | × asyncio | all delivered |", "|---|---|---|---|---|"]
    for r in runs:
        name = "asyncio (uvloop)" if r.get("system") == "ours" else r.get("system", "?").replace("ours-", "")
        if not r.get("rate"):
            out.append(f"| {name} | {r.get('n', 0):,} | failed: {str(r.get('error', '?'))[:80]} | | |")
            continue
        out.append(f"| {name} | {r['n']:,} | {_fmt(r['rate'])} | {_ratio(r['rate'], base.get(r['n']))} | "
                   f"{'✓' if r.get('all_delivered') else '✗'} |")
    out.append("")
    return out


def _brokers_section(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    if sc.get("pending"):
        return [f"*Pending:* {sc['pending']}.", ""]
    net = sc.get("network", {})
    ns = sc.get("ns", [1, 100])
    out = [
        "Two of our nodes on each broker (`realtime serve --broker URL`, rate limits off): the "
        "publisher on node A (`POST /api/batch`: what waits goes together, up to 500 messages "
        "a call and four calls out; at a fixed rate each call carries one), N WebSocket "
        "subscribers on node B; the publisher keeps up to 20,000 messages in flight (500 in "
        "the other scenarios: this path has more stages, each taking what waits together, "
        "and the bare pair below has no limit). Against the **ceiling**: a bare publisher "
        "process and a bare subscriber "
        "process with the same client library as our driver (`bench/broker_clients.py`), "
        f"moving messages of {sc.get('payload_bytes', '?')} bytes (the size of our envelope) "
        "with the same guarantee per message as our driver. Between the two, the same pair "
        "of processes through our driver alone (`realtime_brokers`, no node), and node B "
        "alone: a bare publisher of node envelopes in place of node A. Messages/s are the "
        "median of the whole seconds after a warm-up (deliveries/s ÷ N for ours); "
        f"latency at {sc.get('latency_rate', 0):g} messages/s for {sc.get('latency_seconds', 0):g} s; "
        "*added* is cross-node p50 minus the p50 of the same run on one node (publisher and "
        "subscribers on node A); it includes the broker's own hop, which the bare clients "
        "measure (*ceiling* latency): the target's figure is what our nodes add beyond that "
        f"hop (*added* minus the ceiling's p50). Best of {sc.get('rounds', 1)} rounds per "
        "figure: other work on the machine only ever slows a run down.",
        "",
        f"Where it runs: the **machine's network namespace** (here: {net.get('netns', '?')}; "
        f"TCP {net.get('congestion_control', '?')}), not the private one of the other scenarios: "
        "the broker servers (Redis, NATS, RabbitMQ, PostgreSQL) listen on the machine's "
        "loopback, which a private namespace cannot reach. Both nodes, and the bare "
        "publisher and subscriber processes in their place, run on the server core; the load "
        "generator (HTTP publisher, WebSocket subscribers) on the other. The broker servers "
        "are the machine's own services, shared with other work and not pinned.",
        "",
    ]
    for b in sc.get("brokers", []):
        sm = b.get("summary", {})
        ceiling = (sm.get("ceiling") or {}).get("rate")
        lib = b.get("library", b.get("broker"))
        out += [f"**{b['broker']}** ({lib}; {b.get('notes', '')})", "",
                "| path | messages/s | deliveries/s | × ceiling | all delivered |",
                "|---|---|---|---|---|"]
        out.append(_broker_row(f"ceiling: {lib} alone, publisher → subscriber",
                               sm.get("ceiling"), ceiling))
        out.append(_broker_row("our driver alone (realtime_brokers), publisher → subscriber",
                               sm.get("driver"), ceiling))
        for n in ns:
            out.append(_broker_row(f"node B alone: envelope publisher → node B → N = {n:,}",
                                   (sm.get("receiving") or {}).get(str(n)), ceiling, n))
        for n in ns:
            out.append(_broker_row(f"**ours cross-node**: HTTP → node A → {b['broker']} → "
                                   f"node B → N = {n:,}", (sm.get("fanout") or {}).get(str(n)),
                                   ceiling, n))
        lat = [("ceiling (1 subscriber)", sm.get("ceiling_latency")),
               ("our driver alone (1 subscriber)", sm.get("driver_latency")),
               (f"ours cross-node (N = {sc.get('latency_n', '?')})", sm.get("latency_cross")),
               (f"ours on one node (N = {sc.get('latency_n', '?')})", sm.get("latency_single"))]
        out += ["", "| latency | p50 ms | p99 ms | max ms |", "|---|---|---|---|"]
        for label, r in lat:
            if r and r.get("p50_ms") is not None:
                out.append(f"| {label} | {_fmt(r['p50_ms'])} | {_fmt(r.get('p99_ms'))} | "
                           f"{_fmt(r.get('max_ms'))} |")
            else:
                out.append(f"| {label} | {'failed' if (r or {}).get('error') else '—'} | | |")
        added, beyond = sm.get("added_p50_ms"), sm.get("beyond_hop_ms")
        one = (sm.get("fanout") or {}).get("1") or {}
        out += ["", f"Cross-node at N = 1: **{_ratio(one.get('median_second'), ceiling)}** the "
                f"ceiling; p50 added by the second node: "
                f"{'—' if added is None else f'{added:+.2f} ms'}, of which beyond the "
                f"broker's own hop: **{'—' if beyond is None else f'{beyond:+.2f} ms'}**. "
                f"CPU in that run: node A "
                f"{one.get('publisher_node_cpu', 0):.0%}, node B {one.get('server_cpu', 0):.0%}, "
                f"other processes {one.get('foreign_cpu', 0):.0%} of a core.", ""]
        prof = (b.get("profile") or {}).get("profile")
        if prof:
            out += ["<details><summary>where the time goes (py-spy on both nodes, cross-node "
                    "at N = 1)</summary>", ""]
            for node, p in prof.items():
                if not p.get("samples"):
                    continue
                incl = [(f, x) for f, x in p.get("inclusive", []) if x < 90][:8]
                out += [f"*{node}* ({p['samples']} samples): self "
                        + ", ".join(f"{f} {x:.0f} %" for f, x in p.get("self", [])[:6])
                        + "; inclusive " + ", ".join(f"{f} {x:.0f} %" for f, x in incl), ""]
            out += ["</details>", ""]
    return out


def _broker_row(label: str, r: dict[str, Any] | None, ceiling: float | None,
                n: int = 0) -> str:
    """A row of scenario 6: a bare pair (n = 0: its ``rate``) or ours with n subscribers
    (its ``median_second`` deliveries, ÷ n for messages)."""
    key = "median_second" if n else "rate"
    if not r or r.get(key) is None:
        err = (r or {}).get("error")
        return f"| {label} | {'failed: ' + str(err)[:60] if err else '—'} | | | |"
    msgs = r[key] / max(n, 1)
    return (f"| {label} | {_fmt(msgs)} | {_fmt(r[key]) if n > 1 else '—'} | "
            f"{_ratio(msgs, ceiling)} | {'✓' if r.get('all_delivered') else '✗'} |")


def _pending_section(sc: dict[str, Any]) -> list[str]:
    if sc.get("pending"):
        return [f"*Pending:* {sc['pending']}.", ""]
    runs = sc.get("runs", [])
    if not runs:
        return ["No results.", ""]
    out = ["| system | N | deliveries/s | all delivered |", "|---|---|---|---|"]
    for r in runs:
        out.append(f"| {r.get('system')} | {r.get('n', 0):,} | {_fmt(r.get('rate'))} | "
                   f"{'✓' if r.get('all_delivered') else '✗'} |")
    out.append("")
    return out


def _targets(results: dict[str, Any]) -> list[str]:
    """The issue's targets, each with what this run measured."""
    sc = results.get("scenarios", {})
    rows = []

    def rate(name: str, n: int, transport: str = "ws") -> float | None:
        for key in ("fanout", "transports"):
            for r in sc.get(key, {}).get("runs", []):
                if r.get("system") == name and r.get("n") == n and \
                        r.get("transport", "ws") == transport and r.get("rate"):
                    return r["rate"]
        return None

    fan = sc.get("fanout", {}).get("runs", [])
    for n in (1000, 10000):
        ours = rate("ours", n)
        peers = {r["system"]: r["rate"] for r in fan
                 if r.get("n") == n and r.get("rate") and r["system"] not in ("raw", *_OURS)}
        raw = rate("raw", n)
        if ours is None or not peers:
            continue
        best = max(peers, key=peers.get)
        ok = ours >= 3 * peers[best] and (raw is None or ours > raw)
        rows.append(f"| fan-out at N = {n:,}: ≥ 3× the best peer and above the raw ceiling | "
                    f"ours {ours:,.0f}/s = {ours / peers[best]:.1f}× {best} ({peers[best]:,.0f}/s)"
                    + (f", {ours / raw:.1f}× raw ({raw:,.0f}/s)" if raw else "")
                    + f" | {'met' if ok else '**missed**'} |")
    mem = next((r for r in sc.get("memory", {}).get("runs", []) if r.get("system") == "ours"), None)
    if mem and mem.get("steps"):
        ks = [s["kib_per_conn"] for s in mem["steps"] if s["connections"] >= 1000]
        worst = max(ks) if ks else None
        if worst is not None:
            rows.append(f"| ≤ 4 KiB per idle WebSocket connection, flat from 1,000 to the "
                        f"open-file limit | {min(ks):.1f}–{worst:.1f} KiB/conn up to "
                        f"{mem.get('held', 0):,} connections | "
                        f"{'met' if worst <= 4 else '**missed**'} |")
    lat = sc.get("latency", {}).get("runs", [])
    for r in lat:
        if r.get("system") != "ours":
            continue
        raw = next((x for x in lat if x.get("system") == "raw" and x.get("n") == r.get("n")
                    and x.get("rate") == r.get("rate")), None)
        if not raw:
            continue
        where = f"N = {r['n']:,} at {r['rate']:g} msg/s"
        if raw.get("overloaded") or not raw.get("p99_ms"):
            if r.get("p99_ms"):
                rows.append(f"| latency p99 within 1.2× the raw ceiling's ({where}) | ours "
                            f"{r['p99_ms']:.1f} ms; raw cannot sustain this load | met |")
            continue
        if r.get("overloaded") or not r.get("p99_ms"):
            rows.append(f"| latency p99 within 1.2× the raw ceiling's ({where}) | ours "
                        f"overloaded, raw {raw['p99_ms']:.1f} ms | **missed** |")
            continue
        ok = r["p99_ms"] <= 1.2 * raw["p99_ms"]
        rows.append(f"| latency p99 within 1.2× the raw ceiling's ({where}) | ours "
                    f"{r['p99_ms']:.1f} ms, raw {raw['p99_ms']:.1f} ms "
                    f"({r['p99_ms'] / raw['p99_ms']:.2f}×) | {'met' if ok else '**missed**'} |")
    for n in (1000, 10000):
        ws, sse, poll = rate("ours", n, "ws"), rate("ours", n, "sse"), rate("ours", n, "poll")
        tr = [r for r in sc.get("transports", {}).get("runs", []) if r.get("n") == n]
        if tr:
            ws = next((r.get("rate") for r in tr if r.get("transport") == "ws"), ws)
        if ws and sse:
            rows.append(f"| SSE ≥ half of WebSocket (N = {n:,}) | {sse:,.0f}/s = "
                        f"{sse / ws:.2f}× WebSocket | {'met' if sse >= 0.5 * ws else '**missed**'} |")
        if poll:
            rows.append(f"| long-polling ≥ 20,000 deliveries/s (N = {n:,}) | {poll:,.0f}/s | "
                        f"{'met' if poll >= 20000 else '**missed**'} |")
    rt = sc.get("runtimes", {}).get("runs", [])
    for n in (1000, 10000):
        base = next((r.get("rate") for r in rt if r.get("system") == "ours" and r.get("n") == n), None)
        for r in rt:
            if r.get("system") == "ours" or r.get("n") != n or not base:
                continue
            if not r.get("rate"):
                rows.append(f"| {r['system']} within 1.5× of asyncio (N = {n:,}) | "
                            f"{str(r.get('error', 'failed'))[:60]} | **missed** |")
                continue
            ok = base / r["rate"] <= 1.5
            rows.append(f"| {r['system']} within 1.5× of asyncio (N = {n:,}) | {r['rate']:,.0f}/s, "
                        f"asyncio {base:,.0f}/s ({base / r['rate']:.2f}× slower) | "
                        f"{'met' if ok else '**missed**'} |")
    if sc.get("brokers", {}).get("pending") or "brokers" not in sc:
        rows.append("| cross-node ≥ 80 % of the broker client's ceiling, ≤ 1 ms added at p50 | "
                    "not measured yet | pending |")
    for b in sc.get("brokers", {}).get("brokers", []):
        sm = b.get("summary", {})
        ceiling = (sm.get("ceiling") or {}).get("rate")
        msgs = ((sm.get("fanout") or {}).get("1") or {}).get("median_second")
        added, beyond = sm.get("added_p50_ms"), sm.get("beyond_hop_ms")
        got = (f"ours {msgs:,.0f} msg/s = {msgs / ceiling:.2f}× {b.get('library', '')} "
               f"({ceiling:,.0f})" if msgs and ceiling else "not measured")
        got += (f"; p50 {added:+.2f} ms over one node, {beyond:+.2f} ms beyond the broker's "
                f"own hop" if added is not None and beyond is not None
                else "; p50 not measured")
        rows.append(f"| cross-node on {b['broker']}: ≥ 80 % of the client's ceiling (N = 1), "
                    f"≤ 1 ms added at p50 beyond the broker's hop | {got} | "
                    f"{'met' if sm.get('met') else '**missed**'} |")
    if not rows:
        return []
    return ["## Targets (issue 8)", "", "| target | measured | |", "|---|---|---|", *rows, ""]


def write(results: dict[str, Any], out: Path) -> None:
    import scenarios as scmod

    plots = _plots(results, out.parent / "bench")
    m = results.get("machine", {})
    sc = results.get("scenarios", {})
    vers = results.get("versions", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.sh` (see `bench/README.md`); do not edit by hand. Every figure "
        "below was measured on the machine described here, in one session, with the server "
        "pinned to one core and the load generator to the other.",
        "",
    ]
    if not vers.get("ours", {}).get("available"):
        lines += ["> **Our server is pending:** `realtime serve` was not available when this "
                  "report was generated, so only the peers were measured. Re-run "
                  "`bench/run.sh` once it exists.", ""]
    lines += [
        "## Machine",
        "",
        "| | |", "|---|---|",
        f"| CPU | {m.get('cpu', '?')}, {m.get('cores', '?')} cores ({m.get('virtualization', '?')}) |",
        f"| memory | {m.get('memory', '?')} |",
        f"| kernel | Linux {m.get('kernel', '?')} ({m.get('os', '?')}) |",
        f"| Python | {m.get('python', '?')} (harness and Python peers, `bench/.venv`); "
        f"{m.get('python_ours', '?')} (ours, `.venv`) |",
        f"| Node | {m.get('node', '?')} |",
        f"| pinning | server on core {m.get('server_core')}, load generator (publisher and "
        f"subscriber processes) on core {m.get('gen_core')} (`taskset`/`sched_setaffinity`); "
        f"nice {m.get('nice', '0')} |",
        f"| network | loopback only, {m.get('netns', '?')}; TCP congestion control "
        f"{m.get('congestion_control', '?')} |",
        f"| open files | {m.get('fd_limit', '?'):,} per process (hard limit) |" if isinstance(
            m.get("fd_limit"), int) else "| open files | ? |",
        "",
        "## Systems",
        "",
        "| system | version | how it fans out |", "|---|---|---|",
    ]
    for name in _order(set(vers)):
        v = vers[name]
        if name == "raw-batch":
            continue
        lines.append(f"| {v['label']} | {v['version']}{'' if v.get('available') else ' (not available)'} "
                     f"| {v.get('notes', '')} |")
    lines += [
        "",
        "Every system runs the same shape: N subscribers join one channel (room); one publisher "
        "sends messages whose data is a 64-byte JSON object carrying a send timestamp; the server "
        "sends each to all N. Peers receive `{\"type\":\"publish\",…}` on a WebSocket from the "
        "publisher (socket.io: a `publish` event) and forward it; ours gets `POST /api/publish`. "
        "WebSocket compression is off everywhere; keepalive pings are off on the peers.",
        "",
        "How it is measured: the subscribers are raw-socket uvloop clients (no WebSocket library) "
        "spread over several processes, each with its own loopback source address. After "
        "subscribing they do not decode frames: they count a marker that every published payload "
        "carries once, with `bytes.count`. In throughput runs they sweep their sockets at an "
        "interval (5 to 500 ms, the *sweep* column) sized from a warm-up so that one `recv` takes "
        "about four frames of a connection (one `recv` per delivery would cost the load generator "
        "as much as the server's `send`), and the publisher keeps about 250 ms of the server's "
        "work plus two sweeps in flight, so the server never waits for the publisher. In latency "
        "runs a tenth of the subscribers (100 to 1,000) read as soon as data arrives and are the "
        "sample; the others sweep and count.",
        "",
    ]
    lines += _targets(results)
    if plots:
        lines += ["## Plots", ""] + [f"![{p}](bench/{p})" for p in plots] + [""]
    order = sorted(scmod.SCENARIOS.values(), key=lambda s: (s.number == 0, s.number))
    for s in order:
        r = sc.get(s.name)
        if r is None and s.optional:
            continue
        title = f"## {s.number}. {s.title}" if s.number else f"## {s.title}"
        lines += [title, ""]
        if r is None:
            lines += ["*Not run yet.*", ""]
            continue
        if r.get("mode"):
            lines += [f"<sub>{r['mode']} run, {r.get('when', '')}, {r.get('seconds', 0):.0f} s</sub>", ""]
        if s.name == "fanout":
            lines += _fanout_section(results, r)
        elif s.name == "latency":
            lines += _latency_section(results, r)
        elif s.name == "memory":
            lines += _memory_section(results, r)
        elif s.name == "transports":
            lines += _transports_section(results, r)
        elif s.name == "loadgen":
            lines += _loadgen_section(results, r)
        elif s.name == "runtimes":
            lines += _runtimes_section(results, r)
        elif s.name == "brokers":
            lines += _brokers_section(results, r)
        elif s.optional:  # bench/hundredk.py, bench/storm.py: their own figures
            lines += ["```json", json.dumps(r, indent=1, default=str), "```", ""]
        else:
            lines += _pending_section(r)
    extra = ROOT / "bench" / "NOTES.md"
    if extra.exists():
        lines += [extra.read_text().rstrip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
