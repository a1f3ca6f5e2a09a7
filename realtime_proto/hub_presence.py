"""The Hub's presence: who is in a presence channel, over every node, and telling them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .channels import ChannelKind, channel_kind
from .cluster import ClusterState
from .connection import Connection
from .events import ConnectionId
from .hub_outbox import Outbox
from .message import JsonValue, MessageType
from .presence import Member

__all__ = ["Presence"]


class Presence:
    """Members entering and leaving presence channels (the table itself is the cluster's:
    `ClusterState.presence`), `user.joined` / `user.left` and `presence.sync`."""

    def __init__(self, out: Outbox, cluster: ClusterState) -> None:
        self._out = out
        self._cluster = cluster

    def members(self, channel: str) -> list[Member]:
        """The members of a presence channel, over every node."""
        return self._cluster.presence.members(channel)

    def channels(self) -> list[str]:
        """The presence channels with members, over every node."""
        return self._cluster.presence.channels()

    def enter(self, conn: Connection, channel: str, info: Mapping[str, Any] | None,
              now: float, replayed: JsonValue = None) -> None:
        """A new subscriber of a presence channel becomes a member (announced if it is the
        user's first connection there) and is sent the members (with `replayed`, the number
        of messages that follow, when the subscription asked for some); nothing on other
        channels or for a connection without an identity."""
        identity = conn.member_id(channel)
        if channel_kind(channel) is not ChannelKind.PRESENCE or identity is None:
            return
        member = Member(user_id=identity, info=dict(info or {}))
        first, actions = self._cluster.join(channel, conn.id, member)
        self._out.actions.extend(actions)
        if first:
            self.announce([(channel, member)], "user.joined", now, exclude=conn.id)
        self.sync(conn, channel, now, replayed)

    def exit(self, conn: Connection, channel: str, now: float) -> None:
        """A subscriber left a channel: on a presence channel, its membership ends
        (`user.left` when it was the user's last connection there)."""
        if channel_kind(channel) is ChannelKind.PRESENCE and conn.member_id(channel) is not None:
            member, actions = self._cluster.leave(channel, conn.id)
            self._out.actions.extend(actions)
            if member is not None:
                self.announce([(channel, member)], "user.left", now)

    def sync(self, conn: Connection, channel: str, now: float,
             replayed: JsonValue = None) -> None:
        """`presence.sync` with the members, on a presence channel (and `replayed`, when
        given)."""
        if channel_kind(channel) is ChannelKind.PRESENCE:
            sync: dict[str, JsonValue] = {"members": [m.to_dict()
                                                      for m in self.members(channel)]}
            if replayed is not None:
                sync["replayed"] = replayed
            self._out.reply(conn, "presence.sync", sync, now, channel)

    def announce(self, changes: list[tuple[str, Member]], event: str, now: float,
                 exclude: ConnectionId | None = None) -> None:
        """Tell each channel's local subscribers that a member joined or left."""
        out = self._out
        for channel, member in changes:
            if channel in out.subscribers:
                _, payload = out.encode(MessageType.EVENT, now, channel=channel, event=event,
                                        data=member.to_dict())
                out.deliver(out.subscribers[channel], payload, exclude=exclude)
