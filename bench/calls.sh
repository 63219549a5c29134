#!/bin/sh
# Function calls per request of one build under socket load (cProfile via
# twistd --profile), for A/B between builds: calls do not vary with this
# shared machine's load the way CPU time does.
#   bench/calls.sh SRC OUT.prof [loadgen args...]   e.g. bench/calls.sh /tmp/main/src main.prof -c 16 -d 4
#   bench/callsdiff.py main.prof shape.prof          per-request calls, the functions that differ
# PROXY_ARGS go to the proxy (e.g. "--http-parser twisted").
# SRC is put first on PYTHONPATH (a build from `git archive REF | tar -x -C DIR`); the venv's python
# (PYTHON, default python3) needs twisted, treq and the proxy's dependencies.
# BACKEND_ARGS go to bench/leanbackend.py (e.g. "--delay 0.002": one event per read).
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
SRC=$1; OUT=$2; shift 2
BP=${BP:-18500}; PP=${PP:-18501}
"$PY" "$HERE/leanbackend.py" --port $BP ${BACKEND_ARGS} 2>/dev/null & B=$!
PYTHONPATH=$SRC "$PY" -c "from twisted.scripts.twistd import run; run()" -n --pidfile= \
  --logfile=/dev/null --profile="$OUT" --profiler=cprofile --savestats ollama-proxy \
  --target http://127.0.0.1:$BP --listen tcp:$PP:interface=127.0.0.1 --fallback '' --pool-size 1024 ${PROXY_ARGS} & P=$!
sleep 2.5
"$PY" "$HERE/loadgen.py" --port $PP --pid $P "$@" > "$OUT.json"
kill $P
while kill -0 $P 2>/dev/null || [ ! -s "$OUT" ]; do sleep 0.5; done
kill $B
