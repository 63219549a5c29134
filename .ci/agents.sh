#!/usr/bin/env bash
# The real coding-agent CLIs end to end (tests/integration/test_agent_clis.py):
# install pinned Claude Code, Codex CLI, GitHub Copilot CLI and Gemini CLI
# releases from npm into a folder of their own (~950 MB, ~1 min here; they run
# offline against `ollama-proxy --demo`, Copilot without a GitHub login, Gemini
# CLI without a Google account), then run that test module with the project's
# test venv: each CLI answers a prompt and completes a real tool run with the
# fake-agent demo model; and test_fleet_agents.py: one sticky session per
# CLI stays on one of three backends.
#
# Usage: .ci/agents.sh [PROJECT_VENV]
#   PROJECT_VENV     a venv with this project installed with its [test] extras
#                    (default: the active one).
# AGENTS_DIR         reuse (or create) the npm folder at this path.
# AGENTS_OPTIONAL=1  no npm, or an install failure, skips instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CLAUDE_CODE_VERSION=2.1.197
CODEX_VERSION=0.171.0
COPILOT_VERSION=1.0.102
GEMINI_CLI_VERSION=0.61.0

project=${1:-${VIRTUAL_ENV:-}}
[ -n "$project" ] || { echo "usage: .ci/agents.sh PROJECT_VENV"; exit 2; }

skip() {
  if [ "${AGENTS_OPTIONAL:-}" = 1 ]; then
    echo "$1: skipping the agent CLI tests"
    exit 0
  fi
  echo "$1"
  exit 1
}

command -v npm >/dev/null || skip "npm is not installed"
dir=${AGENTS_DIR:-$work/agents}
installed() {
  for cli in claude codex copilot gemini; do
    [ -x "$dir/node_modules/.bin/$cli" ] || return 1
  done
}
if ! installed; then
  echo "== installing @anthropic-ai/claude-code@$CLAUDE_CODE_VERSION, @openai/codex@$CODEX_VERSION" \
    "@github/copilot@$COPILOT_VERSION and @google/gemini-cli@$GEMINI_CLI_VERSION"
  start=$(date +%s)
  mkdir -p "$dir"
  timeout 600 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "@openai/codex@$CODEX_VERSION" \
    "@github/copilot@$COPILOT_VERSION" \
    "@google/gemini-cli@$GEMINI_CLI_VERSION" \
    || skip "the agent CLIs could not be installed"
  installed || skip "npm finished but claude, codex, copilot or gemini is missing from $dir/node_modules/.bin"
  echo "installed in $(( $(date +%s) - start )) s, $(du -sh "$dir" | cut -f1)"
fi

echo "== tests with the real CLIs (tests.integration.test_agent_clis, test_fleet_agents)"
OLLAMA_PROXY_AGENT_CLIS="$dir/node_modules/.bin" "$project/bin/python" -m twisted.trial \
  tests.integration.test_agent_clis tests.integration.test_fleet_agents
