"""The JSON the core writes is the same with orjson (the speedups extra) and without it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest

from realtime_proto import jsoncodec
from realtime_proto.message import Message, MessageType, encode_message

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
