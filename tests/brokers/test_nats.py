"""NATS: a message the server can never take is dropped, not retried forever."""

from __future__ import annotations

import pytest

from .conftest import require_server
from .support import Recorder, Target, eventually, opened, run, subscribed

pytestmark = pytest.mark.broker


def test_a_message_over_max_payload_is_dropped_and_the_connection_kept() -> None:
    require_server("nats")
    nats = Target("nats", "max-payload")

    async def scenario() -> None:
        a = Recorder()
        alice = nats.client(a, "node-a")
        async with opened(alice):
            await subscribed(alice, a, "huge")
            alice.publish_nowait("huge", b"x" * 2_000_000)  # the server's default is 1 MiB
            alice.publish_nowait("huge", b"after")
            await a.wait_messages(1)
            assert a.messages == [("huge", b"after")]
            await eventually(lambda: alice.statistics().dropped == 1)
            stats = alice.statistics()
            assert stats.connected and stats.reconnects == 0 and a.lost == []
            assert stats.last_error is not None and "max_payload" in stats.last_error

    run(scenario())
