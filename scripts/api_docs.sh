#!/usr/bin/env bash
# The API reference of the Python packages, generated from their docstrings by pdoc:
#   scripts/api_docs.sh [OUTDIR]    (default build/api; open OUTDIR/index.html)
# Warnings are errors: pdoc has no switch for that, so any output on stderr (pdoc's
# "Warn: ..." for an annotation or docstring it cannot render, a Python warning while
# importing the packages, shown with -W default) fails the build, after all are listed.
# Needs the `test` profile of .venv (scripts/bootstrap.sh test), which has pdoc.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/api}
python=${PYTHON:-.venv/bin/python}

# The packages, and the public modules their __all__ does not list (pdoc follows __all__).
modules=(
  realtime_proto realtime_proto.framing realtime_proto.framing.http
  realtime_proto.framing.websocket realtime_proto.testing
  realtime_asyncio realtime_asyncio.asgi realtime_server.base realtime_server.edge
  realtime_server.sockets
  realtime_trio realtime_gevent
  realtime_brokers realtime_brokers.bridge realtime_brokers.history
  realtime_behaviour
)

rm -rf "$out"
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
status=0
"$python" -W default -m pdoc --docformat google --no-show-source \
  --footer-text "realtime_proto $("$python" -c 'import realtime_proto; print(realtime_proto.__version__)')" \
  -o "$out" "${modules[@]}" 2>"$errors" || status=$?
if [ "$status" -ne 0 ] || [ -s "$errors" ]; then
  cat "$errors" >&2
  echo "api_docs: pdoc failed or warned (status $status); nothing is left in $out" >&2
  rm -rf "$out"
  exit 1
fi
echo "api_docs: the API reference is in $out/index.html"
