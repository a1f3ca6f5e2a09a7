"""`--pusher-app`: from flags, the environment or TOML, and its secret never shown."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
import websockets

from realtime_proto.errors import ConfigError
from realtime_server.cli import resolve_settings
from realtime_server.edge import build_node_config

from .test_cli import REALTIME, free_port, run_cli, wait_listening

SECRET = "TOP-SECRET-never-shown"


def apps(flags: dict[str, object], environ: dict[str, str],
         path: str | None = None) -> list[tuple[str, str, str, str]]:
    config = build_node_config(resolve_settings(flags, environ, path), "n1", runtime="asyncio")
    return [(a.id, a.key, a.secret, a.namespace) for a in config.pusher_apps]


def test_apps_from_flags_the_environment_or_a_toml_list(tmp_path: Path) -> None:
    assert apps({}, {}) == []
    assert apps({"pusher_app": ["1:k:s"]}, {}) == [("1", "k", "s", "")]
    assert apps({}, {"REALTIME_PUSHER_APP": "1:k1:s1,2:k2:s2"}) == [
        ("1", "k1", "s1", ":app1"), ("2", "k2", "s2", ":app2")]
    config = tmp_path / "realtime.toml"
    config.write_text('pusher_app = ["3:k:s:with:colons"]\n')
    assert apps({}, {}, str(config)) == [("3", "k", "s:with:colons", "")]
    settings = resolve_settings({"pusher_app": [f"1:k:{SECRET}"]}, {}, None)
    assert SECRET not in repr(settings)
    with pytest.raises(ConfigError, match="ID:KEY:SECRET"):
        apps({"pusher_app": [f"1:{SECRET}"]}, {})


def test_a_bad_app_fails_with_one_line_without_the_secret() -> None:
    result = run_cli("serve", "--pusher-app", f"app:key:{SECRET}")
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert "the app id must be digits" in line and SECRET not in line


def test_the_secret_is_in_neither_the_logs_nor_metrics() -> None:
    port = free_port()
    process = subprocess.Popen(
        [*REALTIME, "serve", "--port", str(port), "--log-level", "debug",
         "--pusher-app", f"1:key:{SECRET}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, process)

        async def clients() -> None:
            for key in ("key", "wrong"):
                url = f"ws://127.0.0.1:{port}/app/{key}?protocol=7"
                async with websockets.connect(url) as ws:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert frame["event"] in ("pusher:connection_established", "pusher:error")

        asyncio.run(clients())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'transport="pusher"' in metrics
        assert SECRET not in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert SECRET not in out and SECRET not in err
