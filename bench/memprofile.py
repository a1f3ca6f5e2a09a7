"""Where our memory per idle WebSocket connection goes (tracemalloc, in-process).

    /work/main/.venv/bin/python bench/memprofile.py [--n 5000] [--top 25]

Runs ``RealtimeServer`` in this process with tracemalloc on, connects N subscribed idle
WebSocket clients from the load generator (forked first, on the other core), and prints
the allocation sites that grew, per connection. tracemalloc sees Python allocations only;
the rest of the RSS growth (uvloop/libuv handles and buffers, allocator slack) is shown as
the difference. Run it with the project's venv (it imports realtime_asyncio).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tracemalloc
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--port", type=int, default=7290)
    ap.add_argument("--frames", type=int, default=6, help="traceback depth to group by")
    args = ap.parse_args()
    os.sched_setaffinity(0, {0})
    gen = loadgen.LoadGen(max(1, -(-args.n // 5000)), 1)  # fork before anything else
    try:
        import uvloop

        uvloop.run(run(gen, args))
    finally:
        gen.close()
        gen.shutdown()
    return 0


async def run(gen: loadgen.LoadGen, args: argparse.Namespace) -> None:
    from realtime_asyncio.server import RealtimeServer

    tracemalloc.start(args.frames)
    server = RealtimeServer(host="127.0.0.1", port=args.port, api_key="k", log_level="warning",
                            connection_rate=0, subscribe_rate=0, message_rate=0, api_rate=0)
    await server.start()
    loop = asyncio.get_running_loop()

    def connect(n: int) -> dict:
        return gen.connect("127.0.0.1", args.port, n, "ours")

    await loop.run_in_executor(None, connect, 100)  # warm-up: pools, caches, code paths
    await loop.run_in_executor(None, gen.close)
    await asyncio.sleep(1.0)
    gc.collect()
    rss0 = loadgen.rss_kib(os.getpid())
    snap0 = tracemalloc.take_snapshot()
    r = await loop.run_in_executor(None, connect, args.n)
    await asyncio.sleep(1.5)
    gc.collect()
    rss1 = loadgen.rss_kib(os.getpid())
    snap1 = tracemalloc.take_snapshot()
    n = r["ok"]
    filters = [tracemalloc.Filter(False, tracemalloc.__file__),
               tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    diff = snap1.filter_traces(filters).compare_to(snap0.filter_traces(filters), "traceback")
    traced = sum(d.size_diff for d in diff)
    print(f"{n} idle subscribed WebSocket connections")
    print(f"RSS growth:    {(rss1 - rss0) / n:6.2f} KiB per connection (tracemalloc on)")
    print(f"Python heap:   {traced / 1024 / n:6.2f} KiB per connection (traced)")
    print(f"the rest:      {((rss1 - rss0) * 1024 - traced) / 1024 / n:6.2f} KiB per connection "
          "(C: uvloop/libuv handles and buffers, allocator slack)\n")
    print(f"top {args.top} allocation sites, bytes per connection (objects per connection):")
    for d in diff[: args.top]:
        if d.size_diff <= 0:
            continue
        site = d.traceback[-1]  # the allocation itself (tracebacks run oldest first)
        ours = [f for f in d.traceback if "/realtime" in f.filename and f is not site]
        print(f"{d.size_diff / n:8.1f} B ({d.count_diff / n:5.2f})  "
              f"{_name(site.filename)}:{site.lineno}  {_source(site.filename, site.lineno)}")
        if ours:
            f = ours[-1]
            print(f"{'':22}from {_name(f.filename)}:{f.lineno}  {_source(f.filename, f.lineno)}")
    server.stop()
    await server.aclose()


def _name(filename: str) -> str:
    parts = Path(filename).parts
    return "/".join(parts[-2:])


def _source(filename: str, lineno: int) -> str:
    try:
        return Path(filename).read_text().splitlines()[lineno - 1].strip()[:90]
    except (OSError, IndexError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
