"""Which cluster-wide presence transitions to report to the backend, once per cluster.

Every node sees the whole presence table (`cluster.py`); each would see a user's first
connection cluster-wide, so one node only may say so. The reporter is the node with the
smallest id among those it knows to be alive (itself only while its broker is
connected): every node agrees on it once their tables of live nodes agree.

The reporter compares the presence table with what the cluster has reported so far (the
*reported set*: occupied channels and present members) and reports a key whose state has
differed for `settle` seconds (a flap shorter than that is no transition). It announces
each batch it reports (`rep`, with a version), and every node applies that to its own
reported set, so that the next reporter (after a SIGKILL, a broker outage, a new node
with a smaller id) starts from what was actually reported: it reports what is still owed
and nothing twice. A full state carries the reported set and its version too, and a node
takes a newer one than its own (after a broker outage, at start).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["CHANNEL", "Key", "Reporter", "Transition"]

#: (channel, user id); the user id is `CHANNEL` for the channel's own occupancy
Key = tuple[str, str]
#: the user id of a channel's own key
CHANNEL = ""
#: (key, present now)
Transition = tuple[Key, bool]


class Reporter:
    """The reported set of one node, and the transitions it owes when it reports."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        #: the keys the cluster has reported present
        self.reported: set[Key] = set()
        #: batches reported so far, cluster-wide (as far as this node knows)
        self.version = 0
        #: keys that differ from the reported set -> since when (while reporting)
        self._pending: dict[Key, float] = {}
        #: compare every key at the next evaluation (after taking over, or a new set)
        self._full = True

    def evaluate(self, changed: Iterable[Key], is_present: Callable[[Key], bool],
                 everything: Callable[[], set[Key]], now: float,
                 reporting: bool) -> list[Transition]:
        """The transitions to report now, in a per-channel order (occupied, added,
        removed, vacated); the reported set and version move with them.

        `changed` are the keys the presence table changed since the last call;
        `everything` gives every key present (asked for after a takeover or a new
        reported set). A node that is not `reporting` keeps no pending keys.
        """
        if not reporting:
            self._pending.clear()
            self._full = True
            return []
        pending = self._pending
        if self._full:
            self._full = False
            for key in everything() ^ self.reported:
                pending.setdefault(key, now)
        for key in changed:
            pending.setdefault(key, now)
        out: list[Transition] = []
        for key, since in list(pending.items()):
            state = is_present(key)
            if state == (key in self.reported):
                del pending[key]  # as reported again: a flap, no transition
            elif now - since >= self.settle:
                del pending[key]
                out.append((key, state))
        if out:
            self._apply(out, self.version + 1)
            out.sort(key=_order)
        return out

    def apply(self, transitions: Iterable[Transition], version: int) -> None:
        """Take in a batch another node reported; compare every key at the next
        evaluation (this node may be the reporter by then, or already: two nodes think
        so for a moment after a partition heals)."""
        self._apply(transitions, version)
        self._full = True

    def _apply(self, transitions: Iterable[Transition], version: int) -> None:
        for key, state in transitions:
            if state:
                self.reported.add(key)
            else:
                self.reported.discard(key)
        self.version = max(self.version, version)

    def adopt(self, reported: Iterable[Key], version: int) -> None:
        """A full state's reported set, taken when newer than this node's."""
        if version > self.version:
            self.reported = set(reported)
            self.version = version
            self._full = True


def _order(transition: Transition) -> tuple[str, int, str]:
    """Per channel: occupied, members added, members removed, vacated."""
    (channel, user), present = transition
    if user == CHANNEL:
        return channel, 0 if present else 3, user
    return channel, 1 if present else 2, user
