"""NATS JetStream: each channel's stream is the messages of one subject of a JetStream stream.

The stream ``{P}_history`` (``P``: the subject prefix as a name token) holds the subjects
``{prefix}.h.{TOKEN}``, ``TOKEN`` being the channel name with every byte but letters,
digits and ``-`` written ``_XX``. A message is one entry; its headers carry the channel's
epoch, its offset, its time (``now_ms``) and the size of the channel's history rule.

* **Offsets without gaps.** An append publishes with ``Nats-Expected-Last-Subject-Sequence``
  set to the stream sequence of the channel's last message (remembered per channel, read
  again when another node got there first), with that message's offset plus one: the
  server takes it only if nobody appended meanwhile. A channel's appends go one after
  another, one round trip each; different channels' go side by side.
* **Epochs.** A subject with no message (never written, or all of it expired) starts a new
  epoch. A read of such a channel publishes an offset-0 marker in a new epoch, the same
  way, so the epoch it answers is the one the next append keeps.
* **A new epoch on request.** An append that asks for one (an earlier publish could not be
  placed) purges the subject first, so it starts a new epoch at offset 1.
* **Trimming.** The stream keeps at most ``size`` messages per subject for at most ``ttl``
  seconds (URL options, default 1000 and one day: set them to at least the largest
  history rule; a rule above them is warned about once). Every 16th append of a channel
  purges its subject down to the rule's size. Reads serve the latest ``size`` entries of
  the rule of the last append, younger than the read's ``ttl``.
* **Reads.** The last message by direct get. Each message keeps the expected-last-sequence
  header it was published with: the sequence of its predecessor. Up to 16 entries are
  read back along that chain, one direct get each (a recovery after a short absence:
  no server state, and any replica answers); more come from a consumer of the subject
  that lives for the read (two round trips plus every message the subject holds: at most
  the rule's size + 15).
* **Read positions.** The stream ``{P}_reads`` keeps one message per subject
  ``{prefix}.r.{TOKEN}``: the channel's positions as JSON ``{user: [position, at_ms]}``,
  replaced under the same optimistic concurrency; positions not moved for the rule's
  ``ttl`` are dropped, and past 10,000 users the least recently moved ones.

Limits: one hot channel takes one append per round trip, and two nodes appending to it at
once retry each other's (``bench/history.py``: 3,700 and 1,700 appends a second on the
2-core test machine, 11,700 over 64 channels; Redis does 11,500 on one channel); the
epoch lasts as long as the subject holds a message (the stream's ``ttl``), longer than a
rule's ttl, but entries older than that are not served, so a recovery past them is
refused as it should be; it needs JetStream with direct get (nats-server 2.9+).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RawStreamMsg, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from realtime_proto.actions import HistoryAppend, HistoryRead, SaveReadPosition
from realtime_proto.events import HistoryLoaded

from ..api import BrokerError
from ..logs import describe
from ..naming import subject_prefix
from ..urls import take_query

__all__ = ["create_store"]

log = logging.getLogger("realtime_brokers")
_T = TypeVar("_T")

_EXPECTED = "Nats-Expected-Last-Subject-Sequence"
_EPOCH, _OFFSET, _AT, _SIZE = "Rt-Epoch", "Rt-Offset", "Rt-At", "Rt-Size"
#: JetStream's "wrong last sequence" errors: another node published first
_WRONG_LAST = frozenset({10071, 10164})
#: JetStream's "stream name already in use with a different configuration"
_STREAM_EXISTS = 10058
#: a channel's subject is purged down to its rule's size every this many appends
_TRIM_EVERY = 16
#: channels whose last message is remembered, before the memo starts over
_TAILS = 4096
#: read positions kept per channel
_READERS = 10_000
#: reads of at most this many entries follow each message's predecessor by direct gets
#: (no server state; any replica answers); longer ones take a consumer's push
_WALK = 16
#: seconds a read waits for its consumer's messages (which lives 5 times that if not deleted)
_DELIVERY_TIMEOUT = 2.0
_UNSAFE = re.compile(rb"[^A-Za-z0-9-]")

#: a channel's read positions: user → (position, Unix ms of its latest move)
_Readers = dict[str, tuple[int | str, int]]


@dataclass(frozen=True, slots=True)
class _Tail:
    """A channel subject's last message: its stream sequence (0: none), offset, epoch and
    the history size of the rule it was appended under."""

    seq: int = 0
    offset: int = 0
    epoch: str = ""
    size: int = 0


class JetStreamStore:
    """Streams in NATS JetStream (see the module's docstring)."""

    def __init__(self, url: str, *, prefix: str, size: int, ttl: float, replicas: int) -> None:
        self._url = url
        self._prefix = prefix
        self._size = size
        self._ttl = ttl
        self._replicas = replicas
        self._history = f"{_token(prefix)}_history"
        self._reads = f"{_token(prefix)}_reads"
        self._client: Client | None = None
        self._context: JetStreamContext | None = None
        self._tails: dict[str, _Tail] = {}
        self._warned = False
        self._lost: asyncio.Event = asyncio.Event()  # set while disconnected
        self._error: Exception | None = None

    @property
    def _js(self) -> JetStreamContext:
        assert self._context is not None, "start() first"
        return self._context

    async def start(self) -> None:
        self._client = await nats.connect(
            servers=[self._url], name="realtime-history", max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, pending_size=0,  # no buffering while reconnecting
            error_cb=self._on_error, disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected)
        self._context = self._client.jetstream()
        try:
            await self._ensure(self._history, "h", self._size)
            await self._ensure(self._reads, "r", 1)
        except ServiceUnavailableError as error:
            raise BrokerError("the NATS server has no JetStream for the history store: start "
                              "it with -js, or use --history-store local") from error

    async def _ensure(self, name: str, kind: str, per_subject: int) -> None:
        """Create a stream of the subjects ``{prefix}.{kind}.*``, or give our limits to an
        existing one of those subjects."""
        config = StreamConfig(name=name, subjects=[f"{self._prefix}.{kind}.*"],
                              max_msgs_per_subject=per_subject, max_age=self._ttl,
                              num_replicas=self._replicas, allow_direct=True)
        try:
            await self._js.add_stream(config)
        except BadRequestError as error:
            if error.err_code != _STREAM_EXISTS:
                raise
            held = await self._js.stream_info(name)
            if held.config.subjects != config.subjects:
                raise BrokerError(f"JetStream stream {name} exists for other subjects: "
                                  f"{held.config.subjects}") from error
            await self._js.update_stream(config)

    # -- the connection: nats-py reconnects by itself; calls fail at once meanwhile ------

    async def _on_error(self, error: Exception) -> None:
        self._error = error  # the service logs what fails (nats-py would log a traceback)

    async def _on_disconnected(self) -> None:
        self._lost.set()

    async def _on_reconnected(self) -> None:
        self._lost.clear()

    async def _connected(self, call: Awaitable[_T]) -> _T:
        """`call`'s result, or ConnectionError as soon as the connection is lost (nats-py
        would hold a request until its timeout, reconnecting meanwhile)."""
        assert self._client is not None
        if self._lost.is_set() or not self._client.is_connected:
            if inspect.iscoroutine(call):
                call.close()
            raise ConnectionError(self._lost_reason())
        task = asyncio.ensure_future(call)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait([task, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise ConnectionError(self._lost_reason())
        return task.result()

    def _lost_reason(self) -> str:
        error = self._error
        return f"NATS disconnected ({describe(error)})" if error else "NATS disconnected"

    async def ping(self) -> None:
        assert self._client is not None
        await self._connected(self._client.flush(timeout=1))

    def _subject(self, kind: str, channel: str) -> str:
        return f"{self._prefix}.{kind}.{_token(channel)}"

    async def append(self, batch: list[HistoryAppend], now_ms: int) -> list[tuple[str, int]]:
        return await self._connected(self._append_batch(batch, now_ms))

    async def _append_batch(self, batch: list[HistoryAppend],
                            now_ms: int) -> list[tuple[str, int]]:
        positions: list[tuple[str, int]] = [("", 0)] * len(batch)
        chains: dict[str, list[int]] = {}
        for index, action in enumerate(batch):
            chains.setdefault(action.channel, []).append(index)

        async def chain(indexes: list[int]) -> None:
            for index in indexes:
                positions[index] = await self._append(batch[index], now_ms)

        async with asyncio.TaskGroup() as group:
            for indexes in chains.values():
                group.create_task(chain(indexes))
        return positions

    async def _append(self, action: HistoryAppend, now_ms: int) -> tuple[str, int]:
        self._check_limits(action)
        subject = self._subject("h", action.channel)
        if action.new_epoch:  # an earlier publish could not be placed: start over
            await self._js.purge_stream(self._history, subject=subject)
            self._tails.pop(subject, None)
            tail = _Tail()
        else:
            tail = self._tails.get(subject) or await self._tail(subject)
        while (placed := await self._place(subject, tail, tail.offset + 1, action.payload,
                                           action.size, now_ms)) is None:
            tail = await self._tail(subject)
        if len(self._tails) >= _TAILS:
            self._tails.clear()
        self._tails[subject] = placed
        if placed.offset % _TRIM_EVERY == 0 and placed.offset > action.size:
            try:  # the message is placed: a failed trim waits for the next one
                await self._js.purge_stream(self._history, subject=subject, keep=action.size)
            except Exception as error:
                log.warning("history store: trimming %s failed: %r", action.channel, error)
        return placed.epoch, placed.offset

    def _check_limits(self, action: HistoryAppend) -> None:
        if not self._warned and (action.size > self._size or action.ttl > self._ttl):
            self._warned = True
            log.warning("history store: JetStream keeps %d messages for %gs, but the rule of %s "
                        "asks for %d for %gs; raise size/ttl in the store URL", self._size,
                        self._ttl, action.channel, action.size, action.ttl)

    async def _place(self, subject: str, tail: _Tail, offset: int, payload: bytes, size: int,
                     now_ms: int) -> _Tail | None:
        """Publish right after `tail` (in its epoch, or a new one if the subject was
        empty); None when another message came first."""
        epoch = tail.epoch or secrets.token_hex(8)
        seq = await self._publish_after(tail.seq, subject, payload, {
            _EPOCH: epoch, _OFFSET: str(offset), _AT: str(now_ms), _SIZE: str(size)})
        return None if seq is None else _Tail(seq, offset, epoch, size)

    async def _publish_after(self, last: int, subject: str, payload: bytes,
                             headers: dict[str, str]) -> int | None:
        """The stream sequence of a message published if `last` is still the subject's
        last one (0: none), else None."""
        try:
            ack = await self._js.publish(subject, payload, headers={_EXPECTED: str(last),
                                                                    **headers})
        except BadRequestError as error:
            if error.err_code in _WRONG_LAST:
                return None
            raise
        return ack.seq

    async def _last(self, stream: str, subject: str) -> RawStreamMsg | None:
        try:
            return await self._js.get_last_msg(stream, subject, direct=True)
        except NotFoundError:
            return None

    async def _tail(self, subject: str) -> _Tail:
        return _tail_of(await self._last(self._history, subject))

    async def read(self, action: HistoryRead, now_ms: int) -> HistoryLoaded:
        return await self._connected(self._read(action, now_ms))

    async def _read(self, action: HistoryRead, now_ms: int) -> HistoryLoaded:
        subject = self._subject("h", action.channel)
        last, (_, readers) = await asyncio.gather(
            self._last(self._history, subject), self._readers(self._subject("r", action.channel)))
        while last is None:  # a new epoch, kept from now on
            await self._place(subject, _Tail(), 0, b"", 0, now_ms)
            last = await self._last(self._history, subject)
        tail = _tail_of(last)
        top, oldest = tail.offset, now_ms - action.ttl * 1000
        after = top - action.limit if action.since is None else action.since
        floor = max(0, top - tail.size, after)  # the entries wanted are above it
        entries: list[tuple[int, bytes]] = []
        if action.limit > 0 and floor < top:
            held = await (self._walk(last, floor) if top - floor <= _WALK
                          else self._entries(subject))
            entries = [(offset, payload) for offset, at, payload in held
                       if floor < offset <= top and at >= oldest][:action.limit]
        return HistoryLoaded(request_id=action.request_id, epoch=tail.epoch, offset=top,
                             entries=tuple(entries),
                             reads={user: position for user, (position, at) in readers.items()
                                    if at >= oldest})

    async def _walk(self, last: RawStreamMsg, floor: int) -> list[tuple[int, int, bytes]]:
        """The messages of a subject above offset `floor`, oldest first: from its `last`
        back through each message's predecessor (the sequence it was published after)."""
        found: list[tuple[int, int, bytes]] = []
        msg: RawStreamMsg | None = last
        while msg is not None:
            entry = _entry(msg.headers, msg.data)
            if entry[0] <= floor:
                break
            found.append(entry)
            msg = await self._message(int((msg.headers or {})[_EXPECTED]))
        return found[::-1]

    async def _message(self, seq: int) -> RawStreamMsg | None:
        """The history message of a stream sequence; None for 0, or if it was removed."""
        if not seq:
            return None
        try:
            return await self._js.get_msg(self._history, seq=seq, direct=True)
        except NotFoundError:
            return None

    async def _entries(self, subject: str) -> list[tuple[int, int, bytes]]:
        """Every message of a channel's subject: (offset, at_ms, payload), oldest first,
        pushed by a consumer that lives for this read (pushed messages cost this client
        half what pulled ones do)."""
        assert self._client is not None
        msgs: list[Msg] = []
        last = asyncio.Event()

        async def collect(msg: Msg) -> None:
            msgs.append(msg)
            if msg.metadata.num_pending == 0:
                last.set()

        inbox = self._client.new_inbox()
        subscription = await self._client.subscribe(inbox, cb=collect)
        try:
            consumer = await self._js.add_consumer(self._history, ConsumerConfig(
                filter_subject=subject, deliver_subject=inbox, ack_policy=AckPolicy.NONE,
                mem_storage=True, inactive_threshold=_DELIVERY_TIMEOUT * 5))
            try:
                delivered = consumer.delivered.consumer_seq if consumer.delivered else 0
                if consumer.num_pending or delivered:
                    await asyncio.wait_for(last.wait(), _DELIVERY_TIMEOUT)
            finally:
                await self._js.delete_consumer(self._history, consumer.name)
        finally:
            await subscription.unsubscribe()
        return [_entry(msg.headers, msg.data) for msg in msgs]

    async def _readers(self, subject: str) -> tuple[int, _Readers]:
        msg = await self._last(self._reads, subject)
        if msg is None or not msg.data:
            return 0, {}
        held: dict[str, Any] = json.loads(msg.data)
        return msg.seq or 0, {user: (position, at) for user, (position, at) in held.items()}

    async def save_reads(self, batch: list[SaveReadPosition]) -> None:
        await self._connected(self._save_reads(batch))

    async def _save_reads(self, batch: list[SaveReadPosition]) -> None:
        moves: dict[str, list[SaveReadPosition]] = {}
        for action in batch:
            moves.setdefault(action.channel, []).append(action)
        async with asyncio.TaskGroup() as group:
            for channel, channel_moves in moves.items():
                group.create_task(self._save(self._subject("r", channel), channel_moves))

    async def _save(self, subject: str, moves: list[SaveReadPosition]) -> None:
        while True:
            seq, held = await self._readers(subject)
            readers = _moved(held, moves, int(time.time() * 1000))
            if readers is None:
                return
            data = json.dumps({user: list(entry) for user, entry in readers.items()})
            if await self._publish_after(seq, subject, data.encode(), {}) is not None:
                return

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


def _tail_of(msg: RawStreamMsg | None) -> _Tail:
    if msg is None or msg.seq is None:
        return _Tail()
    headers = msg.headers or {}
    return _Tail(msg.seq, int(headers[_OFFSET]), headers[_EPOCH], int(headers[_SIZE]))


def _entry(headers: dict[str, str] | None, data: bytes | None) -> tuple[int, int, bytes]:
    """A history message as (offset, at_ms, payload)."""
    headers = headers or {}
    return int(headers[_OFFSET]), int(headers[_AT]), data or b""


def _moved(held: _Readers, moves: list[SaveReadPosition], now_ms: int) -> _Readers | None:
    """A channel's positions after `moves` (an integer one never moves back), without
    those older than the rule's ttl; None if nothing changed."""
    oldest = now_ms - moves[-1].ttl * 1000
    readers = {user: entry for user, entry in held.items() if entry[1] >= oldest}
    changed = len(readers) != len(held)
    for move in moves:
        previous = readers.get(move.user_id)
        if (previous is not None and isinstance(previous[0], int)
                and isinstance(move.position, int) and move.position <= previous[0]):
            continue
        readers.pop(move.user_id, None)  # the latest move goes last
        readers[move.user_id] = (move.position, now_ms)
        changed = True
    for user in list(readers)[:-_READERS]:
        del readers[user]
    return readers if changed else None


@functools.lru_cache(maxsize=4096)
def _token(name: str) -> str:
    """`name` as one subject token and a stream name: letters, digits, ``-`` and ``_XX``
    for every other byte (distinct names give distinct tokens)."""
    return _UNSAFE.sub(lambda match: b"_%02X" % match[0][0], name.encode("utf-8")).decode("ascii")


def create_store(url: str) -> JetStreamStore:
    """``nats://…[?prefix=rt&size=1000&ttl=86400&replicas=1]``: the NATS broker's server and
    subject prefix; ``size`` and ``ttl`` bound every channel's stream (set them to at least
    the largest history rule), ``replicas`` is the streams' replication in a NATS cluster.

    Raises:
        ValueError: an unknown option, a bad number or prefix.
    """
    rest, own = take_query(url, {"prefix", "size", "ttl", "replicas"})
    if urlsplit(rest).query:
        raise ValueError(f"unknown NATS history store URL options: {urlsplit(rest).query}")
    return JetStreamStore(rest, prefix=subject_prefix(own.get("prefix", "rt")),
                          size=int(own.get("size", 1000)), ttl=float(own.get("ttl", 86400)),
                          replicas=int(own.get("replicas", 1)))
