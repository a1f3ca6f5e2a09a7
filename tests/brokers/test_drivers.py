"""Every driver against its real server: bytes, topics, order, statistics."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid

import pytest

from realtime_brokers import BrokerError, BrokerUnavailable

from .conftest import require_server
from .support import FAST, Recorder, Target, eventually, opened, run, subscribed

pytestmark = pytest.mark.broker

TRICKY_TOPICS = [
    "a.b",
    "a*b",
    "a>b",
    "a",
    "b",
    "a.*",
    "a.>",
    "*",
    ">",
    "a%2Eb",  # what an escaped "a.b" looks like
    "c:private-chat.1",
    "u:alice",
    "_cluster",
    "x=@,.;:-_",
    "t" * 210,
    "l" * 62 + "1",  # differ only after the 63rd byte (PostgreSQL channel limit) ...
    "l" * 62 + "2",
    "m" * 70 + "1",
    "m" * 70 + "2",
    "n" * 260 + "1",  # ... and after the 255th (AMQP routing key limit)
    "n" * 260 + "2",
    "ünïcødé",
]


def test_round_trip_between_two_nodes(target: Target) -> None:
    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        alice, bob = target.client(a, "node-a"), target.client(b, "node-b")
        async with opened(alice, bob):
            await subscribed(bob, b, "c:private-chat.1")
            alice.publish_nowait("c:private-chat.1", b'{"hello": "world"}')
            await b.wait_messages(1)
            assert b.messages == [("c:private-chat.1", b'{"hello": "world"}')]
            assert a.messages == []  # alice subscribes to nothing

    run(scenario())


def test_no_delivery_after_unsubscribe(target: Target) -> None:
    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        alice, bob = target.client(a, "node-a"), target.client(b, "node-b")
        async with opened(alice, bob):
            await subscribed(bob, b, "gone", "fence")
            bob.unsubscribe_nowait("gone")
            bob.publish_nowait("fence", b"bob unsubscribed")  # after the UNSUBSCRIBE
            await b.wait_messages(1)
            # One node's messages arrive in publish order, so "gone" would come first.
            alice.publish_nowait("gone", b"must not arrive")
            alice.publish_nowait("fence", b"after")
            await b.wait_messages(2)
            assert b.messages == [("fence", b"bob unsubscribed"), ("fence", b"after")]
            assert bob.statistics().subscriptions == 1

    run(scenario())


def test_no_cross_talk_between_tricky_topics(target: Target) -> None:
    async def scenario() -> None:
        a, b, c = Recorder(), Recorder(), Recorder()
        alice = target.client(a, "node-a")
        bob, carol = target.client(b, "node-b"), target.client(c, "node-c")
        evens, odds = TRICKY_TOPICS[::2], TRICKY_TOPICS[1::2]
        async with opened(alice, bob, carol):
            await subscribed(bob, b, *evens, "fence-b")
            await subscribed(carol, c, *odds, "fence-c")
            for topic in [*TRICKY_TOPICS, "fence-b", "fence-c"]:
                alice.publish_nowait(topic, topic.encode())
            await b.wait(lambda: ("fence-b", b"fence-b") in b.messages)
            await c.wait(lambda: ("fence-c", b"fence-c") in c.messages)
            assert b.messages == [(t, t.encode()) for t in [*evens, "fence-b"]]
            assert c.messages == [(t, t.encode()) for t in [*odds, "fence-c"]]

    run(scenario())


def test_order_of_1000_messages_preserved(target: Target) -> None:
    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        alice, bob = target.client(a, "node-a"), target.client(b, "node-b")
        async with opened(alice, bob):
            await subscribed(bob, b, "one", "two")
            for i in range(1000):
                alice.publish_nowait("one", b"%d" % i)
            await b.wait_messages(1000)
            assert b.data("one") == [b"%d" % i for i in range(1000)]
            b.messages.clear()
            # Across topics too: nats-py would reorder per subscription; the driver must not.
            for i in range(1000):
                alice.publish_nowait(("one", "two")[i % 3 == 0], b"%d" % i)
            await b.wait_messages(1000)
            assert b.data() == [b"%d" % i for i in range(1000)]

    run(scenario())


def test_binary_data_with_every_byte_value(target: Target) -> None:
    payloads = [
        bytes(range(256)),
        bytes(range(255, -1, -1)) * 4,
        b"",
        b"\x00",
        b"\xff\xfe\xfd",  # not UTF-8
        "héllo wörld ✓".encode(),
        b'{"type": "event", "data": "\\u0000"}',
        os.urandom(3000),
    ]

    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        alice, bob = target.client(a, "node-a"), target.client(b, "node-b")
        async with opened(alice, bob):
            await subscribed(bob, b, "bin")
            for payload in payloads:
                alice.publish_nowait("bin", payload)
            await b.wait_messages(len(payloads))
            assert b.data("bin") == payloads

    run(scenario())


def test_a_node_receives_its_own_messages(target: Target) -> None:
    async def scenario() -> None:
        a = Recorder()
        alice = target.client(a, "node-a")
        async with opened(alice):
            await subscribed(alice, a, "echo")
            alice.publish_nowait("echo", b"mine")
            await a.wait_messages(1)
            assert a.messages == [("echo", b"mine")]

    run(scenario())


def test_statistics(target: Target) -> None:
    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        alice, bob = target.client(a, "node-a"), target.client(b, "node-b")
        assert not alice.statistics().connected
        async with opened(alice, bob):
            await subscribed(bob, b, "s1", "s2", "s3")
            bob.unsubscribe_nowait("s3")
            for i in range(10):
                alice.publish_nowait("s1" if i % 2 else "s2", b"x")
            await b.wait_messages(10)
            await eventually(lambda: alice.statistics().published == 10)
            stats = alice.statistics()
            assert stats.connected
            assert (stats.published, stats.received, stats.dropped) == (10, 0, 0)
            assert (stats.queued, stats.subscriptions, stats.reconnects) == (0, 0, 0)
            assert stats.last_error is None
            latency = stats.publish_latency  # each publish timed until the broker took it
            assert latency.count == 10 and latency.total > 0
            await eventually(lambda: bob.statistics().published == 3)
            stats = bob.statistics()
            assert stats.received == 10 + 3  # and its own three markers
            assert stats.published == 3
            assert stats.subscriptions == 2
        assert not alice.statistics().connected

    run(scenario())


def test_aclose_sends_what_is_queued(target: Target) -> None:
    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        alice, bob = target.client(a, "node-a"), target.client(b, "node-b")
        async with opened(bob):
            await subscribed(bob, b, "bye")
            await alice.start()
            for i in range(50):
                alice.publish_nowait("bye", b"%d" % i)
            await alice.aclose()
            await b.wait_messages(50)
            assert b.data() == [b"%d" % i for i in range(50)]
            assert alice.statistics().dropped == 0
            with pytest.raises(BrokerError, match="closed"):
                alice.publish_nowait("bye", b"late")
            await alice.aclose()  # closing twice is fine

    run(scenario())


def test_start_fails_with_a_clear_message(target: Target) -> None:
    async def scenario() -> None:
        async with target.faults() as (faults, port):
            faults.refuse()
            client = target.client(Recorder(), "node-a", port=port)
            with pytest.raises(BrokerUnavailable) as failure:
                await client.start()
            message = str(failure.value)
            assert message.startswith(f"cannot connect to {target.kind} at ")
            assert "guest:guest" not in message
            with pytest.raises(BrokerError, match="already started"):
                await client.start()
            await client.aclose()
            faults.allow()

    run(scenario())


def test_a_quiet_redis_subscription_outlives_the_libraries_read_timeout() -> None:
    """redis-py 8 ends a read after `socket_timeout` (5 s by default): a subscriber that
    hears nothing for longer must stay connected; liveness is the supervisor's probes' job."""
    require_server("redis")
    target = Target("redis", uuid.uuid4().hex[:10])
    quiet = dataclasses.replace(FAST, probe_interval=60.0, probe_timeout=30.0)

    async def scenario() -> None:
        a, b = Recorder(), Recorder()
        alice = target.client(a, "node-a", options=quiet)
        bob = target.client(b, "node-b", options=quiet)
        async with opened(alice, bob):
            await subscribed(bob, b, "quiet")
            await asyncio.sleep(6.0)  # the silence under test: longer than redis-py's 5 s
            assert (a.lost, b.lost) == ([], [])
            alice.publish_nowait("quiet", b"still here")
            await b.wait_messages(1)
            assert b.messages == [("quiet", b"still here")] and b.restored == 0

    run(scenario())
