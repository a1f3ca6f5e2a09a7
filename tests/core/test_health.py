"""`/health` and `/metrics` say degraded while the broker is out or stalled or the shared
history store is out, from the events the adapter feeds (`BrokerLost`, `BrokerReported`)."""

from __future__ import annotations

import json

from realtime_proto.events import BrokerLost, BrokerReported, BrokerRestored

from .nodekit import Harness
from .test_node import http


def health(h: Harness) -> dict[str, object]:
    response = http(h, "GET", "/health")
    assert response.status == 200
    return dict(json.loads(response.body))


def test_health_is_degraded_while_the_broker_or_the_history_store_is_out() -> None:
    h = Harness()
    assert health(h) | {"connections": 0} == {
        "status": "ok", "node_id": "n1", "runtime": "unknown", "broker": "connected",
        "history": "available", "connections": 0}
    h.node.handle(BrokerLost(reason="reset"), now=h.clock.now)
    assert (health(h)["status"], health(h)["broker"]) == ("degraded", "disconnected")
    h.node.handle(BrokerRestored(), now=h.clock.now)
    h.node.handle(BrokerReported(stalled=True), now=h.clock.now)
    assert (health(h)["status"], health(h)["broker"]) == ("degraded", "stalled")
    assert 'realtime_broker_stalled{node="n1",runtime="unknown"} 1' in http(
        h, "GET", "/metrics").body.decode()
    h.node.handle(BrokerReported(history_available=False, history_queued=7,
                                 history_overflowed=3), now=h.clock.now)
    assert (health(h)["status"], health(h)["history"]) == ("degraded", "unavailable")
    metrics = http(h, "GET", "/metrics").body.decode()
    assert 'realtime_history_store_available{node="n1",runtime="unknown"} 0' in metrics
    assert 'realtime_history_queued{node="n1",runtime="unknown"} 7' in metrics
    assert 'realtime_history_overflowed_total{node="n1",runtime="unknown"} 3' in metrics
    h.node.handle(BrokerReported(), now=h.clock.now)
    assert health(h)["status"] == "ok"
