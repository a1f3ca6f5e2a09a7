"""The API reference: scripts/api_docs.sh builds it from the docstrings with pdoc, and any
warning fails the build."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from realtime_proto import Hub

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "api_docs.sh"

pytestmark = pytest.mark.timeout(300)


def build(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHON": sys.executable, **env})


def text_of(page: Path) -> str:
    """The page's text, without tags, whitespace runs made one space."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.read_text())).split())


def test_the_reference_has_a_page_per_package_with_the_docstrings(tmp_path: Path) -> None:
    out = tmp_path / "api"
    result = build(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    for page in ("index.html", "realtime_proto.html", "realtime_proto/testing.html",
                 "realtime_asyncio.html", "realtime_trio.html", "realtime_gevent.html",
                 "realtime_brokers.html", "realtime_brokers/history.html",
                 "realtime_behaviour.html"):
        assert (out / page).is_file(), page
    core = text_of(out / "realtime_proto.html")  # rendered docstrings (no source shown)
    summary = (Hub.broadcast.__doc__ or "").splitlines()[0]
    broadcast = core[core.index("def broadcast ("):]
    assert summary and broadcast.index(summary) < broadcast.index("def ", 1)
    assert "Raises: MessageError: the channel name is invalid (4008)." in broadcast
    assert "class RealtimeServer" in text_of(out / "realtime_trio.html")
    assert "def open_broker" in text_of(out / "realtime_brokers.html")
    assert "def runtime_fixture" in text_of(out / "realtime_behaviour.html")


def test_a_warning_fails_the_build_and_leaves_nothing(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import warnings\nwarnings.warn('a docstring pdoc cannot render', UserWarning)\n")
    out = tmp_path / "api"
    result = build(out, PYTHONPATH=str(hooks))
    assert result.returncode == 1
    assert "a docstring pdoc cannot render" in result.stderr
    assert "api_docs: pdoc failed or warned" in result.stderr
    assert not out.exists()
