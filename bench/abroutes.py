"""
Two (or more) builds of the proxy and several routes, interleaved: every
round runs each route on each build for a few seconds in turn (c=16,
100-chunk streams), so that load from other processes hits every pair
alike.  Prints each build's CPU per request per route (the proxy process's
own time per verified request), its median ratio to the first route over
the rounds (e.g. C{/v1/responses} against C{/api/chat}), and each route's
median ratio between the last build and the first.  Pinned as C{run.py}
pins: the proxies on core 0, the lean backend and this load generator on
core 1.

    bench/.venvs/bench/bin/python bench/abroutes.py --proxy-python PY A=TREE/src B=TREE/src \\
        [--routes stream,responses,nonstream] [--rounds 6] [--duration 3]
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
import run  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {int(run.BENCH_CORE)})
    logDir = tempfile.mkdtemp(prefix="abroutes-")
    backendPort = run.freePort()
    backend = run.Server("direct", [sys.executable, os.path.join(HERE, "leanbackend.py"), "--port",
                                    str(backendPort)], backendPort, run.BENCH_CORE)
    builds = []
    for spec in args.builds:
        name, _, path = spec.partition("=")
        builds.append(run.proxyServer(name, os.path.abspath(args.proxy_python), backendPort, [],
                                      {"PYTHONPATH": path}))
    routes = args.routes.split(",")
    cpu: dict[tuple[str, str], list[float]] = {(b.name, r): [] for b in builds for r in routes}
    backend.start(logDir)
    try:
        for server in builds:
            server.start(logDir)
        for n in range(args.rounds):
            for server in builds:
                for route in routes:
                    spec = run.specFor("ours", route, server.port, 100, "fake-model")
                    assert spec is not None, route
                    result = await loadgen.run(spec, 16, args.duration, watchPids=server.pids)
                    summary = result.summary()
                    if summary["errors"]:
                        raise SystemExit(f"{server.name} {route}: {summary['errorSamples']}")
                    cpu[(server.name, route)].append(summary["cpuMsPerReq"])
                    print(f"round {n + 1} {server.name:8} {route:10} {summary['cpuMsPerReq']:.3f} CPU ms/req",
                          flush=True)
                    await asyncio.sleep(0.3)
    finally:
        for server in [*builds, backend]:
            server.stop()
    base = routes[0]
    print(f"\nmedians over {args.rounds} rounds (ratios per round, then the median); load average "
          f"{os.getloadavg()[0]:.1f}")
    for server in builds:
        for route in routes:
            values, ref = cpu[(server.name, route)], cpu[(server.name, base)]
            ratios = [v / r for v, r in zip(values, ref)]
            print(f"{server.name:8} {route:10} CPU {statistics.median(values):.3f} ms/req, "
                  f"{statistics.median(ratios):.3f}x {base} (rounds {min(ratios):.2f}-{max(ratios):.2f})")
    first, last = builds[0].name, builds[-1].name
    for route in routes:
        ratios = [b / a for a, b in zip(cpu[(first, route)], cpu[(last, route)])]
        print(f"{route:10} {last}/{first} {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proxy-python", required=True)
    parser.add_argument("builds", nargs="+", help="NAME=PYTHONPATH (two or more)")
    parser.add_argument("--routes", default="stream,responses")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=3.0)
    asyncio.run(main(parser.parse_args()))
