"""
Where the time of one request goes between "the client's bytes are read"
and "the request's bytes are sent to the backend", on an idle proxy over
real sockets (issue 23, the first line at c=1).

The proxy runs in this process (twistd's plugin, the source tree first on
C{sys.path}) with a timestamp (C{time.perf_counter_ns}) taken at the entry
or exit of each stage by wrappers installed here, in the benchmark, never
in the product; the load generator and the backend are separate processes
(C{bench/leanbackend.py}, C{bench/loadgen.py} at c=1).  Each wrapper costs
a few hundred nanoseconds, the same for every build, so read the
differences between builds, not the absolute numbers.

    python bench/reqtrace.py SRC [--port 19510] [--backend-port 19511] [--duration 4] [--chunks 0]

SRC is the build's C{src} directory (a C{git worktree}'s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))

# (stage, module, class or None, attribute, "enter" or "exit"), in the order a request meets them.
STAGES = [
    ("bytes read", "ollama_proxy.web.fastchannel", "FastChannel", "dataReceived", "enter"),
    ("request parsed (site.process)", "ollama_proxy.web.site", "LimitedRequest", "process", "enter"),
    ("resource render", "ollama_proxy.web.bridge", "ProxyResource", "render", "enter"),
    ("handler start", "ollama_proxy.web.generation", "GenerationResource", "handle_POST", "enter"),
    ("body JSON decoded", "ollama_proxy.web.bridge", "Exchange", "json", "exit"),
    ("routed", "ollama_proxy.web.bridge", "ProxyResource", "route", "exit"),
    ("dialect parsed", "ollama_proxy.protocol.ollama", None, "OllamaRoute.parse", "exit"),
    ("postJSON (OpenAI body built)", "ollama_proxy.upstream.backend", "Backend", "postJSON", "enter"),
    ("treq request", "treq.client", "HTTPClient", "request", "enter"),
    ("FastAgent.request", "ollama_proxy.upstream.agent", "FastAgent", "request", "enter"),
    ("connection.request", "ollama_proxy.upstream.connection", "ClientConnection", "request", "enter"),
    ("request sent", "ollama_proxy.upstream.connection", "ClientConnection", "request", "exit"),
]

marks: list[tuple[int, int]] = []  # (stage index, ns)
now = time.perf_counter_ns


def wrapSync(index: int, when: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if when == "enter":
        def entered(*a: Any, **kw: Any) -> Any:
            marks.append((index, now()))
            return fn(*a, **kw)
        return entered

    def exited(*a: Any, **kw: Any) -> Any:
        result = fn(*a, **kw)
        marks.append((index, now()))
        return result
    return exited


def wrapAsync(index: int, when: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if when == "enter":
        def entered(*a: Any, **kw: Any) -> Any:
            marks.append((index, now()))
            return fn(*a, **kw)
        return entered

    async def exited(*a: Any, **kw: Any) -> Any:
        result = await fn(*a, **kw)
        marks.append((index, now()))
        return result
    return exited


def install() -> list[str]:
    import importlib
    import inspect
    installed = []
    for index, (stage, module, cls, attr, when) in enumerate(STAGES):
        try:
            mod = importlib.import_module(module)
            owner: Any = mod
            if cls is None and "." in attr:
                clsName, attr = attr.split(".")
                owner = getattr(mod, clsName)
            elif cls is not None:
                owner = getattr(mod, cls)
            fn = owner.__dict__[attr] if attr in owner.__dict__ else getattr(owner, attr)
        except (ImportError, AttributeError, KeyError):
            continue
        wrap = wrapAsync if inspect.iscoroutinefunction(fn) else wrapSync
        setattr(owner, attr, wrap(index, when, fn))
        installed.append(stage)
    return installed


def report() -> dict[str, Any]:
    # One request: from a "bytes read" mark to the next "request sent" mark.
    per: dict[int, list[int]] = {}
    start: int | None = None
    seen: dict[int, int] = {}
    last = len(STAGES) - 1
    complete = 0
    for index, ns in marks:
        if index == 0:
            if start is None or seen:
                start, seen = ns, {}
            continue
        if start is None:
            continue
        seen.setdefault(index, ns)
        if index == last:
            complete += 1
            for i, t in seen.items():
                per.setdefault(i, []).append(t - start)
            start, seen = None, {}
    return {
        "requests": complete,
        "median_us_since_read": {
            STAGES[i][0]: round(statistics.median(v) / 1000, 1) for i, v in sorted(per.items())
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("src")
    parser.add_argument("--port", type=int, default=19510)
    parser.add_argument("--backend-port", type=int, default=19511)
    parser.add_argument("--duration", type=float, default=4)
    parser.add_argument("--chunks", type=int, default=0)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.src)
        installed = install()
        from twisted.internet import reactor
        from twisted.scripts.twistd import run

        def dump() -> None:
            with open(os.environ["REQTRACE_OUT"], "w") as f:
                json.dump({"stages": installed, **report()}, f)
        reactor.addSystemEventTrigger("before", "shutdown", dump)  # type: ignore[attr-defined]
        sys.argv = ["twistd", "-n", "--pidfile=", "--logfile=/dev/null", "ollama-proxy",
                    "--target", f"http://127.0.0.1:{args.backend_port}",
                    "--listen", f"tcp:{args.port}:interface=127.0.0.1", "--fallback", ""]
        run()
        return
    out = f"/tmp/reqtrace-{os.getpid()}.json"
    env = {**os.environ, "REQTRACE_OUT": out, "PYTHONPATH": args.src}
    # As bench/run.py pins: the proxy alone on core 0, the backend and the
    # load generator on core 1 (on one core, the backend woken by the
    # request would run inside the proxy's send).
    def pin(core: int) -> Callable[[], None]:
        return lambda: os.sched_setaffinity(0, {core})
    backend = subprocess.Popen([sys.executable, os.path.join(HERE, "leanbackend.py"),
                                "--port", str(args.backend_port)], stderr=subprocess.DEVNULL,
                               preexec_fn=pin(1))
    proxy = subprocess.Popen([sys.executable, __file__, args.src, "--child", "--port", str(args.port),
                              "--backend-port", str(args.backend_port)], env=env, preexec_fn=pin(0))
    try:
        time.sleep(2.5)
        subprocess.run([sys.executable, os.path.join(HERE, "loadgen.py"), "--port", str(args.port),
                        "--chunks", str(args.chunks), "-c", "1", "-d", str(args.duration)],
                       check=True, stdout=subprocess.DEVNULL, preexec_fn=pin(1))
    finally:
        proxy.terminate()
        proxy.wait()
        backend.terminate()
        backend.wait()
    with open(out) as f:
        result = json.load(f)
    os.unlink(out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
