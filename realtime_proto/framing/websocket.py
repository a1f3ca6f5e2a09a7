"""WebSocket framing for one upgraded connection (RFC 6455): the opening handshake
(websocket_handshake), then a lean frame reader of our own (websocket_reader) carries the
connection, through the states of WEBSOCKET_MACHINE (websocket_machine)."""

from __future__ import annotations

from typing import final

from realtime_proto.errors import ErrorCode
from realtime_proto.framing import FramingEvent, FramingKind, PeerClosed, Violation
from realtime_proto.framing.websocket_frames import (
    FrameError,
    close_frame,
    frame_message,
    ping_frame,
)
from realtime_proto.framing.websocket_handshake import Refused, answer_handshake, head_end
from realtime_proto.framing.websocket_machine import (
    WEBSOCKET_MACHINE,
    WebSocketInput,
    WebSocketState,
)
from realtime_proto.framing.websocket_reader import FrameReader

__all__ = ["WEBSOCKET_MACHINE", "WebSocketFraming", "WebSocketInput", "WebSocketState",
           "frame_message"]

# RFC 6455 §7.4.1: 1006 means the connection dropped without a Close frame.
_ABNORMAL_CLOSURE = 1006
_CONNECTING = WebSocketState.CONNECTING
_OPEN = WebSocketState.OPEN
_CLOSING = WebSocketState.CLOSING
_CLOSED = WebSocketState.CLOSED
_DISCONNECTED = WebSocketState.DISCONNECTED
_ACCEPT, _REJECT, _DATA, _EOF, _SEND, _CLOSE, _TIMEOUT = (
    WebSocketInput.ACCEPT, WebSocketInput.REJECT, WebSocketInput.DATA, WebSocketInput.EOF,
    WebSocketInput.SEND, WebSocketInput.CLOSE, WebSocketInput.TIMEOUT)


@final
class WebSocketFraming(FrameReader):
    """One WebSocket connection: whole messages out, pre-framed messages in.

    wsproto validates and answers the opening handshake; the frames that follow are
    read by the FrameReader it inherits (RFC 6455 §5: masking, fragments, control frames
    between them, the close handshake, UTF-8 of text, `max_message_bytes`). Pings are
    answered, the peer's Close is echoed, and a message over `max_message_bytes` fails the
    connection with 4009 before any of it is buffered. With a `heartbeat`, a silent peer is
    sent a Ping and, silent until `idle_timeout`, fails with 4020. An idle connection holds
    this object alone: its buffers exist only while a frame or a fragmented message is partly
    received. Receive methods never raise because of what the peer sent.

    With `compression`, permessage-deflate (RFC 7692) is agreed when the client offers
    it: `deflate` then holds the parameters, the peer's compressed messages are inflated
    (1009 past `max_message_bytes` once inflated), and frames built with
    `frame_message(..., compressed=True)` may be sent to it.
    """

    __slots__ = ("_buffer", "_close_deadline", "_close_timeout", "_compression", "_heartbeat",
                 "_idle_timeout", "_now", "_pinged", "_seen", "_state")

    kind: FramingKind = FramingKind.WEBSOCKET

    def __init__(self, *, max_message_bytes: int = 64 * 1024, close_timeout: float = 5.0,
                 heartbeat: float | None = None, idle_timeout: float | None = None,
                 compression: bool = False) -> None:
        """Create a framing waiting for accept().

        Args:
            max_message_bytes: the largest whole message accepted from the peer.
            close_timeout: seconds to wait for the peer's Close after ours.
            heartbeat: seconds of silence from the peer after which a Ping is sent
                (any frame, the Pong included, counts as activity); None sends none.
            idle_timeout: seconds of silence after which the connection fails with 4020
                (only with a heartbeat; default 2 x heartbeat + 10).
            compression: agree to permessage-deflate when the client offers it.

        Raises:
            ValueError: a limit is not positive, or idle_timeout is not over heartbeat.
        """
        if max_message_bytes <= 0 or close_timeout <= 0:
            raise ValueError("WebSocketFraming limits must be positive")
        if heartbeat is not None:
            idle_timeout = 2 * heartbeat + 10.0 if idle_timeout is None else idle_timeout
            if heartbeat <= 0 or idle_timeout <= heartbeat:
                raise ValueError("heartbeat must be positive and below idle_timeout")
        super().__init__(max_message_bytes)
        self._close_timeout = close_timeout
        self._heartbeat = heartbeat
        self._idle_timeout = idle_timeout
        #: when the peer was last heard, and whether it was pinged since
        self._seen = 0.0
        self._pinged = False
        self._state = _CONNECTING
        #: the start of a frame not yet whole
        self._buffer: bytearray | None = None
        self._now = 0.0
        self._close_deadline: float | None = None
        self._compression = compression

    @property
    def state(self) -> WebSocketState:
        """The current state."""
        return self._state

    @property
    def closed(self) -> bool:
        """True once the adapter should close the socket after draining data_to_send()."""
        # an open connection answers after one test: the drain asks at every turn
        return self._state is not _OPEN and (self._state is _CLOSED
                                             or self._state is _DISCONNECTED)

    @property
    def is_open(self) -> bool:
        """True while messages may be sent."""
        return self._state is _OPEN

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
            LocalProtocolError: called twice, or after close() or receive_eof().
        """
        WEBSOCKET_MACHINE.advance(self._state, _ACCEPT)  # the outcome decides the input
        self._now = now
        end = head_end(handshake)
        answer = answer_handshake(handshake[:end], compression=self._compression)
        self._send(answer.response)
        if isinstance(answer, Refused):
            self._event(Violation(code=answer.status, reason=answer.reason))
            self._finish(_REJECT)
            return False
        self.deflate = answer.deflate
        self._state = WEBSOCKET_MACHINE.advance(self._state, _ACCEPT)
        self._seen = now
        if end < len(handshake):
            self.receive_data(handshake[end:], now=now)
        return True

    def receive_data(self, data: bytes, *, now: float) -> None:
        """Feed bytes from the peer; whole messages appear in events().

        Raises:
            LocalProtocolError: called before accept() or after receive_eof().
        """
        if self._state is not _OPEN:
            WEBSOCKET_MACHINE.advance(self._state, _DATA)  # no state change, or refused
        self._now = now
        if self._state is _CLOSED or not data:
            return
        self._seen = now
        self._pinged = False
        buffer = self._buffer
        if buffer is not None:
            buffer += data
        try:
            used = self._read(data if buffer is None else buffer)
        except FrameError as failure:
            self._fail(failure.code, str(failure))
            return
        if self._state is _CLOSED:
            self._buffer = None
        elif buffer is not None:
            del buffer[:used]
            if not buffer:
                self._buffer = None
        elif used < len(data):
            self._buffer = bytearray(data[used:])

    def receive_eof(self, *, now: float) -> None:
        """Record that the peer closed the TCP connection."""
        self._now = now
        if self._state is _OPEN or self._state is _CLOSING:
            self._event(PeerClosed(code=_ABNORMAL_CLOSURE))
        self._finish(_EOF)

    def events(self) -> list[FramingEvent]:
        """Drain the events: MessageIn, PeerClosed or Violation."""
        events = self._events
        if events is None:
            return []
        self._events = None
        return events

    def send_encoded(self, frame: bytes) -> None:
        """Queue a frame from frame_message(); dropped once closing has started.

        When the peer's Close or a protocol violation ends the connection, frames sent
        before the next data_to_send() still go out, ahead of our Close: the answers to
        the messages received before it.

        Raises:
            LocalProtocolError: called before accept().
        """
        if self._state is not _OPEN:
            WEBSOCKET_MACHINE.advance(self._state, _SEND)  # no state change, or refused
            if self._last_close is None:
                return
        self._send(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2); no-op once it has started.

        The close_timeout counts from the latest `now` this framing was given.
        """
        if self._state is _CONNECTING:
            self._finish(_CLOSE)
            return
        if self._state is _OPEN:
            self._send(close_frame(code, reason))
            self._close_deadline = self._now + self._close_timeout
            self._message = None
        self._advance(_CLOSE)

    def data_to_send(self) -> list[bytes]:
        """Drain the bytes to write to the socket."""
        if self._last_close is not None:
            self._send(self._last_close)
            self._last_close = None
        out = self._out
        if out is None:
            return []
        self._out = None
        return out

    def next_deadline(self) -> float | None:
        """When tick() must be called next, or None."""
        if self._heartbeat is None or self._state is not _OPEN:
            return self._close_deadline
        assert self._idle_timeout is not None
        return self._seen + (self._idle_timeout if self._pinged else self._heartbeat)

    def tick(self, *, now: float) -> None:
        """Ping a silent peer, fail one silent past idle_timeout (4020), and give up on
        the peer's Close once close_timeout has passed."""
        self._now = now
        if self._close_deadline is not None and now >= self._close_deadline:
            self._finish(_TIMEOUT)
        elif self._heartbeat is not None and self._state is _OPEN:
            assert self._idle_timeout is not None
            if now - self._seen >= self._idle_timeout:
                self._fail(int(ErrorCode.IDLE_TIMEOUT), "idle timeout")
            elif now - self._seen >= self._heartbeat and not self._pinged:
                self._pinged = True
                self._send(ping_frame())


    def _advance(self, event: WebSocketInput) -> None:
        self._state = WEBSOCKET_MACHINE.advance(self._state, event)

    def _finish(self, event: WebSocketInput) -> None:
        """Move on `event` to a finished state and drop every buffer."""
        self._advance(event)
        self._close_deadline = None
        self._message = None
        self._probe = None
        self._buffer = None
        self._skip = 0
        self._inflater = None
