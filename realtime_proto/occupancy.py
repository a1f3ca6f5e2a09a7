"""Which nodes have subscribers of each channel that is not a presence channel, for the
presence webhooks' `channel.occupied` and `channel.vacated` (`realtime_proto.reporter`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .presence import PresenceTable

__all__ = ["Occupancy"]


class Occupancy:
    """Channel -> the nodes with subscribers of it. A channel that becomes occupied or
    vacated is marked in the presence table's changes, which the reporter reads."""

    __slots__ = ("_nodes", "_presence")

    def __init__(self, presence: PresenceTable) -> None:
        self._nodes: dict[str, set[str]] = {}
        self._presence = presence

    def __contains__(self, channel: object) -> bool:
        return channel in self._nodes

    def __iter__(self) -> Iterator[str]:
        """The occupied channels."""
        return iter(self._nodes)

    def of(self, node: str) -> list[str]:
        """The channels `node` occupies, sorted."""
        return sorted(c for c, nodes in self._nodes.items() if node in nodes)

    def set(self, channel: str, node: str, subscribed: bool) -> None:
        """`node` got its first subscriber of `channel`, or lost its last."""
        nodes = self._nodes.setdefault(channel, set())
        was = bool(nodes)
        if subscribed:
            nodes.add(node)
        else:
            nodes.discard(node)
        if not nodes:
            del self._nodes[channel]
        if was != bool(nodes) and self._presence.changed is not None:
            self._presence.changed.add((channel, ""))

    def replace_node(self, node: str, channels: Iterable[str]) -> None:
        """What a full state of `node` says it occupies, in place of what was known."""
        channels = set(channels)
        for channel in [c for c, nodes in self._nodes.items() if node in nodes]:
            if channel not in channels:
                self.set(channel, node, False)
        for channel in channels:
            self.set(channel, node, True)

    def forget_node(self, node: str) -> None:
        """A node left (or restarted): its channels are no longer occupied by it."""
        for channel in [c for c, nodes in self._nodes.items() if node in nodes]:
            self.set(channel, node, False)
