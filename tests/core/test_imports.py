"""The core is pure: importing all of it pulls in no module that does I/O or threads."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = {"socket", "ssl", "select", "selectors", "asyncio", "trio", "gevent", "threading",
             "logging", "redis", "nats", "aio_pika", "aiormq", "asyncpg", "anyio"}

PROBE = """
import importlib, json, pkgutil, sys
import realtime_proto
for info in pkgutil.walk_packages(realtime_proto.__path__, "realtime_proto."):
    importlib.import_module(info.name)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_importing_the_whole_core_imports_no_io_module() -> None:
    # -I: isolated mode, so site customisations cannot import anything on our behalf
    output = subprocess.run([sys.executable, "-I", "-c", PROBE], capture_output=True,
                            text=True, check=True, cwd=sys.path[0] or ".").stdout
    loaded = set(json.loads(output))
    assert "realtime_proto" in loaded
    assert loaded & FORBIDDEN == set()
