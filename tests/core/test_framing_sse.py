"""SseFraming and encode_event, read back by a WHATWG-style SSE parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from realtime_proto.errors import LocalProtocolError
from realtime_proto.framing import Framing, FramingKind, PeerClosed
from realtime_proto.framing.http import LAST_CHUNK
from realtime_proto.framing.sse import SseFraming, SseState, encode_event
from realtime_proto.testing.peers import SseComment, SseEvent, SsePeer, SseRetry

from .strategies import chunkings, feed, feed_all_ways


def make() -> SseFraming:
    framing = SseFraming(now=0.0)
    framing.data_to_send()  # the head and the retry chunk
    return framing


def read(framing: SseFraming, peer: SsePeer | None = None) -> list[object]:
    return list((peer or SsePeer()).receive(b"".join(framing.data_to_send())))


def test_stream_starts_with_head_and_retry() -> None:
    framing = SseFraming(
        now=0.0, retry_ms=2500, extra_headers=[("access-control-allow-origin", "*")]
    )
    peer = SsePeer()
    assert read(framing, peer) == [SseRetry(ms=2500)]
    assert peer.status == 200
    assert peer.headers == {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
        "access-control-allow-origin": "*",
        "transfer-encoding": "chunked",
    }
    assert not peer.ended


@pytest.mark.parametrize(
    ("event_id", "payload", "expected"),
    [
        ("m-1", b'{"type":"event"}', SseEvent(id="m-1", data='{"type":"event"}')),
        (None, b'{"a":1}', SseEvent(id=None, data='{"a":1}')),
        ("m-2", b"line one\nline two", SseEvent(id="m-2", data="line one\nline two")),
        ("m-3", b"cr\rcrlf\r\nend", SseEvent(id="m-3", data="cr\ncrlf\nend")),
        ("m-4", b"", SseEvent(id="m-4", data="")),
        ("m-5", "é".encode(), SseEvent(id="m-5", data="é")),
    ],
)
def test_encode_event_round_trip(event_id: str | None, payload: bytes, expected: SseEvent) -> None:
    framing = SseFraming(now=0.0)
    chunk = encode_event(event_id, payload)
    framing.send_encoded(chunk)
    assert read(framing) == [SseRetry(ms=3000), expected]


def test_encode_event_bytes() -> None:
    assert encode_event("m-1", b"{}") == b"12\r\nid: m-1\ndata: {}\n\n\r\n"
    assert encode_event(None, b"a\nb") == b"11\r\ndata: a\ndata: b\n\n\r\n"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_encode_event_refuses_bad_ids(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_event(bad, b"{}")


def test_heartbeat_only_after_silence() -> None:
    framing = SseFraming(now=100.0, heartbeat_interval=15.0)
    peer = SsePeer()
    read(framing, peer)
    assert framing.next_deadline() == 115.0
    framing.tick(now=114.9)
    assert framing.data_to_send() == []
    framing.tick(now=115.0)
    assert read(framing, peer) == [SseComment(text="heartbeat")]
    assert framing.next_deadline() == 130.0
    framing.receive_data(b"", now=120.0)
    framing.send_encoded(encode_event("m-1", b"{}"))  # sending restarts the timer
    assert framing.next_deadline() == 135.0
    framing.tick(now=130.0)
    assert read(framing, peer) == [SseEvent(id="m-1", data="{}")]
    framing.tick(now=135.0)
    assert read(framing, peer) == [SseComment(text="heartbeat")]


def test_close_ends_the_chunked_body() -> None:
    framing = SseFraming(now=0.0)
    peer = SsePeer()
    framing.close()
    assert framing.closed and framing.state is SseState.CLOSED
    out = framing.data_to_send()
    assert out[-1] == LAST_CHUNK
    peer.receive(b"".join(out))
    assert peer.ended
    framing.send_encoded(encode_event("late", b"{}"))
    framing.close()
    framing.tick(now=100.0)
    assert framing.data_to_send() == [] and framing.next_deadline() is None


def test_eof_ends_the_stream() -> None:
    framing = make()
    framing.receive_eof(now=1.0)
    assert framing.events() == [PeerClosed()]
    assert framing.closed and framing.data_to_send() == []
    framing.receive_eof(now=1.0)
    assert framing.events() == []
    with pytest.raises(LocalProtocolError):
        framing.receive_data(b"x", now=1.0)


CLIENT_NOISE = b"GET /other HTTP/1.1\r\nhost: x\r\n\r\n\x00\xff garbage"


def test_client_bytes_are_ignored() -> None:
    fed = feed_all_ways(make, CLIENT_NOISE)
    assert fed.events == [] and fed.output == b"" and not fed.closed


@settings(max_examples=15, deadline=None)
@given(chunks=chunkings(CLIENT_NOISE))
def test_client_bytes_are_ignored_in_any_split(chunks: list[bytes]) -> None:
    assert feed(make(), chunks) == feed(make(), [CLIENT_NOISE])


STREAM = (
    encode_event("m-1", b'{"n":1}')
    + encode_event(None, b"two\nlines")
    + encode_event("m-3", "naïve".encode())
)


@settings(max_examples=30, deadline=None)
@given(chunks=chunkings(STREAM))
def test_peer_reads_a_stream_in_any_split(chunks: list[bytes]) -> None:
    framing = SseFraming(now=0.0)
    peer = SsePeer()
    seen = peer.receive(b"".join(framing.data_to_send()))
    for chunk in chunks:
        seen += peer.receive(chunk)
    assert seen == [
        SseRetry(ms=3000),
        SseEvent(id="m-1", data='{"n":1}'),
        SseEvent(id=None, data="two\nlines"),
        SseEvent(id="m-3", data="naïve"),
    ]


def test_satisfies_the_framing_protocol() -> None:
    framing: Framing = make()  # checked by mypy
    assert framing.kind is FramingKind.SSE
