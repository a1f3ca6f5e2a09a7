"""Channel history: recent messages with offsets in an epoch, for recovery on reconnect."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

from .channels import pattern_matches
from .errors import ConfigError

__all__ = ["ChannelStream", "HistoryRule", "Recovery", "find_rule", "restamp"]


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
class Recovery:
    """The answer to a recovery request: the missed payloads, or why there are none."""

    recovered: bool
    payloads: tuple[bytes, ...]
    epoch: str
    offset: int


class ChannelStream:
    """One channel's stream: offsets increase by one per message within an epoch.

    The epoch is new whenever the history may have lost messages (the stream was created
    anew after the node restarted or after the channel went idle and was dropped), so a
    client's (epoch, offset) either names a point in this very stream or is refused.
    """

    def __init__(self, rule: HistoryRule, new_epoch: Callable[[], str]) -> None:
        self.rule = rule
        self.epoch = new_epoch()
        self.offset = 0
        self._entries: deque[tuple[int, float, bytes]] = deque()

    def next_offset(self) -> int:
        """The offset the next message will get."""
        return self.offset + 1

    def append(self, offset: int, payload: bytes, now: float) -> None:
        """Keep an encoded message; trims by size and age."""
        self.offset = offset
        self._entries.append((offset, now + self.rule.ttl, payload))
        while len(self._entries) > self.rule.size:
            self._entries.popleft()
        self.trim(now)

    def trim(self, now: float) -> None:
        """Drop messages past their age."""
        while self._entries and self._entries[0][1] <= now:
            self._entries.popleft()

    def since(self, epoch: str, offset: int, now: float) -> Recovery:
        """Every message after `offset`, if the stream still holds all of them."""
        self.trim(now)
        oldest = self._entries[0][0] if self._entries else self.offset + 1
        complete = epoch == self.epoch and oldest - 1 <= offset <= self.offset
        payloads = tuple(p for o, _, p in self._entries if o > offset) if complete else ()
        return Recovery(recovered=complete, payloads=payloads, epoch=self.epoch,
                        offset=self.offset)

    def last(self, count: int, now: float) -> tuple[bytes, ...]:
        """The most recent `count` messages, oldest first."""
        self.trim(now)
        return tuple(p for _, _, p in list(self._entries)[-count:]) if count > 0 else ()


def find_rule(rules: tuple[HistoryRule, ...], channel: str) -> HistoryRule | None:
    """The most specific history rule for a channel."""
    matching = [r for r in rules if pattern_matches(r.pattern, channel)]
    return max(matching, key=lambda r: len(r.pattern) - r.pattern.count("*"), default=None)


def restamp(payload: bytes, offset: int, epoch: str) -> bytes:
    """An encoded message with this node's stream position (for messages of other nodes)."""
    message = json.loads(payload)
    message["offset"], message["epoch"] = offset, epoch
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
