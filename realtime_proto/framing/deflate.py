"""permessage-deflate (RFC 7692), the parts a server needs, as pure code: negotiating the
extension, compressing a message once for every connection that agreed to the same
parameters, and inflating a client's message without letting it grow past a limit.

The server always asks for `server_no_context_takeover`: each message it sends is a
deflate stream of its own, the same bytes for every connection with the same window,
so a broadcast is compressed once per window size, not once per connection.
`WebSocketFraming(compression=True)` negotiates it and inflates; `Node._deliver` builds
one `compressed_frame` per broadcast and window size.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import final

from realtime_proto.framing.websocket_frames import frame_message

__all__ = ["MIN_COMPRESSED_SIZE", "DeflateParams", "InflateError", "Inflater",
           "compress_message", "compressed_frame", "negotiate"]

#: the 4 octets every sync-flushed deflate block ends with; RFC 7692 §7.2.1 drops them
#: from each message, and the receiver puts them back
TAIL = b"\x00\x00\xff\xff"
#: close codes for a compressed message the server refuses (RFC 6455 §7.4.1)
MESSAGE_TOO_BIG = 1009
INVALID_PAYLOAD = 1007

_PARAM = re.compile(r'\s*([A-Za-z0-9_!#$%&\'*+.^`|~-]+)\s*(?:=\s*("[^"]*"|[^\s;,"]*)\s*)?$')
_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")
_BITS = ("server_max_window_bits", "client_max_window_bits")


@final
@dataclass(frozen=True, slots=True)
class DeflateParams:
    """What both sides agreed on for one connection."""

    #: the window the server compresses with (9 … 15); messages differ per value
    server_max_window_bits: int = 15
    #: the window the client compresses with, at most (8 … 15)
    client_max_window_bits: int = 15
    #: the client starts each message with an empty window (it said so)
    client_no_context_takeover: bool = False
    #: whether the offer named `client_max_window_bits` with a value (echoed back)
    client_bits_named: bool = False

    def response(self) -> str:
        """The `Sec-WebSocket-Extensions` value of the server's 101 answer."""
        parts = ["permessage-deflate", "server_no_context_takeover"]
        if self.server_max_window_bits != 15:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.client_bits_named:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


def negotiate(header: str) -> DeflateParams | None:
    """The first `permessage-deflate` offer of a `Sec-WebSocket-Extensions` header (values
    of repeated headers joined with ", ") that this server accepts; None if there is none.

    An offer is declined (RFC 7692 §5) when it has an unknown or repeated parameter, a
    value that is not allowed, or asks for `server_max_window_bits=8`, which zlib cannot
    produce (it silently widens a raw deflate window of 8 bits to 9).
    """
    for offer in _split(header, ","):
        name, *params = _split(offer, ";")
        if name.strip().lower() == "permessage-deflate":
            agreed = _accept(params)
            if agreed is not None:
                return agreed
    return None


def _accept(params: list[str]) -> DeflateParams | None:
    found: dict[str, str | None] = {}
    for param in params:
        match = _PARAM.match(param)
        if match is None:
            return None
        key, value = match.group(1).lower(), match.group(2)
        if key in found or key not in (*_FLAGS, *_BITS):
            return None
        if value is not None and value.startswith('"'):
            value = value[1:-1]
        found[key] = value
    for flag in _FLAGS:
        if flag in found and found[flag] is not None:
            return None
    bits = {}
    for key in _BITS:
        if key not in found:
            continue
        value = found[key]
        if value is None:
            if key == "server_max_window_bits":
                return None  # its value is required (§7.1.2.1)
            continue
        if not (value.isascii() and value.isdigit() and len(value) <= 2
                and 8 <= int(value) <= 15):
            return None
        bits[key] = int(value)
    if bits.get("server_max_window_bits") == 8:
        return None
    return DeflateParams(server_max_window_bits=bits.get("server_max_window_bits", 15),
                         client_max_window_bits=bits.get("client_max_window_bits", 15),
                         client_no_context_takeover="client_no_context_takeover" in found,
                         client_bits_named="client_max_window_bits" in bits)


def _split(text: str, separator: str) -> list[str]:
    """Split at `separator` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def compress_message(payload: bytes, window_bits: int = 15, level: int = 6) -> bytes:
    """One message compressed with an empty window (`server_no_context_takeover`): the
    payload of a frame with RSV1 set, the same for every connection with this window.

    If it comes out longer than `payload`, sending the payload uncompressed (RSV1 clear)
    is allowed too (RFC 7692 §6.1).
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(TAIL) else data


#: messages shorter than this go uncompressed (RFC 7692 §6.1 lets each message choose):
#: below it, deflate saves a few bytes at most and costs more CPU than the whole frame
MIN_COMPRESSED_SIZE = 64


def compressed_frame(payload: bytes, window_bits: int = 15, *,
                     binary: bool = False) -> bytes | None:
    """The frame (RSV1 set) of one text (or binary) message for every connection that
    agreed to this window, or None when it is better sent uncompressed: shorter than
    `MIN_COMPRESSED_SIZE`, or no shorter once compressed."""
    if len(payload) < MIN_COMPRESSED_SIZE:
        return None
    data = compress_message(payload, window_bits)
    if len(data) >= len(payload):
        return None
    return frame_message(data, binary=binary, compressed=True)


class InflateError(Exception):
    """A client's compressed message is refused; `code` is the WebSocket close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Inflater:
    """Inflates one connection's compressed messages, none past `max_size` bytes.

    The output is bounded while it is produced: a message that would inflate past
    `max_size` is refused as soon as one byte more than that came out, however far the
    compressed bytes would have gone (a deflate stream can grow about 1000-fold).
    """

    def __init__(self, max_size: int, *, window_bits: int = 15,
                 no_context_takeover: bool = False) -> None:
        self._max_size = max_size
        self._window_bits = window_bits
        self._no_context_takeover = no_context_takeover
        self._decompressor = zlib.decompressobj(-window_bits)
        self._size = 0  # of the message being inflated

    def inflate(self, data: bytes, *, fin: bool = True) -> bytes:
        """The inflated bytes of one frame's payload (`fin`: the message's last frame).

        Raises:
            InflateError: 1009 when the message passes `max_size`, 1007 when the data is
                not deflate; the connection must close.
        """
        out = self._bounded(data)
        if fin:
            if not self._decompressor.eof:
                out += self._bounded(TAIL)
            self._size = 0
            # a message may end its stream (a block with BFINAL set): the next starts anew
            if self._no_context_takeover or self._decompressor.eof:
                self._decompressor = zlib.decompressobj(-self._window_bits)
        return out

    def _bounded(self, data: bytes) -> bytes:
        room = self._max_size - self._size
        try:
            # at most one byte past the room: that byte says the message is too big
            out = self._decompressor.decompress(data, room + 1)
        except zlib.error:
            raise InflateError(INVALID_PAYLOAD, "invalid compressed data") from None
        if len(out) > room:
            raise InflateError(MESSAGE_TOO_BIG, "message too big once inflated")
        self._size += len(out)
        return out
