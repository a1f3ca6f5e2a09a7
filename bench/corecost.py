"""The core's own cost per delivery, without sockets: what a fan-out costs before the kernel.

    .venv/bin/python bench/corecost.py [--n 1000 10000] [--messages 40] [--per-turn 1 4]
                                       [--pusher]

Drives a Node (sans-IO) with N subscribed WebSocket connections, publishes with
`hub.broadcast`, and drains it as an adapter would (`actions()`, then `data_to_send` for
every socket of each `Transmit`). Prints nanoseconds per delivery, the best of five
repetitions, for one message per call (a paced publisher) and several (a burst, coalesced
per socket). `--pusher`: the subscribers speak the Pusher protocol (`/app/KEY`). Pin it (`taskset -c 0`) for steadier figures. Used for the notes in
docs/benchmarks.md; the syscalls an adapter makes come on top (about 9 µs per send here).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def measure(n: int, messages: int, per_turn: int, repeats: int = 5,
            pusher: bool = False) -> float:
    """Best nanoseconds per delivery over `repeats` runs of `messages` broadcasts."""
    from memprofile import PUSHER_PATH, PUSHER_SUBSCRIBE, SUBSCRIBE, drain, sans_io_node

    from realtime_proto.testing.peers import WebSocketPeer

    node = sans_io_node("corecost", pusher)
    peer = WebSocketPeer()
    head = peer.handshake_bytes(PUSHER_PATH if pusher else "/ws")
    subscribe = (PUSHER_SUBSCRIBE if pusher else SUBSCRIBE).decode()
    for index in range(n):
        transport = node.open_connection(now=1000.0, peer=f"127.0.0.1:{index}")
        node.receive_data(transport, head, now=1000.0)
        node.receive_data(transport, peer.send_text(subscribe), now=1000.0)
        drain(node)
    assert node.hub.channels() == {"bench": n}
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for number in range(messages // per_turn):
            for _ in range(per_turn):
                node.hub.broadcast("bench", "tick", {"n": number, "t": 1.5}, now=1000.0)
            drain(node)
        best = min(best, time.perf_counter() - started)
    return best / (messages // per_turn * per_turn * n) * 1e9


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--messages", type=int, default=40)
    ap.add_argument("--per-turn", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--pusher", action="store_true", help="Pusher-protocol subscribers")
    args = ap.parse_args()
    sys.path.insert(0, str(BENCH))
    for n in args.n:
        for per_turn in args.per_turn:
            cost = measure(n, args.messages, per_turn, pusher=args.pusher)
            print(f"N = {n:,}, {per_turn} message(s) per call: {cost:,.0f} ns per delivery")
    return 0


if __name__ == "__main__":
    sys.exit(main())
