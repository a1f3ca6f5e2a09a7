"""permessage-deflate: bytes on the wire and the core's CPU per delivery, with and without.

    .venv/bin/python bench/compression.py [--n 1000] [--messages 40] [--size 1024]

Drives a Node (sans-IO, as `bench/corecost.py` does) with N WebSocket subscribers that
offer permessage-deflate the way browsers do, and broadcasts a chat message whose JSON
envelope is about `--size` bytes (seeded, word-like text: not a repeated string), once
with `compression` off and once on. Prints, for each: the bytes written per delivery
(frame headers included), nanoseconds per delivery (best of five), and the cost on the
receiving side of inflating one message (a browser does it per message). Pin it
(`taskset -c 0`) for steadier figures.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
#: what Chrome and Firefox offer
OFFER = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")
SAMPLE = ("the meeting moved to thursday afternoon because half of the team is travelling "
         "and nobody wants to dial in from an airport lounge so please update the agenda "
         "bring the quarterly numbers and the draft of the proposal we discussed last week "
         "i will book the large room with the projector coffee is on me this time")


def chat_data(size: int, seed: int) -> dict[str, Any]:
    """The data of a chat message whose envelope is about `size` bytes."""
    rng = random.Random(seed)
    words = SAMPLE.split()
    text = ""
    while len(text) < size - 190:  # the envelope and these fields take about 190 bytes
        text += rng.choice(words) + " "
    return {"user": f"user-{rng.randrange(10_000)}", "room": "general",
            "sent_at": 1_765_000_000_000 + seed, "text": text.strip()}


def node(compression: bool) -> Any:
    from realtime_proto import Epoch, Node
    from realtime_server.edge import Settings, build_node_config, random_id

    settings = Settings(api_key="k", connection_rate=0, subscribe_rate=0, message_rate=0,
                        api_rate=0, compression=compression)
    return Node(build_node_config(settings, "compression", runtime="asyncio"),
                new_id=random_id, epoch=Epoch(1000.0, 0))


def measure(compression: bool, n: int, messages: int, size: int,
            repeats: int = 5) -> tuple[float, float, bytes]:
    """(bytes per delivery, best ns per delivery, one frame as the subscribers got it)."""
    from memprofile import SUBSCRIBE, drain

    from realtime_proto.actions import Transmit
    from realtime_proto.testing.peers import WebSocketPeer

    server = node(compression)
    peer = WebSocketPeer()
    head = peer.handshake_bytes("/ws", extra_headers=[OFFER])
    for index in range(n):
        transport = server.open_connection(now=1000.0, peer=f"127.0.0.1:{index}")
        server.receive_data(transport, head, now=1000.0)
        server.receive_data(transport, peer.send_text(SUBSCRIBE.decode()), now=1000.0)
        drain(server)
    assert server.hub.channels() == {"bench": n}
    datas = [chat_data(size, seed) for seed in range(messages)]
    # the bytes: count what one round hands to the sockets
    written, frame = 0, b""
    for data in datas:
        server.hub.broadcast("bench", "message", data, now=1000.0)
        for action in server.actions():
            if isinstance(action, Transmit):
                for transport_id in action.transport_ids:
                    chunks = server.data_to_send(transport_id)
                    written += sum(map(len, chunks))
                    frame = chunks[-1]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for data in datas:
            server.hub.broadcast("bench", "message", data, now=1000.0)
            drain(server)
        best = min(best, time.perf_counter() - started)
    return written / (messages * n), best / (messages * n) * 1e9, frame


def inflate_cost(frame: bytes, repeats: int = 2000) -> tuple[float, int]:
    """(µs to inflate one message as a receiver does, bytes its inflate state holds)."""
    payload = frame[4:] if frame[1] == 126 else frame[2:]
    tracemalloc.start()
    state = zlib.decompressobj(-15)
    state.decompress(payload + b"\x00\x00\xff\xff")
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    started = time.perf_counter()
    for _ in range(repeats):
        zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    return (time.perf_counter() - started) / repeats * 1e6, held


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=40)
    ap.add_argument("--size", type=int, default=1024, help="envelope bytes, about")
    ap.add_argument("--only", choices=("off", "on"), help="measure one side (a fresh process "
                    "for each gives steadier CPU figures)")
    args = ap.parse_args()
    sys.path.insert(0, str(BENCH))
    results = {}
    for compression in (False, True):
        if args.only and args.only != ("on" if compression else "off"):
            continue
        per_delivery, cost, frame = measure(compression, args.n, args.messages, args.size)
        results[compression] = per_delivery
        if not compression:
            print(f"N = {args.n:,}, {args.messages} messages, the first "
                  f"{len(frame) - 4:,} bytes of JSON")
        else:
            print(f"N = {args.n:,}, {args.messages} messages")
        label = "compression on " if compression else "compression off"
        print(f"{label}: {per_delivery:,.0f} bytes per delivery, {cost:,.0f} ns per delivery")
        if compression:
            assert frame[0] & 0x40, "the subscribers did not get compressed frames"
            micros, held = inflate_cost(frame)
            print(f"receiver: {micros:.1f} µs to inflate one message; its inflate state "
                  f"holds {held / 1024:.0f} KiB")
    if len(results) == 2:
        print(f"bytes on the wire: {results[True] / results[False]:.0%} of uncompressed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
