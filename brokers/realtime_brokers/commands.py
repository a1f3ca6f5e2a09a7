"""The bounded, ordered command queue of one broker client.

``publish``, ``subscribe`` and ``unsubscribe`` commands wait here, in call order, until
the supervisor sends them. The queue holds at most ``limit`` commands: when full, the
oldest waiting publish is dropped (and counted); if none is waiting, the subscription
changes are folded into their net effect, one command per topic. It also tracks two
topic sets: ``wanted`` (after every queued command: what the listener asked for) and
``applied`` (after the commands sent so far: what a new connection must subscribe).
"""

from __future__ import annotations

import enum
import time
from collections import deque

__all__ = ["Command", "CommandQueue", "Op"]


class Op(enum.Enum):
    """What a command does."""

    PUBLISH = enum.auto()  #: send ``data`` on ``topic``
    SUBSCRIBE = enum.auto()  #: start receiving ``topic``
    UNSUBSCRIBE = enum.auto()  #: stop receiving ``topic``


class Command:
    """One queued command; ``failures`` counts the connections it saw fail under it."""

    __slots__ = ("data", "failures", "op", "queued_at", "topic")

    def __init__(self, op: Op, topic: str, data: bytes = b"") -> None:
        self.op = op
        self.topic = topic
        self.data = data
        self.failures = 0
        #: monotonic seconds when it was queued (publish latency)
        self.queued_at = time.monotonic()


class CommandQueue:
    """Commands in call order, at most ``limit`` of them (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.wanted: set[str] = set()
        self.applied: set[str] = set()
        self.dropped = 0
        self.publishes = 0
        """Publishes waiting in the queue."""
        self._commands: deque[Command] = deque()
        self._taken: Command | None = None

    def __len__(self) -> int:
        return len(self._commands)

    def publish(self, topic: str, data: bytes) -> None:
        """Queue a publish."""
        self._reserve()
        self._commands.append(Command(Op.PUBLISH, topic, data))
        self.publishes += 1

    def subscribe(self, topic: str) -> bool:
        """Queue a subscription unless ``topic`` is already wanted; True if queued."""
        if topic in self.wanted:
            return False
        self._reserve()
        self.wanted.add(topic)
        self._commands.append(Command(Op.SUBSCRIBE, topic))
        return True

    def unsubscribe(self, topic: str) -> bool:
        """Queue an unsubscription if ``topic`` is wanted; True if queued."""
        if topic not in self.wanted:
            return False
        self._reserve()
        self.wanted.discard(topic)
        self._commands.append(Command(Op.UNSUBSCRIBE, topic))
        return True

    def pop(self) -> Command:
        """Take the next command to send."""
        command = self._commands.popleft()
        if command.op is Op.PUBLISH:
            self.publishes -= 1
        else:
            self._taken = command
        return command

    def sent(self, command: Command) -> None:
        """Record that ``command`` reached the broker."""
        if command is self._taken:
            self._taken = None
        if command.op is Op.SUBSCRIBE:
            self.applied.add(command.topic)
        elif command.op is Op.UNSUBSCRIBE:
            self.applied.discard(command.topic)

    def abandon(self, command: Command) -> None:
        """Give up on a taken command that the broker keeps failing on."""
        if command is self._taken:
            self._taken = None
        if command.op is Op.SUBSCRIBE:
            self.wanted.discard(command.topic)
        elif command.op is Op.UNSUBSCRIBE:
            self.applied.discard(command.topic)

    def put_back(self, commands: list[Command]) -> None:
        """Return taken but unconfirmed commands to the front, in their order."""
        self._taken = None
        self._commands.extendleft(reversed(commands))
        self.publishes += sum(1 for command in commands if command.op is Op.PUBLISH)
        while len(self._commands) > self.limit and self._make_room():
            pass

    def clear(self) -> int:
        """Empty the queue; return how many publishes were in it."""
        publishes = self.publishes
        self._commands.clear()
        self.publishes = 0
        return publishes

    def _reserve(self) -> None:
        """Make room for one more command if the queue is full."""
        if len(self._commands) >= self.limit:
            self._make_room()

    def _make_room(self) -> bool:
        """Drop the oldest publish, or fold subscription changes; False if neither helped."""
        for index, command in enumerate(self._commands):
            if command.op is Op.PUBLISH:
                del self._commands[index]
                self.publishes -= 1
                self.dropped += 1
                return True
        # Only subscription changes are queued: their net effect, from the state the
        # broker will be in once the command in flight is done, is what ``wanted`` says.
        current = set(self.applied)
        taken = self._taken
        if taken is not None and taken.op is Op.SUBSCRIBE:
            current.add(taken.topic)
        elif taken is not None and taken.op is Op.UNSUBSCRIBE:
            current.discard(taken.topic)
        before = len(self._commands)
        self._commands.clear()
        self._commands.extend(Command(Op.UNSUBSCRIBE, t) for t in current - self.wanted)
        self._commands.extend(Command(Op.SUBSCRIBE, t) for t in self.wanted - current)
        return len(self._commands) < before
