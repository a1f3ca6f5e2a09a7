"""The Node as its parts see it: a configuration replaced after construction reaches
every part (ServerBase turns its own authentication on that way); transport ids it never
issued are refused, those it closed are explicit no-ops."""

from __future__ import annotations

from dataclasses import replace

import pytest

from realtime_proto.actions import Authenticate
from realtime_proto.errors import LocalProtocolError
from realtime_proto.events import TransportId
from realtime_proto.testing.peers import HttpPeer

from .nodekit import Harness


def test_a_configuration_replaced_after_construction_reaches_the_front_door() -> None:
    h = Harness()
    h.node.config = replace(h.node.config, custom_authentication=True)
    transport = h.open()
    h.feed(transport, HttpPeer().request("GET", "/poll", ()))
    assert [a for a in h.broker if isinstance(a, Authenticate)]
    assert h.take(transport) == b""  # waiting for the application's answer


def test_an_id_the_node_never_issued_is_a_local_protocol_error() -> None:
    h = Harness()
    h.open()
    for bogus in ("", "id-1", "id-1#99", "id-1#x"):
        transport = TransportId(bogus)
        with pytest.raises(LocalProtocolError, match="never opened"):
            h.node.receive_data(transport, b"GET / HTTP/1.1\r\n\r\n", now=h.clock.now)
        with pytest.raises(LocalProtocolError):
            h.node.receive_eof(transport, now=h.clock.now)
        with pytest.raises(LocalProtocolError):
            h.node.data_to_send(transport)
        with pytest.raises(LocalProtocolError):
            h.node.closed(transport)


def test_calls_for_a_socket_the_node_closed_do_nothing_and_closed_says_so() -> None:
    h = Harness()
    transport = h.open()
    assert not h.node.closed(transport)
    h.feed(transport, b"NOT HTTP\r\n\r\n")  # answered 400, then closed
    assert transport in h.closed
    assert h.node.closed(transport)
    h.node.receive_data(transport, b"more", now=h.clock.now)
    h.node.receive_eof(transport, now=h.clock.now)
    assert h.node.data_to_send(transport) == []
    assert not h.node.actions()
