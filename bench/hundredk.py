"""100,000 idle WebSocket connections against `realtime serve --workers N --broker redis://`.

Every process here may open 20,000 files, the server's workers included, so one process
cannot hold 100,000 sockets and neither can `--workers auto` (2 on this machine): the
server runs the smallest N whose workers stay under the limit with a margin for the
kernel's uneven `SO_REUSEPORT` spread (`worker_count`), and the load generator runs
enough processes (each on its own loopback source address, 127.0.0.x) for the same
reason. Each client subscribes to one channel; one `POST /api/publish` then reaches all
of them (through Redis to the workers that did not take the request).

Reported: the time to connect and subscribe all, the RSS growth of all the server's
processes per connection (RSS after minus RSS at rest after a warm-up), the most sockets
one worker held, the fan-out time of the one publish, and how many received it.

    bench/.venv/bin/python bench/hundredk.py [--n 100000] [--workers N] [--timeout 600]

Also `bench/run.sh --scenario hundredk` (not part of a default run). Bounded: every
phase has a deadline; the server and the load generator are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time
import uuid
from typing import Any

import harness
import loadgen
from harness import Config
from systems import API_KEY, OURS_BIN, OURS_ENV, System, _ours_version, ours_publisher

REDIS = "redis://127.0.0.1:6379/0?prefix=b100k-{}:"
#: sockets one process may open here (the machine's per-process limit), and what a
#: process keeps for itself (listening socket, broker, pipes, files)
FD_LIMIT = 20_000
RESERVE = 500
#: connections per load-generator process
PER_GENERATOR = 17_000
#: rounds of connecting again the clients whose attempt failed (a loaded machine)
RETRIES = 3


def worker_count(n: int) -> int:
    """The fewest workers that hold `n` sockets under the open-file limit, with 10 % spare
    for the kernel's hash spread of `SO_REUSEPORT` (it is not exactly even)."""
    return math.ceil(n * 1.1 / (FD_LIMIT - RESERVE))


def server(workers: int) -> System:
    broker = REDIS.format(uuid.uuid4().hex[:6])
    every_core = ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
    return System(
        name=f"workers-{workers}", label=f"--workers {workers}, Redis", dialect="ours",
        publisher=ours_publisher, version=_ours_version, ours=True, env=OURS_ENV,
        cores=every_core,
        command=lambda port: [OURS_BIN, "serve", "--port", str(port), "--api-key", API_KEY,
                              "--log-level", "warning", "--workers", str(workers),
                              "--broker", broker])


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def measure(n: int, workers: int, timeout: float) -> dict[str, Any]:
    """Connect `n`, publish once, measure; every phase bounded by `timeout`."""
    system = server(workers)
    generators = max(1, math.ceil(n / PER_GENERATOR))
    out: dict[str, Any] = {"connections_wanted": n, "workers": workers,
                           "load_generators": generators}
    with harness.running(system, Config(), "hundredk") as srv:
        gen = loadgen.LoadGen(generators, None)
        try:
            time.sleep(2.0)  # the workers start, listen and join through Redis
            harness.connect(gen, srv, system, 200)  # warm-up: every code path once
            gen.close()
            time.sleep(2.0)
            base = srv.rss_kib()
            t0 = time.monotonic()
            c = gen.connect(harness.HOST, srv.port, n, system.dialect, "ws", timeout=timeout,
                            concurrency=64)
            out["failed_first"], out["errors"] = c["failed"], c["errors"][:3]
            for _ in range(RETRIES):  # a client gives up after 30 s: those try once more
                if c["ok"] >= n:
                    break
                again = gen.connect(harness.HOST, srv.port, n - c["ok"], system.dialect, "ws",
                                    timeout=timeout, concurrency=64)
                c["ok"] += again["ok"]
            out["connect_seconds"] = round(time.monotonic() - t0, 1)
            out["connected"] = c["ok"]
            time.sleep(3.0)
            rss = srv.rss_kib()
            pids = harness.process_tree(srv.pid)
            out["server_processes"] = len(pids)
            out["base_rss_mib"] = round(base / 1024, 1)
            out["rss_mib"] = round(rss / 1024, 1)
            out["kib_per_connection"] = round((rss - base) / max(1, c["ok"]), 2)
            out["most_sockets_in_one_process"] = max(open_files(pid) for pid in pids)
            out["alive"] = srv.alive()

            async def fan_out() -> dict[str, Any]:
                pub = await harness.open_publisher(system, srv)
                gen.reset("count", -1)
                r = await loadgen.paced(pub, gen, c["ok"], 1, 1, drain=timeout)
                pub.close()
                return r

            r = asyncio.run(fan_out())
            out["fanout_seconds"] = round(r["seconds"], 3)
            out["delivered"] = r["delivered"]
            out["all_delivered"] = r["delivered"] == c["ok"] == n
        finally:
            gen.close()
            gen.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="connections")
    parser.add_argument("--workers", type=int, help="server workers (default: the fewest "
                        "that stay under the open-file limit)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per phase")
    args = parser.parse_args()
    workers = args.workers or worker_count(args.n)
    print(json.dumps(measure(args.n, workers, args.timeout), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
