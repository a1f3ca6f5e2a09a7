"""examples/fastapi_app under real uvicorn: async and plain routes publish to a WebSocket
client through the /rt prefix, and the page loads the JavaScript client from under it.
(tests/js/client.test.mjs runs the JavaScript client against this example on every
transport.)"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from realtime_asyncio import ServerNotStarted

from .support import load_example, uvicorn_serving, ws_subscribed


def test_routes_publish_to_a_client_through_the_prefix() -> None:
    example = load_example("fastapi_app/app.py")

    async def scenario() -> None:
        async with uvicorn_serving(example.app) as port, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as http:
            page = await http.get("/")
            assert "'/rt/realtime.js'" in page.text and "'/rt'" in page.text
            script = await http.get("/rt/realtime.js")
            assert script.status_code == 200 and "class RealtimeClient" in script.text
            async with ws_subscribed(f"ws://127.0.0.1:{port}/rt/ws", "news") as ws:
                for route, kind in (("/notify", "async"), ("/notify-sync", "sync")):
                    response = await http.post(route, params={"text": f"via {kind}"})
                    assert response.status_code == 200, response.text
                    message = await ws.next("notice")
                    assert (message["id"], message["data"]) == (
                        response.json()["id"], {"text": f"via {kind}", "route": kind})
        with pytest.raises(ServerNotStarted):  # stopped with the application
            example.realtime.broadcast("news", "notice", {})
    asyncio.run(scenario())
