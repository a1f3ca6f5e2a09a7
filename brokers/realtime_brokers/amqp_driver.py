"""RabbitMQ (AMQP 0-9-1): ``amqp://user:password@host[:port][/vhost][?exchange=realtime]``.

All nodes publish to one ``direct`` exchange (durable, named by ``exchange``), so topic
characters are never wildcards. Each connection declares one exclusive, auto-delete,
non-durable queue for its node and binds it once per subscribed topic; the queue and its
bindings disappear with the connection, and the supervisor binds every topic again on
the next one. The routing key is the topic itself when it fits in 255 bytes, otherwise
``~`` and a digest, with the topic carried in the ``rt-topic`` header. Publishes are
pipelined and confirmed by the broker (publisher confirms) before they count as sent.
Loss shows up as a closed connection or channel; other query parameters are aio-pika's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from .api import BrokerOptions
from .driver import Sink
from .naming import bounded_name
from .urls import display_address, take_query

__all__ = ["AmqpDriver", "create_driver"]

logger = logging.getLogger("realtime_brokers")

_TOPIC_HEADER = "rt-topic"
_ROUTING_KEY_LIMIT = 255


def _routing_key(topic: str) -> str:
    return bounded_name("", topic, _ROUTING_KEY_LIMIT)


class _AmqpConnection:
    def __init__(
        self,
        connection: AbstractConnection,
        underlay: aiormq.abc.AbstractChannel,
        exchange: AbstractExchange,
        queue: AbstractQueue,
    ) -> None:
        self._connection = connection
        self._underlay = underlay
        self._exchange = exchange
        self._queue = queue
        self._pending: list[asyncio.Future[object]] = []

    @property
    def confirms_publishes(self) -> bool:
        return False

    async def publish(self, topic: str, data: bytes) -> None:
        # Publishes are pipelined: each runs as a task, and the tasks write their frames
        # in the order they were made (aiormq's channel lock is FIFO); flush() awaits the
        # publisher confirms.
        key = _routing_key(topic)
        properties = aiormq.spec.Basic.Properties(
            delivery_mode=1, headers=None if key == topic else {_TOPIC_HEADER: topic}
        )
        publish = self._underlay.basic_publish(
            data, exchange=self._exchange.name, routing_key=key, properties=properties
        )
        self._pending.append(asyncio.ensure_future(publish))

    async def flush(self) -> int:
        pending, self._pending = self._pending, []
        rejected = 0
        try:
            for confirmation in pending:
                try:
                    await confirmation
                except aiormq.exceptions.DeliveryError as exc:
                    logger.error("amqp: publish rejected: %s", exc)
                    rejected += 1
        except BaseException:
            await _cancel(pending)
            raise
        return rejected

    async def subscribe(self, topic: str) -> None:
        await self._queue.bind(self._exchange, routing_key=_routing_key(topic))

    async def unsubscribe(self, topic: str) -> None:
        await self._queue.unbind(self._exchange, routing_key=_routing_key(topic))

    async def close(self) -> None:
        await _cancel(self._pending)
        self._pending = []
        with contextlib.suppress(Exception):
            await self._connection.close()


async def _cancel(futures: list[asyncio.Future[object]]) -> None:
    for future in futures:
        future.cancel()
    await asyncio.gather(*futures, return_exceptions=True)


class AmqpDriver:
    """Opens aio-pika connections for one AMQP URL."""

    def __init__(self, url: str, *, node_id: str, options: BrokerOptions) -> None:
        self._url, own = take_query(url, {"exchange"})
        self._exchange = own.get("exchange", "realtime")
        self._address = display_address(url)
        self._node_id = node_id
        self._timeout = options.connect_timeout

    @property
    def kind(self) -> str:
        return "amqp"

    @property
    def address(self) -> str:
        return self._address

    async def connect(self, sink: Sink) -> _AmqpConnection:
        connection = await aio_pika.connect(
            self._url,
            timeout=self._timeout,
            client_properties={"connection_name": f"realtime:{self._node_id}"},
        )
        try:
            return await self._set_up(connection, sink)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise

    async def _set_up(self, connection: AbstractConnection, sink: Sink) -> _AmqpConnection:
        def closed(_sender: object, exc: BaseException | None = None) -> None:
            detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
            sink.lost(f"amqp: connection closed{detail}")

        connection.close_callbacks.add(closed)
        channel = await connection.channel(publisher_confirms=True)
        channel.close_callbacks.add(closed)
        underlay = await channel.get_underlay_channel()
        exchange = await channel.declare_exchange(
            self._exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        name = f"realtime.{self._node_id[:200]}.{secrets.token_hex(4)}"
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)

        async def on_message(message: AbstractIncomingMessage) -> None:
            topic = (message.headers or {}).get(_TOPIC_HEADER) or message.routing_key or ""
            sink.deliver(str(topic), message.body)

        await queue.consume(on_message, no_ack=True, exclusive=True)
        return _AmqpConnection(connection, underlay, exchange, queue)


def create_driver(url: str, *, node_id: str, options: BrokerOptions) -> AmqpDriver:
    """The driver for an ``amqp://`` or ``amqps://`` URL."""
    return AmqpDriver(url, node_id=node_id, options=options)
