"""Publish-to-delivery time on an idle server, per runtime: one publisher, one subscriber.

    .venv/bin/python bench/roundtrip.py [--runtime asyncio trio gevent] [--count 50]

The server runs on a thread of this process (as in `memprofile.py --sockets`). The
publisher sends `POST /api/publish` on a keep-alive connection and reads the answer; the
subscriber is a raw WebSocket client. Each round the subscriber first sends a ping and
reads the pong (as a browser that talks to the server, which makes its kernel delay its
ACKs), then one message is published and timed from the request's send to the delivery's
receipt. The median, the largest and the rounds over 20 ms are printed. A server whose
sockets lack TCP_NODELAY takes about 40 ms here: the delivery waits for the ACK of the
pong.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import WS_KEY, mask_frame, parse_frames
from memprofile import Serving


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", nargs="+", default=["asyncio", "trio", "gevent"])
    ap.add_argument("--count", type=int, default=50)
    args = ap.parse_args()
    for runtime in args.runtime:
        serving = Serving(runtime)
        try:
            port = serving.call(lambda s=serving: s.server.port)  # type: ignore[misc]
            times = rounds(port, args.count)
        finally:
            serving.close()
        slow = sum(t > 20 for t in times)
        print(f"{runtime:8} median {statistics.median(times):6.2f} ms, "
              f"max {max(times):6.2f} ms, {slow} of {len(times)} rounds over 20 ms")
    return 0


def rounds(port: int, count: int) -> list[float]:
    """Milliseconds from each publish request to its delivery."""
    sub = socket.create_connection(("127.0.0.1", port), timeout=10)
    pub = socket.create_connection(("127.0.0.1", port), timeout=10)
    for sock in (sub, pub):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sub.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: " + WS_KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    rest = _until(sub, b"", lambda buf: b"\r\n\r\n" in buf).split(b"\r\n\r\n", 1)[1]
    sub.sendall(mask_frame(b'{"type":"subscribe","channel":"bench"}'))
    rest = _frame(sub, rest, b"subscription.succeeded")
    times = []
    try:
        for number in range(count):
            body = json.dumps({"channel": "bench", "event": "e", "data": number}).encode()
            request = (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(body), body))
            sub.sendall(mask_frame(b"%d" % number, opcode=9))  # a ping: the pong goes first
            rest = _frame(sub, rest, b"%d" % number)
            start = time.perf_counter()
            pub.sendall(request)
            rest = _frame(sub, rest, b'"data":%d' % number)
            times.append((time.perf_counter() - start) * 1000)
            _until(pub, b"", lambda buf: buf.endswith(b"}"))  # the answer, before the next
    finally:
        sub.close()
        pub.close()
    return times


def _frame(sock: socket.socket, buf: bytes, marker: bytes) -> bytes:
    """Read frames until one carries `marker`; what follows it."""
    while True:
        frames, buf = parse_frames(buf)
        if any(marker in payload for _, payload in frames):
            return buf
        buf += _recv(sock)


def _until(sock: socket.socket, buf: bytes, done: Callable[[bytes], bool]) -> bytes:
    while not done(buf):
        buf += _recv(sock)
    return buf


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    return data


if __name__ == "__main__":
    sys.exit(main())
