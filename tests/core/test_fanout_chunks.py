"""A fan-out met alone goes out in chunks (`NodeConfig.fanout_chunk`): each `actions()`
hands out the sockets of one chunk, so an adapter writes the first subscribers before
the last are reached; messages that come together still go out whole, one pull per
socket."""

from __future__ import annotations

import json
from typing import Any

import pytest

from realtime_proto import ConfigError, NodeConfig
from realtime_proto.actions import Transmit
from realtime_proto.events import TransportId
from realtime_proto.testing.peers import HttpPeer, WebSocketPeer

from .nodekit import API_KEY, Harness
from .test_node import ws_messages, ws_subscribed

CHUNK = 4
SUBSCRIBERS = 10


def subscribed(h: Harness) -> dict[TransportId, WebSocketPeer]:
    return dict(ws_subscribed(h, "c") for _ in range(SUBSCRIBERS))


def transmits(h: Harness) -> list[Transmit]:
    """One `actions()` call's Transmits (the way an adapter takes them)."""
    return [action for action in h.node.actions() if isinstance(action, Transmit)]


def events(peer: WebSocketPeer, data: bytes) -> list[Any]:
    return [message["data"] for message in ws_messages(peer, data)
            if message.get("event") == "e"]


def test_a_fanout_met_alone_is_handed_out_a_chunk_per_call() -> None:
    h = Harness(fanout_chunk=CHUNK)
    peers = subscribed(h)
    h.node.hub.broadcast("c", "e", 1, now=h.clock.now)
    reached: list[TransportId] = []
    calls = []
    while found := transmits(h):
        [transmit] = found
        calls.append((len(transmit.transport_ids), transmit.partial))
        for transport in transmit.transport_ids:  # written before the next chunk is queued
            assert events(peers[transport], b"".join(h.node.data_to_send(transport))) == [1]
        not_yet = set(peers) - set(reached) - set(transmit.transport_ids)
        assert all(h.node.data_to_send(transport) == [] for transport in not_yet)
        reached += transmit.transport_ids
    assert calls == [(4, True), (4, True), (2, False)]
    assert sorted(reached) == sorted(peers)  # each once


def test_messages_published_in_one_call_go_out_whole_one_pull_per_socket() -> None:
    h = Harness(fanout_chunk=CHUNK)
    peers = subscribed(h)
    for number in range(3):
        h.node.hub.broadcast("c", "e", number, now=h.clock.now)
    [transmit] = transmits(h)
    assert not transmit.partial
    assert sorted(transmit.transport_ids) == sorted(peers)
    for transport, peer in peers.items():
        assert events(peer, b"".join(h.node.data_to_send(transport))) == [0, 1, 2]
    assert transmits(h) == []


def test_pipelined_publishes_coalesce_behind_a_chunk_started_in_the_same_call() -> None:
    # the first request's fan-out starts in chunks; the second, in the same bytes, makes
    # the rest go at once, and each socket is pulled once for both
    h = Harness(fanout_chunk=CHUNK)
    peers = subscribed(h)
    publisher, api = h.open(), HttpPeer()
    headers = (("Authorization", f"Bearer {API_KEY}"), ("Content-Type", "application/json"))
    request = [api.request("POST", "/api/publish", headers, json.dumps(
        {"channel": "c", "event": "e", "data": number}).encode()) for number in (1, 2)]
    h.node.receive_data(publisher, request[0] + request[1], now=h.clock.now)
    [transmit] = transmits(h)
    assert not transmit.partial
    assert set(peers) <= set(transmit.transport_ids)
    for transport, peer in peers.items():
        assert events(peer, b"".join(h.node.data_to_send(transport))) == [1, 2]


def test_a_message_published_between_chunks_follows_the_rest_in_order() -> None:
    h = Harness(fanout_chunk=CHUNK)
    peers = subscribed(h)
    h.node.hub.broadcast("c", "e", 1, now=h.clock.now)
    [first] = transmits(h)
    assert first.partial
    received = {transport: events(peers[transport], b"".join(h.node.data_to_send(transport)))
                for transport in first.transport_ids}
    h.node.hub.broadcast("c", "e", 2, now=h.clock.now)
    [rest] = transmits(h)
    assert not rest.partial
    for transport in rest.transport_ids:
        received.setdefault(transport, []).extend(
            events(peers[transport], b"".join(h.node.data_to_send(transport))))
    assert received == {transport: [1, 2] for transport in peers}
    assert transmits(h) == []


def test_off_by_default_and_a_negative_chunk_is_refused() -> None:
    h = Harness()
    peers = subscribed(h)
    h.node.hub.broadcast("c", "e", 1, now=h.clock.now)
    [transmit] = transmits(h)
    assert not transmit.partial and sorted(transmit.transport_ids) == sorted(peers)
    with pytest.raises(ConfigError, match="fanout_chunk"):
        NodeConfig(fanout_chunk=-1)
