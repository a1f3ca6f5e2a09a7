"""The layers import downwards only, read from the source with `ast` (nothing is imported):
no runtime package imports another runtime package, the shared server layer imports no
runtime, and the core imports no adapter."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: each runtime's own code: the three packages and the selectors example
RUNTIMES = {
    "realtime_asyncio": ROOT / "adapters" / "asyncio" / "realtime_asyncio",
    "realtime_trio": ROOT / "adapters" / "trio" / "realtime_trio",
    "realtime_gevent": ROOT / "adapters" / "gevent" / "realtime_gevent",
    "selectors_adapter": ROOT / "examples" / "selectors_adapter",
}
SERVER = ROOT / "adapters" / "server" / "realtime_server"
CORE = ROOT / "realtime_proto"
#: what the core builds on nothing of, and the shared layer nothing of either
ADAPTERS = {"realtime_server", "realtime_brokers", *RUNTIMES}
RUNTIME_LIBRARIES = {"asyncio", "trio", "gevent"}


def imported_packages(source: str) -> set[str]:
    """The top-level names of every absolute import in `source`, anywhere in it (inside
    functions and `if TYPE_CHECKING:` too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def imports_below(folder: Path) -> dict[str, set[str]]:
    """Each Python file below `folder` (relative to the checkout) and what it imports."""
    files = sorted(folder.rglob("*.py"))
    assert files, f"no Python file below {folder}"
    return {str(path.relative_to(ROOT)): imported_packages(path.read_text(encoding="utf-8"))
            for path in files}


def test_the_import_reader_sees_every_kind_of_import() -> None:
    source = ("import trio.lowlevel\nfrom realtime_asyncio.server import RealtimeServer\n"
              "from . import sibling\n"
              "def later():\n    import gevent\n")
    assert imported_packages(source) == {"trio", "realtime_asyncio", "gevent"}


def test_no_runtime_package_imports_another() -> None:
    wrong = {}
    for runtime, folder in RUNTIMES.items():
        for path, names in imports_below(folder).items():
            others = names & (RUNTIMES.keys() - {runtime})
            if others:
                wrong[path] = sorted(others)
    assert wrong == {}


def test_the_server_layer_imports_no_runtime() -> None:
    wrong = {path: sorted(names & (RUNTIMES.keys() | RUNTIME_LIBRARIES))
             for path, names in imports_below(SERVER).items()
             if names & (RUNTIMES.keys() | RUNTIME_LIBRARIES)}
    assert wrong == {}


def test_the_core_imports_no_adapter() -> None:
    wrong = {path: sorted(names & ADAPTERS)
             for path, names in imports_below(CORE).items() if names & ADAPTERS}
    assert wrong == {}
