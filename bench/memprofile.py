"""Where our memory per idle subscribed WebSocket connection goes, by component.

    .venv/bin/python bench/memprofile.py [--n 10000] [--top 20]            # the core, no sockets
    .venv/bin/python bench/memprofile.py --sockets [--n 5000] [--top 20]   # + asyncio, uvloop
    .venv/bin/python bench/memprofile.py --sockets --runtime trio [--rss-only]  # or gevent

Default (core): one process builds N idle subscribed connections through the real Node,
sans-IO, the way the benchmark's clients make them (a real WebSocket upgrade, then a
masked `subscribe` frame; the answers are pulled as an adapter would), with the server's
own configuration (`realtime serve`, rate limits off as in the benchmark). `--sockets`
runs `RealtimeServer` of a runtime (`--runtime`: asyncio on uvloop, trio or gevent) on a
thread of this process instead and connects the load generator's clients over loopback
(forked first, on the other core), so the adapter and its event loop are counted.

Three views, each in bytes per connection:

* tracemalloc: every Python allocation that grew, summed by component (the innermost
  frame in realtime_* or a library) and by allocation site;
* what one connection owns: the objects reachable from its records (the Node's transport
  record, the Hub's connection, the adapter's protocol) and from no other connection's,
  by type;
* RSS growth, with tracemalloc off (its own bookkeeping would count): sockets mode only,
  where it is what the benchmark measures; the core mode prints the Python heap's growth
  (`sys.getallocatedblocks` is blocks, not bytes, so tracemalloc's sum is the figure).

Run it with the project's venv (it imports realtime_asyncio for the server's settings).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from types import BuiltinFunctionType, CodeType, FunctionType, ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

SUBSCRIBE = b'{"type":"subscribe","channel":"bench"}'
#: the same connection in the Pusher protocol (`--pusher`)
PUSHER_APP = "1:bench-key:bench-secret"
PUSHER_PATH = "/app/bench-key?protocol=7&client=js&version=8.4.0"
PUSHER_SUBSCRIBE = b'{"event":"pusher:subscribe","data":{"channel":"bench"}}'


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--sockets", action="store_true", help="RealtimeServer over loopback")
    ap.add_argument("--runtime", choices=["asyncio", "trio", "gevent"], default="asyncio",
                    help="the server's runtime (with --sockets)")
    ap.add_argument("--rss-only", action="store_true",
                    help="with --sockets: the RSS figure alone, no tracemalloc pass")
    ap.add_argument("--frames", type=int, default=8, help="traceback depth kept")
    ap.add_argument("--pusher", action="store_true",
                    help="Pusher-protocol connections (/app/KEY) instead of native ones (core)")
    args = ap.parse_args()
    if args.sockets:
        return sockets(args)
    return core(args)


# ------------------------------------------------------------------------------ core


def sans_io_node(name: str, pusher: bool = False) -> Any:
    """A Node as `realtime serve` builds it (rate limits off), driven without sockets;
    with `pusher`, serving `PUSHER_APP` too."""
    from realtime_proto import Epoch, Node
    from realtime_server.edge import Settings, build_node_config, random_id

    settings = Settings(api_key="k", connection_rate=0, subscribe_rate=0, message_rate=0,
                        api_rate=0, pusher_app=(PUSHER_APP,) if pusher else ())
    return Node(build_node_config(settings, name, runtime="asyncio"),
                new_id=random_id, epoch=Epoch(1000.0, 0))


def drain(node: Any) -> None:
    """Carry out a Node's output as an adapter would: pull every socket's bytes."""
    from realtime_proto.actions import CloseTransport, Transmit

    for action in node.actions():
        if isinstance(action, Transmit):
            for transport_id in action.transport_ids:
                node.data_to_send(transport_id)
        elif isinstance(action, CloseTransport):
            node.data_to_send(action.transport_id)


def core(args: argparse.Namespace) -> int:
    from realtime_proto.testing.peers import WebSocketPeer

    node = sans_io_node("memprofile", args.pusher)
    clock = [1000.0]
    peer = WebSocketPeer()
    head = peer.handshake_bytes(PUSHER_PATH if args.pusher else "/ws")
    subscribe = (PUSHER_SUBSCRIBE if args.pusher else SUBSCRIBE).decode()

    def pump() -> None:
        drain(node)

    def connect(count: int) -> None:
        for i in range(count):
            clock[0] += 1e-4  # every connection its own `now` (floats are per connection)
            transport = node.open_connection(now=clock[0], peer=f"127.0.0.{10 + i % 200}:"
                                             f"{10000 + i % 50000}")
            node.receive_data(transport, head, now=clock[0])
            pump()
            node.receive_data(transport, peer.send_text(subscribe), now=clock[0])
            pump()

    connect(100)  # warm-up: caches, interned names, code paths
    gc.collect()
    tracemalloc.start(args.frames)
    before = tracemalloc.take_snapshot()
    first = set(node._transports)
    connect(args.n)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert node.hub.channels() == {"bench": args.n + 100}, node.hub.channels()
    kind = "Pusher-protocol" if args.pusher else "WebSocket"
    print(f"{args.n} idle subscribed {kind} connections, the core alone (Node, sans-IO)\n")
    report_tracemalloc(before, after, args.n, args.top)
    transports = [t for tid, t in node._transports.items() if tid not in first]
    roots = [[t, node.hub._connections[t.connection_id]] for t in transports[-200:]]
    report_owned(roots)
    report_maps({"Node._transports": node._transports, "Node._routes": node._routes,
                 "Hub._connections": node.hub._connections,
                 "Hub._subscribers['bench']": node.hub._subscribers["bench"]}, args.n + 100)
    return 0


# --------------------------------------------------------------------------- sockets


#: the server's settings: rate limits off as in the benchmark, and no keepalive pings
#: (tracemalloc slows the loop, and clients that miss a pong would be dropped halfway)
SERVER_OPTIONS: dict[str, Any] = {
    "host": "127.0.0.1", "port": 0, "api_key": "k", "log_level": "error",
    "connection_rate": 0, "subscribe_rate": 0, "message_rate": 0, "api_rate": 0,
    "heartbeat_interval": 3600.0}


class Serving:
    """A server of one runtime on a thread of this process, with its own loop; `call`
    runs a function on that loop and returns its result."""

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime
        self.server: Any = None
        self._schedule: Any = None
        self._stop: Any = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name=runtime, daemon=True)
        self._thread.start()
        self._started.result(60)

    def call(self, fn: Callable[[], Any]) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as error:  # for the caller
                future.set_exception(error)

        self._schedule(run)
        return future.result(60)

    def close(self) -> None:
        self._schedule(self._stop)
        self._thread.join(30)

    def _main(self) -> None:
        try:
            getattr(self, f"_run_{self.runtime}")()
        except BaseException as error:
            if not self._started.done():
                self._started.set_exception(error)
            raise

    def _run_asyncio(self) -> None:
        import uvloop

        from realtime_asyncio.server import RealtimeServer

        async def main() -> None:
            self.server = server = RealtimeServer(**SERVER_OPTIONS)
            await server.start()
            stopping = asyncio.Event()
            self._schedule = asyncio.get_running_loop().call_soon_threadsafe
            self._stop = stopping.set
            self._started.set_result(None)
            await stopping.wait()
            await server.aclose(timeout=1.0)

        uvloop.run(main())

    def _run_trio(self) -> None:
        import trio

        from realtime_trio import RealtimeServer

        async def main() -> None:
            self.server = server = RealtimeServer(**SERVER_OPTIONS)
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve)
                self._schedule = trio.lowlevel.current_trio_token().run_sync_soon
                self._stop = server.stop
                self._started.set_result(None)

        trio.run(main)

    def _run_gevent(self) -> None:
        import gevent
        import gevent.event

        from realtime_gevent import RealtimeServer

        self.server = server = RealtimeServer(**SERVER_OPTIONS)
        server.start()
        stopping = gevent.event.Event()
        self._schedule = gevent.get_hub().loop.run_callback_threadsafe
        self._stop = stopping.set
        self._started.set_result(None)
        stopping.wait()
        server.stop(timeout=1.0)

    def records(self) -> dict[Any, Any]:
        """The adapter's record per socket (asyncio's protocol, trio's and gevent's
        `_Socket`)."""
        records: dict[Any, Any] = (self.server.clients if self.runtime == "asyncio"
                                   else self.server.sockets)
        return records

    def roots(self, record: Any) -> list[Any]:
        """What one connection's memory hangs from: the adapter's record (and asyncio's
        transport), the Node's transport record, the Hub's connection."""
        node = self.server.node
        transport = node._transports[record.id]
        extra = [record.transport] if self.runtime == "asyncio" else []
        return [record, *extra, transport, node.hub._connections[transport.connection_id]]


def sockets(args: argparse.Namespace) -> int:
    import loadgen

    os.sched_setaffinity(0, {0})
    gen = loadgen.LoadGen(max(1, -(-args.n // 5000)), 1)  # fork before anything else
    try:
        serving = Serving(args.runtime)
        try:
            _sockets(serving, gen, args)
        finally:
            gen.close()
            serving.close()
    finally:
        gen.shutdown()
    return 0


def _sockets(serving: Serving, gen: Any, args: argparse.Namespace) -> None:
    import loadgen

    port = serving.call(lambda: serving.server.port)

    def connect(n: int) -> dict[str, Any]:
        r: dict[str, Any] = gen.connect("127.0.0.1", port, n, "ours")
        if r["failed"]:
            print(f"  {r['failed']} connections failed: {r['errors']}")
        return r

    def settle() -> None:
        time.sleep(1.5)
        serving.call(gc.collect)

    connect(100)  # warm-up: pools, caches, code paths
    gen.close()
    settle()
    # RSS with tracemalloc off (as the benchmark measures), then N more connections traced
    rss0 = loadgen.rss_kib(os.getpid())
    r = connect(args.n)
    settle()
    rss1 = loadgen.rss_kib(os.getpid())
    n = r["ok"]
    loop = "uvloop" if args.runtime == "asyncio" else args.runtime
    print(f"{n} idle subscribed WebSocket connections over loopback (RealtimeServer, {loop})"
          f"\n")
    print(f"RSS growth: {(rss1 - rss0) / n:6.2f} KiB per connection (tracemalloc off)\n")
    if args.rss_only:
        return
    tracemalloc.start(args.frames)
    before = tracemalloc.take_snapshot()
    known = set(serving.call(lambda: list(serving.records())))
    r = connect(args.n)
    settle()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    print(f"{r['ok']} more, traced:")
    report_tracemalloc(before, after, r["ok"], args.top)

    def inspect() -> None:
        server = serving.server
        node = server.node
        records = serving.records()
        new = [record for tid, record in records.items() if tid not in known][-200:]
        report_owned([serving.roots(record) for record in new], stop=[server, node, node.hub])
        report_maps({f"RealtimeServer.{'clients' if args.runtime == 'asyncio' else 'sockets'}":
                     records,
                     "Node._transports": node._transports, "Node._routes": node._routes,
                     "Hub._connections": node.hub._connections,
                     "Hub._subscribers['bench']": node.hub._subscribers["bench"]},
                    len(records))

    serving.call(inspect)


# --------------------------------------------------------------------------- reports


def report_tracemalloc(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int,
                       top: int) -> None:
    """Growth by component and by allocation site, per connection."""
    filters = [tracemalloc.Filter(False, tracemalloc.__file__),
               tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
               tracemalloc.Filter(False, __file__)]
    diff = after.filter_traces(filters).compare_to(before.filter_traces(filters), "traceback")
    traced = sum(d.size_diff for d in diff)
    print(f"Python heap growth (tracemalloc): {traced / n:7.1f} B per connection\n")
    components: dict[str, int] = defaultdict(int)
    counts: dict[str, float] = defaultdict(float)
    for d in diff:
        name = _component(d.traceback)
        components[name] += d.size_diff
        counts[name] += d.count_diff
    print("by component (the innermost frame in realtime_* or a library):")
    for name, size in sorted(components.items(), key=lambda kv: -kv[1]):
        if abs(size) / n >= 1:
            print(f"  {size / n:7.1f} B  {counts[name] / n:5.2f} objects  {name}")
    print(f"\ntop {top} allocation sites (B per connection, objects per connection):")
    for d in diff[:top]:
        if d.size_diff <= 0:
            continue
        site = d.traceback[-1]  # tracebacks run oldest first
        ours = [f for f in d.traceback if "/realtime" in f.filename and f is not site]
        print(f"  {d.size_diff / n:7.1f} B ({d.count_diff / n:5.2f})  "
              f"{_name(site.filename)}:{site.lineno}  {_source(site.filename, site.lineno)}")
        if ours:
            f = ours[-1]
            print(f"  {'':20}from {_name(f.filename)}:{f.lineno}  "
                  f"{_source(f.filename, f.lineno)}")
    print()


def report_owned(roots: list[list[Any]], stop: Iterable[Any] = ()) -> None:
    """The objects each connection alone reaches from its records, by type.

    The walk does not enter `stop` (the server, the loop: what every connection points
    back to) nor the large maps that hold every connection."""
    reach: Counter[int] = Counter()
    owned_by: list[dict[int, Any]] = []
    stop_ids = {id(obj) for obj in stop}
    for group in roots:
        seen = _reachable(group, stop_ids)
        owned_by.append(seen)
        reach.update(seen.keys())
    sizes: dict[str, int] = defaultdict(int)
    numbers: dict[str, int] = defaultdict(int)
    for seen in owned_by:
        for key, obj in seen.items():
            if reach[key] == 1:
                name = _type_name(obj)
                sizes[name] += sys.getsizeof(obj)
                numbers[name] += 1
    k = len(roots)
    total = sum(sizes.values())
    print(f"what one connection owns (objects no other connection reaches; "
          f"sys.getsizeof, mean of {k}): {total / k:.0f} B")
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"  {size / k:7.1f} B  {numbers[name] / k:5.2f}  {name}")
    print()


def report_maps(maps: dict[str, Any], n: int) -> None:
    """The per-connection share of the server's maps (their tables, not their contents)."""
    print(f"maps with an entry per connection ({n} entries; the table only):")
    for name, mapping in maps.items():
        print(f"  {sys.getsizeof(mapping) / n:7.1f} B  {name}")
    print()


_OPAQUE = (type, ModuleType, FunctionType, BuiltinFunctionType, CodeType)


def _reachable(roots: Iterable[Any], stop: set[int]) -> dict[int, Any]:
    seen: dict[int, Any] = {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, _OPAQUE) or obj is None:
            continue
        if isinstance(obj, dict | list | set) and len(obj) > 1000:
            continue  # a map of every connection (the server's, the Node's, the Hub's)
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return seen


def _type_name(obj: Any) -> str:
    t = type(obj)
    module = t.__module__
    return t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"


def _component(traceback: tracemalloc.Traceback) -> str:
    for frame in reversed(traceback):  # innermost first
        path = frame.filename
        if path.endswith(("asyncio/runners.py", "uvloop/__init__.py")):
            return "uvloop (C: transports, libuv handles, callbacks)"
        if path.startswith("<") or ("/python3." in path and "site-packages" not in path):
            continue  # dataclass-made __init__, the standard library
        return _name(path, with_package=True)
    return _name(traceback[-1].filename)


def _name(filename: str, with_package: bool = False) -> str:
    parts = Path(filename).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    elif with_package:
        for i, part in enumerate(parts):
            if part.startswith("realtime_"):
                parts = parts[i:]
                break
    return "/".join(parts[-3:] if with_package else parts[-2:])


def _source(filename: str, lineno: int) -> str:
    try:
        return Path(filename).read_text().splitlines()[lineno - 1].strip()[:80]
    except (OSError, IndexError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
