#!/usr/bin/env bash
# The status page in a real browser (tests/integration/test_statuspage_browser.py):
# Debian's chromium (Playwright's own browser download is not reachable) driven by
# Playwright from PyPI, installed here (as root on Debian: ~10 s with a warm apt
# cache, ~250 MB), then that test module with the project's test venv.
#
# Usage: .ci/browser.sh [PROJECT_VENV]
#   PROJECT_VENV      a venv with this project installed with its [test] extras
#                     (default: the active one); playwright is added to it.
# BROWSER_OPTIONAL=1  an install failure (no apt, no registry) skips instead of failing.
# OLLAMA_PROXY_SCREENSHOT=PATH  also write the screenshot docs/operations.md shows.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAYWRIGHT_VERSION=1.65.3
CHROMIUM=/usr/bin/chromium

project=${1:-${VIRTUAL_ENV:-}}
[ -n "$project" ] || { echo "usage: .ci/browser.sh PROJECT_VENV"; exit 2; }

skip() {
  if [ "${BROWSER_OPTIONAL:-}" = 1 ]; then
    echo "$1: skipping the browser test"
    exit 0
  fi
  echo "$1"
  exit 1
}

. .ci/apt.sh

if [ ! -x "$CHROMIUM" ]; then
  echo "== installing chromium (apt)"
  aptInstall chromium || skip "chromium could not be installed"
fi
if ! "$project/bin/python" -c "import playwright" 2>/dev/null; then
  echo "== installing playwright==$PLAYWRIGHT_VERSION (PyPI; its browser download is not used)"
  "$project/bin/python" -m pip install -q "playwright==$PLAYWRIGHT_VERSION" \
    || skip "playwright could not be installed"
fi
"$CHROMIUM" --version || true

echo "== the status page in headless Chromium (python -m twisted.trial tests.integration.test_statuspage_browser)"
OLLAMA_PROXY_CHROMIUM="$CHROMIUM" "$project/bin/python" -m twisted.trial \
  tests.integration.test_statuspage_browser
