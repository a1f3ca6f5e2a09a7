"""NATS core subjects: ``nats://[user:password@]host[:port][?prefix=rt]``.

A topic becomes the subject ``prefix.`` + :func:`~.naming.escape` (topic): one token of
safe characters with everything else, ``.``, ``*`` and ``>`` included, written as
``%XX``. The mapping is reversible, so the subject names the topic exactly.

nats-py hands each subscription's messages to its own task, which reorders messages of
different subjects; this driver takes them from the client in the order they arrived on
the connection instead (:class:`_InOrderClient`), so messages from one node keep their
order across topics, as on the other brokers. nats-py's reconnection is off
(``allow_reconnect=False``): a lost connection closes the client, which the driver
reports; the supervisor reconnects. Publishes are buffered by nats-py, so the supervisor
calls :meth:`flush` (a PING round trip) before it counts them as accepted.
"""

from __future__ import annotations

import contextlib
import math
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import MaxPayloadError

from .api import BrokerOptions
from .driver import MessageRejected, Sink
from .naming import escape, subject_prefix, unescape
from .urls import display_address, take_query

__all__ = ["NatsDriver", "create_driver"]


class _InOrderClient(Client):
    """A nats-py client that hands every message to the sink straight from the protocol
    parser, in the order they arrived (it only ever subscribes to topic subjects)."""

    def __init__(self, sink: Sink, prefix: str) -> None:
        super().__init__()
        self.rt_sink = sink
        self.rt_skip = len(prefix) + 1
        self.rt_error: Exception | None = None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        if sid not in self._subs:
            return  # unsubscribed meanwhile
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        token = subject[self.rt_skip :]
        self.rt_sink.deliver(unescape(token.decode("ascii")), bytes(data))


class _NatsConnection:
    def __init__(self, client: _InOrderClient, prefix: str, timeout: float) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout = max(1, math.ceil(timeout))
        self._subs: dict[str, Subscription] = {}

    @property
    def confirms_publishes(self) -> bool:
        return False

    def _subject(self, topic: str) -> str:
        return f"{self._prefix}.{escape(topic)}"

    async def publish(self, topic: str, data: bytes) -> None:
        try:
            await self._client.publish(self._subject(topic), data)
        except MaxPayloadError as exc:
            raise MessageRejected(
                f"{len(data)} bytes exceed the server's max_payload ({self._client.max_payload})"
            ) from exc

    async def flush(self) -> int:
        await self._client.flush(timeout=self._timeout)
        return 0

    async def subscribe(self, topic: str) -> None:
        if topic in self._subs:
            return
        self._subs[topic] = await self._client.subscribe(self._subject(topic))
        await self._client.flush(timeout=self._timeout)

    async def unsubscribe(self, topic: str) -> None:
        sub = self._subs.pop(topic, None)
        if sub is not None:
            await sub.unsubscribe()

    async def close(self) -> None:
        await _close_quietly(self._client)


async def _close_quietly(client: Client) -> None:
    """Close ``client``, and its socket even where nats-py leaves it open (a failed
    handshake)."""
    with contextlib.suppress(Exception):
        await client.close()
    transport = getattr(client, "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()


class NatsDriver:
    """Opens nats-py connections for one NATS URL."""

    def __init__(self, url: str, *, node_id: str, options: BrokerOptions) -> None:
        rest, own = take_query(url, {"prefix"})
        parts = urlsplit(rest)
        if parts.query:
            raise ValueError(f"unknown NATS broker URL options: {parts.query}")
        self._url = rest
        self._prefix = subject_prefix(own.get("prefix", "rt"))
        self._address = display_address(url)
        self._name = f"realtime:{node_id}"
        self._timeout = options.connect_timeout

    @property
    def kind(self) -> str:
        return "nats"

    @property
    def address(self) -> str:
        return self._address

    async def connect(self, sink: Sink) -> _NatsConnection:
        client = _InOrderClient(sink, self._prefix)

        async def on_error(exc: Exception) -> None:
            client.rt_error = exc

        async def on_closed() -> None:
            error = client.rt_error
            detail = f": {type(error).__name__}: {error}" if error is not None else ""
            sink.lost(f"nats: connection closed{detail}")

        try:
            await client.connect(
                servers=[self._url],
                name=self._name,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=max(1, math.ceil(self._timeout)),
                error_cb=on_error,
                closed_cb=on_closed,
            )
        except BaseException:
            await _close_quietly(client)
            raise
        return _NatsConnection(client, self._prefix, self._timeout)


def create_driver(url: str, *, node_id: str, options: BrokerOptions) -> NatsDriver:
    """The driver for a ``nats://`` URL."""
    return NatsDriver(url, node_id=node_id, options=options)
