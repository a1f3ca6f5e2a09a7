"""Fuzz the client message decoder end to end: WebSocket frames of hostile text and bytes
into a sans-IO Node, through the Hub's decoding and everything a message reaches."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime_proto import HubConfig, Limits
from realtime_proto.errors import MessageError
from realtime_proto.events import TransportId
from realtime_proto.framing import MessageIn, PeerClosed
from realtime_proto.message import decode_json
from realtime_proto.testing.peers import WebSocketPeer

from ..core.nodekit import Harness, token
from .fuzzkit import (
    CLOSE_CODES,
    DOCUMENTED_CODES,
    NO_RATES,
    decoded,
    fuzz_settings,
    has_lone_surrogate,
    raw_inputs,
)

MAX_MESSAGE = 2048
ROOMS = ("news", "private-room", "presence-room")


class Client:
    """A WebSocket client of the Node: what it got back, and whether it was closed."""

    def __init__(self, h: Harness, user: str) -> None:
        self.h = h
        self.peer = WebSocketPeer()
        self.transport: TransportId = h.open()
        self.closed: int | None = None
        h.feed(self.transport, self.peer.handshake_bytes(f"/ws?token={token(user)}"))
        assert self.receive()[0]["event"] == "connection.established"
        for room in ROOMS:
            self.send(json.dumps({"type": "subscribe", "channel": room}))
        self.receive()

    def send(self, raw: str | bytes) -> None:
        """A text frame for text, a binary frame for bytes."""
        frame = self.peer.send_text(raw) if isinstance(raw, str) else self.peer.send_bytes(raw)
        self.h.feed(self.transport, frame)

    def receive(self) -> list[dict[str, Any]]:
        messages = []
        for event in self.peer.receive(self.h.take(self.transport)):
            if isinstance(event, MessageIn):
                messages.append(json.loads(event.data))
            elif isinstance(event, PeerClosed):
                self.closed = event.code
        return messages


def _node() -> Harness:
    h = Harness(hub=HubConfig(node_id="n1", rates=NO_RATES,
                              limits=Limits(max_message_bytes=MAX_MESSAGE)))
    h.node.hub.channel("private-*").authorize(lambda connection, channel: True)
    h.node.hub.channel("presence-*").authorize(lambda connection, channel: {"x": 1})
    return h


def _on_the_wire(raw: str | bytes) -> str | bytes:
    """Text with a lone surrogate cannot go in a text frame: it goes as bytes."""
    if isinstance(raw, bytes):
        return raw
    try:
        raw.encode()
    except UnicodeEncodeError:
        return raw.encode("utf-8", "surrogatepass")
    return raw


def _size(raw: str | bytes) -> int:
    return len(raw if isinstance(raw, bytes) else raw.encode())


def _check_answer(raw: str | bytes, replies: list[dict[str, Any]]) -> None:
    """The replies to one message that reached the Hub: errors carry documented codes,
    a message the decoding refuses gets exactly its error, and nothing is ignored that
    the protocol says is answered."""
    errors = [m["data"]["code"] for m in replies if m["type"] == "error"]
    assert set(errors) <= DOCUMENTED_CODES, replies
    codes, value = decoded(raw)
    if codes is None:
        return  # nested so deep that the decoder may give up
    if codes:
        assert len(replies) == 1 and errors[0] in codes, (raw, replies)
    elif value["type"] in ("subscribe", "unsubscribe", "ping"):
        assert replies, f"{raw!r} got no answer"


@fuzz_settings
@given(st.lists(raw_inputs, min_size=1, max_size=4))
def test_any_client_message_gets_a_documented_answer_and_harms_nobody(
        inputs: list[str | bytes]) -> None:
    h = _node()
    bystander = Client(h, "bob")
    client = Client(h, "mallory")
    for raw in map(_on_the_wire, inputs):
        client.send(raw)
        replies = client.receive()
        if _size(raw) > MAX_MESSAGE:
            assert client.closed == 4009, (raw, replies)
            break
        assert client.closed is None, raw
        _check_answer(raw, replies)
    if client.closed is None:  # still usable
        client.send('{"type":"ping"}')
        assert client.receive()[-1]["type"] == "pong"
    assert client.closed in (None, *CLOSE_CODES)
    # the bystander saw the other's valid client events, and nothing else went wrong
    h.node.hub.broadcast("news", "probe", {"n": 1}, now=h.clock.now)
    h.pump()
    got = bystander.receive()
    assert bystander.closed is None
    assert not [m for m in got if m["type"] == "error"]
    assert (got[-1]["event"], got[-1]["data"]) == ("probe", {"n": 1})


_ESCAPED_PIECES = [r"\ud83d", r"\ude00", r"\uD800", r"\uDFFF", r"\udbff", r"\udc00",
                   r"\\", r"\n", r"\u0041", r"\"", "x", "\U0001f600", "ud800"]


@fuzz_settings
@given(st.lists(st.sampled_from(_ESCAPED_PIECES), max_size=12))
def test_a_lone_surrogate_is_found_from_the_escapes_alone(pieces: list[str]) -> None:
    raw = '{"s":"' + "".join(pieces) + '"}'
    try:
        decode_json(raw)
    except MessageError as error:
        assert error.code == 4002
        refused = True
    else:
        refused = False
    assert refused == has_lone_surrogate(json.loads(raw)), raw


# -- what the fuzzing found, kept as plain regression tests ------------------------------

@pytest.mark.parametrize("raw", [
    r'{"type":"subscribe","channel":"\ud800"}',  # the error named the channel: TypeError
    r'{"type":"event","channel":"private-room","event":"\udc00"}',  # the event: TypeError
    r'{"type":"event","channel":"private-room","event":"e","data":"\ud800"}',  # ValueError
    r'{"type":"event","channel":"private-room","event":"e","data":{"\udbff":1}}',
    r'{"type":"ping","x":["\ud83d"]}',
    r'{"type":"ping","x":"\ud83d\\\ude00"}',  # two halves with a backslash between
])
def test_a_lone_surrogate_escape_is_refused_with_4002(raw: str) -> None:
    h = _node()
    bystander = Client(h, "bob")
    client = Client(h, "mallory")
    client.send(raw)
    [reply] = client.receive()
    assert (reply["type"], reply["data"]["code"]) == ("error", 4002)
    client.send(r'{"type":"event","channel":"private-room","event":"e","data":"\ud83d\ude00"}')
    assert client.receive() == []  # a pair is one character: fine
    assert bystander.receive()[-1]["data"] == "\U0001f600"
