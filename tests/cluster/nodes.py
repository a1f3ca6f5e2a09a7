"""Real `realtime serve` processes joined by a real broker, for the cluster tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import nats
import pytest

API_KEY = "cluster-key"
SECRET = "cluster-secret"
TTL = 3.0

SERVERS = {
    "redis": (6379, "redis://127.0.0.1:{port}/0?prefix=rt-{name}:"),
    "nats": (4222, "nats://127.0.0.1:{port}?prefix=rt{name}"),
    "amqp": (5672, "amqp://guest:guest@127.0.0.1:{port}/?exchange=rt-{name}"),
    # LISTEN names are at most 63 bytes: the driver needs a short prefix
    "postgresql": (5432, "postgresql://postgres@127.0.0.1:{port}/test?prefix=r{name}:"),
}
#: quick loss detection for tests (every driver understands these options)
FAST = "probe_interval=0.5&probe_timeout=1&reconnect_min_interval=0.05&reconnect_max_interval=0.5"


def require(kind: str) -> None:
    """Skip when the broker server is down; under CI, fail instead."""
    port = SERVERS[kind][0]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return
    except OSError as error:
        problem = f"{kind} server not reachable at 127.0.0.1:{port} ({error})"
    if os.environ.get("CI"):
        pytest.fail(f"{problem}; CI must test every broker")
    pytest.skip(problem)


def broker_url(kind: str, *, port: int | None = None, name: str | None = None) -> str:
    """A URL private to one test cluster (its own prefix or exchange)."""
    default_port, template = SERVERS[kind]
    url = template.format(port=port or default_port, name=name or uuid.uuid4().hex[:6])
    return url + ("&" if "?" in url else "?") + FAST


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NodeProcess:
    """One `realtime serve` process on a free port."""

    def __init__(self, name: str, broker: str, *extra: str) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "realtime_server.cli", "serve",
                   "--port", str(self.port), "--broker", broker, "--node-id", name,
                   "--api-key", API_KEY, "--jwt-secret", SECRET, "--log-level", "warning",
                   "--presence-ttl", str(TTL), "--presence-heartbeat-interval", "1",
                   "--connection-rate", "0", "--api-rate", "0", "--message-rate", "0", *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.process.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not start")

    def kill(self) -> None:
        """SIGKILL: the node dies without a word."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.communicate(timeout=10)


def start_nodes(broker: str, count: int, *extra: str) -> list[NodeProcess]:
    nodes = [NodeProcess(f"n{index + 1}", broker, *extra) for index in range(count)]
    try:
        for node in nodes:
            node.wait_ready()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


async def api(http: httpx.AsyncClient, node: NodeProcess, method: str, path: str,
              body: object = None) -> httpx.Response:
    return await http.request(method, f"{node.base}/api/{path}", json=body,
                              headers={"Authorization": f"Bearer {API_KEY}"})


async def metric(http: httpx.AsyncClient, node: NodeProcess, name: str,
                 labels: str = "") -> float:
    """A sample of `name` from the node's /metrics: the first whose labels contain `labels`."""
    text = (await http.get(f"{node.base}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{labels}}} in /metrics")


async def eventually(check: Callable[[], object], timeout: float = 15.0,
                     interval: float = 0.05) -> None:
    """Wait until `check()` is truthy (state another node reaches over the broker)."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)


async def drop_history_streams(url: str) -> None:
    """Delete the JetStream streams of the NATS history store of `url`'s prefix (each test
    cluster has a new prefix: its streams would stay on the server)."""
    prefix = parse_qs(urlsplit(url).query)["prefix"][0]
    client = await nats.connect(url.partition("?")[0])
    try:
        manager = client.jsm()
        for info in await manager.streams_info():
            if any(subject.startswith(f"{prefix}.") for subject in info.config.subjects or ()):
                await manager.delete_stream(str(info.config.name))
    finally:
        await client.close()
