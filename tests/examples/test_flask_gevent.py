"""examples/flask_gevent as a real process (monkey-patched): a view and a threadpool job
publish to a WebSocket client of the realtime server running in the same process."""

from __future__ import annotations

import asyncio
import os
import sys

import httpx

from .support import EXAMPLES, TIMEOUT, Lines, ws_subscribed


def test_a_view_and_a_thread_publish() -> None:
    async def scenario() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / "flask_gevent" / "app.py"),
            "--port", "0", "--realtime-port", "0",
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            lines = Lines(process)
            flask_url = (await lines.next()).removeprefix("flask ")
            realtime_url = (await lines.next()).removeprefix("realtime ")
            async with httpx.AsyncClient(base_url=flask_url, timeout=TIMEOUT) as http, \
                    ws_subscribed(f"{realtime_url}/ws", "news") as ws:
                page = await http.get("/")
                assert realtime_url.rsplit(":", 1)[1] in page.text
                assert "class RealtimeClient" in (await http.get("/realtime.js")).text
                for route, sent, published in (
                        ("/notify", "from the view", "from the view"),
                        ("/report", "from a thread", "report: FROM A THREAD")):
                    response = await http.post(route, json={"text": sent})
                    assert response.status_code == 200, response.text
                    message = await ws.next("notice")
                    assert (message["id"], message["data"]) == (response.json()["id"],
                                                                {"text": published})
        finally:
            process.terminate()
            _, errors = await asyncio.wait_for(process.communicate(), TIMEOUT)
        assert process.returncode == 0, errors.decode()
        assert b"Traceback" not in errors, errors.decode()
    asyncio.run(scenario())
