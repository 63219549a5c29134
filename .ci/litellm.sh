#!/usr/bin/env bash
# The real-LiteLLM end-to-end tests (tests/integration/test_litellm.py): install
# litellm[proxy] into a venv of its own (pinned: newer releases need a
# package the registry does not serve; ~50-90 s and ~755 MB on a 2-core
# machine), then run that test module with the project's test venv.
#
# Usage: .ci/litellm.sh [PROJECT_VENV]
#   PROJECT_VENV  a venv with this project installed with its [test] extras
#                 (default: the active one, else a fresh one made here).
# LITELLM_VENV    reuse (or create) the LiteLLM venv at this path.
# LITELLM_OPTIONAL=1  an install failure (no registry) skips instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
LITELLM_VERSION=1.108.7

project=${1:-${VIRTUAL_ENV:-}}
if [ -z "$project" ]; then
  project="$work/venv"
  python3 -m venv "$project"
  "$project/bin/python" -m pip install -q --upgrade pip
  "$project/bin/python" -m pip install -q -e ".[test]"
fi

litellm_venv=${LITELLM_VENV:-$work/litellm}
if [ ! -x "$litellm_venv/bin/litellm" ]; then
  echo "== installing litellm[proxy]==$LITELLM_VERSION into $litellm_venv"
  start=$(date +%s)
  python3 -m venv "$litellm_venv"
  "$litellm_venv/bin/python" -m pip install -q --upgrade pip
  if ! "$litellm_venv/bin/python" -m pip install -q --no-cache-dir "litellm[proxy]==$LITELLM_VERSION"; then
    if [ "${LITELLM_OPTIONAL:-}" = 1 ]; then
      echo "litellm[proxy]==$LITELLM_VERSION could not be installed: skipping the LiteLLM tests"
      exit 0
    fi
    exit 1
  fi
  echo "installed in $(( $(date +%s) - start )) s, $(du -sh "$litellm_venv" | cut -f1)"
fi

echo "== tests against a real LiteLLM (python -m twisted.trial tests.integration.test_litellm)"
OLLAMA_PROXY_LITELLM="$litellm_venv/bin/litellm" "$project/bin/python" -m twisted.trial tests.integration.test_litellm
