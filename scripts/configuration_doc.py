"""Regenerate the option table of docs/configuration.md from the settings themselves."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from realtime_asyncio.cli import _HELP
from realtime_asyncio.edge import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def table() -> str:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for item in fields(Settings):
        if item.init:
            default = "generated, printed once" if item.name == "api_key" else item.default
            rows.append(f"| `{item.name.replace('_', '-')}` | `{default}` | {_HELP[item.name]} |")
    return "\n".join(rows)


if __name__ == "__main__":
    text = DOC.read_text()
    DOC.write_text(re.sub(r"\| option \| default \| meaning \|\n(\|.*\|\n)+", table() + "\n", text))
