#!/usr/bin/env bash
# Install nginx for tests/deploy/test_nginx.py when it is missing (Debian's package). The
# test runs its own nginx in the foreground; the package's service is not needed.
set -euo pipefail
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then exit 0; fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
echo "nginx: installing Debian's package"
$sudo apt-get update -qq
$sudo apt-get install -y -qq nginx-light || $sudo apt-get install -y -qq nginx
