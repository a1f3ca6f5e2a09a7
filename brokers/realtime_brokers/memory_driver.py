"""The in-process broker: ``memory://`` or ``memory://NAME``.

All clients in one process that use the same NAME share one :class:`MemoryBus`; it
delivers each message to every connection subscribed to its topic, in publish order, on
the subscriber's event loop. It is the embedded default for a single process and the
broker of simulated clusters in tests.

A bus can also misbehave on purpose, so the supervisor's fault handling can be tested
without a network: :meth:`MemoryBus.cut`, :meth:`MemoryBus.refuse` and
:meth:`MemoryBus.swallow` mirror the TCP proxy of the broker tests.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from .api import BrokerOptions
from .driver import Connection, Sink

__all__ = ["MemoryBus", "MemoryDriver", "create_driver", "memory_bus"]

_BUSES: dict[str, MemoryBus] = {}


def memory_bus(name: str = "") -> MemoryBus:
    """The bus that ``memory://NAME`` clients of this process share."""
    bus = _BUSES.get(name)
    if bus is None:
        bus = _BUSES[name] = MemoryBus(name)
    return bus


class MemoryBus:
    """Topics → subscribed connections, within one process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._subscribers: dict[str, set[_MemoryConnection]] = {}
        self._connections: set[_MemoryConnection] = set()
        self.refusing = False
        self.swallowing = False

    def cut(self) -> int:
        """Break every open connection (their clients reconnect); return how many."""
        connections = list(self._connections)
        for conn in connections:
            conn.broken("memory bus connection cut")
        return len(connections)

    def refuse(self, refusing: bool = True) -> None:
        """Make new connections fail (or succeed again with ``False``)."""
        self.refusing = refusing

    def allow(self) -> None:
        """Accept new connections again."""
        self.refusing = False

    def swallow(self, swallowing: bool = True) -> None:
        """Keep connections open but silently lose every message (or stop doing so)."""
        self.swallowing = swallowing

    @property
    def connections(self) -> int:
        """Open connections."""
        return len(self._connections)

    def _connect(self, conn: _MemoryConnection) -> None:
        if self.refusing:
            raise ConnectionRefusedError(f"memory bus {self.name!r} refuses connections")
        self._connections.add(conn)

    def _disconnect(self, conn: _MemoryConnection) -> None:
        self._connections.discard(conn)
        for topic in conn.topics:
            subscribers = self._subscribers.get(topic)
            if subscribers is not None:
                subscribers.discard(conn)
                if not subscribers:
                    del self._subscribers[topic]

    def _subscribe(self, conn: _MemoryConnection, topic: str) -> None:
        self._subscribers.setdefault(topic, set()).add(conn)

    def _unsubscribe(self, conn: _MemoryConnection, topic: str) -> None:
        subscribers = self._subscribers.get(topic)
        if subscribers is not None:
            subscribers.discard(conn)
            if not subscribers:
                del self._subscribers[topic]

    def _publish(self, topic: str, data: bytes) -> None:
        if self.swallowing:
            return
        for conn in self._subscribers.get(topic, ()):
            conn.receive(topic, data)


class _MemoryConnection:
    def __init__(self, bus: MemoryBus, sink: Sink) -> None:
        self._bus = bus
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self.topics: set[str] = set()
        self._open = True

    @property
    def confirms_publishes(self) -> bool:
        return True

    def _check(self) -> None:
        if not self._open:
            raise ConnectionError("memory bus connection is closed")

    def broken(self, reason: str) -> None:
        self._bus._disconnect(self)
        self._open = False
        self._loop.call_soon_threadsafe(self._sink.lost, reason)

    def receive(self, topic: str, data: bytes) -> None:
        if asyncio.get_running_loop() is self._loop:
            self._loop.call_soon(self._sink.deliver, topic, data)
        else:
            self._loop.call_soon_threadsafe(self._sink.deliver, topic, data)

    async def publish(self, topic: str, data: bytes) -> None:
        self._check()
        self._bus._publish(topic, data)

    async def flush(self) -> int:
        self._check()
        return 0

    async def subscribe(self, topic: str) -> None:
        self._check()
        if not self._bus.swallowing:
            self.topics.add(topic)
            self._bus._subscribe(self, topic)

    async def unsubscribe(self, topic: str) -> None:
        self._check()
        self.topics.discard(topic)
        self._bus._unsubscribe(self, topic)

    async def close(self) -> None:
        if self._open:
            self._open = False
            self._bus._disconnect(self)


class MemoryDriver:
    """Connects to the :class:`MemoryBus` named by the URL."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def kind(self) -> str:
        return "memory"

    @property
    def address(self) -> str:
        return f"memory://{self._name}"

    async def connect(self, sink: Sink) -> Connection:
        if memory_bus(self._name).swallowing:
            await asyncio.Event().wait()  # like a TCP connect into a black hole
        conn = _MemoryConnection(memory_bus(self._name), sink)
        memory_bus(self._name)._connect(conn)
        return conn


def create_driver(url: str, *, node_id: str, options: BrokerOptions) -> MemoryDriver:
    """The driver for ``memory://NAME`` (NAME may be empty)."""
    parts = urlsplit(url)
    if parts.query:
        raise ValueError(f"unknown memory broker URL options: {parts.query}")
    return MemoryDriver(parts.netloc + parts.path)
