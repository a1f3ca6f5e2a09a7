"""WebSocket framing for one upgraded connection (RFC 6455): wsproto checks the opening
handshake, then a lean frame reader of our own carries the connection."""

from __future__ import annotations

import binascii
import codecs
import enum
import json
import re
from base64 import b64decode
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, final

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.utilities import RemoteProtocolError

from realtime_proto.errors import ErrorCode
from realtime_proto.framing import FramingEvent, FramingKind, MessageIn, PeerClosed, Violation
from realtime_proto.framing.deflate import DeflateParams, InflateError, Inflater, negotiate
from realtime_proto.framing.websocket_frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    TEXT,
    FrameError,
    close_frame,
    frame_message,
    ping_frame,
    pong_frame,
    read_close,
    read_header,
    unmask,
)
from realtime_proto.machine import Machine

__all__ = ["WEBSOCKET_MACHINE", "WebSocketFraming", "WebSocketInput", "WebSocketState",
           "frame_message"]

# h11's own end-of-head rule (a blank line, bare LF tolerated), so the split agrees with it.
_HEAD_END = re.compile(rb"\n\r?\n")
# RFC 6455 §7.4.1: 1006 means the connection dropped without a Close frame.
_ABNORMAL_CLOSURE = 1006
_INVALID_PAYLOAD = 1007
# wsproto's names of the opcodes, in the violation reasons peers saw before this reader
_MESSAGE_NAMES = {TEXT: "<Opcode.TEXT: 1>", BINARY: "<Opcode.BINARY: 2>"}


def _refusal(head: bytes) -> tuple[int, str, list[tuple[str, str]]] | None:
    """What RFC 6455 §4.2.1 makes a server refuse and wsproto lets through (or answers
    with a less precise status): the answer's status, reason and headers, or None."""
    http = h11.Connection(h11.SERVER)
    try:
        http.receive_data(head)
        request = http.next_event()
    except h11.RemoteProtocolError:
        return 400, "malformed handshake", []
    if not isinstance(request, h11.Request):
        return 400, "incomplete handshake", []
    if request.method != b"GET":
        return 405, "a WebSocket handshake is a GET", [("allow", "GET")]
    if request.http_version != b"1.1":
        return 400, "a WebSocket handshake needs HTTP/1.1", []
    fields: dict[bytes, list[bytes]] = {}
    for name, value in request.headers:
        fields.setdefault(name, []).append(value)
    if not (_has_token(fields, b"upgrade", b"websocket")
            and _has_token(fields, b"connection", b"upgrade")):
        return 400, "not a WebSocket upgrade", []
    if fields.get(b"sec-websocket-version") != [b"13"]:
        return 426, "Sec-WebSocket-Version must be 13", [("sec-websocket-version", "13")]
    keys = fields.get(b"sec-websocket-key", [])
    try:
        valid_key = len(keys) == 1 and len(b64decode(keys[0], validate=True)) == 16
    except binascii.Error:
        valid_key = False
    if not valid_key:
        return 400, "Sec-WebSocket-Key must be 16 bytes in base64", []
    return None


def _has_token(fields: dict[bytes, list[bytes]], name: bytes, token: bytes) -> bool:
    """Whether a comma-separated header field lists `token` (case-insensitive)."""
    return any(part.strip().lower() == token
               for value in fields.get(name, ()) for part in value.split(b","))


class _Message:
    """A fragmented message being received (§5.4): exists only between its frames."""

    __slots__ = ("compressed", "decoder", "parts", "size")

    def __init__(self, opcode: int, compressed: bool) -> None:
        self.parts: list[Any] = []  # str pieces of a text message, bytes of a binary one
        self.size = 0
        #: its first frame had RSV1: every fragment is inflated (RFC 7692 §6.2)
        self.compressed = compressed
        # text is checked fragment by fragment, so bad UTF-8 fails at once (§8.1)
        self.decoder = codecs.getincrementaldecoder("utf-8")() if opcode == TEXT else None


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
    #: the peer closed the TCP connection (receive_eof()): finished, and no more bytes
    #: may be fed
    DISCONNECTED = "disconnected"


class WebSocketInput(enum.Enum):
    """What moves a WebSocketFraming: the caller's calls, and what the peer did."""

    #: accept() with a valid handshake
    ACCEPT = "accept"
    #: accept() with a handshake refused (400, 405, 426): from the peer, never refused
    REJECT = "reject"
    #: receive_data()
    DATA = "data"
    #: receive_eof()
    EOF = "eof"
    #: send_encoded()
    SEND = "send"
    #: close()
    CLOSE = "close"
    #: the peer's Close frame arrived (from the peer)
    PEER_CLOSE = "peer_close"
    #: the peer broke the protocol or stayed silent past idle_timeout (from the peer)
    FAIL = "fail"
    #: close_timeout passed without the peer's Close (from the clock)
    TIMEOUT = "timeout"


_CONNECTING = WebSocketState.CONNECTING
_OPEN = WebSocketState.OPEN
_CLOSING = WebSocketState.CLOSING
_CLOSED = WebSocketState.CLOSED
_DISCONNECTED = WebSocketState.DISCONNECTED
_ACCEPT, _REJECT, _DATA, _EOF, _SEND, _CLOSE, _PEER_CLOSE, _FAIL, _TIMEOUT = WebSocketInput

#: The WebSocketFraming transition table (rendered in docs/design.md).
WEBSOCKET_MACHINE = Machine("WebSocketFraming", WebSocketState, WebSocketInput, {
    (_CONNECTING, _ACCEPT): _OPEN,
    (_CONNECTING, _REJECT): _CLOSED,
    (_CONNECTING, _EOF): _DISCONNECTED,
    (_CONNECTING, _CLOSE): _CLOSED,
    (_OPEN, _DATA): _OPEN,
    (_OPEN, _EOF): _DISCONNECTED,
    (_OPEN, _SEND): _OPEN,
    (_OPEN, _CLOSE): _CLOSING,
    (_OPEN, _PEER_CLOSE): _CLOSED,
    (_OPEN, _FAIL): _CLOSED,
    # after our Close the peer's data is read and dropped (§7.1.2), and so is ours
    (_CLOSING, _DATA): _CLOSING,
    (_CLOSING, _EOF): _DISCONNECTED,
    (_CLOSING, _SEND): _CLOSING,
    (_CLOSING, _CLOSE): _CLOSING,
    (_CLOSING, _PEER_CLOSE): _CLOSED,
    (_CLOSING, _FAIL): _CLOSED,
    (_CLOSING, _TIMEOUT): _CLOSED,
    # finished: bytes are ignored; frames still go out ahead of a Close not yet written
    (_CLOSED, _DATA): _CLOSED,
    (_CLOSED, _EOF): _DISCONNECTED,
    (_CLOSED, _SEND): _CLOSED,
    (_CLOSED, _CLOSE): _CLOSED,
    (_DISCONNECTED, _EOF): _DISCONNECTED,
    (_DISCONNECTED, _SEND): _DISCONNECTED,
    (_DISCONNECTED, _CLOSE): _DISCONNECTED,
}, peer_inputs=[_REJECT, _PEER_CLOSE, _FAIL, _TIMEOUT])
# the hot paths test these pairs by identity rather than looking them up
WEBSOCKET_MACHINE.stays(_OPEN, _DATA)
WEBSOCKET_MACHINE.stays(_OPEN, _SEND)


@final
class WebSocketFraming:
    """One WebSocket connection: whole messages out, pre-framed messages in.

    wsproto validates and answers the opening handshake; the frames that follow are
    read here (RFC 6455 §5: masking, fragments, control frames between them, the close
    handshake, UTF-8 of text, `max_message_bytes`). Pings are answered, the peer's Close
    is echoed, and a message over `max_message_bytes` fails the connection with 4009
    before any of it is buffered. With a `heartbeat`, a silent peer is sent a Ping and,
    silent until `idle_timeout`, fails with 4020. An idle connection holds this object
    alone: its buffers exist only while a frame or a fragmented message is partly
    received. Receive methods never raise because of what the peer sent.

    With `compression`, permessage-deflate (RFC 7692) is agreed when the client offers
    it: `deflate` then holds the parameters, the peer's compressed messages are inflated
    (1009 past `max_message_bytes` once inflated), and frames built with
    `frame_message(..., compressed=True)` may be sent to it.
    """

    __slots__ = ("_buffer", "_close_deadline", "_close_timeout", "_compression", "_events",
                 "_heartbeat", "_idle_timeout", "_inflater", "_last_close", "_max_message",
                 "_message", "_now", "_out", "_pinged", "_probe", "_seen", "_skip", "_state",
                 "deflate")

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
        self._max_message = max_message_bytes
        self._close_timeout = close_timeout
        self._heartbeat = heartbeat
        self._idle_timeout = idle_timeout
        #: when the peer was last heard, and whether it was pinged since
        self._seen = 0.0
        self._pinged = False
        self._state = _CONNECTING
        # None stands for empty: an idle connection keeps no empty lists
        self._events: list[FramingEvent] | None = None
        self._out: list[bytes] | None = None
        #: the start of a frame not yet whole
        self._buffer: bytearray | None = None
        #: payload bytes still to come of a frame that is read and dropped
        self._skip = 0
        self._message: _Message | None = None
        #: how much of a text frame's partial payload is checked, and the decoder past it
        self._probe: tuple[int, codecs.IncrementalDecoder] | None = None
        #: our Close when the peer's Close or a violation ended the connection: written at
        #: the next data_to_send(), after what the caller sends in answer to the
        #: messages that came before it
        self._last_close: bytes | None = None
        self._now = 0.0
        self._close_deadline: float | None = None
        self._compression = compression
        #: the permessage-deflate parameters agreed in accept(), or None: not compressed
        self.deflate: DeflateParams | None = None
        #: inflates the peer's compressed messages; made at its first one
        self._inflater: Inflater | None = None

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
        match = _HEAD_END.search(handshake)
        end = match.end() if match else len(handshake)
        if (refusal := _refusal(handshake[:end])) is not None:
            self._reject(*refusal)
            return False
        ws = WSConnection(ConnectionType.SERVER)  # dropped once answered
        try:
            ws.receive_data(handshake[:end])
            request = next((e for e in ws.events() if isinstance(e, Request)), None)
        except RemoteProtocolError as exc:
            self._reject(400, str(exc))
            return False
        if request is None:
            self._reject(400, "incomplete handshake")
            return False
        headers: list[tuple[bytes, bytes]] = []
        if self._compression and request.extensions:
            # always with server_no_context_takeover: a frame_message() of ours stays
            # the same bytes for every connection that agreed to the same window
            self.deflate = negotiate(", ".join(str(offer) for offer in request.extensions))
            if self.deflate is not None:
                headers.append((b"sec-websocket-extensions", self.deflate.response().encode()))
        self._send(ws.send(AcceptConnection(extra_headers=headers)))
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

    # -- the frame reader (RFC 6455 §5) ---------------------------------------------------

    def _read(self, data: bytes | bytearray) -> int:
        """Handle every whole frame in `data`; how many bytes were used.

        A data frame is checked (its place in the message, its size) as soon as its
        header is whole; its payload is then awaited in full, which that check bounds
        by `max_message_bytes` (a control frame's by 125 bytes).

        Raises:
            FrameError: the peer broke the protocol.
        """
        pos, end = 0, len(data)
        while self._state is not _CLOSED:
            if self._skip:
                dropped = min(self._skip, end - pos)
                self._skip -= dropped
                pos += dropped
                if self._skip:
                    break
            header = read_header(data, pos, deflate=self.deflate is not None)
            if header is None:
                break
            opcode, fin, compressed, length, start, key = header
            control = opcode >= CLOSE
            if not control and not self._admit(opcode, length):
                pos, self._skip = start, length  # read and dropped, never buffered
                continue
            if end - start < length:
                if not control and self._plain_text(opcode, compressed):
                    self._check_text(data, start, end, key)
                break
            self._probe = None
            pos = start + length
            payload = unmask(data[start:pos], key)
            if control:
                self._control(opcode, payload)
            else:
                self._data(opcode, fin, compressed, payload)
        return pos

    def _plain_text(self, opcode: int, compressed: bool) -> bool:
        """Whether a data frame is text whose UTF-8 can be checked before it is whole
        (a compressed one is checked once inflated)."""
        message = self._message
        if message is None:
            return opcode == TEXT and not compressed
        return message.decoder is not None and not message.compressed

    def _check_text(self, data: bytes | bytearray, start: int, end: int, key: bytes) -> None:
        """Check the UTF-8 of a text frame's payload so far, so bad text fails before the
        frame is whole (§8.1); each byte is checked once however the frame arrives.

        Raises:
            FrameError: invalid UTF-8 (1007).
        """
        decoder: codecs.IncrementalDecoder
        if self._probe is None:
            decoder = codecs.getincrementaldecoder("utf-8")()
            if self._message is not None and self._message.decoder is not None:
                decoder.setstate(self._message.decoder.getstate())  # a fragment's tail
            checked = 0
        else:
            checked, decoder = self._probe
        if end - start <= checked:
            return
        shift = checked % 4
        try:
            decoder.decode(unmask(data[start + checked:end], key[shift:] + key[:shift]))
        except UnicodeDecodeError:
            raise FrameError("invalid UTF-8 in a text message", _INVALID_PAYLOAD) from None
        self._probe = (end - start, decoder)

    def _admit(self, opcode: int, length: int) -> bool:
        """Check a data frame's place in its message and its size; False drops it.

        Raises:
            FrameError: a continuation with nothing to continue, or a new message inside
                a fragmented one (§5.4).
        """
        if self._state is not _OPEN:
            return False  # after our Close, the peer's data is read and dropped (§7.1.2)
        message = self._message
        if message is None and opcode == CONTINUATION:
            raise FrameError("unexpected CONTINUATION")
        if message is not None and opcode != CONTINUATION:
            raise FrameError(f"expected CONTINUATION, got {_MESSAGE_NAMES[opcode]}")
        if (message.size if message else 0) + length <= self._max_message:
            return True
        code = int(ErrorCode.MESSAGE_TOO_LARGE)
        self._event(Violation(code=code, reason="message too large"))
        self.close(code, "message too large")
        return False

    def _data(self, opcode: int, fin: bool, compressed: bool, payload: bytes) -> None:
        message = self._message
        if compressed or (message is not None and message.compressed):
            payload = self._inflate(payload, fin)
        try:
            if message is None and fin:  # a whole message in one frame: the usual case
                self._event(MessageIn(data=payload.decode() if opcode == TEXT else payload))
                return
            if message is None:
                message = self._message = _Message(opcode, compressed)
            message.size += len(payload)
            decoder = message.decoder
            message.parts.append(payload if decoder is None else decoder.decode(payload, fin))
        except UnicodeDecodeError:
            raise FrameError("invalid UTF-8 in a text message", _INVALID_PAYLOAD) from None
        if fin:
            self._message = None
            parts = message.parts
            self._event(MessageIn(data="".join(parts) if decoder else b"".join(parts)))

    def _inflate(self, payload: bytes, fin: bool) -> bytes:
        """One frame of a compressed message, inflated (at most `max_message_bytes` for
        the whole message).

        Raises:
            FrameError: 1009 past the limit, 1007 for bytes that are not deflate.
        """
        params = self.deflate
        assert params is not None  # read_header refuses RSV1 without it
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = Inflater(
                self._max_message, window_bits=params.client_max_window_bits,
                no_context_takeover=params.client_no_context_takeover)
        try:
            data = inflater.inflate(payload, fin=fin)
        except InflateError as refused:
            raise FrameError(refused.reason, refused.code) from None
        if fin and params.client_no_context_takeover:
            self._inflater = None  # nothing to keep: an idle connection holds no window
        return data

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            # RFC 6455 §5.5.2; no Pong may follow our own Close.
            if self._state is _OPEN:
                self._send(pong_frame(payload))
        elif opcode == CLOSE:
            code, reason = read_close(payload)
            # The peer started closing: echo its code (RFC 6455 §5.5.1).
            echo = close_frame(code, reason) if self._state is _OPEN else None
            self._event(PeerClosed(code=code, reason=reason))  # or the answer to our Close
            self._finish(_PEER_CLOSE)
            self._last_close = echo
        # a Pong: unsolicited ones are allowed and mean nothing (§5.5.3)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (§7.1.7): our Close if none is out yet, then closed.

        The messages before the violation are already in events(); the Close waits for
        the next data_to_send(), so what the caller sends in answer goes out first.
        """
        failing = close_frame(code, reason) if self._state is _OPEN else None
        self._event(Violation(code=code, reason=reason))
        self._finish(_FAIL)
        self._last_close = failing

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

    def _reject(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer the handshake with an error (and a JSON body, as the HTTP front door does)."""
        body = json.dumps({"error": {"code": int(ErrorCode.MALFORMED_MESSAGE), "message": reason}},
                          separators=(",", ":")).encode()
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
                 *(f"{name}: {value}" for name, value in headers),
                 "content-type: application/json", f"content-length: {len(body)}",
                 "connection: close", "", ""]
        self._send("\r\n".join(lines).encode("latin-1") + body)
        self._event(Violation(code=status, reason=reason))
        self._finish(_REJECT)

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
