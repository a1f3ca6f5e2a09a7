#!/usr/bin/env bash
# Create .venv and install the project for one profile (idempotent):
#   scripts/bootstrap.sh serve   what serving needs: the project and uvloop (`make serve`)
#   scripts/bootstrap.sh [test]  every extra and the test toolchain (`make test`, `make lint`)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-test}
case "$profile" in
  serve) extras=asyncio; enough="serve test" ;;  # the test profile has everything serve has
  test) extras=test; enough=test ;;
  *) echo "bootstrap: unknown profile '$profile' (serve or test)" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
for done in $enough; do
  stamp=.venv/.installed-$done
  if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
    exit 0
  fi
done
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[$extras]"
touch ".venv/.installed-$profile"
