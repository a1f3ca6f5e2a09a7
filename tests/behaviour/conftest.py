"""Every behaviour test runs once per runtime, with identical expectations."""

from __future__ import annotations

import pytest

from .serving import RUNTIMES


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """The runtime the server under test runs on."""
    return str(request.param)
