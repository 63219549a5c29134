"""
Where a streamed request's time to its first line goes, on an idle proxy
at c=1 over real sockets (issue 23, "first line at c=1"): the two halves
of the proxy's part of it, the request's way in (the client's bytes read
-> the request sent upstream) and the first line's way out (the backend's
first chunk read -> the first line sent to the client), with the stages
in between.

The backend (C{bench/leanbackend.py}, model C{slow-5}) sends the response
head at once and each event 5 ms apart, as C{bench/run.py}'s "TTFB c=1"
scenario; what the proxy does with the head (the stream's set-up) falls in
those 5 ms, off the client's wait, and is shown apart.

The proxy runs in this process (twistd's plugin, SRC first on
C{sys.path}) with C{time.perf_counter_ns} taken at each stage by wrappers
installed here, never in the product; the backend and the load generator
are separate processes, pinned as C{run.py} pins (proxy core 0, the others
core 1).  Each wrapper costs a few hundred ns, the same in every build:
read differences between builds.  With C{--calls}, the Python function
calls inside each of the three windows are counted instead
(C{sys.setprofile}), a measure this shared machine's load cannot move.

    python bench/firsttrace.py SRC [--port 21310] [--backend-port 21311] [--requests 300] [--calls]
        [--path /api/chat]
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

# (stage, module, class, attribute, "enter" or "exit").
STAGES = [
    ("client bytes read", "ollama_proxy.web.fastchannel", "FastChannel", "dataReceived", "enter"),
    ("resource render", "ollama_proxy.web.bridge", "ProxyResource", "render", "enter"),
    ("handler start", "ollama_proxy.web.generation", "GenerationResource", "handle_POST", "enter"),
    ("treq request", "treq.client", "HTTPClient", "request", "enter"),
    ("connection.request", "ollama_proxy.upstream.connection", "ClientConnection", "request", "enter"),
    ("upstream write", "ollama_proxy.upstream.compat", "WriteThroughClient", "write", "enter"),
    ("upstream read", "ollama_proxy.upstream.connection", "ClientConnection", "dataReceived", "enter"),
    ("upstream read done", "ollama_proxy.upstream.connection", "ClientConnection", "dataReceived", "exit"),
    ("body reader", "ollama_proxy.upstream.body", "BodyReader", "dataReceived", "enter"),
    ("pipeline feed", "ollama_proxy.protocol.stream", "TranslatedStream", "feed", "enter"),
    ("pipeline fed", "ollama_proxy.protocol.stream", "TranslatedStream", "feed", "exit"),
    ("request.write", "ollama_proxy.web.site", "LimitedRequest", "write", "enter"),
    ("client write", "ollama_proxy.upstream.compat", "WriteThroughServer", "write", "enter"),
    ("client write done", "ollama_proxy.upstream.compat", "WriteThroughServer", "write", "exit"),
]
NAMES = [s[0] for s in STAGES]
MODEL = os.environ.get("FIRSTTRACE_MODEL", "slow-5")

marks: list[tuple[int, int]] = []
now = time.perf_counter_ns


def wrap(index: int, when: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if when == "enter":
        def entered(*a: Any, **kw: Any) -> Any:
            marks.append((index, now()))
            return fn(*a, **kw)
        return entered

    def exited(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        finally:
            marks.append((index, now()))
    return exited


def install() -> list[str]:
    import importlib
    installed = []
    originals: dict[tuple[Any, str], Any] = {}
    for index, (stage, module, cls, attr, when) in enumerate(STAGES):
        try:
            owner = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            continue
        key = (owner, attr)
        fn = originals.get(key)
        if fn is None:
            fn = originals[key] = getattr(owner, attr)
        else:
            fn = getattr(owner, attr)  # already wrapped for the other end
        setattr(owner, attr, wrap(index, when, fn))
        installed.append(stage)
    return installed


def windows() -> list[dict[str, int]]:
    """
    Cut the marks into requests: each from a "client bytes read" that
    starts a request to the next one.  Inside it: the request's way in
    (first read -> first upstream write), the head (the upstream read
    after it), the first line's way out (the next upstream read -> the
    first client write's end).
    """
    out: list[dict[str, int]] = []
    i = 0
    idx = {name: n for n, name in enumerate(NAMES)}
    n = len(marks)
    while i < n:
        if marks[i][0] != idx["client bytes read"]:
            i += 1
            continue
        start = marks[i][1]
        one: dict[str, int] = {"read": start}
        j = i + 1
        phase = "in"
        reads = 0
        while j < n and marks[j][0] != idx["client bytes read"]:
            stage, t = marks[j]
            name = NAMES[stage]
            if phase == "in":
                one.setdefault("in:" + name, t - start)
                if name == "upstream write":
                    one["sent"] = t
                    phase = "head"
            elif phase == "head":
                if name == "upstream read":
                    reads += 1
                    if reads == 1:
                        one["head"] = t
                    else:
                        one["chunk"] = t
                        phase = "out"
                elif name == "upstream read done" and "head" in one:
                    one.setdefault("headDone", t)
            elif phase == "out":
                one.setdefault("out:" + name, t - one["chunk"])
                if name == "client write done":
                    one["firstLine"] = t
                    phase = "done"
            j += 1
        if "firstLine" in one:
            out.append(one)
        i = j
    return out


def sequence(skip: int = 40) -> list[str]:
    """One request's marks in order (the C{skip}-th), as text."""
    idx = NAMES.index("client bytes read")
    starts = [i for i, (stage, _) in enumerate(marks) if stage == idx]
    if len(starts) <= skip + 1:
        return []
    a, b = starts[skip], starts[skip + 1]
    t0 = marks[a][1]
    return [f"{(t - t0) / 1000:9.1f} {NAMES[stage]}" for stage, t in marks[a:b]][:40]


def report() -> dict[str, Any]:
    every = windows()
    ws = every[5:]  # the first requests warm the caches and the pool

    def med(key: str) -> float | None:
        vals = [w[key] for w in ws if key in w]
        return round(statistics.median(vals) / 1000, 1) if vals else None

    inStages = {k[3:]: med(k) for k in NAMES_IN if med(k) is not None}
    outStages = {k[4:]: med(k) for k in NAMES_OUT if med(k) is not None}
    return {
        "requests": len(ws),
        "request in (us since the client read)": inStages,
        "first line out (us since the upstream read of the first chunk)": outStages,
        "median us: read -> sent": round(statistics.median(w["sent"] - w["read"] for w in ws) / 1000, 1),
        "median us: first chunk read -> first line sent": round(
            statistics.median(w["firstLine"] - w["chunk"] for w in ws) / 1000, 1),
        "median us: the head's processing (off the wait)": round(
            statistics.median(w["headDone"] - w["head"] for w in ws if "headDone" in w) / 1000, 1),
        "one request": sequence(),
        "absolute": [{k: w[k] for k in ("read", "sent", "chunk", "firstLine") if k in w} for w in every],
    }


NAMES_IN = ["in:" + n for n in NAMES]
NAMES_OUT = ["out:" + n for n in NAMES]


class Counter:
    """Python calls inside the three windows, by sys.setprofile."""

    def __init__(self) -> None:
        self.window: str | None = None
        self.calls: dict[str, list[int]] = {"in": [], "head": [], "out": []}
        self.n = 0

    detail: dict[str, dict[str, int]] | None = None

    def profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call" or event == "c_call":
            self.n += 1
            if self.detail is not None and self.window is not None:
                if event == "call":
                    code = frame.f_code
                    name = f"{code.co_filename.rsplit('/', 2)[-2:][-1]}:{code.co_firstlineno}({code.co_name})"
                else:
                    name = f"<{getattr(arg, '__qualname__', repr(arg))}>"
                per = self.detail.setdefault(self.window, {})
                per[name] = per.get(name, 0) + 1

    def start(self, window: str) -> None:
        self.stop()
        self.window = window
        self.n = 0
        sys.setprofile(self.profile)

    def stop(self) -> None:
        if self.window is not None:
            sys.setprofile(None)
            self.calls[self.window].append(self.n)
            self.window = None


def installCounting(counter: Counter) -> None:
    """
    Start and stop the windows at the same points as the timing marks:
    "in" from the client's read to the upstream write, "head" from the
    head's read to the end of that read, "out" from the first chunk's read
    to the first client write's end.
    """
    from ollama_proxy.upstream import compat, connection
    from ollama_proxy.web import fastchannel

    state = {"phase": "idle", "reads": 0}
    fcData = fastchannel.FastChannel.dataReceived
    ccData = connection.ClientConnection.dataReceived
    up = compat.WriteThroughClient.write
    down = compat.WriteThroughServer.write

    def clientRead(self: Any, data: bytes) -> None:
        if state["phase"] in ("idle", "done"):
            state["phase"], state["reads"] = "in", 0
            counter.start("in")
        fcData(self, data)

    def upWrite(self: Any, data: bytes) -> None:
        up(self, data)
        if state["phase"] == "in":
            counter.stop()
            state["phase"] = "head"

    def upRead(self: Any, data: bytes) -> None:
        phase = state["phase"]
        if phase == "head":
            state["reads"] += 1
            if state["reads"] == 1:
                counter.start("head")
                try:
                    ccData(self, data)
                finally:
                    counter.stop()
                return
            state["phase"] = "out"
            counter.start("out")
        ccData(self, data)

    def downWrite(self: Any, data: bytes) -> None:
        down(self, data)
        if state["phase"] == "out":
            counter.stop()
            state["phase"] = "done"

    fastchannel.FastChannel.dataReceived = clientRead  # type: ignore[method-assign]
    compat.WriteThroughClient.write = upWrite  # type: ignore[method-assign]
    connection.ClientConnection.dataReceived = upRead  # type: ignore[method-assign]
    compat.WriteThroughServer.write = downWrite  # type: ignore[method-assign]


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.src)
    counter = Counter()
    installed = install() if not args.calls else []
    if args.calls:
        installCounting(counter)
        if args.detail:
            counter.detail = {}
    from twisted.internet import reactor
    from twisted.scripts.twistd import run

    def dump() -> None:
        if args.calls:
            result: dict[str, Any] = {"requests": len(counter.calls["out"][5:])}
            for window, label in (("in", "request in"), ("head", "response head (off the wait)"),
                                  ("out", "first line out")):
                vals = counter.calls[window][5:]
                result[f"calls: {label}"] = statistics.median(vals) if vals else None
            if counter.detail is not None:
                n = max(1, len(counter.calls["out"]))
                result["detail (calls per request)"] = {
                    w: {k: round(v / n, 2) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}
                    for w, d in counter.detail.items()}
        else:
            result = {"stages": installed, **report()}
        with open(os.environ["FIRSTTRACE_OUT"], "w") as f:
            json.dump(result, f)
    reactor.addSystemEventTrigger("before", "shutdown", dump)  # type: ignore[attr-defined]
    sys.argv = ["twistd", "-n", "--pidfile=", "--logfile=/dev/null", "ollama-proxy",
                "--target", f"http://127.0.0.1:{args.backend_port}",
                "--listen", f"tcp:{args.port}:interface=127.0.0.1", "--fallback", ""]
    run()


def drive(port: int, requests: int, path: str) -> dict[str, Any]:
    """
    C{requests} streamed requests one after the other on one keep-alive
    connection (C{bench/loadgen.py}'s client): for each, the absolute
    C{perf_counter} (C{CLOCK_MONOTONIC}, one clock for every process) of
    its send and of its first body byte.
    """
    import asyncio
    sys.path.insert(0, HERE)
    import loadgen

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    chunks = 20
    msgs = [{"role": "user", "content": "hi"}]
    if path == "/api/chat":
        body: dict[str, Any] = {"model": MODEL, "messages": msgs, "options": {"num_predict": chunks}}
    elif path == "/v1/responses":
        body = {"model": MODEL, "input": "hi", "max_output_tokens": chunks, "stream": True}
    else:
        body = {"model": MODEL, "messages": msgs, "max_tokens": chunks, "stream": True}
    raw = loadgen.buildRequest("POST", path, body)

    async def go() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(loadgen.Conn, "127.0.0.1", port)
        sent, first, bad = [], [], 0
        for _ in range(requests):
            t0 = time.perf_counter()
            status, data, ttfb, _t1 = await asyncio.wait_for(conn.send(raw), 30)
            if status != 200 or ttfb is None or len(data) < 100:
                bad += 1
            sent.append(t0)
            first.append(ttfb if ttfb is not None else t0)
        conn.transport.close()
        return {"sent": sent, "first": first, "bad": bad}

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src")
    parser.add_argument("--port", type=int, default=21310)
    parser.add_argument("--backend-port", type=int, default=21311)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--path", default="/api/chat")
    parser.add_argument("--calls", action="store_true", help="count function calls per window instead")
    parser.add_argument("--detail", action="store_true", help="with --calls: per function")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--drive", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.drive:
        print(json.dumps(drive(args.port, args.requests, args.path)))
        return
    out = f"/tmp/firsttrace-{os.getpid()}.json"
    env = {**os.environ, "FIRSTTRACE_OUT": out, "PYTHONPATH": args.src}

    def pin(core: int) -> Callable[[], None]:
        return lambda: os.sched_setaffinity(0, {core})
    backend = subprocess.Popen([sys.executable, os.path.join(HERE, "leanbackend.py"),
                                "--port", str(args.backend_port)], stderr=subprocess.DEVNULL,
                               preexec_fn=pin(1))
    argv = [sys.executable, __file__, args.src, "--child", "--port", str(args.port),
            "--backend-port", str(args.backend_port)]
    argv += ["--calls"] if args.calls else []
    argv += ["--detail"] if args.detail else []
    proxy = subprocess.Popen(argv, env=env, preexec_fn=pin(0))
    def load(port: int, path: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, __file__, args.src, "--drive", "--port", str(port),
                               "--requests", str(args.requests), "--path", path],
                              check=True, capture_output=True, text=True, preexec_fn=pin(1))
        return dict(json.loads(done.stdout))

    try:
        time.sleep(2.5)
        direct = load(args.backend_port, "/v1/chat/completions")
        summary = load(args.port, args.path)
        direct2 = load(args.backend_port, "/v1/chat/completions")
    finally:
        proxy.terminate()
        proxy.wait()
        backend.terminate()
        backend.wait()
    with open(out) as f:
        result = json.load(f)
    os.unlink(out)

    def ttfb(d: dict[str, Any]) -> float:
        return round(statistics.median(b - a for a, b in zip(d["sent"], d["first"])) * 1e6, 1)

    def mean(d: dict[str, Any]) -> float:
        return round(statistics.mean(sorted(b - a for a, b in zip(d["sent"], d["first"]))[5:-5]) * 1e6, 1)

    result["TTFB p50 us: direct before, proxy, direct after"] = [ttfb(direct), ttfb(summary), ttfb(direct2)]
    result["TTFB trimmed mean us: direct before, proxy, direct after"] = [mean(direct), mean(summary), mean(direct2)]
    result["bad answers"] = summary["bad"]
    marks = result.pop("absolute", None)
    if marks is not None and len(marks) == len(summary["sent"]):
        rows = list(zip(summary["sent"], summary["first"], marks))[5:]
        ns = 1e-9

        def med(f: Callable[[float, float, dict[str, int]], float]) -> tuple[float, float]:
            values = sorted(f(*r) for r in rows)
            return (round(statistics.median(values) * 1e6, 1),
                    round(statistics.mean(values[5:-5]) * 1e6, 1))

        result["the client's wait, us (median, trimmed mean per step)"] = {
            "client send -> proxy reads it": med(lambda t0, t1, m: m["read"] * ns - t0),
            "proxy: read -> request sent upstream": med(lambda t0, t1, m: (m["sent"] - m["read"]) * ns),
            "sent upstream -> first chunk read (backend, its 5 ms, two hops)": med(
                lambda t0, t1, m: (m["chunk"] - m["sent"]) * ns),
            "proxy: first chunk read -> first line sent": med(
                lambda t0, t1, m: (m["firstLine"] - m["chunk"]) * ns),
            "first line sent -> client reads it": med(lambda t0, t1, m: t1 - m["firstLine"] * ns),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
