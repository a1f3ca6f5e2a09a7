"""A Node on a fake clock with in-memory sockets, driven the way an adapter drives it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from realtime_proto import Epoch, HubConfig, Node, NodeConfig, StaticFile
from realtime_proto.actions import Authorize, CloseTransport, Transmit
from realtime_proto.callbacks import authorization_answer
from realtime_proto.events import TransportId
from realtime_proto.jwt import JwtConfig, encode_hs256
from realtime_proto.testing import FakeClock, counter_ids

SECRET = "s3cret"
API_KEY = "key"


class Harness:
    """Sockets as byte buffers: what the Node wrote to each, and which it closed."""

    def __init__(self, **overrides: Any) -> None:
        self.clock = FakeClock()
        hub = overrides.pop("hub", HubConfig(node_id="n1"))
        ids = overrides.pop("ids", "id")
        hub = replace(hub, jwt=JwtConfig(secret=SECRET))
        config = NodeConfig(hub=hub, api_key=API_KEY,
                            static_files={"/index.html": StaticFile(
                                content_type="text/html", body=b"<h1>hi</h1>")},
                            **overrides)
        self.node = Node(config, new_id=counter_ids(ids), epoch=Epoch(self.clock.now, 0))
        self.output: dict[TransportId, bytearray] = {}
        self.closed: set[TransportId] = set()
        self.broker: list[Any] = []
        self.pump()

    def open(self) -> TransportId:
        transport = self.node.open_connection(now=self.clock.now, peer="127.0.0.1:5000")
        self.output[transport] = bytearray()
        return transport

    def feed(self, transport: TransportId, data: bytes) -> None:
        self.node.receive_data(transport, data, now=self.clock.now)
        self.pump()

    def eof(self, transport: TransportId) -> None:
        self.node.receive_eof(transport, now=self.clock.now)
        self.pump()

    def take(self, transport: TransportId) -> bytes:
        data = bytes(self.output[transport])
        self.output[transport].clear()
        return data

    def _pull(self, transport: TransportId) -> None:
        self.output.setdefault(transport, bytearray()).extend(
            b"".join(self.node.data_to_send(transport)))

    def advance(self, seconds: float) -> None:
        end = self.clock.now + seconds
        while self.node.next_deadline() <= end:
            self.clock.now = max(self.clock.now, self.node.next_deadline())
            self.node.tick(now=self.clock.now)
            self.pump()
        self.clock.now = end

    def pump(self) -> None:
        while actions := self.node.actions():
            for action in actions:
                match action:
                    case Transmit(transports):
                        for transport in transports:
                            self._pull(transport)
                    case CloseTransport(transport):
                        self._pull(transport)
                        self.closed.add(transport)
                    case Authorize():
                        result = action.callback(action.connection, action.channel)
                        self.node.handle(authorization_answer(action.request_id, result),
                                         now=self.clock.now)
                    case _:
                        self.broker.append(action)


def token(sub: str, **claims: Any) -> str:
    return encode_hs256({"sub": sub, **claims}, SECRET)
