"""The public types of ``realtime_brokers``: what an adapter holds and what it implements.

A broker client moves opaque ``bytes`` for a ``topic`` between the server processes of one
cluster and tells its listener when its connection goes and comes back. Everything about
the envelope inside the bytes (origin, sequence, de-duplication, presence) is core logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, final

from realtime_proto.metrics import Histogram, HistogramSnapshot

__all__ = [
    "BrokerClient",
    "BrokerError",
    "BrokerListener",
    "BrokerOptions",
    "BrokerStatistics",
    "BrokerUnavailable",
]


class BrokerError(Exception):
    """A broker client was used wrongly (closed, started twice) or is misconfigured."""


class BrokerUnavailable(BrokerError):
    """The first connection to the broker could not be made."""


class BrokerListener(Protocol):
    """Receives what a broker client has to report; every call runs on the asyncio loop."""

    def message_received(self, topic: str, data: bytes) -> None:
        """``data`` was published on ``topic``, which this client subscribes to."""

    def connection_lost(self, reason: str) -> None:
        """The connection went; called once per outage. Reconnecting has started."""

    def connection_restored(self) -> None:
        """The connection is back and every subscription has been made again."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerStatistics:
    """A snapshot of one client's counters."""

    connected: bool
    """A connection is up and serving the command queue."""
    published: int
    """Messages the broker accepted (probes not counted)."""
    received: int
    """Messages handed to the listener (probes not counted)."""
    dropped: int
    """Outbound messages discarded: the queue overflowed, the broker rejected the message
    for good, or the client closed before they could be sent."""
    reconnects: int
    """Successful reconnections after the first connection."""
    queued: int
    """Messages waiting in the outbound queue."""
    subscriptions: int
    """Topics subscribed to (as asked for, even while disconnected)."""
    last_error: str | None
    """Why the connection was last lost or a reconnection failed."""
    publish_latency: HistogramSnapshot = field(default_factory=lambda: Histogram().snapshot())
    """Seconds from `publish_nowait` to the broker taking the message (written, or
    confirmed by brokers that confirm)."""
    stalled: bool = False
    """Connected, with commands waiting, but none has gone through for a second: the
    broker is not answering (the probe declares the connection lost a little later)."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerOptions:
    """Tuning shared by every driver; each can also be set as a URL query parameter."""

    queue_size: int = 10_000
    """Commands (publish, subscribe, unsubscribe) the outbound queue holds."""
    probe_interval: float = 5.0
    """Seconds between end-to-end probes while connected."""
    probe_timeout: float = 5.0
    """Seconds a probe may take to come back before the connection is declared dead."""
    reconnect_min_interval: float = 0.1
    """First delay before reconnecting, in seconds; doubles per failed attempt, with
    jitter (each wait is between half and all of the current delay)."""
    reconnect_max_interval: float = 5.0
    """Largest delay between reconnection attempts, in seconds."""
    connect_timeout: float = 5.0
    """Seconds allowed for connecting and re-subscribing every topic."""
    close_timeout: float = 2.0
    """Seconds ``aclose`` spends sending what is still queued, and closing a connection."""

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        for name in (
            "probe_interval",
            "probe_timeout",
            "reconnect_min_interval",
            "connect_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.close_timeout < 0:
            raise ValueError("close_timeout must not be negative")
        if self.reconnect_max_interval < self.reconnect_min_interval:
            raise ValueError("reconnect_max_interval must not be below reconnect_min_interval")


class BrokerClient(Protocol):
    """One node's connection to the broker, as the adapter holds it."""

    async def start(self) -> None:
        """Connect; raise :class:`BrokerUnavailable` if the first connection fails."""

    def publish_nowait(self, topic: str, data: bytes) -> None:
        """Queue ``data`` for ``topic``; messages leave in the order they were queued."""

    def subscribe_nowait(self, topic: str) -> None:
        """Queue a subscription to ``topic`` (no effect if already subscribed)."""

    def unsubscribe_nowait(self, topic: str) -> None:
        """Queue the end of a subscription; nothing more is delivered for ``topic``."""

    async def aclose(self) -> None:
        """Send what is queued (bounded by ``close_timeout``), then disconnect."""

    def statistics(self) -> BrokerStatistics:
        """The client's counters now."""
