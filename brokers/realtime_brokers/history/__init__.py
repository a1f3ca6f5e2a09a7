"""Shared channel history in a store every node reaches, so clients recover on any node.

``open_history_store(url)`` picks a store by URL scheme and imports its client library
only then:

=====================================  ============================================
``redis://…``, ``rediss://…``          a Redis stream and a hash per channel
``postgresql://…``, ``postgres://…``   two tables (created on first start)
``nats://…``                           a subject per channel in a JetStream stream
``memory://NAME``                      one process's memory (in-process clusters, tests)
=====================================  ============================================

A store answers the core's `HistoryAppend` and `HistoryRead` actions; `HistoryService`
carries them out on an asyncio loop: appends in the order they came (in batches), reads
side by side, each within a timeout, and everything failed at once while the store is
unreachable. See ``docs/brokers.md``.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import HistoryLoaded

from ..api import BrokerError, BrokerOptions
from ..urls import split_options
from .service import HistoryService, HistoryStatistics

__all__ = ["SCHEMES", "HistoryService", "HistoryStatistics", "HistoryStore", "open_history_store",
           "store_url"]

SCHEMES: dict[str, str] = {
    "redis": "redis_store",
    "rediss": "redis_store",
    "postgresql": "postgres_store",
    "postgres": "postgres_store",
    "nats": "nats_store",
    "memory": "memory_store",
}
"""URL scheme → store module in this package."""


class HistoryStore(Protocol):
    """Channel streams with offsets in an epoch, shared by the nodes of a cluster."""

    async def start(self) -> None:
        """Connect (and create what the store needs)."""

    async def append(self, batch: list[HistoryAppend], now_ms: int) -> list[tuple[str, int]]:
        """Append each message in order; each one's (epoch, offset)."""
        ...

    async def read(self, action: HistoryRead, now_ms: int) -> HistoryLoaded:
        """What a channel's stream holds after an offset (or its latest entries), and
        its users' read positions."""
        ...

    async def save_reads(self, batch: list[SaveReadPosition]) -> None:
        """Keep read positions, in order (an integer one never moves backwards)."""

    async def ping(self) -> None:
        """Return once the store answers; raise if it cannot be reached."""

    async def aclose(self) -> None:
        """Disconnect."""


def store_url(setting: str, broker_url: str) -> str | None:
    """The history store for a `history_store` setting: ``local`` (None: each node's
    memory), ``auto`` (the broker's own server when it can store: Redis, PostgreSQL,
    NATS with JetStream; else local), or a store URL.

    Raises:
        ValueError: neither ``local``, ``auto`` nor a URL of a known store.
    """
    if setting == "local":
        return None
    if setting == "auto":
        scheme = broker_url.partition(":")[0].lower()
        if scheme not in SCHEMES or scheme == "memory":
            return None
        return split_options(broker_url, BrokerOptions())[0]  # the broker's options go
    if setting.partition(":")[0].lower() not in SCHEMES or "://" not in setting:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        raise ValueError(f"history store {setting.partition('?')[0]!r}: use local, auto or "
                         f"one of {known}")
    return setting


def open_history_store(url: str) -> HistoryStore:
    """A store for ``url``, not yet connected (``await store.start()``).

    Raises:
        ValueError: unknown scheme.
        BrokerError: the store's client library is not installed.
    """
    scheme = url.partition(":")[0].lower()
    module_name = SCHEMES.get(scheme)
    if module_name is None:
        raise ValueError(f"no history store for {scheme}://")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as exc:
        raise BrokerError(f"the {scheme} history store needs its client library ({exc})") from exc
    store: HistoryStore = module.create_store(url)
    return store
