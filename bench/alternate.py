"""
The client dialects' streams against one proxy process, interleaved: each
round runs every route for a few seconds in turn (c=16, 100 chunks), so
that load from other processes hits every route alike, and reports each
route's CPU per request (the proxy process's own CPU time per verified
request) and its median ratio to streamed C{/api/chat} over the rounds.
The proxy is pinned to core 0, the lean backend and the load generator
share core 1, as in C{run.py}.

    bench/.venvs/bench/bin/python bench/alternate.py --proxy-python ../venv/bin/python \\
        [--rounds 5] [--duration 3] [--routes stream,anthropic,responses,gemini]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
from run import BENCH_CORE, Server, freePort, proxyServer, specFor  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {int(BENCH_CORE)})
    logDir = tempfile.mkdtemp(prefix="bench-alt-")
    backendPort = freePort()
    backend = Server("direct", [sys.executable, os.path.join(HERE, "leanbackend.py"), "--port",
                                str(backendPort)], backendPort, BENCH_CORE)
    proxy = proxyServer("proxy", os.path.abspath(args.proxy_python), backendPort, [])
    routes = args.routes.split(",")
    cpu: dict[str, list[float]] = {route: [] for route in routes}
    rps: dict[str, list[float]] = {route: [] for route in routes}
    backend.start(logDir)
    try:
        proxy.start(logDir)
        try:
            for n in range(args.rounds):
                for route in routes:
                    spec = specFor("ours", route, proxy.port, 100, "fake-model")
                    assert spec is not None, route
                    result = await loadgen.run(spec, 16, args.duration, watchPids=proxy.pids)
                    summary = result.summary()
                    if summary["errors"]:
                        raise SystemExit(f"{route}: {summary['errorSamples']}")
                    cpu[route].append(summary["cpuMsPerReq"])
                    rps[route].append(summary["rps"])
                    print(f"round {n + 1} {route:10} {summary['rps']:8.1f} req/s "
                          f"{summary['cpuMsPerReq']:.3f} CPU ms/req", flush=True)
                    await asyncio.sleep(0.3)
        finally:
            proxy.stop()
    finally:
        backend.stop()
    base = routes[0]
    print(f"\nmedian over {args.rounds} rounds, ratio to {base} per round then median; load "
          f"average {os.getloadavg()[0]:.1f}")
    for route in routes:
        ratios = [c / b for c, b in zip(cpu[route], cpu[base])]
        print(f"{route:10} CPU {statistics.median(cpu[route]):.3f} ms/req "
              f"({statistics.median(ratios):.3f}x, rounds {min(ratios):.2f}-{max(ratios):.2f}x)  "
              f"{statistics.median(rps[route]):.0f} req/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy-python", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--routes", default="stream,gemini,anthropic,responses")
    asyncio.run(main(parser.parse_args()))
