"""The Node's outgoing webhooks: the native presence webhooks and the Pusher-format ones,
each a retrying queue per URL (`notify.py`; Pusher's per app too, `pusher/webhooks.py`)."""

from __future__ import annotations

from collections.abc import Callable

from .actions import ClientEventSent, Notify, PostWebhook
from .events import WebhookPosted
from .notify import WebhookQueue, WebhookStatistics, response_status
from .pusher.webhooks import PusherWebhooks
from .sockets import Sockets

__all__ = ["Webhooks"]


class Webhooks:
    """What the Hub reports, as webhook requests (`PostWebhook` actions)."""

    def __init__(self, sockets: Sockets, jitter: Callable[[], float]) -> None:
        self._sockets = sockets
        config = sockets.config
        #: one queue per webhook URL (`jitter`, a float in [0, 1), spreads their retries)
        self._native = [WebhookQueue(url, config.webhooks, jitter)
                        for url in config.webhooks.urls] if config.webhooks else []
        self._pusher = PusherWebhooks(config.pusher_apps, config.pusher_webhook, jitter)
        #: every queue, native and Pusher
        self._queues = self._native + self._pusher.queues

    def answered(self, event: WebhookPosted, now: float) -> None:
        """A webhook request's outcome: retried later by its queue if it failed."""
        status = response_status(event.response) if event.error is None else None
        for queue in self._queues:
            queue.answered(event.request_id, status, now)

    def client_event(self, action: ClientEventSent, now: float) -> None:
        """A client event, for the Pusher `client_event` webhook."""
        self._pusher.add_client_event(action, now)

    def notify(self, action: Notify, now: float) -> None:
        """Presence transitions this node reports, for every webhook."""
        for queue in self._native:
            queue.add(action.events, now)
        self._pusher.add_presence(action.events, now)

    def take(self, now: float) -> None:
        """The requests due now (one per queue at most)."""
        sockets = self._sockets
        for queue in self._queues:
            if (post := queue.take(now, sockets.new_id,
                                   sockets.epoch.unix_ms_at(now))) is not None:
                sockets.actions.append(PostWebhook(post[0], queue.target, post[1]))

    def next_deadline(self, deadline: float) -> float:
        """The earlier of `deadline` and the next retry."""
        for queue in self._queues:
            due = queue.next_deadline()
            if due is not None and due < deadline:
                deadline = due
        return deadline

    def statistics(self) -> tuple[WebhookStatistics, ...]:
        """Each native queue's counters."""
        return tuple(queue.statistics() for queue in self._native)

    def pusher_statistics(self) -> dict[str, int]:
        """The Pusher webhooks' events sent and dropped and POSTs retried."""
        return self._pusher.statistics()
