"""The load generator: lean uvloop clients spread over several worker processes.

Subscribers are raw-socket clients (no WebSocket library): during setup they parse whole
frames (handshake, subscribe, the dialect's answer); once subscribed they only *count*
deliveries, by counting a marker that every published payload carries exactly once
(``@T`` followed by the 19-digit send time), at C speed with ``bytes.count``. No frame is
decoded on the hot path, whatever the transport (WebSocket, SSE or long-poll), so the
receiving side costs one ``recv`` per chunk plus a memchr-speed scan.

In latency mode each marker's timestamp (``time.monotonic_ns()`` of the publisher: on
Linux CLOCK_MONOTONIC is system-wide, so processes share it) is subtracted from the
receive time of the chunk that carried it.

Workers are forked by :class:`LoadGen`, pinned to the load-generator core, and driven
over pipes; each publishes its running delivery total in a shared array that the
publisher reads for flow control.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import re
import socket
import struct
import time
from collections import deque
from typing import Any

MARK = b"@T"
IP_BIND_ADDRESS_NO_PORT = 24
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
_now = time.monotonic_ns


# ---------------------------------------------------------------------------- frames


def mask_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame (masked, with an all-zero mask key: the payload is unchanged)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def parse_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole server frames in ``buf`` (unmasked) and the unparsed rest."""
    out = []
    pos, n = 0, len(buf)
    while n - pos >= 2:
        ln = buf[pos + 1] & 0x7F
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
        end = pos + hl + ln
        if end > n:
            break
        out.append((buf[pos] & 0x0F, buf[pos + hl : end]))
        pos = end
    return out, buf[pos:]


def payload_bytes(seq: int, pad: int) -> bytes:
    """The published data object: a JSON object carrying the marker exactly once."""
    return b'{"m":"@T%019d","s":%d,"p":"%s"}' % (_now(), seq, b"x" * pad)


# --------------------------------------------------------------------------- dialects


class Dialect:
    """How one system's WebSocket clients subscribe. Subclasses are tiny."""

    ws_path = "/"

    def request(self, host: str, port: int) -> bytes:
        return (
            f"GET {self.ws_path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        ).encode() + b"Sec-WebSocket-Key: " + WS_KEY + b"\r\n\r\n"

    def on_open(self, subscribe: bool) -> list[bytes]:
        return [mask_frame(b'{"type":"subscribe","channel":"bench"}')] if subscribe else []

    def on_frame(self, opcode: int, payload: bytes, subscribe: bool) -> tuple[list[bytes], bool]:
        """Frames to send back, and whether the connection is now ready."""
        if opcode == 9:
            return [mask_frame(payload, 10)], False
        if b'"subscribed"' in payload:
            return [], True
        return [], False

    def ping_reply(self, data: bytes) -> bytes | None:
        """Answer to a keepalive ping seen while counting (data is a small chunk)."""
        if data[:1] == b"\x89" and len(data) == 2 + data[1]:
            return mask_frame(data[2:], 10)
        return None


class OursDialect(Dialect):
    """realtime_proto: GET /ws, {"type":"subscribe"} -> subscription.succeeded."""

    ws_path = "/ws"

    def on_frame(self, opcode: int, payload: bytes, subscribe: bool) -> tuple[list[bytes], bool]:
        if opcode == 9:
            return [mask_frame(payload, 10)], False
        if b'"ping"' in payload and b'"type"' in payload and len(payload) < 80:
            return [mask_frame(b'{"type":"pong"}')], False
        if b"subscription.succeeded" in payload:
            return [], True
        if not subscribe and b"connection.established" in payload:
            return [], True
        return [], False

    def ping_reply(self, data: bytes) -> bytes | None:
        if b'"ping"' in data:
            return mask_frame(b'{"type":"pong"}')
        return super().ping_reply(data)


class SocketIODialect(Dialect):
    """socket.io v4 over engine.io v4, WebSocket transport only."""

    ws_path = "/socket.io/?EIO=4&transport=websocket"

    def on_open(self, subscribe: bool) -> list[bytes]:
        return []

    def on_frame(self, opcode: int, payload: bytes, subscribe: bool) -> tuple[list[bytes], bool]:
        if payload[:1] == b"0":  # engine.io open
            return [mask_frame(b"40")], False
        if payload[:2] == b"40":  # socket.io connected to the default namespace
            if subscribe:
                return [mask_frame(b'42["subscribe","bench"]')], False
            return [], True
        if payload == b"2":
            return [mask_frame(b"3")], False
        if payload.startswith(b'42["subscribed"'):
            return [], True
        return [], False

    def ping_reply(self, data: bytes) -> bytes | None:
        if data == b"\x81\x012":
            return mask_frame(b"3")
        return None


class PusherDialect(Dialect):
    """The Pusher protocol, as pusher-js speaks it: GET /app/KEY?protocol=7, wait for
    pusher:connection_established, pusher:subscribe -> subscription_succeeded."""

    ws_path = "/app/bench-key?protocol=7&client=js&version=8.4.0&flash=false"

    def on_open(self, subscribe: bool) -> list[bytes]:
        return []

    def on_frame(self, opcode: int, payload: bytes, subscribe: bool) -> tuple[list[bytes], bool]:
        if opcode == 9:
            return [mask_frame(payload, 10)], False
        if b"pusher:ping" in payload:
            return [mask_frame(b'{"event":"pusher:pong","data":{}}')], False
        if b"pusher:connection_established" in payload:
            if subscribe:
                return [mask_frame(b'{"event":"pusher:subscribe","data":{"channel":"bench"}}')], False
            return [], True
        if b"pusher_internal:subscription_succeeded" in payload:
            return [], True
        return [], False

    def ping_reply(self, data: bytes) -> bytes | None:
        if b"pusher:ping" in data:
            return mask_frame(b'{"event":"pusher:pong","data":{}}')
        return super().ping_reply(data)


DIALECTS: dict[str, type[Dialect]] = {
    "json": Dialect,
    "ours": OursDialect,
    "socketio": SocketIODialect,
    "pusher": PusherDialect,
}


# ---------------------------------------------------------------------- subscribers


class Sub(asyncio.Protocol):
    """Base of the subscriber protocols: the counting / latency hot path."""

    __slots__ = ("buf", "count", "last_at", "ready", "state", "transport", "w")

    def __init__(self, w: Worker) -> None:
        self.w = w
        self.buf = b""
        self.count = 0
        self.last_at = False
        self.state = 0  # 0 connecting, 1 setup, 2 counting
        self.ready: asyncio.Future[bool] = w.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.w.conns.add(self)
        self.start()

    def connection_lost(self, exc: Exception | None) -> None:
        self.w.conns.discard(self)
        self.w.lost += 1
        if not self.ready.done():
            self.ready.set_result(False)

    def start(self) -> None:
        raise NotImplementedError

    def became_ready(self, rest: bytes) -> None:
        self.state = 2
        self.buf = b""
        if not self.ready.done():
            self.ready.set_result(True)
        if rest:
            self.counted(rest)

    def counted(self, data: bytes) -> None:
        """The hot path: count (and time) the markers in one received chunk."""
        w = self.w
        if w.latency:
            t = _now()
            buf = self.buf + data if self.buf else data
            i = buf.find(MARK)
            last = 0
            n = 0
            lat = w.lat
            size = len(buf)
            while i >= 0:
                if i + 21 > size:
                    break
                lat.append(t - int(buf[i + 2 : i + 21]))
                n += 1
                last = i + 21
                i = buf.find(MARK, last)
            self.buf = buf[max(last, size - 20) :]
        else:
            n = data.count(MARK)
            if self.last_at and data[0] == 84:  # b"T" after a chunk ending in b"@"
                n += 1
            self.last_at = data[-1] == 64
            if n == 0 and len(data) < 80:
                reply = self.w.dialect.ping_reply(data)
                if reply is not None:
                    self.transport.write(reply)
                return
        self.count += n
        w.total += n
        w.shared[w.idx] = w.total


class WSSub(Sub):
    __slots__ = ()

    def start(self) -> None:
        self.state = 0
        self.transport.write(self.w.dialect.request(self.w.host, self.w.port))

    def data_received(self, data: bytes) -> None:
        if self.state == 2:
            self.counted(data)
            return
        buf = self.buf + data
        if self.state == 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.w.note_error(buf[:200])
                self.transport.abort()
                return
            self.state = 1
            buf = buf[end + 4 :]
            for f in self.w.dialect.on_open(self.w.subscribe):
                self.transport.write(f)
        frames, rest = parse_frames(buf)
        dialect, sub = self.w.dialect, self.w.subscribe
        for k, (op, payload) in enumerate(frames):
            out, ready = dialect.on_frame(op, payload, sub)
            for f in out:
                self.transport.write(f)
            if ready:
                tail = b"".join(  # frames after the answer, re-framed bytes don't matter
                    p for _, p in frames[k + 1 :]
                )
                self.became_ready(tail + rest)
                return
        self.buf = rest


class SSESub(Sub):
    __slots__ = ()

    def start(self) -> None:
        w = self.w
        self.transport.write(
            f"GET /sse?channels=bench HTTP/1.1\r\nHost: {w.host}:{w.port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        self.state = 1

    def data_received(self, data: bytes) -> None:
        if self.state == 2:
            self.counted(data)
            return
        buf = self.buf + data
        if not buf.startswith(b"HTTP/1.1 200") and len(buf) >= 12:
            self.w.note_error(buf[:200])
            self.transport.abort()
            return
        i = buf.find(b"subscription.succeeded")
        if i < 0:
            self.buf = buf
            return
        j = buf.find(b"\n\n", i)
        if j < 0:
            self.buf = buf
            return
        self.became_ready(buf[j + 2 :])


_CURSOR = re.compile(rb'"cursor"\s*:\s*(\d+)')
_CONN_ID = re.compile(rb'"connection_id"\s*:\s*"([^"]+)"')
_CLEN = re.compile(rb"(?i)content-length:\s*(\d+)")


class PollSub(Sub):
    """Long-poll: GET /poll, POST /send (subscribe), then GET /poll?… in a loop."""

    __slots__ = ("conn_id", "cursor", "step")

    def start(self) -> None:
        self.conn_id = b""
        self.cursor = b"0"
        self.step = 0  # 0 open, 1 send, 2 polling
        self.state = 1
        self.get(b"/poll")

    def get(self, target: bytes) -> None:
        self.transport.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")

    def poll(self) -> None:
        self.get(b"/poll?connection_id=" + self.conn_id + b"&cursor=" + self.cursor)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            i = head.find(b"content-length:")
            if i < 0:
                self.w.note_error(buf[:200])
                self.transport.abort()
                return
            j = head.find(b"\r\n", i)
            ln = int(head[i + 15 : j if j > 0 else len(head)])
            if len(buf) < end + 4 + ln:
                break
            status = buf[9:12]
            body = buf[end + 4 : end + 4 + ln]
            buf = buf[end + 4 + ln :]
            self.on_response(status, body)
        self.buf = buf

    def on_response(self, status: bytes, body: bytes) -> None:
        if self.step == 0:
            m = _CONN_ID.search(body)
            c = _CURSOR.search(body)
            if status != b"200" or not m or not c:
                self.w.note_error(status + b" " + body[:200])
                self.transport.abort()
                return
            self.conn_id, self.cursor = m.group(1), c.group(1)
            self.step = 1
            msg = b'{"type":"subscribe","channel":"bench"}'
            self.transport.write(
                b"POST /send?connection_id=" + self.conn_id + b" HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(msg) + msg
            )
            return
        if self.step == 1:
            if status != b"202":
                self.w.note_error(status + b" " + body[:200])
            self.step = 2
            self.poll()
            return
        c = _CURSOR.search(body)
        if status != b"200" or not c:
            self.w.note_error(status + b" " + body[:200])
            self.transport.abort()
            return
        self.cursor = c.group(1)
        if self.state == 1:
            if b"subscription.succeeded" in body:
                self.state = 2
                self.ready.set_result(True)
                if MARK in body:
                    self.counted(body)
        else:
            self.counted(body)
        self.poll()


TRANSPORTS: dict[str, type[Sub]] = {"ws": WSSub, "sse": SSESub, "poll": PollSub}


# --------------------------------------------------------------------------- worker


class Worker:
    def __init__(self, idx: int, shared: Any, pipe: Any) -> None:
        self.idx = idx
        self.shared = shared
        self.pipe = pipe
        self.conns: set[Sub] = set()
        self.total = 0
        self.latency = False
        self.lat = array.array("q")
        self.lost = 0
        self.errors: list[str] = []
        self.dialect: Dialect = Dialect()
        self.subscribe = True
        self.host = "127.0.0.1"
        self.port = 0

    def note_error(self, what: bytes | str) -> None:
        if len(self.errors) < 5:
            self.errors.append(what.decode("utf-8", "replace") if isinstance(what, bytes) else what)

    async def open_one(self, cls: type[Sub], src: str, timeout: float) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((src, 0))
            sock.setblocking(False)
            await asyncio.wait_for(self.loop.sock_connect(sock, (self.host, self.port)), timeout)
            _, proto = await self.loop.create_connection(lambda: cls(self), sock=sock)
        except (TimeoutError, OSError) as e:
            sock.close()
            self.note_error(f"connect: {e!r}")
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(proto.ready), timeout)
        except TimeoutError:
            self.note_error("subscribe timed out")
            proto.transport.abort()
            return False

    async def connect(self, a: dict[str, Any]) -> dict[str, Any]:
        self.host, self.port = a["host"], a["port"]
        self.dialect = DIALECTS[a["dialect"]]()
        self.subscribe = True
        cls = TRANSPORTS[a["transport"]]
        count, conc, src = a["count"], a.get("concurrency", 32), a["src"]
        deadline = time.monotonic() + a.get("timeout", 120)
        ok = failed = 0
        sem = asyncio.Semaphore(conc)
        t0 = time.monotonic()

        async def one() -> None:
            nonlocal ok, failed
            async with sem:
                left = deadline - time.monotonic()
                if left <= 0 or failed > max(50, count // 20):
                    failed += 1
                    return
                if await self.open_one(cls, src, min(left, 30.0)):
                    ok += 1
                else:
                    failed += 1

        await asyncio.gather(*(one() for _ in range(count)))
        return {"ok": ok, "failed": failed, "seconds": time.monotonic() - t0,
                "errors": self.errors[:5]}

    def reset(self, a: dict[str, Any]) -> dict[str, Any]:
        self.latency = a.get("mode") == "latency"
        self.set_tick(a.get("tick", -1.0))
        self.lat = array.array("q")
        self.total = 0
        self.shared[self.idx] = 0
        for c in self.conns:
            c.count = 0
            c.buf = b""
            c.last_at = False
        return {"conns": len(self.conns)}

    def stats(self, a: dict[str, Any]) -> dict[str, Any]:
        counts = [c.count for c in self.conns if c.state == 2]
        r = {
            "total": self.total, "conns": len(counts), "lost": self.lost,
            "min": min(counts) if counts else 0, "max": max(counts) if counts else 0,
            "errors": self.errors[:5],
        }
        if a.get("latency"):
            r["lat"] = self.lat.tobytes()
        return r

    def close(self) -> dict[str, Any]:
        n = len(self.conns)
        for c in list(self.conns):
            c.transport.abort()  # SO_LINGER 0: a reset, no TIME_WAIT left behind
        self.conns.clear()
        self.lost = 0
        self.errors.clear()
        return {"closed": n}

    def nap(self) -> None:
        """Keep a callback always ready, so that the loop polls with a zero timeout and the
        worker never sleeps in epoll_wait: a server's write then costs it no wake-up of
        the reader (an IPI, costly in a VM), as with clients on other machines. With a
        ``tick``, it sleeps that long between sweeps, so that each ``recv`` takes every
        frame that arrived meanwhile (throughput mode: fewer reads per delivery)."""
        if self.tick > 0:
            if self.awake > 0:
                self.awake -= 1  # a command came: let the loop read and run it first
            elif self.pipe.poll(self.tick):  # sleep, but wake up at once for a command
                self.awake = 3
        if self.tick >= 0:
            self.loop.call_soon(self.nap)
        else:
            self.napping = False

    def set_tick(self, tick: float) -> None:
        """tick > 0: sweep every tick seconds; 0: busy-poll; < 0: block in epoll_wait."""
        self.tick = tick
        if tick >= 0 and not self.napping:
            self.napping = True
            self.loop.call_soon(self.nap)

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.napping = False
        self.awake = 0
        self.tick = -1.0
        q: asyncio.Queue[Any] = asyncio.Queue()
        self.loop.add_reader(self.pipe.fileno(), lambda: q.put_nowait(self.pipe.recv()))
        while True:
            msg = await q.get()
            cmd = msg["cmd"]
            if cmd == "exit":
                self.tick = -1.0
                self.close()
                os.set_blocking(self.pipe.fileno(), True)
                self.pipe.send({"ok": True})
                return
            try:
                if cmd == "connect":
                    r = await self.connect(msg)
                elif cmd == "reset":
                    r = self.reset(msg)
                elif cmd == "stats":
                    r = self.stats(msg)
                elif cmd == "close":
                    r = self.close()
                else:
                    r = {"error": f"unknown command {cmd}"}
            except Exception as e:  # report, don't die: the orchestrator decides
                r = {"error": repr(e)}
            os.set_blocking(self.pipe.fileno(), True)  # the loop made it non-blocking
            self.pipe.send(r)


def _worker_main(idx: int, shared: Any, pipe: Any, core: int | None) -> None:
    import uvloop

    if core is not None:
        os.sched_setaffinity(0, {core})
    uvloop.run(Worker(idx, shared, pipe).serve())
    os._exit(0)  # nothing to clean up that the kernel won't


class LoadGen:
    """K forked subscriber workers, each on its own loopback source address."""

    def __init__(self, workers: int, core: int | None, base_addr: int = 10) -> None:
        ctx = mp.get_context("fork")
        self.shared = ctx.RawArray("Q", workers)
        self.pipes = []
        self.procs = []
        self.addrs = [f"127.0.0.{base_addr + i}" for i in range(workers)]
        for i in range(workers):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(i, self.shared, b, core), daemon=True)
            p.start()
            self.pipes.append(a)
            self.procs.append(p)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid]

    def total(self) -> int:
        return sum(self.shared)

    def call_all(self, msgs: list[dict[str, Any]], timeout: float = 180) -> list[dict[str, Any]]:
        for p, m in zip(self.pipes, msgs, strict=False):
            p.send(m)
        out = []
        deadline = time.monotonic() + timeout
        for p in self.pipes[: len(msgs)]:
            if not p.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("load generator worker did not answer")
            out.append(p.recv())
        return out

    def broadcast(self, msg: dict[str, Any], timeout: float = 180) -> list[dict[str, Any]]:
        return self.call_all([msg] * len(self.pipes), timeout)

    def connect(self, host: str, port: int, n: int, dialect: str, transport: str = "ws",
                timeout: float = 120, concurrency: int = 32,
                shares: list[int] | None = None) -> dict[str, Any]:
        k = len(self.pipes)
        if shares is None:
            shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        rs = self.call_all([
            {"cmd": "connect", "host": host, "port": port, "count": shares[i],
             "dialect": dialect, "transport": transport, "src": self.addrs[i],
             "timeout": timeout, "concurrency": concurrency}
            for i in range(k)
        ], timeout + 60)
        errors = [e for r in rs for e in r.get("errors", []) + ([r["error"]] if "error" in r else [])]
        return {"ok": sum(r.get("ok", 0) for r in rs), "failed": sum(r.get("failed", 0) for r in rs),
                "seconds": max(r.get("seconds", 0) for r in rs), "errors": errors[:5]}

    def reset(self, mode: str = "count", tick: float = -1.0,
              per_worker: list[tuple[str, float]] | None = None) -> None:
        if per_worker:
            self.call_all([{"cmd": "reset", "mode": m, "tick": t} for m, t in per_worker])
        else:
            self.broadcast({"cmd": "reset", "mode": mode, "tick": tick})

    def stats(self, latency: bool = False) -> dict[str, Any]:
        rs = self.broadcast({"cmd": "stats", "latency": latency})
        out = {
            "total": sum(r["total"] for r in rs), "conns": sum(r["conns"] for r in rs),
            "lost": sum(r["lost"] for r in rs),
            "min": min((r["min"] for r in rs if r["conns"]), default=0),
            "max": max((r["max"] for r in rs if r["conns"]), default=0),
            "errors": [e for r in rs for e in r["errors"]][:5],
        }
        if latency:
            lat = array.array("q")
            for r in rs:
                lat.frombytes(r["lat"])
            out["lat"] = lat
        return out

    def close(self) -> None:
        self.broadcast({"cmd": "close"})

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.broadcast({"cmd": "exit"}, timeout=10)
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(2)


# ------------------------------------------------------------------------ publishers


class Publisher(asyncio.Protocol):
    """One publishing connection. ``publish(seq)`` is the per-system function."""

    pad = 32

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.buf = b""
        self.ready: asyncio.Future[bool] | None = None
        self.errors: list[str] = []
        self.sent = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.bind(("127.0.0.9", 0))
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (self.host, self.port)), 10)
        self.transport, _ = await loop.create_connection(lambda: self, sock=sock)
        await asyncio.wait_for(self.ready, 10)

    def close(self) -> None:
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ready and not self.ready.done():
            self.ready.set_exception(ConnectionError("publisher connection lost"))

    def publish(self, seq: int) -> None:
        raise NotImplementedError

    def backlog(self) -> int:
        """Publishes written but not yet acknowledged (HTTP); 0 where there is no answer."""
        return 0


class WSPublisher(Publisher):
    """A WebSocket client that sends ``{"type":"publish",…,"data":D}`` (json peers)."""

    dialect_name = "json"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.dialect = DIALECTS[self.dialect_name]()
        self.state = 0
        transport.write(self.dialect.request(self.host, self.port))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if self.state == 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(buf[:200].decode("latin-1")))
                return
            self.state = 1
            buf = buf[end + 4 :]
            if not self.dialect_needs_setup():
                self.ready.set_result(True)
        frames, self.buf = parse_frames(buf)
        for op, p in frames:
            out, ready = self.dialect.on_frame(op, p, False)
            for f in out:
                self.transport.write(f)
            if ready and not self.ready.done():
                self.ready.set_result(True)

    def dialect_needs_setup(self) -> bool:
        return False

    def publish(self, seq: int) -> None:
        self.transport.write(mask_frame(
            b'{"type":"publish","channel":"bench","data":' + payload_bytes(seq, self.pad) + b"}"
        ))
        self.sent += 1


class SocketIOPublisher(WSPublisher):
    dialect_name = "socketio"

    def dialect_needs_setup(self) -> bool:
        return True

    def publish(self, seq: int) -> None:
        self.transport.write(mask_frame(b'42["publish",' + payload_bytes(seq, self.pad) + b"]"))
        self.sent += 1


class HTTPPublisher(Publisher):
    """``POST /api/publish`` on one keep-alive connection, pipelined up to ``depth``."""

    depth = 64

    def __init__(self, host: str, port: int, api_key: str, channel: str = "bench") -> None:
        super().__init__(host, port)
        self.head = (
            f"POST /api/publish HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
        ).encode()
        self.channel = channel.encode()
        self.answered = 0
        self.not_ok = 0
        self.queue: deque[int] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ready.set_result(True)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            m = _CLEN.search(buf, pos, end)
            body_end = end + 4 + (int(m.group(1)) if m else 0)
            if body_end > len(buf):
                break
            if buf[pos + 9 : pos + 12] != b"200":
                self.not_ok += 1
                if len(self.errors) < 3:
                    self.errors.append(buf[pos:body_end][:300].decode("utf-8", "replace"))
            self._answered_one()
            pos = body_end
        self.buf = buf[pos:]
        self._refill()

    def _answered_one(self) -> None:
        self.answered += 1

    def _refill(self) -> None:
        while self.queue and self.sent - self.answered < self.depth:
            self._send(self.queue.popleft())

    def _message(self, seq: int) -> bytes:
        return (b'{"channel":"' + self.channel + b'","event":"bench","data":'
                + payload_bytes(seq, self.pad) + b"}")

    def _send(self, seq: int) -> None:
        body = self._message(seq)
        self.transport.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.sent += 1

    def publish(self, seq: int) -> None:
        if self.sent - self.answered < self.depth and not self.queue:
            self._send(seq)
        else:
            self.queue.append(seq)

    def backlog(self) -> int:
        return self.sent - self.answered + len(self.queue)


class BatchHTTPPublisher(HTTPPublisher):
    """``POST /api/batch``: while `depth` calls are out, publishes wait, and go together
    (up to `max_batch`) in the next call; at low rates every call carries one."""

    depth = 4
    max_batch = 500

    def __init__(self, host: str, port: int, api_key: str, channel: str = "bench") -> None:
        super().__init__(host, port, api_key, channel)
        self.head = self.head.replace(b"/api/publish", b"/api/batch")
        self.calls: deque[int] = deque()  # messages per call out, oldest first

    def _answered_one(self) -> None:
        self.answered += self.calls.popleft()

    def _refill(self) -> None:
        while self.queue and len(self.calls) < self.depth:
            count = min(len(self.queue), self.max_batch)
            body = b'{"messages":[' + b",".join(
                self._message(self.queue.popleft()) for _ in range(count)) + b"]}"
            self.transport.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.calls.append(count)
            self.sent += count

    def publish(self, seq: int) -> None:
        self.queue.append(seq)
        self._refill()


# ---------------------------------------------------------------------- measurement


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


TICK = os.sysconf("SC_CLK_TCK")


def core_times() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat: softirq and ksoftirqd work (much of
    the loopback TCP cost) show up here even when no process is charged for it."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                idle = v[3] + v[4]
                out[int(name[3:])] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


class CPUMeter:
    """CPU used by the server process, by the load generator's processes, and per core."""

    def __init__(self, server_pid: int, gen_pids: list[int]) -> None:
        self.server_pid, self.gen_pids = server_pid, gen_pids
        self.t0 = time.monotonic()
        self.s0 = cpu_ticks(server_pid)
        self.g0 = sum(cpu_ticks(p) for p in gen_pids)
        self.c0 = core_times()

    def read(self) -> dict[str, Any]:
        dt = time.monotonic() - self.t0
        s = (cpu_ticks(self.server_pid) - self.s0) / TICK
        g = (sum(cpu_ticks(p) for p in self.gen_pids) - self.g0) / TICK
        c1 = core_times()
        cores = {}
        for k, (b, t) in c1.items():
            b0, t0 = self.c0.get(k, (0, 0))
            cores[k] = (b - b0) / (t - t0) if t > t0 else 0.0
        return {"server_cpu": s / dt if dt else 0.0, "loadgen_cpu": g / dt if dt else 0.0,
                "cores": cores}


IN_FLIGHT_DELIVERIES = 200_000  # most deliveries the publisher keeps in flight
IN_FLIGHT_SECONDS = 1.0  # ... and at most this much of the server's work


async def fanout(pub: Publisher, gen: LoadGen, n: int, duration: float, window: int,
                 drain: float = 15.0, in_flight: float = IN_FLIGHT_SECONDS,
                 max_window: int = 500, server_pid: int | None = None,
                 other_pids: tuple[int, ...] = ()) -> dict[str, Any]:
    """Publish for ``duration`` seconds keeping at most ``window`` messages (× n deliveries)
    in flight, then wait for the deliveries to drain. Deliveries per second over the whole
    span from first publish to last delivery.

    The window only grows, every quarter second: to ``in_flight`` seconds of the server's
    work at the rate just seen, at most IN_FLIGHT_DELIVERIES / n messages (a server that
    coalesces writes goes faster with more queued per connection, so it gets room, the
    same for every system), and doubled while the server process (with ``other_pids``,
    the other processes of a path sharing its core) was less than 90 % busy (it was waiting
    for the publisher). A slow server thus never takes long to drain."""
    cap = max(window, min(max_window, IN_FLIGHT_DELIVERIES // n))
    shared = gen.shared
    seq = 0
    t0 = time.monotonic()
    stop_at = t0 + duration
    samples: list[tuple[float, int]] = []
    next_sample = t0
    pids = (server_pid, *other_pids) if server_pid else ()
    cpu_prev = sum(map(cpu_ticks, pids))
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        got = sum(shared)
        room = window - (seq - got // n)
        if room > 0:
            for _ in range(room):
                pub.publish(seq)
                seq += 1
        if now >= next_sample:
            if samples:
                t_prev, got_prev = samples[-1]
                dt = max(1e-3, now - t0 - t_prev)
                recent = (got - got_prev) / dt
                window = max(window, min(cap, int(recent * in_flight / n)))
                if pids:
                    cpu = sum(map(cpu_ticks, pids))
                    if (cpu - cpu_prev) / TICK / dt < 0.9:
                        window = min(cap, window * 2)
                    cpu_prev = cpu
            samples.append((now - t0, got))
            next_sample += 0.25
        await asyncio.sleep(0.0005)
    expected = seq * n
    t_pub = time.monotonic() - t0
    deadline = time.monotonic() + drain
    while sum(shared) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    t_end = time.monotonic()
    got = sum(shared)
    samples.append((t_end - t0, got))
    # steady state: deliveries in each whole second of publishing after the first half
    # second, and the median of those
    per_second = per_second_counts(samples, 0.5, t_pub)
    recent = (_at(samples, t_pub) or 0) - (_at(samples, max(0.0, t_pub - 0.5)) or 0)
    return {
        "published": seq, "expected": expected, "delivered": got,
        "seconds": t_end - t0, "publish_seconds": t_pub,
        "overall_rate": got / (t_end - t0),
        "rate": got / (t_end - t0),
        "median_second": sorted(per_second)[len(per_second) // 2] if per_second else None,
        "per_second": per_second, "recent_rate": recent / 0.5,
        "samples": samples, "final_window": window,
    }


def per_second_counts(samples: list[tuple[float, float]], start: float,
                      end: float) -> list[float]:
    """Deliveries in each whole second from ``start`` to ``end`` (seconds), from
    (time, count so far) samples."""
    out = []
    while start + 1.0 <= end + 1e-9:
        a = _at(samples, start)
        b = _at(samples, start + 1.0)
        if a is not None and b is not None:
            out.append(b - a)
        start += 1.0
    return out


def _at(samples: list[tuple[float, float]], t: float) -> float | None:
    """Deliveries counted at time t, interpolated between samples."""
    for (t0, v0), (t1, v1) in itertools.pairwise(samples):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)
    return None


async def paced(pub: Publisher, gen: LoadGen, n: int, rate: float, count: int,
                drain: float = 10.0, max_behind: float = 2.0) -> dict[str, Any]:
    """Publish ``count`` messages at ``rate`` per second (absolute schedule). Stops early,
    marked ``overloaded``, when deliveries fall ``max_behind`` seconds behind the schedule."""
    t0 = time.monotonic()
    overloaded = False
    seq = 0
    for seq in range(count):
        target = t0 + seq / rate
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if seq * n - gen.total() > max_behind * rate * n:
            overloaded = True
            break
        pub.publish(seq)
    else:
        seq = count
    expected = seq * n
    deadline = time.monotonic() + drain
    while gen.total() < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return {"published": seq, "expected": expected, "delivered": gen.total(),
            "seconds": time.monotonic() - t0, "overloaded": overloaded}


def json_dumps(o: Any) -> str:
    return json.dumps(o, indent=1, sort_keys=True)
