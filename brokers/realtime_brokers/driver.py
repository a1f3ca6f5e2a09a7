"""What a broker driver implements for the shared supervisor (:mod:`.supervisor`).

A driver knows one broker: how to connect, publish, subscribe, unsubscribe, close, and how
loss of its connection shows up. It does not reconnect, queue, retry or probe: the
supervisor does that, the same way for every broker. One :class:`Connection` lives for one
connection to the broker; after a loss the supervisor asks the :class:`Driver` for a new
one and subscribes every topic again.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Connection", "Driver", "MessageRejected", "Sink"]


class MessageRejected(Exception):
    """The broker will never accept this message (too large, say): drop it, keep the
    connection. Any other exception from a :class:`Connection` means the connection is
    unusable."""


class Sink(Protocol):
    """Where a connection reports; bound to that one connection by the supervisor, so that
    reports from a connection that has been given up are ignored."""

    def deliver(self, topic: str, data: bytes) -> None:
        """A message arrived for ``topic``; call in the order the broker delivered them."""

    def lost(self, reason: str) -> None:
        """The connection is gone (closed, reset, failed); may be called more than once."""


class Connection(Protocol):
    """One live connection. The supervisor makes one call at a time, never concurrently."""

    @property
    def confirms_publishes(self) -> bool:
        """True if a finished :meth:`publish` means the broker has the message; False if
        publishes are buffered and only a finished :meth:`flush` means that."""

    async def publish(self, topic: str, data: bytes) -> None:
        """Send one message."""

    async def flush(self) -> int:
        """Return once the broker has answered every earlier publish: how many of them it
        rejected for good (they are counted as dropped)."""

    async def subscribe(self, topic: str) -> None:
        """Return once messages published on ``topic`` from now on will be delivered."""

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``."""

    async def close(self) -> None:
        """Release the connection promptly; idempotent, never raises."""


class Driver(Protocol):
    """Makes connections to one broker, as configured by its URL."""

    @property
    def kind(self) -> str:
        """A short name for messages: ``"redis"``, ``"nats"``, …"""

    @property
    def address(self) -> str:
        """Where it connects, for messages; never contains a password."""

    async def connect(self, sink: Sink) -> Connection:
        """Open a connection that reports to ``sink``; raise if that fails."""
