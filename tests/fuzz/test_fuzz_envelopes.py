"""Fuzz broker envelopes and bundles: `envelope.decode` alone, then a Node's broker-received
path, whose subscribers must go on getting the valid traffic that follows."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime_proto import ErrorCode, HubConfig
from realtime_proto.actions import HistoryRead
from realtime_proto.envelope import EnvelopeKind, Outgoing, Received, decode, encode
from realtime_proto.errors import MessageError
from realtime_proto.events import EnvelopeReceived
from realtime_proto.framing import MessageIn, PeerClosed
from realtime_proto.history import HistoryRule, MemoryStore
from realtime_proto.testing.peers import SseEvent, SsePeer, WebSocketPeer

from ..core.nodekit import Harness
from .fuzzkit import NO_RATES, any_text, fuzz_settings, json_values

TOPICS = ("c:news", "c:room1", "u:bob", "_cluster", "c:presence-room")

# -- valid envelopes, then broken ones ---------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
payloads = st.one_of(
    st.text(max_size=40).map(lambda text: ("{" + text + "}").encode()),
    st.builds(lambda event, data: json.dumps(
        {"type": "event", "channel": "news", "event": event, "data": data}).encode(),
        st.sampled_from(["typing", "read", "x"]), json_values),
    st.builds(lambda kind, body: json.dumps({"t": kind, **body}).encode(),
              st.sampled_from(["join", "leave", "state", "sync?", "hb", "?"]),
              st.dictionaries(st.sampled_from(["c", "n", "u", "i", "e", "to"]), json_values)),
)


@st.composite
def runs(draw: st.DrawFn) -> list[Outgoing]:
    """One envelope or a bundle of several of one topic and kind, in sequence."""
    topic = draw(st.sampled_from(TOPICS))
    kind = draw(st.sampled_from(EnvelopeKind))
    first = draw(st.integers(1, 2**40))
    sent_ms = draw(st.none() | st.integers(0, 2**62))
    return [Outgoing(topic, first + i, kind, draw(payloads), draw(st.none() | ids), sent_ms,
                     draw(st.none() | st.tuples(ids, st.integers(0, 2**40))))
            for i in range(draw(st.integers(1, 4)))]


def _header_and_body(data: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = data.partition(b"\n")
    return json.loads(head), body


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> bytes:
    """A valid envelope or bundle, broken one way: cut short, lengths that lie, a header
    field of the wrong type or missing, bytes flipped, inserted or dropped."""
    data = encode(json.dumps(draw(ids)).encode(), 0, draw(runs()))
    header, body = _header_and_body(data)
    how = draw(st.sampled_from(["cut", "lengths", "field", "drop", "flip", "insert", "none"]))
    at = draw(st.integers(0, len(data)))
    match how:
        case "cut":
            return data[:at]
        case "lengths" if isinstance(header.get("n"), list):
            index = draw(st.integers(0, len(header["n"]) - 1))
            header["n"][index] += draw(st.integers(-5, 5))
        case "field" | "lengths":
            header[draw(st.sampled_from("obskntxpe"))] = draw(json_values)
        case "drop":
            header.pop(draw(st.sampled_from(sorted(header))))
        case "flip" if data:
            at = min(at, len(data) - 1)
            return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
        case "insert":
            return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        case _:
            return data
    return json.dumps(header).encode() + b"\n" + body


envelopes = st.one_of(
    st.binary(max_size=80),
    mutated_envelopes(),
    mutated_envelopes(),
    st.builds(lambda header, body: json.dumps(header).encode() + b"\n" + body,
              st.dictionaries(st.sampled_from("obskntxpe"), json_values), st.binary(max_size=20)),
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"\n{}"),
    any_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
)


def _well_formed(received: Received, data: bytes) -> None:
    """What a decoded envelope promises its reader."""
    assert isinstance(received.origin, str) and received.origin.isprintable()
    assert received.kind in EnvelopeKind
    assert type(received.sequence) is int
    assert received.payloads
    for payload in received.payloads:  # what a client may be sent as it is
        assert payload.startswith(b"{") and payload.endswith(b"}")
        payload.decode()
    body = data.partition(b"\n")[2]
    assert b"".join(received.payloads) == body
    count = len(received.payloads)
    if received.sent_ms is not None:
        assert 0 <= received.sent_ms < 1 << 63
    for listed in (received.excludes, received.positions):
        assert listed is None or len(listed) == count
    for exclude in received.excludes or ():
        assert exclude is None or exclude.isprintable()
    for position in received.positions or ():
        assert position is None or (position[0].isprintable() and type(position[1]) is int)


def _json_or_text(data: str | bytes) -> Any:
    assert isinstance(data, str)
    try:
        return json.loads(data)
    except ValueError:
        return data


@fuzz_settings
@given(envelopes)
def test_decode_returns_a_well_formed_envelope_or_refuses_with_4000(data: bytes) -> None:
    try:
        received = decode(data)
    except MessageError as error:
        assert error.code == ErrorCode.MALFORMED_MESSAGE
        return
    _well_formed(received, data)


@fuzz_settings
@given(runs())
def test_a_valid_envelope_or_bundle_round_trips(run: list[Outgoing]) -> None:
    received = decode(encode(b'"n2"', 0, run))
    assert received.payloads == [e.payload for e in run]
    assert (received.origin, received.kind, received.sequence) == ("n2", run[0].kind,
                                                                   run[0].sequence)
    assert received.sent_ms == run[0].sent_ms
    assert (received.excludes or [None] * len(run)) == [e.exclude for e in run]
    assert (received.positions or [None] * len(run)) == [e.position for e in run]


# -- through a Node ----------------------------------------------------------------------


class Cluster:
    """A Node with a WebSocket subscriber of `news` and an SSE subscriber of `room1` (whose
    history is shared), fed broker messages; the valid ones come from node `n-valid`."""

    def __init__(self) -> None:
        self.h = Harness(hub=HubConfig(node_id="n1", rates=NO_RATES, shared_history=True,
                                       history=(HistoryRule("room*", 10, 60),)))
        self.ws = WebSocketPeer()
        self.ws_transport = self.h.open()
        self.h.feed(self.ws_transport, self.ws.handshake_bytes("/ws"))
        self.h.feed(self.ws_transport, self.ws.send_text(
            '{"type":"subscribe","channel":"news"}'))
        self.sse = SsePeer(target="/sse?channels=room1")
        self.sse_transport = self.h.open()
        self.h.feed(self.sse_transport, self.sse.request_bytes)
        store = MemoryStore(lambda: "E1")
        for action in self.h.broker:
            if isinstance(action, HistoryRead):
                self.h.node.handle(store.read(action, self.h.clock.now), now=self.h.clock.now)
        self.h.pump()
        assert len(self.websocket_messages()) == 2 and len(self.sse_events()) == 2
        self.sequence = 0

    def feed(self, topic: str, data: bytes) -> None:
        self.h.node.handle(EnvelopeReceived(topic=topic, data=data), now=self.h.clock.now)
        self.h.pump()

    def malformed(self) -> int:
        return self.h.node.statistics().hub.errors.get(ErrorCode.MALFORMED_MESSAGE, 0)

    def websocket_messages(self) -> list[Any]:
        """What the WebSocket subscriber got: text frames (wsproto checks their UTF-8),
        decoded when they are JSON (a node forwards other nodes' payloads as they are)."""
        events = self.ws.receive(self.h.take(self.ws_transport))
        assert not [e for e in events if isinstance(e, PeerClosed)]
        return [_json_or_text(e.data) for e in events if isinstance(e, MessageIn)]

    def sse_events(self) -> list[SseEvent]:
        data = self.h.take(self.sse_transport)
        assert self.sse_transport not in self.h.closed
        return [e for e in self.sse.receive(data) if isinstance(e, SseEvent)] if data else []

    def valid_traffic_passes(self) -> None:
        """One message from another node on each channel reaches its subscriber, last."""
        self.sequence += 1
        news = json.dumps({"type": "event", "channel": "news", "event": "probe",
                           "data": self.sequence}).encode()
        self.feed("c:news", encode(b'"n-valid"', 0, [Outgoing(
            "c:news", self.sequence, EnvelopeKind.CHANNEL, news)]))
        assert self.websocket_messages()[-1]["data"] == self.sequence
        room = news.replace(b'"news"', b'"room1"')
        epoch = f"valid{self.sequence}"  # a new epoch: delivered whatever came before
        self.feed("c:room1", encode(b'"n-valid"', 0, [Outgoing(
            "c:room1", self.sequence, EnvelopeKind.CHANNEL, room, position=(epoch, 1))]))
        last = self.sse_events()[-1]
        assert last.id == f"{epoch}:1:room1"
        assert json.loads(last.data)["data"] == self.sequence


@fuzz_settings
@given(st.lists(st.tuples(st.sampled_from(TOPICS), envelopes), min_size=1, max_size=4))
def test_broken_broker_messages_are_counted_and_disturb_nothing(
        messages: list[tuple[str, bytes]]) -> None:
    cluster = Cluster()
    for topic, data in messages:
        before = cluster.malformed()
        cluster.feed(topic, data)
        try:
            decode(data)
        except MessageError:
            assert cluster.malformed() == before + 1
        cluster.websocket_messages()  # whatever arrived, nobody was closed
        cluster.sse_events()
        cluster.valid_traffic_passes()


# -- what the fuzzing found, kept as plain regression tests ------------------------------

@pytest.mark.parametrize(("topic", "data"), [
    # a header nested too deep for the decoder: RecursionError
    ("c:news", b"[" * 100_000 + b"\n{}"),
    # a send time no float holds: OverflowError in the latency histogram
    ("c:news", b'{"o":"n2","s":1,"k":"c","t":%s}\n{}' % (b"9" * 400)),
    # an epoch with a line break: ValueError from the SSE event id
    ("c:room1", b'{"o":"n2","s":1,"k":"c","e":"E\\n1","n":1}\n{"type":"event"}'),
    # a lone surrogate in the origin: the sync request to it could not be encoded
    ("_cluster", b'{"o":"\\ud800","s":1,"k":"p"}\n{"t":"hb"}'),
    # payloads a client's transport cannot carry, which were forwarded as they were
    ("c:news", b'{"o":"n2","s":1,"k":"c"}\n{"\xff"}'),
    ("c:news", b'{"o":"n2","s":1,"k":"c"}\n'),
    ("c:news", b'{"b":"n2","s":1,"k":"c","n":[2,2]}\n{}ab'),
])
def test_a_broken_broker_message_is_counted_and_valid_traffic_follows(topic: str,
                                                                       data: bytes) -> None:
    cluster = Cluster()
    cluster.h.node.hub.channel("presence-*").authorize(lambda connection, channel: True)
    before = cluster.malformed()
    cluster.feed(topic, data)
    assert cluster.malformed() == before + 1
    cluster.valid_traffic_passes()


@pytest.mark.parametrize("control", [
    b'{"t":' + b"[" * 100_000 + b"}",  # nested too deep for the decoder: RecursionError
    # a member named with a lone surrogate: the user.joined to announce could not be encoded
    b'{"t":"join","c":"presence-room","n":"c9","u":"\\ud800"}',
    b'{"t":"join"}',
])
def test_a_malformed_control_message_changes_nothing_and_the_next_one_counts(
        control: bytes) -> None:
    cluster = Cluster()
    join = b'{"t":"join","c":"presence-room","n":"c1","u":"alice","i":{}}'
    bundle = encode(b'"n5"', 0, [Outgoing("_cluster", 1, EnvelopeKind.CONTROL, p)
                              for p in (control, join)])
    cluster.feed("_cluster", bundle)
    assert [m.user_id for m in cluster.h.node.hub.members("presence-room")] == ["alice"]
    cluster.valid_traffic_passes()
