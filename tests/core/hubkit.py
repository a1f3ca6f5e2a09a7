"""Shared setup for Hub tests: a hub on a fake clock behind a MemoryTransport."""

from __future__ import annotations

from typing import Any

from realtime_proto import Epoch, Hub, HubConfig, User
from realtime_proto.testing import FakeClock, MemoryTransport, counter_ids


def make(config: HubConfig | None = None) -> tuple[Hub, MemoryTransport, FakeClock]:
    clock = FakeClock()
    epoch = Epoch(clock.now, 1_700_000_000_000)
    hub = Hub(config or HubConfig(), new_id=counter_ids("m"), epoch=epoch)
    broker: list[Any] = []
    transport = MemoryTransport(hub, clock=clock, new_id=counter_ids("c"), on_broker=broker.append)
    transport.broker_log = broker  # type: ignore[attr-defined]
    return hub, transport, clock


def user(name: str, **info: Any) -> User:
    return User(id=name, info=info, channels=())


def events(messages: list[dict[str, Any]]) -> list[tuple[str | None, str | None]]:
    return [(m.get("event"), m.get("channel")) for m in messages]


def error_codes(messages: list[dict[str, Any]]) -> list[int]:
    return [m["data"]["code"] for m in messages if m["type"] == "error"]
