"""Fuzzing the HTTP front door (HttpFraming): hypothesis builds requests from valid and
hostile parts, mutates their bytes and splits them into reads.

Properties: nothing raises out of the core; every input ends in requests, then at most
one Violation answered with its 4xx/5xx and a close (or still waiting for more bytes);
how the bytes are split into reads changes nothing. `FUZZ_EXAMPLES=100000` runs longer.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime_proto.framing import FramingEvent, PeerClosed, RequestReceived, Violation
from realtime_proto.framing.http import HttpFraming
from tests.core.strategies import Fed, chunkings, feed

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT", b"G\x00T", b""])
TARGETS = st.sampled_from([b"/health", b"/api/publish", b"/ws", b"/send?connection_id=x",
                           b"http://h/health", b"*", b"/%zz", b"/a b", b"/\x7f"])
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1"])
NAMES = st.sampled_from([b"host", b"content-length", b"transfer-encoding", b"expect",
                         b"connection", b"upgrade", b"x-a", b"x a", b"x\x01a", b""])
VALUES = st.one_of(
    st.sampled_from([b"x", b"0", b"3", b"-1", b"1, 1", b"chunked", b"chunked, gzip",
                     b"gzip, chunked", b"100-continue", b"close", b"keep-alive", b"a\x00b",
                     b"a\x07b", b"a\rb", b"  ", b"websocket"]),
    st.binary(max_size=8),
)
SEPARATORS = st.sampled_from([b": ", b":", b" : ", b":\t"])
EOLS = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\n "])
BODIES = st.one_of(st.binary(max_size=16), st.just(b"3\r\nabc\r\n0\r\n\r\n"),
                   st.just(b"zz\r\n"))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request, mostly well formed, with hostile parts drawn now and then."""
    eol = draw(EOLS)
    head = b" ".join((draw(METHODS), draw(TARGETS), draw(VERSIONS))) + eol
    if draw(st.booleans()):
        head += b"host: x" + eol
    for _ in range(draw(st.integers(0, 4))):
        head += draw(NAMES) + draw(SEPARATORS) + draw(VALUES) + draw(EOLS)
    return head + eol + draw(BODIES)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """One to three pipelined requests, sometimes with bytes flipped or inserted."""
    data = b"".join(draw(st.lists(requests(), min_size=1, max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at + 1:]
    return data


def make() -> HttpFraming:
    return HttpFraming(max_head_bytes=4096, max_body_bytes=64, now=0.0)


def answer(framing: HttpFraming, event: FramingEvent) -> None:
    if isinstance(event, RequestReceived):
        framing.respond(200, [("content-type", "text/plain")], b"ok", now=0.0)


def check_outcome(fed: Fed, framing: HttpFraming) -> None:
    *requests_seen, last = fed.events or [None]
    assert all(isinstance(event, RequestReceived) for event in requests_seen)
    if isinstance(last, Violation):
        assert 400 <= last.code < 600 and fed.closed
        final = fed.output[fed.output.rindex(b"HTTP/1.1 "):]
        assert final.startswith(b"HTTP/1.1 %d " % last.code)
        assert b"\r\nconnection: close\r\n" in final.lower()
    else:
        assert last is None or isinstance(last, RequestReceived)
    framing.receive_eof(now=1.0)
    assert framing.events() in ([], [PeerClosed()]) and framing.closed


@FUZZ
@given(data=st.data(), stream=streams())
def test_any_request_stream_ends_defined_however_split(data: st.DataObject,
                                                       stream: bytes) -> None:
    whole_framing = make()
    whole = feed(whole_framing, [stream], react=answer)
    check_outcome(whole, whole_framing)
    split_framing = make()
    split = feed(split_framing, data.draw(chunkings(stream)), react=answer)
    assert split == whole
    check_outcome(split, split_framing)


@FUZZ
@given(data=st.binary(max_size=512))
def test_raw_bytes_never_escape(data: bytes) -> None:
    framing = make()
    check_outcome(feed(framing, [data], react=answer), framing)
