"""The systems under test: how to start each server, its version, and how to publish.

To add a system (for example ours on another runtime, scenario 5), add a ``System`` to
``SYSTEMS`` or call ``register()`` from a scenario module. A system is:
  * ``command(port)``: argv of the server (it is started pinned to the server core);
  * ``dialect``: how a WebSocket subscriber subscribes (see ``loadgen.DIALECTS``);
  * ``publisher(host, port)``: the one small function that makes a publisher;
  * ``version()``: the pinned version string shown in the report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import loadgen

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BENCH_PY = str(BENCH / ".venv" / "bin" / "python")
MAIN_VENV = ROOT / ".venv"
OURS_BIN = os.environ.get("REALTIME_BIN", str(MAIN_VENV / "bin" / "realtime"))
API_KEY = "bench-key"
# The peers have no rate limits; ours are switched off for the benchmark (environment
# variables, so that a server without these options still starts).
OURS_ENV = {f"REALTIME_{k}": "0" for k in
            ("CONNECTION_RATE", "API_RATE", "MESSAGE_RATE", "SUBSCRIBE_RATE")}


@dataclass
class System:
    name: str
    label: str
    command: Callable[[int], list[str]]
    dialect: str
    publisher: Callable[[str, int], loadgen.Publisher]
    version: Callable[[], str]
    ours: bool = False
    transports: tuple[str, ...] = ("ws",)
    available: Callable[[], bool] = lambda: True
    env: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    group: str = "peer"  # "ours", "peer", "runtime" (scenario 5) or "probe" (not a peer)
    cores: str = ""  # taskset's CPU list for the server; "": the config's server core


def _pip_version(dist: str, python: str = BENCH_PY) -> str:
    try:
        out = subprocess.run(
            [python, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
            capture_output=True, text=True, timeout=30,
        )
        return out.stdout.strip() or "?"
    except Exception:
        return "?"


def _node_version(pkg: str) -> str:
    try:
        with open(BENCH / "node" / "node_modules" / pkg / "package.json") as f:
            return json.load(f)["version"]
    except OSError:
        return "?"


def _ours_available() -> bool:
    if not os.path.exists(OURS_BIN):
        return False
    try:
        r = subprocess.run([OURS_BIN, "serve", "--help"], capture_output=True, timeout=30)
        return r.returncode == 0
    except Exception:
        return False


def _ours_version() -> str:
    v = _pip_version("realtime-proto", str(MAIN_VENV / "bin" / "python"))
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "realtime_proto", "adapters"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        rev, dirty = "", ""
    return f"{v} ({rev or 'uncommitted'}{', modified tree' if dirty else ''})"


def ours_publisher(host: str, port: int) -> loadgen.Publisher:
    """Ours: ``POST /api/publish`` over one keep-alive connection. Replace this function
    with a faster publish path when the server grows one."""
    return loadgen.HTTPPublisher(host, port, API_KEY)


def ours_batch_publisher(host: str, port: int) -> loadgen.Publisher:
    """Ours: ``POST /api/batch``, what waits going together (scenario 6: the publishing
    node must not be the bottleneck of the path through the broker)."""
    return loadgen.BatchHTTPPublisher(host, port, API_KEY)


NODE = shutil.which("node") or "node"

SYSTEMS: dict[str, System] = {}


def register(system: System) -> System:
    SYSTEMS[system.name] = system
    return system


register(System(
    name="ours", label="realtime_proto (asyncio + uvloop)",
    command=lambda port: [OURS_BIN, "serve", "--port", str(port),
                          "--api-key", API_KEY],
    dialect="ours", publisher=ours_publisher, version=_ours_version, ours=True,
    transports=("ws", "sse", "poll"), available=_ours_available, group="ours", env=OURS_ENV,
    notes="`realtime serve`; publisher: `POST /api/publish` (keep-alive, pipelined)",
))
register(System(
    name="pusher", label="realtime_proto, Pusher protocol (asyncio + uvloop)",
    command=lambda port: [OURS_BIN, "serve", "--port", str(port), "--api-key", API_KEY,
                          "--pusher-app", "1:bench-key:bench-secret"],
    dialect="pusher", publisher=ours_publisher, version=_ours_version, ours=True,
    available=_ours_available, group="ours", env=OURS_ENV,
    notes="`realtime serve --pusher-app …`; subscribers speak the Pusher protocol as "
          "pusher-js does (`/app/KEY`); publisher: `POST /api/publish`, as for ours",
))
register(System(
    name="raw", label="raw uvloop ceiling",
    command=lambda port: [BENCH_PY, str(BENCH / "peers" / "raw_uvloop.py"), "--port", str(port)],
    dialect="json", publisher=loadgen.WSPublisher,
    version=lambda: "uvloop " + _pip_version("uvloop"),
    notes="`bench/peers/raw_uvloop.py`: one pre-encoded frame, one `transport.write` per subscriber",
))
register(System(
    name="websockets", label="websockets broadcast()",
    command=lambda port: [BENCH_PY, str(BENCH / "peers" / "websockets_broadcast.py"),
                          "--port", str(port)],
    dialect="json", publisher=loadgen.WSPublisher,
    version=lambda: "websockets " + _pip_version("websockets") + ", uvloop " + _pip_version("uvloop"),
    notes="`bench/peers/websockets_broadcast.py`: new asyncio API, `broadcast()`",
))
register(System(
    name="python-socketio", label="python-socketio + uvicorn",
    command=lambda port: [BENCH_PY, str(BENCH / "peers" / "socketio_uvicorn.py"),
                          "--port", str(port)],
    dialect="socketio", publisher=loadgen.SocketIOPublisher,
    version=lambda: (f"python-socketio {_pip_version('python-socketio')}, python-engineio "
                     f"{_pip_version('python-engineio')}, uvicorn {_pip_version('uvicorn')} "
                     f"(uvloop, httptools, websockets)"),
    notes="`bench/peers/socketio_uvicorn.py`: ASGI, rooms, WebSocket transport only",
))
register(System(
    name="node-ws", label="Node ws",
    command=lambda port: [NODE, str(BENCH / "node" / "ws_peer.js"), str(port)],
    dialect="json", publisher=loadgen.WSPublisher,
    version=lambda: "ws " + _node_version("ws"),
    notes="`bench/node/ws_peer.js`: `client.send()` loop over the subscribers",
))
register(System(
    name="node-socketio", label="Node socket.io",
    command=lambda port: [NODE, str(BENCH / "node" / "socketio_peer.js"), str(port)],
    dialect="socketio", publisher=loadgen.SocketIOPublisher,
    version=lambda: ("socket.io " + _node_version("socket.io") + ", engine.io "
                     + _node_version("engine.io")),
    notes="`bench/node/socketio_peer.js`: rooms, WebSocket transport only",
))

# the order of the columns in the report
ORDER = ["ours", "pusher", "raw", "node-ws", "node-socketio", "websockets", "python-socketio"]


def node_version() -> str:
    try:
        return subprocess.run([NODE, "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return "?"

# Not a peer: the raw server coalescing every frame queued for a connection into one
# write per loop turn. Used by the load generator's capacity probe.
register(System(
    name="raw-batch", label="raw uvloop, one write per connection per loop turn",
    command=lambda port: [BENCH_PY, str(BENCH / "peers" / "raw_uvloop.py"), "--port", str(port),
                          "--batch"],
    dialect="json", publisher=loadgen.WSPublisher,
    version=lambda: "uvloop " + _pip_version("uvloop"), group="probe",
))


# Scenario 5: ours on each runtime (the asyncio one above is the baseline).
for _rt in ("trio", "gevent"):
    register(System(
        name=f"ours-{_rt}", label=f"realtime_proto ({_rt})",
        command=lambda port, rt=_rt: [OURS_BIN, "serve", "--port", str(port), "--api-key", API_KEY,
                                      "--runtime", rt],
        dialect="ours", publisher=ours_publisher, version=_ours_version, ours=True,
        transports=("ws",), available=_ours_available, group="runtime", env=OURS_ENV,
        notes=f"`realtime serve --runtime {_rt}`",
    ))
