"""The end-to-end behaviour suite, for any runtime adapter (`docs/adapters.md`).

A conftest gives the runtimes: `runtime = runtime_fixture(Runtime("mine", serve))`; a test
module takes every case: `from realtime_behaviour.cases import *`. Needs the `testing`
extra (`pip install 'realtime-proto[testing]'`).
"""

from __future__ import annotations

try:
    import cryptography  # noqa: F401
    import httpx_sse  # noqa: F401
    import pytest
    import websockets  # noqa: F401
except ImportError as missing:
    raise ImportError(f"realtime_behaviour needs {missing.name}: install the testing extra, "
                      "pip install 'realtime-proto[testing]'") from missing

# before the modules are imported, so that a failing case explains its assertion
pytest.register_assert_rewrite(*(f"{__name__}.{module}" for module in (
    "cases", "certs", "clients", "serving", "wire")))

from .serving import (  # noqa: E402
    API_KEY,
    CLOSE_TIMEOUT,
    SECRET,
    Call,
    Ready,
    Runner,
    Runtime,
    Serve,
    ThreadedServer,
    future_call,
    in_server,
    runtime_fixture,
    serving,
    threaded,
    token,
)

__all__ = ["API_KEY", "CLOSE_TIMEOUT", "SECRET", "Call", "Ready", "Runner", "Runtime", "Serve",
           "ThreadedServer", "future_call", "in_server", "runtime_fixture", "serving",
           "threaded", "token"]
