"""The admin page and the statistics behind it."""

from __future__ import annotations

import asyncio

import httpx

from realtime_asyncio import RealtimeServer


def test_admin_page_is_served_and_stats_need_the_key() -> None:
    async def scenario() -> None:
        server = RealtimeServer(port=0, api_key="k")
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
                page = await http.get("/admin")
                assert page.status_code == 200 and "realtime admin" in page.text
                assert "from '/realtime.js'" in page.text
                assert (await http.get("/realtime.js")).status_code == 200
                assert (await http.get("/api/stats")).status_code == 401
                await http.get("/poll")  # one long-poll connection
                stats = (await http.get("/api/stats",
                                        headers={"Authorization": "Bearer k"})).json()
                assert stats["connections"] == {"polling": 1}
                assert stats["runtime"] == "asyncio" and stats["broker_connected"] is True
        finally:
            await server.aclose(timeout=1)
    asyncio.run(scenario())


def test_the_javascript_client_is_served_as_a_module_and_as_a_script() -> None:
    async def scenario() -> None:
        server = RealtimeServer(port=0)
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
                module = await http.get("/realtime.js")
                script = await http.get("/realtime.min.js")
        finally:
            await server.aclose(timeout=1)
        for response in (module, script):
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/javascript; charset=utf-8"
        assert "export class RealtimeClient" in module.text
        assert script.text.startswith("/* realtime-proto-client")
        assert "var Realtime=" in script.text and "export " not in script.text
    asyncio.run(scenario())
