"""Presence members across nodes: each node owns its entries; a user is one member."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, final

__all__ = ["Entry", "Member", "PresenceTable"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """One user present on a channel, however many connections it has."""

    user_id: str
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The member as it travels on the wire."""
        return {"user_id": self.user_id, "info": dict(self.info)}


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One connection's presence on a channel, owned by the node it is connected to."""

    channel: str
    node_id: str
    connection_id: str
    member: Member


class PresenceTable:
    """Entries of every node by channel, with the per-user counts that decide join/leave.

    `add` reports True only for a user's first entry on a channel, `remove` returns the
    member only for its last: that is what makes `user.joined` and `user.left` fire once
    per user cluster-wide, however many connections and nodes it has.
    """

    def __init__(self) -> None:
        self._entries: dict[str, dict[tuple[str, str], Member]] = {}
        self._by_node: dict[str, set[tuple[str, str]]] = {}
        #: channel -> user id -> number of entries; keeps join/leave decisions O(1)
        self._counts: dict[str, dict[str, int]] = {}

    def add(self, entry: Entry) -> bool:
        """Add an entry; True when its user was not present on the channel before."""
        entries = self._entries.setdefault(entry.channel, {})
        key = (entry.node_id, entry.connection_id)
        if key in entries:
            self._uncount(entry.channel, entries[key].user_id)
        entries[key] = entry.member
        counts = self._counts.setdefault(entry.channel, {})
        first = entry.member.user_id not in counts
        counts[entry.member.user_id] = counts.get(entry.member.user_id, 0) + 1
        self._by_node.setdefault(entry.node_id, set()).add((entry.channel, entry.connection_id))
        return first

    def remove(self, channel: str, node_id: str, connection_id: str) -> Member | None:
        """Remove an entry; the member when that was its user's last entry on the channel."""
        entries = self._entries.get(channel)
        if entries is None:
            return None
        member = entries.pop((node_id, connection_id), None)
        owned = self._by_node.get(node_id)
        if owned is not None:
            owned.discard((channel, connection_id))
            if not owned:
                del self._by_node[node_id]
        if not entries:
            del self._entries[channel]
        if member is None or self._uncount(channel, member.user_id):
            return None
        return member

    def remove_node(self, node_id: str) -> list[tuple[str, Member]]:
        """Forget every entry of a node; the (channel, member) pairs that left."""
        left = []
        for channel, connection_id in sorted(self._by_node.get(node_id, ())):
            member = self.remove(channel, node_id, connection_id)
            if member is not None:
                left.append((channel, member))
        return left

    def replace_node(self, node_id: str, entries: Iterable[Entry]) -> tuple[
        list[tuple[str, Member]], list[tuple[str, Member]]
    ]:
        """Replace a node's entries with a full snapshot; (joined, left) pairs."""
        new = {(e.channel, e.connection_id): e for e in entries if e.node_id == node_id}
        old = set(self._by_node.get(node_id, ()))
        left = []
        for channel, connection_id in sorted(old - new.keys()):
            member = self.remove(channel, node_id, connection_id)
            if member is not None:
                left.append((channel, member))
        joined = []
        for key in sorted(new.keys() - old):
            entry = new[key]
            if self.add(entry):
                joined.append((entry.channel, entry.member))
        return joined, left

    def channels(self) -> list[str]:
        """The channels with members, on any node."""
        return sorted(self._entries)

    def members(self, channel: str) -> list[Member]:
        """The channel's members, one per user, in a stable order."""
        seen: dict[str, Member] = {}
        for key in sorted(self._entries.get(channel, {})):
            member = self._entries[channel][key]
            seen.setdefault(member.user_id, member)
        return list(seen.values())

    def entries_of(self, node_id: str) -> list[Entry]:
        """Every entry a node owns (what it announces in a full sync)."""
        return [
            Entry(channel=c, node_id=node_id, connection_id=k,
                  member=self._entries[c][(node_id, k)])
            for c, k in sorted(self._by_node.get(node_id, ()))
        ]

    def _uncount(self, channel: str, user_id: str) -> bool:
        """Drop one entry from the user's count; True while the user is still present."""
        counts = self._counts[channel]
        counts[user_id] -= 1
        if counts[user_id]:
            return True
        del counts[user_id]
        if not counts:
            del self._counts[channel]
        return False
