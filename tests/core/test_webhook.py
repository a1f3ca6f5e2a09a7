"""The webhook's request and the reading of its answers, without a socket."""

from __future__ import annotations

import json

import pytest

from realtime_proto.actions import ConnectionInfo
from realtime_proto.events import ConnectionId
from realtime_proto.webhook import (
    WebhookAnswer,
    WebhookCache,
    WebhookTarget,
    read_answer,
    webhook_request,
)


def response(status: int, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize(("raw", "expected"), [
    (response(200, b'{"allowed": true}'), WebhookAnswer(True)),
    (response(200, b'{"allowed": true, "info": {"a": 1}}'), WebhookAnswer(True, {"a": 1})),
    (response(200, b'{"allowed": "yes"}'), WebhookAnswer(False)),
    (response(200, b"not json"), WebhookAnswer(False)),
    (response(403, b'{"allowed": true}'), WebhookAnswer(False)),
])
def test_only_a_200_with_allowed_true_allows(raw: bytes, expected: WebhookAnswer) -> None:
    assert read_answer(raw) == expected


def test_truncated_answer_is_an_error() -> None:
    with pytest.raises(ValueError):
        read_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{")


def test_the_request_describes_the_connection() -> None:
    target = WebhookTarget.parse("http://backend:8080/auth?v=1")
    info = ConnectionInfo(id=ConnectionId("c1"), user_id="ann", authenticated=True,
                          info={"n": 1})
    raw = webhook_request(target, info, "private-x")
    assert raw.startswith(b"POST /auth?v=1 HTTP/1.1\r\n")
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert body == {"connection_id": "c1", "user_id": "ann", "channel": "private-x",
                    "info": {"n": 1}}
    with pytest.raises(ValueError):
        WebhookTarget.parse("ftp://x/")


def test_cache_expires() -> None:
    cache = WebhookCache(ttl=10)
    cache.put("ann", "c", WebhookAnswer(True), now=100)
    assert cache.get("ann", "c", now=105) == WebhookAnswer(True)
    assert cache.get("ann", "c", now=111) is None
    assert cache.get("bob", "c", now=105) is None
