"""The frame reader of a WebSocketFraming (RFC 6455 §5): a client's frames read from the
bytes received, messages reassembled and checked, control frames answered, and the
violations that fail the connection."""

from __future__ import annotations

import codecs
from typing import Any

from realtime_proto.errors import ErrorCode
from realtime_proto.framing import FramingEvent, MessageIn, PeerClosed, Violation
from realtime_proto.framing.deflate import DeflateParams, InflateError, Inflater
from realtime_proto.framing.websocket_frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    TEXT,
    FrameError,
    close_frame,
    pong_frame,
    read_close,
    read_header,
    unmask,
)
from realtime_proto.framing.websocket_machine import WebSocketInput, WebSocketState

__all__ = ["FrameReader"]

_OPEN = WebSocketState.OPEN
_CLOSED = WebSocketState.CLOSED
_PEER_CLOSE = WebSocketInput.PEER_CLOSE
_FAIL = WebSocketInput.FAIL
_INVALID_PAYLOAD = 1007
# wsproto's names of the opcodes, in the violation reasons peers saw before this reader
_MESSAGE_NAMES = {TEXT: "<Opcode.TEXT: 1>", BINARY: "<Opcode.BINARY: 2>"}


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


class FrameReader:
    """The reading half of WebSocketFraming, which inherits it (so that a frame costs no
    call more than the reading itself) and drives its state."""

    __slots__ = ("_events", "_inflater", "_last_close", "_max_message", "_message", "_out",
                 "_probe", "_skip", "deflate")

    _state: WebSocketState  # WebSocketFraming's

    def __init__(self, max_message_bytes: int) -> None:
        """Nothing received yet; messages up to `max_message_bytes` accepted."""
        self._max_message = max_message_bytes
        # None stands for empty: an idle connection keeps no empty lists
        self._events: list[FramingEvent] | None = None
        self._out: list[bytes] | None = None
        #: payload bytes still to come of a frame that is read and dropped
        self._skip = 0
        self._message: _Message | None = None
        #: how much of a text frame's partial payload is checked, and the decoder past it
        self._probe: tuple[int, codecs.IncrementalDecoder] | None = None
        #: our Close when the peer's Close or a violation ended the connection: written at
        #: the next data_to_send(), after what the caller sends in answer to the
        #: messages that came before it
        self._last_close: bytes | None = None
        #: the permessage-deflate parameters agreed in accept(), or None: not compressed
        self.deflate: DeflateParams | None = None
        #: inflates the peer's compressed messages; made at its first one
        self._inflater: Inflater | None = None

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (WebSocketFraming.close)."""
        raise NotImplementedError

    def _finish(self, event: WebSocketInput) -> None:
        """Move on `event` to a finished state (WebSocketFraming._finish)."""
        raise NotImplementedError

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
