"""The JSON the core writes, and what it decodes, is the same with orjson (the speedups
extra) and without it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realtime_proto import jsoncodec
from realtime_proto.errors import ErrorCode, MessageError
from realtime_proto.message import (
    EventEncoder,
    Message,
    MessageType,
    decode_json,
    encode_message,
)

VALUES: list[Any] = [
    None, True, 0, -7, 2**63 - 1, 1.5, 0.1, "", "ü ✓ 𝄞", 'quote " backslash \\ nl \n tab \t',
    "\x00\x1f\u2028", [1, [2, [3]]], {"a": {"b": [None, False]}}, {1: "int key"}, (1, 2),
    {"m": "@T0000000001234567890", "s": 3, "p": "x" * 150},
]


@pytest.fixture(params=["orjson", "stdlib"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "orjson":
        if jsoncodec.orjson is None:
            pytest.skip("orjson is not installed (the speedups extra)")
    else:
        monkeypatch.setattr(jsoncodec, "orjson", None)
    yield request.param


@pytest.mark.parametrize("value", VALUES)
def test_both_codecs_write_the_same_compact_json(codec: str, value: Any) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert jsoncodec.dumps(value) == expected
    assert jsoncodec.quote("a\"ü") == b'"a\\"\xc3\xbc"'


def test_what_orjson_refuses_the_standard_library_decides(codec: str) -> None:
    assert jsoncodec.dumps(2**70) == b"1180591620717411303424"  # past 64 bits
    deep: list[Any] = []
    for _ in range(400):  # deeper than orjson goes
        deep = [deep]
    assert jsoncodec.dumps(deep) == b"[" * 401 + b"]" * 401

    @dataclasses.dataclass
    class Point:
        x: int

    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(TypeError):
        jsoncodec.dumps({"p": Point(1)})  # as `json`: not encoded silently
    with pytest.raises(TypeError):
        jsoncodec.dumps(object())
    with pytest.raises(ValueError, match="Circular"):
        jsoncodec.dumps(circular)
    assert jsoncodec.dumps([1, 2]) == b"[1,2]"  # the failures left nothing behind


def test_nan_is_null_with_orjson_and_nan_without(codec: str) -> None:
    assert jsoncodec.dumps(float("nan")) == (b"null" if codec == "orjson" else b"NaN")


@pytest.mark.parametrize("user_id", [None, "alice"])
def test_the_publish_path_encodes_as_message_encode(codec: str, user_id: str | None) -> None:
    for data in VALUES:
        made = encode_message("m.1f", MessageType.EVENT, "room", "said", data, 1700, user_id)
        message = Message(type=MessageType.EVENT, id="m.1f", channel="room", event="said",
                          data=data, timestamp=1700, user_id=user_id)
        assert made == message.encode()
        assert json.loads(made)["data"] == json.loads(json.dumps(data))
        events = EventEncoder(1700, user_id)  # a batch's encoder: the same bytes, each time
        for channel, event in [("room", "said"), ("dé \"q\"", "e"), ("room", "said")]:
            expected = Message(type=MessageType.EVENT, id="m.1f", channel=channel, event=event,
                               data=data, timestamp=1700, user_id=user_id).encode()
            assert events.encode(b'"m.1f"', channel, event, data) == expected


DECODED = [
    b'{"a":1}', b"[1, 12345678901234567890123]", b'{"a":-99999999999999999999}',
    b"  12345678901234567890123  ", b'{"a":18446744073709551615,"b":-9223372036854775808}',
    b'{"a":"x:1234567890123456789012"}', b"NaN", b"[1e400]", b'{"a":1,"a":2}',
    b'{"a":"\\ud83d\\ude00"}', b"[0.1, 1.7976931348623157e308, 5e-324, -0.0, -0]",
]


@pytest.mark.parametrize("text", DECODED)
def test_decoding_gives_what_the_standard_library_gives(codec: str, text: bytes) -> None:
    decoded = decode_json(text)
    assert repr(decoded) == repr(json.loads(text))  # repr: 1e400 is inf, NaN is not == NaN


@pytest.mark.parametrize(("text", "code"), [
    (b'"\\ud800"', ErrorCode.INVALID_UTF8), (b'["\\udc00"]', ErrorCode.INVALID_UTF8),
    (b"\xff", ErrorCode.INVALID_UTF8), (b"[" * 5000 + b"]" * 5000, ErrorCode.MALFORMED_MESSAGE),
    (b'{"a":}', ErrorCode.MALFORMED_MESSAGE), (b"\xef\xbb\xbf{}", ErrorCode.MALFORMED_MESSAGE),
])
def test_what_orjson_refuses_to_decode_the_standard_library_explains(
        codec: str, text: bytes, code: ErrorCode) -> None:
    with pytest.raises(MessageError) as raised:
        decode_json(text)
    assert raised.value.code == code


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@given(value=_JSON, indent=st.sampled_from([None, 1]), ascii_only=st.booleans())
def test_any_json_text_decodes_as_the_standard_library_decodes(
        value: Any, indent: int | None, ascii_only: bool) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode()
    assert repr(decode_json(text)) == repr(json.loads(text))
