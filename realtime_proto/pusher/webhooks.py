"""Webhooks in Pusher's format: `channel_occupied`, `channel_vacated`, `member_added`,
`member_removed` (from the cluster's presence reports: once per cluster-wide transition,
`realtime_proto.reporter`) and `client_event` (from the sender's node), signed with the
app's secret (`X-Pusher-Key`, `X-Pusher-Signature`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import h11

from ..actions import ClientEventSent
from ..message import JsonValue, encode_json
from ..webhook import WebhookTarget
from .apps import PusherApp, sign

__all__ = ["delivered", "presence_event", "pusher_webhook_request", "webhook_event"]

#: the cluster's presence reports (`Notify`), by their Pusher names
_PRESENCE = {"channel.occupied": "channel_occupied", "channel.vacated": "channel_vacated",
             "member.added": "member_added", "member.removed": "member_removed"}


def _app_of(apps: Sequence[PusherApp], channel: str) -> tuple[PusherApp, str] | None:
    """The app a Hub channel belongs to, and its name in that app."""
    name, _, namespace = channel.partition(":")
    app = next((a for a in apps if a.namespace == (f":{namespace}" if namespace else "")),
               None)
    return None if app is None else (app, name)


def presence_event(apps: Sequence[PusherApp],
                   event: Mapping[str, Any]) -> tuple[PusherApp, JsonValue] | None:
    """The app and the Pusher webhook event of one of the cluster's presence reports;
    None for other reports, and for a channel that is no app's."""
    name = _PRESENCE.get(event.get("name", ""))
    found = _app_of(apps, str(event.get("channel", ""))) if name else None
    if name is None or found is None:
        return None
    app, channel = found
    pusher: dict[str, JsonValue] = {"name": name, "channel": channel}
    if name.startswith("member_"):
        pusher["user_id"] = str(event.get("user_id", "")).removesuffix(app.namespace)
    return app, pusher


def webhook_event(apps: Sequence[PusherApp],
                  action: ClientEventSent) -> tuple[PusherApp, JsonValue] | None:
    """The app and the webhook event of a client event sent here; None when it is not an
    app's (a native channel beside several apps, a native client event)."""
    found = _app_of(apps, action.channel)
    if found is None:
        return None
    app, name = found
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
