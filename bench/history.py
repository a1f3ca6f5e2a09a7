"""Each shared history store's speed, through the store API as `HistoryService` drives it
(appends in batches of up to 256, one batch at a time per node): appends/s to one hot
channel from one and from two nodes, to 64 channels, and the latency of the reads a
subscribe makes. Prints a Markdown table.

    .venv/bin/python -m bench.history [--appends 2000] [--reads 200] [--stores redis,nats]

(run from the repository's root: it deletes the JetStream streams it made with the tests'
helper).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from realtime_brokers.history import HistoryStore, open_history_store
from realtime_proto.actions import HistoryAppend, HistoryRead
from tests.cluster.nodes import drop_history_streams

STORES = {
    "memory": "memory://bench",
    "redis": "redis://127.0.0.1:6379/0?prefix=rtbench-{name}:",
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "nats": "nats://127.0.0.1:4222?prefix=rtbench{name}",
}
PAYLOAD = b'{"type":"message","channel":"room.x","event":"n","data":"' + b"x" * 100 + b'"}'
BATCH = 256


def appends(channels: list[str], count: int) -> list[HistoryAppend]:
    return [HistoryAppend(request_id=str(n), channel=channels[n % len(channels)],
                          payload=PAYLOAD, size=100, ttl=300) for n in range(count)]


async def append_rate(stores: list[HistoryStore], channels: list[str], count: int) -> float:
    """Appends/s when every store appends `count / len(stores)` at once, batch by batch."""
    async def node(store: HistoryStore) -> None:
        todo = appends(channels, count // len(stores))
        for start in range(0, len(todo), BATCH):
            await store.append(todo[start:start + BATCH], int(time.time() * 1000))

    started = time.perf_counter()
    await asyncio.gather(*(node(store) for store in stores))
    return count / (time.perf_counter() - started)


async def latency_ms(call: Callable[[], Awaitable[object]], count: int) -> float:
    """The median milliseconds of `count` calls, one after another."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def measure(url: str, count: int, reads: int) -> list[str]:
    a, b = open_history_store(url), open_history_store(url)
    await a.start()
    await b.start()
    try:
        room = f"room.{uuid.uuid4().hex[:8]}"
        one = await latency_ms(lambda: a.append(appends([room], 1), int(time.time() * 1000)),
                               reads)
        hot = await append_rate([a], [room], count)
        shared = await append_rate([a, b], [room], count)
        spread = await append_rate([a], [f"room.{n}-{uuid.uuid4().hex[:8]}" for n in range(64)],
                                   count)

        def read(since: int | None, limit: int) -> Callable[[], Awaitable[object]]:
            return lambda: b.read(HistoryRead(request_id="r", channel=room, since=since,
                                              limit=limit, ttl=300), int(time.time() * 1000))

        top = (await b.read(HistoryRead(request_id="r", channel=room, since=None, limit=0,
                                        ttl=300), int(time.time() * 1000))).offset
        figures = [one, hot, shared, spread, await latency_ms(read(None, 0), reads),
                   await latency_ms(read(top - 10, 100), reads),
                   await latency_ms(read(None, 100), reads)]
    finally:
        await a.aclose()
        await b.aclose()
        if url.startswith("nats"):
            await drop_history_streams(url)
    return [f"{one:.2f} ms", *(f"{rate:,.0f}" for rate in (hot, shared, spread)),
            *(f"{ms:.2f} ms" for ms in figures[4:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--stores", default="memory,redis,postgresql,nats")
    args = parser.parse_args()
    print("| store | one append | appends/s, 1 channel | 1 channel, 2 nodes | 64 channels "
          "| read, no entries | recover 10 | latest 100 |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.stores.split(","):
        url = STORES[kind].format(name=uuid.uuid4().hex[:8])
        row = asyncio.run(measure(url, args.appends, args.reads))
        print(f"| {kind} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
