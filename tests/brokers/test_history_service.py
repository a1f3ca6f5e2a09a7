"""The history service during a store outage: every append and read answered at once
(failed) while the store is unreachable, then offsets again once it answers; a bounded
queue; failures logged once with a count, without tracebacks.

The real stores are reached through :class:`~tests.brokers.proxy.TcpProxy`, which cuts
and refuses their connections; the queue bound is checked against a store that holds its
first append until told to go on (to isolate that one function).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from realtime_brokers.history import HistoryService, open_history_store
from realtime_brokers.logs import FailureLog
from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import HistoryAppended, HistoryLoaded

from ..cluster.nodes import drop_history_streams, require
from .proxy import TcpProxy
from .support import run

pytestmark = pytest.mark.broker

STORES = {
    "redis": "redis://127.0.0.1:{port}/0?prefix=rt-{name}:",
    "postgresql": "postgresql://postgres@127.0.0.1:{port}/test",
    "nats": "nats://127.0.0.1:{port}?prefix=rt{name}",
}
PORTS = {"redis": 6379, "postgresql": 5432, "nats": 4222}
Answer = HistoryAppended | HistoryLoaded


def append(channel: str) -> HistoryAppend:
    return HistoryAppend(request_id=uuid.uuid4().hex, channel=channel, payload=b"{}",
                         size=100, ttl=60.0)


class Answers:
    """The service's answers by request id, and a way to wait for some."""

    def __init__(self) -> None:
        self.by_id: dict[str, Answer] = {}
        self._changed = asyncio.Event()

    def __call__(self, answer: Answer) -> None:
        self.by_id[answer.request_id] = answer
        self._changed.set()

    async def wait(self, *request_ids: str, timeout: float) -> list[Answer]:
        async with asyncio.timeout(timeout):
            while not all(r in self.by_id for r in request_ids):
                self._changed.clear()
                await self._changed.wait()
        return [self.by_id[r] for r in request_ids]


@pytest.mark.parametrize("kind", list(STORES))
def test_appends_and_reads_fail_at_once_while_the_store_is_down_then_work_again(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    require(kind)
    name = uuid.uuid4().hex[:8]
    room = f"room.{name}"

    async def scenario() -> None:
        async with TcpProxy("127.0.0.1", PORTS[kind]) as proxy:
            answers = Answers()
            service = HistoryService(
                open_history_store(STORES[kind].format(port=proxy.port, name=name)), answers,
                retry_interval=0.2)
            await service.start()
            try:
                first = append(room)
                service.carry_out(first)
                [answer] = await answers.wait(first.request_id, timeout=10)
                assert isinstance(answer, HistoryAppended) and answer.error is None

                proxy.refuse()
                assert proxy.cut() >= 1
                # Every append is answered, as failed, within a second; nothing queues.
                batch = [append(room) for _ in range(300)]
                for action in batch:
                    service.carry_out(action)
                failed = await answers.wait(*(a.request_id for a in batch), timeout=1.5)
                assert all(isinstance(a, HistoryAppended) and a.error for a in failed)
                assert not service.history_statistics().available
                assert service.history_statistics().queued == 0
                read = HistoryRead(request_id=uuid.uuid4().hex, channel=room, since=0,
                                   limit=10, ttl=60.0)
                service.carry_out(read)
                service.carry_out(SaveReadPosition(channel=room, user_id="u", position=1,
                                                   ttl=60.0))
                [loaded] = await answers.wait(read.request_id, timeout=1.5)
                assert isinstance(loaded, HistoryLoaded) and loaded.error

                proxy.allow()
                async with asyncio.timeout(15):
                    while not service.history_statistics().available:
                        await asyncio.sleep(0.05)
                again = append(room)
                service.carry_out(again)
                [answer] = await answers.wait(again.request_id, timeout=10)
                assert isinstance(answer, HistoryAppended) and answer.error is None
                # A failed append took no offset, except that NATS may still store one
                # that was on its way when the connection went (its answer was lost).
                assert answer.offset == 2 or (kind == "nats" and answer.offset == 3)
            finally:
                await service.aclose()

    try:
        with caplog.at_level(logging.INFO):
            run(scenario())
    finally:
        if kind == "nats":
            asyncio.run(drop_history_streams(STORES[kind].format(port=4222, name=name)))
    lines = [r for r in caplog.records if r.name.startswith(("realtime", "nats", "asyncpg"))]
    # One line at the first failure, one when appends work again, one for reads: no flood.
    assert len(lines) <= 6, [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in lines)
    assert any("appends succeed again (after 300 failures)" in r.getMessage() for r in lines)


class _HeldStore:
    """A store whose first append waits for `go`; offsets count up from 1."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.top = 0

    async def start(self) -> None:
        pass

    async def append(self, batch: list[HistoryAppend], now_ms: int) -> list[tuple[str, int]]:
        await self.go.wait()
        self.top += len(batch)
        return [("e", self.top - len(batch) + i + 1) for i in range(len(batch))]

    async def read(self, action: HistoryRead, now_ms: int) -> HistoryLoaded:
        raise NotImplementedError

    async def save_reads(self, batch: list[SaveReadPosition]) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def test_a_full_queue_fails_its_oldest_appends_and_counts_them() -> None:
    async def scenario() -> None:
        store, answers = _HeldStore(), Answers()
        service = HistoryService(store, answers, max_queued=5)
        await service.start()
        try:
            first = append("room.a")
            service.carry_out(first)
            await asyncio.sleep(0)  # the worker takes it and waits on the store
            queued = [append("room.a") for _ in range(8)]
            for action in queued:
                service.carry_out(action)
            stats = service.history_statistics()
            assert (stats.queued, stats.overflowed) == (5, 3)
            refused = await answers.wait(*(a.request_id for a in queued[:3]), timeout=1)
            assert all(isinstance(a, HistoryAppended) and a.error == "the history queue is full"
                       for a in refused)
            store.go.set()
            kept = await answers.wait(first.request_id, *(a.request_id for a in queued[3:]),
                                      timeout=5)
            assert [a.offset for a in kept if isinstance(a, HistoryAppended)] == [1, 2, 3, 4, 5, 6]
        finally:
            await service.aclose()

    run(scenario())


def test_repeated_failures_are_logged_once_then_summarised(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("realtime_brokers.test")

    async def scenario() -> None:
        failures = FailureLog(logger, "store: {n} appends failed", "store: appends work again",
                              interval=0.2)
        for n in range(1000):
            failures.failed(ConnectionError(f"refused {n}"))
        assert len(caplog.records) == 1
        async with asyncio.timeout(5):  # the summary at the end of the window
            while len(caplog.records) < 2:
                await asyncio.sleep(0.02)
        failures.failed(ConnectionError("refused again"), count=10)
        failures.succeeded()
        failures.succeeded()  # said once

    with caplog.at_level(logging.INFO, logger="realtime_brokers.test"):
        run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "store: 1 appends failed: ConnectionError: refused 0"
    assert messages[1].startswith("store: 999 appends failed in the last ")
    assert messages[1].endswith("(last error: ConnectionError: refused 999)")
    assert messages[2].startswith("store: 10 appends failed in the last ")
    assert messages[3] == "store: appends work again (after 1,010 failures)"
    assert len(messages) == 4 and not any(r.exc_info for r in caplog.records)


