#!/bin/sh
# Function calls per streamed /api/chat (c=16, cProfile via twistd --profile) of ONE backend
# (--target) or a 3-member pool (--config, three bench/leanbackend.py processes), issue 21:
#   bench/poolcalls.sh single s.prof; bench/poolcalls.sh pool p.prof 0.5   (health_interval)
#   then compare the two with callsdiff.py (branch shape) or pstats.
set -e
B=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
MODE=$1; OUT=$2; IV=${3:-0.5}; BASE=${BASE:-18600}
$PY $B/leanbackend.py --port $((BASE+1)) 2>/dev/null & B1=$!
$PY $B/leanbackend.py --port $((BASE+2)) 2>/dev/null & B2=$!
$PY $B/leanbackend.py --port $((BASE+3)) 2>/dev/null & B3=$!
if [ $MODE = single ]; then ARGS="--target http://127.0.0.1:$((BASE+1))"; else
cat > ${TMPDIR:-/tmp}/poolcalls-$BASE.toml <<EOT
[routing]
health_interval = $IV
health_timeout = 0.5
[[backend]]
name = "b0"
url = "http://127.0.0.1:$((BASE+1))"
[[backend]]
name = "b1"
url = "http://127.0.0.1:$((BASE+2))"
[[backend]]
name = "b2"
url = "http://127.0.0.1:$((BASE+3))"
EOT
ARGS="--config ${TMPDIR:-/tmp}/poolcalls-$BASE.toml"; fi
$PY -c "from twisted.scripts.twistd import run; run()" -n --pidfile= \
  --logfile=/dev/null --profile="$OUT" --profiler=cprofile --savestats ollama-proxy \
  $ARGS --listen tcp:$BASE:interface=127.0.0.1 --fallback '' --pool-size 1024 & P=$!
sleep 3
$PY $B/loadgen.py --port $BASE --pid $P -c 16 -d ${DUR:-5} > "$OUT.json"
kill $P
while kill -0 $P 2>/dev/null || [ ! -s "$OUT" ]; do sleep 0.5; done
kill $B1 $B2 $B3
