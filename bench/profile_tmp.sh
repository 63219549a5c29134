#!/bin/sh
# Profile the proxy under load with cProfile (twistd --profile), proxy on
# core 0, lean backend and load generator on core 1.
#   bench/profile.sh OUT.prof [loadgen args...]   e.g. --path /api/chat -c 16 -d 5
# Prints the top entries by own time; the .prof file is kept for pstats/snakeviz.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$1; shift
PROXY_PY=${PROXY_PYTHON:-$HERE/../../venv-i7/bin/python}
BENCH_PY=$HERE/.venvs/bench/bin/python
BP=18100; PP=18101
taskset -c 1 "$BENCH_PY" "$HERE/leanbackend.py" --port $BP 2>/dev/null & B=$!
taskset -c 0 "$PROXY_PY" -c "from twisted.scripts.twistd import run; run()" -n --pidfile= \
  --logfile=/dev/null --profile="$OUT" --profiler=cprofile --savestats ollama-proxy \
  --target http://127.0.0.1:$BP --listen tcp:$PP:interface=127.0.0.1 --fallback '' --pool-size 1024 ${PROXY_ARGS} & P=$!
sleep 2
taskset -c 1 "$BENCH_PY" "$HERE/loadgen.py" --port $PP --pid $P "$@" | tr -d '\n '; echo
kill $P; sleep 4; kill $B
"$PROXY_PY" -c "import pstats,sys; s=pstats.Stats(sys.argv[1]); s.sort_stats('tottime').print_stats(${TOP:-30})" "$OUT" | sed -n '/ncalls/,$p'
