"""Where our memory per idle subscribed WebSocket connection goes, by component.

    .venv/bin/python bench/memprofile.py [--n 10000] [--top 20]            # the core, no sockets
    .venv/bin/python bench/memprofile.py --sockets [--n 5000] [--top 20]   # + asyncio, uvloop

Default (core): one process builds N idle subscribed connections through the real Node,
sans-IO, the way the benchmark's clients make them (a real WebSocket upgrade, then a
masked `subscribe` frame; the answers are pulled as an adapter would), with the server's
own configuration (`realtime serve`, rate limits off as in the benchmark). `--sockets`
runs `RealtimeServer` in this process instead and connects the load generator's clients
over loopback (forked first, on the other core), so the adapter and uvloop are counted.

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
import gc
import os
import sys
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterable
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
    ap.add_argument("--port", type=int, default=7290)
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
    from realtime_asyncio.edge import Settings, build_node_config, random_id
    from realtime_proto import Epoch, Node

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


def sockets(args: argparse.Namespace) -> int:
    import loadgen

    os.sched_setaffinity(0, {0})
    gen = loadgen.LoadGen(max(1, -(-args.n // 5000)), 1)  # fork before anything else
    try:
        import uvloop

        uvloop.run(_sockets(gen, args))
    finally:
        gen.close()
        gen.shutdown()
    return 0


async def _sockets(gen: Any, args: argparse.Namespace) -> None:
    import loadgen

    from realtime_asyncio.server import RealtimeServer

    # no keepalive pings while profiling: tracemalloc slows the loop, and clients that
    # miss a pong would be dropped halfway (the benchmark's steps are far shorter)
    server = RealtimeServer(host="127.0.0.1", port=args.port, api_key="k", log_level="error",
                            connection_rate=0, subscribe_rate=0, message_rate=0, api_rate=0,
                            heartbeat_interval=3600.0)
    await server.start()
    loop = asyncio.get_running_loop()

    def connect(n: int) -> dict[str, Any]:
        return gen.connect("127.0.0.1", args.port, n, "ours")  # type: ignore[no-any-return]

    async def settle() -> None:
        await asyncio.sleep(1.5)
        gc.collect()

    await loop.run_in_executor(None, connect, 100)  # warm-up: pools, caches, code paths
    await loop.run_in_executor(None, gen.close)
    await settle()
    # RSS with tracemalloc off (as the benchmark measures), then N more connections traced
    rss0 = loadgen.rss_kib(os.getpid())
    r = await loop.run_in_executor(None, connect, args.n)
    await settle()
    rss1 = loadgen.rss_kib(os.getpid())
    n = r["ok"]
    print(f"{n} idle subscribed WebSocket connections over loopback (RealtimeServer, uvloop)\n")
    print(f"RSS growth: {(rss1 - rss0) / n:6.2f} KiB per connection (tracemalloc off)\n")
    tracemalloc.start(args.frames)
    before = tracemalloc.take_snapshot()
    known = set(server.clients)
    r = await loop.run_in_executor(None, connect, args.n)
    await settle()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    print(f"{r['ok']} more, traced:")
    report_tracemalloc(before, after, r["ok"], args.top)
    node = server.node
    new = [c for tid, c in server.clients.items() if tid not in known][-200:]
    roots = []
    for client in new:
        transport = node._transports[client.id]
        roots.append([client, client.transport, transport,
                      node.hub._connections[transport.connection_id]])
    report_owned(roots, stop=[server, node, node.hub, loop])
    report_maps({"RealtimeServer.clients": server.clients,
                 "Node._transports": node._transports, "Node._routes": node._routes,
                 "Hub._connections": node.hub._connections,
                 "Hub._subscribers['bench']": node.hub._subscribers["bench"]},
                len(server.clients))
    server.stop()
    await server.aclose()


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
