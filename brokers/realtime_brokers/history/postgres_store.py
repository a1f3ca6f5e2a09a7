"""PostgreSQL: each channel's stream in two tables, created on first start.

``realtime_history_streams`` holds a channel's epoch and latest offset; appending bumps it
under the row's lock, so the offsets of a channel are gap-free across every node. The
entries are rows of ``realtime_history``. A batch of appends is one statement (one round
trip, whatever its size): it bumps each channel's offset by its number of messages,
numbers them in batch order, inserts those within the channel's size, and trims the
channel's older rows by count and age.
Users' read positions are rows of ``realtime_read_positions`` (JSON values; an integer
one is only replaced by a greater one while it is younger than the rule's ttl).
"""

from __future__ import annotations

import json
import secrets

import asyncpg  # type: ignore[import-untyped]

from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import HistoryLoaded

from ..urls import take_query

__all__ = ["create_store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS realtime_history_streams (
    channel text PRIMARY KEY,
    epoch text NOT NULL,
    top bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS realtime_history (
    channel text NOT NULL,
    "offset" bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    payload bytea NOT NULL,
    PRIMARY KEY (channel, "offset")
);
CREATE TABLE IF NOT EXISTS realtime_read_positions (
    channel text NOT NULL,
    user_id text NOT NULL,
    position jsonb NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, user_id)
);
"""

_SAVE_READ = """
INSERT INTO realtime_read_positions AS r (channel, user_id, position) VALUES ($1, $2, $3)
ON CONFLICT (channel, user_id) DO UPDATE SET position = EXCLUDED.position, at = now()
WHERE NOT (jsonb_typeof(r.position) = 'number' AND jsonb_typeof(EXCLUDED.position) = 'number'
           AND (r.position #>> '{}')::numeric >= (EXCLUDED.position #>> '{}')::numeric
           AND r.at >= now() - make_interval(secs => $4))
"""

_READS = """
SELECT user_id, position FROM realtime_read_positions
WHERE channel = $1 AND at >= now() - make_interval(secs => $2)
"""

_APPEND = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS b(channel, payload, n)
), channels AS (
    SELECT * FROM unnest($3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::float8[])
        AS c(channel, epoch, count, size, ttl)
), stream AS (
    INSERT INTO realtime_history_streams AS s (channel, epoch, top)
    SELECT channel, epoch, count FROM channels
    ON CONFLICT (channel) DO UPDATE SET top = s.top + EXCLUDED.top
    RETURNING s.channel, s.epoch, s.top
), placed AS (
    SELECT b.n, s.epoch, s.channel, b.payload, s.top - c.size AS below,
           s.top - c.count + row_number() OVER (PARTITION BY b.channel ORDER BY b.n) AS "offset"
    FROM batch b JOIN stream s USING (channel) JOIN channels c USING (channel)
), kept AS (
    INSERT INTO realtime_history (channel, "offset", payload)
    SELECT channel, "offset", payload FROM placed WHERE "offset" > below
), trimmed AS (
    DELETE FROM realtime_history h USING stream s JOIN channels c USING (channel)
    WHERE h.channel = s.channel
      AND (h."offset" <= s.top - c.size OR h.at < now() - make_interval(secs => c.ttl))
)
SELECT epoch, "offset" FROM placed ORDER BY n
"""

#: an append that asks for a new epoch (an earlier publish could not be placed) starts the
#: channel's stream over before its batch
_RESTART = """
WITH restarted AS (
    UPDATE realtime_history_streams s SET epoch = c.epoch, top = 0
    FROM unnest($1::text[], $2::text[]) AS c(channel, epoch) WHERE s.channel = c.channel
)
DELETE FROM realtime_history WHERE channel = ANY($1::text[])
"""

_ENSURE = """
INSERT INTO realtime_history_streams (channel, epoch, top) VALUES ($1, $2, 0)
ON CONFLICT (channel) DO NOTHING
"""

_AFTER = """
SELECT "offset", payload FROM realtime_history
WHERE channel = $1 AND "offset" > $2 AND at >= now() - make_interval(secs => $3)
ORDER BY "offset" LIMIT $4
"""

_LATEST = """
SELECT "offset", payload FROM realtime_history
WHERE channel = $1 AND at >= now() - make_interval(secs => $2)
ORDER BY "offset" DESC LIMIT $3
"""


class PostgresStore:
    """Streams in PostgreSQL tables (see the module's docstring)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        # no connection floor: asyncpg would restore it with a traceback a second in an
        # outage; the next call connects, and fails at once while the server is down
        self._pool = await asyncpg.create_pool(self._url, min_size=0, max_size=4)
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(73707)")  # one node creates them
            try:
                await conn.execute(_SCHEMA)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(73707)")

    async def append(self, batch: list[HistoryAppend], now_ms: int) -> list[tuple[str, int]]:
        assert self._pool is not None
        channels: dict[str, list[HistoryAppend]] = {}
        for action in sorted(batch, key=lambda action: action.channel):  # locks in one order
            channels.setdefault(action.channel, []).append(action)
        rules = [actions[-1] for actions in channels.values()]  # the latest rule trims
        restart = [channel for channel, actions in channels.items()
                   if any(a.new_epoch for a in actions)]
        arguments = (
            [a.channel for a in batch], [a.payload for a in batch], list(channels),
            [secrets.token_hex(8) for _ in channels],
            [len(actions) for actions in channels.values()], [a.size for a in rules],
            [float(a.ttl) for a in rules])
        async with self._pool.acquire() as conn:
            if not restart:  # the common case: one statement, one round trip
                rows = await conn.fetch(_APPEND, *arguments)
            else:
                async with conn.transaction():
                    await conn.execute(_RESTART, restart,
                                       [secrets.token_hex(8) for _ in restart])
                    rows = await conn.fetch(_APPEND, *arguments)
        return [(row["epoch"], int(row["offset"])) for row in rows]

    async def read(self, action: HistoryRead, now_ms: int) -> HistoryLoaded:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            await conn.execute(_ENSURE, action.channel, secrets.token_hex(8))
            stream = await conn.fetchrow(
                "SELECT epoch, top FROM realtime_history_streams WHERE channel = $1",
                action.channel)
            rows = []
            if action.limit > 0 and action.since is not None:
                rows = await conn.fetch(_AFTER, action.channel, action.since,
                                        float(action.ttl), action.limit)
            elif action.limit > 0:
                rows = list(reversed(await conn.fetch(_LATEST, action.channel,
                                                      float(action.ttl), action.limit)))
            reads = await conn.fetch(_READS, action.channel, float(action.ttl))
        top = int(stream["top"])  # rows committed after it was read are left for later
        return HistoryLoaded(request_id=action.request_id, epoch=stream["epoch"], offset=top,
                             entries=tuple((int(r["offset"]), bytes(r["payload"]))
                                           for r in rows if r["offset"] <= top),
                             reads={r["user_id"]: json.loads(r["position"]) for r in reads})

    async def save_reads(self, batch: list[SaveReadPosition]) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            for action in batch:
                await conn.execute(_SAVE_READ, action.channel, action.user_id,
                                   json.dumps(action.position), float(action.ttl))

    async def ping(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT 1")

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def create_store(url: str) -> PostgresStore:
    """``postgresql://…``: the same database as the PostgreSQL broker (whose own options,
    ``prefix`` and ``table``, mean nothing here)."""
    return PostgresStore(take_query(url, {"prefix", "table"})[0])
