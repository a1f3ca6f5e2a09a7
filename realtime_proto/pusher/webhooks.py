"""Webhooks in Pusher's format: `member_added`, `member_removed` and `client_event`,
signed with the app's secret (`X-Pusher-Key`, `X-Pusher-Signature`)."""

from __future__ import annotations

from collections.abc import Sequence

import h11

from ..actions import ClientEventSent, MemberChanged
from ..message import JsonValue, encode_json
from ..webhook import WebhookTarget
from .apps import PusherApp, sign

__all__ = ["delivered", "pusher_webhook_request", "webhook_event"]


def webhook_event(apps: Sequence[PusherApp],
                  action: MemberChanged | ClientEventSent) -> tuple[PusherApp, JsonValue] | None:
    """The app and the webhook event of something the Hub reported; None when it is not
    an app's (a native channel beside several apps, a native client event)."""
    name, _, namespace = action.channel.partition(":")
    app = next((a for a in apps if a.namespace == (f":{namespace}" if namespace else "")),
               None)
    if app is None:
        return None
    if isinstance(action, MemberChanged):
        return app, {"name": "member_added" if action.joined else "member_removed",
                     "channel": name, "user_id": action.user_id}
    if not action.event.startswith("client-"):
        return None
    event: dict[str, JsonValue] = {
        "name": "client_event", "channel": name, "event": action.event,
        "data": encode_json(action.data).decode(), "socket_id": action.connection_id}
    if action.user_id is not None and name.startswith("presence-"):
        event["user_id"] = action.user_id
    return app, event


def pusher_webhook_request(target: WebhookTarget, app: PusherApp,
                           events: Sequence[JsonValue], unix_ms: int) -> bytes:
    """The whole HTTP/1.1 request that POSTs `events` to `target`, signed for `app`."""
    body = encode_json({"time_ms": unix_ms, "events": list(events)})
    client = h11.Connection(h11.CLIENT)
    head = client.send(h11.Request(method="POST", target=target.path, headers=[
        ("host", target.host), ("content-type", "application/json"),
        ("content-length", str(len(body))), ("x-pusher-key", app.key),
        ("x-pusher-signature", sign(app.secret, body.decode())), ("connection", "close")]))
    return (head or b"") + (client.send(h11.Data(data=body)) or b"") + (
        client.send(h11.EndOfMessage()) or b"")


def delivered(response: bytes) -> bool:
    """Whether a webhook's raw HTTP response has a 2xx status."""
    status = response.split(b" ", 2)[1:2]
    return bool(status) and status[0][:1] == b"2" and len(status[0]) == 3
