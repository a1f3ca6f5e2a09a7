"""Losing the connection: loss reported once, queued publishes delivered after recovery
or counted as dropped, subscriptions restored, silent connections found by the probe.

TCP brokers are reached through :class:`~tests.brokers.proxy.TcpProxy`; the memory broker
through its bus, which can fail the same ways.
"""

from __future__ import annotations

import dataclasses

import pytest

from .support import FAST, Recorder, Target, eventually, opened, run, subscribed

pytestmark = pytest.mark.broker


def test_cut_reports_loss_and_delivers_publishes_made_during_the_outage(target: Target) -> None:
    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        async with target.faults() as (faults, port):
            alice = target.client(a, "node-a", port=port)
            bob = target.client(b, "node-b")
            async with opened(alice, bob):
                await subscribed(bob, b, "outage")
                faults.refuse()
                assert faults.cut() >= 1
                await a.wait(lambda: len(a.lost) == 1)
                assert not alice.statistics().connected
                for i in range(20):
                    alice.publish_nowait("outage", b"%d" % i)
                assert alice.statistics().queued == 20
                faults.allow()
                await a.wait(lambda: a.restored == 1)
                await b.wait_messages(20)
                assert b.data() == [b"%d" % i for i in range(20)]
                stats = alice.statistics()
                assert stats.connected and stats.reconnects == 1 and stats.dropped == 0
                assert stats.last_error == a.lost[0]
                assert len(a.lost) == 1  # once per outage, however many attempts failed

    run(scenario())


def test_subscriptions_work_again_after_a_cut(target: Target) -> None:
    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        async with target.faults() as (faults, port):
            alice = target.client(a, "node-a")
            bob = target.client(b, "node-b", port=port)
            async with opened(alice, bob):
                await subscribed(bob, b, "kept", "dropped")
                bob.unsubscribe_nowait("dropped")
                faults.cut()
                await b.wait(lambda: b.restored == 1)
                assert len(b.lost) == 1
                alice.publish_nowait("dropped", b"must not arrive")
                alice.publish_nowait("kept", b"after recovery")
                await b.wait_messages(1)
                assert b.messages == [("kept", b"after recovery")]

    run(scenario())


def test_queue_overflow_drops_the_oldest_and_counts_them(target: Target) -> None:
    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        tiny = dataclasses.replace(FAST, queue_size=5)
        async with target.faults() as (faults, port):
            alice = target.client(a, "node-a", port=port, options=tiny)
            bob = target.client(b, "node-b")
            async with opened(alice, bob):
                await subscribed(bob, b, "overflow")
                faults.refuse()
                faults.cut()
                await a.wait(lambda: len(a.lost) == 1)
                for i in range(12):
                    alice.publish_nowait("overflow", b"%d" % i)
                stats = alice.statistics()
                assert (stats.queued, stats.dropped) == (5, 7)
                faults.allow()
                await a.wait(lambda: a.restored == 1)
                await b.wait_messages(5)
                assert b.data() == [b"%d" % i for i in range(7, 12)]

    run(scenario())


def test_probe_detects_a_connection_that_stays_open_but_stops_delivering(
    target: Target,
) -> None:
    options = dataclasses.replace(FAST, probe_interval=0.2, probe_timeout=0.5, connect_timeout=0.5)

    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        async with target.faults() as (faults, port):
            alice = target.client(a, "node-a", port=port, options=options)
            bob = target.client(b, "node-b")
            async with opened(alice, bob):
                await subscribed(alice, a, "silent")
                # Probes go round while all is well, and never reach the listener.
                await eventually(lambda: alice._probes >= 3)  # type: ignore[attr-defined]
                assert a.messages == [] and a.lost == []
                faults.swallow()
                # Found within one interval plus the timeout (plus slack for a busy CI).
                limit = options.probe_interval + options.probe_timeout + 1.5
                await a.wait(lambda: len(a.lost) == 1, timeout=limit)
                assert "probe not answered" in a.lost[0]
                faults.swallow(False)
                await a.wait(lambda: a.restored == 1)
                bob.publish_nowait("silent", b"heard again")
                await a.wait_messages(1)
                assert a.messages == [("silent", b"heard again")]

    run(scenario())


def test_statistics_say_stalled_while_publishes_stop_going_through(target: Target) -> None:
    if target.kind == "memory":
        pytest.skip("a memory bus takes every publish at once")
    # The probe is kept out of the way: stalled is what /health shows before it fires.
    options = dataclasses.replace(FAST, probe_interval=30.0, probe_timeout=30.0)

    async def scenario() -> None:
        a = Recorder()
        async with target.faults() as (faults, port):
            alice = target.client(a, "node-a", port=port, options=options)
            async with opened(alice):
                await subscribed(alice, a, "stall")
                alice.publish_nowait("stall", b"before")
                await a.wait_messages(1)
                assert not alice.statistics().stalled
                published = alice.statistics().published
                faults.swallow()
                for i in range(300):
                    alice.publish_nowait("stall", b"%d" % i)
                await eventually(lambda: alice.statistics().stalled, timeout=5)
                stats = alice.statistics()
                assert stats.connected and stats.published <= published + 1  # "before", late
                assert a.lost == []

    run(scenario())
