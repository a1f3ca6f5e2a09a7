#!/usr/bin/env bash
# One command: install the pinned bench dependencies, run the scenarios, write
# docs/benchmarks.md and docs/bench/*.png. Options are those of bench/run.py:
#   bench/run.sh [--quick] [--scenario NAME ...] [--systems a,b] [--report-only]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

# Python: a venv of its own, pinned (bench/requirements.txt)
if [ ! -x "$HERE/.venv/bin/python" ]; then
  "$PY" -m venv "$HERE/.venv"
fi
STAMP="$HERE/.venv/.requirements.sha"
SUM="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$SUM" ]; then
  "$HERE/.venv/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$SUM" > "$STAMP"
fi

# Node: pinned by bench/node/package-lock.json
if [ ! -d "$HERE/node/node_modules/ws" ] || [ ! -d "$HERE/node/node_modules/socket.io" ] \
   || [ "$HERE/node/package-lock.json" -nt "$HERE/node/node_modules/.package-lock.json" ]; then
  (cd "$HERE/node" && npm ci --no-audit --no-fund --loglevel=error)
fi

exec "$HERE/.venv/bin/python" "$HERE/run.py" "$@"
