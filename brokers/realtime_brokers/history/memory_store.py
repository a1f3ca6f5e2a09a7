"""``memory://NAME``: streams in this process's memory, shared by the nodes of one process
that name the same store (in-process clusters and tests)."""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit

from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import HistoryLoaded
from realtime_proto.history import MemoryStore

__all__ = ["create_store"]

_STORES: dict[str, MemoryStore] = {}


class _ProcessStore:
    def __init__(self, name: str) -> None:
        self._name = name

    async def start(self) -> None:
        pass

    async def append(self, batch: list[HistoryAppend], now_ms: int) -> list[tuple[str, int]]:
        store = self._store()
        answers = [store.append(action, time.monotonic()) for action in batch]
        return [(answer.epoch or "", answer.offset or 0) for answer in answers]

    async def read(self, action: HistoryRead, now_ms: int) -> HistoryLoaded:
        return self._store().read(action, time.monotonic())

    async def save_reads(self, batch: list[SaveReadPosition]) -> None:
        store = self._store()
        for action in batch:
            store.save_read(action)

    async def ping(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def _store(self) -> MemoryStore:
        store = _STORES.get(self._name)
        if store is None:
            store = _STORES[self._name] = MemoryStore(lambda: secrets.token_hex(8))
        return store


def create_store(url: str) -> _ProcessStore:
    """The store named by ``memory://NAME`` (``memory://`` is the default one)."""
    return _ProcessStore(urlsplit(url).netloc)
