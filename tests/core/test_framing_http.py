"""HttpFraming: requests fed whole, byte by byte and in hypothesis splits."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from unittest.mock import ANY

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_proto.errors import LocalProtocolError
from realtime_proto.framing import (
    Framing,
    FramingEvent,
    FramingKind,
    PeerClosed,
    RequestReceived,
    Violation,
)
from realtime_proto.framing.http import (
    LAST_CHUNK,
    HttpFraming,
    HttpState,
    encode_chunk,
    stream_head,
)
from realtime_proto.testing.peers import HttpPeer, HttpResponse

from .strategies import bytewise, chunkings, feed, feed_all_ways

MAX_HEAD = 256
MAX_BODY = 64


def make() -> HttpFraming:
    return HttpFraming(max_head_bytes=MAX_HEAD, max_body_bytes=MAX_BODY, now=0.0)


def answer(framing: HttpFraming, event: FramingEvent) -> None:
    """Respond to every request at once, the way a caller serving /api would."""
    if isinstance(event, RequestReceived):
        framing.respond(200, [("content-type", "text/plain")], f"ok {event.path}".encode(), now=0)


def request(
    method: str,
    path: str,
    *,
    target: str | None = None,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> RequestReceived:
    return RequestReceived(
        method=method,
        target=target or path,
        path=path,
        query=query or {},
        headers={"host": "localhost", **(headers or {})},
        body=body,
        raw_head=ANY,
    )


def responses(output: bytes) -> list[HttpResponse]:
    return HttpPeer().receive(output)


def error_code(response: HttpResponse) -> int:
    body = json.loads(response.body)
    assert response.headers["content-type"] == "application/json"
    code: int = body["error"]["code"]
    return code


peer = HttpPeer()


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    events: list[FramingEvent]
    #: (status, JSON error code or None) of every response written
    answers: list[tuple[int, int | None]] = field(default_factory=list)
    closed: bool = False


POST_JSON = [("content-type", "application/json")]
CHUNKED = [("transfer-encoding", "chunked")]

CASES = [
    Case(
        "get",
        peer.request("GET", "/health"),
        [request("GET", "/health")],
        [(200, None)],
    ),
    Case(
        "path and query are decoded, last value wins",
        peer.request("GET", "/a%20b/c?x=1&x=2&y&z=%2F+w"),
        [
            request(
                "GET",
                "/a b/c",
                target="/a%20b/c?x=1&x=2&y&z=%2F+w",
                query={"x": "2", "y": "", "z": "/ w"},
            )
        ],
        [(200, None)],
    ),
    Case(
        "repeated headers are joined, names lower-cased",
        peer.request("GET", "/", [("X-Tag", "a"), ("x-tag", "b")]),
        [request("GET", "/", headers={"x-tag": "a, b"})],
        [(200, None)],
    ),
    Case(
        "post with content-length",
        peer.request("POST", "/send", POST_JSON, b'{"a":1}'),
        [
            request(
                "POST",
                "/send",
                headers={"content-type": "application/json", "content-length": "7"},
                body=b'{"a":1}',
            )
        ],
        [(200, None)],
    ),
    Case(
        "post chunked",
        b"POST /send HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        [request("POST", "/send", headers={"transfer-encoding": "chunked"}, body=b"abcde")],
        [(200, None)],
    ),
    Case(
        "keep-alive: three pipelined requests, answered in order",
        peer.request("GET", "/1")
        + peer.request("POST", "/2", body=b"xy")
        + peer.request("GET", "/3"),
        [
            request("GET", "/1"),
            request("POST", "/2", headers={"content-length": "2"}, body=b"xy"),
            request("GET", "/3"),
        ],
        [(200, None)] * 3,
    ),
    Case(
        "connection: close ends the connection after the response",
        peer.request("GET", "/", [("connection", "close")]) + peer.request("GET", "/never"),
        [request("GET", "/", headers={"connection": "close"})],
        [(200, None)],
        closed=True,
    ),
    Case(
        "http/1.0 closes after the response",
        b"GET /old HTTP/1.0\r\n\r\n",
        [
            RequestReceived(
                method="GET",
                target="/old",
                path="/old",
                query={},
                headers={},
                body=b"",
                raw_head=b"GET /old HTTP/1.0\r\n\r\n",
            )
        ],
        [(200, None)],
        closed=True,
    ),
    Case(
        "expect: 100-continue gets its invitation",
        peer.request("POST", "/send", [("expect", "100-continue")], b"hi"),
        [
            request(
                "POST",
                "/send",
                headers={"expect": "100-continue", "content-length": "2"},
                body=b"hi",
            )
        ],
        [(200, None)],
    ),
    Case(
        "malformed request line",
        b"GARBAGE\r\n\r\n",
        [Violation(code=400, reason="malformed request")],
        [(400, 4000)],
        closed=True,
    ),
    Case(
        "header without a colon",
        b"GET / HTTP/1.1\r\nhost: x\r\nnonsense\r\n\r\n",
        [Violation(code=400, reason="malformed request")],
        [(400, 4000)],
        closed=True,
    ),
    Case(
        "invalid content-length",
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1x\r\n\r\n",
        [Violation(code=400, reason="malformed request")],
        [(400, 4000)],
        closed=True,
    ),
    Case(
        "bad chunk size",
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        [Violation(code=400, reason="malformed request")],
        [(400, 4000)],
        closed=True,
    ),
    Case(
        "good request, then garbage on the same connection",
        peer.request("GET", "/ok") + b"\x00\x01\x02\r\n\r\n",
        [request("GET", "/ok"), Violation(code=400, reason="malformed request")],
        [(200, None), (400, 4000)],
        closed=True,
    ),
    Case(
        "head over max_head_bytes",
        peer.request("GET", "/", [("x-big", "a" * MAX_HEAD)]),
        [Violation(code=431, reason="request head too large")],
        [(431, 4000)],
        closed=True,
    ),
    Case(
        "endless head",
        b"GET / HTTP/1.1\r\nx-big: " + b"a" * (2 * MAX_HEAD),
        [Violation(code=431, reason="request head too large")],
        [(431, 4000)],
        closed=True,
    ),
    Case(
        "content-length over max_body_bytes is refused up front",
        peer.request("POST", "/send", POST_JSON, b"x" * (MAX_BODY + 1)),
        [Violation(code=413, reason="request body too large")],
        [(413, 4009)],
        closed=True,
    ),
    # RFC 9112 conformance (issue 15): ambiguous framing is refused with 400 and
    # closes, so a request pipelined behind it is never answered.
    *(
        Case(
            name,
            head + b"\r\n" + peer.request("GET", "/never"),
            [Violation(code=status, reason=reason)],
            [(status, 4000)],
            closed=True,
        )
        for name, head, status, reason in [
            ("transfer-encoding and content-length",
             b"POST /send HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
             b"content-length: 5\r\n\r\n0\r\n", 400,
             "both Transfer-Encoding and Content-Length"),
            ("final transfer coding not chunked",
             b"POST /send HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, gzip\r\n", 400,
             "Transfer-Encoding does not end with chunked"),
            ("transfer coding not implemented",
             b"POST /send HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n", 501,
             "unsupported transfer coding"),
            ("transfer-encoding in http/1.0",
             b"POST /send HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n", 400,
             "Transfer-Encoding in an HTTP/1.0 request"),
            ("duplicate content-length",
             b"POST /send HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n"
             b"content-length: 1\r\n\r\na", 400, "more than one Content-Length"),
            ("content-length list",
             b"POST /send HTTP/1.1\r\nhost: x\r\ncontent-length: 1, 1\r\n\r\na", 400,
             "more than one Content-Length"),
            ("conflicting content-length",
             b"POST /send HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n"
             b"content-length: 2\r\n\r\nab", 400, "malformed request"),
            ("whitespace before the colon",
             b"GET / HTTP/1.1\r\nhost : x\r\n", 400, "malformed request"),
            ("bare CR in the head",
             b"GET / HTTP/1.1\r\nhost: x\rx-a: b\r\n", 400, "malformed request"),
            ("bare LF in the head",
             b"GET / HTTP/1.1\nhost: x\r\n", 400, "bare LF in the request head"),
            ("control character in a header name",
             b"GET / HTTP/1.1\r\nhost: x\r\nx\x01a: b\r\n", 400, "malformed request"),
            ("NUL in a header value",
             b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\x00b\r\n", 400, "malformed request"),
            ("control character in a header value",
             b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\x07b\r\n", 400,
             "control character in the request head"),
            ("obs-fold continuation line",
             b"GET / HTTP/1.1\r\nhost: x\r\nx-a: a\r\n b\r\n", 400,
             "obs-fold header continuation"),
        ]
    ),
    Case(
        "absolute-form target is routed by its path (RFC 9112 §3.2.2)",
        b"GET http://example.com/health?x=1 HTTP/1.1\r\nhost: example.com\r\n\r\n",
        [request("GET", "/health", target="http://example.com/health?x=1",
                 query={"x": "1"}, headers={"host": "example.com"})],
        [(200, None)],
    ),
    Case(
        "chunked body over max_body_bytes is refused while reading",
        peer.request("POST", "/send", CHUNKED, b"x" * (MAX_BODY + 1)),
        [Violation(code=413, reason="request body too large")],
        [(413, 4009)],
        closed=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_table_whole_and_bytewise(case: Case) -> None:
    fed = feed_all_ways(make, case.data, react=answer)
    assert fed.events == case.events
    answered = responses(fed.output)
    assert [
        (r.status, error_code(r) if r.status >= 400 else None) for r in answered
    ] == case.answers
    assert fed.closed is case.closed


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_table_in_hypothesis_splits(case: Case, data: st.DataObject) -> None:
    chunks = data.draw(chunkings(case.data))
    assert feed(make(), chunks, react=answer) == feed(make(), [case.data], react=answer)


def test_response_bytes_and_head_request() -> None:
    client = HttpPeer()
    framing = make()
    framing.receive_data(client.request("HEAD", "/file"), now=0)
    assert framing.events() == [request("HEAD", "/file")]
    framing.respond(200, [("content-type", "text/plain"), ("Content-Length", "999")], b"hello")
    out = b"".join(framing.data_to_send())
    # The caller's Content-Length is replaced, and HEAD gets the length but no body.
    assert out == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n"
    assert client.receive(out) == [
        HttpResponse(
            status=200, headers={"content-type": "text/plain", "content-length": "5"}, body=b""
        )
    ]


def test_raw_head_is_the_exact_bytes_received() -> None:
    head = b"GET /ws?token=t HTTP/1.1\r\nHost: a\r\nX-Odd:   spaced  \r\n\r\n"
    fed = feed_all_ways(make, head + b"trailing")
    [event] = fed.events
    assert isinstance(event, RequestReceived)
    assert event.raw_head == head
    assert event.headers == {"host": "a", "x-odd": "spaced"}


def test_204_has_no_content_length_and_keep_alive_false_closes() -> None:
    framing = make()
    framing.receive_data(peer.request("OPTIONS", "/api"), now=0)
    framing.events()
    framing.respond(204, [], b"", keep_alive=False, now=0)
    out = b"".join(framing.data_to_send())
    assert out == b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
    assert framing.closed


def test_next_request_waits_for_the_response() -> None:
    framing = make()
    framing.receive_data(peer.request("GET", "/poll") + peer.request("GET", "/2"), now=0)
    assert framing.events() == [request("GET", "/poll")]
    assert framing.next_deadline() is None  # a held request has no timer
    framing.tick(now=1000.0)
    assert framing.events() == [] and not framing.closed
    framing.respond(200, [], b"late", now=1000.0)
    assert framing.events() == [request("GET", "/2")]


def test_request_timeout_from_opening() -> None:
    framing = HttpFraming(request_timeout=30.0, now=100.0)
    assert framing.next_deadline() == 130.0
    framing.receive_data(b"GET / HTTP/1.1\r\n", now=110.0)  # slowloris: bytes keep coming
    framing.receive_data(b"host: x\r\n", now=129.0)
    framing.tick(now=129.9)
    assert framing.events() == []
    framing.tick(now=130.0)
    assert framing.events() == [Violation(code=408, reason="request timeout")]
    [answered] = responses(b"".join(framing.data_to_send()))
    assert (answered.status, error_code(answered)) == (408, 4020)
    assert framing.closed and framing.next_deadline() is None


def test_request_timeout_restarts_at_the_response() -> None:
    framing = HttpFraming(request_timeout=30.0, now=0.0)
    framing.receive_data(peer.request("GET", "/poll"), now=1.0)
    framing.events()
    framing.respond(200, [], b"{}", now=26.0)  # a long poll answered late
    assert framing.next_deadline() == 56.0
    framing.tick(now=55.0)
    assert not framing.closed


def test_respond_without_now_uses_the_latest_now() -> None:
    framing = HttpFraming(request_timeout=30.0, now=0.0)
    framing.receive_data(peer.request("GET", "/"), now=5.0)
    framing.events()
    framing.respond(200, [], b"")
    assert framing.next_deadline() == 35.0


def test_idle_keep_alive_connection_times_out() -> None:
    framing = HttpFraming(request_timeout=10.0, now=0.0)
    framing.receive_data(peer.request("GET", "/"), now=0.0)
    framing.events()
    framing.respond(200, [], b"", now=1.0)
    framing.data_to_send()
    framing.tick(now=11.0)
    assert framing.events() == [Violation(code=408, reason="request timeout")]
    assert framing.closed


@pytest.mark.parametrize(
    "data",
    [
        b"",
        peer.request("GET", "/1"),
    ],
    ids=["fresh", "between requests"],
)
def test_eof_between_requests(data: bytes) -> None:
    framing = make()
    feed(framing, [data], react=answer)
    framing.receive_eof(now=1.0)
    assert framing.events() == [PeerClosed()]
    assert framing.closed and framing.data_to_send() == []


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nhost:",
        peer.request("POST", "/send", body=b"12345")[:-2],
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
    ],
    ids=["in the head", "in a body", "in a chunked body"],
)
def test_eof_in_the_middle_of_a_request(data: bytes) -> None:
    for chunks in ([data], bytewise(data)):
        framing = make()
        assert feed(framing, chunks).events == []
        framing.receive_eof(now=1.0)
        assert framing.events() == [PeerClosed()]
        assert framing.closed and framing.data_to_send() == []


def test_eof_while_a_response_is_owed() -> None:
    framing = make()
    framing.receive_data(peer.request("GET", "/poll"), now=0)
    framing.receive_eof(now=1.0)
    assert framing.events() == [request("GET", "/poll"), PeerClosed()]
    framing.respond(200, [], b"too late")  # the peer is gone: nothing to do
    assert framing.data_to_send() == [] and framing.closed


def test_misuse_raises() -> None:
    framing = make()
    with pytest.raises(LocalProtocolError):
        framing.respond(200, [], b"")
    with pytest.raises(LocalProtocolError):
        framing.take_over()
    framing.receive_eof(now=0)
    framing.receive_eof(now=0)  # idempotent
    with pytest.raises(LocalProtocolError):
        framing.receive_data(b"x", now=0)
    with pytest.raises(ValueError):
        HttpFraming(max_head_bytes=0, now=0)


def test_pipelined_bytes_while_a_response_is_owed_are_bounded() -> None:
    framing = make()
    framing.receive_data(peer.request("GET", "/poll"), now=0)
    assert framing.events() == [request("GET", "/poll")]
    framing.receive_data(b"x" * (MAX_HEAD + MAX_BODY + 1), now=0)
    assert framing.events() == [Violation(code=400, reason="too much data before a response")]
    assert framing.closed


def test_close_finishes_after_pending_output() -> None:
    framing = make()
    framing.receive_data(peer.request("GET", "/"), now=0)
    framing.events()
    framing.respond(200, [], b"bye", now=0)
    framing.close()
    assert framing.closed and framing.state is HttpState.CLOSED
    assert [r.body for r in responses(b"".join(framing.data_to_send()))] == [b"bye"]
    framing.receive_data(b"GET / HTTP/1.1\r\n\r\n", now=0)  # ignored once closed
    assert framing.events() == [] and framing.data_to_send() == []


def test_take_over_returns_head_and_everything_after_it() -> None:
    head = peer.request("GET", "/ws", [("upgrade", "websocket"), ("connection", "Upgrade")])
    framing = make()
    framing.receive_data(head + b"\x81\x85", now=0)
    framing.receive_data(b"more", now=0)
    [event] = framing.events()
    assert isinstance(event, RequestReceived) and event.raw_head == head
    assert framing.take_over() == head + b"\x81\x85more"
    assert framing.state is HttpState.TAKEN_OVER
    assert framing.events() == [] and framing.data_to_send() == [] and not framing.closed
    assert framing.next_deadline() is None
    with pytest.raises(LocalProtocolError):
        framing.receive_data(b"x", now=0)


def test_a_declined_upgrade_is_an_ordinary_response() -> None:
    framing = make()
    framing.receive_data(
        peer.request("GET", "/ws", [("upgrade", "websocket"), ("connection", "Upgrade")])
        + peer.request("GET", "/health"),
        now=0,
    )
    framing.events()
    framing.respond(401, [], b"no", now=0)
    assert [e.path for e in framing.events() if isinstance(e, RequestReceived)] == ["/health"]


def test_stream_head_and_chunks_read_by_h11() -> None:
    head = stream_head(200, [("content-type", "text/plain"), ("content-length", "5")])
    assert head == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    assert encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(head + encode_chunk(b"abc") + encode_chunk(b"de") + LAST_CHUNK)
    body = b""
    while (event := client.next_event()) is not h11.NEED_DATA:
        if isinstance(event, h11.Data):
            body += event.data
        if isinstance(event, h11.EndOfMessage):
            break
    assert body == b"abcde"


def test_stream_head_refuses_header_injection_and_chunk_refuses_empty() -> None:
    with pytest.raises(ValueError):
        stream_head(200, [("x", "a\r\nset-cookie: evil")])
    with pytest.raises(ValueError):
        encode_chunk(b"")


def test_expect_100_continue_is_answered_before_the_body() -> None:
    framing = make()
    head = b"POST /send HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
    framing.receive_data(head, now=0)
    assert framing.data_to_send() == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    framing.receive_data(b"hi", now=0)
    [event] = framing.events()
    assert isinstance(event, RequestReceived) and event.body == b"hi"


def test_satisfies_the_framing_protocol() -> None:
    framing: Framing = make()  # checked by mypy
    assert framing.kind is FramingKind.HTTP
