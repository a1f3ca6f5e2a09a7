"""The webhook delivery queue: batches, signatures, retries with backoff, a bounded queue."""

from __future__ import annotations

import json
from itertools import count

import h11
import pytest

from realtime_proto.config import WebhookConfig
from realtime_proto.errors import ConfigError
from realtime_proto.notify import WebhookQueue, body_signature, response_status

URL = "http://127.0.0.1:9/hook?x=1"


def _queue(**options: object) -> WebhookQueue:
    config = WebhookConfig(urls=(URL,), secret="s3cret", **options)  # type: ignore[arg-type]
    return WebhookQueue(URL, config, jitter=lambda: 1.0)


def _ids() -> object:
    numbers = count(1)
    return lambda: f"r{next(numbers)}"


def _parse(request: bytes) -> tuple[str, dict[str, str], bytes]:
    server = h11.Connection(h11.SERVER)
    server.receive_data(request)
    head = server.next_event()
    assert isinstance(head, h11.Request)
    body = b""
    while not isinstance(event := server.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        body += event.data
    headers = {k.decode(): v.decode() for k, v in head.headers}
    return head.target.decode(), headers, body


def _events(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"id": str(i), "name": "member.added", "channel": "presence-a"}
            for i in range(start, start + n)]


def test_a_batch_waits_max_delay_or_max_batch_and_is_signed() -> None:
    queue, ids = _queue(max_batch=3, max_delay=0.01), _ids()
    queue.add(_events(2), now=10.0)
    assert queue.take(10.005, ids, 1) is None  # waits for more
    assert queue.next_deadline() == pytest.approx(10.01)
    request_id, request = queue.take(10.01, ids, 1234)  # type: ignore[misc]
    target, headers, body = _parse(request)
    assert target == "/hook?x=1" and headers["content-type"] == "application/json"
    assert headers["x-realtime-signature"] == body_signature("s3cret", body)
    assert json.loads(body) == {"time_ms": 1234, "events": _events(2)}
    assert queue.take(10.02, ids, 1) is None  # one POST in flight at a time
    queue.add(_events(4, start=2), now=10.02)
    assert queue.answered(request_id, 204, now=10.03) is True
    _, request = queue.take(10.03, ids, 1)  # type: ignore[misc]
    assert [e["id"] for e in json.loads(_parse(request)[2])["events"]] == ["2", "3", "4"]


def test_failures_are_retried_in_order_with_growing_jittered_delays() -> None:
    queue, ids = _queue(max_delay=0, backoff_min=1, backoff_max=4), _ids()
    queue.add(_events(1), now=0.0)
    first = queue.take(0.0, ids, 1)
    assert first is not None
    queue.add(_events(1, start=1), now=0.5)
    waits = []
    now = 1.0
    for status in (503, None, 429, 500):
        assert queue.answered(first[0], status, now) is False
        retry_at = queue.next_deadline()
        assert retry_at is not None
        waits.append(retry_at - now)
        assert queue.take(retry_at - 0.001, ids, 1) is None
        again = queue.take(retry_at, ids, 1)
        assert again == first  # the same batch, byte for byte, before the next one
        now = retry_at
    assert waits == [1, 2, 4, 4]  # jitter 1.0: the full ceiling, capped at backoff_max
    assert queue.answered(first[0], 200, now) is True
    stats = queue.statistics()
    assert (stats.sent, stats.retried, stats.dropped, stats.queued) == (1, 4, 0, 1)
    assert stats.latency.count == 1


def test_a_refusal_drops_the_batch_and_a_full_queue_drops_the_oldest() -> None:
    queue, ids = _queue(max_batch=2, max_queue=3, max_delay=0), _ids()
    queue.add(_events(2), now=0.0)
    request_id, _ = queue.take(0.0, ids, 1)  # type: ignore[misc]
    assert queue.answered(request_id, 400, now=0.1) is True  # 4xx: retrying cannot help
    queue.add(_events(5, start=2), now=0.2)  # 5 into room for 3: 2, 3 dropped
    _, request = queue.take(0.2, ids, 1)  # type: ignore[misc]
    assert [e["id"] for e in json.loads(_parse(request)[2])["events"]] == ["4", "5"]
    assert queue.answered("not-ours", 200, now=0.3) is None
    assert queue.statistics().dropped == 4


def test_response_status_and_config_checks() -> None:
    assert response_status(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n") == 503
    assert response_status(b"garbage") is None
    assert response_status(b"") is None
    with pytest.raises(ConfigError):
        WebhookConfig(urls=())
    with pytest.raises(ConfigError):
        WebhookConfig(urls=(URL,), max_batch=10, max_queue=5)
