"""Fuzzing the WebSocket frame reader (WebSocketFraming): hypothesis builds client frame
streams from valid and hostile frames and splits them into reads; wsproto, a separate
implementation, is the oracle for the messages and the close code.

Properties: nothing raises out of the core; the messages before a violation are
delivered, and echoed ahead of the Close, whose code is the Violation's; the outcome is
wsproto's and does not depend on how the bytes are split. `FUZZ_EXAMPLES=100000` runs
longer.
"""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from realtime_proto.framing import FramingEvent, MessageIn, PeerClosed, Violation
from realtime_proto.framing.websocket import WebSocketFraming, frame_message
from realtime_proto.framing.websocket_frames import close_frame
from realtime_proto.testing.peers import WebSocketPeer
from tests.core.strategies import chunkings, feed

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KEY = b"\x37\xfa\x21\x3d"

OPCODES = st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA] * 4 + [0x3, 0x7, 0xB, 0xF])
CLOSE_CODES = st.sampled_from([1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011, 1015,
                               999, 2999, 3000, 4999, 5000])
PAYLOADS = st.one_of(st.text(max_size=12).map(str.encode), st.binary(max_size=12),
                     st.sampled_from([b"\xce", b"\xba", b"\xed\xa0\x80", b"\xff", b"\xf0\x9f"]))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One client frame, mostly valid, with hostile bits, lengths and payloads now and then."""
    opcode = draw(OPCODES)
    payload = draw(PAYLOADS)
    if opcode == 0x8 and payload and draw(st.booleans()):
        payload = struct.pack("!H", draw(CLOSE_CODES)) + payload
    fin = draw(st.sampled_from([True, True, False]))
    rsv = draw(st.sampled_from([0] * 12 + [0x10, 0x20, 0x40]))
    masked = draw(st.sampled_from([True] * 12 + [False]))
    length = len(payload)
    form = draw(st.sampled_from(["short"] * 10 + ["16", "64"]))
    if form == "short":
        lengths = bytes((length,))
    elif form == "16":
        lengths = bytes((126,)) + struct.pack("!H", length)
    else:
        lengths = bytes((127,)) + struct.pack("!Q", length)
    head = bytes(((0x80 if fin else 0) | rsv | opcode,)) + bytes(
        ((0x80 if masked else 0) | lengths[0],)) + lengths[1:]
    if not masked:
        return head + payload
    return head + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(frames(), max_size=6)))
    if draw(st.booleans()):
        data += draw(st.binary(max_size=6))  # a partial frame or garbage at the end
    return data


def make() -> WebSocketFraming:
    framing = WebSocketFraming(max_message_bytes=1 << 20)
    assert framing.accept(WebSocketPeer().handshake_bytes("/ws"), now=0.0)
    framing.data_to_send()
    return framing


def echo(framing: WebSocketFraming, event: FramingEvent) -> None:
    if isinstance(event, MessageIn):
        data = event.data
        framing.send_encoded(frame_message(data.encode()) if isinstance(data, str)
                             else frame_message(data, binary=True))


def oracle(data: bytes) -> tuple[list[str | bytes], int | None]:
    """What wsproto makes of the same bytes: the whole messages, then the close code."""
    ws = Connection(ConnectionType.SERVER)
    ws.receive_data(data)
    messages: list[str | bytes] = []
    parts: list[str | bytes] = []
    for event in ws.events():
        if isinstance(event, TextMessage | BytesMessage):
            parts.append(event.data)
            if event.message_finished:
                messages.append("".join(parts) if isinstance(event, TextMessage)  # type: ignore[arg-type]
                                else b"".join(parts))  # type: ignore[arg-type]
                parts = []
        elif isinstance(event, CloseConnection):
            return messages, event.code
    return messages, None


@FUZZ
@given(data=st.data(), stream=streams())
def test_any_frame_stream_ends_as_wsproto_says_however_split(data: st.DataObject,
                                                             stream: bytes) -> None:
    whole = feed(make(), [stream], react=echo)
    split = feed(make(), data.draw(chunkings(stream)), react=echo)
    assert (split.events, split.closed) == (whole.events, whole.closed)
    # the same frames; only where a Pong falls among the echoes depends on the reads
    assert pongs_apart(split.output) == pongs_apart(whole.output)
    messages = [event.data for event in whole.events if isinstance(event, MessageIn)]
    ends = [event for event in whole.events if not isinstance(event, MessageIn)]
    expected_messages, expected_code = oracle(stream)
    assert messages == expected_messages
    assert len(ends) <= 1 and whole.events[len(messages):] == ends  # the end comes last
    if expected_code is None:
        assert ends == [] and not whole.closed
        return
    [end] = ends
    assert isinstance(end, PeerClosed | Violation) and end.code == expected_code
    assert whole.closed
    # every message echoed, then our Close (Pongs may come between)
    echoes = [frame_message(m.encode()) if isinstance(m, str) else frame_message(m, binary=True)
              for m in messages]
    closing = (close_frame(end.code, end.reason) if isinstance(end, Violation)
               else close_frame(end.code or 1005, end.reason))
    assert pongs_apart(whole.output)[0] == [*echoes, closing]


def pongs_apart(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """The server's frames other than Pongs, and its Pongs."""
    frames = server_frames(data)
    return [f for f in frames if f[0] != 0x8A], [f for f in frames if f[0] == 0x8A]


def server_frames(data: bytes) -> list[bytes]:
    """Cut the server's output (unmasked frames) into whole frames."""
    frames, pos = [], 0
    while pos < len(data):
        length, start = data[pos + 1] & 0x7F, pos + 2
        if length == 126:
            (length,), start = struct.unpack_from("!H", data, start), start + 2
        elif length == 127:
            (length,), start = struct.unpack_from("!Q", data, start), start + 8
        frames.append(data[pos:start + length])
        pos = start + length
    return frames
