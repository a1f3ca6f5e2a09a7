"""Webhooks in Pusher's format: `channel_occupied`, `channel_vacated`, `member_added`,
`member_removed` (from the cluster's presence reports: once per cluster-wide transition,
`realtime_proto.reporter`) and `client_event` (from the sender's node), signed with the
app's secret (`X-Pusher-Key`, `X-Pusher-Signature`), queued and retried like the native
webhooks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..actions import ClientEventSent
from ..config import WebhookConfig
from ..message import JsonValue, encode_json
from ..notify import Signer, WebhookQueue
from .apps import PusherApp, sign

__all__ = ["PusherWebhooks", "presence_event", "pusher_signer", "webhook_event"]

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


def pusher_signer(app: PusherApp) -> Signer:
    """The headers that sign a webhook body for `app`: `X-Pusher-Key` and
    `X-Pusher-Signature` (the hex HMAC-SHA256 of the body with the app's secret)."""
    def headers(body: bytes) -> Sequence[tuple[str, str]]:
        return (("x-pusher-key", app.key), ("x-pusher-signature", sign(app.secret, body.decode())))
    return headers


class PusherWebhooks:
    """The Pusher webhooks' queues, one per app and URL: batched, in order, retried with
    back-off like the native webhooks (`realtime_proto.notify`), each request signed for
    its app (none without a `config`)."""

    def __init__(self, apps: Sequence[PusherApp], config: WebhookConfig | None,
                 jitter: Callable[[], float]) -> None:
        self._apps = apps
        self._by_app = {app: [WebhookQueue(url, config, jitter, pusher_signer(app))
                              for url in config.urls] for app in apps} if config else {}
        #: every queue
        self.queues = [queue for queues in self._by_app.values() for queue in queues]

    def add_client_event(self, action: ClientEventSent, now: float) -> None:
        """Queue a client event sent here, when it is an app's."""
        if self.queues and (found := webhook_event(self._apps, action)) is not None:
            for queue in self._by_app[found[0]]:
                queue.add((found[1],), now)

    def add_presence(self, events: Iterable[Mapping[str, Any]], now: float) -> None:
        """Queue the cluster's presence reports that are an app's."""
        for event in events if self.queues else ():
            if (found := presence_event(self._apps, event)) is not None:
                for queue in self._by_app[found[0]]:
                    queue.add((found[1],), now)

    def statistics(self) -> dict[str, int]:
        """Events sent and dropped, POSTs retried, over every queue (for `/metrics`)."""
        counts = {"sent": 0, "retried": 0, "dropped": 0}
        for queue in self.queues:
            statistics = queue.statistics()
            counts["sent"] += statistics.sent
            counts["retried"] += statistics.retried
            counts["dropped"] += statistics.dropped
        return counts
