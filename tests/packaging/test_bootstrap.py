"""`make serve` on a fresh clone installs what serving needs and nothing of the test
toolchain; `make test` installs the rest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]


def fresh_clone(destination: Path) -> Path:
    """The checkout's files (tracked or not ignored), without its .venv."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def test_the_serve_profile_installs_only_what_serving_needs(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "clone")
    env = {**os.environ, "PYTHON": sys.executable}
    bootstrap = subprocess.run(["scripts/bootstrap.sh", "serve"], cwd=clone, env=env,
                               capture_output=True, text=True, timeout=500)
    assert bootstrap.returncode == 0, bootstrap.stderr
    python = clone / ".venv" / "bin" / "python"
    serving = subprocess.run([python, "-c", "import realtime_asyncio, uvloop"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert serving.returncode == 0, serving.stderr
    for tool in ("pytest", "hypothesis", "mypy", "trio", "gevent"):
        missing = subprocess.run([python, "-c", f"import {tool}"], cwd=tmp_path,
                                 capture_output=True, timeout=60)
        assert missing.returncode != 0, f"{tool} was installed for serving"
    stamp = clone / ".venv" / ".installed-serve"
    assert stamp.is_file() and not (clone / ".venv" / ".installed-test").exists()

    made = stamp.stat().st_mtime_ns
    again = subprocess.run(["scripts/bootstrap.sh", "serve"], cwd=clone, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and stamp.stat().st_mtime_ns == made  # nothing reinstalled

    wrong = subprocess.run(["scripts/bootstrap.sh", "everything"], cwd=clone, env=env,
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "unknown profile 'everything'" in wrong.stderr
