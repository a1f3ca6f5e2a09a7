"""The authorization webhook: ask the application's backend over HTTP, cache the answer.

The request and the reading of the answer are pure; the adapter moves the bytes.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, final
from urllib.parse import urlsplit

import h11

from .actions import ConnectionInfo

__all__ = ["WebhookAnswer", "WebhookCache", "WebhookTarget", "read_answer", "webhook_request"]


@final
@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """Where the webhook lives."""

    host: str
    port: int
    secure: bool
    path: str

    @classmethod
    def parse(cls, url: str) -> WebhookTarget:
        """From an http:// or https:// URL.

        Raises:
            ValueError: another scheme, or no host.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the auth webhook must be an http:// or https:// URL, not {url!r}")
        secure = parts.scheme == "https"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or (443 if secure else 80), secure, path)


@final
@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """What the backend decided: allowed, with presence info."""

    allowed: bool
    info: Mapping[str, Any] | None = None


def webhook_request(target: WebhookTarget, connection: ConnectionInfo, channel: str) -> bytes:
    """The whole HTTP/1.1 request: `POST` a JSON description of who wants what."""
    body = json.dumps({"connection_id": connection.id, "user_id": connection.user_id,
                       "channel": channel, "info": dict(connection.info)}).encode()
    client = h11.Connection(h11.CLIENT)
    head = client.send(h11.Request(method="POST", target=target.path, headers=[
        ("host", target.host), ("content-type", "application/json"),
        ("content-length", str(len(body))), ("connection", "close")]))
    return (head or b"") + (client.send(h11.Data(data=body)) or b"") + (
        client.send(h11.EndOfMessage()) or b"")


def read_answer(response: bytes) -> WebhookAnswer:
    """The backend's answer from its raw HTTP response: 200 with `{"allowed": true}`
    (and optional `info`) allows; anything else refuses.

    Raises:
        ValueError: the bytes are not a complete HTTP response.
    """
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/", headers=[("host", "x"),
                                                                ("content-length", "0")]))
    client.send(h11.EndOfMessage())
    client.receive_data(response)
    client.receive_data(b"")
    status, body = 0, bytearray()
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as error:
            raise ValueError(f"bad webhook response: {error}") from None
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            raise ValueError("incomplete webhook response")
    if status != 200:
        return WebhookAnswer(False)
    try:
        answer = json.loads(body)
    except ValueError:
        return WebhookAnswer(False)
    if not isinstance(answer, dict) or answer.get("allowed") is not True:
        return WebhookAnswer(False)
    info = answer.get("info")
    return WebhookAnswer(True, info if isinstance(info, dict) else None)


class WebhookCache:
    """Answers by (user, channel) for `ttl` seconds, at most `size` of them."""

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self._ttl = ttl
        self._size = size
        self._answers: OrderedDict[tuple[str | None, str], tuple[float, WebhookAnswer]] = (
            OrderedDict())

    def get(self, user_id: str | None, channel: str, now: float) -> WebhookAnswer | None:
        """A cached answer still fresh, or None."""
        cached = self._answers.get((user_id, channel))
        if cached is None or cached[0] <= now:
            return None
        return cached[1]

    def put(self, user_id: str | None, channel: str, answer: WebhookAnswer, now: float) -> None:
        """Remember an answer."""
        self._answers[(user_id, channel)] = (now + self._ttl, answer)
        self._answers.move_to_end((user_id, channel))
        while len(self._answers) > self._size:
            self._answers.popitem(last=False)
