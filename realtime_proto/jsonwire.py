"""The native JSON protocol (docs/protocol.md) as wire codecs: over WebSocket, over
WebSocket with permessage-deflate (one codec per window size), and over SSE."""

from __future__ import annotations

from functools import cache

from .framing.deflate import compressed_frame
from .framing.sse import encode_event
from .framing.websocket import frame_message
from .wire import WireCodec

__all__ = ["SSE", "WEBSOCKET", "deflate_codec"]


class _WebSocket(WireCodec):
    name = "websocket"

    def encode(self, payload: bytes, event_id: str | None, user: str | None) -> bytes:
        return frame_message(payload)


class _Deflate(WireCodec):
    """Compressed once per window size; a short or incompressible payload goes plain."""

    name = "websocket-deflate"

    def __init__(self, window_bits: int) -> None:
        self.window_bits = window_bits
        self.fallback = WEBSOCKET

    def encode(self, payload: bytes, event_id: str | None, user: str | None) -> bytes | None:
        return compressed_frame(payload, self.window_bits)

    def notice(self, payload: bytes) -> bytes:
        return frame_message(payload)


class _Sse(WireCodec):
    name = "sse"

    def encode(self, payload: bytes, event_id: str | None, user: str | None) -> bytes:
        return encode_event(event_id, payload)

    def notice(self, payload: bytes) -> bytes:
        return encode_event(None, payload)

    def goodbye(self, payload: bytes) -> bytes:
        return encode_event(None, payload)


WEBSOCKET: WireCodec = _WebSocket()
SSE: WireCodec = _Sse()


@cache
def deflate_codec(window_bits: int) -> WireCodec:
    """The permessage-deflate codec of one server window size (9-15)."""
    return _Deflate(window_bits)
