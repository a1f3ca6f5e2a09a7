"""The core's time from a `POST /api/publish` to the first sockets it hands out, without
sockets: what the latency floor of a fan-out owes to the core.

    .venv/bin/python bench/firstwrite.py [--n 1000] [--chunk 0 32] [--messages 200]

Drives a Node (sans-IO) with N subscribed WebSocket connections, feeds it one publish
request at a time and drains it as an adapter would (`actions()` until empty, pulling
`data_to_send` for every socket of each `Transmit`). Prints the median microseconds until
the first `Transmit` and until the whole fan-out is pulled, for each `--chunk`
(`NodeConfig.fanout_chunk`; 0: the fan-out is queued whole). The socket writes an adapter
makes between chunks come on top (about 9 µs each here). Pin it (`taskset -c 0`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def measure(n: int, chunk: int, messages: int) -> tuple[float, float]:
    """Median seconds to the first Transmit and to the end of the fan-out."""
    from memprofile import SUBSCRIBE, drain, sans_io_node

    from realtime_proto.actions import Transmit
    from realtime_proto.testing.peers import WebSocketPeer

    node = sans_io_node("firstwrite")
    node.config = replace(node.config, fanout_chunk=chunk, api_key="k")
    peer = WebSocketPeer()
    handshake, subscribe = peer.handshake_bytes("/ws"), peer.send_text(SUBSCRIBE.decode())
    for index in range(n):
        transport = node.open_connection(now=1000.0, peer=f"127.0.0.1:{index}")
        node.receive_data(transport, handshake, now=1000.0)
        node.receive_data(transport, subscribe, now=1000.0)
        drain(node)
    publisher = node.open_connection(now=1000.0, peer="127.0.0.1:1")
    body = json.dumps({"channel": "bench", "event": "tick", "data": {"n": 1}}).encode()
    request = (b"POST /api/publish HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer k\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
               + body)
    firsts, wholes = [], []
    for _ in range(messages):
        started = time.perf_counter()
        node.receive_data(publisher, request, now=1000.0)
        first = None
        while actions := node.actions():
            for action in actions:
                if isinstance(action, Transmit):
                    for transport_id in action.transport_ids:
                        node.data_to_send(transport_id)
                    if first is None:
                        first = time.perf_counter() - started
        wholes.append(time.perf_counter() - started)
        assert first is not None
        firsts.append(first)
    return statistics.median(firsts), statistics.median(wholes)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--chunk", type=int, nargs="+", default=[0, 32])
    ap.add_argument("--messages", type=int, default=200)
    args = ap.parse_args()
    sys.path.insert(0, str(BENCH))
    for chunk in args.chunk:
        first, whole = measure(args.n, chunk, args.messages)
        print(f"N = {args.n:,}, fanout_chunk {chunk}: first Transmit after {first * 1e6:,.0f} µs,"
              f" whole fan-out {whole * 1e6:,.0f} µs (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
