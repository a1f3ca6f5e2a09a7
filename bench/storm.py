"""Reconnect storms: N subscribed WebSocket clients all drop and reconnect at once.

Each client is a raw-socket WebSocket client (forked processes, 127.0.0.x source
addresses, under the per-process open-file limit) that reconnects by one of two policies:

* ``backoff``: the JS client's (clients/js/realtime.js, `_scheduleReconnect`) reproduced
  exactly: after the n-th consecutive failure it waits ``random(0, min(20 s, 0.5 s × 2ⁿ))``,
  plus the server's ``Retry-After`` when it answered 503 or 429; a lost connection's
  first retry waits ``random(0, 0.5 s)``; an attempt gives up after 10 s (`connectTimeout`).
* ``raw``: no backoff: every failure or refusal is retried at once.

Reported for each storm: the time until every client is back and subscribed, successful
handshakes per second over that time, the refusals by HTTP status (and whether they
carried ``Retry-After``), connection errors, and the server's RSS (sum of its processes)
before, at its peak during, and after the storm.

Then the handshake rate of a raw storm of ``--peer-n`` clients (each connects once, at
once) against our server and the peers, in the same run: Node ``ws`` (bench/node) and
Python ``websockets`` (bench/peers), single processes, hence ``--peer-n`` under 20,000.

    bench/.venv/bin/python bench/storm.py [--n 20000] [--rate 400] [--peer-n 15000]

Also ``bench/run.sh --scenario storm`` (not part of a default run). Bounded: each phase
ends by ``--timeout`` seconds; the processes started here are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import socket
import struct
import time
import uuid
from collections import Counter
from typing import Any

import harness
import loadgen
from harness import Config
from systems import API_KEY, OURS_BIN, OURS_ENV, SYSTEMS, System, _ours_version, ours_publisher

REDIS = "redis://127.0.0.1:6379/0?prefix=bstorm-{}:"
PER_PROCESS = 5000  # clients per load-generator process
CONNECT_TIMEOUT = 10.0  # the JS client's connectTimeout
RECONNECT_DELAY = 0.5  # the JS client's reconnectDelay ...
MAX_RECONNECT_DELAY = 20.0  # ... and maxReconnectDelay


def backoff_delay(failures: int, status: int | None, retry_after: float | None) -> float:
    """The JS client's wait before the next attempt after `failures` failed ones."""
    ceiling = min(MAX_RECONNECT_DELAY, RECONNECT_DELAY * 2 ** min(failures, 30))
    wait = retry_after if status in (503, 429) and retry_after else 0.0
    return wait + math.floor(random.random() * ceiling * 1000) / 1000


class Attempt(asyncio.Protocol):
    """One connection attempt: the handshake, then subscribe; `outcome` resolves to
    ("ok", None, None), ("refused", status, retry_after) or (what failed, None, None)."""

    def __init__(self, request: bytes, dialect: loadgen.Dialect) -> None:
        self.request = request
        self.dialect = dialect
        self.outcome: asyncio.Future[tuple[str, int | None, float | None]] = \
            asyncio.get_running_loop().create_future()
        self.buf = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.outcome.done():
            return  # subscribed: an idle client reads nothing more
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            lines = head.split("\r\n")
            status = int(lines[0].split()[1])
            if status != 101:
                headers = dict(line.lower().split(":", 1) for line in lines[1:] if ":" in line)
                after = headers.get("retry-after", "").strip()
                self.outcome.set_result(("refused", status, float(after) if after else None))
                self.transport.abort()  # type: ignore[union-attr]
                return
            self.upgraded = True
            for frame in self.dialect.on_open(True):
                self.transport.write(frame)  # type: ignore[union-attr]
        frames, self.buf = loadgen.parse_frames(self.buf)
        for opcode, payload in frames:
            replies, ready = self.dialect.on_frame(opcode, payload, True)
            for reply in replies:
                self.transport.write(reply)  # type: ignore[union-attr]
            if ready:
                self.outcome.set_result(("ok", None, None))
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.outcome.done():
            self.outcome.set_result(("closed before an answer", None, None))


class Clients:
    """The clients of one load-generator process."""

    def __init__(self, host: str, port: int, src: str, dialect: str) -> None:
        self.host, self.port, self.src = host, port, src
        self.dialect = loadgen.DIALECTS[dialect]()
        self.request = self.dialect.request(host, port)
        self.open: list[asyncio.Transport] = []

    async def attempt(self) -> tuple[str, int | None, float | None]:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IP, loadgen.IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.setblocking(False)
        transport = None
        try:
            sock.bind((self.src, 0))
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.sock_connect(sock, (self.host, self.port))
                transport, proto = await loop.create_connection(
                    lambda: Attempt(self.request, self.dialect), sock=sock)
                result = await proto.outcome
        except (TimeoutError, OSError) as error:
            if transport is not None:
                transport.abort()
            else:
                sock.close()
            kind = "timed out (10 s)" if isinstance(error, TimeoutError) else \
                f"connect: {os.strerror(error.errno or 0)}"
            return (kind, None, None)
        if result[0] == "ok":
            self.open.append(transport)  # type: ignore[arg-type]
        else:
            transport.abort()
        return result

    async def phase(self, count: int, policy: str, deadline: float, lost: bool) -> dict[str, Any]:
        """Bring `count` clients up (again, when `lost`) by `policy`, until `deadline`."""
        t0 = time.monotonic()
        tally: Counter[str] = Counter()
        done_at: list[float] = []

        async def one() -> None:
            failures = 0
            if lost and policy == "backoff":  # a lost connection's first retry
                await asyncio.sleep(backoff_delay(0, None, None))
            while time.monotonic() < deadline:
                kind, status, after = await self.attempt()
                tally["attempts"] += 1
                if kind == "ok":
                    done_at.append(time.monotonic() - t0)
                    return
                if kind == "refused":
                    tally[f"refused {status}"] += 1
                    tally["with Retry-After" if after else "without Retry-After"] += 1
                else:
                    tally["connection errors"] += 1
                    tally[kind] += 1
                delay = backoff_delay(failures, status, after) if policy == "backoff" else 0
                failures += 1
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))

        await asyncio.gather(*(one() for _ in range(count)))
        return {"back": len(done_at), "last_back": max(done_at, default=0.0),
                "tally": dict(tally)}

    def drop(self) -> int:
        """Every open connection reset at once (SO_LINGER 0)."""
        n = len(self.open)
        for transport in self.open:
            transport.abort()
        self.open.clear()
        return n


def _process_main(pipe: Any, host: str, port: int, src: str, dialect: str) -> None:
    import uvloop

    async def serve() -> None:
        clients = Clients(host, port, src, dialect)
        loop = asyncio.get_running_loop()
        while True:
            msg = await loop.run_in_executor(None, pipe.recv)
            if msg["cmd"] == "exit":
                clients.drop()
                pipe.send({})
                return
            if msg["cmd"] == "drop":
                pipe.send({"dropped": clients.drop()})
                continue
            lost = msg["cmd"] == "storm"
            if lost:
                clients.drop()
            deadline = time.monotonic() + msg["timeout"]
            pipe.send(await clients.phase(msg["count"], msg["policy"], deadline, lost))

    uvloop.run(serve())
    os._exit(0)


class Generator:
    """Forked load-generator processes, each with its own source address."""

    def __init__(self, n: int, host: str, port: int, dialect: str) -> None:
        ctx = mp.get_context("fork")
        k = max(1, math.ceil(n / PER_PROCESS))
        self.shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        self.pipes, self.procs = [], []
        for i in range(k):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_process_main, daemon=True,
                            args=(b, host, port, f"127.0.0.{50 + i}", dialect))
            p.start()
            self.pipes.append(a)
            self.procs.append(p)

    def send(self, cmd: str, **extra: Any) -> None:
        for pipe, share in zip(self.pipes, self.shares, strict=True):
            pipe.send({"cmd": cmd, "count": share, **extra})

    def gather(self, timeout: float, while_waiting: Any = None) -> list[dict[str, Any]]:
        out, end = [], time.monotonic() + timeout
        for pipe in self.pipes:
            while not pipe.poll(0.2):
                if while_waiting:
                    while_waiting()
                if time.monotonic() > end:
                    raise TimeoutError("a load-generator process did not answer")
            out.append(pipe.recv())
        return out

    def run(self, cmd: str, policy: str, timeout: float, sample: Any = None) -> dict[str, Any]:
        t0 = time.monotonic()
        self.send(cmd, policy=policy, timeout=timeout)
        parts = self.gather(timeout + 30, sample)
        tally: Counter[str] = Counter()
        for part in parts:
            tally.update(part["tally"])
        back = sum(part["back"] for part in parts)
        last = max(part["last_back"] for part in parts)
        return {"clients": sum(self.shares), "back": back, "all_back": back == sum(self.shares),
                "seconds_until_all_back": round(last, 2),
                "handshakes_per_second": round(back / last) if last else 0,
                "wall_seconds": round(time.monotonic() - t0, 2), **dict(tally)}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            for pipe in self.pipes:
                pipe.send({"cmd": "exit"})
            self.gather(15)
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()


def ours(label: str, *extra: str, workers: int = 0) -> System:
    """Our server; with `workers`, on Redis, free to use every core."""
    options = ["--heartbeat-interval", "300", "--log-level", "warning", *extra]
    cores = ""
    if workers:
        broker = REDIS.format(uuid.uuid4().hex[:6])
        options += ["--workers", str(workers), "--broker", broker]
        cores = ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
    return System(name="ours-" + label.replace(" ", "-"), label=label, dialect="ours",
                  publisher=ours_publisher, version=_ours_version, ours=True, env=OURS_ENV,
                  cores=cores, command=lambda port: [OURS_BIN, "serve", "--port", str(port),
                                                     "--api-key", API_KEY, *options])


def storm(system: System, n: int, policies: list[str], timeout: float) -> dict[str, Any]:
    """Connect n clients, then for each policy drop them all and measure the storm."""
    out: dict[str, Any] = {"server": system.label}
    with harness.running(system, Config(), "storm") as srv:
        time.sleep(2.0)
        gen = Generator(n, harness.HOST, srv.port, system.dialect)
        try:
            out["rss_mib_at_rest"] = round(srv.rss_kib() / 1024, 1)
            out["connect"] = gen.run("connect", "backoff", timeout)
            for policy in policies:
                before = srv.rss_kib()
                peak = [before]

                def sample(peak: list[int] = peak) -> None:
                    if srv.alive():
                        peak.append(srv.rss_kib())

                r = gen.run("storm", policy, timeout, sample=sample)
                time.sleep(1.0)
                r["rss_mib_before"] = round(before / 1024, 1)
                r["rss_mib_peak"] = round(max(peak) / 1024, 1)
                r["rss_mib_after"] = round(srv.rss_kib() / 1024, 1)
                r["server_alive"] = srv.alive()
                out[f"storm {policy}"] = r
        finally:
            gen.close()
    return out


def handshake_rate(system: System, n: int, timeout: float) -> dict[str, Any]:
    """A raw storm of n clients that connect once, at once: handshakes per second."""
    with harness.running(system, Config(), "handshakes") as srv:
        time.sleep(1.0)
        gen = Generator(n, harness.HOST, srv.port, system.dialect)
        try:
            r = gen.run("connect", "raw", timeout)
        finally:
            gen.close()
        r["server_alive"] = srv.alive()
    return {"server": system.label, **r}


def run(n: int, rate: float, peer_n: int, timeout: float) -> dict[str, Any]:
    admitted = ours(f"--workers 2, --max-handshakes-per-second {rate:g}",
                    "--max-handshakes-per-second", str(rate), workers=2)
    unlimited = ours("--workers 2, no admission control", workers=2)
    results: dict[str, Any] = {
        "storms": [storm(admitted, n, ["backoff", "raw"], timeout),
                   storm(unlimited, n, ["backoff", "raw"], timeout)],
        "handshakes": []}
    for system in (ours("one process"), ours("--workers 2", workers=2),
                   SYSTEMS["node-ws"], SYSTEMS["websockets"]):
        results["handshakes"].append(handshake_rate(system, peer_n, timeout))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="clients of the storm")
    parser.add_argument("--rate", type=float, default=400,
                        help="--max-handshakes-per-second of each worker")
    parser.add_argument("--peer-n", type=int, default=15_000,
                        help="clients of the handshake comparison (single processes)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per phase")
    args = parser.parse_args()
    print(json.dumps(run(args.n, args.rate, args.peer_n, args.timeout), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
