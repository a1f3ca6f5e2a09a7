"""Server-Sent Events framing for one streaming response (WHATWG HTML §9.2), in HTTP chunks."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import final

from realtime_proto.framing import FramingEvent, FramingKind, PeerClosed
from realtime_proto.framing.http import LAST_CHUNK, encode_chunk, stream_head
from realtime_proto.machine import Machine

__all__ = ["SSE_MACHINE", "SseFraming", "SseInput", "SseState", "encode_event"]

# WHATWG "Interpreting an event stream": a line ends at CRLF, LF or CR.
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# A comment line: ignored by EventSource, but keeps proxies from timing out an idle stream.
_HEARTBEAT = encode_chunk(b": heartbeat\n\n")


def encode_event(event_id: str | None, payload: bytes) -> bytes:
    """Encode one event as a complete HTTP chunk, once for every SSE connection.

    Args:
        event_id: the ``id:`` field (becomes the client's Last-Event-ID), or None.
        payload: UTF-8 data; each line of it becomes one ``data:`` line, which the
            client joins back with LF.

    Returns:
        One HTTP chunk holding ``id: …\\ndata: …\\n\\n``.

    Raises:
        ValueError: event_id contains CR, LF or NUL (WHATWG ignores such ids).
    """
    parts: list[bytes] = []
    if event_id is not None:
        if any(c in event_id for c in "\r\n\0"):
            raise ValueError(f"invalid SSE event id {event_id!r}")
        parts += (b"id: ", event_id.encode(), b"\n")
    for line in _LINE_BREAK.split(payload):
        parts += (b"data: ", line, b"\n")
    parts.append(b"\n")
    return encode_chunk(b"".join(parts))


class SseState(enum.Enum):
    """Whether an SSE stream still runs."""

    #: events and heartbeats are written
    OPEN = "open"
    #: finished: the adapter closes the socket once data_to_send() is drained
    CLOSED = "closed"
    #: the client went away (receive_eof()): finished, and no more bytes may be fed
    DISCONNECTED = "disconnected"


class SseInput(enum.Enum):
    """The calls that move an SseFraming."""

    #: receive_data()
    DATA = "data"
    #: receive_eof()
    EOF = "eof"
    #: send_encoded()
    SEND = "send"
    #: close()
    CLOSE = "close"


_OPEN, _CLOSED, _DISCONNECTED = SseState
#: The SseFraming transition table (rendered in docs/design.md).
SSE_MACHINE = Machine("SseFraming", SseState, SseInput, {
    (_OPEN, SseInput.DATA): _OPEN,
    (_OPEN, SseInput.EOF): _DISCONNECTED,
    (_OPEN, SseInput.SEND): _OPEN,
    (_OPEN, SseInput.CLOSE): _CLOSED,
    # finished: the client's bytes and late events are ignored
    (_CLOSED, SseInput.DATA): _CLOSED,
    (_CLOSED, SseInput.EOF): _DISCONNECTED,
    (_CLOSED, SseInput.SEND): _CLOSED,
    (_CLOSED, SseInput.CLOSE): _CLOSED,
    (_DISCONNECTED, SseInput.EOF): _DISCONNECTED,
    (_DISCONNECTED, SseInput.SEND): _DISCONNECTED,
    (_DISCONNECTED, SseInput.CLOSE): _DISCONNECTED,
})
SSE_MACHINE.stays(_OPEN, SseInput.SEND)  # send_encoded() tests it by identity


@final
class SseFraming:
    """One text/event-stream response: pre-encoded events in, chunks out.

    Construction queues the response head and a ``retry:`` chunk. Whatever the
    client sends is ignored; its EOF ends the stream.
    """

    kind: FramingKind = FramingKind.SSE

    def __init__(
        self,
        *,
        now: float,
        heartbeat_interval: float = 15.0,
        retry_ms: int = 3000,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Queue the response head and the reconnection delay.

        Args:
            now: the current monotonic time.
            heartbeat_interval: seconds of silence before a comment chunk is sent.
            retry_ms: the client's reconnection delay (the ``retry:`` field).
            extra_headers: more response header fields.

        Raises:
            ValueError: heartbeat_interval is not positive or retry_ms is negative.
        """
        if heartbeat_interval <= 0 or retry_ms < 0:
            raise ValueError("SseFraming limits must be positive")
        self._heartbeat_interval = heartbeat_interval
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            # nginx buffers proxied responses unless told not to, which stalls a stream.
            ("x-accel-buffering", "no"),
            *extra_headers,
        ]
        self._out: list[bytes] = [
            stream_head(200, headers),
            encode_chunk(b"retry: %d\n\n" % retry_ms),
        ]
        self._events: list[FramingEvent] = []
        self._state = _OPEN
        self._now = now
        self._deadline: float | None = now + heartbeat_interval

    @property
    def state(self) -> SseState:
        """The current state."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once the adapter should close the socket after draining data_to_send()."""
        return self._state is not _OPEN

    def _advance(self, event: SseInput) -> None:
        self._state = SSE_MACHINE.advance(self._state, event)

    def receive_data(self, data: bytes, *, now: float) -> None:
        """Accept and ignore bytes from the client (it has nothing to say on this stream).

        Raises:
            LocalProtocolError: called after receive_eof().
        """
        self._advance(SseInput.DATA)
        self._now = now

    def receive_eof(self, *, now: float) -> None:
        """Record that the client went away; the stream ends."""
        self._now = now
        if self._state is _OPEN:
            self._events.append(PeerClosed())
            self._deadline = None
        self._advance(SseInput.EOF)

    def events(self) -> list[FramingEvent]:
        """Drain the events: only PeerClosed."""
        events, self._events = self._events, []
        return events

    def send_encoded(self, chunk: bytes) -> None:
        """Queue a chunk from encode_event(); dropped after close.

        The heartbeat timer restarts from the latest `now` this framing was given,
        so a stale `now` can only make the next heartbeat early, never late.
        """
        if self._state is _OPEN:
            self._out.append(chunk)
            self._deadline = self._now + self._heartbeat_interval
        else:
            self._advance(SseInput.SEND)  # dropped

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End the chunked body; code and reason are unused (send connection.closed first)."""
        if self._state is _OPEN:
            self._out.append(LAST_CHUNK)
            self._deadline = None
        self._advance(SseInput.CLOSE)

    def data_to_send(self) -> list[bytes]:
        """Drain the bytes to write to the socket."""
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        """When tick() must be called next (the heartbeat), or None."""
        return self._deadline

    def tick(self, *, now: float) -> None:
        """Send a heartbeat comment if nothing was sent for heartbeat_interval."""
        self._now = now
        if self._deadline is not None and now >= self._deadline:
            self._out.append(_HEARTBEAT)
            self._deadline = now + self._heartbeat_interval
