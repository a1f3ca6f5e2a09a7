"""PostgreSQL LISTEN/NOTIFY: ``postgresql://user[:password]@host[:port]/db[?options]``.

Options besides asyncpg's own: ``prefix`` (channel prefix, default ``rt:``), ``table``
(large payloads, default ``realtime_payloads``), ``payload_ttl`` (seconds a stored payload
is kept, default 60) and ``notify_max_bytes`` (largest NOTIFY payload in bytes, default 7999;
the server's limit is 8000 exclusive).

The channel of a topic is ``prefix + topic`` if that fits in 63 bytes (PostgreSQL's
identifier limit), else ``prefix + "~"`` and a digest. NOTIFY payloads are text, so every
payload carries its topic and the bytes as ``T<len>:<topic><utf-8 text>`` (when the bytes
are UTF-8 without NUL and the server encoding is UTF8), ``B<len>:<topic><base64>``, or —
when that would not fit in ``notify_max_bytes`` — ``R<len>:<topic><row id>``: the bytes are
stored in the table (created if missing) by the same statement that notifies, so the row
is committed when the notification is delivered; the receiver SELECTs it, keeping arrival
order. Publishers delete rows older than ``payload_ttl`` as they store new ones.

One asyncpg connection serves LISTEN, NOTIFY and the SELECTs (one at a time, under a
lock). Its termination listener reports loss.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections import deque
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from .api import BrokerOptions
from .driver import Sink
from .naming import bounded_name
from .urls import display_address, take_query

__all__ = ["PostgresDriver", "create_driver", "decode_payload"]

logger = logging.getLogger("realtime_brokers")

_CHANNEL_LIMIT = 63
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_OPTIONS = {"prefix", "table", "payload_ttl", "notify_max_bytes"}


def decode_payload(payload: str) -> tuple[str, str, str]:
    """``(kind, topic, body)`` of a NOTIFY payload made by this driver."""
    kind = payload[:1]
    length, colon, rest = payload[1:].partition(":")
    if kind not in ("T", "B", "R") or not colon or not length.isdigit():
        raise ValueError(f"not a realtime payload: {payload[:40]!r}")
    size = int(length)
    return kind, rest[:size], rest[size:]


class _Shared:
    """What the connections of one driver share: settings and table state."""

    def __init__(self, prefix: str, table: str, ttl: float, limit: int) -> None:
        self.prefix = prefix
        self.table = table
        self.ttl = ttl
        self.limit = limit
        self.table_ready = False
        self.next_cleanup = 0.0
        self.create_sql = (
            f"CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, "
            "created timestamptz NOT NULL DEFAULT clock_timestamp(), data bytea NOT NULL)"
        )
        self.store_sql = (
            f"WITH stored AS (INSERT INTO {table} (data) VALUES ($3) RETURNING id) "
            "SELECT pg_notify($1, $2 || stored.id::text) FROM stored"
        )
        self.fetch_sql = f"SELECT data FROM {table} WHERE id = $1"
        self.cleanup_sql = (
            f"DELETE FROM {table} WHERE created < clock_timestamp() - make_interval(secs => $1)"
        )


class _PgConnection:
    def __init__(self, conn: Any, sink: Sink, shared: _Shared) -> None:
        self._conn = conn
        self._sink = sink
        self._shared = shared
        self._lock = asyncio.Lock()
        self._text = conn.get_settings().server_encoding.upper() in ("UTF8", "UTF-8")
        self._incoming: deque[tuple[str, bytes | int]] = deque()
        self._receiver: asyncio.Task[None] | None = None

    @property
    def confirms_publishes(self) -> bool:
        return True

    def _channel(self, topic: str) -> str:
        return bounded_name(self._shared.prefix, topic, _CHANNEL_LIMIT)

    # -- receiving ------------------------------------------------------------------------

    def on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            kind, topic, body = decode_payload(payload)
            item: bytes | int
            if kind == "T":
                item = body.encode("utf-8")
            elif kind == "B":
                item = base64.b64decode(body)
            else:
                item = int(body)
        except ValueError as exc:
            logger.warning("postgresql: ignoring a notification: %s", exc)
            return
        if not self._incoming and isinstance(item, bytes):
            self._sink.deliver(topic, item)
            return
        self._incoming.append((topic, item))
        if self._receiver is None or self._receiver.done():
            self._receiver = asyncio.create_task(self._receive(), name="postgres-fetch")

    async def _receive(self) -> None:
        """Deliver queued notifications in order, fetching stored payloads."""
        while self._incoming:
            topic, item = self._incoming[0]
            if isinstance(item, int):
                try:
                    async with self._lock:
                        data = await self._conn.fetchval(self._shared.fetch_sql, item)
                except Exception as exc:
                    self._sink.lost(f"postgresql: fetching a stored payload failed: {exc}")
                    return
                if data is None:
                    logger.warning(
                        "postgresql: stored payload %d for %r expired before it was read",
                        item,
                        topic,
                    )
                    self._incoming.popleft()
                    continue
                item = bytes(data)
            self._incoming.popleft()
            self._sink.deliver(topic, item)

    # -- sending --------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        head = f"{len(topic)}:{topic}"
        channel = self._channel(topic)
        limit = self._shared.limit
        if len(data) + len(head.encode("utf-8")) + 1 <= limit:
            payload = self._inline(head, data)
            if len(payload.encode("utf-8")) <= limit:
                try:
                    async with self._lock:
                        await self._conn.execute("SELECT pg_notify($1, $2)", channel, payload)
                    return
                except asyncpg.InvalidParameterValueError as exc:
                    if "too long" not in str(exc):
                        raise
                    self._shared.limit = len(payload.encode("utf-8")) - 1
                    logger.warning("postgresql: NOTIFY limit lowered to %d", self._shared.limit)
        await self._store(channel, "R" + head, data)

    def _inline(self, head: str, data: bytes) -> str:
        if self._text:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                if "\x00" not in text:
                    return "T" + head + text
        return "B" + head + base64.b64encode(data).decode("ascii")

    async def _store(self, channel: str, prefix: str, data: bytes) -> None:
        shared = self._shared
        async with self._lock:
            if not shared.table_ready:
                with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
                    await self._conn.execute(shared.create_sql)
                shared.table_ready = True
            try:
                await self._conn.execute(shared.store_sql, channel, prefix, data)
            except asyncpg.UndefinedTableError:
                shared.table_ready = False
                raise
            now = asyncio.get_running_loop().time()
            if now >= shared.next_cleanup:
                shared.next_cleanup = now + shared.ttl / 2
                await self._conn.execute(shared.cleanup_sql, float(shared.ttl))

    async def flush(self) -> int:
        return 0

    async def subscribe(self, topic: str) -> None:
        async with self._lock:
            await self._conn.add_listener(self._channel(topic), self.on_notify)

    async def unsubscribe(self, topic: str) -> None:
        async with self._lock:
            await self._conn.remove_listener(self._channel(topic), self.on_notify)

    async def close(self) -> None:
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._receiver
        if self._conn.is_closed():
            return
        try:
            await self._conn.close(timeout=1.0)
        except asyncio.CancelledError:
            self._conn.terminate()
            raise
        except Exception:
            self._conn.terminate()


class PostgresDriver:
    """Opens asyncpg connections for one PostgreSQL URL."""

    def __init__(self, url: str, *, node_id: str, options: BrokerOptions) -> None:
        self._dsn, own = take_query(url, _OPTIONS)
        self._address = display_address(url)
        self._node_id = node_id
        self._timeout = options.connect_timeout
        table = own.get("table", "realtime_payloads")
        if not _TABLE_NAME.match(table):
            raise ValueError(f"PostgreSQL table name {table!r} must be [schema.]identifier")
        try:
            ttl = float(own.get("payload_ttl", "60"))
            limit = int(own.get("notify_max_bytes", "7999"))
        except ValueError:
            raise ValueError("payload_ttl and notify_max_bytes must be numbers") from None
        if ttl <= 0 or limit < 100:
            raise ValueError("payload_ttl must be positive and notify_max_bytes at least 100")
        self._shared = _Shared(own.get("prefix", "rt:"), table, ttl, limit)
        bounded_name(self._shared.prefix, "x" * 100, _CHANNEL_LIMIT)  # checks the prefix

    @property
    def kind(self) -> str:
        return "postgresql"

    @property
    def address(self) -> str:
        return self._address

    async def connect(self, sink: Sink) -> _PgConnection:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._timeout,
            server_settings={"application_name": f"realtime:{self._node_id}"[:63]},
        )
        conn.add_termination_listener(lambda _conn: sink.lost("postgresql: connection closed"))
        return _PgConnection(conn, sink, self._shared)


def create_driver(url: str, *, node_id: str, options: BrokerOptions) -> PostgresDriver:
    """The driver for a ``postgresql://`` or ``postgres://`` URL."""
    return PostgresDriver(url, node_id=node_id, options=options)
