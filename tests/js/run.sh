#!/usr/bin/env bash
# Run the JavaScript tests (clients/js and examples/chat) against the real server.
# Needs: Node >= 20 and npm, the project installed in .venv (the `realtime` command),
# and Debian's chromium (installed here with apt-get when missing and running as root).
# Extra arguments go to `node --test` (e.g. --test-name-pattern=presence).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1; then
  echo "tests/js: node is not installed" >&2
  exit 1
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "tests/js: Node >= 20 is required (found $(node --version))" >&2
  exit 1
fi

export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
if [ -f package-lock.json ]; then
  npm ci --silent --no-progress
else
  npm install --silent --no-progress
fi

CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/js: installing chromium with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
  else
    echo "tests/js: $CHROMIUM is missing (apt-get install -y chromium)" >&2
    exit 1
  fi
fi
export CHROMIUM_PATH="$CHROMIUM"

# One file at a time: each spawns its own servers and the machine is small.
exec node --test --test-concurrency=1 --test-timeout=180000 "$@" client.test.mjs pusher.test.mjs browser.test.mjs
