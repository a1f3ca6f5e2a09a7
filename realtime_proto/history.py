"""Channel history: recent messages with offsets in an epoch, for recovery on reconnect.

A stream holds each message *unstamped* (encoded without `offset` and `epoch`) under its
offset; `stamp` adds the position when the message goes to a client. The same slice shape
comes from this node's memory (`ChannelStream`) or from a shared store in the broker
(answered through `HistoryRead`), so recovery is decided in one place: `StreamSlice`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

from .actions import HistoryAppend, HistoryRead, SaveReadPosition
from .channels import pattern_matches
from .errors import ConfigError
from .events import HistoryAppended, HistoryLoaded
from .signals import ChannelSignals

__all__ = ["ChannelStream", "HistoryRule", "MemoryStore", "StreamSlice", "find_rule", "stamp"]


@final
@dataclass(frozen=True, slots=True)
class HistoryRule:
    """Keep up to `size` messages for at most `ttl` seconds on channels matching `pattern`."""

    pattern: str
    size: int
    ttl: float

    def __post_init__(self) -> None:
        if self.size < 1 or self.ttl <= 0:
            raise ConfigError("history needs size >= 1 and ttl > 0")


@final
@dataclass(frozen=True, slots=True)
class StreamSlice:
    """What a stream holds after some offset: its epoch, its latest offset, and the
    unstamped messages (offset, payload) still kept, oldest first."""

    epoch: str
    offset: int
    entries: tuple[tuple[int, bytes], ...] = ()

    def recovers(self, epoch: str, since: int) -> bool:
        """Whether every message after (`epoch`, `since`) is in this slice."""
        if epoch != self.epoch or not 0 <= since <= self.offset:
            return False
        after = [o for o, _ in self.entries if since < o <= self.offset]
        return len(after) == self.offset - since and (not after or after[0] == since + 1)

    def missing(self, epoch: str, since: int) -> int | None:
        """How many messages after (`epoch`, `since`) this slice lacks; None when it cannot
        say (another epoch, or an offset it never had)."""
        if epoch != self.epoch or not 0 <= since <= self.offset:
            return None
        return self.offset - since - len(self.after(since))

    def after(self, since: int) -> list[tuple[int, bytes]]:
        """The entries after offset `since`."""
        return [(o, p) for o, p in self.entries if o > since]

    def last(self, count: int) -> list[tuple[int, bytes]]:
        """The latest `count` entries."""
        return list(self.entries[-count:]) if count > 0 else []


class ChannelStream:
    """One channel's stream in this node's memory: offsets increase by one per message.

    The epoch is new whenever the stream is created (the node started, or first saw the
    channel), so a client's (epoch, offset) either names a point in this very stream or
    is refused.
    """

    def __init__(self, rule: HistoryRule, new_epoch: Callable[[], str]) -> None:
        self.rule = rule
        self.epoch = new_epoch()
        self.offset = 0
        self._entries: deque[tuple[int, float, bytes]] = deque()

    def append(self, payload: bytes, now: float) -> int:
        """Keep an unstamped message; its offset. Trims by size and age."""
        self.offset += 1
        self._entries.append((self.offset, now + self.rule.ttl, payload))
        while len(self._entries) > self.rule.size:
            self._entries.popleft()
        self._trim(now)
        return self.offset

    def skip(self, count: int) -> tuple[int, int]:
        """Leave a hole of `count` offsets for messages that never arrived; its range."""
        first = self.offset + 1
        self.offset += count
        return first, self.offset

    def read(self, now: float) -> StreamSlice:
        """Everything the stream still holds."""
        self._trim(now)
        return StreamSlice(self.epoch, self.offset, tuple((o, p) for o, _, p in self._entries))

    def _trim(self, now: float) -> None:
        while self._entries and self._entries[0][1] <= now:
            self._entries.popleft()


class MemoryStore:
    """Shared streams in one process's memory: what a broker's store does, for nodes that
    share a process (the in-process cluster, tests, the seeded simulation).

    Set `down` to make every call fail as an unreachable store's would.
    """

    def __init__(self, new_epoch: Callable[[], str]) -> None:
        self._new_epoch = new_epoch
        self._streams: dict[str, ChannelStream] = {}
        self._reads = ChannelSignals(typing_interval=0.0)
        self.down = False

    def append(self, action: HistoryAppend, now: float) -> HistoryAppended:
        """Carry out a `HistoryAppend`."""
        if self.down:
            return HistoryAppended(request_id=action.request_id, error="store down")
        rule = HistoryRule(action.channel, action.size, action.ttl)
        stream = self._streams.get(action.channel)
        if stream is None or action.new_epoch:
            stream = self._streams[action.channel] = ChannelStream(rule, self._new_epoch)
        stream.rule = rule
        offset = stream.append(action.payload, now)
        return HistoryAppended(request_id=action.request_id, epoch=stream.epoch, offset=offset)

    def read(self, action: HistoryRead, now: float) -> HistoryLoaded:
        """Carry out a `HistoryRead`."""
        if self.down:
            return HistoryLoaded(request_id=action.request_id, error="store down")
        stream = self._streams.get(action.channel)
        if stream is None:
            rule = HistoryRule(action.channel, max(action.limit, 1), action.ttl)
            stream = self._streams[action.channel] = ChannelStream(rule, self._new_epoch)
        held = stream.read(now)
        if action.since is not None:  # the first `limit` after it, as the other stores
            entries = held.after(action.since)[:action.limit]
        else:
            entries = held.last(action.limit)
        return HistoryLoaded(request_id=action.request_id, epoch=held.epoch, offset=held.offset,
                             entries=tuple(entries),
                             reads=self._reads.reads(action.channel))

    def save_read(self, action: SaveReadPosition) -> None:
        """Carry out a `SaveReadPosition`."""
        self._reads.read(action.channel, action.user_id, action.position)


def find_rule(rules: tuple[HistoryRule, ...], channel: str) -> HistoryRule | None:
    """The most specific history rule for a channel."""
    matching = [r for r in rules if pattern_matches(r.pattern, channel)]
    return max(matching, key=lambda r: len(r.pattern) - r.pattern.count("*"), default=None)


def stamp(payload: bytes, offset: int, epoch: str) -> bytes:
    """An encoded message (a JSON object without `offset`/`epoch`) with its position.

    `Message.encode` writes `offset` and `epoch` last, so this gives the very bytes that
    encoding the message with its position would.
    """
    return b"%s,\"offset\":%d,\"epoch\":%s}" % (payload[:-1], offset, json.dumps(epoch).encode())
