"""A whole cluster in one process: N Hubs, a simulated broker, one fake clock, a seed."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any, assert_never

from ..actions import BrokerPublish, BrokerSubscribe, BrokerUnsubscribe
from ..config import Epoch, HubConfig
from ..events import BrokerLost, BrokerRestored, ConnectionId, EnvelopeReceived, User
from ..framing.memory import BrokerAction, MemoryTransport
from ..history import MemoryStore
from ..hub import Hub
from .clock import FakeClock, counter_ids

__all__ = ["Cluster", "SimulatedBroker"]


class SimulatedBroker:
    """Pub/Sub like Redis or NATS: seeded delays, FIFO per publisher and subscriber.

    A partitioned (disconnected) node receives nothing; what it would have got is lost, as
    on a real Pub/Sub broker. Its publishes wait in its driver's queue (at most
    `queue_size`, the oldest dropped first) and go out when it reconnects, as the real
    drivers do. Subscriptions survive a partition (a real driver resubscribes when it
    reconnects); `restart` loses everything the broker held, messages on their way
    included.
    """

    def __init__(self, rng: random.Random, *, min_delay: float = 0.001,
                 max_delay: float = 0.05, queue_size: int = 10_000) -> None:
        self._rng = rng
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.queue_size = queue_size
        self.subscriptions: dict[str, set[str]] = {}
        self.partitioned: set[str] = set()
        #: publishes of disconnected nodes, waiting in their drivers
        self.outboxes: dict[str, list[tuple[str, bytes]]] = {}
        #: publishes dropped because a driver's queue was full
        self.dropped = 0
        self._queue: list[tuple[float, int, str, str, bytes]] = []
        self._order = itertools.count()
        self._last_at: dict[tuple[str, str], float] = {}
        self.published = 0

    def submit(self, node_id: str, action: BrokerAction, now: float) -> None:
        """Carry out one broker action of a node."""
        match action:
            case BrokerSubscribe(topic):
                self.subscriptions.setdefault(node_id, set()).add(topic)
            case BrokerUnsubscribe(topic):
                self.subscriptions.get(node_id, set()).discard(topic)
            case BrokerPublish(topic, data):
                if node_id in self.partitioned:
                    outbox = self.outboxes.setdefault(node_id, [])
                    outbox.append((topic, data))
                    if len(outbox) > self.queue_size:
                        del outbox[0]
                        self.dropped += 1
                    return
                self._publish(node_id, topic, data, now)
            case _:
                assert_never(action)

    def flush(self, node_id: str, now: float) -> None:
        """A node reconnected: what waited in its driver goes out, in order."""
        for topic, data in self.outboxes.pop(node_id, []):
            self._publish(node_id, topic, data, now)

    def restart(self) -> None:
        """The broker loses its state: messages on their way are gone."""
        self._queue.clear()

    def _publish(self, node_id: str, topic: str, data: bytes, now: float) -> None:
        """Hand a message to every subscriber that is connected."""
        self.published += 1
        for target, topics in self.subscriptions.items():
            if topic in topics and target not in self.partitioned:
                at = now + self._rng.uniform(self.min_delay, self.max_delay)
                at = max(at, self._last_at.get((node_id, target), 0.0))  # FIFO
                self._last_at[(node_id, target)] = at
                heapq.heappush(self._queue, (at, next(self._order), target, topic, data))

    def next_time(self) -> float | None:
        """When the next delivery is due."""
        return self._queue[0][0] if self._queue else None

    def pop(self) -> tuple[float, str, str, bytes]:
        """The next delivery: (time, target node, topic, data)."""
        at, _, target, topic, data = heapq.heappop(self._queue)
        return at, target, topic, data

    def forget(self, node_id: str) -> None:
        """A crashed node: its subscriptions and queued deliveries vanish."""
        self.subscriptions.pop(node_id, None)
        self._queue = [item for item in self._queue if item[2] != node_id]
        heapq.heapify(self._queue)


class Cluster:
    """N Hubs joined by a `SimulatedBroker`, driven deterministically by one seed.

    Clients are `MemoryTransport` connections. `run_for(seconds)` delivers broker traffic
    and ticks every Hub in time order; `crash`, `partition` and `heal` inject faults.
    """

    def __init__(self, nodes: int = 3, *, seed: int = 0, config: HubConfig | None = None,
                 min_delay: float = 0.001, max_delay: float = 0.05) -> None:
        self.clock = FakeClock()
        self.rng = random.Random(seed)
        self.broker = SimulatedBroker(self.rng, min_delay=min_delay, max_delay=max_delay)
        self._config = config or HubConfig()
        self.transports: dict[str, MemoryTransport] = {}
        self._ids = counter_ids("x")
        #: the history store every node shares (with `config.shared_history`)
        self.store = MemoryStore(counter_ids("epoch"))
        for index in range(nodes):
            self.add_node(f"n{index + 1}")

    def add_node(self, node_id: str, setup: Callable[[Hub], Any] | None = None) -> Hub:
        """Start a node (a new one, or one coming back after a crash)."""
        config = HubConfig(**{**_fields(self._config), "node_id": node_id})
        # Unix time follows the fake clock, so a node started again is a later incarnation
        hub = Hub(config, new_id=counter_ids(node_id),
                  epoch=Epoch(self.clock.now, round(self.clock.now * 1000)))
        if setup is not None:
            setup(hub)
        self.transports[node_id] = MemoryTransport(
            hub, clock=self.clock, new_id=_connection_ids(hub.route),
            on_broker=lambda action: self.broker.submit(node_id, action, self.clock.now),
            store=self.store)
        return hub

    def hub(self, node_id: str) -> Hub:
        """The Hub of a node."""
        return self.transports[node_id].hub

    def connect(self, node_id: str, user: User | None = None) -> ConnectionId:
        """Open a client connection on a node."""
        return self.transports[node_id].connect(user)

    def send(self, node_id: str, connection_id: ConnectionId, message: dict[str, Any]) -> None:
        """A client of a node sends a message."""
        self.transports[node_id].send(connection_id, message)

    def crash(self, node_id: str) -> None:
        """The node dies without a word (what its driver held dies with it)."""
        del self.transports[node_id]
        self.broker.forget(node_id)
        self.broker.outboxes.pop(node_id, None)
        self.broker.partitioned.discard(node_id)

    def restart(self, node_id: str, setup: Callable[[Hub], Any] | None = None) -> Hub:
        """The node dies and starts again at once with the same id (a new incarnation)."""
        self.crash(node_id)
        return self.add_node(node_id, setup)

    def restart_broker(self) -> None:
        """The broker dies and comes back empty: every node loses its connection (and what
        was on its way to it); each reconnects when the test `heal`s it, in any order."""
        self.broker.restart()
        for node_id in list(self.transports):
            if node_id not in self.broker.partitioned:
                self.partition(node_id)

    def partition(self, node_id: str) -> None:
        """Cut the node from the broker; its driver reports the loss."""
        self.broker.partitioned.add(node_id)
        self.transports[node_id].hub.handle(BrokerLost(reason="partition"), now=self.clock.now)
        self.transports[node_id].run()

    def heal(self, node_id: str) -> None:
        """Reconnect the node to the broker: its driver resubscribes, sends what waited in
        its queue, and reports the recovery."""
        self.broker.partitioned.discard(node_id)
        self.broker.flush(node_id, self.clock.now)
        self.transports[node_id].hub.handle(BrokerRestored(), now=self.clock.now)
        self.transports[node_id].run()

    def run_for(self, seconds: float) -> None:
        """Advance time, delivering broker traffic and ticking hubs in order."""
        end = self.clock.now + seconds
        while True:
            deadlines = [t.hub.next_deadline() for t in self.transports.values()]
            delivery = self.broker.next_time()
            soonest = min([d for d in [*deadlines, delivery] if d is not None], default=end)
            if soonest > end:
                break
            self.clock.now = max(self.clock.now, soonest)
            if delivery is not None and delivery <= soonest:
                _, target, topic, data = self.broker.pop()
                transport = self.transports.get(target)
                if transport is not None and target not in self.broker.partitioned:
                    transport.hub.handle(EnvelopeReceived(topic=topic, data=data),
                                         now=self.clock.now)
                    transport.run()
                continue
            for transport in list(self.transports.values()):
                if transport.hub.next_deadline() <= self.clock.now:
                    transport.hub.tick(now=self.clock.now)
                    transport.run()
        self.clock.now = end

    def settle(self) -> None:
        """Deliver what the broker holds (a short run, shorter than any timeout)."""
        self.run_for(self.broker.max_delay * 4 + 0.01)


def _connection_ids(route: str) -> Callable[[], str]:
    """Connection ids as a Node makes them, its route key first: `<route>.c-1`, …"""
    ids = counter_ids("c")
    return lambda: f"{route}.{ids()}"


def _fields(config: HubConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}
