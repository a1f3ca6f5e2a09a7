"""The Node's outgoing webhooks: the native presence webhooks (one retrying queue per URL,
`notify.py`) and the Pusher-format ones (`pusher/webhooks.py`, one request per app per
call, not retried)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from .actions import ClientEventSent, Notify, PostWebhook
from .events import WebhookPosted
from .message import JsonValue
from .notify import WebhookQueue, WebhookStatistics, response_status
from .pusher.apps import PusherApp
from .pusher.webhooks import presence_event, pusher_webhook_request, webhook_event
from .sockets import Sockets

__all__ = ["Webhooks"]


class Webhooks:
    """What the Hub reports, as webhook requests (`PostWebhook` actions)."""

    def __init__(self, sockets: Sockets, jitter: Callable[[], float]) -> None:
        self._sockets = sockets
        config = sockets.config
        #: one queue per webhook URL (`jitter`, a float in [0, 1), spreads their retries)
        self._queues = [WebhookQueue(url, config.webhooks, jitter)
                        for url in config.webhooks.urls] if config.webhooks else []
        #: Pusher webhook events waiting for the end of this call, by app
        self._pusher_events: dict[PusherApp, list[JsonValue]] = {}
        #: Pusher webhook requests by outcome, and those still on their way
        self.pusher_outcomes: Counter[str] = Counter()
        self._pusher_posts: set[str] = set()

    def answered(self, event: WebhookPosted, now: float) -> None:
        """A webhook request's outcome: retried later by its queue if it failed (native)."""
        status = response_status(event.response) if event.error is None else None
        if event.request_id in self._pusher_posts:  # not retried (docs/pusher.md)
            self._pusher_posts.discard(event.request_id)
            delivered = status is not None and 200 <= status < 300
            self.pusher_outcomes["sent" if delivered else "failed"] += 1
        else:
            for queue in self._queues:
                queue.answered(event.request_id, status, now)

    def client_event(self, action: ClientEventSent) -> None:
        """A client event, for the Pusher `client_event` webhook."""
        config = self._sockets.config
        found = webhook_event(config.pusher_apps, action)
        if found is not None and config.pusher_webhook is not None:
            self._pusher_events.setdefault(found[0], []).append(found[1])

    def notify(self, action: Notify, now: float) -> None:
        """Presence transitions this node reports, for every webhook."""
        for queue in self._queues:
            queue.add(action.events, now)
        config = self._sockets.config
        if config.pusher_webhook is not None:
            for event in action.events:
                found = presence_event(config.pusher_apps, event)
                if found is not None:
                    self._pusher_events.setdefault(found[0], []).append(found[1])

    def take(self, now: float) -> None:
        """The native requests due now (one per queue at most)."""
        sockets = self._sockets
        for queue in self._queues:
            if (post := queue.take(now, sockets.new_id,
                                   sockets.epoch.unix_ms_at(now))) is not None:
                sockets.actions.append(PostWebhook(post[0], queue.target, post[1]))

    def flush_pusher(self, now: float) -> None:
        """The Pusher events of this call: one request per app."""
        target = self._sockets.config.pusher_webhook
        if not self._pusher_events or target is None:
            return
        sockets = self._sockets
        unix_ms = sockets.epoch.unix_ms_at(now)
        for app, events in self._pusher_events.items():
            request_id = sockets.new_id()
            self._pusher_posts.add(request_id)
            sockets.actions.append(PostWebhook(request_id, target, pusher_webhook_request(
                target, app, events, unix_ms)))
        self._pusher_events = {}

    def next_deadline(self, deadline: float) -> float:
        """The earlier of `deadline` and the next retry."""
        for queue in self._queues:
            due = queue.next_deadline()
            if due is not None and due < deadline:
                deadline = due
        return deadline

    def statistics(self) -> tuple[WebhookStatistics, ...]:
        """Each native queue's counters."""
        return tuple(queue.statistics() for queue in self._queues)
