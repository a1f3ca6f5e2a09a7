"""Every public name is declared once, in the `__all__` of the module that defines it."""

from __future__ import annotations

import importlib
import pkgutil

import realtime_proto


def _modules() -> list[object]:
    return [importlib.import_module(info.name)
            for info in pkgutil.walk_packages(realtime_proto.__path__, "realtime_proto.")]


def test_every_module_declares_all() -> None:
    missing = [m.__name__ for m in _modules() if not hasattr(m, "__all__")]  # type: ignore[attr-defined]
    assert missing == []


def test_top_level_names_come_from_a_submodule_all() -> None:
    declared: dict[str, list[str]] = {}
    for module in _modules():
        for name in module.__all__:  # type: ignore[attr-defined]
            declared.setdefault(name, []).append(module.__name__)  # type: ignore[attr-defined]
    for name in realtime_proto.__all__:
        assert name in declared, f"{name} is exported but no submodule declares it"
        assert getattr(realtime_proto, name) is not None


def test_no_name_is_defined_public_twice() -> None:
    owners: dict[str, set[str]] = {}
    for module in _modules():
        for name in module.__all__:  # type: ignore[attr-defined]
            value = getattr(module, name)
            home = getattr(value, "__module__", module.__name__)  # type: ignore[attr-defined]
            owners.setdefault(name, set()).add(home if isinstance(home, str) else "")
    assert {n: o for n, o in owners.items() if len(o) > 1} == {}
