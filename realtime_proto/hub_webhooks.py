"""The webhook events a Hub reports: presence transitions, connections, client events."""

from __future__ import annotations

from .actions import Notify
from .cluster import ClusterState
from .config import HubConfig
from .connection import Connection
from .hub_outbox import Outbox
from .message import JsonValue
from .reporter import CHANNEL, Transition

__all__ = ["WebhookEvents"]


class WebhookEvents:
    """Makes webhook events (an id unique per node, run and event) and emits them as
    `Notify` actions."""

    def __init__(self, config: HubConfig, out: Outbox, cluster: ClusterState) -> None:
        self._config = config
        self._out = out
        self._cluster = cluster
        self._made = 0

    def event(self, name: str, now: float, **fields: JsonValue) -> dict[str, JsonValue]:
        """One webhook event: its id, its name, its fields and the time."""
        self._made += 1
        return {"id": f"{self._config.node_id}:{self._cluster.incarnation}:{self._made}",
                "name": name, **fields, "time_ms": self._out.unix_ms(now)}

    def presence(self, transitions: list[Transition], now: float) -> None:
        """The events of the presence transitions this node reports."""
        events = []
        for (channel, user_id), present in transitions:
            if user_id == CHANNEL:
                events.append(self.event(
                    "channel.occupied" if present else "channel.vacated", now, channel=channel))
                continue
            event = self.event("member.added" if present else "member.removed", now,
                               channel=channel, user_id=user_id)
            member = self._cluster.presence.member(channel, user_id) if present else None
            if member is not None:
                event["info"] = dict(member.info)
            events.append(event)
        self._out.actions.append(Notify(tuple(events)))

    def connection(self, name: str, conn: Connection, now: float) -> None:
        """`connection.opened` / `connection.closed` of a user's connection, when asked
        for (this node reports its own connections)."""
        if self._config.connection_webhooks and conn.user is not None:
            self._out.actions.append(Notify((self.event(
                name, now, connection_id=conn.id, user_id=conn.user.id,
                transport=conn.transport),)))
