#!/bin/sh
# Sample the proxy under load with py-spy (no cProfile distortion); prints the
# functions with the most own samples and the share of each top-level area.
#   bench/pyspy.sh OUT.txt [loadgen args...]
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$1; shift
PROXY_PY=${PROXY_PYTHON:-$HERE/../../venv-i7/bin/python}
BENCH_PY=/work/main/bench/.venvs/bench/bin/python
BP=21620; PP=21621
taskset -c 1 "$BENCH_PY" "$HERE/leanbackend.py" --port $BP 2>/dev/null & B=$!
taskset -c 0 "$PROXY_PY" -c "from twisted.scripts.twistd import run; run()" -n --pidfile= \
  --logfile=/dev/null ollama-proxy \
  --target http://127.0.0.1:$BP --listen tcp:$PP:interface=127.0.0.1 --fallback '' --pool-size 1024 ${PROXY_ARGS} & P=$!
sleep 2
taskset -c 1 "/work/main/bench/.venvs/bench/bin/py-spy" record -p $P -r 400 -d ${SECONDS_:-5} -f raw -o "$OUT" --nonblocking >/dev/null 2>&1 &
S=$!
taskset -c 1 "$BENCH_PY" "$HERE/loadgen.py" --port $PP --pid $P "$@" | tr -d '\n '; echo
wait $S || true
kill $P; sleep 1; kill $B
"$BENCH_PY" "$HERE/stacks.py" "$OUT"
