"""The systemd unit in deploy/: systemd accepts it, and what it runs is a working command
line with the sample configuration."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from realtime_server.cli import resolve_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
INSTALLED = "/opt/realtime/venv/bin/realtime"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "realtime.service")
    return parser


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is not installed (apt-get install systemd)"
        if os.environ.get("CI"):
            pytest.fail(message)  # scripts/test.sh installs it under CI
        pytest.skip(message)
    # verify checks that ExecStart exists: point it at this environment's command
    text = (DEPLOY / "realtime.service").read_text()
    assert INSTALLED in text
    local = tmp_path / "realtime.service"
    local.write_text(text.replace(INSTALLED, str(Path(sys.executable).parent / "realtime")))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                            timeout=60)
    about_ours = [line for line in (result.stdout + result.stderr).splitlines()
                  if "realtime.service" in line]
    assert result.returncode == 0 and about_ours == [], result.stderr


def test_the_unit_drains_on_sigterm_restarts_and_is_hardened() -> None:
    service = unit()["Service"]
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    assert int(service["TimeoutStopSec"]) > 5  # the drain's 5 s grace, plus the broker's
    assert int(service["LimitNOFILE"]) >= 65536
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes")):
        assert service[key] == value


def test_the_unit_runs_serve_with_the_sample_config() -> None:
    command = unit()["Service"]["ExecStart"].split()
    assert command[:4] == [INSTALLED, "serve", "--config", "/etc/realtime/realtime.toml"]
    settings = resolve_settings({}, {}, str(DEPLOY / "realtime.toml"))  # every key known
    assert (settings.log_format, settings.broker) == ("json", "redis://127.0.0.1:6379")
