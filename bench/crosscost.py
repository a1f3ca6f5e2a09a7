"""What the core spends per message on each side of the cross-node path, without sockets.

    .venv/bin/python bench/crosscost.py [--batch 500] [--subscribers 1]

Node A takes a `POST /api/batch` of `--batch` messages (the scenario 6 publisher's
request, 240-byte data) and turns it into broker messages; node B takes those broker
messages and delivers each message to `--subscribers` WebSocket connections, drained as an
adapter would. Prints microseconds per message for each node, the best of 25 repetitions.
Pin it (`taskset -c 0`) for steadier figures. Used for the notes in docs/benchmarks.md;
the broker client, the syscalls and the HTTP client come on top.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def batch_request(count: int) -> bytes:
    """A `POST /api/batch` as `loadgen.BatchHTTPPublisher` writes it."""
    import loadgen

    messages = [b'{"channel":"bench","event":"bench","data":' + loadgen.payload_bytes(i, 150)
                + b"}" for i in range(count)]
    body = b'{"messages":[' + b",".join(messages) + b"]}"
    return (b"POST /api/batch HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer k\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


def batch_publisher(node: Any, batch: int) -> Callable[[], list[Any]]:
    """A function that sends node `node` one `POST /api/batch` of `batch` messages and
    returns the `BrokerPublish` actions it made (its own answer drained)."""
    from realtime_proto.actions import BrokerPublish, Transmit

    publisher = node.open_connection(now=1000.0, peer="127.0.0.1:1")
    request = batch_request(batch)

    def publish() -> list[BrokerPublish]:
        node.receive_data(publisher, request, now=1000.0)
        out = []
        for action in node.actions():
            if isinstance(action, BrokerPublish):
                out.append(action)
            elif isinstance(action, Transmit):
                for transport_id in action.transport_ids:
                    node.data_to_send(transport_id)
        return out

    return publish


def subscribe_websockets(node: Any, count: int) -> None:
    """`count` WebSocket connections to `node`, each subscribed to the bench channel."""
    from memprofile import SUBSCRIBE, drain

    from realtime_proto.testing.peers import WebSocketPeer

    for index in range(count):
        peer = WebSocketPeer()
        transport = node.open_connection(now=1000.0, peer=f"127.0.0.1:{index}")
        node.receive_data(transport, peer.handshake_bytes("/ws"), now=1000.0)
        node.receive_data(transport, peer.send_text(SUBSCRIBE.decode()), now=1000.0)
        drain(node)


def measure(batch: int, subscribers: int, repeats: int = 25, rounds: int = 10,
            ) -> tuple[float, float]:
    """Best seconds per message on node A and on node B."""
    from memprofile import drain, sans_io_node

    from realtime_proto.events import EnvelopeReceived

    node_a, node_b = sans_io_node("node-a"), sans_io_node("node-b")
    subscribe_websockets(node_b, subscribers)
    publish = batch_publisher(node_a, batch)

    def receive(published: list[Any]) -> None:
        for action in published:
            node_b.handle(EnvelopeReceived(topic=action.topic, data=action.data), now=1000.0)
            drain(node_b)

    receive(publish())
    best_a = best_b = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        made = [publish() for _ in range(rounds)]
        middle = time.perf_counter()
        for published in made:
            receive(published)
        best_a = min(best_a, middle - started)
        best_b = min(best_b, time.perf_counter() - middle)
    return best_a / (rounds * batch), best_b / (rounds * batch)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--subscribers", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, str(BENCH))
    node_a, node_b = measure(args.batch, args.subscribers)
    print(f"node A (POST /api/batch of {args.batch}): {node_a * 1e6:.2f} µs per message")
    print(f"node B ({args.subscribers} subscriber(s)): {node_b * 1e6:.2f} µs per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
