"""examples/fastapi_app under real uvicorn: async and plain routes publish to a WebSocket
client and to the JavaScript client in Node, both through the /rt prefix."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from realtime_asyncio import ServerNotStarted

from .support import load_example, node_subscriber, uvicorn_serving, ws_subscribed


@pytest.mark.parametrize("transport", ["sse", "polling"])
def test_routes_publish_to_clients_through_the_prefix(transport: str) -> None:
    example = load_example("fastapi_app/app.py")

    async def scenario() -> None:
        async with uvicorn_serving(example.app) as port, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as http:
            page = await http.get("/")
            assert "/rt/realtime.js" in page.text
            script = await http.get("/rt/realtime.js")
            assert script.status_code == 200 and "class RealtimeClient" in script.text
            async with ws_subscribed(f"ws://127.0.0.1:{port}/rt/ws", "news") as ws, \
                    node_subscriber(f"http://127.0.0.1:{port}/rt", transport) as js:
                for route, kind in (("/notify", "async"), ("/notify-sync", "sync")):
                    response = await http.post(route, params={"text": f"via {kind}"})
                    assert response.status_code == 200, response.text
                    expected = {"text": f"via {kind}", "route": kind}
                    message = await ws.next("notice")
                    assert (message["id"], message["data"]) == (response.json()["id"], expected)
                    assert json.loads(await js.next()) == {"id": response.json()["id"],
                                                           "data": expected}
        with pytest.raises(ServerNotStarted):  # stopped with the application
            example.realtime.broadcast("news", "notice", {})
    asyncio.run(scenario())
