"""`realtime serve --workers`: fan-out and idle connections with 1, 2 and `auto` workers
against the single process, on this machine (run on its own, not by `run.sh`).

* single: `realtime serve` (memory broker) pinned to the server core, as in scenario 1;
* workers 1: `--workers 1` on Redis (one process, as the single one, but its publishes go
  through the broker too);
* workers 2 and auto: `--workers N` on Redis, free to use every core.

The load generator keeps its own core (`Config.gen_core`), so on a 2-core machine two
workers share theirs with it. Publisher: `POST /api/publish` on one kept-alive connection,
so one worker publishes and every other worker gets each message through Redis.

    bench/.venv/bin/python bench/workers.py [--n 1000 --n 10000] [--memory 10000]

Prints markdown tables (for docs/benchmarks.md, via bench/NOTES.md).
"""

from __future__ import annotations

import argparse
import os
import uuid

import harness
from harness import Config
from systems import API_KEY, OURS_BIN, OURS_ENV, System, _ours_version, ours_publisher

REDIS = "redis://127.0.0.1:6379/0?prefix=bw-{}:"


def variants() -> list[System]:
    broker = REDIS.format(uuid.uuid4().hex[:6])

    def ours(name: str, label: str, *extra: str, cores: str = "") -> System:
        return System(
            name=name, label=label, dialect="ours", publisher=ours_publisher,
            version=_ours_version, ours=True, env=OURS_ENV, cores=cores,
            command=lambda port: [OURS_BIN, "serve", "--port", str(port), "--api-key",
                                  API_KEY, "--log-level", "warning", *extra])

    every_core = ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
    return [
        ours("single", "one process, memory://"),
        ours("workers-1", "--workers 1, Redis", "--workers", "1", "--broker", broker),
        ours("workers-2", "--workers 2, Redis", "--workers", "2", "--broker", broker,
             cores=every_core),
        ours("workers-auto", f"--workers auto ({len(os.sched_getaffinity(0))}), Redis",
             "--workers", "auto", "--broker", broker, cores=every_core),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="subscribers (repeatable)")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--memory", type=int, default=10_000,
                        help="idle connections for the memory figure (0: skip)")
    args = parser.parse_args()
    cfg = Config()
    counts = args.n or [1000, 10_000]
    systems = variants()
    print("| server | " + " | ".join(f"N = {n:,}: deliveries/s (all delivered)"
                                     for n in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for system in systems:
        cells = []
        for n in counts:
            r = harness.measure_fanout(system, cfg, n, args.duration, tag=f"{system.name}-{n}")
            cells.append(f"{r.get('rate', 0):,.0f} ({r.get('all_delivered')})"
                         if "rate" in r else f"error: {r.get('error')}")
        print(f"| {system.label} | " + " | ".join(cells) + " |", flush=True)
    if args.memory:
        print()
        print("| server | idle connections | RSS, all processes (MiB) | KiB per connection "
              "| one publish reached |")
        print("|---|---|---|---|---|")
        for system in systems:
            m = harness.measure_memory(system, cfg, [args.memory])
            step = m["steps"][-1] if m.get("steps") else {}
            print(f"| {system.label} | {m.get('held', 0):,} | "
                  f"{step.get('rss_kib', 0) / 1024:,.0f} | {step.get('kib_per_conn', 0):.2f} "
                  f"| {m.get('verified', 0):,} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
