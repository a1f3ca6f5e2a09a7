"""A transport straight into the Hub, for tests and for embedding without sockets."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, assert_never

from ..actions import (
    Authorize,
    BrokerPublish,
    BrokerSubscribe,
    BrokerUnsubscribe,
    ClientEventSent,
    Deliver,
    DeliverBundle,
    Disconnect,
    HistoryAppend,
    HistoryRead,
    Notify,
    SaveReadPosition,
)
from ..callbacks import authorization_answer
from ..errors import LocalProtocolError
from ..events import (
    ConnectionClosed,
    ConnectionId,
    ConnectionOpened,
    MessageReceived,
    User,
)
from ..history import MemoryStore
from ..hub import Hub

__all__ = ["BrokerAction", "MemoryTransport"]

BrokerAction = BrokerPublish | BrokerSubscribe | BrokerUnsubscribe


class MemoryTransport:
    """Connects in-memory clients to a Hub and runs its actions synchronously.

    Each client's messages are kept decoded in `inbox[connection_id]`; closes are kept in
    `closed[connection_id]` as (code, reason). Authorization callbacks run at once (they
    must be plain functions here). Broker actions go to `on_broker`, if given; a Hub with
    shared history needs the `store` that answers its appends and reads.
    """

    def __init__(self, hub: Hub, *, clock: Callable[[], float],
                 new_id: Callable[[], str],
                 on_broker: Callable[[BrokerAction], None] | None = None,
                 store: MemoryStore | None = None) -> None:
        self.hub = hub
        self._clock = clock
        self._new_id = new_id
        self._on_broker = on_broker
        self._store = store
        self.inbox: dict[ConnectionId, list[dict[str, Any]]] = {}
        self.closed: dict[ConnectionId, tuple[int, str]] = {}
        #: the webhook events the Hub reported (`Notify`), in order
        self.notified: list[Mapping[str, Any]] = []
        #: the client events the Hub reported (`ClientEventSent`, for Pusher webhooks)
        self.client_events: list[ClientEventSent] = []
        self.authorize_calls = 0
        self.run()

    def connect(self, user: User | None = None) -> ConnectionId:
        """Open a client connection; its id."""
        connection_id = ConnectionId(self._new_id())
        self.inbox[connection_id] = []
        self.hub.handle(ConnectionOpened(connection_id=connection_id, user=user), now=self._clock())
        self.run()
        return connection_id

    def send(self, connection_id: ConnectionId, message: dict[str, Any] | str | bytes) -> None:
        """A client sends a message (a dict, or raw JSON text or bytes)."""
        self.hub.handle(MessageReceived(connection_id=connection_id, data=message),
                        now=self._clock())
        self.run()

    def close(self, connection_id: ConnectionId) -> None:
        """A client goes away."""
        self.hub.handle(ConnectionClosed(connection_id=connection_id), now=self._clock())
        self.run()

    def take(self, connection_id: ConnectionId) -> list[dict[str, Any]]:
        """Drain one client's received messages."""
        messages, self.inbox[connection_id] = self.inbox[connection_id], []
        return messages

    def _deliver(self, connection_ids: Iterable[ConnectionId],
                 payloads: Iterable[bytes]) -> None:
        messages = [json.loads(payload) for payload in payloads]
        for connection_id in connection_ids:
            self.inbox.setdefault(connection_id, []).extend(messages)

    def run(self) -> None:
        """Carry out every pending Hub action."""
        while actions := self.hub.actions():
            for action in actions:
                match action:
                    case Deliver():
                        self._deliver(action.connection_ids, (action.payload,))
                    case DeliverBundle():
                        self._deliver(action.connection_ids, action.payloads)
                    case Disconnect():
                        self.closed[action.connection_id] = (action.code, action.reason)
                    case Notify():
                        self.notified.extend(action.events)
                    case Authorize():
                        self._authorize(action)
                    case BrokerPublish() | BrokerSubscribe() | BrokerUnsubscribe():
                        if self._on_broker is not None:
                            self._on_broker(action)
                    case HistoryAppend():
                        self.hub.handle(self._shared().append(action, self._clock()),
                                        now=self._clock())
                    case HistoryRead():
                        self.hub.handle(self._shared().read(action, self._clock()),
                                        now=self._clock())
                    case SaveReadPosition():
                        self._shared().save_read(action)
                    case ClientEventSent():
                        self.client_events.append(action)
                    case _:
                        assert_never(action)

    def _shared(self) -> MemoryStore:
        if self._store is None:
            raise LocalProtocolError(
                "a Hub with shared history needs MemoryTransport(store=...)")
        return self._store

    def _authorize(self, action: Authorize) -> None:
        self.authorize_calls += 1
        try:
            result = action.callback(action.connection, action.channel)
            if inspect.isawaitable(result):
                raise TypeError("MemoryTransport runs plain callbacks only")
        except Exception as error:  # the application's bug: refuse, keep serving
            answer = authorization_answer(action.request_id, error=error)
        else:
            answer = authorization_answer(action.request_id, result)
        self.hub.handle(answer, now=self._clock())
