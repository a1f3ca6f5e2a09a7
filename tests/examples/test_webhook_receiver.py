"""examples/webhook_receiver under real uvicorn, fed by a real `realtime serve` process."""

from __future__ import annotations

import asyncio

import httpx

from realtime_behaviour.clients import connect

from ..cluster.nodes import eventually, start_nodes
from ..cluster.test_processes import token
from .support import load_example, uvicorn_serving


def test_the_receiver_checks_signatures_and_tracks_who_is_online() -> None:
    example = load_example("webhook_receiver/app.py")

    async def scenario() -> None:
        async with uvicorn_serving(example.app) as port, httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{port}"
            # a forged body is refused (401: the server drops it, never retries it)
            forged = await http.post(f"{base}/realtime/events", content=b'{"events":[]}',
                                     headers={"x-realtime-signature": "sha256=00"})
            assert forged.status_code == 401
            [node] = start_nodes("memory://", 1,
                                 "--webhook", f"{base}/realtime/events",
                                 "--webhook-secret", example.SECRET.decode(),
                                 "--webhook-settle", "0.2")
            try:
                async with connect("websocket", node.port, token=token("alice")) as alice:
                    await alice.subscribe("presence-room")

                    async def online() -> object:
                        return (await http.get(f"{base}/online")).json()
                    await eventually(lambda: _is(online, {"presence-room": ["alice"]}))
                await eventually(lambda: _is(online, {}))
            finally:
                node.stop()

    asyncio.run(scenario())


async def _is(read: object, expected: object) -> bool:
    return await read() == expected  # type: ignore[operator]
