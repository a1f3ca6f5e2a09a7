#!/usr/bin/env bash
# The whole test suite: Python (core, runtimes, brokers, CLI) and JavaScript (Node, Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if [ "${CI:-}" != "" ]; then
  scripts/services.sh
  scripts/nginx.sh
fi
.venv/bin/python -m pytest -q "$@"
if [ -x tests/js/run.sh ]; then
  tests/js/run.sh
fi
