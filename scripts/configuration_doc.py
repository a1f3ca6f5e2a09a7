"""Regenerate the option table of docs/configuration.md from the settings themselves."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from realtime_server.cli import _HELP
from realtime_server.edge import BOUNDS, CHOICES, Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

#: defaults that are not one value
_DEFAULTS = {"api_key": "generated, printed once", "trusted_proxy": "none",
             "broker_bundle_bytes": "`7000` on PostgreSQL, `32768` on the others"}


def values(name: str) -> str:
    """The range or the choices of an option, as the CLI checks them."""
    if name in BOUNDS:
        return str(BOUNDS[name])
    return ", ".join(CHOICES.get(name, ()))


def table() -> str:
    rows = ["| option | default | values | meaning |", "|---|---|---|---|"]
    for item in fields(Settings):
        if item.init:
            default = _DEFAULTS.get(item.name, f"`{item.default}`")
            rows.append(f"| `{item.name.replace('_', '-')}` | {default} | {values(item.name)} "
                        f"| {_HELP[item.name]} |")
    return "\n".join(rows)


if __name__ == "__main__":
    text = DOC.read_text()
    DOC.write_text(re.sub(r"\| option \| default \|.*\|\n(\|.*\|\n)+", table() + "\n", text))
