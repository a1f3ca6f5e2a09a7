"""The fuzz targets drive the pure core: like the core tests, they open no socket."""

from ..core.conftest import _no_network  # noqa: F401  (the same autouse fixture)
