"""A WebSocket echo server on realtime_proto's framing alone: no Node, no Hub.

`HttpFraming` reads the upgrade request, `WebSocketFraming` answers the handshake and
carries the connection; this file only moves bytes between them and an asyncio socket
and echoes every message with the same opcode. Run it with

    python examples/websocket_echo/server.py --port 9001 [--compression]

(`--compression`: agree to permessage-deflate when the client offers it, and echo
compressed) and connect to ``ws://127.0.0.1:9001/`` (any path). It is the endpoint the Autobahn
fuzzing client is run against (see docs/testing.md).
"""

from __future__ import annotations

import argparse
import asyncio

from realtime_proto.framing import MessageIn, RequestReceived
from realtime_proto.framing.deflate import compressed_frame
from realtime_proto.framing.http import HttpFraming
from realtime_proto.framing.websocket import WebSocketFraming, frame_message

#: large enough for Autobahn's biggest messages (case 9.x: 16 MiB)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class EchoProtocol(asyncio.Protocol):
    """One client: HTTP until the upgrade, then WebSocket frames echoed back."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 compression: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._max_message = max_message_bytes
        self._compression = compression
        self._http = HttpFraming(now=self._loop.time())
        self._ws: WebSocketFraming | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        if self._ws is None:
            self._http.receive_data(data, now=now)
        else:
            self._ws.receive_data(data, now=now)
        self._flush()

    def eof_received(self) -> bool:
        if self._ws is None:
            self._http.receive_eof(now=self._loop.time())
        else:
            self._ws.receive_eof(now=self._loop.time())
        self._flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _flush(self) -> None:
        """Handle every event, write what the framing has for the peer, arm its timer."""
        framing: HttpFraming | WebSocketFraming
        if self._ws is None:
            for event in self._http.events():
                if isinstance(event, RequestReceived):
                    self._upgrade()
        if self._ws is not None:
            # events() after a violation still holds the messages before it: echo them,
            # and the Close goes out after them (it waits for data_to_send())
            while events := self._ws.events():
                for event in events:
                    if isinstance(event, MessageIn):
                        self._ws.send_encoded(self._echo(event.data))
            framing = self._ws
        else:
            framing = self._http
        assert self._transport is not None
        self._transport.writelines(framing.data_to_send())
        if framing.closed:
            self._transport.close()
            return
        if self._timer is not None:
            self._timer.cancel()
        deadline = framing.next_deadline()
        self._timer = self._loop.call_at(deadline, self._tick) if deadline is not None else None

    def _upgrade(self) -> None:
        """The request is in: hand the connection to a WebSocketFraming."""
        self._ws = WebSocketFraming(max_message_bytes=self._max_message,
                                    compression=self._compression)
        # a refused handshake (400, 405, 426) is answered and closed by the framing
        self._ws.accept(self._http.take_over(), now=self._loop.time())

    def _tick(self) -> None:
        self._timer = None
        (self._ws or self._http).tick(now=self._loop.time())
        self._flush()

    def _echo(self, data: str | bytes) -> bytes:
        binary = isinstance(data, bytes)
        payload = data if isinstance(data, bytes) else data.encode()
        assert self._ws is not None
        if self._ws.deflate is not None:
            frame = compressed_frame(payload, self._ws.deflate.server_max_window_bits,
                                     binary=binary)
            if frame is not None:
                return frame
        return frame_message(payload, binary=binary)


async def serve(host: str, port: int, started: asyncio.Future[int] | None = None, *,
                compression: bool = False) -> None:
    """Serve until cancelled; `started` gets the bound port (useful with port 0)."""
    server = await asyncio.get_running_loop().create_server(
        lambda: EchoProtocol(compression=compression), host, port)
    async with server:
        if started is not None:
            started.set_result(server.sockets[0].getsockname()[1])
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--compression", action="store_true",
                        help="agree to permessage-deflate (RFC 7692)")
    args = parser.parse_args()
    print(f"echo server on ws://{args.host}:{args.port}/", flush=True)
    asyncio.run(serve(args.host, args.port, compression=args.compression))


if __name__ == "__main__":
    main()
