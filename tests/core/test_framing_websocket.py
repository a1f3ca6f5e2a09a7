"""WebSocketFraming: frames fed whole, byte by byte and in hypothesis splits."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import Event, TextMessage

from realtime_proto.errors import LocalProtocolError
from realtime_proto.framing import (
    Framing,
    FramingEvent,
    FramingKind,
    MessageIn,
    PeerClosed,
    RequestReceived,
    Violation,
)
from realtime_proto.framing.http import HttpFraming
from realtime_proto.framing.websocket import WebSocketFraming, WebSocketState, frame_message
from realtime_proto.testing.peers import PongReceived, WebSocketPeer

from .strategies import chunkings, feed, feed_all_ways

MAX_MESSAGE = 100


def handshake(peer: WebSocketPeer | None = None) -> bytes:
    return (peer or WebSocketPeer()).handshake_bytes("/ws")


def make() -> WebSocketFraming:
    framing = WebSocketFraming(max_message_bytes=MAX_MESSAGE, close_timeout=5.0)
    assert framing.accept(handshake(), now=0.0)
    framing.data_to_send()  # the 101
    return framing


def masked(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A hand-made client frame, for what a real client would never send."""
    key = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    first = (0x80 if fin else 0) | rsv | opcode
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((first, 0x80 | len(payload))) + key + body


def unmasked(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    payload = struct.pack("!H", code) + reason.encode()
    return bytes((0x88, len(payload))) + payload


def server_frames(data: bytes) -> list[Event]:
    """Read the server's bytes with a real wsproto client frame layer."""
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data)
    return list(client.events())


peer = WebSocketPeer()


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    events: list[FramingEvent]
    output: bytes = b""
    closed: bool = False


CASES = [
    Case("text", peer.send_text("hello"), [MessageIn(data="hello")]),
    Case("binary", peer.send_bytes(b"\x00\xff"), [MessageIn(data=b"\x00\xff")]),
    Case(
        "two messages",
        peer.send_text("a") + peer.send_text("é"),
        [MessageIn(data="a"), MessageIn(data="é")],
    ),
    Case(
        "fragmented text is one message",
        peer.send_fragments(["one ", "two ", "three"]),
        [MessageIn(data="one two three")],
    ),
    Case(
        "a code point split across fragments",
        masked(0x1, "é".encode()[:1], fin=False) + masked(0x0, "é".encode()[1:]),
        [MessageIn(data="é")],
    ),
    Case("ping is answered", peer.ping(b"are you there"), [], b"\x8a\x0dare you there"),
    Case(
        "ping inside a fragmented message",
        masked(0x1, b"ab", fin=False) + peer.ping(b"p") + masked(0x0, b"cd"),
        [MessageIn(data="abcd")],
        b"\x8a\x01p",
    ),
    Case("unsolicited pong is ignored", masked(0xA, b"x"), []),
    Case(
        "close is echoed",
        peer.send_text("last") + WebSocketPeer().close(1001, "going away"),
        [MessageIn(data="last"), PeerClosed(code=1001, reason="going away")],
        close_frame(1001, "going away"),
        closed=True,
    ),
    Case(
        "close without a code",
        masked(0x8, b""),
        [PeerClosed(code=1005, reason="")],
        b"\x88\x00",
        closed=True,
    ),
    Case(
        "frames after the close are ignored",
        WebSocketPeer().close(1000) + masked(0x1, b"late"),
        [PeerClosed(code=1000, reason="")],
        close_frame(1000),
        closed=True,
    ),
    Case(
        "message over max_message_bytes",
        peer.send_text("x" * (MAX_MESSAGE + 1)),
        [Violation(code=4009, reason="message too large")],
        close_frame(4009, "message too large"),
    ),
    Case(
        "fragments over max_message_bytes, then the peer's close",
        masked(0x2, b"x" * 60, fin=False)
        + masked(0x0, b"x" * 60, fin=False)
        + masked(0x0, b"x" * 60)
        + masked(0x8, struct.pack("!H", 4009)),
        [Violation(code=4009, reason="message too large"), PeerClosed(code=4009, reason="")],
        close_frame(4009, "message too large"),
        closed=True,
    ),
    Case(
        "invalid UTF-8 in a text frame",
        masked(0x1, b"ok \xff\xfe"),
        [Violation(code=1007, reason="invalid UTF-8 in a text message")],
        close_frame(1007, "invalid UTF-8 in a text message"),
        closed=True,
    ),
    Case(
        "unmasked client frame",
        unmasked(0x1, b"hi"),
        [Violation(code=1002, reason="server received unexpected unmasked frame")],
        close_frame(1002, "server received unexpected unmasked frame"),
        closed=True,
    ),
    Case(
        "continuation with nothing to continue",
        masked(0x0, b"x"),
        [Violation(code=1002, reason="unexpected CONTINUATION")],
        close_frame(1002, "unexpected CONTINUATION"),
        closed=True,
    ),
    Case(
        "new message inside a fragmented one",
        masked(0x1, b"a", fin=False) + masked(0x1, b"b"),
        [Violation(code=1002, reason="expected CONTINUATION, got <Opcode.TEXT: 1>")],
        close_frame(1002, "expected CONTINUATION, got <Opcode.TEXT: 1>"),
        closed=True,
    ),
    Case(
        "reserved opcode",
        masked(0x3, b""),
        [Violation(code=1002, reason="Invalid opcode 0x3")],
        close_frame(1002, "Invalid opcode 0x3"),
        closed=True,
    ),
    Case(
        "reserved bit without an extension",
        masked(0x1, b"x", rsv=0x40),
        [Violation(code=1002, reason="Reserved bit set unexpectedly")],
        close_frame(1002, "Reserved bit set unexpectedly"),
        closed=True,
    ),
    Case(
        "fragmented ping",
        masked(0x9, b"x", fin=False),
        [Violation(code=1002, reason="Invalid attempt to fragment control frame")],
        close_frame(1002, "Invalid attempt to fragment control frame"),
        closed=True,
    ),
    Case(
        "close code out of range",
        masked(0x8, struct.pack("!H", 999)),
        [Violation(code=1002, reason="CLOSE with invalid code")],
        close_frame(1002, "CLOSE with invalid code"),
        closed=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_table_whole_and_bytewise(case: Case) -> None:
    fed = feed_all_ways(make, case.data)
    assert fed.events == case.events
    assert fed.output == case.output
    assert fed.closed is case.closed


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_table_in_hypothesis_splits(case: Case, data: st.DataObject) -> None:
    chunks = data.draw(chunkings(case.data))
    assert feed(make(), chunks) == feed(make(), [case.data])


def upgrade_through_http(chunks: list[bytes]) -> tuple[list[FramingEvent], bytes]:
    """Drive the hand-off as the Node does: HTTP until the request, then WebSocket."""
    http = HttpFraming(now=0.0)
    ws = WebSocketFraming()
    events: list[FramingEvent] = []
    for i, chunk in enumerate(chunks):
        http.receive_data(chunk, now=0.0)
        if any(isinstance(event, RequestReceived) for event in http.events()):
            assert ws.accept(http.take_over(), now=0.0)
            for rest in chunks[i + 1 :]:
                ws.receive_data(rest, now=0.0)
            events += ws.events()
            return events, b"".join(ws.data_to_send())
    raise AssertionError("no request")


HAND_OFF_PEER = WebSocketPeer()
HAND_OFF = (
    HAND_OFF_PEER.handshake_bytes("/ws?token=t")
    + HAND_OFF_PEER.send_text("right behind the head")
    + HAND_OFF_PEER.ping(b"p")
    + HAND_OFF_PEER.send_fragments(["a", "b"])
)


@settings(max_examples=30, deadline=None)
@given(chunks=chunkings(HAND_OFF))
def test_handshake_hand_off_with_frames_behind_the_head(chunks: list[bytes]) -> None:
    events, output = upgrade_through_http(chunks)
    assert events == [MessageIn(data="right behind the head"), MessageIn(data="ab")]
    assert output.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-extensions" not in output.lower()
    assert output.endswith(b"\x8a\x01p")  # the pong


def test_accept_with_a_real_client() -> None:
    client = WebSocketPeer()
    framing = WebSocketFraming()
    assert framing.accept(client.handshake_bytes("/ws"), now=0.0)
    assert framing.is_open and framing.state is WebSocketState.OPEN
    assert client.receive(b"".join(framing.data_to_send())) == []
    assert client.accepted
    framing.send_encoded(frame_message(b'{"type":"pong"}'))
    assert client.receive(b"".join(framing.data_to_send())) == [MessageIn(data='{"type":"pong"}')]
    framing.receive_data(client.ping(b"x"), now=0.0)
    assert client.receive(b"".join(framing.data_to_send())) == [PongReceived(payload=b"x")]


def test_permessage_deflate_is_not_offered_back() -> None:
    framing = WebSocketFraming()
    head = WebSocketPeer().handshake_bytes(
        "/ws", extra_headers=[("sec-websocket-extensions", "permessage-deflate")]
    )
    assert framing.accept(head, now=0.0)
    assert b"extensions" not in b"".join(framing.data_to_send()).lower()


BASE = b"GET /ws HTTP/1.1\r\nhost: x\r\n"
UPGRADE = (b"upgrade: websocket\r\nconnection: Upgrade\r\n"
           b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
V13 = b"sec-websocket-version: 13\r\n"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (BASE + V13 + b"\r\n", 400),
        (BASE + b"\r\n", 400),  # not even a version: still not an upgrade
        (BASE + UPGRADE.replace(b"Upgrade\r", b"keep-alive\r") + V13 + b"\r\n", 400),
        (BASE + UPGRADE + b"\r\n", 426),  # no version (RFC 6455 §4.2.2)
        (BASE + UPGRADE + b"sec-websocket-version: 8\r\n\r\n", 426),
        (b"POST /ws HTTP/1.1\r\nhost: x\r\n" + UPGRADE + V13 + b"\r\n", 405),
        (b"GET /ws HTTP/1.0\r\nhost: x\r\n" + UPGRADE + V13 + b"\r\n", 400),
        (BASE + UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"dGhlIHNhbXBsZQ==") + V13
         + b"\r\n", 400),  # a key of 10 bytes
        (BASE + UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"not base64 at all!!!!!==") + V13
         + b"\r\n", 400),
        (BASE + UPGRADE + UPGRADE[-45:] + V13 + b"\r\n", 400),  # two keys
        (b"GARBAGE\r\n\r\n", 400),
        (BASE + UPGRADE, 400),  # incomplete head
    ],
    ids=["plain GET", "bare GET", "no connection upgrade", "no version", "old version", "POST",
         "HTTP/1.0", "short key", "key not base64", "two keys", "garbage", "incomplete"],
)
def test_rejected_handshakes(head: bytes, status: int) -> None:
    framing = WebSocketFraming()
    assert framing.accept(head, now=0.0) is False
    [violation] = framing.events()
    assert isinstance(violation, Violation) and violation.code == status
    out = b"".join(framing.data_to_send())
    assert out.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in out.lower()
    if status == 426:
        assert b"sec-websocket-version: 13" in out.lower()
    if status == 405:
        assert b"allow: GET" in out
    assert json.loads(out.partition(b"\r\n\r\n")[2])["error"]["code"] == 4000
    assert framing.closed
    framing.receive_data(b"ignored", now=0.0)
    assert framing.events() == []


def test_close_waits_for_the_peer_then_times_out() -> None:
    framing = make()
    framing.receive_data(b"", now=10.0)
    framing.close(1000, "bye")
    assert framing.data_to_send() == [close_frame(1000, "bye")]
    assert framing.state is WebSocketState.CLOSING and not framing.closed
    assert framing.next_deadline() == 15.0
    framing.send_encoded(frame_message(b"dropped"))
    assert framing.data_to_send() == []
    framing.close(1000)  # a second close is a no-op
    framing.tick(now=14.9)
    assert not framing.closed
    framing.tick(now=15.0)
    assert framing.closed and framing.events() == [] and framing.next_deadline() is None


def test_close_answered_by_the_peer() -> None:
    framing = make()
    framing.close(4020, "idle")
    framing.data_to_send()
    framing.receive_data(
        WebSocketPeer().send_text("in flight") + masked(0x8, struct.pack("!H", 4020)), now=1.0
    )
    assert framing.events() == [PeerClosed(code=4020, reason="")]
    assert framing.closed and framing.data_to_send() == []


def test_eof() -> None:
    framing = make()
    framing.receive_eof(now=1.0)
    assert framing.events() == [PeerClosed(code=1006, reason="")]
    assert framing.closed
    framing.receive_eof(now=1.0)
    assert framing.events() == []
    with pytest.raises(LocalProtocolError):
        framing.receive_data(b"x", now=1.0)


def test_eof_while_closing() -> None:
    framing = make()
    framing.close(1001)
    framing.receive_eof(now=1.0)
    assert framing.events() == [PeerClosed(code=1006, reason="")]
    assert framing.closed


def test_misuse_before_accept() -> None:
    framing = WebSocketFraming()
    with pytest.raises(LocalProtocolError):
        framing.receive_data(b"x", now=0.0)
    with pytest.raises(LocalProtocolError):
        framing.send_encoded(b"x")
    assert framing.accept(handshake(), now=0.0)
    with pytest.raises(LocalProtocolError):
        framing.accept(handshake(), now=0.0)
    with pytest.raises(ValueError):
        WebSocketFraming(max_message_bytes=0)


def test_encode_once_appends_the_same_object() -> None:
    frame = frame_message(b'{"type":"event"}')
    framings = [make(), make()]
    for framing in framings:
        framing.send_encoded(frame)
    assert all(framing.data_to_send()[0] is frame for framing in framings)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 100000])
def test_frame_message_equals_wsproto_and_a_client_reads_it(size: int) -> None:
    payload = bytes(ord("a") + i % 26 for i in range(size))
    frame = frame_message(payload)
    assert frame == Connection(ConnectionType.SERVER).send(TextMessage(data=payload.decode()))
    received = server_frames(frame)
    assert all(isinstance(event, TextMessage) for event in received)
    assert "".join(event.data for event in received if isinstance(event, TextMessage)) == (
        payload.decode()
    )
    last = received[-1]
    assert isinstance(last, TextMessage) and last.message_finished


def test_satisfies_the_framing_protocol() -> None:
    framing: Framing = make()  # checked by mypy
    assert framing.kind is FramingKind.WEBSOCKET


# -- a violation after good messages, and text checked as it streams in (issue 15) -------

VIOLATIONS = [
    (masked(0x1, b"two", rsv=0x20), 1002),  # Autobahn 3.2: a reserved bit
    (masked(0x7, b"two"), 1002),  # 4.1.3: a reserved opcode
    (masked(0x0, b"two"), 1002),  # 5.x: a continuation with nothing to continue
    (masked(0x1, b"tw\xffo"), 1007),  # 6.x: invalid UTF-8
    (masked(0x8, struct.pack("!H", 999)), 1002),  # 7.x: a close code a peer may not send
]


@pytest.mark.parametrize(("bad", "code"), VIOLATIONS,
                         ids=["rsv", "opcode", "continuation", "utf-8", "close code"])
def test_messages_before_a_violation_are_answered_before_the_close(bad: bytes,
                                                                   code: int) -> None:
    """Autobahn 3.2, 4.1.3, 5.15…: the echo of what came first, then the Close."""
    framing = make()
    framing.receive_data(masked(0x1, b"one") + masked(0x2, b"bin") + bad
                         + masked(0x1, b"never"), now=1.0)
    events = framing.events()
    assert events[:2] == [MessageIn(data="one"), MessageIn(data=b"bin")]
    [violation] = events[2:]
    assert isinstance(violation, Violation) and violation.code == code
    assert framing.closed
    echo = frame_message(b"one")
    framing.send_encoded(echo)  # the application's answer
    out = b"".join(framing.data_to_send())
    assert out.startswith(echo)
    assert out[len(echo)] == 0x88 and out[len(echo) + 2:len(echo) + 4] == struct.pack("!H", code)
    framing.send_encoded(frame_message(b"too late"))
    assert framing.data_to_send() == []


def frame_head(opcode: int, length: int, *, fin: bool = True) -> tuple[bytes, bytes]:
    """The header of a masked client frame of `length` < 126, and its key."""
    key = b"\x0a\x0b\x0c\x0d"
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | length)) + key, key


def mask_from(payload: bytes, key: bytes, offset: int) -> bytes:
    return bytes(b ^ key[(offset + i) % 4] for i, b in enumerate(payload))


def test_invalid_utf8_fails_before_the_frame_is_whole() -> None:
    """Autobahn 6.4.3/6.4.4: the Close comes at the first bad byte, not at the frame's end."""
    framing = make()
    head, key = frame_head(0x1, 40)
    good, bad = "κόσμε".encode(), b"\xed\xa0\x80"  # a UTF-16 surrogate is not UTF-8
    framing.receive_data(head + mask_from(good[:3], key, 0), now=1.0)  # mid-character
    framing.receive_data(mask_from(good[3:], key, 3), now=1.0)
    assert framing.events() == [] and not framing.closed
    framing.receive_data(mask_from(bad, key, len(good)), now=1.0)
    assert framing.events() == [Violation(code=1007, reason="invalid UTF-8 in a text message")]
    assert b"".join(framing.data_to_send())[2:4] == struct.pack("!H", 1007)


def test_invalid_utf8_across_fragments_fails_fast() -> None:
    """A character cut between fragments is fine; a bad byte in a partial continuation fails."""
    framing = make()
    framing.receive_data(masked(0x1, "aκ".encode()[:2], fin=False), now=1.0)  # ends in \xce
    head, key = frame_head(0x0, 30)
    framing.receive_data(head + mask_from(b"\xba", key, 0), now=1.0)  # completes κ
    assert framing.events() == [] and not framing.closed
    framing.receive_data(mask_from(b"\xce\x41", key, 1), now=1.0)  # \xce then no continuation
    assert framing.events() == [Violation(code=1007, reason="invalid UTF-8 in a text message")]


def test_text_fed_byte_by_byte_is_whole_and_right() -> None:
    text = "añ€😀 " * 5
    frames = (masked(0x1, text[:7].encode(), fin=False) + masked(0x0, text[7:].encode()))
    framing = make()
    for byte in frames:
        framing.receive_data(bytes((byte,)), now=1.0)
    assert framing.events() == [MessageIn(data=text)]


# -- keepalive: the protocol's Ping ------------------------------------------------------


def keepalive() -> WebSocketFraming:
    framing = WebSocketFraming(heartbeat=10.0, idle_timeout=25.0)
    assert framing.accept(handshake(), now=100.0)
    framing.data_to_send()
    return framing


def test_a_silent_peer_is_pinged_then_closed_with_4020() -> None:
    framing = keepalive()
    assert framing.next_deadline() == 110.0
    framing.tick(now=109.0)
    assert framing.data_to_send() == []
    framing.tick(now=110.0)
    assert framing.data_to_send() == [b"\x89\x00"]  # one Ping
    assert framing.next_deadline() == 125.0
    framing.tick(now=120.0)
    assert framing.data_to_send() == []  # not twice
    framing.tick(now=125.0)
    assert framing.events() == [Violation(code=4020, reason="idle timeout")]
    assert b"".join(framing.data_to_send())[2:4] == struct.pack("!H", 4020)
    assert framing.closed


def test_a_pong_or_any_frame_counts_as_activity() -> None:
    framing = keepalive()
    framing.tick(now=110.0)
    framing.data_to_send()
    framing.receive_data(masked(0xA, b""), now=111.0)  # the Pong
    assert framing.next_deadline() == 121.0
    framing.tick(now=130.0)  # silent again: pinged again, not closed
    assert framing.data_to_send() == [b"\x89\x00"] and not framing.closed
    framing.receive_data(masked(0x1, b"hi"), now=131.0)
    assert framing.events() == [MessageIn(data="hi")]
    assert framing.next_deadline() == 141.0


def test_no_heartbeat_no_ping_and_bad_settings() -> None:
    framing = make()
    assert framing.next_deadline() is None
    framing.tick(now=1000.0)
    assert framing.data_to_send() == [] and not framing.closed
    with pytest.raises(ValueError):
        WebSocketFraming(heartbeat=10.0, idle_timeout=5.0)


def test_answers_to_messages_before_the_peers_close_precede_its_echo() -> None:
    framing = make()
    framing.receive_data(masked(0x1, b"last") + masked(0x8, struct.pack("!H", 1000)), now=1.0)
    assert framing.events() == [MessageIn(data="last"), PeerClosed(code=1000, reason="")]
    framing.send_encoded(frame_message(b"last"))
    assert b"".join(framing.data_to_send()) == frame_message(b"last") + close_frame(1000)
