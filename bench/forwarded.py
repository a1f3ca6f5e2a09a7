"""What a forwarded long-poll or `POST /send` adds: two `realtime serve` nodes on one broker,
a long-poll connection opened on node A, and the same requests sent to A (direct) and to B
(forwarded over the broker to A and back), interleaved, on kept-alive connections.

* send: `POST /send` of one `ping` (answered 202 once applied);
* poll: `GET /poll` while one message (the `pong` of a direct send) is queued, so the poll
  is answered at once rather than held.

    .venv/bin/python bench/forwarded.py --broker redis --samples 500

Prints p50 and p99 per broker and request, direct and forwarded, and the difference (for
docs/benchmarks.md, via bench/NOTES.md).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
import uuid

import httpx

URLS = {
    "redis": "redis://127.0.0.1:6379/0?prefix=fwd-{name}:",
    "nats": "nats://127.0.0.1:4222?prefix=fwd{name}",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(broker: str, name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "realtime_server.cli", "serve", "--port", str(port),
         "--broker", broker, "--node-id", name, "--api-key", "k", "--log-level", "warning",
         "--connection-rate", "0", "--message-rate", "0"], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{name} did not start")


def _quantiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def measure(kind: str, samples: int) -> dict[str, dict[str, tuple[float, float]]]:
    broker = URLS[kind].format(name=uuid.uuid4().hex[:6])
    nodes = [_start(broker, "fa"), _start(broker, "fb")]
    try:
        (_, a), (_, b) = nodes
        with httpx.Client(base_url=a) as direct, httpx.Client(base_url=b) as other:
            opened = direct.get("/poll").json()
            cid, cursor = opened["connection_id"], opened["cursor"]
            ping = b'{"type":"ping"}'
            times: dict[str, dict[str, list[float]]] = {
                "send": {"direct": [], "forwarded": []},
                "poll": {"direct": [], "forwarded": []}}
            for round_ in range(samples + 20):  # the first 20 warm up
                for via, client in (("direct", direct), ("forwarded", other)):
                    start = time.perf_counter()
                    response = client.post("/send", params={"connection_id": cid},
                                           content=ping)
                    took = time.perf_counter() - start
                    assert response.status_code == 202, response.text
                    if round_ >= 20:
                        times["send"][via].append(took)
                    start = time.perf_counter()
                    response = client.get("/poll", params={"connection_id": cid,
                                                           "cursor": str(cursor)})
                    took = time.perf_counter() - start
                    assert response.status_code == 200 and response.json()["messages"], \
                        response.text
                    cursor = response.json()["cursor"]
                    if round_ >= 20:
                        times["poll"][via].append(took)
        return {request: {via: _quantiles(values) for via, values in by_via.items()}
                for request, by_via in times.items()}
    finally:
        for process, _ in nodes:
            process.terminate()
            process.wait(timeout=15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", action="append", choices=sorted(URLS))
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    print("| broker | request | direct p50 / p99 (ms) | forwarded p50 / p99 (ms) | added p50 / p99 (ms) |")
    print("|---|---|---|---|---|")
    for kind in args.broker or sorted(URLS):
        for request, by_via in measure(kind, args.samples).items():
            (d50, d99), (f50, f99) = by_via["direct"], by_via["forwarded"]
            print(f"| {kind} | {request} | {d50:.2f} / {d99:.2f} | {f50:.2f} / {f99:.2f} "
                  f"| {f50 - d50:.2f} / {f99 - d99:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
