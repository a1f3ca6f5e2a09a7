"""Every history store keeps the same contract, checked on the real servers: two store
instances on one server stand for two nodes of a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from realtime_brokers.history import HistoryStore, open_history_store, store_url
from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import HistoryLoaded

from ..cluster.nodes import drop_history_streams, require
from .support import run

pytestmark = pytest.mark.broker

STORES = {
    "memory": "memory://contract-{name}",
    "redis": "redis://127.0.0.1:6379/0?prefix=rt-{name}:",
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "nats": "nats://127.0.0.1:4222?prefix=rt{name}",
}
#: a channel name with every punctuation mark channel names may have
ODD = "room.a_b-c=d@e,f;g:h"


@pytest.fixture(params=list(STORES))
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each store in turn, private to the test (a new name or prefix; new channels on
    PostgreSQL)."""
    kind: str = request.param
    if kind != "memory":
        require(kind)
    url = STORES[kind].format(name=uuid.uuid4().hex[:8])
    yield url
    if kind == "nats":
        asyncio.run(drop_history_streams(url))


@contextlib.asynccontextmanager
async def nodes(url: str, count: int = 2) -> AsyncIterator[list[HistoryStore]]:
    """`count` started stores of one URL, as the nodes of a cluster have them."""
    stores = [open_history_store(url) for _ in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        for store in stores:
            await store.start()
            stack.push_async_callback(store.aclose)
        yield stores


def channel(name: str = "room") -> str:
    return f"{name}.{uuid.uuid4().hex[:8]}"


def appends(channel: str, payloads: list[bytes], *, size: int = 100,
            ttl: float = 60.0) -> list[HistoryAppend]:
    return [HistoryAppend(request_id=uuid.uuid4().hex, channel=channel, payload=payload,
                          size=size, ttl=ttl) for payload in payloads]


async def read(store: HistoryStore, channel: str, since: int | None = None, limit: int = 100,
               ttl: float = 60.0) -> HistoryLoaded:
    action = HistoryRead(request_id=uuid.uuid4().hex, channel=channel, since=since,
                         limit=limit, ttl=ttl)
    loaded = await store.read(action, now_ms())
    assert loaded.request_id == action.request_id and loaded.error is None
    return loaded


def moves(channel: str, *moves: tuple[str, int | str], ttl: float = 60.0
          ) -> list[SaveReadPosition]:
    return [SaveReadPosition(channel=channel, user_id=user, position=position, ttl=ttl)
            for user, position in moves]


def now_ms() -> int:
    return int(time.time() * 1000)


def offsets(loaded: HistoryLoaded) -> list[int]:
    return [offset for offset, _ in loaded.entries]


def test_a_new_channel_has_one_epoch_from_its_first_read_on(url: str) -> None:
    async def scenario() -> None:
        room = channel(ODD)
        async with nodes(url) as (a, b):
            first = await read(a, room)
            assert (first.offset, first.entries, dict(first.reads)) == (0, (), {})
            assert (await read(b, room)).epoch == first.epoch
            assert await b.append(appends(room, [b"one"]), now_ms()) == [(first.epoch, 1)]
            assert await a.append(appends(room, [b"two"]), now_ms()) == [(first.epoch, 2)]
            again = await read(b, room, since=0)
            assert (again.epoch, again.offset, again.entries) == (
                first.epoch, 2, ((1, b"one"), (2, b"two")))
            assert (await read(a, channel())).epoch != first.epoch

    run(scenario())


def test_offsets_have_no_gaps_when_two_nodes_append_at_once(url: str) -> None:
    async def scenario() -> None:
        room, other = channel(), channel()
        placed: dict[int, bytes] = {}
        epochs: set[str] = set()
        async with nodes(url) as (a, b):
            for round_ in range(5):
                batches = [appends(room, [b"a%d-%d" % (round_, n) for n in range(10)])
                           + appends(other, [b"x"]),
                           appends(room, [b"b%d-%d" % (round_, n) for n in range(10)])]
                answers = await asyncio.gather(a.append(batches[0], now_ms()),
                                               b.append(batches[1], now_ms()))
                for batch, answer in zip(batches, answers, strict=True):
                    mine = [(action.payload, offset) for action, (epoch, offset)
                            in zip(batch, answer, strict=True) if action.channel == room]
                    assert [o for _, o in mine] == sorted(o for _, o in mine)  # batch order
                    placed.update((offset, payload) for payload, offset in mine)
                    epochs.update(epoch for action, (epoch, _) in zip(batch, answer, strict=True)
                                  if action.channel == room)
            assert len(epochs) == 1
            assert sorted(placed) == list(range(1, 101))
            loaded = await read(b, room, since=0, limit=1000)
            assert dict(loaded.entries) == placed and loaded.offset == 100
            assert (await read(a, other)).offset == 5

    run(scenario())


def test_a_stream_keeps_its_latest_size_messages(url: str) -> None:
    async def scenario() -> None:
        room = channel()
        async with nodes(url) as (a, b):
            await a.append(appends(room, [b"%d" % n for n in range(1, 41)], size=3), now_ms())
            latest = await read(b, room, limit=10)
            assert (latest.offset, latest.entries) == (40, ((38, b"38"), (39, b"39"),
                                                            (40, b"40")))
            assert offsets(await read(b, room, since=0, limit=10)) == [38, 39, 40]
            await b.append(appends(room, [b"41"], size=3), now_ms())
            assert offsets(await read(a, room, since=36, limit=3)) == [39, 40, 41]

    run(scenario())


def test_since_and_limit_pick_the_entries(url: str) -> None:
    async def scenario() -> None:
        room = f"{ODD}.{uuid.uuid4().hex[:8]}"
        twin = room.replace(".", "_")  # a distinct channel, whatever a store makes of names
        async with nodes(url) as (a, b):
            await a.append(appends(room, [b"%d" % n for n in range(1, 7)]), now_ms())
            await b.append(appends(twin, [b"twin"]), now_ms())
            assert offsets(await read(b, room, since=2, limit=2)) == [3, 4]
            assert offsets(await read(b, room, since=4, limit=10)) == [5, 6]
            assert offsets(await read(b, room, limit=2)) == [5, 6]
            everything = await read(b, room, limit=0)
            assert (everything.offset, everything.entries) == (6, ())
            assert offsets(await read(b, room, since=6)) == []
            assert (await read(a, twin, since=0)).entries == ((1, b"twin"),)

    run(scenario())


def test_entries_older_than_the_ttl_are_not_served(url: str) -> None:
    async def scenario() -> None:
        room = channel()
        async with nodes(url) as (a, b):
            await a.append(appends(room, [b"old"], ttl=1.0), now_ms())
            await asyncio.sleep(0.6)  # real servers age by their own clocks
            await b.append(appends(room, [b"new"], ttl=1.0), now_ms())
            await asyncio.sleep(0.6)
            loaded = await read(a, room, since=0, ttl=1.0)
            assert (loaded.offset, loaded.entries) == (2, ((2, b"new"),))

    run(scenario())


def test_read_positions_move_forward_and_strings_replace(url: str) -> None:
    async def scenario() -> None:
        room = channel(ODD)
        async with nodes(url) as (a, b):
            await a.save_reads(moves(room, ("ann", 7)))
            assert dict((await read(b, room)).reads) == {"ann": 7}
            await b.save_reads(moves(room, ("ann", 5), ("ann", 7)))  # backwards, then equal
            assert dict((await read(a, room)).reads) == {"ann": 7}
            await b.save_reads(moves(room, ("ann", 10), ("ann", 8), ("bob", "m-1")))
            assert dict((await read(a, room)).reads) == {"ann": 10, "bob": "m-1"}
            await a.save_reads(moves(room, ("bob", "m-0"), ("ann", "m-9")))
            await a.save_reads(moves(room, ("ann", 3)))  # an integer after a string
            assert dict((await read(b, room)).reads) == {"ann": 3, "bob": "m-0"}
            assert dict((await read(b, channel())).reads) == {}

    run(scenario())


def test_two_nodes_saving_positions_at_once_lose_none(url: str) -> None:
    async def scenario() -> None:
        room = channel()
        async with nodes(url) as (a, b):
            for n in range(1, 6):
                await asyncio.gather(a.save_reads(moves(room, (f"a{n}", n))),
                                     b.save_reads(moves(room, (f"b{n}", n), ("ann", n))))
            reads = dict((await read(a, room)).reads)
            assert reads == {"ann": 5, **{f"{who}{n}": n for who in "ab" for n in range(1, 6)}}

    run(scenario())


@pytest.mark.parametrize("url", ["redis", "postgresql", "nats"], indirect=True)
def test_read_positions_expire_ttl_after_they_last_moved(url: str) -> None:
    """(The memory store keeps positions until evicted by count: not this test's.)"""

    async def scenario() -> None:
        room = channel()
        async with nodes(url) as (a, b):
            await a.save_reads(moves(room, ("ann", 1), ttl=0.5))
            assert dict((await read(b, room, ttl=0.5)).reads) == {"ann": 1}
            await asyncio.sleep(0.8)
            assert dict((await read(b, room, ttl=0.5)).reads) == {}
            await b.save_reads(moves(room, ("ann", 1), ttl=0.5))  # as if never kept
            assert dict((await read(a, room, ttl=0.5)).reads) == {"ann": 1}

    run(scenario())


def test_jetstream_starts_a_new_epoch_once_a_channel_expired() -> None:
    require("nats")
    url = f"nats://127.0.0.1:4222?prefix=rt{uuid.uuid4().hex[:8]}&ttl=1"

    async def scenario() -> None:
        room = channel()
        async with nodes(url, 1) as (store,):
            [(epoch, offset)] = await store.append(appends(room, [b"one"], ttl=1.0), now_ms())
            await asyncio.sleep(1.5)  # the stream's max_age removes the subject's messages
            loaded = await read(store, room, since=0, ttl=1.0)
            assert offset == 1 and loaded.epoch != epoch
            assert (loaded.offset, loaded.entries) == (0, ())
            assert await store.append(appends(room, [b"two"]), now_ms()) == [(loaded.epoch, 1)]

    try:
        run(scenario())
    finally:
        asyncio.run(drop_history_streams(url))


def test_jetstream_serves_what_its_stream_keeps_under_a_larger_rule(
        caplog: pytest.LogCaptureFixture) -> None:
    require("nats")
    url = f"nats://127.0.0.1:4222?prefix=rt{uuid.uuid4().hex[:8]}&size=5"

    async def scenario() -> None:
        room = channel()
        async with nodes(url, 1) as (store,):
            await store.append(appends(room, [b"%d" % n for n in range(1, 11)]), now_ms())
            assert offsets(await read(store, room, since=0)) == [6, 7, 8, 9, 10]  # one by one
            await store.append(appends(room, [b"%d" % n for n in range(11, 31)]), now_ms())
            assert offsets(await read(store, room, since=0)) == [26, 27, 28, 29, 30]  # pushed
            assert offsets(await read(store, room, limit=3)) == [28, 29, 30]

    try:
        run(scenario())
    finally:
        asyncio.run(drop_history_streams(url))
    assert "raise size/ttl in the store URL" in caplog.text


def test_the_auto_store_of_a_nats_broker_is_jetstream_with_its_prefix() -> None:
    broker = "nats://127.0.0.1:4222?prefix=rtx&probe_interval=0.5&queue_size=10"
    assert store_url("auto", broker) == "nats://127.0.0.1:4222?prefix=rtx"
    with pytest.raises(ValueError, match="unknown NATS history store URL options"):
        open_history_store("nats://127.0.0.1:4222?prefix=rtx&exchange=y")
    with pytest.raises(ValueError, match="plain tokens"):
        open_history_store("nats://127.0.0.1:4222?prefix=rt.*")


def test_an_append_that_asks_for_a_new_epoch_starts_the_stream_over(url: str) -> None:
    """What a node asks after a publish it could not place: no recovery may span it."""
    async def scenario() -> None:
        room = channel()
        async with nodes(url) as (a, b):
            old = await read(a, room)
            await a.append(appends(room, [b"one", b"two"]), now_ms())
            fresh = HistoryAppend(request_id=uuid.uuid4().hex, channel=room, payload=b"three",
                                  size=100, ttl=60.0, new_epoch=True)
            [(epoch, offset)] = await b.append([fresh], now_ms())
            assert epoch != old.epoch and offset == 1
            assert await a.append(appends(room, [b"four"]), now_ms()) == [(epoch, 2)]
            again = await read(a, room, since=0)
            assert (again.epoch, again.entries) == (epoch, ((1, b"three"), (2, b"four")))

    run(scenario())
