"""Redis Pub/Sub: ``redis://[[user]:password@]host[:port][/db][?prefix=rt:]``.

Each connection is a pair of redis-py asyncio connections: one in subscribe mode, read by
one task that delivers messages in arrival order, and one for ``PUBLISH``, pipelined: the
supervisor's :meth:`flush` reads the replies. The channel of
a topic is ``prefix + topic`` (Redis channel names are binary-safe), so the topic is
recovered from the channel name. redis-py's own retries are off: the supervisor
reconnects. A closed or reset socket shows up as an error in the reader task or in a
publish; a silent one is found by the supervisor's probe, not by a socket timeout
(redis-py's default of 5 s would end a subscription that hears nothing for 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from typing import Any

from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.exceptions import ResponseError

from .api import BrokerOptions
from .driver import Sink
from .urls import display_address, take_query

__all__ = ["RedisDriver", "create_driver"]

logger = logging.getLogger("realtime_brokers")


#: packed PUBLISH chunks gathered before one write (the supervisor flushes the rest)
_WRITE_BATCH = 256


class _RedisConnection:
    def __init__(self, pub: AbstractConnection, sub: AbstractConnection, prefix: str) -> None:
        self._pub = pub
        self._sub = sub
        self._prefix = prefix.encode("utf-8")
        self._pending: deque[tuple[bytes, asyncio.Future[None]]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._replies_due = 0
        self._unsent: list[bytes | memoryview] = []

    @property
    def confirms_publishes(self) -> bool:
        return False

    def start_reading(self, sink: Sink) -> None:
        self._reader = asyncio.create_task(self._read(sink), name="redis-pubsub-reader")

    async def _read(self, sink: Sink) -> None:
        prefix_length = len(self._prefix)
        try:
            while True:
                # math.inf: wait as long as the channel is quiet (None would mean the
                # connection's socket_timeout in redis-py 8)
                reply = await self._sub.read_response(disable_decoding=True, timeout=math.inf)
                if not isinstance(reply, list) or len(reply) < 3:
                    continue
                kind = reply[0]
                if kind == b"message":
                    sink.deliver(reply[1][prefix_length:].decode("utf-8"), bytes(reply[2]))
                elif kind in (b"subscribe", b"unsubscribe") and self._pending:
                    _, done = self._pending.popleft()
                    if not done.done():
                        done.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"redis: {type(exc).__name__}: {exc}"
            error = ConnectionError(reason)
        else:  # pragma: no cover - the loop only ends by an exception
            return
        for _, done in self._pending:
            if not done.done():
                done.set_exception(error)
        self._pending.clear()
        sink.lost(reason)

    def _channel(self, topic: str) -> bytes:
        return self._prefix + topic.encode("utf-8")

    async def publish(self, topic: str, data: bytes) -> None:
        # Packed here, written in batches: one write per PUBLISH costs more than Redis does.
        self._unsent.extend(self._pub.pack_command("PUBLISH", self._channel(topic), data))
        self._replies_due += 1
        if len(self._unsent) >= _WRITE_BATCH:
            await self._write_unsent()

    async def _write_unsent(self) -> None:
        if self._unsent:
            chunks, self._unsent = self._unsent, []
            await self._pub.send_packed_command(b"".join(chunks), check_health=False)

    async def flush(self) -> int:
        await self._write_unsent()
        rejected = 0
        while self._replies_due:
            try:
                await self._pub.read_response()
            except ResponseError as exc:
                logger.error("redis: PUBLISH rejected: %s", exc)
                rejected += 1
            self._replies_due -= 1
        return rejected

    async def _change(self, command: str, topic: str) -> None:
        channel = self._channel(topic)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((channel, done))
        await self._sub.send_command(command, channel)
        await done

    async def subscribe(self, topic: str) -> None:
        await self._change("SUBSCRIBE", topic)

    async def unsubscribe(self, topic: str) -> None:
        await self._change("UNSUBSCRIBE", topic)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        for conn in (self._pub, self._sub):
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)


class RedisDriver:
    """Opens :class:`_RedisConnection` pairs for one Redis URL."""

    def __init__(self, url: str, *, node_id: str, options: BrokerOptions) -> None:
        rest, own = take_query(url, {"prefix"})
        self._prefix = own.get("prefix", "rt:")
        self._address = display_address(url)
        kwargs: dict[str, Any] = dict(parse_url(rest))
        self._class: type[AbstractConnection] = kwargs.pop("connection_class", Connection)
        kwargs["protocol"] = 2  # the reader parses RESP2 Pub/Sub replies
        kwargs.setdefault("socket_connect_timeout", options.connect_timeout)
        kwargs.setdefault("socket_timeout", None)  # the supervisor's probes judge liveness
        kwargs["retry"] = None
        kwargs["client_name"] = f"realtime:{node_id}".replace(" ", "_")
        self._kwargs = kwargs

    @property
    def kind(self) -> str:
        return "redis"

    @property
    def address(self) -> str:
        return self._address

    async def connect(self, sink: Sink) -> _RedisConnection:
        pub = self._class(**self._kwargs)
        sub = self._class(**self._kwargs)
        try:
            await pub.connect()  # type: ignore[no-untyped-call]
            await sub.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            for conn in (pub, sub):
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            raise
        connection = _RedisConnection(pub, sub, self._prefix)
        connection.start_reading(sink)
        return connection


def create_driver(url: str, *, node_id: str, options: BrokerOptions) -> RedisDriver:
    """The driver for a ``redis://`` or ``rediss://`` URL."""
    return RedisDriver(url, node_id=node_id, options=options)
