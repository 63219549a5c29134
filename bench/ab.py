"""
Two builds of the proxy, measured in alternating rounds against one backend
(same pinning as C{run.py}: proxies on core 0, backend and load generator on
core 1), so that load from other processes hits both alike (each round's
order is the last one's reversed); prints CPU ms
per request and req/s per round and the median ratio B/A per scenario.

    bench/.venvs/bench/bin/python bench/ab.py --proxy-python PY A=TREE/src B=TREE/src \
        [floor=relayfloor:TREE/src] [K0IN=k0in:BINARY] [--rounds 5] [--duration 3] [--scenario NAME ...]

More than two builds are measured in the same rounds (each round's order the
last one's reversed) and compared with the first; C{NAME=relayfloor:PATH} is
C{bench/relayfloor.py} (the C{fast} build) on that source tree, for chat
scenarios only; C{NAME=k0in:BINARY} is the Go peer (C{run.k0inServer}).
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

SCENARIOS = {
    "non-stream c=16": ("nonstream", 16, 1, "fake-model", {}),
    "non-stream c=1": ("nonstream", 1, 1, "fake-model", {}),
    "non-stream c=128": ("nonstream", 128, 1, "fake-model", {}),
    "stream c=16": ("stream", 16, 100, "fake-model", {}),
    "tags c=16": ("tags", 16, 1, "fake-model", {}),
    "stream c=1": ("stream", 1, 100, "fake-model", {}),
    "TTFB c=1": ("stream", 1, 20, "slow-5", {}),
    "1000 long streams": ("stream", 1000, 200, "slow-20", {"perConn": 1, "timeout": 120.0}),
    # The same chunk pattern (one event per read) below saturation: CPU per
    # relayed chunk without a queue.
    "200 long streams": ("stream", 200, 200, "slow-20", {"perConn": 1, "timeout": 120.0}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxy-python", required=True)
    parser.add_argument("builds", nargs="+", help="NAME=PYTHONPATH or NAME=relayfloor:PYTHONPATH")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(run.BENCH_CORE)})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    logDir = tempfile.mkdtemp(prefix="ab-")
    backendPort = run.freePort()
    backend = run.Server("direct", [sys.executable, os.path.join(HERE, "leanbackend.py"), "--port",
                                    str(backendPort)], backendPort, run.BENCH_CORE)
    builds = []
    kinds: dict[str, str] = {}
    for spec in args.builds:
        name, _, path = spec.partition("=")
        if path.startswith("k0in:"):
            server = run.k0inServer(path[len("k0in:"):], backendPort,
                                    {m for _, _, _, m, _ in SCENARIOS.values()}, logDir)
            server.name, kinds[name] = name, "k0in"
        elif path.startswith("relayfloor:"):
            server = run.relayFloorServer(args.proxy_python, backendPort, "fast",
                                          {"PYTHONPATH": path[len("relayfloor:"):]})
            server.name, kinds[name] = name, "relayfloor"
        else:
            server = run.proxyServer(name, args.proxy_python, backendPort, [], {"PYTHONPATH": path})
            kinds[name] = "ours"
        builds.append(server)
    backend.start(logDir)
    try:
        for server in builds:
            server.start(logDir)
        for scenario in args.scenario or ["non-stream c=16", "stream c=16"]:
            route, c, chunks, model, extra = SCENARIOS[scenario]
            rows: dict[str, list[tuple[float, float, float]]] = {s.name: [] for s in builds}
            for n in range(args.rounds):
                # A then B, B then A: the second of a pair ran measurably
                # slower (stream c=16, 6 rounds: +9 % as B, -13 % as A).
                for server in builds if n % 2 == 0 else builds[::-1]:
                    spec = run.specFor(kinds[server.name], route, server.port, chunks, model)
                    assert spec is not None and server.proc is not None
                    result = asyncio.run(loadgen.run(spec, c, args.duration, watchPids=[server.proc.pid],
                                                     **extra))
                    s = result.summary()
                    rows[server.name].append((s["cpuMsPerReq"], s["rps"], s["ttfbP50ms"]))
                    assert s["errors"] == 0, s["errorSamples"]
            a = rows[builds[0].name]
            print(f"== {scenario}")
            for server in builds:
                r = rows[server.name]
                print(f"  {server.name:8s} CPU ms/req " + " ".join(f"{x[0]:.3f}" for x in r)
                      + f" | median {statistics.median(x[0] for x in r):.3f}; req/s median "
                      f"{statistics.median(x[1] for x in r):.0f}; TTFB p50 median "
                      f"{statistics.median(x[2] for x in r):.2f} ms")
            for other in builds[1:]:
                b = rows[other.name]
                print(f"  CPU ratio {other.name}/{builds[0].name}: median per round "
                      f"{statistics.median(y[0] / x[0] for x, y in zip(a, b)):.3f}")
            sys.stdout.flush()
    finally:
        for server in [*builds, backend]:
            server.stop()


if __name__ == "__main__":
    main()
