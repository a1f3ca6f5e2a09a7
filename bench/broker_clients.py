"""A bare publisher and a bare subscriber on each broker: the broker's own client library
alone (the ceiling of scenario 6, cross-node) or through realtime_brokers' driver. Also
the broker addresses, URLs and payload that scenario 6 and ``bench/bridge.py`` share.

Each side is its own process, run with the project's ``.venv`` (it has the client
libraries; ``bench/.venv`` does not) and driven by ``scenarios.py`` over stdin/stdout:

    .venv/bin/python bench/broker_clients.py sub --broker redis --client raw --name N ...
    .venv/bin/python bench/broker_clients.py pub --broker redis --client raw --name N ...

The subscriber prints ``ready`` once subscribed, counts (and in latency mode times) every
message, and shares its count through a small file in /dev/shm so that the publisher keeps
at most ``--window`` messages in flight (no broker buffer grows without bound). On
``stop EXPECTED`` it waits for the stragglers and prints a JSON summary: the count, a
(time, count) sample every 50 ms and the latencies. The publisher publishes as fast as the
window lets it for ``--seconds`` (or at ``--rate`` per second) and prints a JSON summary;
with ``--envelope`` it publishes what a node would, for a node B's subscribers (whoever
counts them writes the count file).

Every client keeps the guarantee that our driver gives a message before it counts as sent,
in the fastest way the library offers:

* redis (redis-py asyncio): ``PUBLISH`` pipelined (``pipeline(transaction=False)``) in
  batches of up to 256, each batch's replies read; the subscriber is ``pubsub().listen()``.
* nats (nats-py): buffered ``publish``, a ``flush()`` (PING/PONG) per batch; the
  subscriber is a ``subscribe(cb=…)`` callback.
* amqp (aio-pika): publisher confirms, each batch's publishes awaited together; the
  subscriber consumes an exclusive queue bound to a direct exchange, ``no_ack``.
* postgresql (asyncpg): ``SELECT pg_notify($1, $2)``, one statement (one round trip) per
  message: asyncpg pipelines independent statements only inside one transaction, which
  would deliver the batch at its commit; the subscriber is ``add_listener``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import mmap
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the broker servers on this machine (the same as tests/brokers use)
SERVERS = {
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
}
KINDS = tuple(SERVERS)
#: the client library that each broker's driver (and its ceiling) uses
LIBRARIES = {"redis": "redis", "nats": "nats-py", "amqp": "aio-pika", "postgresql": "asyncpg"}
#: bytes per message: the envelope our node publishes for scenario 6's message (a header
#: line with origin, sequence and time, then the encoded event with its 64-byte data)
PAYLOAD_BYTES = 240
#: most messages one publish call carries (the driver's supervisor flushes every 256 too)
BATCH = 256
#: the channel the bench publishes on, and its broker topic
CHANNEL = "bench"
TOPIC = "c:" + CHANNEL
MARK = b"@T"
_READY = b"ready?"


def driver_url(kind: str, name: str) -> str:
    """The URL of a realtime_brokers driver (and of our nodes) private to one run."""
    if kind == "memory":
        return f"memory://bench-{name}"
    base = SERVERS[kind]
    return {
        "redis": f"{base}?prefix=bench-{name}:",
        "nats": f"{base}?prefix=bench{name}",
        # durable (the driver's choice): one fixed name, so that runs leave one behind
        "amqp": f"{base}?exchange=bench-crossnode",
        # LISTEN channel names are at most 63 bytes: a short prefix
        "postgresql": f"{base}?prefix=b{name[:6]}:",
    }[kind]


def payload(seq: int, size: int = PAYLOAD_BYTES) -> bytes:
    """A message of ``size`` bytes carrying the marker and the send time once (as
    ``loadgen.payload_bytes`` does: ``@T`` and 19 digits of ``time.monotonic_ns()``)."""
    head = b'{"m":"@T%019d","s":%d,"p":"' % (time.monotonic_ns(), seq)
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


def envelope(seq: int, size: int = PAYLOAD_BYTES) -> bytes:
    """An envelope as a node publishes it for a message on ``CHANNEL`` (see
    ``realtime_proto.envelope``), of about ``size`` bytes, the data carrying the marker: what
    a node B takes from the broker, without a node A."""
    ms = time.time_ns() // 1_000_000
    head = b'{"o":"bench-publisher","s":%d,"k":"c","t":%d}\n' % (seq + 1, ms)
    event = b'{"id":"b%d","type":"event","channel":"%s","event":"bench","data":' % (
        seq, CHANNEL.encode())
    tail = b',"timestamp":%d}' % ms
    return head + event + payload(seq, size - len(head) - len(event) - len(tail)) + tail


def library_version(kind: str) -> str:
    """The client library's name (redis-py for ``redis``) and installed version."""
    from importlib.metadata import version

    dist = LIBRARIES[kind]
    return f"{'redis-py' if dist == 'redis' else dist} {version(dist)}"


# ------------------------------------------------------------------------------ clients

OnMessage = Callable[[bytes], None]


class Client:
    """One side of one broker: connect, subscribe with a callback, publish a batch (return
    once the broker has accepted all of it), close."""

    async def open(self, kind: str, name: str) -> None:
        raise NotImplementedError

    async def subscribe(self, on_message: OnMessage) -> None:
        raise NotImplementedError

    async def publish(self, batch: list[bytes]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class RawRedis(Client):
    async def open(self, kind: str, name: str) -> None:
        import redis.asyncio as redis

        self.redis = redis.Redis.from_url(SERVERS[kind])
        self.channel = f"bench-raw-{name}"

    async def subscribe(self, on_message: OnMessage) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.channel)

        async def read() -> None:
            async for m in pubsub.listen():
                if m["type"] == "message":
                    on_message(m["data"])

        self.reader = asyncio.ensure_future(read())

    async def publish(self, batch: list[bytes]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for data in batch:
            pipe.publish(self.channel, data)
        await pipe.execute()

    async def close(self) -> None:
        if hasattr(self, "reader"):
            self.reader.cancel()
        await self.redis.aclose()


class RawNats(Client):
    async def open(self, kind: str, name: str) -> None:
        import nats

        self.nc = await nats.connect(SERVERS[kind])
        self.subject = f"bench-raw.{name}"

    async def subscribe(self, on_message: OnMessage) -> None:
        async def cb(msg: Any) -> None:
            on_message(msg.data)

        await self.nc.subscribe(self.subject, cb=cb)
        await self.nc.flush()

    async def publish(self, batch: list[bytes]) -> None:
        for data in batch:
            await self.nc.publish(self.subject, data)
        await self.nc.flush()

    async def close(self) -> None:
        await self.nc.close()


class RawAmqp(Client):
    async def open(self, kind: str, name: str) -> None:
        import aio_pika

        self.aio_pika = aio_pika
        self.connection = await aio_pika.connect(SERVERS[kind])
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = await self.channel.declare_exchange(
            f"bench-raw-{name}", aio_pika.ExchangeType.DIRECT, auto_delete=True)

    async def subscribe(self, on_message: OnMessage) -> None:
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.exchange, routing_key="bench")

        async def cb(message: Any) -> None:
            on_message(message.body)

        await queue.consume(cb, no_ack=True)

    async def publish(self, batch: list[bytes]) -> None:
        message = self.aio_pika.Message
        await asyncio.gather(*(
            self.exchange.publish(message(data, delivery_mode=1), routing_key="bench")
            for data in batch))

    async def close(self) -> None:
        await self.connection.close()


class RawPostgres(Client):
    async def open(self, kind: str, name: str) -> None:
        import asyncpg  # type: ignore[import-untyped]

        self.conn = await asyncpg.connect(SERVERS[kind])
        self.channel = f"bench_raw_{name}"

    async def subscribe(self, on_message: OnMessage) -> None:
        def cb(_conn: object, _pid: int, _channel: str, text: str) -> None:
            on_message(text.encode())

        await self.conn.add_listener(self.channel, cb)

    async def publish(self, batch: list[bytes]) -> None:
        for data in batch:
            await self.conn.execute("SELECT pg_notify($1, $2)", self.channel, data.decode())

    async def close(self) -> None:
        await self.conn.close()


class Driver(Client):
    """realtime_brokers' supervised driver, as a node uses it (``open_broker``)."""

    async def open(self, kind: str, name: str) -> None:
        from realtime_brokers import open_broker

        self.on_message: OnMessage | None = None
        self.ready = False
        self.client = open_broker(driver_url(kind, name), self, node_id=f"bench-{os.getpid()}")
        await self.client.start()

    def message_received(self, topic: str, data: bytes) -> None:
        if data == _READY:
            self.ready = True
        elif self.on_message is not None:
            self.on_message(data)

    def connection_lost(self, reason: str) -> None:
        print(f"broker connection lost: {reason}", file=sys.stderr)

    def connection_restored(self) -> None: ...

    async def subscribe(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.client.subscribe_nowait(TOPIC)
        # the subscription is made asynchronously: wait until a message of our own comes
        # back (a broker delivers a node's own messages to it, see docs/brokers.md)
        for _ in range(100):
            self.client.publish_nowait(TOPIC, _READY)
            await asyncio.sleep(0.05)
            if self.ready:
                break

    async def publish(self, batch: list[bytes]) -> None:
        # the driver's queue is its pipeline (a node does not wait either); the publisher's
        # window keeps it far below queue_size
        for data in batch:
            self.client.publish_nowait(TOPIC, data)
        await asyncio.sleep(0)

    async def close(self) -> None:
        await self.client.aclose()  # sends what is still queued first


RAW: dict[str, type[Client]] = {"redis": RawRedis, "nats": RawNats, "amqp": RawAmqp,
                                "postgresql": RawPostgres}


def make_client(kind: str, client: str) -> Client:
    return Driver() if client == "driver" else RAW[kind]()


# ------------------------------------------------------------------------ the two sides


class SharedCount:
    """A uint64 in a file in /dev/shm: the subscriber's count, read by the publisher."""

    def __init__(self, path: str, create: bool) -> None:
        if create:
            Path(path).write_bytes(b"\0" * 8)
        self.file = open(path, "r+b")  # noqa: SIM115 - lives as long as the process
        self.map = mmap.mmap(self.file.fileno(), 8)

    def set(self, value: int) -> None:
        struct.pack_into("Q", self.map, 0, value)

    def get(self) -> int:
        return int(struct.unpack_from("Q", self.map, 0)[0])


async def run_sub(a: argparse.Namespace) -> dict[str, Any]:
    client = make_client(a.broker, a.client)
    await client.open(a.broker, a.name)
    shared = SharedCount(a.counter, create=True)
    now = time.monotonic_ns
    latencies: list[int] = []
    count = 0
    latency = a.mode == "latency"

    def on_message(data: bytes) -> None:
        nonlocal count
        count += 1
        shared.set(count)
        if latency:
            i = data.find(MARK)
            if i >= 0:
                latencies.append(now() - int(data[i + 2 : i + 21]))

    await client.subscribe(on_message)
    samples: list[tuple[int, int]] = []

    async def sample() -> None:
        while True:
            samples.append((now(), count))
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[str] = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(
        sys.stdin.readline()))
    print("ready", flush=True)
    await stop
    line = stop.result()
    expected = int(line.split()[1]) if line.startswith("stop") else count
    deadline = time.monotonic() + a.drain
    while count < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    samples.append((now(), count))
    sampler.cancel()
    await client.close()
    return {"received": count, "samples": samples, "latencies": latencies}


async def run_pub(a: argparse.Namespace) -> dict[str, Any]:
    client = make_client(a.broker, a.client)
    await client.open(a.broker, a.name)
    shared = SharedCount(a.counter, create=False)
    make = envelope if a.envelope else payload
    seq = 0
    t0 = time.monotonic_ns()
    if a.rate > 0:  # paced: an absolute schedule, one message at a time
        start = time.monotonic()
        for seq in range(a.count):
            delay = start + seq / a.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await client.publish([make(seq, a.size)])
        seq = a.count
    else:  # as fast as the window lets
        stop_at = time.monotonic() + a.seconds
        while time.monotonic() < stop_at:
            room = min(BATCH, a.window - (seq - shared.get()))
            if room <= 0:
                await asyncio.sleep(0.001)
                continue
            await client.publish([make(seq + i, a.size) for i in range(room)])
            seq += room
    t1 = time.monotonic_ns()
    await client.close()
    return {"published": seq, "t0": t0, "t1": t1}


async def _bounded(side: Any, limit: float) -> dict[str, Any]:
    """Run one side for at most ``limit`` seconds; past that, print every task's stack
    (where it waits) and fail."""
    try:
        async with asyncio.timeout(limit):
            return await side  # type: ignore[no-any-return]
    except TimeoutError:
        for task in asyncio.all_tasks():
            task.print_stack(limit=15, file=sys.stderr)
        raise


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("side", choices=("pub", "sub"))
    ap.add_argument("--broker", choices=KINDS, required=True)
    ap.add_argument("--client", choices=("raw", "driver"), default="raw")
    ap.add_argument("--name", required=True, help="makes channel names private to one run")
    ap.add_argument("--counter", required=True, help="file in /dev/shm shared by both sides")
    ap.add_argument("--mode", choices=("count", "latency"), default="count")
    ap.add_argument("--size", type=int, default=PAYLOAD_BYTES)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--drain", type=float, default=10.0)
    ap.add_argument("--envelope", action="store_true",
                    help="publish node envelopes on the topic of CHANNEL (with --client driver)")
    a = ap.parse_args()
    # bounded in time whatever happens: a hung side prints every stack and exits
    limit = (a.seconds + (a.count / a.rate if a.rate else 0) + 40 if a.side == "pub"
             else 600)
    faulthandler.dump_traceback_later(limit, exit=True)
    try:
        import uvloop
    except ImportError:
        runner: Callable[..., Any] = asyncio.run
    else:
        runner = uvloop.run
    result = runner(_bounded(run_sub(a) if a.side == "sub" else run_pub(a), limit - 5))
    print(json.dumps(result), flush=True)
    with contextlib.suppress(OSError):
        if a.side == "sub":
            os.unlink(a.counter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
