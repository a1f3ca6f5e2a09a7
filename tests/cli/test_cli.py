"""The `realtime` command as a user runs it: options, errors, serving and SIGTERM."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import websockets

from realtime_proto.errors import ConfigError
from realtime_proto.jwt import decode_hs256, encode_hs256
from realtime_server.cli import resolve_settings
from realtime_server.edge import build_node_config

REALTIME = [sys.executable, "-m", "realtime_server.cli"]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*REALTIME, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("server did not start listening")


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    config = tmp_path / "realtime.toml"
    config.write_text('port = 7001\nbroker = "memory://file"\nheartbeat_interval = 5\n'
                      'api_key = "from-file"\n')
    settings = resolve_settings({"port": "7003"},
                                {"REALTIME_PORT": "7002", "REALTIME_API_KEY": "from-env"},
                                str(config))
    assert (settings.port, settings.api_key, settings.broker, settings.heartbeat_interval) == (
        7003, "from-env", "memory://file", 5.0)
    assert resolve_settings({}, {}, None).port == 6001


@pytest.mark.parametrize(("flags", "expected"), [
    ({"broker": "postgresql://db/app"}, 7000),  # under PostgreSQL's 8000-byte NOTIFY
    ({"broker": "nats://127.0.0.1:4222"}, 32768),
    ({"broker": "memory://"}, 32768),
    ({"broker": "postgresql://db/app", "broker_bundle_bytes": "0"}, 0),
])
def test_the_bundle_size_follows_the_broker_unless_given(flags: dict[str, str],
                                                         expected: int) -> None:
    settings = resolve_settings(flags, {}, None)
    config = build_node_config(settings, "n1", runtime="asyncio")
    assert config.hub.broker_bundle_bytes == expected


@pytest.mark.parametrize(("flags", "environ", "message"), [
    ({"port": "abc"}, {}, "port must be int"),
    ({}, {"REALTIME_HEARTBEAT_INTERVAL": "soon"}, "heartbeat_interval must be float"),
    ({"tls_cert": "c.pem"}, {}, "--tls-cert and --tls-key go together"),
])
def test_bad_values_are_config_errors(flags: dict[str, str], environ: dict[str, str],
                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_settings(flags, environ, None)


def test_unknown_keys_and_unreadable_files(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown option"):
        resolve_settings({}, {}, str(config))
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve_settings({}, {}, str(tmp_path / "missing.toml"))


def test_compression_is_off_unless_a_switch_a_word_or_a_toml_boolean_says_on(
        tmp_path: Path) -> None:
    def compression(flags: dict[str, object], environ: dict[str, str],
                    path: str | None = None) -> bool:
        settings = resolve_settings(flags, environ, path)
        return build_node_config(settings, "n1", runtime="asyncio").compression

    assert compression({}, {}) is False
    assert compression({"compression": True}, {"REALTIME_COMPRESSION": "off"}) is True
    assert compression({}, {"REALTIME_COMPRESSION": "TRUE"}) is True
    assert compression({}, {"REALTIME_COMPRESSION": "0"}) is False
    config = tmp_path / "realtime.toml"
    config.write_text("compression = true\n")
    assert compression({}, {}, str(config)) is True
    assert compression({}, {"REALTIME_COMPRESSION": "no"}, str(config)) is False
    with pytest.raises(ConfigError, match="compression must be true or false, not 'maybe'"):
        resolve_settings({}, {"REALTIME_COMPRESSION": "maybe"}, None)
    config.write_text("compression = 1\n")
    with pytest.raises(ConfigError, match="compression must be true or false"):
        resolve_settings({}, {}, str(config))
    usage = run_cli("serve", "--help")
    assert "--compression " in usage.stdout and "--compression COMPRESSION" not in usage.stdout


def test_trusted_proxies_from_flags_the_environment_or_a_toml_list(tmp_path: Path) -> None:
    def trusted(flags: dict[str, object], environ: dict[str, str],
                path: str | None = None) -> list[str]:
        config = build_node_config(resolve_settings(flags, environ, path), "n1",
                                   runtime="asyncio")
        return [str(network) for network in config.trusted_proxies]

    assert trusted({}, {}) == []
    # argparse collects a repeated --trusted-proxy into a list
    assert trusted({"trusted_proxy": ["10.0.0.0/8", "::1"]}, {}) == ["10.0.0.0/8", "::1/128"]
    assert trusted({}, {"REALTIME_TRUSTED_PROXY": "10.0.0.0/8, 192.168.0.1"}) == [
        "10.0.0.0/8", "192.168.0.1/32"]
    config = tmp_path / "realtime.toml"
    config.write_text('trusted_proxy = ["172.16.0.0/12", "fd00::/8"]\n')
    assert trusted({}, {}, str(config)) == ["172.16.0.0/12", "fd00::/8"]
    config.write_text("trusted_proxy = 10\n")
    with pytest.raises(ConfigError, match="trusted_proxy must be a list of strings, not 10"):
        resolve_settings({}, {}, str(config))


def test_help_documents_every_option() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in ("--host", "--port", "--broker", "--config", "--api-key", "--jwt-secret",
                   "--log-level", "--max-message-bytes", "--tls-cert", "--runtime"):
        assert option in result.stdout
    assert "REALTIME_" in result.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (("serve", "--port", "abc"), "port must be int"),
    (("serve", "--no-such-flag"), "unrecognized arguments"),
    (("serve", "--config", "/nonexistent/realtime.toml"), "cannot read config file"),
    (("serve", "--broker", "carrier-pigeon://x"), "unsupported broker URL"),
    (("serve", "--history", "room.*=10:60", "--history-store", "carrier-pigeon://x"),
     "history store 'carrier-pigeon://x': use local, auto or one of"),
    (("serve", "--history", "room.*=10:60", "--history-store", "redis://127.0.0.1:1"),
     "cannot use the history store"),
    (("serve", "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "proxy.local"),
     "trusted proxy 'proxy.local' is not an address or CIDR range"),
])
def test_bad_options_fail_with_one_clear_line(args: tuple[str, ...], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("realtime: error:") and needle in lines[0]


def test_port_in_use_fails_with_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"realtime: error: cannot listen on 127.0.0.1:{port}")


def test_serve_prints_a_generated_key_then_sigterm_closes_clients_with_1001() -> None:
    port = free_port()
    process = subprocess.Popen([*REALTIME, "serve", "--port", str(port)], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, process)

        async def client() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                established = json.loads(await ws.recv())
                assert established["event"] == "connection.established"
                process.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(20):
                        async for _ in ws:
                            pass
                except websockets.ConnectionClosed:
                    pass
                return ws.close_code
        assert asyncio.run(client()) == 1001
        assert process.wait(timeout=20) == 0
        assert process.stdout is not None
        key_line = process.stdout.readline()
        assert key_line.startswith("realtime: generated API key") and len(key_line.split()[-1]) > 20
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=20)  # also closes the pipes


def test_version_is_the_same_in_the_command_the_metadata_and_the_js_package() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    installed = importlib.metadata.version("realtime-proto")
    js = json.loads((ROOT / "clients" / "js" / "package.json").read_text())["version"]
    assert result.stdout.strip() == f"realtime {installed}"
    assert installed == js


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--port", "99999", "port must be between 0 and 65535, not 99999"),
    ("--port", "-1", "port must be between 0 and 65535, not -1"),
    ("--max-subscriptions", "0", "max_subscriptions must be at least 1"),
    ("--heartbeat-interval", "-3", "heartbeat_interval must be more than 0"),
    ("--poll-timeout", "inf", "poll_timeout must be more than 0"),
    ("--api-rate", "nan", "api_rate must be at least 0"),
    ("--auth-webhook-cache", "-1", "auth_webhook_cache must be at least 0"),
    ("--log-format", "xml", "log_format must be one of text, json"),
    ("--log-level", "loud", "log_level must be one of debug, info, warning, error"),
])
def test_out_of_range_flags_are_argparse_errors(flag: str, value: str, message: str) -> None:
    result = run_cli("serve", f"{flag}={value}")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"realtime: error: argument {flag}: {message}")


@pytest.mark.parametrize(("environ", "message"), [
    ({"REALTIME_PORT": "70000"}, "port must be between 0 and 65535"),
    ({"REALTIME_MESSAGE_BURST": "0.5"}, "message_burst must be at least 1"),
])
def test_out_of_range_values_from_the_environment_are_config_errors(
        environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_settings({}, environ, None)


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not used")
    missing = tmp_path / "missing.pem"
    result = run_cli("serve", "--port", "0", "--tls-cert", str(missing), "--tls-key", str(key))
    assert result.returncode != 0
    assert result.stderr.strip() == f"realtime: error: --tls-cert: cannot read {missing}"


def test_token_help_explains_every_option_and_its_default() -> None:
    result = run_cli("token", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--secret SECRET the HS256 secret" in text and "$REALTIME_JWT_SECRET" in text
    assert "--ttl TTL seconds until it expires (default: 3600)" in text


def test_a_token_lives_at_least_a_second() -> None:
    result = run_cli("token", "--secret", "s", "--sub", "ann", "--ttl", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "realtime: error: argument --ttl: ttl must be at least 1, not 0"


def test_token_takes_its_secret_from_the_environment() -> None:
    result = run_cli("token", "--sub", "ann", env={"REALTIME_JWT_SECRET": "s3cret"})
    assert result.returncode == 0
    claims = decode_hs256(result.stdout.strip(), "s3cret", now_unix=time.time())
    assert claims["sub"] == "ann"


def test_serve_help_shows_the_defaults() -> None:
    text = " ".join(run_cli("serve", "--help").stdout.split())
    for expected in ("--port INT port to listen on (default: 6001)",
                     "--log-format STR text (one line per record) or json",
                     "(default: text)", "(default: 25.0)", "(default: $REALTIME_CONFIG)"):
        assert expected in text


def test_json_logs_are_one_object_per_line_with_the_connection_and_user() -> None:
    port, closed = free_port(), free_port()  # nothing listens on `closed`: the webhook fails
    process = subprocess.Popen(
        [*REALTIME, "serve", "--port", str(port), "--log-format", "json", "--jwt-secret", "S",
         "--auth-webhook", f"http://127.0.0.1:{closed}/auth", "--auth-webhook-timeout", "5"],
        text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, process)
        token = encode_hs256({"sub": "alice", "exp": int(time.time()) + 600}, "S")

        async def client() -> str:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}") as ws:
                established = json.loads(await ws.recv())
                await ws.send(json.dumps({"type": "subscribe", "channel": "private-room.1"}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 20))
                assert reply["type"] == "error" and reply["data"]["code"] == 4500, reply
                return str(established["data"]["connection_id"])
        connection_id = asyncio.run(client())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert process.stderr is not None
        lines = process.stderr.read().splitlines()
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=20)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert len(records) >= 2
    node_ids = {record["node_id"] for record in records}
    assert len(node_ids) == 1
    for record in records:
        assert datetime.fromisoformat(record["time"]).utcoffset() is not None
        assert record["time"].endswith("Z")
        assert record["level"] in ("debug", "info", "warning", "error")
    assert any("serving on" in record["message"] for record in records)
    failed = [record for record in records if record.get("user_id") == "alice"]
    assert len(failed) == 1 and failed[0]["level"] == "error"
    assert failed[0]["connection_id"] == connection_id
    assert failed[0]["channel"] == "private-room.1"
    assert "Traceback" in failed[0]["exception"]


def test_the_configuration_doc_has_the_generated_table() -> None:
    spec = importlib.util.spec_from_file_location(
        "configuration_doc", ROOT / "scripts" / "configuration_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.table() in (ROOT / "docs" / "configuration.md").read_text(), (
        "run scripts/configuration_doc.py")
