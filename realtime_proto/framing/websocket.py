"""WebSocket framing for one upgraded connection (RFC 6455), on wsproto."""

from __future__ import annotations

import enum
import re
import struct
from typing import final

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from realtime_proto.errors import ErrorCode
from realtime_proto.framing import FramingEvent, FramingKind, MessageIn, PeerClosed, Violation

__all__ = ["WebSocketFraming", "WebSocketState", "frame_message"]

# h11's own end-of-head rule (a blank line, bare LF tolerated), so the split agrees with it.
_HEAD_END = re.compile(rb"\n\r?\n")
# RFC 6455 §7.4.1: 1006 means the connection dropped without a Close frame.
_ABNORMAL_CLOSURE = 1006
_INVALID_PAYLOAD = 1007


def frame_message(payload: bytes) -> bytes:
    """Frame one unmasked, final text frame (RFC 6455 §5.2) for any number of connections.

    A server's frames are never masked (§5.1) and no extension is negotiated, so the
    bytes do not depend on the connection: encode once, append to every one.

    Args:
        payload: UTF-8 text (not checked).

    Returns:
        The frame header followed by the payload.
    """
    length = len(payload)
    if length <= 125:
        header = bytes((0x81, length))
    elif length <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload


class WebSocketState(enum.Enum):
    """Where a WebSocketFraming is in the connection's life (RFC 6455 §4, §7)."""

    #: waiting for accept() to validate the opening handshake
    CONNECTING = "connecting"
    #: messages flow both ways
    OPEN = "open"
    #: our Close frame is out; waiting for the peer's (§7.1.2) or close_timeout
    CLOSING = "closing"
    #: finished: the adapter closes the socket once data_to_send() is drained
    CLOSED = "closed"


@final
class WebSocketFraming:
    """One WebSocket connection: whole messages out, pre-framed messages in.

    The duties wsproto leaves to its user are done here: pings are answered,
    the peer's Close is echoed, fragments are reassembled, and a message over
    `max_message_bytes` fails the connection with 4009 before it is buffered.
    Receive methods never raise because of what the peer sent.
    """

    kind: FramingKind = FramingKind.WEBSOCKET

    def __init__(self, *, max_message_bytes: int = 64 * 1024, close_timeout: float = 5.0) -> None:
        """Create a framing waiting for accept().

        Args:
            max_message_bytes: the largest whole message accepted from the peer.
            close_timeout: seconds to wait for the peer's Close after ours.

        Raises:
            ValueError: a limit is not positive.
        """
        if max_message_bytes <= 0 or close_timeout <= 0:
            raise ValueError("WebSocketFraming limits must be positive")
        self._max_message = max_message_bytes
        self._close_timeout = close_timeout
        self._ws: WSConnection | Connection = WSConnection(ConnectionType.SERVER)
        self._state = WebSocketState.CONNECTING
        self._events: list[FramingEvent] = []
        self._out: list[bytes] = []
        self._text: list[str] = []
        self._binary: list[bytes | bytearray] = []
        self._message_bytes = 0
        self._now = 0.0
        self._close_deadline: float | None = None
        self._eof = False

    @property
    def state(self) -> WebSocketState:
        """The current state."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once the adapter should close the socket after draining data_to_send()."""
        return self._state is WebSocketState.CLOSED

    @property
    def is_open(self) -> bool:
        """True while messages may be sent."""
        return self._state is WebSocketState.OPEN

    def accept(self, handshake: bytes, *, now: float) -> bool:
        """Validate the opening handshake and answer it (RFC 6455 §4.2.2).

        Args:
            handshake: the bytes from `HttpFraming.take_over()`: the request head,
                then any frames the client sent right behind it.
            now: the current monotonic time.

        Returns:
            True if the 101 answer is queued; False if a 400/426 rejection is
            queued instead (a Violation is emitted and the framing is closed).

        Raises:
            RuntimeError: called twice.
        """
        if self._state is not WebSocketState.CONNECTING:
            raise RuntimeError("accept() called twice")
        self._now = now
        match = _HEAD_END.search(handshake)
        end = match.end() if match else len(handshake)
        try:
            self._ws.receive_data(handshake[:end])
            requested = any(isinstance(event, Request) for event in self._ws.events())
        except RemoteProtocolError as exc:
            self._reject(exc.event_hint, str(exc))
            return False
        if not requested:
            self._reject(None, "incomplete handshake")
            return False
        # No extensions: permessage-deflate keeps per-connection state (RFC 7692),
        # which would make frame_message() bytes connection-specific.
        self._out.append(self._ws.send(AcceptConnection()))
        # From here on only the frame layer is needed; dropping the handshake machine
        # (and the h11 connection inside it) saves about 2 KiB per open connection.
        assert isinstance(self._ws, WSConnection) and self._ws.connection is not None
        self._ws = self._ws.connection
        self._state = WebSocketState.OPEN
        if end < len(handshake):
            self.receive_data(handshake[end:], now=now)
        return True

    def receive_data(self, data: bytes, *, now: float) -> None:
        """Feed bytes from the peer; whole messages appear in events().

        Raises:
            RuntimeError: called before accept() or after receive_eof().
        """
        if self._state is WebSocketState.CONNECTING:
            raise RuntimeError("receive_data() before accept()")
        if self._eof:
            raise RuntimeError("receive_data() after receive_eof()")
        self._now = now
        if self._state is WebSocketState.CLOSED or not data:
            return
        self._ws.receive_data(data)
        for event in self._ws.events():
            self._handle(event)

    def receive_eof(self, *, now: float) -> None:
        """Record that the peer closed the TCP connection."""
        self._now = now
        if self._eof:
            return
        self._eof = True
        if self._state in (WebSocketState.OPEN, WebSocketState.CLOSING):
            self._events.append(PeerClosed(code=_ABNORMAL_CLOSURE))
        self._finish()

    def events(self) -> list[FramingEvent]:
        """Drain the events: MessageIn, PeerClosed or Violation."""
        events, self._events = self._events, []
        return events

    def send_encoded(self, frame: bytes) -> None:
        """Queue a frame from frame_message(); dropped once closing has started.

        Raises:
            RuntimeError: called before accept().
        """
        if self._state is WebSocketState.CONNECTING:
            raise RuntimeError("send_encoded() before accept()")
        if self._state is WebSocketState.OPEN:
            self._out.append(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2); no-op once it has started.

        The close_timeout counts from the latest `now` this framing was given.
        """
        if self._state is WebSocketState.OPEN:
            self._out.append(self._ws.send(CloseConnection(code=code, reason=reason)))
            self._state = WebSocketState.CLOSING
            self._close_deadline = self._now + self._close_timeout
            self._text.clear()
            self._binary.clear()
        elif self._state is WebSocketState.CONNECTING:
            self._finish()

    def data_to_send(self) -> list[bytes]:
        """Drain the bytes to write to the socket."""
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        """When tick() must be called next, or None."""
        return self._close_deadline

    def tick(self, *, now: float) -> None:
        """Give up on the peer's Close once close_timeout has passed."""
        self._now = now
        if self._close_deadline is not None and now >= self._close_deadline:
            self._finish()

    def _handle(self, event: Event) -> None:
        match event:
            case TextMessage(data=text, message_finished=finished):
                size = len(text) if text.isascii() else len(text.encode())
                if self._admit(size):
                    self._text.append(text)
                    if finished:
                        self._deliver("".join(self._text))
            case BytesMessage(data=chunk, message_finished=finished):
                if self._admit(len(chunk)):
                    self._binary.append(chunk)
                    if finished:
                        self._deliver(b"".join(self._binary))
            case Ping():
                # RFC 6455 §5.5.2; no Pong may follow our own Close (wsproto forbids it).
                if self._ws.state is ConnectionState.OPEN:
                    self._out.append(self._ws.send(event.response()))
            case CloseConnection():
                self._on_close(event)
            case _:  # Pong: unsolicited ones are allowed and mean nothing (§5.5.3)
                pass

    def _admit(self, size: int) -> bool:
        """Count a fragment against the message limit; False drops it."""
        if self._state is not WebSocketState.OPEN:
            return False  # after our Close, the peer's data is read and dropped (§7.1.2)
        self._message_bytes += size
        if self._message_bytes <= self._max_message:
            return True
        code = int(ErrorCode.MESSAGE_TOO_LARGE)
        self._events.append(Violation(code=code, reason="message too large"))
        self.close(code, "message too large")
        return False

    def _deliver(self, data: str | bytes) -> None:
        self._events.append(MessageIn(data=data))
        self._text.clear()
        self._binary.clear()
        self._message_bytes = 0

    def _on_close(self, event: CloseConnection) -> None:
        code, reason = int(event.code), event.reason or ""
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The peer started closing: echo its code (RFC 6455 §5.5.1).
            self._out.append(self._ws.send(event.response()))
            self._events.append(PeerClosed(code=code, reason=reason))
        elif state is ConnectionState.CLOSED:
            self._events.append(PeerClosed(code=code, reason=reason))  # the answer to our Close
        else:
            # wsproto could not parse the peer's bytes and proposes this close code;
            # its parser is dead, so fail the connection at once (§7.1.7).
            if code == _INVALID_PAYLOAD:
                reason = "invalid UTF-8 in a text message"  # the decoder's text varies by split
            if state is ConnectionState.OPEN:
                self._out.append(self._ws.send(CloseConnection(code=code, reason=reason)))
            self._events.append(Violation(code=code, reason=reason))
        self._finish()

    def _reject(self, hint: Event | None, reason: str) -> None:
        status, headers = 400, []
        if isinstance(hint, RejectConnection):  # 426 carries Sec-WebSocket-Version (§4.4)
            status, headers = hint.status_code, list(hint.headers)
        headers.append((b"connection", b"close"))
        self._out.append(self._ws.send(RejectConnection(status_code=status, headers=headers)))
        self._events.append(Violation(code=status, reason=reason))
        self._finish()

    def _finish(self) -> None:
        self._state = WebSocketState.CLOSED
        self._close_deadline = None
        self._text.clear()
        self._binary.clear()
