"""Helpers for the broker tests: targets, fault injection, a recording listener."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from realtime_brokers import BrokerClient, BrokerOptions, open_broker

from .proxy import TcpProxy

__all__ = [
    "FAST",
    "SERVERS",
    "Faults",
    "Recorder",
    "Target",
    "eventually",
    "opened",
    "run",
    "subscribed",
]

_T = TypeVar("_T")

SERVERS: dict[str, tuple[str, int, str]] = {
    "redis": ("127.0.0.1", 6379, "redis://{host}:{port}/0"),
    "nats": ("127.0.0.1", 4222, "nats://{host}:{port}"),
    "amqp": ("127.0.0.1", 5672, "amqp://guest:guest@{host}:{port}/"),
    "postgresql": ("127.0.0.1", 5432, "postgresql://postgres@{host}:{port}/test"),
}
"""kind → (host, port, URL template) of the real servers on this machine."""

FAST = BrokerOptions(
    probe_interval=0.3,
    probe_timeout=1.0,
    reconnect_min_interval=0.02,
    reconnect_max_interval=0.2,
    connect_timeout=2.0,
    close_timeout=1.0,
)
"""Options that keep fault tests short."""


def run(scenario: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
    """Run one test scenario on a fresh loop, failing it after ``timeout`` seconds."""

    async def bounded() -> _T:
        async with asyncio.timeout(timeout):
            return await scenario

    return asyncio.run(bounded())


class Faults(Protocol):
    """What a fault test can do to a connection: a :class:`TcpProxy` or a memory bus."""

    def cut(self) -> int: ...
    def refuse(self, refusing: bool = True) -> None: ...
    def allow(self) -> None: ...
    def swallow(self, swallowing: bool = True) -> None: ...


@dataclass(frozen=True)
class Target:
    """One broker under test; ``name`` makes memory buses and PG tables unique per test."""

    kind: str
    name: str

    def url(self, port: int | None = None, **query: str) -> str:
        """The broker's URL, through ``port`` (a proxy, or for memory a link) if given."""
        if self.kind == "memory":
            base = f"memory://test-{self.name}"
            if port is not None:
                query.setdefault("via", str(port))
        else:
            host, real_port, template = SERVERS[self.kind]
            base = template.format(host=host, port=port or real_port)
        if self.kind == "postgresql":
            query.setdefault("table", f"realtime_payloads_{self.name}")
        if query:
            base += "?" + "&".join(f"{key}={value}" for key, value in query.items())
        return base

    def client(
        self,
        listener: Recorder,
        node_id: str,
        *,
        port: int | None = None,
        options: BrokerOptions = FAST,
        **query: str,
    ) -> BrokerClient:
        """A client (not started) for this broker."""
        return open_broker(self.url(port, **query), listener, node_id=node_id, options=options)

    @contextlib.asynccontextmanager
    async def faults(self) -> AsyncIterator[tuple[Faults, int]]:
        """A fault injector and the port to connect through (for memory: a link)."""
        if self.kind == "memory":
            from realtime_brokers.memory_driver import memory_bus

            yield memory_bus(f"test-{self.name}").link("1"), 1
            return
        host, port, _ = SERVERS[self.kind]
        async with TcpProxy(host, port) as proxy:
            yield proxy, proxy.port

    async def cleanup(self) -> None:
        """Drop what the test left on the server (the PG payload table)."""
        if self.kind != "postgresql":
            return
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(self.url().partition("?")[0])
        try:
            await conn.execute(f"DROP TABLE IF EXISTS realtime_payloads_{self.name}")
        finally:
            await conn.close()


class Recorder:
    """A :class:`~realtime_brokers.BrokerListener` that records everything, awaitably."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lost: list[str] = []
        self.restored = 0
        self._changed = asyncio.Event()

    def message_received(self, topic: str, data: bytes) -> None:
        self.messages.append((topic, data))
        self._changed.set()

    def connection_lost(self, reason: str) -> None:
        self.lost.append(reason)
        self._changed.set()

    def connection_restored(self) -> None:
        self.restored += 1
        self._changed.set()

    def data(self, topic: str | None = None) -> list[bytes]:
        """Payloads received (on ``topic``), in order."""
        return [data for t, data in self.messages if topic is None or t == topic]

    async def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Return once ``condition()`` holds; it is checked after every callback."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def wait_messages(self, count: int, timeout: float = 10.0) -> None:
        """Return once ``count`` messages have arrived."""
        await self.wait(lambda: len(self.messages) >= count, timeout)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once ``condition()`` holds, for state that changes without a callback
    (statistics, counters): checked every 10 ms."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def subscribed(client: BrokerClient, recorder: Recorder, *topics: str) -> None:
    """Subscribe ``topics`` and return once each is active at the broker.

    The client publishes a marker on each topic and waits for its own markers: a client
    receives its own messages, and its commands are carried out in order. The markers
    are then removed from ``recorder``.
    """
    markers = {topic: b"ready:" + secrets.token_hex(8).encode() for topic in topics}
    for topic in topics:
        client.subscribe_nowait(topic)
    for topic, marker in markers.items():
        client.publish_nowait(topic, marker)
    wanted = set(markers.items())
    await recorder.wait(lambda: wanted <= set(recorder.messages))
    recorder.messages[:] = [item for item in recorder.messages if item not in wanted]


@contextlib.asynccontextmanager
async def opened(*clients: BrokerClient) -> AsyncIterator[None]:
    """Start ``clients``; close them all on the way out, whatever happened."""
    try:
        for client in clients:
            await client.start()
        yield
    finally:
        for client in clients:
            await client.aclose()
