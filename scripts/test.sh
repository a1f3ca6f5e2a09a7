#!/usr/bin/env bash
# The whole test suite: Python (core, runtimes, brokers, CLI) and JavaScript (Node, Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
if [ "${CI:-}" != "" ]; then
  scripts/services.sh
  scripts/nginx.sh
  if ! command -v systemd-analyze >/dev/null && [ "$(id -u)" = "0" ]; then
    echo "test: installing systemd (systemd-analyze checks deploy/realtime.service)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq systemd >/dev/null
  fi
fi
.venv/bin/python -m pytest -q "$@"
if [ -x tests/js/run.sh ]; then
  tests/js/run.sh
fi
