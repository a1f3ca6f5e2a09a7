"""Carry out a node's history actions against a store, on an asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import HistoryAppended, HistoryLoaded

from ..api import BrokerUnavailable

if TYPE_CHECKING:
    from . import HistoryStore

__all__ = ["HistoryService"]

log = logging.getLogger("realtime_brokers")

#: appends sent to the store in one round trip, at most
_BATCH = 256


class HistoryService:
    """Appends (and read positions) go to the store one batch at a time, in the order
    they came (the store gives offsets in that order); reads run side by side. Every call
    has `timeout` seconds; a failure answers with `error` set, so the node never waits
    for ever.

    Args:
        store: the store (started and closed here).
        answer: receives each `HistoryAppended` / `HistoryLoaded`, on the loop.
    """

    def __init__(self, store: HistoryStore, answer: Callable[[HistoryAppended | HistoryLoaded],
                                                             None], *,
                 timeout: float = 5.0) -> None:
        self._store = store
        self._answer = answer
        self._timeout = timeout
        self._writes: list[HistoryAppend | SaveReadPosition] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._reads: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect the store and start the append worker.

        Raises:
            BrokerUnavailable: the store cannot be reached (or set up) in time.
        """
        try:
            await asyncio.wait_for(self._store.start(), self._timeout)
        except Exception as error:
            with contextlib.suppress(Exception):
                await self._store.aclose()
            raise BrokerUnavailable(f"cannot use the history store: {error!r}") from error
        self._worker = asyncio.create_task(self._append_forever(), name="history-appends")

    def carry_out(self, action: HistoryAppend | HistoryRead | SaveReadPosition) -> None:
        """Queue an action (from the loop's thread)."""
        if not isinstance(action, HistoryRead):
            self._writes.append(action)
            self._idle.clear()
            self._wake.set()
        else:
            task = asyncio.create_task(self._read(action))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)

    async def aclose(self) -> None:
        """Finish the queued appends (within the timeout), then disconnect."""
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self._timeout)
            self._worker.cancel()
        for task in list(self._reads):
            task.cancel()
        await self._store.aclose()

    async def _append_forever(self) -> None:
        while True:
            self._idle.set()
            await self._wake.wait()
            self._wake.clear()
            self._idle.clear()
            while self._writes:
                batch, self._writes = self._writes[:_BATCH], self._writes[_BATCH:]
                await self._append([a for a in batch if isinstance(a, HistoryAppend)])
                await self._save_reads([a for a in batch if isinstance(a, SaveReadPosition)])

    async def _save_reads(self, batch: list[SaveReadPosition]) -> None:
        if not batch:
            return
        try:
            await asyncio.wait_for(self._store.save_reads(batch), self._timeout)
        except Exception as error:
            log.warning("history store: %d read positions not kept: %r", len(batch), error)

    async def _append(self, batch: list[HistoryAppend]) -> None:
        if not batch:
            return
        try:
            positions = await asyncio.wait_for(self._store.append(batch, _now_ms()),
                                               self._timeout)
        except Exception as error:
            log.warning("history store: %d appends failed: %r", len(batch), error)
            for action in batch:
                self._answer(HistoryAppended(request_id=action.request_id, error=repr(error)))
            return
        for action, (epoch, offset) in zip(batch, positions, strict=True):
            self._answer(HistoryAppended(request_id=action.request_id, epoch=epoch,
                                         offset=offset))

    async def _read(self, action: HistoryRead) -> None:
        try:
            answer = await asyncio.wait_for(self._store.read(action, _now_ms()), self._timeout)
        except Exception as error:
            log.warning("history store: a read of %s failed: %r", action.channel, error)
            answer = HistoryLoaded(request_id=action.request_id, error=repr(error))
        self._answer(answer)


def _now_ms() -> int:
    return int(time.time() * 1000)
