"""Carry out a node's history actions against a store, on an asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import HistoryAppended, HistoryLoaded

from ..api import BrokerUnavailable
from ..logs import FailureLog, describe

if TYPE_CHECKING:
    from . import HistoryStore

__all__ = ["HistoryService", "HistoryStatistics"]

log = logging.getLogger("realtime_brokers")

#: appends sent to the store in one round trip, at most
_BATCH = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryStatistics:
    """A history service's state, for /health and /metrics."""

    #: False from a failed call until a probe of the store succeeds
    available: bool
    #: appends and read positions waiting for the store
    queued: int
    #: appends answered as failed without trying: the queue was full
    overflowed: int


class HistoryService:
    """Appends (and read positions) go to the store one batch at a time, in the order
    they came (the store gives offsets in that order); reads run side by side. Every call
    has `timeout` seconds; a failure answers with `error` set, so the node never waits
    for ever.

    Nothing waits long on a store that is down: once a call fails, the service answers
    every queued and every new append and read as failed at once (read positions are
    dropped), and probes the store every `retry_interval` until it answers again. At
    most `max_queued` writes wait; past that the oldest append is answered as failed.
    Repeated failures are logged once with a count (:class:`~..logs.FailureLog`).

    Args:
        store: the store (started and closed here).
        answer: receives each `HistoryAppended` / `HistoryLoaded`, on the loop.
    """

    def __init__(self, store: HistoryStore, answer: Callable[[HistoryAppended | HistoryLoaded],
                                                             None], *,
                 timeout: float = 5.0, retry_interval: float = 1.0,
                 max_queued: int = 10_000) -> None:
        self._store = store
        self._answer = answer
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._max_queued = max_queued
        self._writes: deque[HistoryAppend | SaveReadPosition] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._reads: set[asyncio.Task[None]] = set()
        self._down: str | None = None  # why the store is taken as unreachable
        self._overflowed = 0
        self._append_failures = FailureLog(log, "history store: {n} appends failed",
                                           "history store: appends succeed again")
        self._other_failures = FailureLog(log, "history store: {n} reads or read positions "
                                          "failed", "history store: reads succeed again")

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
        self._worker.add_done_callback(_report_crash)

    def carry_out(self, action: HistoryAppend | HistoryRead | SaveReadPosition) -> None:
        """Queue an action (from the loop's thread)."""
        if self._down is not None:
            self._refuse(action, self._down)
        elif isinstance(action, HistoryRead):
            task = asyncio.create_task(self._read(action))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)
        else:
            if len(self._writes) >= self._max_queued:
                self._overflow()
            self._writes.append(action)
            self._idle.clear()
            self._wake.set()

    def history_statistics(self) -> HistoryStatistics:
        """The service's state now."""
        return HistoryStatistics(available=self._down is None, queued=len(self._writes),
                                 overflowed=self._overflowed)

    async def aclose(self) -> None:
        """Finish the queued appends (within the timeout), then disconnect."""
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self._timeout)
            self._worker.cancel()
        for task in [*self._reads, *([self._prober] if self._prober else [])]:
            task.cancel()
        self._append_failures.close()
        self._other_failures.close()
        await self._store.aclose()

    # -- failing fast ----------------------------------------------------------------------

    def _refuse(self, action: HistoryAppend | HistoryRead | SaveReadPosition,
                error: str) -> None:
        """Answer `action` as failed on the next loop turn (never from inside the caller)."""
        loop = asyncio.get_running_loop()
        if isinstance(action, HistoryAppend):
            self._append_failures.failed(error)
            loop.call_soon(self._answer, HistoryAppended(request_id=action.request_id,
                                                         error=error))
        elif isinstance(action, HistoryRead):
            self._other_failures.failed(error)
            loop.call_soon(self._answer, HistoryLoaded(request_id=action.request_id,
                                                       error=error))
        else:
            self._other_failures.failed(error)

    def _overflow(self) -> None:
        """Make room for one more write: answer the oldest append as failed (read
        positions before it are dropped with it)."""
        while self._writes:
            oldest = self._writes.popleft()
            self._refuse(oldest, "the history queue is full")
            if isinstance(oldest, HistoryAppend):
                self._overflowed += 1
                return

    def _unreachable(self, error: BaseException) -> None:
        """A call failed: fail everything queued, and probe until the store answers."""
        if self._down is None:
            self._down = f"history store unavailable: {describe(error)}"
            self._prober = asyncio.create_task(self._probe(), name="history-probe")
        while self._writes:
            self._refuse(self._writes.popleft(), self._down)

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self._retry_interval)
            try:
                await asyncio.wait_for(self._store.ping(), self._timeout)
            except Exception as error:
                self._down = f"history store unavailable: {describe(error)}"
                continue
            self._down = None
            self._prober = None
            return

    # -- carrying out ----------------------------------------------------------------------

    async def _append_forever(self) -> None:
        while True:
            self._idle.set()
            await self._wake.wait()
            self._wake.clear()
            self._idle.clear()
            while self._writes:
                batch = [self._writes.popleft()
                         for _ in range(min(_BATCH, len(self._writes)))]
                await self._append([a for a in batch if isinstance(a, HistoryAppend)])
                await self._save_reads([a for a in batch if isinstance(a, SaveReadPosition)])

    async def _save_reads(self, batch: list[SaveReadPosition]) -> None:
        if not batch:
            return
        if self._down is not None:
            self._other_failures.failed(self._down, len(batch))
            return
        try:
            await asyncio.wait_for(self._store.save_reads(batch), self._timeout)
        except Exception as error:
            self._other_failures.failed(error, len(batch))
            self._unreachable(error)

    async def _append(self, batch: list[HistoryAppend]) -> None:
        if not batch:
            return
        if self._down is not None:  # it went down while this batch waited
            for action in batch:
                self._refuse(action, self._down)
            return
        try:
            positions = await asyncio.wait_for(self._store.append(batch, _now_ms()),
                                               self._timeout)
        except Exception as error:
            self._append_failures.failed(error, len(batch))
            for action in batch:
                self._answer(HistoryAppended(request_id=action.request_id,
                                             error=describe(error)))
            self._unreachable(error)
            return
        self._append_failures.succeeded()
        for action, (epoch, offset) in zip(batch, positions, strict=True):
            self._answer(HistoryAppended(request_id=action.request_id, epoch=epoch,
                                         offset=offset))

    async def _read(self, action: HistoryRead) -> None:
        try:
            answer = await asyncio.wait_for(self._store.read(action, _now_ms()), self._timeout)
        except Exception as error:
            self._other_failures.failed(error)
            self._unreachable(error)
            answer = HistoryLoaded(request_id=action.request_id, error=describe(error))
        else:
            self._other_failures.succeeded()
        self._answer(answer)


def _report_crash(task: asyncio.Task[None]) -> None:
    """Log a worker that ended with an exception: a bug, so with its traceback."""
    if not task.cancelled() and task.exception() is not None:
        log.error("history store: the append worker failed", exc_info=task.exception())


def _now_ms() -> int:
    return int(time.time() * 1000)
