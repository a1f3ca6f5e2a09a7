"""Running servers and measuring them: the pieces the scenarios are made of."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loadgen
from systems import BENCH, System

RESULTS = BENCH / "results"
LOGS = RESULTS / "logs"
HOST = "127.0.0.1"


@dataclass
class Config:
    quick: bool = False
    server_core: int = 0
    gen_core: int = 1
    workers_per_10k: int = 2  # subscriber processes per 10,000 connections (at least 1)
    tick: float = 0.005  # throughput mode: seconds between receive sweeps
    fd_limit: int = 20000
    only_systems: list[str] = field(default_factory=list)
    # scenario 6: brokers to measure (empty: all), rounds of each (the best counts), and
    # whether a missed target is profiled
    brokers: list[str] = field(default_factory=list)
    rounds: int = 2
    profile_misses: bool = True


_port = [7300]


def next_port() -> int:
    """The next free port from 7301 on (scenario 6 runs on the machine's loopback, where
    other work may hold some)."""
    for _ in range(1000):
        _port[0] += 1
        with socket.socket() as probe:
            try:
                probe.bind((HOST, _port[0]))
            except OSError:
                continue
        return _port[0]
    raise RuntimeError("no free port from 7301 on")


def foreign_cpu_ticks(exclude: set[int]) -> dict[int, int]:
    """CPU ticks used so far by each process that is not ours (other work on the machine)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in exclude:
            out[int(d)] = loadgen.cpu_ticks(int(d))
    return out


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (Linux's /proc children lists)."""
    pids, i = [pid], 0
    while i < len(pids):
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pids[i]}/task/{pids[i]}/children").read_text()
            pids += [int(child) for child in children.split()]
        i += 1
    return pids


class Server:
    """One server process, pinned to the server core, logging to bench/results/logs."""

    def __init__(self, system: System, cfg: Config, tag: str) -> None:
        self.system = system
        self.port = next_port()
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{system.name}-{tag}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop(), after the process
        env = dict(os.environ, **system.env)
        env.pop("PYTHONPATH", None)
        argv = ["taskset", "-c", system.cores or str(cfg.server_core),
                *system.command(self.port)]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, cwd=str(BENCH))
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{system.name} exited at start: {self.tail()}")
            try:
                socket.create_connection((HOST, self.port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{system.name} did not listen on {self.port}") from None
                time.sleep(0.05)

    def tail(self) -> str:
        self.log.flush()
        try:
            return self.log_path.read_text()[-600:]
        except OSError:
            return ""

    def rss_kib(self) -> int:
        """The RSS of the server and of its child processes (`--workers`)."""
        return sum(loadgen.rss_kib(pid) for pid in process_tree(self.pid))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@contextlib.contextmanager
def running(system: System, cfg: Config, tag: str) -> Iterator[Server]:
    srv = Server(system, cfg, tag)
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def serving(system: System, cfg: Config, tag: str, nodes: int = 1) -> Iterator[tuple[Server, Server]]:
    """(publisher's server, subscribers' server): one server, or two nodes of a cluster
    (scenario 6: the same command twice; both on the server core)."""
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(running(system, cfg, tag if nodes == 1 else f"{tag}-a"))
        second = first if nodes == 1 else stack.enter_context(running(system, cfg, f"{tag}-b"))
        yield first, second


async def until_delivered(pub: loadgen.Publisher, gen: loadgen.LoadGen, n: int,
                          timeout: float = 15.0) -> bool:
    """Publish one message at a time until one reaches all n subscribers: across nodes, the
    subscribers' node subscribes its broker topic asynchronously, and what is published
    before that is lost to it (Pub/Sub)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gen.reset("count", -1)
        r = await loadgen.paced(pub, gen, n, 10, 1, drain=0.5)
        if r["delivered"] >= n:
            return True
    return False


def workers_for(n: int, cfg: Config) -> int:
    return max(1, -(-n * cfg.workers_per_10k // 10000))


@contextlib.contextmanager
def generator(cfg: Config, workers: int) -> Iterator[loadgen.LoadGen]:
    gen = loadgen.LoadGen(workers, cfg.gen_core)
    try:
        yield gen
    finally:
        with contextlib.suppress(Exception):
            gen.close()
        gen.shutdown()


class Meter:
    """CPU of the server, of the load generator, per core, and of everything else."""

    def __init__(self, srv: Server, gen: loadgen.LoadGen, others: tuple[Server, ...] = ()) -> None:
        self.ours = {srv.pid, os.getpid(), *gen.pids, *(o.pid for o in others)}
        self.cpu = loadgen.CPUMeter(srv.pid, [os.getpid(), *gen.pids])
        self.others = {o.pid: loadgen.cpu_ticks(o.pid) for o in others}
        self.f0 = foreign_cpu_ticks(self.ours)
        self.t0 = time.monotonic()

    def read(self) -> dict[str, Any]:
        r = self.cpu.read()
        dt = time.monotonic() - self.t0
        if self.others:  # the publisher's node (scenario 6)
            r["publisher_node_cpu"] = sum(loadgen.cpu_ticks(p) - t for p, t in
                                          self.others.items()) / loadgen.TICK / dt
        f1 = foreign_cpu_ticks(self.ours)
        used = sum(t - self.f0.get(pid, 0) for pid, t in f1.items())
        r["foreign_cpu"] = max(0, used) / loadgen.TICK / dt
        return r


async def open_publisher(system: System, srv: Server) -> loadgen.Publisher:
    pub = system.publisher(HOST, srv.port)
    await pub.open()
    return pub


def connect(gen: loadgen.LoadGen, srv: Server, system: System, n: int,
            transport: str = "ws", timeout: float = 90) -> dict[str, Any]:
    r = gen.connect(HOST, srv.port, n, system.dialect, transport, timeout=timeout)
    if r["ok"] < n:
        r["server_log"] = srv.tail()
    return r


def measure_fanout(system: System, cfg: Config, n: int, duration: float,
                   transport: str = "ws", workers: int | None = None,
                   tag: str = "", nodes: int = 1, profile_seconds: float = 0) -> dict[str, Any]:
    """Scenario 1 (and 4): deliveries per second to n subscribers of one channel. With
    nodes=2 (scenario 6) the publisher is on one node and the subscribers on another.
    With profile_seconds, py-spy samples each server meanwhile (``out["profile"]``)."""
    out: dict[str, Any] = {"system": system.name, "n": n, "transport": transport}
    workers = workers or workers_for(n, cfg)
    out["workers"] = workers
    with serving(system, cfg, tag or f"fanout-{transport}-{n}", nodes) as (pub_srv, srv), \
            generator(cfg, workers) as gen:
        c = connect(gen, srv, system, n, transport)
        out["connect"] = c
        if c["ok"] == 0:
            out["error"] = "no subscriber connected"
            return out
        n_ok = c["ok"]
        others = (pub_srv,) if pub_srv is not srv else ()

        async def go() -> None:
            pub = await open_publisher(system, pub_srv)
            if others and not await until_delivered(pub, gen, n_ok):
                out["error"] = "no message reached the other node"
                pub.close()
                return
            gen.reset("count", cfg.tick)
            # warm-up, which also sizes the receive sweeps and the window
            floor = max(2, min(500, 20_000 // n_ok))
            # across two nodes a message passes more stages (node A, the broker, node B),
            # each taking what waits together: the window may grow past 500 messages (the
            # bare clients' pair has no window), and both nodes' CPU tells whether the
            # path was waiting for the publisher
            most = min(loadgen.IN_FLIGHT_DELIVERIES // n_ok, 20_000) if others else 500
            busy = tuple(s.pid for s in others)
            warm = await loadgen.fanout(pub, gen, n_ok, 2.0, floor, max_window=most,
                                        server_pid=srv.pid, other_pids=busy)
            rate = max(warm["recent_rate"], warm["overall_rate"], 1.0)
            # sweep so that a recv takes ~4 frames of a connection: at N = 10,000 a
            # connection gets a frame only every N / rate seconds, and one recv per delivery
            # would cost the load generator as much as the server's write. Long-poll clients
            # must answer at once: each answer is their next request.
            tick = (min(0.25, max(cfg.tick, 4 * n_ok / rate)) if transport != "poll"
                    else cfg.tick)
            # in flight: up to a second of this server's work plus two sweeps (see fanout)
            in_flight = loadgen.IN_FLIGHT_SECONDS + 2 * tick
            window = max(floor, warm["final_window"],
                         min(most, loadgen.IN_FLIGHT_DELIVERIES // n_ok, int(rate * in_flight / n_ok)))
            out.update(window=window, warmup_rate=rate, tick=tick)
            await asyncio.sleep(0.2)
            gen.reset("count", tick)
            meter = Meter(srv, gen, others)
            profiled = [("node B", srv), ("node A", pub_srv)] if others else [("server", srv)]
            # --native: sampling a running process without pausing it (--nonblocking)
            # can charge C time to a stale Python frame (a write, an await)
            spies = {name: pyspy_start(s.pid, profile_seconds, f"{tag}-{name}", native=True)
                     for name, s in profiled if profile_seconds}
            r = await loadgen.fanout(pub, gen, n_ok, duration, window, in_flight=in_flight,
                                     max_window=most, server_pid=srv.pid,
                                     other_pids=busy)
            r.update(meter.read())
            if spies:
                out["profile"] = {name: pyspy_top(spy) for name, spy in spies.items()}
            out.update(r)
            out["publisher_errors"] = pub.errors[:3]
            pub.close()

        asyncio.run(go())
        if "delivered" not in out:
            return out
        st = gen.stats()
        out["subscribers"] = st["conns"]
        out["per_conn_min"], out["per_conn_max"] = st["min"], st["max"]
        out["all_delivered"] = (out["delivered"] == out["expected"]
                                and st["min"] == st["max"] == out["published"]
                                and n_ok == n)
        out["rss_kib"] = srv.rss_kib()
        out["errors"] = st["errors"]
    return out


def measure_latency(system: System, cfg: Config, n: int, rate: float,
                    duration: float, nodes: int = 1) -> dict[str, Any]:
    """Scenario 2: publish-to-receipt latency at a fixed publish rate (with nodes=2, as in
    scenario 6: the publisher on one node, the subscribers on another)."""
    import numpy as np

    count = int(rate * duration)
    # Latency is sampled on a tenth of the subscribers (100 to 1,000), held by one process
    # that reads as soon as data arrives; the others, in their own processes, sweep their
    # sockets every few messages (~5 frames per recv) and only count. One recv per
    # delivery for all of them would cost the load generator as much as the server its
    # writes. Subscribers of all processes connect interleaved, so the sample is spread
    # over the server's fan-out order.
    hot = max(1, min(n, max(100, min(1000, n // 10))))
    cold_workers = workers_for(n - hot, cfg) if n > hot else 0
    shares = [hot] + [(n - hot) // cold_workers + (1 if i < (n - hot) % cold_workers else 0)
                      for i in range(cold_workers)]
    cold_tick = min(1.0, max(0.02, 5 / rate))
    modes = [("latency", -1.0)] + [("count", cold_tick)] * cold_workers
    out: dict[str, Any] = {"system": system.name, "n": n, "rate": rate, "messages": count,
                           "sampled": hot, "cold_tick": cold_tick}
    with serving(system, cfg, f"latency-{n}-{rate:g}", nodes) as (pub_srv, srv), \
            generator(cfg, 1 + cold_workers) as gen:
        c = gen.connect(HOST, srv.port, n, system.dialect, "ws", timeout=90, shares=shares)
        if c["ok"] < n:
            c["server_log"] = srv.tail()
        out["connect"] = c
        if c["ok"] == 0:
            out["error"] = "no subscriber connected"
            return out
        n_ok = c["ok"]

        others = (pub_srv,) if pub_srv is not srv else ()

        async def go() -> None:
            pub = await open_publisher(system, pub_srv)
            if others and not await until_delivered(pub, gen, n_ok):
                out.update(error="no message reached the other node", overloaded=False)
                pub.close()
                return
            gen.reset(per_worker=[("count", t) for _, t in modes])
            w = await loadgen.paced(pub, gen, n_ok, rate, max(5, int(rate)),  # warm-up
                                    drain=5 + 2 * cold_tick, max_behind=2 + cold_tick)
            if w["overloaded"] or w["delivered"] < w["expected"]:
                out.update({"overloaded": True, "published": w["published"],
                            "expected": w["expected"], "delivered": w["delivered"],
                            "note": "could not keep up with the rate during the warm-up"})
                pub.close()
                return
            await asyncio.sleep(0.2)
            gen.reset(per_worker=modes)
            meter = Meter(srv, gen, others)
            r = await loadgen.paced(pub, gen, n_ok, rate, count, drain=10 + 2 * cold_tick,
                                    max_behind=2 + cold_tick)
            r.update(meter.read())
            out.update(r)
            pub.close()

        asyncio.run(go())
        if out.get("error"):
            return out
        st = gen.stats(latency=True)
        lat = np.frombuffer(st["lat"], dtype=np.int64) / 1e6  # ms
        out["all_delivered"] = (out.get("delivered") == out.get("expected") and n_ok == n
                                and not out.get("overloaded"))
        if len(lat) and not out.get("overloaded"):
            out.update({
                "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
                "p99_ms": float(np.percentile(lat, 99)), "p999_ms": float(np.percentile(lat, 99.9)),
                "max_ms": float(lat.max()), "min_ms": float(lat.min()), "mean_ms": float(lat.mean()),
                "samples": len(lat),
            })
        out["errors"] = st["errors"]
    return out


def measure_memory(system: System, cfg: Config, steps: list[int]) -> dict[str, Any]:
    """Scenario 3: server RSS per idle subscribed WebSocket connection, and how many it
    holds up to the open-file limit."""
    import numpy as np

    target = steps[-1]
    workers = max(2, -(-target // 5000))
    out: dict[str, Any] = {"system": system.name, "steps": [], "target": target}
    with running(system, cfg, "memory") as srv, generator(cfg, workers) as gen:
        # warm-up: exercise the code paths once, then measure from an idle baseline
        connect(gen, srv, system, 100)
        gen.close()
        time.sleep(1.0)
        base = srv.rss_kib()
        out["base_rss_kib"] = base
        held = 0
        for step in steps:
            want = step - held
            c = connect(gen, srv, system, want, timeout=120)
            held += c["ok"]
            time.sleep(1.5)
            if not srv.alive():
                out["error"] = f"server died at {held} connections"
                break
            rss = srv.rss_kib()
            out["steps"].append({"connections": held, "rss_kib": rss,
                                 "kib_per_conn": (rss - base) / held if held else 0.0,
                                 "failed": c["failed"], "seconds": c["seconds"],
                                 "errors": c["errors"][:2]})
            if c["ok"] < want:
                out["refused_at"] = held
                break  # the server (or the open-file limit) refused more
        # are they all alive? one publish must reach every one of them
        if srv.alive():
            async def verify() -> dict[str, Any]:
                pub = await open_publisher(system, srv)
                gen.reset("count", -1)
                r = await loadgen.paced(pub, gen, held, 10, 1, drain=15)
                pub.close()
                return r
            v = asyncio.run(verify())
            out["verified"] = v["delivered"]
        out["held"] = held
        st = [s for s in out["steps"] if s["connections"] >= 1000]
        if len(st) >= 2:
            x = np.array([s["connections"] for s in st], dtype=float)
            y = np.array([s["rss_kib"] for s in st], dtype=float)
            slope, icpt = np.polyfit(x, y, 1)
            out["slope_kib"] = float(slope)
            out["projection_100k_mib"] = float((icpt + slope * 100_000) / 1024)
        at10k = [s for s in out["steps"] if s["connections"] == 10000]
        if at10k:
            out["kib_per_conn_10k"] = at10k[0]["kib_per_conn"]
    return out


# --------------------------------------------------------------------------- profiles

PYSPY = str(BENCH / ".venv" / "bin" / "py-spy")


def pyspy_start(pid: int, seconds: float, tag: str, rate: int = 250,
                native: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``py-spy record`` on a process (raw collapsed stacks in bench/results)."""
    out = RESULTS / f"profile-{tag}.txt".replace(" ", "-")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "w") as err:
        proc = subprocess.Popen(
            [PYSPY, "record", "--native" if native else "--nonblocking", "-r", str(rate),
             "-d", str(max(1, int(seconds))), "-f", "raw", "-o", str(out), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=err)
    return proc, out


def pyspy_top(spy: tuple[subprocess.Popen[bytes], Path], top: int = 12) -> dict[str, Any]:
    """Wait for a py-spy started by :func:`pyspy_start`; the functions with the most
    samples, self and inclusive, as percentages."""
    proc, path = spy
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    return pyspy_summary(path, top)


def pyspy_summary(path: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive time per function of py-spy's collapsed stacks (a function's C
    calls count for it)."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {"samples": 0, "self": [], "inclusive": [], "path": str(path)}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        total += k
        frames = stack.split(";")
        self_t[_short(frames[-1])] += k
        for f in {_short(f) for f in frames}:
            incl[f] += k
    pct = 100 / total if total else 0
    # Python functions only (with --native the event loop's C frames are in most
    # samples), and not those in (nearly) every sample: the process's main loop
    busy = [(f, c * pct) for f, c in incl.most_common()
            if c < 0.9 * total and f.endswith(".py)")]
    return {"samples": total, "path": str(path),
            "self": [(f, c * pct) for f, c in self_t.most_common(top)],
            "inclusive": busy[:top]}


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, loc = frame.partition(" (")
    file = loc.rstrip(")").rsplit("/", 1)[-1].split(":")[0]
    return f"{name} ({file})" if file else name
