"""Instructions per message on the core's hot paths, counted by callgrind: steady on a busy
machine where wall-clock timings are not (used for A/B claims in docs/benchmarks.md).

    .venv/bin/python bench/instructions.py [fanout|node-a|node-b ...]

Each scenario runs twice under `valgrind --tool=callgrind`, with 2 and 6 rounds; the
difference of the two counts divided by the extra work is the cost per unit:
  fanout  one `hub.broadcast` to 1,000 WebSocket subscribers, drained as an adapter would
          (per delivery);
  node-a  a `POST /api/batch` of 500 messages turned into broker messages (per message);
  node-b  those broker messages delivered to one WebSocket subscriber (per message).
Run it from two checkouts (with `PYTHONHASHSEED=0`) to compare them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCENARIOS = {"fanout": 10 * 1000, "node-a": 500, "node-b": 500}  # units per round


def run(scenario: str, rounds: int) -> None:
    """Do `rounds` rounds of a scenario (the part callgrind counts)."""
    sys.path.insert(0, str(BENCH))
    from crosscost import batch_publisher, subscribe_websockets
    from memprofile import drain, sans_io_node

    from realtime_proto.events import EnvelopeReceived

    if scenario == "fanout":
        node = sans_io_node("instructions")
        subscribe_websockets(node, 1000)
        for number in range(rounds * 10):
            node.hub.broadcast("bench", "tick", {"n": number, "t": 1.5}, now=1000.0)
            drain(node)
        return
    node_a, node_b = sans_io_node("node-a"), sans_io_node("node-b")
    subscribe_websockets(node_b, 1)
    publish = batch_publisher(node_a, 500)
    made = [publish() for _ in range(rounds if scenario == "node-a" else 8)]
    if scenario == "node-b":
        for published in made[:rounds]:
            for action in published:
                node_b.handle(EnvelopeReceived(topic=action.topic, data=action.data), now=1000.0)
                drain(node_b)


def count(scenario: str, rounds: int) -> int:
    """Instructions of one run of `rounds` rounds, under callgrind."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--run", scenario, str(rounds)], capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no count from callgrind: {out.stderr[-500:]}")
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help=f"any of {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        run(args.run[0], int(args.run[1]))
        return 0
    for scenario in args.scenarios or SCENARIOS:
        if scenario not in SCENARIOS:
            ap.error(f"no scenario {scenario!r}")
        per_unit = (count(scenario, 6) - count(scenario, 2)) / (4 * SCENARIOS[scenario])
        print(f"{scenario}: {per_unit:,.0f} instructions per "
              f"{'delivery' if scenario == 'fanout' else 'message'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
