"""
Instructions per request of each client dialect's stream, counted by
valgrind's C{callgrind}: deterministic on a shared machine where CPU time
is not (issue 23's dialect work).  Two measures, each comparing the
dialects in the same build:

- C{pipeline}: the pure translation of one 100-token stream (SSE in,
  the dialect out) through C{TranslatedStream}, no sockets: the
  difference between 20 and 220 streams in a process of its own, so start-up
  cancels out.  C{--reads 2} is the shape of the c=16 bench (a
  whole reply in a couple of socket reads), C{--reads 103} one event per
  read (a backend streaming token by token).
- C{sockets}: the whole proxy (C{twistd ollama-proxy}) under callgrind,
  the lean backend and the load generator outside it, c=16: each route's
  requests counted between a zeroing and a dump of the counters
  (C{callgrind_control}), rounds interleaved.  A cyclic garbage collection
  falls in one window or another, so take the median of several rounds.

    python bench/instructions.py pipeline [--reads 2] [--tokens 100]
    bench/.venvs/bench/bin/python bench/instructions.py sockets --proxy-python ../venv/bin/python \\
        [--rounds 3] [--per-conn 10]

Prefix C{PYTHONPATH=<tree>/src} to count another build (C{sockets} passes
it on to the proxy).  Valgrind counts a large C{rep movsb} copy byte by
byte, so big joins weigh more here than in CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DIALECTS = ["ollama", "anthropic", "responses", "gemini"]


def child(name: str, streams: int, tokens: int, nreads: int) -> None:
    """
    Run C{streams} streams of dialect C{name} (under callgrind, by the parent).
    """
    from dialects import ENCODERS, clock, recorded

    from ollama_proxy.protocol.backend_reader import ChatStreamReader
    from ollama_proxy.protocol.stream import TranslatedStream

    events = [e + b"\n\n" for e in b"".join(recorded(tokens)).split(b"\n\n") if e]
    step = -(-len(events) // nreads)
    reads = [b"".join(events[i:i + step]) for i in range(0, len(events), step)]
    make = ENCODERS[name]
    for _ in range(streams + 1):
        pipeline = TranslatedStream(ChatStreamReader(clock), make())  # type: ignore[arg-type]
        for read in reads:
            pipeline.feed(read)
        pipeline.end()


def collected(args: list[str]) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *args],
                         capture_output=True, text=True, check=True).stderr
    return int(next(line for line in out.splitlines() if "Collected" in line).split()[-1])


def pipeline(args: argparse.Namespace) -> None:
    counts = {}
    for name in DIALECTS:
        run = [sys.executable, __file__, "child", name, "{}", str(args.tokens), str(args.reads)]
        few = collected([a.replace("{}", "20") for a in run])
        many = collected([a.replace("{}", "220") for a in run])
        counts[name] = (many - few) / 200
    print(f"pipeline, {args.tokens} tokens in {args.reads} reads: instructions per stream")
    for name in DIALECTS:
        print(f"{name:10} {counts[name]:12,.0f}  {counts[name] / counts['ollama']:.3f}x")


async def drive(route: str, port: int, perConn: int) -> int:
    import loadgen
    from run import specFor

    spec = specFor("ours", route, port, 100, "fake-model")
    assert spec is not None
    result = await loadgen.run(spec, 16, 0, perConn=perConn, timeout=600)
    summary = result.summary()
    if summary["errors"]:
        raise SystemExit(f"{route}: {summary['errorSamples']}")
    return int(summary["ok"])


def sockets(args: argparse.Namespace) -> None:
    from run import freePort

    routes = ["stream", "anthropic", "responses", "gemini"]
    out = tempfile.mkdtemp(prefix="bench-instr-")
    backendPort, proxyPort = freePort(), freePort()
    backend = subprocess.Popen([sys.executable, os.path.join(HERE, "leanbackend.py"), "--port",
                                str(backendPort)], stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", args.proxy_python,
         "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "--logfile=/dev/null", "ollama-proxy", "--target", f"http://127.0.0.1:{backendPort}",
         "--listen", f"tcp:{proxyPort}:interface=127.0.0.1", "--fallback", "", "--pool-size", "1024"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def control(*what: str) -> None:
        subprocess.run(["callgrind_control", *what, str(proxy.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)

    def dumped() -> int:
        newest = max(glob.glob(f"{out}/cg.{proxy.pid}.*"), key=os.path.getmtime)
        with open(newest) as f:
            total = next(int(line.split()[1]) for line in f if line.startswith("totals:"))
        os.remove(newest)
        return total

    try:
        for _ in range(300):  # valgrind starts slowly
            try:
                asyncio.run(drive("stream", proxyPort, 1))
                break
            except OSError:
                time.sleep(1)
        for route in routes:
            asyncio.run(drive(route, proxyPort, 3))
        counts: dict[str, list[float]] = {route: [] for route in routes}
        for n in range(args.rounds):
            for route in routes:
                control("-z")
                ok = asyncio.run(drive(route, proxyPort, args.per_conn))
                control("-d")
                time.sleep(0.5)
                counts[route].append(dumped() / ok)
                print(f"round {n + 1} {route:10} {counts[route][-1]:12,.0f} instructions/request",
                      flush=True)
    finally:
        proxy.terminate()
        proxy.wait()
        backend.terminate()
    base = statistics.median(counts["stream"])
    print(f"\nsockets, c=16, median of {args.rounds} rounds: instructions per request")
    for route in routes:
        median = statistics.median(counts[route])
        print(f"{route:10} {median:12,.0f}  {median / base:.3f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        sys.exit()
    parser = argparse.ArgumentParser()
    parser.add_argument("measure", choices=["pipeline", "sockets"])
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--reads", type=int, default=2)
    parser.add_argument("--proxy-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-conn", type=int, default=10)
    args = parser.parse_args()
    pipeline(args) if args.measure == "pipeline" else sockets(args)
