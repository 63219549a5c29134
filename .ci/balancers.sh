#!/usr/bin/env bash
# The scale-out recipes of docs/operations.md on the real engines
# (tests/integration/test_balancers.py): Debian's haproxy and nginx-light,
# installed here (as root on Debian; ~5 s with a warm apt cache), each in
# front of two proxy instances under streamed load, with a SIGTERM rolling
# restart and a SIGKILL (about 35 s per engine).
#
# Usage: .ci/balancers.sh [PROJECT_VENV]
#   PROJECT_VENV        a venv with this project installed with its [test] extras
#                       (default: the active one).
# BALANCERS_OPTIONAL=1  an install failure (no apt, no registry) skips instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."

project=${1:-${VIRTUAL_ENV:-}}
[ -n "$project" ] || { echo "usage: .ci/balancers.sh PROJECT_VENV"; exit 2; }

skip() {
  if [ "${BALANCERS_OPTIONAL:-}" = 1 ]; then
    echo "$1: skipping the load-balancer tests"
    exit 0
  fi
  echo "$1"
  exit 1
}

. .ci/apt.sh

if [ ! -x /usr/sbin/haproxy ] || [ ! -x /usr/sbin/nginx ]; then
  echo "== installing haproxy and nginx-light (apt)"
  aptInstall haproxy nginx-light || skip "haproxy and nginx-light could not be installed"
  # Only the binaries are wanted: the packages' own services stay stopped.
  for unit in haproxy nginx; do
    if command -v systemctl >/dev/null && systemctl is-active -q "$unit" 2>/dev/null; then
      systemctl stop "$unit" || true
    fi
  done
fi
/usr/sbin/haproxy -v | head -1 || true   # head closes the pipe early
/usr/sbin/nginx -v 2>&1 || true

echo "== the HAProxy and nginx recipes under load (python -m twisted.trial tests.integration.test_balancers)"
OLLAMA_PROXY_HAPROXY=/usr/sbin/haproxy OLLAMA_PROXY_NGINX=/usr/sbin/nginx \
  "$project/bin/python" -m twisted.trial tests.integration.test_balancers
