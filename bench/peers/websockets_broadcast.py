"""Peer: the `websockets` library (new asyncio implementation) with `broadcast()`.

A connection whose first message is ``{"type":"subscribe",...}`` joins the subscriber
set and gets ``{"type":"subscribed"}``; every ``{"type":"publish",...}`` message is
broadcast as is to all subscribers with ``websockets.asyncio.server.broadcast``.
Runs on uvloop; compression and keepalive pings are off (as for every peer).

Usage: python websockets_broadcast.py --port P
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

SUBSCRIBERS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            if isinstance(message, bytes):
                message = message.decode()
            if message.startswith('{"type":"publish"'):
                broadcast(SUBSCRIBERS, message)
            elif message.startswith('{"type":"subscribe"'):
                SUBSCRIBERS.add(ws)
                await ws.send('{"type":"subscribed"}')
    finally:
        SUBSCRIBERS.discard(ws)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    async with serve(
        handler, args.host, args.port, compression=None, ping_interval=None,
        max_queue=None, backlog=4096,
    ):
        print("ready", flush=True)
        await stop


if __name__ == "__main__":
    uvloop.run(main())
