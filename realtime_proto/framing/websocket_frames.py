"""RFC 6455 frames as a server writes them and reads a client's: no state, no buffers."""

from __future__ import annotations

import struct

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "PING",
    "PONG",
    "TEXT",
    "FrameError",
    "FrameHeader",
    "close_frame",
    "frame_message",
    "ping_frame",
    "pong_frame",
    "read_close",
    "read_header",
    "unmask",
]

# §5.2 opcodes
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG))
# §5.5: a control frame's payload is at most 125 bytes
_MAX_CONTROL = 125
# §7.4.1: 1005 stands for "no code in the Close frame"; it, 1006 and 1015 are never sent
_NO_STATUS = 1005
_LOCAL_ONLY = frozenset((_NO_STATUS, 1006, 1015))
# §7.4.2: codes a peer may send below 3000 are those §7.4.1 defines (1004 and 1014 are
# reserved); 3000-4999 are for libraries and applications
_PEER_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013))
_PROTOCOL_ERROR = 1002
_INVALID_PAYLOAD = 1007
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")

#: (opcode, FIN, RSV1, payload length, where the payload starts, masking key)
FrameHeader = tuple[int, bool, bool, int, int, bytes]


class FrameError(Exception):
    """The peer broke RFC 6455: fail the connection with `code` (§7.1.7).

    The reasons use wsproto's wording, which peers saw before this reader.
    """

    def __init__(self, reason: str, code: int = _PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        #: the close code to fail with
        self.code = code


def frame_message(payload: bytes, *, binary: bool = False, compressed: bool = False) -> bytes:
    """Frame one unmasked, final text (or binary) frame (RFC 6455 §5.2) for any number of
    connections.

    A server's frames are never masked (§5.1) and permessage-deflate keeps no context
    between the server's messages, so the bytes do not depend on the connection: encode
    once, append to every one.

    Args:
        payload: UTF-8 text (not checked), or any bytes with `binary`; with `compressed`,
            what `deflate.compress_message` made of them.
        binary: a binary frame instead of a text frame.
        compressed: set RSV1, a permessage-deflate message (RFC 7692 §6), only for the
            connections that negotiated it.

    Returns:
        The frame header followed by the payload.
    """
    first = (0x82 if binary else 0x81) | (0x40 if compressed else 0)
    length = len(payload)
    if length <= 125:
        header = bytes((first, length))
    elif length <= 0xFFFF:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
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


def pong_frame(payload: bytes) -> bytes:
    """The answer to a Ping (§5.5.3): a Pong with the same payload (at most 125 bytes)."""
    return bytes((0x80 | PONG, len(payload))) + payload


def ping_frame(payload: bytes = b"") -> bytes:
    """A server's Ping (§5.5.2), which the peer must answer with a Pong (at most 125 bytes)."""
    return bytes((0x80 | PING, len(payload))) + payload


def read_header(data: bytes | bytearray, pos: int, *, deflate: bool = False
                ) -> FrameHeader | None:
    """Read the header of a client's frame at `pos` (§5.2); None until it is whole.

    The checks run in wsproto's order, so a bad frame fails with the same reason at
    whatever byte it is detected.

    Args:
        data: the bytes received.
        pos: where the frame starts.
        deflate: permessage-deflate was negotiated: RSV1 may be set on the first frame of
            a message (RFC 7692 §6.1), never on a continuation or a control frame.

    Raises:
        FrameError: a reserved opcode or bit, a fragmented or long control frame, a
            length not in its shortest form, or an unmasked frame (§5.1).
    """
    end = len(data)
    if end - pos < 2:
        return None
    first, second = data[pos], data[pos + 1]
    opcode, length, start = first & 0x0F, second & 0x7F, pos + 2
    if opcode not in _OPCODES:
        raise FrameError(f"Invalid opcode {opcode:#x}")
    fin = bool(first & 0x80)
    if opcode >= CLOSE and not fin:
        raise FrameError("Invalid attempt to fragment control frame")
    if opcode >= CLOSE and length > _MAX_CONTROL:
        raise FrameError("Control frame with payload len > 125")
    if length == 126:
        if end - pos < 4:
            return None
        (length,), start = _U16.unpack_from(data, start), pos + 4
        if length <= _MAX_CONTROL:
            raise FrameError("Payload length used 2 bytes when 1 would have sufficed")
    elif length == 127:
        if end - pos < 10:
            return None
        (length,), start = _U64.unpack_from(data, start), pos + 10
        if length <= 0xFFFF:
            raise FrameError("Payload length used 8 bytes when 2 would have sufficed")
        if length >> 63:
            raise FrameError("8-byte payload length with non-zero MSB")
    rsv1 = bool(first & 0x40)
    if first & 0x30 or (rsv1 and not (deflate and opcode in (TEXT, BINARY))):
        raise FrameError("Reserved bit set unexpectedly")
    if not second & 0x80:
        raise FrameError("server received unexpected unmasked frame")
    if end - start < 4:
        return None
    return opcode, fin, rsv1, length, start + 4, bytes(data[start:start + 4])


def unmask(payload: bytes | bytearray, key: bytes) -> bytes:
    """XOR the payload with the repeated 4-byte masking key (§5.3), in C-speed int ops."""
    length = len(payload)
    if not length:
        return b""
    mask = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        length, "little")


def read_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a peer's Close (§5.5.1, §7.4); 1005 when it has no code.

    Raises:
        FrameError: a 1-byte payload, a code a peer may not send, or a reason that is
            not UTF-8 (1007).
    """
    if not payload:
        return _NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError("CLOSE with 1 byte payload")
    (code,) = _U16.unpack_from(payload)
    if code < 1000 or code > 4999:
        raise FrameError("CLOSE with invalid code")
    if code in _LOCAL_ONLY:
        raise FrameError("remote CLOSE with local-only reason")
    if code < 3000 and code not in _PEER_CODES:
        raise FrameError("CLOSE with unknown reserved code")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError("invalid UTF-8 in a close reason", _INVALID_PAYLOAD) from None
