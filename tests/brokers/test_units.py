"""The pure parts of the broker package: names, the command queue, URLs, imports."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import realtime_brokers
from realtime_brokers import BrokerError, BrokerOptions, open_broker
from realtime_brokers.commands import CommandQueue, Op
from realtime_brokers.naming import bounded_name, escape, unescape
from realtime_brokers.postgres_driver import decode_payload
from realtime_brokers.urls import display_address, split_options

from .proxy import ThreadedTcpProxy
from .support import Recorder

TOPIC_ALPHABET = st.sampled_from(
    "ABCXYZabcxyz0189_-=@,.;:*>%~ é✓\x00"  # the topic alphabet plus what must be escaped
)


@given(st.text(TOPIC_ALPHABET, max_size=220))
def test_nats_token_is_reversible_and_safe(topic: str) -> None:
    token = escape(topic)
    assert unescape(token) == topic
    assert token and all(c.isalnum() or c in "_-=@,;:%" for c in token)
    assert "." not in token and "*" not in token and ">" not in token


@given(st.text(TOPIC_ALPHABET, max_size=20), st.text(TOPIC_ALPHABET, max_size=20))
def test_distinct_topics_get_distinct_nats_tokens(one: str, two: str) -> None:
    assert (escape(one) == escape(two)) == (one == two)


def test_bounded_names_fit_and_stay_distinct() -> None:
    base = "l" * 70
    names = {bounded_name("rt:", base + str(i), 63) for i in range(1000)}
    assert len(names) == 1000
    assert all(len(name.encode()) <= 63 for name in names)
    assert bounded_name("rt:", "short", 63) == "rt:short"
    assert len(bounded_name("", "é" * 200, 255).encode()) <= 255
    with pytest.raises(ValueError, match="prefix"):
        bounded_name("p" * 60, "x" * 100, 63)


def test_postgres_payload_header() -> None:
    assert decode_payload("T3:a:bhello") == ("T", "a:b", "hello")
    assert decode_payload("R0:42") == ("R", "", "42")
    with pytest.raises(ValueError):
        decode_payload("something else")


def test_queue_drops_the_oldest_publish_when_full() -> None:
    queue = CommandQueue(3)
    queue.subscribe("t")
    for i in range(5):
        queue.publish("t", b"%d" % i)
    assert (len(queue), queue.publishes, queue.dropped) == (3, 2, 3)
    taken = [queue.pop() for _ in range(3)]
    assert [(c.op, c.data) for c in taken] == [
        (Op.SUBSCRIBE, b""),
        (Op.PUBLISH, b"3"),
        (
            Op.PUBLISH,
            b"4",
        ),
    ]


def test_queue_folds_subscription_changes_when_full_of_them() -> None:
    queue = CommandQueue(4)
    queue.subscribe("a")
    queue.sent(queue.pop())  # "a" is subscribed at the broker
    for topic in ("b", "c"):
        queue.subscribe(topic)
        queue.unsubscribe(topic)
    queue.unsubscribe("a")
    queue.subscribe("d")  # full: folded to the net effect, then appended
    commands = [queue.pop() for _ in range(len(queue))]
    assert [(c.op, c.topic) for c in commands] == [(Op.UNSUBSCRIBE, "a"), (Op.SUBSCRIBE, "d")]
    assert queue.wanted == {"d"}


def test_queue_folding_counts_the_command_in_flight() -> None:
    queue = CommandQueue(2)
    queue.subscribe("a")
    queue.sent(queue.pop())
    queue.unsubscribe("a")
    in_flight = queue.pop()  # UNSUBSCRIBE a, not yet done
    queue.subscribe("a")
    queue.subscribe("b")
    queue.subscribe("c")  # full of subscription changes: fold
    queue.sent(in_flight)
    commands = [queue.pop() for _ in range(len(queue))]
    assert {(c.op, c.topic) for c in commands} == {
        (Op.SUBSCRIBE, "a"),
        (Op.SUBSCRIBE, "b"),
        (Op.SUBSCRIBE, "c"),
    }


def test_queue_puts_unconfirmed_commands_back_in_order() -> None:
    queue = CommandQueue(10)
    for i in range(4):
        queue.publish("t", b"%d" % i)
    taken = [queue.pop(), queue.pop()]
    queue.put_back(taken)
    assert [queue.pop().data for _ in range(4)] == [b"0", b"1", b"2", b"3"]


def test_url_options_override_the_given_ones() -> None:
    url, options = split_options(
        "redis://h:1/0?probe_interval=0.5&db=2&queue_size=7", BrokerOptions(probe_timeout=3)
    )
    assert url == "redis://h:1/0?db=2"
    assert (options.probe_interval, options.probe_timeout, options.queue_size) == (0.5, 3, 7)
    with pytest.raises(ValueError, match="not a number"):
        split_options("nats://h?probe_timeout=soon", BrokerOptions())


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        BrokerOptions(queue_size=0)
    with pytest.raises(ValueError, match="probe_timeout"):
        BrokerOptions(probe_timeout=0)
    with pytest.raises(ValueError, match="reconnect_max_interval"):
        BrokerOptions(reconnect_min_interval=2, reconnect_max_interval=1)


def test_addresses_never_show_passwords() -> None:
    assert display_address("amqp://guest:secret@host:5672/vh?x=1") == "amqp://host:5672/vh"


def test_unknown_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported broker URL"):
        open_broker("kafka://localhost", Recorder(), node_id="n")
    with pytest.raises(ValueError, match="unknown memory broker URL options"):
        open_broker("memory://x?nonsense=1", Recorder(), node_id="n")


def test_using_a_closed_client_is_an_error() -> None:
    client = open_broker("memory://", Recorder(), node_id="n")
    asyncio.run(client.aclose())
    with pytest.raises(BrokerError, match="closed"):
        client.subscribe_nowait("t")


def test_importing_does_not_import_broker_clients() -> None:
    package_dir = Path(realtime_brokers.__file__).resolve().parents[1]
    code = (
        "import sys, realtime_brokers as rb\n"
        "rb.open_broker('memory://', None, node_id='n')\n"
        "heavy = {'redis', 'nats', 'aio_pika', 'aiormq', 'asyncpg'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env={"PYTHONPATH": str(package_dir)},
    )


def test_threaded_proxy_forwards_cuts_and_refuses() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        ThreadedTcpProxy("127.0.0.1", server.getsockname()[1]) as proxy,
    ):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            upstream, _ = server.accept()
            with upstream:
                client.sendall(b"ping")
                assert upstream.recv(4) == b"ping"
                assert proxy.cut() == 1
                assert _closed_by_peer(client)
        proxy.refuse()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            assert _closed_by_peer(client)
        proxy.allow()


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(4) == b""
    except ConnectionResetError:
        return True
