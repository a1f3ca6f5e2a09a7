"""Events out to the backend's webhooks: batches, signatures, retries, a bounded queue.

Pure: the queue decides what to POST and when, given `now`; the Node turns its decisions
into `PostWebhook` actions and the adapter moves the bytes (`post_webhook`). One request
per target is in flight at a time and a failed batch is retried before the next one, so
the backend sees every target's events in the order they were reported.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, final

import h11

from .config import WebhookConfig
from .metrics import Histogram, HistogramSnapshot
from .webhook import WebhookTarget

__all__ = ["SIGNATURE_HEADER", "Signer", "WebhookQueue", "WebhookStatistics", "body_signature",
           "response_status"]

#: the header that carries the body's HMAC-SHA256: `sha256=<hex>`
SIGNATURE_HEADER = "X-Realtime-Signature"
#: the headers that sign a request's body (the native `X-Realtime-Signature`, or Pusher's)
Signer = Callable[[bytes], Sequence[tuple[str, str]]]


@final
@dataclass(frozen=True, slots=True)
class WebhookStatistics:
    """One URL's counters."""

    url: str
    #: events the backend accepted (2xx)
    sent: int
    #: POSTs repeated after a failure (5xx, 408, 429, timeout, connection error)
    retried: int
    #: events dropped: the queue was full, or the backend refused them (other 4xx)
    dropped: int
    #: events waiting now
    queued: int
    #: seconds from an event's report to the backend's 2xx
    latency: HistogramSnapshot


def body_signature(secret: str, body: bytes) -> str:
    """The `X-Realtime-Signature` value of a body: `sha256=<hex HMAC-SHA256>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def response_status(response: bytes) -> int | None:
    """The status code of a raw HTTP response, None if it is not one."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/", headers=[("host", "x"),
                                                                ("content-length", "0")]))
    client.send(h11.EndOfMessage())
    client.receive_data(response)
    try:
        event = client.next_event()
    except h11.RemoteProtocolError:
        return None
    return event.status_code if isinstance(event, h11.Response) else None


class WebhookQueue:
    """The events waiting for one URL, and the one POST in flight.

    Args:
        signer: the headers that sign a body (default: `X-Realtime-Signature` with
            `config.secret`, none without a secret).
    """

    def __init__(self, url: str, config: WebhookConfig, jitter: Callable[[], float],
                 signer: Signer | None = None) -> None:
        self.url = url
        self.target = WebhookTarget.parse(url)
        self._config = config
        self._jitter = jitter
        self._signer = signer or self._native_signature
        #: (event, reported at)
        self._waiting: deque[tuple[Mapping[str, Any], float]] = deque()
        #: the batch in flight or waiting to be retried: (request id, request, events)
        self._batch: tuple[str, bytes, list[tuple[Mapping[str, Any], float]]] | None = None
        self._in_flight = False
        self._attempts = 0
        self._retry_at = 0.0
        self._sent = self._retried = self._dropped = 0
        self._latency = Histogram()

    def add(self, events: Iterable[Mapping[str, Any]], now: float) -> None:
        """Queue events; past `max_queue`, the oldest waiting are dropped."""
        self._waiting.extend((event, now) for event in events)
        excess = len(self._waiting) - self._config.max_queue
        for _ in range(max(0, excess)):
            self._waiting.popleft()
        self._dropped += max(0, excess)

    def take(self, now: float, new_id: Callable[[], str],
             time_ms: int) -> tuple[str, bytes] | None:
        """The next POST to make now, (request id, request bytes), or None."""
        if self._in_flight:
            return None
        if self._batch is not None:  # a failed one, retried before anything else
            if now < self._retry_at:
                return None
            self._in_flight = True
            self._retried += 1
            return self._batch[0], self._batch[1]
        config = self._config
        if not self._waiting or (len(self._waiting) < config.max_batch
                                 and now < self._waiting[0][1] + config.max_delay):
            return None
        batch = [self._waiting.popleft()
                 for _ in range(min(config.max_batch, len(self._waiting)))]
        body = json.dumps({"time_ms": time_ms, "events": [event for event, _ in batch]},
                          separators=(",", ":")).encode()
        request_id = new_id()
        self._batch = (request_id, self._request(body), batch)
        self._in_flight = True
        self._attempts = 0
        return request_id, self._batch[1]

    def answered(self, request_id: str, status: int | None, now: float) -> bool | None:
        """The outcome of our POST (`status` None: no HTTP answer); None if the request is
        not this queue's, else whether the batch is done with (delivered or refused)."""
        if self._batch is None or self._batch[0] != request_id or not self._in_flight:
            return None
        self._in_flight = False
        events = self._batch[2]
        if status is not None and 200 <= status < 300:
            self._sent += len(events)
            for _, reported_at in events:
                self._latency.observe(now - reported_at)
            self._batch = None
            return True
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            self._dropped += len(events)  # the backend refuses them: retrying cannot help
            self._batch = None
            return True
        config = self._config
        ceiling = min(config.backoff_max, config.backoff_min * 2 ** min(self._attempts, 30))
        self._attempts += 1
        self._retry_at = now + ceiling * (0.5 + self._jitter() / 2)
        return False

    def next_deadline(self) -> float | None:
        """When `take` may have a POST that it has not now."""
        if self._in_flight:
            return None
        if self._batch is not None:
            return self._retry_at
        return self._waiting[0][1] + self._config.max_delay if self._waiting else None

    def statistics(self) -> WebhookStatistics:
        """The counters."""
        waiting = len(self._waiting) + (len(self._batch[2]) if self._batch else 0)
        return WebhookStatistics(self.url, self._sent, self._retried, self._dropped, waiting,
                                 self._latency.snapshot())

    def _request(self, body: bytes) -> bytes:
        """The whole HTTP/1.1 request for a body."""
        target = self.target
        headers = [("host", target.host), ("content-type", "application/json"),
                   ("content-length", str(len(body))), ("connection", "close"),
                   ("user-agent", "realtime_proto-webhooks"), *self._signer(body)]
        client = h11.Connection(h11.CLIENT)
        head = client.send(h11.Request(method="POST", target=target.path, headers=headers))
        return (head or b"") + (client.send(h11.Data(data=body)) or b"") + (
            client.send(h11.EndOfMessage()) or b"")

    def _native_signature(self, body: bytes) -> Sequence[tuple[str, str]]:
        secret = self._config.secret
        return () if secret is None else ((SIGNATURE_HEADER.lower(),
                                           body_signature(secret, body)),)
