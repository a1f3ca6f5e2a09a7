"""The practical ceiling of Python: a minimal uvloop WebSocket fan-out server.

It does a real RFC 6455 handshake, reads masked client frames, and answers
``{"type":"subscribe",...}`` with ``{"type":"subscribed"}``. A client frame
``{"type":"publish",...}`` is fanned out as is: the frame is encoded once and the same
bytes are written to every subscriber with one ``transport.write`` each. Nothing else
(no JSON parsing, no per-connection queue): the least Python can do per delivery.

With ``--batch`` it instead queues the encoded frame on every subscriber and writes each
connection once per loop turn with everything queued for it (the write-coalescing
design the issue's targets refer to); that mode is also the load generator's
capacity probe.

Usage: python raw_uvloop.py --port P [--batch]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import signal

import uvloop

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
def encode_text(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


SUBSCRIBED = encode_text(b'{"type":"subscribed"}')


class Hub:
    def __init__(self, batch: bool) -> None:
        self.subscribers: set[Conn] = set()
        self.batch = batch
        self.dirty: list[Conn] = []
        self.flush_scheduled = False
        self.loop = asyncio.get_event_loop()

    def publish(self, frame: bytes) -> None:
        if not self.batch:
            for c in self.subscribers:
                c.transport.write(frame)
            return
        dirty = self.dirty
        for c in self.subscribers:
            if not c.pending:
                dirty.append(c)
            c.pending.append(frame)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        dirty, self.dirty = self.dirty, []
        for c in dirty:
            p = c.pending
            c.transport.write(p[0] if len(p) == 1 else b"".join(p))
            p.clear()


class Conn(asyncio.Protocol):
    __slots__ = ("buf", "hub", "open", "pending", "transport")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.buf = b""
        self.open = False
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.subscribers.discard(self)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            key = b""
            for line in buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.open = True
            buf = buf[end + 4 :]
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            ln = b1 & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hl = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hl = 10
            masked = b1 & 0x80
            start = pos + hl + (4 if masked else 0)
            end = start + ln
            if end > n:
                break
            payload = buf[start:end]
            if masked:
                mask = buf[start - 4 : start]
                payload = _unmask(payload, mask)
            self.on_frame(b0 & 0x0F, payload)
            pos = end
        self.buf = buf[pos:]

    def on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 8:
            self.transport.write(b"\x88\x00")
            self.transport.close()
        elif opcode == 9:
            self.transport.write(bytes((0x8A, len(payload))) + payload)
        elif opcode in (1, 2):
            if payload.startswith(b'{"type":"publish"'):
                self.hub.publish(encode_text(payload))
            elif payload.startswith(b'{"type":"subscribe"'):
                self.hub.subscribers.add(self)
                self.transport.write(SUBSCRIBED)


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    m = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ m).to_bytes(n, "little")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--batch", action="store_true")
    args = ap.parse_args()
    loop = asyncio.get_running_loop()
    hub = Hub(args.batch)
    server = await loop.create_server(lambda: Conn(hub), args.host, args.port, backlog=4096)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    print("ready", flush=True)
    await stop
    server.close()


if __name__ == "__main__":
    uvloop.run(main())
