"""The frame reader of WebSocketFraming (RFC 6455 §5), against wsproto's as the reference.

The table tests in test_framing_websocket.py cover the common cases; these cover the rest
of the frame layer (lengths, close codes, UTF-8 across fragments, the size limit before
buffering), and compare the reader with wsproto's frame layer on generated streams, fed
in hypothesis splits.
"""

from __future__ import annotations

import gc
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)

from realtime_proto.framing import FramingEvent, MessageIn, PeerClosed, Violation
from realtime_proto.framing.websocket import WebSocketFraming
from realtime_proto.framing.websocket_frames import close_frame
from realtime_proto.testing.peers import WebSocketPeer

from .strategies import Fed, chunkings, feed, feed_all_ways

KEY = b"\x37\xfa\x21\x3d"
BIG = 1 << 20  # a limit no generated message reaches: only the frame layer is compared


def make(max_message_bytes: int = BIG) -> WebSocketFraming:
    framing = WebSocketFraming(max_message_bytes=max_message_bytes, close_timeout=5.0)
    assert framing.accept(WebSocketPeer().handshake_bytes("/ws"), now=0.0)
    framing.data_to_send()  # the 101
    return framing


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bool = True, width: int | None = None) -> bytes:
    """A client frame made by hand; `width` forces a length encoding (7, 16 or 64 bits)."""
    length = len(payload)
    width = width or (7 if length < 126 else 16 if length < 1 << 16 else 64)
    head = bytes(((0x80 if fin else 0) | rsv | opcode,))
    bit = 0x80 if mask else 0
    if width == 7:
        head += bytes((bit | length,))
    elif width == 16:
        head += bytes((bit | 126,)) + struct.pack("!H", length)
    else:
        head += bytes((bit | 127,)) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    return head + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


# -- lengths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_every_length_encoding_from_a_real_client(size: int, data: st.DataObject) -> None:
    client = Connection(ConnectionType.CLIENT)
    text = "".join(chr(0x61 + i % 26) if i % 7 else "é" for i in range(size))
    binary = bytes(i % 251 for i in range(size))
    stream = client.send(TextMessage(data=text)) + client.send(BytesMessage(data=binary))
    fed = feed(make(), data.draw(chunkings(stream)))
    assert fed.events == [MessageIn(data=text), MessageIn(data=binary)]
    assert fed.output == b"" and not fed.closed


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(0x1, b"x" * 5, width=16), "Payload length used 2 bytes when 1 would have sufficed"),
        (frame(0x2, b"x" * 200, width=64),
         "Payload length used 8 bytes when 2 would have sufficed"),
        (bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63) + KEY,
         "8-byte payload length with non-zero MSB"),
        (bytes((0x89, 0x80 | 126)) + struct.pack("!H", 126) + KEY + bytes(126),
         "Control frame with payload len > 125"),
        (frame(0x1, b"x", rsv=0x10), "Reserved bit set unexpectedly"),
        (frame(0x1, b"x", rsv=0x20), "Reserved bit set unexpectedly"),
        (frame(0xB, b""), "Invalid opcode 0xb"),
        (frame(0x8, b"\x03", fin=True), "CLOSE with 1 byte payload"),
        (frame(0xA, b"", fin=False), "Invalid attempt to fragment control frame"),
        (frame(0x2, b"a", fin=False) + frame(0x2, b"b"),
         "expected CONTINUATION, got <Opcode.BINARY: 2>"),
    ],
)
def test_frame_layer_violations(data: bytes, reason: str) -> None:
    fed = feed_all_ways(make, data)
    assert fed.events == [Violation(code=1002, reason=reason)]
    assert fed.output == close_frame(1002, reason)
    assert fed.closed


# -- close codes (RFC 6455 §7.4) -------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1013, 3000, 3999, 4000, 4999])
def test_close_codes_a_peer_may_send_are_echoed(code: int) -> None:
    fed = feed_all_ways(make, frame(0x8, close_payload(code, "bye é".encode())))
    assert fed.events == [PeerClosed(code=code, reason="bye é")]
    assert fed.output == close_frame(code, "bye é") and fed.closed


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (999, "CLOSE with invalid code"),
        (5000, "CLOSE with invalid code"),
        (1004, "CLOSE with unknown reserved code"),
        (1014, "CLOSE with unknown reserved code"),
        (2999, "CLOSE with unknown reserved code"),
        (1005, "remote CLOSE with local-only reason"),
        (1006, "remote CLOSE with local-only reason"),
        (1015, "remote CLOSE with local-only reason"),
    ],
)
def test_close_codes_a_peer_may_not_send(code: int, reason: str) -> None:
    fed = feed_all_ways(make, frame(0x8, close_payload(code)))
    assert fed.events == [Violation(code=1002, reason=reason)]
    assert fed.output == close_frame(1002, reason) and fed.closed


def test_close_reason_that_is_not_utf8() -> None:
    fed = feed_all_ways(make, frame(0x8, close_payload(1000, b"\xc3")))
    assert fed.events == [Violation(code=1007, reason="invalid UTF-8 in a close reason")]
    assert fed.closed


def test_close_frame_encoding() -> None:
    assert close_frame(1005) == b"\x88\x00"  # "no status" is an empty Close
    assert close_frame(1006, "gone") == b"\x88\x06\x03\xe8gone"  # never sent: 1000
    long = close_frame(4000, "é" * 100)  # 200 bytes of reason, cut between characters
    assert len(long) == 2 + 124 and long[1] == 124
    assert long[4:].decode() == "é" * 61
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(long)
    [event] = client.events()
    assert isinstance(event, CloseConnection) and event.code == 4000


# -- messages --------------------------------------------------------------------------------


def test_bad_utf8_fails_at_its_fragment_before_the_message_ends() -> None:
    data = frame(0x1, "ok é".encode(), fin=False) + frame(0x0, b"\xff", fin=False)
    fed = feed_all_ways(make, data)
    assert fed.events == [Violation(code=1007, reason="invalid UTF-8 in a text message")]
    assert fed.closed


def test_a_message_ending_inside_a_character() -> None:
    data = frame(0x1, b"a", fin=False) + frame(0x0, "é".encode()[:1])
    fed = feed_all_ways(make, data)
    assert fed.events == [Violation(code=1007, reason="invalid UTF-8 in a text message")]


def test_control_frames_between_fragments_and_empty_fragments() -> None:
    data = (frame(0x2, b"", fin=False) + frame(0xA, b"pong") + frame(0x0, b"ab", fin=False)
            + frame(0x9, b"ping") + frame(0x0, b"") + frame(0x1, b""))
    fed = feed_all_ways(make, data)
    assert fed.events == [MessageIn(data=b"ab"), MessageIn(data="")]
    assert fed.output == b"\x8a\x04ping"


def test_close_inside_a_fragmented_message() -> None:
    fed = feed_all_ways(make, frame(0x1, b"half", fin=False) + frame(0x8, close_payload(1001)))
    assert fed.events == [PeerClosed(code=1001, reason="")]
    assert fed.output == close_frame(1001) and fed.closed


def test_a_frame_over_the_limit_fails_on_its_header_and_is_never_buffered() -> None:
    framing = make(max_message_bytes=100)
    header = bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 40) + KEY
    framing.receive_data(header, now=0.0)  # no payload yet: the header is enough
    assert framing.events() == [Violation(code=4009, reason="message too large")]
    assert framing.data_to_send() == [close_frame(4009, "message too large")]
    for _ in range(10):
        framing.receive_data(bytes(64 * 1024), now=0.0)  # read and dropped
    assert framing._buffer is None and framing._skip == (1 << 40) - 10 * 64 * 1024
    assert framing.events() == [] and not framing.closed


def test_the_limit_counts_every_fragment() -> None:
    fits = frame(0x1, b"a" * 60, fin=False) + frame(0x0, b"b" * 40)
    assert feed_all_ways(lambda: make(100), fits).events == [
        MessageIn(data="a" * 60 + "b" * 40)]
    over = frame(0x1, b"a" * 60, fin=False) + frame(0x0, b"b" * 41)
    fed = feed_all_ways(lambda: make(100), over + frame(0x8, close_payload(4009)))
    assert fed.events == [Violation(code=4009, reason="message too large"),
                          PeerClosed(code=4009, reason="")]


def test_after_our_close_pings_get_no_pong_and_data_is_dropped() -> None:
    framing = make()
    framing.close(1000)
    framing.data_to_send()
    fed = feed(framing, [frame(0x9, b"p") + frame(0x1, b"\xff") + frame(0x0, b"x")
                         + frame(0x8, close_payload(1000))])
    assert fed.events == [PeerClosed(code=1000, reason="")]
    assert fed.output == b"" and fed.closed


def test_an_idle_connection_holds_no_buffers() -> None:
    framing = make()
    framing.receive_data(frame(0x1, b"hello", fin=False), now=0.0)
    framing.receive_data(frame(0x0, b" world")[:5], now=0.0)  # a frame cut in two
    assert any(isinstance(r, bytearray) for r in gc.get_referents(framing))
    framing.receive_data(frame(0x0, b" world")[5:], now=0.0)
    assert framing.events() == [MessageIn(data="hello world")]
    assert framing.data_to_send() == []
    held = gc.get_referents(framing)
    assert not any(isinstance(r, list | bytearray | bytes | str) for r in held), held
    assert not hasattr(framing, "__dict__")


# -- against wsproto's frame layer -----------------------------------------------------------


def reference(data: bytes) -> Fed:
    """What the framing did when wsproto's frame layer read the frames (no size limit)."""
    ws = Connection(ConnectionType.SERVER)
    ws.receive_data(data)
    events: list[FramingEvent] = []
    out: list[bytes] = []
    parts: list[str | bytes] = []
    for event in ws.events():
        match event:
            case Message(data=piece, message_finished=finished):
                parts.append(piece)
                if finished:
                    joined = "".join(parts) if isinstance(piece, str) else b"".join(parts)  # type: ignore[arg-type]
                    events.append(MessageIn(data=joined))
                    parts.clear()
            case Ping():
                out.append(ws.send(event.response()))
            case Pong():
                pass
            case CloseConnection(code=code, reason=reason):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    out.append(ws.send(event.response()))
                    events.append(PeerClosed(code=int(code), reason=reason or ""))
                else:
                    out.append(ws.send(CloseConnection(code=code, reason=reason)))
                    events.append(Violation(code=int(code), reason=reason or ""))
                return Fed(events=events, output=b"".join(out), closed=True)
    return Fed(events=events, output=b"".join(out), closed=False)


def utf8_neutral(fed: Fed) -> Fed:
    """Both fail with 1007 on bad UTF-8; only wsproto's reason names the byte."""
    events = [Violation(code=1007, reason="utf-8") if isinstance(e, Violation) and e.code == 1007
              else e for e in fed.events]
    return Fed(events=events, output=b"" if events != fed.events else fed.output,
               closed=fed.closed)


payloads = st.one_of(
    st.text(max_size=40).map(str.encode),
    st.binary(max_size=40),
    st.binary(min_size=126, max_size=300),
    st.sampled_from([b"\xff", "é".encode()[:1], "é".encode()[1:], b"\xed\xa0\x80"]),
)
frames = st.builds(
    frame,
    opcode=st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xF]),
    payload=payloads,
    fin=st.sampled_from([True, True, False]),
    rsv=st.sampled_from([0, 0, 0, 0, 0x40]),
    mask=st.sampled_from([True, True, True, True, False]),
    width=st.sampled_from([None, None, None, 16, 64]),
)
close_frames = st.builds(
    lambda code, reason: frame(0x8, close_payload(code, reason)),
    st.integers(990, 1020) | st.sampled_from([2999, 3000, 4999, 5000, 65535]),
    st.text(max_size=20).map(str.encode) | st.sampled_from([b"\xff", b"\xc3"]),
)
valid_frames = st.one_of(
    st.builds(lambda text: frame(0x1, text.encode()), st.text(max_size=200)),
    st.builds(lambda data: frame(0x2, data), st.binary(max_size=200)),
    st.builds(lambda data: frame(0x9, data), st.binary(max_size=125)),
    st.builds(lambda data: frame(0xA, data), st.binary(max_size=125)),
    st.builds(lambda a, b: frame(0x1, a.encode(), fin=False) + frame(0x9, b"")
              + frame(0x0, b.encode()), st.text(max_size=30), st.text(max_size=30)),
)


@settings(max_examples=300, deadline=None)
@given(stream=st.lists(valid_frames, max_size=8).map(b"".join), data=st.data())
def test_valid_streams_read_as_wsproto_reads_them(stream: bytes, data: st.DataObject) -> None:
    assert feed(make(), data.draw(chunkings(stream))) == reference(stream)


@settings(max_examples=500, deadline=None)
@given(stream=st.lists(st.one_of(frames, valid_frames, close_frames), min_size=1,
                      max_size=6).map(b"".join),
       data=st.data())
def test_any_stream_fails_as_wsproto_fails(stream: bytes, data: st.DataObject) -> None:
    ours = feed(make(), data.draw(chunkings(stream)))
    assert utf8_neutral(ours) == utf8_neutral(reference(stream))
