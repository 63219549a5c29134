#!/bin/sh
# Create the benchmark venvs under bench/.venvs/ (gitignored).
#   bench/setup.sh [PYTHON3.12]
# PYTHON3.12: an interpreter >= 3.12 for oai2ollama (it requires it); skipped if absent.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
V=$HERE/.venvs
mkdir -p "$V"
python3 -m venv "$V/bench" && "$V/bench/bin/pip" install -q -U pip && "$V/bench/bin/pip" install -q uvloop matplotlib py-spy
python3 -m venv "$V/ollama-openai-proxy" && "$V/ollama-openai-proxy/bin/pip" install -q ollama-openai-proxy
PY312=${1:-$(command -v python3.12 || true)}
if [ -n "$PY312" ]; then
  "$PY312" -m venv "$V/oai2ollama" && "$V/oai2ollama/bin/pip" install -q oai2ollama
else
  echo "no Python >= 3.12: oai2ollama skipped (it requires Python >= 3.12)" >&2
fi
if command -v pypy3 >/dev/null; then
  # Debian's PyPy 7.3 is Python 3.9: Twisted 26.4 is the last release for it;
  # treq without its optional deps; orjson and cryptography cannot build.
  pypy3 -m venv "$V/pypy" && "$V/pypy/bin/pip" install -q -U pip
  "$V/pypy/bin/pip" install -q twisted attrs incremental requests hyperlink
  "$V/pypy/bin/pip" install -q --no-deps treq
else
  echo "no pypy3 (apt-get install pypy3): PyPy target skipped" >&2
fi
