"""WebSocket framing for one upgraded connection (RFC 6455): wsproto checks the opening
handshake, then a lean frame reader of our own carries the connection."""

from __future__ import annotations

import codecs
import enum
import re
import struct
from typing import Any, final

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, RejectConnection, Request
from wsproto.utilities import RemoteProtocolError

from realtime_proto.errors import ErrorCode
from realtime_proto.framing import FramingEvent, FramingKind, MessageIn, PeerClosed, Violation

__all__ = ["WebSocketFraming", "WebSocketState", "close_frame", "frame_message"]

# h11's own end-of-head rule (a blank line, bare LF tolerated), so the split agrees with it.
_HEAD_END = re.compile(rb"\n\r?\n")
# RFC 6455 §7.4.1: 1005 stands for "no code in the Close frame", 1006 for "no Close frame".
_NO_STATUS = 1005
_ABNORMAL_CLOSURE = 1006
_PROTOCOL_ERROR = 1002
_INVALID_PAYLOAD = 1007
# §5.2 opcodes; §5.5: a control frame's payload is at most 125 bytes.
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG))
_MAX_CONTROL = 125
# §7.4.2: codes a peer may send below 3000 are those §7.4.1 defines (1004 and 1014 are
# reserved), and 1005, 1006 and 1015 are never sent; 3000-4999 are for libraries and apps.
_PEER_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013))
_LOCAL_ONLY = frozenset((_NO_STATUS, _ABNORMAL_CLOSURE, 1015))
# The violation reasons use wsproto's wording, which clients saw before this reader.
_MESSAGE_NAMES = {_TEXT: "<Opcode.TEXT: 1>", _BINARY: "<Opcode.BINARY: 2>"}
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


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


def close_frame(code: int, reason: str = "") -> bytes:
    """A server's Close frame (RFC 6455 §5.5.1): the code, then the reason cut to fit.

    Args:
        code: the close code; 1005 ("no status") makes an empty Close, and the other
            codes that must never be sent (1006, 1015; §7.4.1) become 1000.
        reason: UTF-8 text, cut at a character boundary to the 123 bytes that fit.

    Returns:
        The whole frame.
    """
    if code == _NO_STATUS:
        return b"\x88\x00"
    if code in _LOCAL_ONLY:
        code = 1000
    text = reason.encode()
    if len(text) > _MAX_CONTROL - 2:
        text = text[: _MAX_CONTROL - 2].decode(errors="ignore").encode()
    return bytes((0x88, 2 + len(text))) + _U16.pack(code) + text


def _unmask(payload: bytes | bytearray, key: bytes | bytearray) -> bytes:
    """XOR the payload with the repeated 4-byte masking key (§5.3), in C-speed int ops."""
    length = len(payload)
    if not length:
        return b""
    mask = (bytes(key) * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        length, "little")


class _Failure(Exception):
    """The peer broke RFC 6455: fail the connection with this code (§7.1.7)."""

    def __init__(self, reason: str, code: int = _PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.code = code


class _Message:
    """A fragmented message being received (§5.4): exists only between its frames."""

    __slots__ = ("decoder", "opcode", "parts", "size")

    def __init__(self, opcode: int) -> None:
        self.opcode = opcode
        self.parts: list[Any] = []  # str pieces of a text message, bytes of a binary one
        self.size = 0
        # text is checked fragment by fragment, so bad UTF-8 fails at once (§8.1)
        self.decoder = codecs.getincrementaldecoder("utf-8")() if opcode == _TEXT else None


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


_CONNECTING = WebSocketState.CONNECTING
_OPEN = WebSocketState.OPEN
_CLOSING = WebSocketState.CLOSING
_CLOSED = WebSocketState.CLOSED


@final
class WebSocketFraming:
    """One WebSocket connection: whole messages out, pre-framed messages in.

    wsproto validates and answers the opening handshake; the frames that follow are
    read here (RFC 6455 §5: masking, fragments, control frames between them, the close
    handshake, UTF-8 of text, `max_message_bytes`). Pings are answered, the peer's Close
    is echoed, and a message over `max_message_bytes` fails the connection with 4009
    before any of it is buffered. An idle connection holds this object alone: its
    buffers exist only while a frame or a fragmented message is partly received.
    Receive methods never raise because of what the peer sent.
    """

    __slots__ = ("_buffer", "_close_deadline", "_close_timeout", "_eof", "_events",
                 "_max_message", "_message", "_now", "_out", "_skip", "_state")

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
        self._state = _CONNECTING
        # None stands for empty: an idle connection keeps no empty lists
        self._events: list[FramingEvent] | None = None
        self._out: list[bytes] | None = None
        #: the start of a frame not yet whole
        self._buffer: bytearray | None = None
        #: payload bytes still to come of a frame that is read and dropped
        self._skip = 0
        self._message: _Message | None = None
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
        return self._state is _CLOSED

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
            RuntimeError: called twice.
        """
        if self._state is not _CONNECTING:
            raise RuntimeError("accept() called twice")
        self._now = now
        match = _HEAD_END.search(handshake)
        end = match.end() if match else len(handshake)
        ws = WSConnection(ConnectionType.SERVER)  # dropped once answered
        try:
            ws.receive_data(handshake[:end])
            requested = any(isinstance(event, Request) for event in ws.events())
        except RemoteProtocolError as exc:
            self._reject(ws, exc.event_hint, str(exc))
            return False
        if not requested:
            self._reject(ws, None, "incomplete handshake")
            return False
        # No extensions: permessage-deflate keeps per-connection state (RFC 7692),
        # which would make frame_message() bytes connection-specific.
        self._send(ws.send(AcceptConnection()))
        self._state = _OPEN
        if end < len(handshake):
            self.receive_data(handshake[end:], now=now)
        return True

    def receive_data(self, data: bytes, *, now: float) -> None:
        """Feed bytes from the peer; whole messages appear in events().

        Raises:
            RuntimeError: called before accept() or after receive_eof().
        """
        if self._state is _CONNECTING:
            raise RuntimeError("receive_data() before accept()")
        if self._eof:
            raise RuntimeError("receive_data() after receive_eof()")
        self._now = now
        if self._state is _CLOSED or not data:
            return
        buffer = self._buffer
        if buffer is not None:
            buffer += data
        try:
            used = self._read(data if buffer is None else buffer)
        except _Failure as failure:
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
        if self._eof:
            return
        self._eof = True
        if self._state is _OPEN or self._state is _CLOSING:
            self._event(PeerClosed(code=_ABNORMAL_CLOSURE))
        self._finish()

    def events(self) -> list[FramingEvent]:
        """Drain the events: MessageIn, PeerClosed or Violation."""
        events = self._events
        if events is None:
            return []
        self._events = None
        return events

    def send_encoded(self, frame: bytes) -> None:
        """Queue a frame from frame_message(); dropped once closing has started.

        Raises:
            RuntimeError: called before accept().
        """
        if self._state is _CONNECTING:
            raise RuntimeError("send_encoded() before accept()")
        if self._state is _OPEN:
            self._send(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2); no-op once it has started.

        The close_timeout counts from the latest `now` this framing was given.
        """
        if self._state is _OPEN:
            self._send(close_frame(code, reason))
            self._state = _CLOSING
            self._close_deadline = self._now + self._close_timeout
            self._message = None
        elif self._state is _CONNECTING:
            self._finish()

    def data_to_send(self) -> list[bytes]:
        """Drain the bytes to write to the socket."""
        out = self._out
        if out is None:
            return []
        self._out = None
        return out

    def next_deadline(self) -> float | None:
        """When tick() must be called next, or None."""
        return self._close_deadline

    def tick(self, *, now: float) -> None:
        """Give up on the peer's Close once close_timeout has passed."""
        self._now = now
        if self._close_deadline is not None and now >= self._close_deadline:
            self._finish()

    # -- the frame reader (RFC 6455 §5) ---------------------------------------------------

    def _read(self, data: bytes | bytearray) -> int:
        """Handle every whole frame in `data`; how many bytes were used.

        The checks run in wsproto's order, so a bad frame gets the same close code and
        reason at whatever byte it is detected. A data frame is checked (sequence, size)
        as soon as its header is whole; its payload is then awaited in full, which the
        size check bounds by `max_message_bytes` (control frames: 125 bytes).

        Raises:
            _Failure: the peer broke the protocol.
        """
        pos, end = 0, len(data)
        while self._state is not _CLOSED:
            if self._skip:
                dropped = min(self._skip, end - pos)
                self._skip -= dropped
                pos += dropped
                if self._skip:
                    break
            if end - pos < 2:
                break
            first, second = data[pos], data[pos + 1]
            opcode, length, start = first & 0x0F, second & 0x7F, pos + 2
            if opcode not in _OPCODES:
                raise _Failure(f"Invalid opcode {opcode:#x}")
            control = opcode >= _CLOSE
            if control and not first & 0x80:
                raise _Failure("Invalid attempt to fragment control frame")
            if control and length > _MAX_CONTROL:
                raise _Failure("Control frame with payload len > 125")
            if length == 126:
                if end - pos < 4:
                    break
                (length,), start = _U16.unpack_from(data, start), pos + 4
                if length <= _MAX_CONTROL:
                    raise _Failure("Payload length used 2 bytes when 1 would have sufficed")
            elif length == 127:
                if end - pos < 10:
                    break
                (length,), start = _U64.unpack_from(data, start), pos + 10
                if length <= 0xFFFF:
                    raise _Failure("Payload length used 8 bytes when 2 would have sufficed")
                if length >> 63:
                    raise _Failure("8-byte payload length with non-zero MSB")
            if first & 0x70:  # RSV1-3 without a negotiated extension (§5.2)
                raise _Failure("Reserved bit set unexpectedly")
            if not second & 0x80:  # §5.1: a client masks every frame
                raise _Failure("server received unexpected unmasked frame")
            if end - start < 4:
                break
            key, start = data[start:start + 4], start + 4
            if not control and not self._admit(opcode, length):
                pos, self._skip = start, length  # read and dropped, never buffered
                continue
            if end - start < length:
                break
            pos = start + length
            payload = _unmask(data[start:pos], key)
            if control:
                self._control(opcode, payload)
            else:
                self._data(opcode, bool(first & 0x80), payload)
        return pos

    def _admit(self, opcode: int, length: int) -> bool:
        """Check a data frame's place in its message and its size; False drops it.

        Raises:
            _Failure: a continuation with nothing to continue, or a new message inside
                a fragmented one (§5.4).
        """
        if self._state is not _OPEN:
            return False  # after our Close, the peer's data is read and dropped (§7.1.2)
        message = self._message
        if message is None and opcode == _CONTINUATION:
            raise _Failure("unexpected CONTINUATION")
        if message is not None and opcode != _CONTINUATION:
            raise _Failure(f"expected CONTINUATION, got {_MESSAGE_NAMES[opcode]}")
        if (message.size if message else 0) + length <= self._max_message:
            return True
        code = int(ErrorCode.MESSAGE_TOO_LARGE)
        self._event(Violation(code=code, reason="message too large"))
        self.close(code, "message too large")
        return False

    def _data(self, opcode: int, fin: bool, payload: bytes) -> None:
        message = self._message
        try:
            if message is None and fin:  # a whole message in one frame: the usual case
                self._event(MessageIn(data=payload.decode() if opcode == _TEXT else payload))
                return
            if message is None:
                message = self._message = _Message(opcode)
            message.size += len(payload)
            decoder = message.decoder
            message.parts.append(payload if decoder is None else decoder.decode(payload, fin))
        except UnicodeDecodeError:
            raise _Failure("invalid UTF-8 in a text message", _INVALID_PAYLOAD) from None
        if fin:
            self._message = None
            parts = message.parts
            self._event(MessageIn(data="".join(parts) if decoder else b"".join(parts)))

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            # RFC 6455 §5.5.2; no Pong may follow our own Close.
            if self._state is _OPEN:
                self._send(bytes((0x80 | _PONG, len(payload))) + payload)
        elif opcode == _CLOSE:
            code, reason = _close_payload(payload)
            if self._state is _OPEN:
                # The peer started closing: echo its code (RFC 6455 §5.5.1).
                self._send(close_frame(code, reason))
            self._event(PeerClosed(code=code, reason=reason))  # or the answer to our Close
            self._finish()
        # a Pong: unsolicited ones are allowed and mean nothing (§5.5.3)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (§7.1.7): our Close if none is out yet, then closed."""
        if self._state is _OPEN:
            self._send(close_frame(code, reason))
        self._event(Violation(code=code, reason=reason))
        self._finish()

    # -- output ----------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._out is None:
            self._out = [data]
        else:
            self._out.append(data)

    def _event(self, event: FramingEvent) -> None:
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def _reject(self, ws: WSConnection, hint: Event | None, reason: str) -> None:
        status, headers = 400, []
        if isinstance(hint, RejectConnection):  # 426 carries Sec-WebSocket-Version (§4.4)
            status, headers = hint.status_code, list(hint.headers)
        headers.append((b"connection", b"close"))
        self._send(ws.send(RejectConnection(status_code=status, headers=headers)))
        self._event(Violation(code=status, reason=reason))
        self._finish()

    def _finish(self) -> None:
        self._state = _CLOSED
        self._close_deadline = None
        self._message = None
        self._buffer = None
        self._skip = 0


def _close_payload(payload: bytes) -> tuple[int, str]:
    """The code and reason of a peer's Close (RFC 6455 §5.5.1, §7.4).

    Raises:
        _Failure: a 1-byte payload, a code a peer may not send, or a reason that is
            not UTF-8.
    """
    if not payload:
        return _NO_STATUS, ""
    if len(payload) == 1:
        raise _Failure("CLOSE with 1 byte payload")
    (code,) = _U16.unpack_from(payload)
    if code < 1000 or code > 4999:
        raise _Failure("CLOSE with invalid code")
    if code in _LOCAL_ONLY:
        raise _Failure("remote CLOSE with local-only reason")
    if code < 3000 and code not in _PEER_CODES:
        raise _Failure("CLOSE with unknown reserved code")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise _Failure("invalid UTF-8 in a close reason", _INVALID_PAYLOAD) from None
