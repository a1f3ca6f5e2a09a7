"""examples/django_app under uvicorn (a real process): a plain view saves a model whose
post_save signal publishes, an async view publishes, a WebSocket client on /rt gets both."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx

from .support import EXAMPLES, TIMEOUT, listening_socket, ws_subscribed

APP = EXAMPLES / "django_app"


def test_a_view_and_a_model_signal_publish(tmp_path: Path) -> None:
    env = {**os.environ, "NEWSROOM_DB": str(tmp_path / "db.sqlite3"),
           "REALTIME_BROKER": "memory://", "PYTHONDONTWRITEBYTECODE": "1"}

    async def scenario() -> None:
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "manage.py", "migrate", "--verbosity", "0", cwd=APP, env=env)
        assert await asyncio.wait_for(migrate.wait(), TIMEOUT * 2) == 0
        sock = listening_socket()
        sock.listen()  # requests wait in its backlog until uvicorn serves
        port = sock.getsockname()[1]
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "uvicorn", "newsroom.asgi:application", "--app-dir", str(APP),
            "--fd", str(sock.fileno()), "--lifespan", "on", "--log-level", "warning",
            pass_fds=[sock.fileno()], env=env, stderr=asyncio.subprocess.PIPE)
        sock.close()
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                         timeout=TIMEOUT) as http, \
                    ws_subscribed(f"ws://127.0.0.1:{port}/rt/ws", "notes") as ws:
                created = await http.post("/notes", json={"text": "first note"})
                assert created.status_code == 201, created.text
                message = await ws.next("note.created")
                assert message["data"] == {"id": created.json()["id"], "text": "first note"}
                announced = await http.post("/announce", json={"text": "all hands"})
                assert announced.status_code == 200, announced.text
                message = await ws.next("announcement")
                assert (message["id"], message["data"]) == (announced.json()["id"],
                                                            {"text": "all hands"})
                listed = await http.get("/notes")
                assert listed.json() == {"notes": ["first note"]}
        finally:
            server.terminate()
            _, errors = await asyncio.wait_for(server.communicate(), TIMEOUT)
        # uvicorn shuts down (the lifespan stops the realtime server), then re-raises SIGTERM
        assert server.returncode == -signal.SIGTERM
        assert b"Traceback" not in errors and b"ERROR" not in errors, errors.decode()
        assert (tmp_path / "db.sqlite3").is_file()
    asyncio.run(scenario())
