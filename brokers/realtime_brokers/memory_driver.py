"""The in-process broker: ``memory://`` or ``memory://NAME``.

All clients in one process that use the same NAME share one :class:`MemoryBus`; it
delivers each message to every connection subscribed to its topic, in publish order, on
the subscriber's event loop. It is the embedded default for a single process and the
broker of simulated clusters in tests.

A bus can also misbehave on purpose, so the supervisor's fault handling can be tested
without a network. ``memory://NAME?via=LINK`` connects through the :class:`MemoryLink`
``memory_bus(NAME).link(LINK)``, whose ``cut``, ``refuse``, ``allow`` and ``swallow``
mirror the TCP proxy of the broker tests and touch only the connections made through it.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from .api import BrokerOptions
from .driver import Connection, Sink
from .urls import take_query

__all__ = ["MemoryBus", "MemoryDriver", "MemoryLink", "create_driver", "memory_bus"]

_BUSES: dict[str, MemoryBus] = {}


def memory_bus(name: str = "") -> MemoryBus:
    """The bus that ``memory://NAME`` clients of this process share."""
    bus = _BUSES.get(name)
    if bus is None:
        bus = _BUSES[name] = MemoryBus(name)
    return bus


class MemoryLink:
    """A way onto a bus that tests can break, like a TCP proxy in front of a server."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.refusing = False
        self.swallowing = False
        self.connections: set[_MemoryConnection] = set()

    def cut(self) -> int:
        """Break every connection made through this link; return how many."""
        connections = list(self.connections)
        for conn in connections:
            conn.broken(f"memory link {self.name!r} cut")
        return len(connections)

    def refuse(self, refusing: bool = True) -> None:
        """Make new connections through this link fail (or succeed again with ``False``)."""
        self.refusing = refusing

    def allow(self) -> None:
        """Accept new connections through this link again."""
        self.refusing = False

    def swallow(self, swallowing: bool = True) -> None:
        """Keep connections open but lose every message they send or should receive,
        and let new connections hang (or stop doing so with ``False``)."""
        self.swallowing = swallowing


class MemoryBus:
    """Topics → subscribed connections, within one process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._subscribers: dict[str, set[_MemoryConnection]] = {}
        self._links: dict[str, MemoryLink] = {}

    def link(self, name: str) -> MemoryLink:
        """The link ``memory://BUS?via=NAME`` connects through."""
        link = self._links.get(name)
        if link is None:
            link = self._links[name] = MemoryLink(name)
        return link

    def _subscribe(self, conn: _MemoryConnection, topic: str) -> None:
        self._subscribers.setdefault(topic, set()).add(conn)

    def _unsubscribe(self, conn: _MemoryConnection, topic: str) -> None:
        subscribers = self._subscribers.get(topic)
        if subscribers is not None:
            subscribers.discard(conn)
            if not subscribers:
                del self._subscribers[topic]

    def forget(self, conn: _MemoryConnection) -> None:
        """Drop every subscription of a connection."""
        for topic in [t for t, subscribers in self._subscribers.items() if conn in subscribers]:
            self._unsubscribe(conn, topic)

    def _publish(self, topic: str, data: bytes) -> None:
        # a copy: nodes on other threads (trio, gevent bridges) may subscribe meanwhile
        for conn in list(self._subscribers.get(topic, ())):
            conn.receive(topic, data)


class _MemoryConnection:
    def __init__(self, bus: MemoryBus, link: MemoryLink | None, sink: Sink) -> None:
        self._bus = bus
        self._link = link
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._topics: set[str] = set()
        self._open = True
        if link is not None:
            link.connections.add(self)

    @property
    def confirms_publishes(self) -> bool:
        return True

    @property
    def _swallowing(self) -> bool:
        return self._link is not None and self._link.swallowing

    def _check(self) -> None:
        if not self._open:
            raise ConnectionError("memory bus connection is closed")

    def broken(self, reason: str) -> None:
        self._disconnect()
        self._loop.call_soon_threadsafe(self._sink.lost, reason)

    def receive(self, topic: str, data: bytes) -> None:
        if self._swallowing:
            return
        if asyncio.get_running_loop() is self._loop:
            self._loop.call_soon(self._sink.deliver, topic, data)
        elif self._loop.is_closed():
            self._bus.forget(self)  # its node is gone without closing: never a publisher's error
        else:
            self._loop.call_soon_threadsafe(self._sink.deliver, topic, data)

    async def publish(self, topic: str, data: bytes) -> None:
        self._check()
        if not self._swallowing:
            self._bus._publish(topic, data)

    async def flush(self) -> int:
        self._check()
        return 0

    async def subscribe(self, topic: str) -> None:
        self._check()
        if not self._swallowing:
            self._topics.add(topic)
            self._bus._subscribe(self, topic)

    async def unsubscribe(self, topic: str) -> None:
        self._check()
        self._topics.discard(topic)
        self._bus._unsubscribe(self, topic)

    def _disconnect(self) -> None:
        self._open = False
        if self._link is not None:
            self._link.connections.discard(self)
        for topic in self._topics:
            self._bus._unsubscribe(self, topic)
        self._topics.clear()

    async def close(self) -> None:
        if self._open:
            self._disconnect()


class MemoryDriver:
    """Connects to the :class:`MemoryBus` named by the URL, through a link if given."""

    def __init__(self, name: str, via: str | None) -> None:
        self._name = name
        self._via = via

    @property
    def kind(self) -> str:
        return "memory"

    @property
    def address(self) -> str:
        return f"memory://{self._name}"

    async def connect(self, sink: Sink) -> Connection:
        bus = memory_bus(self._name)
        link = bus.link(self._via) if self._via is not None else None
        if link is not None and link.refusing:
            raise ConnectionRefusedError(f"memory link {link.name!r} refuses connections")
        if link is not None and link.swallowing:
            await asyncio.Event().wait()  # like a TCP connect into a black hole
        return _MemoryConnection(bus, link, sink)


def create_driver(url: str, *, node_id: str, options: BrokerOptions) -> MemoryDriver:
    """The driver for ``memory://NAME`` (NAME may be empty) and ``?via=LINK``."""
    rest, own = take_query(url, {"via"})
    parts = urlsplit(rest)
    if parts.query:
        raise ValueError(f"unknown memory broker URL options: {parts.query}")
    return MemoryDriver(parts.netloc + parts.path, own.get("via"))
