"""What waits for a socket between two pulls, and the slow-consumer policies that bound it."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import final

from .channels import pattern_matches

__all__ = ["Backlog", "SlowConsumerPolicy", "SlowConsumerRule", "conflation_key", "find_policy"]


class SlowConsumerPolicy(enum.StrEnum):
    """What happens when a client reads slower than its channels publish."""

    #: close the connection with 4021 (the default: the client reconnects and recovers)
    DISCONNECT = "disconnect"
    #: drop the oldest waiting messages and tell the client how many (`messages.dropped`)
    DROP_OLDEST = "drop_oldest"
    #: keep only the latest waiting message per key (`data.key`, else the event name)
    LATEST = "latest"


@final
@dataclass(frozen=True, slots=True)
class SlowConsumerRule:
    """The policy for channels matching a pattern."""

    pattern: str
    policy: SlowConsumerPolicy


def find_policy(rules: tuple[SlowConsumerRule, ...], channel: str | None) -> SlowConsumerPolicy:
    """The most specific rule's policy for a channel; DISCONNECT when none matches."""
    if channel is None:
        return SlowConsumerPolicy.DISCONNECT
    matching = [r for r in rules if pattern_matches(r.pattern, channel)]
    best = max(matching, key=lambda r: len(r.pattern) - r.pattern.count("*"), default=None)
    return best.policy if best else SlowConsumerPolicy.DISCONNECT


def conflation_key(channel: str | None, payload: bytes) -> tuple[str, str]:
    """What makes two messages "the same thing" for the latest policy: the channel and
    `data.key` (a cursor's user, a ticker's symbol), else the event name."""
    message = json.loads(payload)
    data = message.get("data")
    key = data.get("key") if isinstance(data, dict) else None
    return channel or "", str(key if key is not None else message.get("event"))


class _Entry:
    """A keyed frame (latest policy), which a newer one of the same key can cancel."""

    __slots__ = ("alive", "frame")

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.alive = True


class Backlog:
    """Frames for one socket, oldest first; conflates by key and drops from the front.

    Unkeyed frames are kept as the bytes themselves, and a lone frame without a list:
    the common case of a fan-out (one frame waits per socket) allocates nothing, so a
    fan-out to 10,000 sockets leaves no 10,000 lists for the cyclic GC to count. An empty
    backlog holds nothing (an idle connection's costs this object alone).
    """

    __slots__ = ("_entries", "_latest", "bytes", "dropped", "gaps")

    def __init__(self) -> None:
        # one frame, or a list while several wait; lazy dicts: an idle connection keeps
        # none of them
        self._entries: bytes | list[bytes | _Entry] | None = None
        self._latest: dict[tuple[str, str], _Entry] | None = None
        #: bytes waiting
        self.bytes = 0
        #: messages dropped or replaced, over the connection's life
        self.dropped = 0
        #: channel -> messages dropped since the last drain (the client is told at drain)
        self.gaps: dict[str | None, int] | None = None

    def push(self, frame: bytes, key: tuple[str, str] | None = None) -> None:
        """Queue a frame; with a key, an older waiting frame of the same key is replaced."""
        self.bytes += len(frame)
        entries = self._entries
        if key is None:
            if entries is None:
                self._entries = frame
            elif isinstance(entries, list):
                entries.append(frame)
            else:
                self._entries = [entries, frame]
            return
        entries = self._list()
        if self._latest is None:
            self._latest = {}
        older = self._latest.get(key)
        if older is not None and older.alive:
            older.alive = False
            self.bytes -= len(older.frame)
            self.dropped += 1
        entry = self._latest[key] = _Entry(frame)
        entries.append(entry)

    def drop_oldest(self, keep_bytes: int, channel: str | None) -> int:
        """Drop from the front until at most `keep_bytes` wait; how many were dropped.

        The gap is remembered under `channel`, for the notice the client gets at drain.
        """
        count = cut = 0
        entries = self._list()
        for entry in entries:
            if self.bytes <= keep_bytes:
                break
            cut += 1
            if isinstance(entry, bytes):
                self.bytes -= len(entry)
            elif entry.alive:
                entry.alive = False
                self.bytes -= len(entry.frame)
            else:
                continue
            count += 1
        del entries[:cut]
        self.dropped += count
        if count:
            self.gaps = self.gaps or {}
            self.gaps[channel] = self.gaps.get(channel, 0) + count
        return count

    def drain(self) -> list[bytes]:
        """Everything waiting, in order; the backlog is empty after (gaps stay for the
        caller, who turns them into notices)."""
        entries, self._entries = self._entries, None
        self.bytes = 0
        if entries is None:
            return []
        if not isinstance(entries, list):
            return [entries]
        if self._latest:
            self._latest = None
            return [e if isinstance(e, bytes) else e.frame for e in entries
                    if isinstance(e, bytes) or e.alive]
        return entries  # type: ignore[return-value]

    def _list(self) -> list[bytes | _Entry]:
        """The waiting frames as a list, made one if it was a lone frame or nothing."""
        entries = self._entries
        if isinstance(entries, list):
            return entries
        listed: list[bytes | _Entry] = [] if entries is None else [entries]
        self._entries = listed
        return listed
