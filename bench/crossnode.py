"""Scenario 6, cross-node: two of our nodes on one broker, against the broker client's own
ceiling measured in the same run.

For each broker (``BROKERS``):

* **ceiling**: ``broker_clients.py`` (a bare publisher process and a bare subscriber
  process with the broker's own client library) moves messages of the size of our envelope
  as fast as it can, then at a fixed rate for latency;
* **driver**: the same two processes through realtime_brokers (``open_broker``), no node:
  what the supervised driver costs on its own;
* **node B alone**: a bare publisher of node envelopes (our driver) where node A would be,
  and one node with N WebSocket subscribers: the receiving side of the path;
* **ours**: node A (publisher: ``POST /api/batch``) and node B (N WebSocket subscribers),
  ``realtime serve --broker URL`` both, through the fan-out and latency measurements of
  ``harness`` with ``nodes=2``; and the latency on a single node with the same broker, for
  the latency cross-node adds.

The publisher and subscriber processes of the ceiling and the driver run where node A and
node B run (the server core), so that each pair shares a core as the two nodes do.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import broker_clients
import harness
import loadgen
from harness import Config
from systems import (
    API_KEY,
    BENCH,
    MAIN_VENV,
    OURS_BIN,
    OURS_ENV,
    System,
    _ours_available,
    _ours_version,
    ours_batch_publisher,
)

CLIENTS_PY = str(MAIN_VENV / "bin" / "python")
CLIENTS = str(BENCH / "broker_clients.py")


@dataclass
class BrokerTarget:
    """A broker for the cross-node scenario: two of our nodes on it, publisher on one,
    subscribers on the other, against the broker client's own ceiling. The broker server
    runs on this machine already (``broker_clients.SERVERS``)."""

    name: str  # the URL scheme: redis, nats, amqp, postgresql
    notes: str = ""

    def library_version(self) -> str:
        """The client library both the ceiling and our driver use, with its version."""
        try:
            out = subprocess.run(
                [CLIENTS_PY, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                 "import broker_clients as b; print(b.library_version(sys.argv[2]))",
                 str(BENCH), self.name], capture_output=True, text=True, timeout=30)
            return out.stdout.strip() or broker_clients.LIBRARIES[self.name]
        except Exception:
            return broker_clients.LIBRARIES[self.name]


BROKERS: list[BrokerTarget] = [
    BrokerTarget("redis", notes="Redis Pub/Sub; PUBLISH pipelined"),
    BrokerTarget("nats", notes="NATS core subjects"),
    BrokerTarget("amqp", notes="RabbitMQ, one direct exchange, publisher confirms"),
    BrokerTarget("postgresql", notes="LISTEN/NOTIFY, one statement per message"),
]


def _run_name() -> str:
    return uuid.uuid4().hex[:8]


def ours_on(kind: str, name: str) -> System:
    """Our server on this broker (a private prefix), as the harness starts systems."""
    url = broker_clients.driver_url(kind, name)
    return System(
        name=f"ours-{kind}", label=f"realtime_proto on {kind}",
        command=lambda port: [OURS_BIN, "serve", "--port", str(port), "--api-key", API_KEY,
                              "--broker", url, "--log-level", "warning"],
        dialect="ours", publisher=ours_batch_publisher, version=_ours_version, ours=True,
        available=_ours_available, group="cluster", env=OURS_ENV,
        notes=f"`realtime serve --broker {url.partition('?')[0]}`",
    )


# ------------------------------------------------------------------ the bare clients


def _spawn(side: str, kind: str, client: str, name: str, counter: str, cfg: Config,
           *args: str) -> subprocess.Popen[str]:
    argv = ["taskset", "-c", str(cfg.server_core), CLIENTS_PY, CLIENTS, side,
            "--broker", kind, "--client", client, "--name", name, "--counter", counter, *args]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(BENCH))


def _last_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise RuntimeError(f"{proc.args[4:7]} did not finish in {timeout:g} s: "
                           f"{(err or '').strip()[-600:]}") from None
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    raise RuntimeError(f"{proc.args[4:7]} gave no result: {err.strip()[-400:]}")


def bare_pair(kind: str, client: str, cfg: Config, *, mode: str, seconds: float = 5.0,
              rate: float = 0.0, count: int = 0, warmup: float = 1.0) -> dict[str, Any]:
    """One bare subscriber and one bare publisher (``client``: "raw" or "driver"): in
    ``count`` mode messages/s in the steady state, in ``latency`` mode latencies."""
    name = _run_name()
    counter = f"/dev/shm/bench-xn-{name}"
    sub = _spawn("sub", kind, client, name, counter, cfg, "--mode", mode)
    try:
        assert sub.stdout is not None and sub.stdin is not None
        deadline = time.monotonic() + 30
        line = ""
        while sub.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sub.stdout], [], [], left)[0]:
                break
            line = sub.stdout.readline()
            if line.strip() == "ready" or not line:
                break
        if line.strip() != "ready":
            raise RuntimeError(f"{kind} {client} subscriber did not start: "
                               f"{(sub.stderr.read() if sub.stderr else '')[-400:]}")
        if mode == "latency":
            pub_args = ["--rate", str(rate), "--count", str(count)]
        else:
            pub_args = ["--seconds", str(warmup + seconds)]
        pub = _spawn("pub", kind, client, name, counter, cfg, *pub_args)
        p = _last_json(pub, timeout=seconds + count / max(rate, 1) + 60)
        sub.stdin.write(f"stop {p['published']}\n")
        sub.stdin.flush()
        s = _last_json(sub, timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait(5)
        with contextlib.suppress(OSError):
            os.unlink(counter)
    out: dict[str, Any] = {"client": client, "published": p["published"],
                           "received": s["received"], "all_delivered":
                           s["received"] == p["published"]}
    if mode == "latency":
        out.update(latency_stats([x / 1e6 for x in s["latencies"]]))
        out["rate"] = rate
        return out
    # the steady state: per whole second of publishing after the warm-up, as loadgen does
    samples = [((t - p["t0"]) / 1e9, c) for t, c in s["samples"]]
    t_pub = (p["t1"] - p["t0"]) / 1e9
    per_second = loadgen.per_second_counts(samples, warmup, t_pub)
    out.update(per_second=per_second, rate=_median(per_second),
               overall_rate=s["received"] / max(1e-9, (s["samples"][-1][0] - p["t0"]) / 1e9))
    return out


def receiving_node(kind: str, cfg: Config, n: int, seconds: float,
                   warmup: float = 1.0) -> dict[str, Any]:
    """Node B alone: a bare publisher of node envelopes (realtime_brokers, the process
    where node A would be) and one node with n WebSocket subscribers: what the receiving
    side of the cross-node path takes, without node A's HTTP API."""
    name = _run_name()
    system = ours_on(kind, name)
    counter = f"/dev/shm/bench-xn-{name}"
    shared = broker_clients.SharedCount(counter, create=True)
    out: dict[str, Any] = {"kind": "receiving", "n": n, "nodes": 1}
    try:
        with harness.running(system, cfg, f"crossnode-{kind}-receiving-{n}") as srv, \
                harness.generator(cfg, harness.workers_for(n, cfg)) as gen:
            c = harness.connect(gen, srv, system, n)
            if c["ok"] < n:
                return {**out, "error": f"{c['ok']} of {n} subscribers connected"}
            gen.reset("count", cfg.tick)
            time.sleep(0.3)  # the node subscribes its broker topic at the first subscriber
            meter = harness.Meter(srv, gen)
            pub = _spawn("pub", kind, "driver", name, counter, cfg, "--envelope",
                         "--seconds", str(warmup + seconds))
            samples: list[tuple[int, int]] = []
            deadline = time.monotonic() + warmup + seconds + 60
            while pub.poll() is None and time.monotonic() < deadline:
                got = gen.total()
                shared.set(got // n)
                samples.append((time.monotonic_ns(), got))
                time.sleep(0.001)
            p = _last_json(pub, timeout=30)
            expected = p["published"] * n
            drain = time.monotonic() + 10
            while gen.total() < expected and time.monotonic() < drain:
                time.sleep(0.005)
            samples.append((time.monotonic_ns(), gen.total()))
            out.update(meter.read())
            st = gen.stats()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(counter)
    rel = [((t - p["t0"]) / 1e9, got) for t, got in samples]
    per_second = loadgen.per_second_counts(rel, warmup, (p["t1"] - p["t0"]) / 1e9)
    out.update(published=p["published"], expected=expected, delivered=st["total"],
               all_delivered=st["total"] == expected and st["min"] == st["max"],
               per_second=per_second, median_second=_median(per_second))
    return out


def latency_stats(ms: list[float]) -> dict[str, Any]:
    import numpy as np

    if not ms:
        return {"samples": 0}
    a = np.array(ms)
    return {"samples": len(ms), "min_ms": float(a.min()), "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


def _median(xs: list[float]) -> float | None:
    return sorted(xs)[len(xs) // 2] if xs else None


# ------------------------------------------------------------------------ the scenario

#: subscribers on node B in the throughput runs: 1 (the broker path alone) and 100
NS = (1, 100)
#: the latency point: subscribers on node B, messages/s (both light for every broker)
LATENCY_N, LATENCY_RATE = 100, 200.0
THROUGHPUT_SECONDS = 4.0
LATENCY_SECONDS = 5.0


def _safe(fn: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
    try:
        return fn()
    except Exception as e:  # one broker failing must not stop the run
        log(f"    {what}: FAILED {e!r}")
        return {"error": repr(e)}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def measure_round(target: BrokerTarget, cfg: Config) -> dict[str, Any]:
    """One round on one broker: ceiling, driver and ours, throughput then latency."""
    kind = target.name
    out: dict[str, Any] = {"ceiling": {}, "driver": {}, "ours": []}
    for client in ("raw", "driver"):
        key = "ceiling" if client == "raw" else "driver"
        r = _safe(lambda c=client: bare_pair(kind, c, cfg, mode="count",
                                             seconds=THROUGHPUT_SECONDS), f"{kind} {key}")
        out[key]["throughput"] = r
        log(f"  {kind} {key}: {r.get('rate') or 0:,.0f} msg/s, "
            f"all delivered: {r.get('all_delivered')}")
    system = ours_on(kind, _run_name())
    for n in NS:
        r = _safe(lambda n=n: harness.measure_fanout(system, cfg, n, THROUGHPUT_SECONDS,
                                                     nodes=2, tag=f"crossnode-{kind}-{n}"),
                  f"{kind} ours N={n}")
        r.update(kind="fanout", n=n, nodes=2)
        _drop_bulk(r)
        out["ours"].append(r)
        log(f"  {kind} ours N={n}: {r.get('rate') or 0:,.0f} deliveries/s "
            f"({(r.get('median_second') or 0) / n:,.0f} msg/s median second), "
            f"all delivered: {r.get('all_delivered')}, node B {r.get('server_cpu', 0):.0%} "
            f"node A {r.get('publisher_node_cpu', 0):.0%} cores {_cores(r)}")
    for n in NS:
        r = _safe(lambda n=n: receiving_node(kind, cfg, n, THROUGHPUT_SECONDS),
                  f"{kind} node B alone N={n}")
        r.update(kind="receiving", n=n, nodes=1)
        out["ours"].append(r)
        log(f"  {kind} node B alone N={n}: {(r.get('median_second') or 0) / n:,.0f} msg/s "
            f"({r.get('median_second') or 0:,.0f} deliveries/s), all delivered: "
            f"{r.get('all_delivered')}, node B {r.get('server_cpu', 0):.0%} cores {_cores(r)}")
    count = int(LATENCY_RATE * LATENCY_SECONDS)
    for client in ("raw", "driver"):
        key = "ceiling" if client == "raw" else "driver"
        r = _safe(lambda c=client: bare_pair(kind, c, cfg, mode="latency", rate=LATENCY_RATE,
                                             count=count), f"{kind} {key} latency")
        out[key]["latency"] = r
        log(f"  {kind} {key} latency: p50 {r.get('p50_ms') or 0:.2f} ms "
            f"p99 {r.get('p99_ms') or 0:.2f} ms")
    for nodes in (2, 1):
        r = _safe(lambda nodes=nodes: harness.measure_latency(
            system, cfg, LATENCY_N, LATENCY_RATE, LATENCY_SECONDS, nodes=nodes),
            f"{kind} ours latency on {nodes} node(s)")
        r.update(kind="latency", n=LATENCY_N, rate=LATENCY_RATE, nodes=nodes)
        out["ours"].append(r)
        log(f"  {kind} ours latency, {nodes} node(s): p50 {r.get('p50_ms') or 0:.2f} ms "
            f"p99 {r.get('p99_ms') or 0:.2f} ms, all delivered: {r.get('all_delivered')}")
    return out


def _drop_bulk(r: dict[str, Any]) -> None:
    r.pop("samples", None)


def _cores(r: dict[str, Any]) -> str:
    c = r.get("cores") or {}
    return " ".join(f"{k}:{v:.0%}" for k, v in c.items())


def best(runs: list[dict[str, Any]], key: str, lower: bool = False) -> dict[str, Any] | None:
    """The best of the rounds: other work on a shared machine only ever slows a run down,
    so the fastest (or lowest-latency) round is the least disturbed one; a round that
    lost or repeated messages only when every round did."""
    ok = [r for r in runs if r.get(key) is not None and not r.get("error")]
    if not ok:
        return None
    ok = [r for r in ok if r.get("all_delivered") is not False] or ok
    return min(ok, key=lambda r: r[key]) if lower else max(ok, key=lambda r: r[key])


def summarize(kind: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per broker: the best round of each measurement, and the target's figures."""
    def bare(key: str, what: str, metric: str, lower: bool = False) -> dict[str, Any] | None:
        return best([r[key].get(what, {}) for r in rounds], metric, lower)

    def ours(kind_: str, n: int, nodes: int, metric: str, lower: bool = False
             ) -> dict[str, Any] | None:
        return best([x for r in rounds for x in r["ours"] if x.get("kind") == kind_
                     and x.get("n") == n and x.get("nodes") == nodes], metric, lower)

    s: dict[str, Any] = {
        "ceiling": bare("ceiling", "throughput", "rate"),
        "driver": bare("driver", "throughput", "rate"),
        "ceiling_latency": bare("ceiling", "latency", "p50_ms", lower=True),
        "driver_latency": bare("driver", "latency", "p50_ms", lower=True),
        "fanout": {str(n): ours("fanout", n, 2, "median_second") for n in NS},
        "receiving": {str(n): ours("receiving", n, 1, "median_second") for n in NS},
        "latency_cross": ours("latency", LATENCY_N, 2, "p50_ms", lower=True),
        "latency_single": ours("latency", LATENCY_N, 1, "p50_ms", lower=True),
    }
    ceiling = (s["ceiling"] or {}).get("rate")
    one = s["fanout"].get("1") or {}
    msgs = one.get("median_second")
    s["ratio"] = msgs / ceiling if msgs and ceiling else None
    cross, single = s["latency_cross"], s["latency_single"]
    s["added_p50_ms"] = (cross["p50_ms"] - single["p50_ms"]) if cross and single else None
    # what our nodes add on top of the broker's own hop (the bare clients' p50, same run):
    # the target's "added latency", measured against the client's ceiling like throughput
    hop = (s["ceiling_latency"] or {}).get("p50_ms")
    s["beyond_hop_ms"] = (s["added_p50_ms"] - hop
                          if s["added_p50_ms"] is not None and hop is not None else None)
    s["met"] = (s["ratio"] is not None and s["beyond_hop_ms"] is not None
                and s["ratio"] >= 0.8 and s["beyond_hop_ms"] <= 1.0)
    return s


def profile_nodes(kind: str, cfg: Config, seconds: float = 4.0) -> dict[str, Any]:
    """Where the time goes, cross-node at N = 1: py-spy on node A and node B while the
    publisher keeps them busy (a separate run: py-spy slows what it samples)."""
    system = ours_on(kind, _run_name())
    r = harness.measure_fanout(system, cfg, 1, seconds, nodes=2, tag=f"crossnode-{kind}-profile",
                               profile_seconds=seconds)
    return {"rate": r.get("median_second"), "profile": r.get("profile"), "error": r.get("error")}
