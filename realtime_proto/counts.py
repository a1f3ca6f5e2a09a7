"""Subscribers per channel over the cluster, without asking the other nodes.

Each node announces its own counts: the channels whose count changed, at most once per
sweep (`cnt`), and all of them in its full state (at start, after a broker outage). Every
node keeps what the others last announced, so a count is answered from memory: the
other nodes' part is at most a sweep (and the broker's delay) old.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SubscriptionCounts"]


class SubscriptionCounts:
    """This node's subscribers per channel, and the other nodes' as they announced them."""

    def __init__(self) -> None:
        #: this node's channels -> subscribers
        self.local: dict[str, int] = {}
        #: this node's channels whose count changed since it last announced them
        self.changed: set[str] = set()
        #: channel -> other node -> subscribers there
        self._others: dict[str, dict[str, int]] = {}

    def count(self, channel: str, subscribers: int) -> None:
        """This node's count of a channel changed (0: no subscriber left)."""
        if subscribers:
            self.local[channel] = subscribers
        else:
            self.local.pop(channel, None)
        self.changed.add(channel)

    def announcement(self) -> dict[str, int]:
        """The changed counts to announce (0 for a channel left), and none changed now."""
        changed, self.changed = self.changed, set()
        return {channel: self.local.get(channel, 0) for channel in changed}

    def update(self, node: str, counts: Mapping[str, object]) -> None:
        """Another node's announcement; a malformed count is ignored."""
        for channel, value in counts.items():
            if type(value) is not int or value < 0:
                continue
            nodes = self._others.setdefault(channel, {})
            if value:
                nodes[node] = value
            else:
                nodes.pop(node, None)
                if not nodes:
                    del self._others[channel]

    def replace(self, node: str, counts: Mapping[str, object]) -> None:
        """Another node's full state: every count of that node."""
        self.forget(node)
        self.update(node, counts)

    def forget(self, node: str) -> None:
        """Another node left (or restarted): its subscribers are gone."""
        for channel in [c for c, nodes in self._others.items() if node in nodes]:
            nodes = self._others[channel]
            del nodes[node]
            if not nodes:
                del self._others[channel]

    def total(self, channel: str) -> int:
        """The subscribers of a channel over every node."""
        others = self._others.get(channel)
        return self.local.get(channel, 0) + (sum(others.values()) if others else 0)

    def totals(self) -> dict[str, int]:
        """Every channel with subscribers on some node, and how many over every node."""
        totals = dict(self.local)
        for channel, nodes in self._others.items():
            totals[channel] = totals.get(channel, 0) + sum(nodes.values())
        return totals
