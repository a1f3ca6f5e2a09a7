"""Peer: python-socketio (ASGI) under uvicorn with uvloop, rooms, WebSocket only.

``subscribe`` joins the room and answers ``subscribed``; ``publish`` emits ``msg`` with
the data to the room (``sio.emit(..., room=...)``). Pings every 10 minutes so that they
never fire during a run.

Usage: python socketio_uvicorn.py --port P
"""

from __future__ import annotations

import argparse

import socketio
import uvicorn

sio = socketio.AsyncServer(
    async_mode="asgi", transports=["websocket"], ping_interval=600, ping_timeout=600,
    cors_allowed_origins=None, logger=False, engineio_logger=False,
)
app = socketio.ASGIApp(sio)


@sio.on("subscribe")
async def subscribe(sid: str, room: str) -> None:
    await sio.enter_room(sid, room)
    await sio.emit("subscribed", room, to=sid)


@sio.on("publish")
async def publish(sid: str, data: object) -> None:
    await sio.emit("msg", data, room="bench")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    print("ready", flush=True)
    uvicorn.run(
        app, host=args.host, port=args.port, loop="uvloop", http="httptools", ws="websockets",
        ws_ping_interval=None, ws_ping_timeout=None, log_level="warning", access_log=False,
        backlog=4096, lifespan="off",
    )


if __name__ == "__main__":
    main()
