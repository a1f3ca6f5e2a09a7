"""Long-poll connections: a cursor over queued messages, held requests, expiry."""

from __future__ import annotations

import enum
from collections import deque

from .errors import ErrorCode, MessageError
from .events import ConnectionId, TransportId
from .machine import Machine
from .message import JsonValue, decode_json

__all__ = ["POLL_MACHINE", "PollInput", "PollSession", "PollState", "parse_send_body"]


class PollState(enum.Enum):
    """Where a long-poll connection is: open or closed, with a poll held or not."""

    #: open, no poll held: the expiry clock runs
    WAITING = "waiting"
    #: open, a poll request is parked until messages arrive or it times out
    HOLDING = "holding"
    #: closed while a poll is held: that poll carries the final message
    CLOSING = "closing"
    #: closed, no poll held: the next poll gets what is left, the final message included
    CLOSED = "closed"


class PollInput(enum.Enum):
    """The calls that move a PollSession."""

    #: hold(): park a poll request
    HOLD = "hold"
    #: release_hold(): a poll was answered or went away (or a send restarts the clock)
    RELEASE = "release"
    #: push(): queue a message (dropped once closed)
    PUSH = "push"
    #: close(): queue the final message
    CLOSE = "close"


_WAITING, _HOLDING, _CLOSING, _CLOSED = PollState
#: The PollSession transition table (rendered in docs/design.md).
POLL_MACHINE = Machine("PollSession", PollState, PollInput, {
    (_WAITING, PollInput.HOLD): _HOLDING,
    (_WAITING, PollInput.RELEASE): _WAITING,
    (_WAITING, PollInput.PUSH): _WAITING,
    (_WAITING, PollInput.CLOSE): _CLOSED,
    (_HOLDING, PollInput.RELEASE): _WAITING,
    (_HOLDING, PollInput.PUSH): _HOLDING,
    (_HOLDING, PollInput.CLOSE): _CLOSING,
    (_CLOSING, PollInput.RELEASE): _CLOSED,
    (_CLOSING, PollInput.PUSH): _CLOSING,
    (_CLOSED, PollInput.RELEASE): _CLOSED,
    (_CLOSED, PollInput.PUSH): _CLOSED,
})
for _state in PollState:  # push() is on the fan-out path: it tests `closed` instead
    POLL_MACHINE.stays(_state, PollInput.PUSH)


class PollSession:
    """One long-poll connection, which outlives the HTTP requests that carry it.

    Every queued message gets the next position. A poll names the last position it has
    seen (its cursor); messages up to it are released, the rest are answered again, so
    a response lost on the way costs nothing but a retry.
    """

    def __init__(self, connection_id: ConnectionId, *, now: float, expires_at: float) -> None:
        self.id = connection_id
        self._queue: deque[tuple[int, bytes]] = deque()
        self._last_position = 0
        self._cursor = 0
        #: the socket holding an unanswered poll, and when to answer it empty
        self.held: TransportId | None = None
        self.held_until = 0.0
        #: when the connection closes if no poll arrives (monotonic seconds)
        self.expires_at = expires_at
        self._state = _WAITING

    @property
    def state(self) -> PollState:
        """The current state."""
        return self._state

    @property
    def closed(self) -> bool:
        """Whether close() was called: no more messages are queued."""
        return self._state is _CLOSING or self._state is _CLOSED

    @property
    def pending(self) -> bool:
        """Whether messages are waiting past the client's cursor."""
        return bool(self._queue)

    def push(self, payload: bytes, max_backlog: int) -> bool:
        """Queue a message; False when the backlog is over its limit."""
        if self.closed:
            return True
        self._last_position += 1
        self._queue.append((self._last_position, payload))
        return len(self._queue) <= max_backlog

    def drop_oldest(self, keep: int) -> int:
        """Drop the oldest queued messages until `keep` remain; how many were dropped."""
        dropped = 0
        while len(self._queue) > keep:
            self._queue.popleft()
            dropped += 1
        return dropped

    def push_front(self, payload: bytes) -> None:
        """Queue a message ahead of the others, at the position of the first dropped one."""
        position = self._queue[0][0] - 1 if self._queue else self._last_position + 1
        self._queue.appendleft((position, payload))
        self._last_position = max(self._last_position, position)

    def acknowledge(self, cursor: int) -> None:
        """Release every message up to the client's cursor."""
        cursor = min(cursor, self._last_position)
        while self._queue and self._queue[0][0] <= cursor:
            self._queue.popleft()
        self._cursor = max(self._cursor, cursor)

    def hold(self, transport_id: TransportId, until: float) -> None:
        """Park a poll request until messages arrive or `until`.

        Raises:
            LocalProtocolError: a poll is held already (answer it first), or the
                session is closed.
        """
        self._state = POLL_MACHINE.advance(self._state, PollInput.HOLD)
        self.held = transport_id
        self.held_until = until
        self.expires_at = float("inf")

    def release_hold(self, now: float, session_timeout: float) -> None:
        """The held request was answered or went away; start the expiry clock."""
        self._state = POLL_MACHINE.advance(self._state, PollInput.RELEASE)
        self.held = None
        self.expires_at = now + session_timeout

    def drop_pending(self) -> None:
        """Forget queued messages (the client could not keep up)."""
        self._queue.clear()

    def close(self, closed_message: bytes) -> None:
        """Queue the final `connection.closed` message; no more are accepted.

        Raises:
            LocalProtocolError: closed already.
        """
        state = POLL_MACHINE.advance(self._state, PollInput.CLOSE)
        self.push(closed_message, max_backlog=1 << 30)
        self._state = state

    def response_body(self, *, empty: bool = False) -> bytes:
        """A poll answer with everything past the cursor, built from the encoded payloads."""
        items = [] if empty else list(self._queue)
        cursor = items[-1][0] if items else self._cursor
        head = b'{"connection_id":"%s","cursor":%d,"messages":[' % (self.id.encode(), cursor)
        return head + b",".join(payload for _, payload in items) + b"]}"


def parse_send_body(body: bytes, max_bytes: int) -> list[JsonValue]:
    """The messages of a `POST /send` body: one object or an array of them.

    Raises:
        MessageError: too large (4009), not UTF-8 (4002), not JSON (4000), or neither an
            object nor an array (4004).
    """
    value = decode_json(body, max_bytes=max_bytes)
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return value
    raise MessageError(ErrorCode.NOT_AN_OBJECT, "the body must be a message or an array of them")
