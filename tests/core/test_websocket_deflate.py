"""permessage-deflate through WebSocketFraming and the Node: wsproto's client with its
PerMessageDeflate extension is the reference peer."""

from __future__ import annotations

import json
import struct
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from realtime_proto.framing import MessageIn, Violation
from realtime_proto.framing.deflate import compress_message, compressed_frame
from realtime_proto.framing.websocket import WebSocketFraming
from realtime_proto.testing.peers import WebSocketPeer

from .nodekit import Harness
from .strategies import chunkings, feed_all_ways

MESSAGE = json.dumps({"type": "publish", "channel": "chat",
                      "data": {"text": "hello there " * 80}})


class DeflateClient:
    """wsproto's client, offering permessage-deflate with `extension`."""

    def __init__(self, extension: PerMessageDeflate | None = None) -> None:
        self.extension = extension or PerMessageDeflate()
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.accepted: AcceptConnection | None = None

    def handshake(self, path: str = "/ws") -> bytes:
        return self.ws.send(Request(host="localhost", target=path,
                                    extensions=[self.extension]))

    def receive(self, data: bytes) -> list[Event]:
        self.ws.receive_data(data)
        events = []
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = event
            else:
                events.append(event)
        return events

    def texts(self, data: bytes) -> list[str]:
        return [e.data for e in self.receive(data) if isinstance(e, TextMessage)]

    def send(self, text: str, *, finished: bool = True) -> bytes:
        return self.ws.send(TextMessage(data=text, message_finished=finished))


def open_framing(client: DeflateClient, *, compression: bool = True,
                 max_message_bytes: int = 64 * 1024) -> tuple[WebSocketFraming, bytes]:
    framing = WebSocketFraming(max_message_bytes=max_message_bytes, compression=compression)
    assert framing.accept(client.handshake(), now=0.0)
    answer = b"".join(framing.data_to_send())
    client.receive(answer)
    assert client.accepted is not None
    return framing, answer


def extensions_of(answer: bytes) -> list[bytes]:
    head = answer.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    return [line.split(b":", 1)[1].strip() for line in head
            if line.lower().startswith(b"sec-websocket-extensions:")]


@pytest.mark.parametrize(("extension", "compression", "expected"), [
    (PerMessageDeflate(), True,
     [b"permessage-deflate; server_no_context_takeover; client_max_window_bits=15"]),
    (PerMessageDeflate(client_max_window_bits=10, server_max_window_bits=12), True,
     [b"permessage-deflate; server_no_context_takeover; server_max_window_bits=12; "
      b"client_max_window_bits=10"]),
    (PerMessageDeflate(client_no_context_takeover=True), True,
     [b"permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
      b"client_max_window_bits=15"]),
    (PerMessageDeflate(), False, []),  # not offered by this server
])
def test_the_handshake_agrees_to_what_the_server_can_keep(
        extension: PerMessageDeflate, compression: bool, expected: list[bytes]) -> None:
    client = DeflateClient(extension)
    framing, answer = open_framing(client, compression=compression)
    assert extensions_of(answer) == expected
    assert (framing.deflate is not None) == bool(expected)


@pytest.mark.parametrize("offer", [
    "permessage-deflate; server_max_window_bits=8",  # zlib cannot keep to 8
    "permessage-deflate; mystery=1",
    "x-webkit-deflate-frame",
])
def test_an_offer_the_server_cannot_keep_leaves_the_connection_uncompressed(offer: str) -> None:
    peer = WebSocketPeer()
    framing = WebSocketFraming(compression=True)
    assert framing.accept(peer.handshake_bytes(
        "/ws", extra_headers=[("Sec-WebSocket-Extensions", offer)]), now=0.0)
    answer = b"".join(framing.data_to_send())
    peer.receive(answer)
    assert peer.accepted and extensions_of(answer) == [] and framing.deflate is None


@pytest.mark.parametrize("client_no_context_takeover", [False, True])
def test_compressed_messages_are_inflated_whole_and_in_fragments(
        client_no_context_takeover: bool) -> None:
    client = DeflateClient(PerMessageDeflate(
        client_no_context_takeover=client_no_context_takeover))
    framing, _ = open_framing(client)
    data = client.send(MESSAGE) + client.send(MESSAGE) + client.send("é" * 100, finished=False)
    data += client.send("ü" * 3000, finished=False) + client.send("!")
    assert data[0] & 0x40  # RSV1: wsproto did compress
    framing.receive_data(data, now=1.0)
    assert framing.events() == [MessageIn(data=MESSAGE), MessageIn(data=MESSAGE),
                                MessageIn(data="é" * 100 + "ü" * 3000 + "!")]


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_any_chunking_of_compressed_frames_gives_the_same_messages(data: st.DataObject) -> None:
    client = DeflateClient()
    head = client.handshake()
    server = WebSocketFraming(compression=True)
    assert server.accept(head, now=0.0)
    client.receive(b"".join(server.data_to_send()))  # the 101, so that the client sends
    stream = (client.send(MESSAGE) + client.send("é" * 50, finished=False)
              + client.send("ü" * 900) + client.send("x" * 100))

    def make() -> WebSocketFraming:
        framing = WebSocketFraming(compression=True)
        assert framing.accept(head, now=0.0)
        framing.data_to_send()
        return framing

    fed = feed_all_ways(make, stream, data.draw(chunkings(stream)))
    assert fed.events == [MessageIn(data=MESSAGE), MessageIn(data="é" * 50 + "ü" * 900),
                          MessageIn(data="x" * 100)]


def masked(first: int, payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    length = len(payload)
    head = bytes((first, 0x80 | length)) if length < 126 else (
        bytes((first, 0x80 | 126)) + struct.pack("!H", length) if length < 65536
        else bytes((first, 0x80 | 127)) + struct.pack("!Q", length))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def failure(framing: WebSocketFraming, data: bytes) -> Violation:
    framing.receive_data(data, now=1.0)
    [event] = framing.events()
    assert isinstance(event, Violation)
    assert framing.closed
    return event


@pytest.mark.parametrize(("data", "code"), [
    (masked(0xC1, compress_message(b"\xff\xfe" * 50)), 1007),       # inflates to bad UTF-8
    (masked(0xC1, b"\xff\xff\xff\xff"), 1007),                       # not deflate
    (masked(0x41, compress_message(b"ab")) + masked(0xC0, compress_message(b"c")), 1002),
    (masked(0xC9, b""), 1002),                                       # RSV1 on a Ping
    (masked(0xA1, b"x"), 1002),                                      # RSV2 stays reserved
])
def test_a_bad_compressed_frame_fails_the_connection(data: bytes, code: int) -> None:
    framing, _ = open_framing(DeflateClient())
    assert failure(framing, data).code == code


def test_rsv1_without_the_extension_is_a_protocol_error() -> None:
    framing, _ = open_framing(DeflateClient(), compression=False)
    assert failure(framing, masked(0xC1, compress_message(b"hello"))).code == 1002


def test_a_bomb_is_closed_with_1009_without_being_inflated() -> None:
    # 100 KiB on the wire that would inflate to 100 MiB; the limit is 1 MiB
    bomb = masked(0xC1, compress_message(bytes(100 * 1024 * 1024), level=9))
    framing, _ = open_framing(DeflateClient(), max_message_bytes=1024 * 1024)
    tracemalloc.start()
    try:
        event = failure(framing, bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert event.code == 1009
    assert peak < 8 * 1024 * 1024  # about the limit and the frame, never 100 MiB
    close = b"".join(framing.data_to_send())
    assert close[:4] == b"\x88\x1f\x03\xf1"  # our Close says 1009


def test_a_1_kib_frame_past_the_limit_once_inflated_is_closed_with_1009() -> None:
    payload = compress_message(bytes(1024 * 1024), level=9)
    assert len(payload) < 1100
    framing, _ = open_framing(DeflateClient(), max_message_bytes=64 * 1024)
    assert failure(framing, masked(0xC1, payload)).code == 1009


# -- the Node: a broadcast compressed once ------------------------------------------------


def subscribe(h: Harness, client: DeflateClient | WebSocketPeer) -> Any:
    transport = h.open()
    h.feed(transport, client.handshake() if isinstance(client, DeflateClient)
           else client.handshake_bytes("/ws"))
    client.receive(h.take(transport))  # the 101 and connection.established
    subscribe = json.dumps({"type": "subscribe", "channel": "news"})
    h.feed(transport, client.send(subscribe) if isinstance(client, DeflateClient)
           else client.send_text(subscribe))
    client.receive(h.take(transport))
    return transport


def broadcast_frames(h: Harness, transports: list[Any], data: Any) -> list[list[bytes]]:
    """The frames each socket gets for one broadcast, as the Node hands them out."""
    h.node.hub.broadcast("news", "tick", data, now=h.clock.now)
    h.node.actions()
    return [h.node.data_to_send(t) for t in transports]


def test_a_broadcast_is_compressed_once_for_every_subscriber_that_agreed() -> None:
    h = Harness(compression=True)
    clients = [DeflateClient() for _ in range(5)] + [
        DeflateClient(PerMessageDeflate(server_max_window_bits=10))]
    plain = WebSocketPeer()
    transports = [subscribe(h, c) for c in [*clients, plain]]
    before = h.node.statistics().encodings
    text = "a chat message that is long enough to be worth compressing " * 8
    frames = broadcast_frames(h, transports, text)
    assert all(len(f) == 1 for f in frames)
    shared = frames[0][0]
    assert shared[0] & 0x40  # RSV1
    assert all(f[0] is shared for f in frames[1:5])  # one object for the five
    assert frames[5][0] is not shared and frames[5][0][0] & 0x40  # its own window
    assert not frames[6][0][0] & 0x40  # the plain client: uncompressed
    after = h.node.statistics().encodings
    assert after["websocket-deflate"] - before.get("websocket-deflate", 0) == 2
    assert after["websocket"] - before.get("websocket", 0) == 1
    for client, frame in zip(clients, frames, strict=False):
        [message] = client.texts(frame[0])
        assert json.loads(message)["data"] == text
    [message] = plain.receive(frames[6][0])
    assert isinstance(message, MessageIn) and json.loads(message.data)["data"] == text


def test_a_message_goes_uncompressed_when_short_or_when_deflate_does_not_shrink_it() -> None:
    assert compressed_frame(b'{"type":"pong"}') is None  # under MIN_COMPRESSED_SIZE
    incompressible = bytes(range(256))  # every byte once: deflate adds to it
    assert len(compress_message(incompressible)) >= len(incompressible)
    assert compressed_frame(incompressible) is None
    frame = compressed_frame(MESSAGE.encode())
    assert frame is not None and frame[0] == 0xC1 and len(frame) < len(MESSAGE) / 4


def test_without_the_option_the_node_offers_no_compression() -> None:
    h = Harness()
    client = DeflateClient()
    transport = h.open()
    h.feed(transport, client.handshake())
    answer = h.take(transport)
    client.receive(answer)
    assert client.accepted is not None and extensions_of(answer) == []


def test_a_compressed_client_message_reaches_the_hub() -> None:
    h = Harness(compression=True)
    client = DeflateClient()
    [transport] = [subscribe(h, client)]
    ping = json.dumps({"type": "ping", "padding": "unknown fields are ignored " * 20})
    h.feed(transport, client.send(ping))
    assert [json.loads(m)["type"] for m in client.texts(h.take(transport))] == ["pong"]


def test_a_bomb_to_the_node_closes_that_connection_alone() -> None:
    h = Harness(compression=True)
    bomber, bystander = DeflateClient(), DeflateClient()
    transports = [subscribe(h, c) for c in (bomber, bystander)]
    h.feed(transports[0], masked(0xC1, compress_message(bytes(1024 * 1024), level=9)))
    closes = [e for e in bomber.receive(h.take(transports[0]))
              if isinstance(e, CloseConnection)]
    assert [c.code for c in closes] == [1009]
    assert transports[0] in h.closed and transports[1] not in h.closed
    [frame] = broadcast_frames(h, transports[1:], "still here " * 10)
    assert [json.loads(m)["data"] for m in bystander.texts(frame[0])] == ["still here " * 10]
