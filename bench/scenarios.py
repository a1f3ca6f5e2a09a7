"""The scenario registry. Each scenario runs against a list of systems and returns a
JSON-able dict that ``report.py`` turns into a section of docs/benchmarks.md.

To add a scenario: decorate a function ``(cfg, systems) -> dict`` with ``@scenario(...)``
and give ``report.py`` a section renderer (or rely on the generic one).

Hooks left for later issues:
  * scenario 5 (``runtimes``): register a ``System`` with ``group="runtime"`` (for example
    ours on trio: ``command=lambda port: [OURS_BIN, "serve", "--runtime", "trio", ...]``);
    it is then measured beside ours on asyncio.
  * scenario 6 (``brokers``): a broker is a ``BrokerTarget`` in ``crossnode.BROKERS`` with
    its bare clients in ``broker_clients.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import broker_clients
import crossnode
import harness
from crossnode import BROKERS
from harness import Config
from systems import SYSTEMS, System


@dataclass
class Scenario:
    name: str
    number: int
    title: str
    run: Callable[[Config, list[System]], dict[str, Any]]
    in_quick: bool = True
    netns: bool = True  # False: runs in the machine's network namespace (see run.py)
    optional: bool = False  # True: run only when named (--scenario NAME)


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, number: int, title: str, in_quick: bool = True,
             netns: bool = True, optional: bool = False) -> Callable[..., Any]:
    def deco(fn: Callable[[Config, list[System]], dict[str, Any]]) -> Any:
        SCENARIOS[name] = Scenario(name, number, title, fn, in_quick, netns, optional)
        return fn
    return deco


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _safe(fn: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    try:
        return fn()
    except Exception as e:  # one system failing must not stop the run
        log(f"  {what}: FAILED {e!r}")
        return {"error": repr(e)}


def _ws_systems(systems: list[System]) -> list[System]:
    return [s for s in systems if s.group in ("ours", "peer")]


# ------------------------------------------------------------------------ scenario 1


@scenario("fanout", 1, "Fan-out over WebSocket")
def fanout(cfg: Config, systems: list[System]) -> dict[str, Any]:
    ns = [1000] if cfg.quick else [100, 1000, 10000]
    duration = 2.0 if cfg.quick else 4.0
    runs = []
    for s in _ws_systems(systems):
        for n in ns:
            log(f"fanout {s.name} N={n}")
            r = _safe(lambda s=s, n=n: harness.measure_fanout(s, cfg, n, duration), s.name)
            r.setdefault("system", s.name)
            r.setdefault("n", n)
            log(f"  {r.get('rate', 0):,.0f} deliveries/s, all delivered: {r.get('all_delivered')}"
                f", cores {_cores(r)}")
            runs.append(r)
    return {"ns": ns, "duration": duration, "runs": runs}


def _cores(r: dict[str, Any]) -> str:
    c = r.get("cores") or {}
    return " ".join(f"{k}:{v:.0%}" for k, v in c.items())


# ------------------------------------------------------------------------ scenario 2


@scenario("latency", 2, "Latency at fixed publish rates")
def latency(cfg: Config, systems: list[System]) -> dict[str, Any]:
    # the brief's two loads (100,000 deliveries/s each), and the light load
    points = ([(1000, 5.0)] if cfg.quick else [(1000, 5.0), (1000, 100.0), (10000, 10.0)])
    duration = 3.0 if cfg.quick else 5.0
    runs = []
    for s in _ws_systems(systems):
        for n, rate in points:
            log(f"latency {s.name} N={n} at {rate:g}/s")
            r = _safe(lambda s=s, n=n, rate=rate: harness.measure_latency(s, cfg, n, rate, duration),
                      s.name)
            r.setdefault("system", s.name)
            r.setdefault("n", n)
            r.setdefault("rate", rate)
            log(f"  p50 {r.get('p50_ms', 0):.2f} ms p99 {r.get('p99_ms', 0):.2f} ms "
                f"max {r.get('max_ms', 0):.2f} ms, all delivered: {r.get('all_delivered')}"
                f"{', OVERLOADED' if r.get('overloaded') else ''}")
            runs.append(r)
    return {"points": points, "duration": duration, "runs": runs}


# ------------------------------------------------------------------------ scenario 3


@scenario("memory", 3, "Memory per idle WebSocket connection")
def memory(cfg: Config, systems: list[System]) -> dict[str, Any]:
    top = cfg.fd_limit - 500  # stay under the open-file limit, with room for the rest
    steps = [1000, 2000] if cfg.quick else [1000, 5000, 10000, 15000, top]
    runs = []
    for s in _ws_systems(systems):
        log(f"memory {s.name} up to {steps[-1]} connections")
        r = _safe(lambda s=s: harness.measure_memory(s, cfg, steps), s.name)
        r.setdefault("system", s.name)
        log(f"  {r.get('kib_per_conn_10k') or (r.get('steps') or [{}])[-1].get('kib_per_conn', 0):.1f}"
            f" KiB/conn, held {r.get('held')}, verified {r.get('verified')}")
        runs.append(r)
    return {"steps": steps, "runs": runs}


# ------------------------------------------------------------------------ scenario 4


@scenario("transports", 4, "Fan-out over SSE and long-polling (ours)")
def transports(cfg: Config, systems: list[System]) -> dict[str, Any]:
    ours = [s for s in systems if s.ours and "sse" in s.transports]
    if not ours:
        return {"pending": "our server is not available"}
    s = ours[0]
    points = ([("ws", 1000), ("sse", 1000), ("poll", 1000)] if cfg.quick else
              [("ws", 1000), ("sse", 1000), ("poll", 1000),
               ("ws", 10000), ("sse", 10000), ("poll", 10000)])
    duration = 2.0 if cfg.quick else 4.0
    runs = []
    for transport, n in points:
        log(f"transports {s.name} {transport} N={n}")
        r = _safe(lambda t=transport, n=n: harness.measure_fanout(s, cfg, n, duration, t), s.name)
        r.setdefault("system", s.name)
        r.setdefault("n", n)
        r.setdefault("transport", transport)
        log(f"  {r.get('rate', 0):,.0f} deliveries/s, all delivered: {r.get('all_delivered')}")
        runs.append(r)
    return {"runs": runs, "duration": duration}


# ------------------------------------------------------------------------ scenario 5


@scenario("runtimes", 5, "Ours on each runtime", in_quick=False)
def runtimes(cfg: Config, systems: list[System]) -> dict[str, Any]:
    rts = [s for s in SYSTEMS.values() if s.group == "runtime"]
    base = [s for s in systems if s.ours]
    if not rts or not base:
        return {"pending": "no runtime variant of our server is registered yet "
                           "(register a System with group='runtime' in bench/systems.py)"}
    runs = []
    for s in base + rts:
        if not s.available():
            runs.append({"system": s.name, "error": "not available"})
            continue
        for n in ([1000] if cfg.quick else [1000, 10000]):
            log(f"runtimes {s.name} N={n}")
            r = _safe(lambda s=s, n=n: harness.measure_fanout(s, cfg, n, 3.0, tag=f"runtime-{n}"),
                      s.name)
            r.setdefault("system", s.name)
            r.setdefault("n", n)
            log(f"  {r.get('rate', 0):,.0f} deliveries/s, all delivered: {r.get('all_delivered')}")
            runs.append(r)
    return {"runs": runs}


# ------------------------------------------------------------------------ scenario 6


@scenario("brokers", 6, "Cross-node through each broker", in_quick=False, netns=False)
def brokers(cfg: Config, systems: list[System]) -> dict[str, Any]:
    """Two of our nodes on each broker against the broker client's own ceiling
    (``crossnode.py``). It runs in the machine's network namespace: the broker servers
    listen on the machine's loopback, which a private namespace cannot reach."""
    if not any(s.ours for s in systems):
        return {"pending": "our server is not selected or not available"}
    targets = [b for b in BROKERS if b.name in (cfg.brokers or [b.name for b in BROKERS])]
    rounds: dict[str, list[dict[str, Any]]] = {b.name: [] for b in targets}
    for i in range(cfg.rounds):
        for b in targets:
            log(f"brokers {b.name}, round {i + 1} of {cfg.rounds}")
            rounds[b.name].append(crossnode.measure_round(b, cfg))
    out: dict[str, Any] = {
        "ns": list(crossnode.NS), "latency_n": crossnode.LATENCY_N,
        "latency_rate": crossnode.LATENCY_RATE, "duration": crossnode.THROUGHPUT_SECONDS,
        "latency_seconds": crossnode.LATENCY_SECONDS, "rounds": cfg.rounds,
        "payload_bytes": broker_clients.PAYLOAD_BYTES, "brokers": [],
    }
    for b in targets:
        summary = crossnode.summarize(b.name, rounds[b.name])
        entry = {"broker": b.name, "library": b.library_version(), "notes": b.notes,
                 "url": broker_clients.driver_url(b.name, "NAME"), "summary": summary,
                 "rounds": rounds[b.name]}
        log(f"  {b.name}: ours {((summary['fanout'].get('1') or {}).get('median_second') or 0):,.0f}"
            f" msg/s against the ceiling's {(summary['ceiling'] or {}).get('rate') or 0:,.0f}"
            f" ({summary['ratio'] or 0:.2f}), p50 added "
            f"{summary['added_p50_ms'] if summary['added_p50_ms'] is not None else float('nan'):.2f} ms")
        if not summary["met"] and cfg.profile_misses:
            log(f"  {b.name}: target missed: profiling both nodes")
            entry["profile"] = _safe(lambda b=b: crossnode.profile_nodes(b.name, cfg),
                                     f"profile {b.name}")
        out["brokers"].append(entry)
    return out


# -------------------------------------------------------------------- load generator


@scenario("loadgen", 0, "Is the load generator fast enough?")
def loadgen_check(cfg: Config, systems: list[System]) -> dict[str, Any]:
    """(a) capacity: the raw server writing every queued frame of a connection in one
    write per loop turn delivers far more than any peer; what the load generator
    receives from it, and at what CPU, bounds what it can count. (b) the fastest
    one-write-per-frame server at N=10,000 with twice the subscriber processes."""
    out: dict[str, Any] = {}
    n = 1000
    log(f"loadgen capacity probe: raw-batch N={n}")
    out["capacity"] = _safe(lambda: harness.measure_fanout(SYSTEMS["raw-batch"], cfg, n, 3.0,
                                                           tag="loadgen-capacity"), "raw-batch")
    log(f"  {out['capacity'].get('rate', 0):,.0f} deliveries/s, cores {_cores(out['capacity'])}")
    n = 1000 if cfg.quick else 10000
    s = SYSTEMS["node-ws"] if "node-ws" in {x.name for x in systems} else SYSTEMS["raw"]
    base = harness.workers_for(n, cfg)
    out["scaling"] = []
    for w in (base, base * 2):
        log(f"loadgen scaling: {s.name} N={n} with {w} subscriber processes")
        r = _safe(lambda w=w: harness.measure_fanout(s, cfg, n, 3.0, workers=w,
                                                    tag=f"loadgen-w{w}"), s.name)
        r["workers"] = w
        log(f"  {r.get('rate', 0):,.0f} deliveries/s, cores {_cores(r)}")
        out["scaling"].append(r)
    return out


# ------------------------------------------------------- scale (optional: run by name)


@scenario("hundredk", 8, "100,000 idle connections (`--workers`)", in_quick=False,
          netns=False, optional=True)
def hundredk(cfg: Config, systems: list[System]) -> dict[str, Any]:
    """bench/hundredk.py: 100,000 subscribed idle WebSocket connections, one publish."""
    import hundredk as scale

    n = 10_000 if cfg.quick else 100_000
    return _safe(lambda: scale.measure(n, scale.worker_count(n), 600), "hundredk")


@scenario("storm", 9, "Reconnect storms and handshakes/s", in_quick=False, netns=False,
          optional=True)
def storm(cfg: Config, systems: list[System]) -> dict[str, Any]:
    """bench/storm.py: 20,000 clients drop and reconnect, with and without backoff."""
    import storm as storms

    return _safe(lambda: storms.run(20_000, 400, 15_000, 180), "storm")
