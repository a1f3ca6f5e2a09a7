"""Typing indicators and read receipts: throttled, ephemeral signals between members."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from .errors import ErrorCode, MessageError
from .message import JsonValue

__all__ = ["READ_EVENT", "TYPING_EVENT", "ChannelSignals", "read_position"]

#: the client event that says a user is typing (coalesced per user and channel)
TYPING_EVENT = "typing"
#: the client event that moves a user's read position on a channel
READ_EVENT = "read"


def read_position(data: JsonValue) -> int | str:
    """The position a `read` event names: an offset (int) or a message id (str).

    Raises:
        MessageError: 4005 when `data.position` is neither.
    """
    position = data.get("position") if isinstance(data, dict) else None
    if isinstance(position, bool) or not isinstance(position, int | str) or position == "":
        raise MessageError(ErrorCode.INVALID_FIELD,
                           "a read event needs data.position: an offset or a message id")
    return position


class ChannelSignals:
    """When each user last typed, and how far each user has read, per channel (bounded)."""

    def __init__(self, typing_interval: float, max_entries: int = 100_000) -> None:
        self._typing_interval = typing_interval
        self._max_entries = max_entries
        self._typed_at: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._reads: dict[str, OrderedDict[str, int | str]] = {}
        self._read_entries = 0

    def typing_allowed(self, channel: str, user_id: str, now: float) -> bool:
        """At most one typing signal per user and channel per interval; later ones coalesce."""
        key = (channel, user_id)
        last = self._typed_at.get(key)
        if last is not None and now - last < self._typing_interval:
            return False
        self._typed_at[key] = now
        self._typed_at.move_to_end(key)
        while len(self._typed_at) > self._max_entries:
            self._typed_at.popitem(last=False)
        return True

    def read(self, channel: str, user_id: str, position: int | str) -> bool:
        """Record a read position; False when an offset would move backwards."""
        readers = self._reads.setdefault(channel, OrderedDict())
        previous = readers.get(user_id)
        if isinstance(previous, int) and isinstance(position, int) and position <= previous:
            return False
        if previous is None:
            self._read_entries += 1
        readers[user_id] = position
        readers.move_to_end(user_id)
        while self._read_entries > self._max_entries:
            oldest = next(iter(self._reads))
            self._reads[oldest].popitem(last=False)
            self._read_entries -= 1
            if not self._reads[oldest]:
                del self._reads[oldest]
        return True

    def remember(self, channel: str, reads: Mapping[str, int | str]) -> None:
        """Take in read positions the shared store keeps (integer ones only move forward)."""
        for user_id, position in reads.items():
            self.read(channel, user_id, position)

    def reads(self, channel: str) -> dict[str, int | str]:
        """Every user's read position on a channel."""
        return dict(self._reads.get(channel, {}))
