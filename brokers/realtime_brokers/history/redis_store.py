"""Redis: each channel's stream is a Redis stream plus a hash (epoch, latest offset).

Keys are ``{prefix}h:{CHANNEL}:s`` and ``…:m``, and ``…:r`` for the users' read positions
(JSON values); the braces make the keys of a channel land on one slot of a Redis
Cluster. Appending is one Lua script (atomic: the offset and
the entry come together); entries have the IDs ``OFFSET-1``, so reading after an offset is
one exclusive ``XRANGE``. An append that asks for a new epoch (an earlier publish could not
be placed) deletes both keys first. Both keys expire `ttl` after the latest append: an idle
channel's stream ends, and the next one has a new epoch. Entries older than the channel's
age limit are dropped when read.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from redis.asyncio import Redis

from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import HistoryLoaded

from ..urls import take_query

__all__ = ["create_store"]

_APPEND = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2])
  epoch = false
end
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[2], 'top', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-1', 'p', ARGV[1], 't', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {epoch, offset}
"""

_READ = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'top', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local top = redis.call('HGET', KEYS[2], 'top') or '0'
local reads = redis.call('HGETALL', KEYS[3])
local entries = {}
if tonumber(ARGV[4]) > 0 then
  if tonumber(ARGV[3]) >= 0 then
    entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[3] .. '-1', '+', 'COUNT', ARGV[4])
  else
    entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[4])
  end
end
return {epoch, top, entries, reads}
"""

_SAVE_READ = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '1' and old and string.sub(old, 1, 1) ~= '"'
   and tonumber(old) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


class RedisStore:
    """Streams in Redis (see the module's docstring)."""

    def __init__(self, url: str, prefix: str) -> None:
        self._url = url
        self._prefix = prefix
        self._redis: Redis | None = None
        self._append: Any = None
        self._read: Any = None
        self._save_read: Any = None

    async def start(self) -> None:
        self._redis = Redis.from_url(self._url)
        await self._redis.ping()
        self._append = self._redis.register_script(_APPEND)
        self._read = self._redis.register_script(_READ)
        self._save_read = self._redis.register_script(_SAVE_READ)

    def _keys(self, channel: str) -> list[str]:
        base = f"{self._prefix}h:{{{channel}}}"
        return [f"{base}:s", f"{base}:m", f"{base}:r"]

    async def append(self, batch: list[HistoryAppend], now_ms: int) -> list[tuple[str, int]]:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for action in batch:
                await self._append(keys=self._keys(action.channel)[:2], client=pipe, args=[
                    action.payload, action.size, int(action.ttl * 1000), secrets.token_hex(8),
                    now_ms, "1" if action.new_epoch else "0"])
            replies = await pipe.execute()
        return [(epoch.decode(), int(offset)) for epoch, offset in replies]

    async def read(self, action: HistoryRead, now_ms: int) -> HistoryLoaded:
        since = action.since if action.since is not None else -1
        epoch, top, entries, reads = await self._read(keys=self._keys(action.channel), args=[
            secrets.token_hex(8), int(action.ttl * 1000), since, action.limit])
        oldest_ms = now_ms - action.ttl * 1000
        kept = []
        for entry_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            if int(values[b"t"]) >= oldest_ms:
                kept.append((int(entry_id.split(b"-")[0]), values[b"p"]))
        kept.sort()
        positions = dict(zip(reads[::2], reads[1::2], strict=True))
        return HistoryLoaded(request_id=action.request_id, epoch=epoch.decode(),
                             offset=int(top), entries=tuple(kept),
                             reads={user.decode(): json.loads(position)
                                    for user, position in positions.items()})

    async def save_reads(self, batch: list[SaveReadPosition]) -> None:
        assert self._redis is not None
        async with self._redis.pipeline(transaction=False) as pipe:
            for action in batch:
                integer = "1" if isinstance(action.position, int) else "0"
                await self._save_read(keys=self._keys(action.channel)[2:], client=pipe, args=[
                    action.user_id, json.dumps(action.position), integer,
                    int(action.ttl * 1000)])
            await pipe.execute()

    async def ping(self) -> None:
        assert self._redis is not None
        await self._redis.ping()

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def create_store(url: str) -> RedisStore:
    """``redis://…[?prefix=rt:]``: the same server (and prefix) as the Redis broker."""
    rest, taken = take_query(url, {"prefix"})
    return RedisStore(rest, taken.get("prefix", "rt:"))
