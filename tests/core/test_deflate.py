"""permessage-deflate (RFC 7692): negotiation, compression once per window size, and the
bounded inflater, with wsproto's implementation of the extension as the other side."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib

import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import TextMessage
from wsproto.extensions import PerMessageDeflate

from realtime_proto.framing.deflate import (
    TAIL,
    DeflateParams,
    InflateError,
    Inflater,
    compress_message,
    negotiate,
)

MESSAGE = json.dumps({"type": "event", "channel": "news", "event": "tick",
                      "data": {"text": "hello " * 40}}).encode()


@pytest.mark.parametrize(("offer", "agreed"), [
    # what Chrome and Firefox send
    ("permessage-deflate; client_max_window_bits", DeflateParams()),
    # what wsproto sends
    ("permessage-deflate; client_max_window_bits=15; server_max_window_bits=15",
     DeflateParams(client_bits_named=True)),
    ("permessage-deflate; server_max_window_bits=10; client_no_context_takeover",
     DeflateParams(server_max_window_bits=10, client_no_context_takeover=True)),
    ('Permessage-Deflate; client_max_window_bits="12"; server_no_context_takeover',
     DeflateParams(client_max_window_bits=12, client_bits_named=True)),
    # the first offer is declined (a window of 8), the second taken
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate",
     DeflateParams()),
    ("x-webkit-deflate-frame, permessage-deflate", DeflateParams()),
])
def test_an_acceptable_offer_is_agreed(offer: str, agreed: DeflateParams) -> None:
    assert negotiate(offer) == agreed


@pytest.mark.parametrize("offer", [
    "",
    "x-webkit-deflate-frame",
    "permessage-deflate; unknown_param",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; server_max_window_bits",       # needs a value
    "permessage-deflate; server_max_window_bits=8",     # zlib cannot keep to 8
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; client_max_window_bits=7",
    "permessage-deflate; client_max_window_bits=0x0f",
    "permessage-deflate; client_max_window_bits=",
    "permessage-deflate; server_no_context_takeover=1",
    'permessage-deflate; client_max_window_bits="1,5"',
    "permessage-deflate; client_max_window_bits=\u0661\u0665",  # digits, not ASCII ones
])
def test_an_offer_the_server_cannot_keep_is_declined(offer: str) -> None:
    assert negotiate(offer) is None


def test_the_response_always_asks_for_server_no_context_takeover() -> None:
    assert DeflateParams().response() == "permessage-deflate; server_no_context_takeover"
    agreed = negotiate("permessage-deflate; client_max_window_bits=12; "
                       "server_max_window_bits=11; client_no_context_takeover")
    assert agreed is not None
    assert agreed.response() == ("permessage-deflate; server_no_context_takeover; "
                                 "server_max_window_bits=11; client_no_context_takeover; "
                                 "client_max_window_bits=12")


def _server_frame(payload: bytes) -> bytes:
    """An unmasked final text frame with RSV1 set (a compressed message)."""
    assert len(payload) < 65536
    head = b"\xc1" + (bytes([len(payload)]) if len(payload) < 126
                      else b"\x7e" + struct.pack("!H", len(payload)))
    return head + payload


def _wsproto_client(offer: str) -> Connection:
    """wsproto's client, with the extension as our 101 answer settles it."""
    extension = PerMessageDeflate()
    agreed = negotiate(offer)
    assert agreed is not None
    extension.finalize(agreed.response())
    assert extension.server_no_context_takeover
    return Connection(ConnectionType.CLIENT, extensions=[extension])


@pytest.mark.parametrize("window_bits", [9, 12, 15])
def test_a_compressed_message_is_what_wsproto_reads_and_the_same_for_everyone(
        window_bits: int) -> None:
    offer = f"permessage-deflate; server_max_window_bits={window_bits}"
    compressed = [compress_message(MESSAGE, window_bits), compress_message(b"{}", window_bits)]
    assert compressed[0] == compress_message(MESSAGE, window_bits)  # once per window size
    assert len(compressed[0]) < len(MESSAGE) / 4
    assert not compressed[0].endswith(TAIL)
    for _ in range(2):  # two connections, the same bytes
        client = _wsproto_client(offer)
        client.receive_data(b"".join(_server_frame(c) for c in compressed))
        assert [e.data for e in client.events() if isinstance(e, TextMessage)] == [
            MESSAGE.decode(), "{}"]


def test_each_message_inflates_alone_without_context_takeover() -> None:
    for payload in (MESSAGE, b"", MESSAGE * 3):
        alone = zlib.decompressobj(-15)
        assert alone.decompress(compress_message(payload) + TAIL) == payload


def _client_payloads(extension: PerMessageDeflate, texts: list[str]) -> list[bytes]:
    """What wsproto's client sends, unmasked: one compressed payload per message."""
    client = Connection(ConnectionType.CLIENT, extensions=[extension])
    payloads = []
    for text in texts:
        frame = client.send(TextMessage(data=text))
        assert frame[0] & 0x40  # RSV1: compressed
        length, at = frame[1] & 0x7F, 2
        if length == 126:
            length, at = struct.unpack("!H", frame[2:4])[0], 4
        mask, body = frame[at:at + 4], frame[at + 4:at + 4 + length]
        payloads.append(bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
    return payloads


@pytest.mark.parametrize("context_takeover", [True, False])
def test_the_inflater_reads_what_wsproto_sends(context_takeover: bool) -> None:
    extension = PerMessageDeflate()
    offer = "permessage-deflate; client_max_window_bits=15" + (
        "" if context_takeover else "; client_no_context_takeover")
    agreed = negotiate(offer)
    assert agreed is not None
    extension.finalize(agreed.response())
    texts = [MESSAGE.decode(), MESSAGE.decode(), "x" * 3000]
    inflater = Inflater(64 * 1024, no_context_takeover=agreed.client_no_context_takeover)
    assert [inflater.inflate(p) for p in _client_payloads(extension, texts)] == [
        t.encode() for t in texts]


def test_a_message_in_fragments_counts_towards_one_limit() -> None:
    compressed = compress_message(b"a" * 5000)
    parts = [compressed[:5], compressed[5:9], compressed[9:]]
    inflater = Inflater(5000)
    assert b"".join(inflater.inflate(p, fin=i == 2) for i, p in enumerate(parts)) == b"a" * 5000
    assert inflater.inflate(compress_message(b"b" * 5000)) == b"b" * 5000  # a new message
    with pytest.raises(InflateError) as refused:
        Inflater(4999).inflate(compressed)
    assert refused.value.code == 1009


def test_a_block_that_ends_its_stream_is_followed_by_a_new_one() -> None:
    inflater = Inflater(1024)
    for text in (b"first", b"second"):
        final = zlib.compressobj(6, zlib.DEFLATED, -15)
        assert inflater.inflate(final.compress(text) + final.flush()) == text


def test_a_bomb_is_stopped_at_the_limit_without_inflating_it() -> None:
    # 100 KiB that inflate to 100 MiB: deflate grows at most about 1032-fold, so a 1 KiB
    # message reaches 1 MiB at most; this one goes a hundred times further
    bomb = compress_message(bytes(100 * 1024 * 1024), level=9)
    assert len(bomb) < 110 * 1024
    small = compress_message(bytes(1024 * 1024), level=9)
    assert len(small) < 1100  # the 1 KiB case
    for payload in (bomb, small):
        inflater = Inflater(64 * 1024)
        tracemalloc.start()
        try:
            with pytest.raises(InflateError) as refused:
                inflater.inflate(payload)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert refused.value.code == 1009
        assert peak < 1024 * 1024  # what came out is the limit and a byte, not 100 MiB


def test_bytes_that_are_not_deflate_are_refused_with_1007() -> None:
    with pytest.raises(InflateError) as refused:
        Inflater(1024).inflate(b"\xff\xff\xff\xff")
    assert refused.value.code == 1007
