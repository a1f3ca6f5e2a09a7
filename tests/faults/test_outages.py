"""A broker server killed under load, with real processes: no silent loss, honest health,
bounded memory, quiet logs.

Each test starts its own broker server (`servers.own_server`, never the shared ones), two
`realtime serve` nodes on it with a history channel, a WebSocket subscriber on each node
and a publisher on node A (`POST /api/publish`, about 200 a second, a bounded count). The
server is killed mid-stream and restarted a few seconds later while publishing goes on.

The contract checked: every message published reaches node B's subscriber or is reported
to it as lost (`messages.lost`, with a count), without duplicates and in order; a client
that recovers on node B from a position before the gap is told the truth (`recovered:
true` only with every later message replayed, in order); node A's
own subscriber gets every message (local delivery never waits for the broker); node A's
`/health` answers within 1 s throughout and says degraded during the outage; its memory
and both nodes' logs stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from ..brokers.proxy import TcpProxy
from ..cluster.nodes import API_KEY, SECRET, free_port
from .servers import OwnServer, own_server

pytestmark = pytest.mark.broker

CHANNEL = "room.faults"
#: publishes per second, and for how long before, during and after the outage (seconds);
#: REALTIME_FAULTS_OUTAGE=45 reproduces the issue's long outages (a run then takes ~90 s)
RATE = 200
BEFORE, OUTAGE, AFTER = 1.5, float(os.environ.get("REALTIME_FAULTS_OUTAGE", "2.5")), 3.0
#: seconds node B stays away after the restart, in the `b-late` case
LATE = 2.0
#: seconds without a message after which the subscribers have heard all they will
QUIET = 3.0
#: driver options that find a dead connection and reconnect quickly
FAST = "probe_interval=0.5&probe_timeout=1&reconnect_min_interval=0.05&reconnect_max_interval=0.5"
#: bounds: /health answer time, node A's memory growth during the outage, log lines per node
HEALTH_DEADLINE = 1.0
#: how long node A's own subscriber may wait for a message, outage or not (seconds)
LOCAL_DELAY = 1.5
RSS_GROWTH_MB = 60
LOG_LINES = 20


class Node:
    """One `realtime serve` process, its log in a file (a pipe nobody reads would block
    it once full)."""

    def __init__(self, name: str, broker: str, log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "realtime_server.cli", "serve", "--port",
                   str(self.port), "--broker", broker, "--node-id", name, "--api-key", API_KEY,
                   "--jwt-secret", SECRET, "--log-level", "warning",
                   "--history", "room.*=1000:300", "--api-rate", "0", "--connection-rate",
                   "0", "--message-rate", "0"]
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=out,
                                            stdin=subprocess.DEVNULL)

    async def ready(self, http: httpx.AsyncClient) -> None:
        async with asyncio.timeout(30):
            while True:
                assert self.process.poll() is None, self.log.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.base}/health", timeout=1)).status_code == 200:
                        return
                await asyncio.sleep(0.05)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class Subscriber:
    """A WebSocket subscriber of CHANNEL: the numbers it got, and the losses reported."""

    numbers: list[int] = field(default_factory=list)
    #: monotonic seconds each number arrived
    arrived: list[float] = field(default_factory=list)
    lost: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)
    #: number -> (epoch, offset) of the messages that came with a stream position
    positions: dict[int, tuple[str, int]] = field(default_factory=dict)
    #: the WebSocket close code, if the server closed the connection
    closed: int | None = None


async def subscribe(node: Node, into: Subscriber, ready: asyncio.Event) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{node.port}/ws") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": CHANNEL}))
        async for raw in ws:
            message = json.loads(raw)
            if message.get("channel") != CHANNEL:
                continue
            event = message.get("event")
            if event == "subscription.succeeded":
                ready.set()
            elif event == "n":
                into.numbers.append(message["data"])
                into.arrived.append(time.monotonic())
                if "offset" in message:
                    into.positions[message["data"]] = (message["epoch"], message["offset"])
            elif event == "messages.lost":
                into.lost += int(message["data"]["count"])
                into.reports.append(message["data"])
        into.closed = ws.close_code


@dataclass
class Watch:
    """Node A's /health answers ((seconds since start, status or None, seconds taken))
    and memory samples."""

    health: list[tuple[float, str | None, float]] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)


async def watch(http: httpx.AsyncClient, node: Node, into: Watch, start: float) -> None:
    while True:
        sent = time.monotonic()
        try:
            answer = await http.get(f"{node.base}/health", timeout=HEALTH_DEADLINE + 1)
            status: str | None = answer.json()["status"]
        except httpx.HTTPError:
            status = None
        into.health.append((sent - start, status, time.monotonic() - sent))
        into.rss.append((sent - start, node.rss_mb()))
        await asyncio.sleep(0.1)


async def publish(http: httpx.AsyncClient, node: Node, count: int, start: float,
                  sent: list[float]) -> None:
    for n in range(count):
        delay = start + n / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent.append(time.monotonic())
        answer = await http.post(f"{node.base}/api/publish", timeout=5,
                                 headers={"Authorization": f"Bearer {API_KEY}"},
                                 json={"channel": CHANNEL, "event": "n", "data": n})
        assert answer.status_code == 200, answer.text


async def settled(count: int, local: Subscriber, remote: Subscriber) -> None:
    """Wait until both subscribers have every message accounted for, or nothing more
    arrived for QUIET seconds (at most 15 s in all)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(15):
            heard, quiet_since = -1, time.monotonic()
            while (len(remote.numbers) + remote.lost < count or len(local.numbers) < count):
                now_heard = len(local.numbers) + len(remote.numbers) + len(remote.reports)
                if now_heard != heard:
                    heard, quiet_since = now_heard, time.monotonic()
                elif time.monotonic() - quiet_since > QUIET:
                    return
                await asyncio.sleep(0.05)


async def outage(server: OwnServer, start: float,
                 late: TcpProxy | None) -> tuple[float, float]:
    """Kill the server after BEFORE seconds, restart it OUTAGE seconds later (and let
    node B through `late` LATE seconds after that): when."""
    await asyncio.sleep(max(0.0, start + BEFORE - time.monotonic()))
    killed = time.monotonic() - start
    if late is not None:
        late.refuse()
    await asyncio.to_thread(server.crash)
    await asyncio.sleep(OUTAGE)
    await asyncio.to_thread(server.restart)
    restarted = time.monotonic() - start
    if late is not None:
        await asyncio.sleep(LATE)
        late.allow()
    return killed, restarted


async def scenario(server: OwnServer, broker: str, tmp_path: Path, b_late: bool) -> None:
    count = int(RATE * (BEFORE + OUTAGE + AFTER))
    late = await TcpProxy("127.0.0.1", server.port).start() if b_late else None
    a = Node("a", broker, tmp_path / "a.log")
    b = Node("b", broker.replace(f":{server.port}", f":{late.port}") if late else broker,
             tmp_path / "b.log")
    async with httpx.AsyncClient() as http:
        tasks: list[asyncio.Task[Any]] = []
        try:
            await a.ready(http)
            await b.ready(http)
            local, remote, watched = Subscriber(), Subscriber(), Watch()
            sent: list[float] = []
            subscribed = [asyncio.Event(), asyncio.Event()]
            tasks = [asyncio.create_task(subscribe(a, local, subscribed[0])),
                     asyncio.create_task(subscribe(b, remote, subscribed[1]))]
            async with asyncio.timeout(10):
                for event in subscribed:
                    await event.wait()
            await asyncio.sleep(0.5)  # B's broker subscription is made after its answer
            start = time.monotonic()
            tasks.append(asyncio.create_task(watch(http, a, watched, start)))
            fault = asyncio.create_task(outage(server, start, late))
            await publish(http, a, count, start, sent)
            killed, restarted = await fault
            await settled(count, local, remote)
            recovery = await recover(b, remote, count)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            a.stop()
            b.stop()
            if late is not None:
                await late.aclose()
    summary = (f"killed at {killed:.1f} s, restarted at {restarted:.1f} s; A got "
               f"{len(local.numbers)}, B got {len(remote.numbers)} and {remote.lost} reported "
               f"lost of {count}; reports {remote.reports[:3]}; closed: A {local.closed}, "
               f"B {remote.closed}")
    problems = check(count, local, remote, watched, killed, restarted, (a, b), sent)
    problems.extend(recovery)
    print(figures(local, watched, killed, (a, b), sent), summary, sep="\n")
    assert not problems, summary + "\n" + "\n".join(problems)


async def recover(node: Node, seen: Subscriber, count: int) -> list[str]:
    """Recover on `node` from the last message its subscriber got before its first gap (or
    before the outage): the answer must be the truth."""
    numbers = seen.numbers
    gap = next((i for i, n in enumerate(numbers) if n != i), len(numbers))
    since = next((n for n in reversed(numbers[:gap]) if n in seen.positions), None)
    if since is None:
        return []  # nothing to recover from (every message came without a position)
    epoch, offset = seen.positions[since]
    replayed: list[int] = []
    async with websockets.connect(f"ws://127.0.0.1:{node.port}/ws") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": CHANNEL, "data": {
            "recover": {"epoch": epoch, "offset": offset}}}))
        answer: dict[str, Any] = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(QUIET + 5):
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("event") == "subscription.succeeded":
                        answer = message["data"]
                        if not answer.get("replayed"):
                            break
                    elif message.get("event") == "n":
                        replayed.append(message["data"])
                        if len(replayed) >= answer.get("replayed", 0):
                            break
    if answer.get("recovered") is True and replayed != list(range(since + 1, count)):
        return [f"recovery from {since} said recovered but replayed {len(replayed)} of "
                f"{count - since - 1}: {replayed[:5]}…"]
    if replayed != sorted(set(replayed)) or any(n <= since for n in replayed):
        return [f"recovery from {since} replayed out of order or too much: {replayed[:5]}…"]
    if "recovered" not in answer:
        return [f"recovery from {since} got no answer: {answer}"]
    return []


def figures(local: Subscriber, watched: Watch, killed: float, nodes: tuple[Node, Node],
            sent: list[float]) -> str:
    """What a run measured, for the report."""
    waited = max((at - sent[n] for n, at in zip(local.numbers, local.arrived, strict=True)),
                 default=0.0)
    slowest = max(took for _, _, took in watched.health)
    before = max(mb for at, mb in watched.rss if at <= killed)
    peak = max(mb for _, mb in watched.rss)
    lines = [len(node.lines()) for node in nodes]
    return (f"A's subscriber waited at most {waited:.2f} s; /health took at most "
            f"{slowest:.3f} s; A's RSS {before:.1f} -> {peak:.1f} MB; log lines {lines}")


def check(count: int, local: Subscriber, remote: Subscriber, watched: Watch, killed: float,
          restarted: float, nodes: tuple[Node, Node], sent: list[float]) -> list[str]:
    """Every broken promise, as a line (all of them, not just the first)."""
    problems = []
    # Node A's own subscriber never waits for the broker: everything, in order, promptly.
    if local.numbers != list(range(count)):
        problems.append(f"A's subscriber got {len(local.numbers)} of {count} (or out of order)")
    waited = max((at - sent[n] for n, at in zip(local.numbers, local.arrived, strict=True)),
                 default=0.0)
    if waited > LOCAL_DELAY:
        problems.append(f"A's subscriber waited up to {waited:.1f} s for a message")
    # B: in order, no duplicates, and whatever did not arrive was reported.
    if remote.numbers != sorted(set(remote.numbers)):
        problems.append("B's subscriber got duplicates or a wrong order")
    if len(remote.numbers) + remote.lost < count:
        problems.append(f"B: {count - len(remote.numbers)} missing, {remote.lost} reported lost")
    # /health answered within its deadline throughout, and said so during the outage.
    slow = [(round(at, 1), status, round(took, 2)) for at, status, took in watched.health
            if status is None or took > HEALTH_DEADLINE]
    if slow:
        problems.append(f"/health on A late or unanswered {len(slow)} times: {slow[:5]}")
    during = [status for at, status, _ in watched.health if killed + 0.5 < at < restarted]
    if not during or any(status != "degraded" for status in during):
        problems.append(f"/health on A during the outage: {during}")
    # Memory during the outage (and its drain) grew under a generous bound.
    before = max(mb for at, mb in watched.rss if at <= killed)
    peak = max(mb for at, mb in watched.rss)
    if peak - before >= RSS_GROWTH_MB:
        problems.append(f"A's memory grew from {before:.0f} MB to {peak:.0f} MB")
    # No flood: a bounded number of log lines per node for the whole run.
    for node in nodes:
        lines = node.lines()
        if len(lines) >= LOG_LINES:
            problems.append(f"node {node.name}: {len(lines)} log lines: {lines[:3]}")
    return problems


@pytest.mark.parametrize("b_late", [False, True], ids=["together", "b-late"])
@pytest.mark.parametrize("kind", ["redis", "nats", "postgresql"])
def test_broker_killed_and_restarted_under_load(kind: str, b_late: bool,
                                                tmp_path: Path) -> None:
    """`b-late`: node B reaches the server LATE seconds after node A, so A's publishes
    queued during the outage go out while B is away: B must hear of the gap."""
    server = own_server(kind)
    try:
        prefix = "prefix=rtf" if kind == "nats" else "prefix=rtf:"
        broker = f"{server.url}?{prefix}&{FAST}"
        asyncio.run(scenario(server, broker, tmp_path, b_late))
    finally:
        server.stop()
