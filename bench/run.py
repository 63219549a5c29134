"""
Run every benchmark scenario against the backend directly, the proxy and the
Python peers, side by side in one invocation, and write the numbers as JSON.

Layout (2 cores): the proxy (and each peer) is pinned to core 0 with
C{taskset}; the lean backend and this load generator share core 1.  Every
scenario measures the backend directly first, so results are ratios that
survive a noisy machine.

    bench/.venvs/bench/bin/python bench/run.py --out bench/out/run.json

See C{bench/README.md} for the venvs and the options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loadgen  # noqa: E402

VENVS = os.path.join(HERE, ".venvs")
PROXY_CORE = "0"
BENCH_CORE = "1"


_PORTS = os.environ.get("BENCH_PORTS")
"""C{LOW-HIGH}: listen only on these ports (a port the kernel picks is in
its ephemeral range, which the load generator's own connections use too)."""
_tried = 0


def freePort() -> int:
    global _tried
    if _PORTS:
        low, high = (int(p) for p in _PORTS.split("-"))
        for _ in range(high - low + 1):
            port = low + _tried % (high - low + 1)
            _tried += 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
        raise RuntimeError(f"no free port in BENCH_PORTS={_PORTS}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def waitPort(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


@dataclass
class Server:
    """One process under test (or the backend)."""

    name: str
    argv: list[str]
    port: int
    core: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    logPath: str = ""
    note: str = ""

    def start(self, logDir: str) -> None:
        self.logPath = os.path.join(logDir, f"{self.name}.log")
        env = {**os.environ, **self.env}
        with open(self.logPath, "wb") as log:
            self.proc = subprocess.Popen(
                ["taskset", "-c", self.core, *self.argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=logDir, start_new_session=True,
            )
        try:
            waitPort(self.port, self.proc)
        except RuntimeError as e:
            self.stop()
            with open(self.logPath, "rb") as f:
                tail = f.read()[-2000:].decode("utf-8", "replace")
            raise RuntimeError(f"{self.name}: {e}\n{tail}") from None

    @property
    def pids(self) -> list[int]:
        """The server process and its children (workers)."""
        if self.proc is None:
            return []
        pids = [self.proc.pid]
        try:
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
            pids += [int(p) for p in out.stdout.split()]
        except OSError:
            pass
        return pids

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


# ---------------------------------------------------------------------------
# Requests per target kind


def chatBody(model: str, chunks: int, stream: bool = True) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}],
            "stream": stream, "options": {"num_predict": chunks}}


def openaiBody(model: str, chunks: int, stream: bool = True) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}],
            "stream": stream, "max_tokens": chunks}


def specFor(kind: str, route: str, port: int, chunks: int, model: str) -> loadgen.Spec | None:
    """
    The request and check for a scenario route on a target kind, or C{None}
    when the target does not have that route.

    kinds: C{direct} (the OpenAI backend), C{ours} (this proxy), C{k0in}
    (the Go peer, checked as exactly as ours), C{peer-chat} (an Ollama-API
    peer with /api/chat), C{peer-v1} (a peer with only /api/tags and
    /v1/*), C{floor} (a bare twisted.web resource: /api/tags only),
    C{relayfloor} (L{bench.relayfloor}: C{/api/chat} only, checked exactly).
    """
    if kind == "relayfloor" and route not in ("stream", "nonstream"):
        return None
    if kind == "floor":
        if route != "tags":
            return None
        return loadgen.Spec(route, port, loadgen.buildRequest("GET", "/api/tags"), lambda b: loadgen.verifyJSON(b, "models"))
    exact = kind in ("ours", "direct", "k0in", "relayfloor")
    sse = lambda b: loadgen.verifySSE(b, chunks, True)  # noqa: E731
    if route == "stream":
        if kind == "direct":
            return loadgen.Spec(route, port, loadgen.buildRequest("POST", "/v1/chat/completions", openaiBody(model, chunks)), sse)
        if kind == "peer-v1":
            return None
        return loadgen.Spec(route, port, loadgen.buildRequest("POST", "/api/chat", chatBody(model, chunks)),
                            lambda b: loadgen.verifyNDJSON(b, chunks, exact))
    if route == "nonstream":
        if kind == "direct":
            return loadgen.Spec(route, port, loadgen.buildRequest("POST", "/v1/chat/completions", openaiBody(model, chunks, False)),
                                lambda b: loadgen.verifyJSON(b, "choices"))
        if kind == "peer-v1":
            return None
        return loadgen.Spec(route, port, loadgen.buildRequest("POST", "/api/chat", chatBody(model, chunks, False)),
                            lambda b: loadgen.verifyJSON(b, "message"))
    if route == "tags":
        if kind == "direct":
            return loadgen.Spec(route, port, loadgen.buildRequest("GET", "/v1/models"), lambda b: loadgen.verifyJSON(b, "data"))
        return loadgen.Spec(route, port, loadgen.buildRequest("GET", "/api/tags"), lambda b: loadgen.verifyJSON(b, "models"))
    if route == "passthrough":
        return loadgen.Spec(route, port, loadgen.buildRequest("POST", "/v1/chat/completions", openaiBody(model, chunks)), sse)
    if route == "gemini":
        if kind != "ours":
            return None
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "generationConfig": {"maxOutputTokens": chunks}}
        return loadgen.Spec(route, port, loadgen.buildRequest(
            "POST", f"/v1beta/models/{model}:streamGenerateContent?alt=sse", body),
            lambda b: loadgen.verifyGeminiSSE(b, chunks))
    if route in ("anthropic", "responses"):
        # The agent dialects exist only in this proxy.
        if kind != "ours":
            return None
        if route == "anthropic":
            body = {"model": model, "max_tokens": chunks, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}
            return loadgen.Spec(route, port, loadgen.buildRequest("POST", "/v1/messages", body),
                                lambda b: loadgen.verifyNamedSSE(b, b"content_block_delta", b"message_stop", chunks))
        body = {"model": model, "max_output_tokens": chunks, "stream": True, "input": "hi"}
        return loadgen.Spec(route, port, loadgen.buildRequest("POST", "/v1/responses", body),
                            lambda b: loadgen.verifyNamedSSE(b, b"response.output_text.delta", b"response.completed", chunks))
    raise ValueError(route)


@dataclass
class Scenario:
    name: str
    route: str
    concurrency: int
    chunks: int = 100
    model: str = "fake-model"
    duration: float = 4.0
    perConn: int | None = None
    timeout: float = 60.0
    rssInterval: float = 0.05
    burst: bool = False


def scenarios(duration: float, quick: bool) -> list[Scenario]:
    out = [Scenario(f"stream c={c}", "stream", c, duration=duration)
           for c in ((1, 16, 128) if quick else (1, 4, 16, 64, 128))]
    out += [
        Scenario("TTFB c=1 (20 chunks, 5 ms apart)", "stream", 1, chunks=20, model="slow-5", duration=duration),
        *(Scenario(f"non-stream c={c}", "nonstream", c, duration=duration) for c in (1, 16, 128)),
        Scenario("tags c=16", "tags", 16, duration=duration),
        Scenario("passthrough stream c=16", "passthrough", 16, duration=duration),
        Scenario("Anthropic /v1/messages stream c=16", "anthropic", 16, duration=duration),
        Scenario("Responses /v1/responses stream c=16", "responses", 16, duration=duration),
        Scenario("Gemini /v1beta streamGenerateContent c=16", "gemini", 16, duration=duration),
        Scenario("1000 long streams (200 x 20 ms)", "stream", 1000, chunks=200, model="slow-20",
                 perConn=1, timeout=120.0, rssInterval=0.1),
        # All 1,000 connect in the same instant (the scenario above connects
        # them one by one first): the listen backlog must hold the burst.
        Scenario("1000 connections at once (burst, 200 x 20 ms)", "stream", 1000, chunks=200,
                 model="slow-20", perConn=1, timeout=60.0, rssInterval=0.1, burst=True),
        Scenario("one 20,000-chunk stream (x3)", "stream", 1, chunks=20_000, perConn=3,
                 timeout=120.0, rssInterval=0.02),
    ]
    return out


# ---------------------------------------------------------------------------
# Targets


def proxyServer(name: str, python: str, backendPort: int, extra: list[str], env: dict[str, str] | None = None,
                core: str = PROXY_CORE) -> Server:
    port = freePort()
    twistd = [python, "-c", "from twisted.scripts.twistd import run; run()"]
    argv = [*twistd, "-n", "--pidfile=", "--logfile=proxy.log", "ollama-proxy",
            "--target", f"http://127.0.0.1:{backendPort}", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--fallback", "", "--pool-size", "1024", *extra]
    return Server(name, argv, port, core, env or {})


PEER_OOP = """
import sys, types, os, site
# The wheel installs its modules at the top level but imports them as
# src.*; alias the package so its own entry point's imports resolve.
sp = [p for p in site.getsitepackages() if p.endswith("site-packages")][0]
m = types.ModuleType("src"); m.__path__ = [sp]; sys.modules["src"] = m
import uvicorn
uvicorn.run("src.main:app", host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

PEER_OAI = """
import sys
port = int(sys.argv[1]); sys.argv[1:] = []
from oai2ollama import app
import uvicorn
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def peerServers(backendPort: int) -> list[tuple[Server, str]]:
    out = []
    py = os.path.join(VENVS, "ollama-openai-proxy", "bin", "python")
    if os.path.exists(py):
        port = freePort()
        out.append((Server("ollama-openai-proxy", [py, "-c", PEER_OOP, str(port)], port, PROXY_CORE, {
            "OPENAI_API_BASE_URL": f"http://127.0.0.1:{backendPort}/v1", "OPENAI_API_KEY": "sk-bench-0000",
            "LOG_LEVEL": "WARNING", "PROXY_PORT": str(port)}), "peer-chat"))
    py = os.path.join(VENVS, "oai2ollama", "bin", "python")
    if os.path.exists(py):
        port = freePort()
        out.append((Server("oai2ollama", [py, "-c", PEER_OAI, str(port)], port, PROXY_CORE, {
            "OPENAI_BASE_URL": f"http://127.0.0.1:{backendPort}/v1", "OPENAI_API_KEY": "sk-bench-0000"}), "peer-v1"))
    return out


def k0inServer(binary: str, backendPort: int, models: set[str], logDir: str) -> Server:
    """
    The Go peer K0IN/openai-ollama-proxy, pinned like our proxy (so Go runs
    with GOMAXPROCS=1).  It knows only the models in its TOML file (no
    discovery), so every model a scenario sends is listed; its C{/api/tags}
    is answered from that file and never reaches the backend.  It writes an
    access-log line per request to stderr (no switch), into its log file.
    """
    port = freePort()
    config = os.path.join(logDir, "k0in.toml")
    with open(config, "w") as f:
        f.write(f'listen_addr = "127.0.0.1:{port}"\n[[upstream]]\nurl = "http://127.0.0.1:{backendPort}"\n'
                'api_key = "sk-bench"\n')
        for model in sorted(models):
            f.write(f'[[upstream.models]]\nupstream = "{model}"\nlocal = "{model}"\n')
    return Server("K0IN", [os.path.abspath(binary)], port, PROXY_CORE, {"CONFIG_FILE": config})


def relayFloorServer(python: str, backendPort: int, build: str, env: dict[str, str]) -> Server:
    """
    The design card's floor for a chat relay (L{bench.relayfloor}), pinned
    like the proxy: twisted.web and treq with the least translation, in the
    C{fast} build (the proxy's own server parser and agent) or C{stock}.
    """
    port = freePort()
    return Server(f"relay floor ({build})", [python, os.path.join(HERE, "relayfloor.py"), str(port),
                                             f"http://127.0.0.1:{backendPort}", build],
                  port, PROXY_CORE, env)


def floorServer(python: str) -> Server:
    """
    A bare twisted.web resource serving a fixed model list: the framework's
    floor for the warm-tags scenario.
    """
    port = freePort()
    return Server("twisted.web floor", [python, os.path.join(HERE, "floor.py"), str(port)], port, PROXY_CORE)


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memGB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadgenPython": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
    }


async def runScenario(sc: Scenario, kind: str, server: Server, say: Callable[[str], None]) -> dict[str, Any] | None:
    spec = specFor(kind, sc.route, server.port, sc.chunks, sc.model)
    if spec is None:
        return None
    watch = server.pids if kind != "direct" else server.pids
    try:
        result = await asyncio.wait_for(
            loadgen.run(spec, sc.concurrency, sc.duration, watchPids=watch, timeout=sc.timeout,
                        perConn=sc.perConn, rssInterval=sc.rssInterval, burst=sc.burst),
            sc.duration + sc.timeout + 60,
        )
        summary = result.summary()
        if sc.chunks >= 10_000:
            summary["rssSamplesMB"] = [(round(t, 2), round(kb / 1024, 1)) for t, kb in result.rssSamples[:: max(1, len(result.rssSamples) // 40)]]
    except Exception as e:  # noqa: BLE001 - a failing peer is a result
        summary = {"failed": f"{type(e).__name__}: {e}"}
    say(f"  {server.name:22} {json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in summary.items() if k not in ('rssSamplesMB',)})}")
    return summary


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {int(BENCH_CORE)})
    logDir = tempfile.mkdtemp(prefix="bench-")
    out: dict[str, Any] = {"machine": machine(), "targets": {}, "results": {}, "logDir": logDir}

    def say(text: str) -> None:
        print(text, flush=True)

    backendPort = freePort()
    backendPy = sys.executable
    backend = Server("direct", [backendPy, os.path.join(HERE, "leanbackend.py"), "--port", str(backendPort)],
                     backendPort, BENCH_CORE)
    targets: list[tuple[Server, str]] = [(backend, "direct")]
    proxyPython = os.path.abspath(args.proxy_python)
    if args.pypy:
        args.pypy = os.path.abspath(args.pypy)
    perProxy = {n: a.split() for n, _, a in (spec.partition("=") for spec in args.proxy_args)}
    for spec in args.proxy or ["proxy="]:
        name, _, pythonpath = spec.partition("=")
        extra = [*args.proxy_arg, *perProxy.get(name, [])]
        if pythonpath.startswith("@"):
            # Another venv's interpreter, with that build installed: needed
            # when the builds' twistd dropins name different modules.
            targets.append((proxyServer(name, os.path.abspath(pythonpath[1:]), backendPort,
                                        extra), "ours"))
            continue
        env = {"PYTHONPATH": pythonpath} if pythonpath else {}
        targets.append((proxyServer(name, proxyPython, backendPort, extra, env), "ours"))
    if args.workers:
        targets.append((proxyServer(f"proxy --workers {args.workers}", proxyPython, backendPort,
                                    [*args.proxy_arg, "--workers", str(args.workers)], core="0-1"), "ours"))
    if args.pypy:
        # PyPy 7.3 (Debian) is Python 3.9: orjson cannot build for it, so a
        # stdlib-json stand-in is put first on the path; the source tree is
        # used directly (the package itself declares Python >= 3.10).
        repo = os.path.dirname(HERE)
        path = os.pathsep.join([os.path.join(HERE, "pypy_shim"), os.path.join(repo, "src"), repo])
        targets.append((proxyServer("proxy (PyPy)", args.pypy, backendPort, args.proxy_arg, {"PYTHONPATH": path}), "ours"))
    if args.k0in and os.path.exists(args.k0in):
        models = {sc.model for sc in scenarios(args.duration, args.quick)}
        targets.append((k0inServer(args.k0in, backendPort, models, logDir), "k0in"))
    else:
        why = f"{args.k0in} does not exist" if args.k0in else "no --k0in PATH given"
        out["targets"]["K0IN"] = {"kind": "k0in", "failed": f"skipped: {why}"}
        say(f"!! K0IN skipped: {why} (build it as /work/shared/reference/peer-bench.md says)")
    if not args.no_floor:
        targets.append((floorServer(proxyPython), "floor"))
    for build in args.relay_floor:
        # The floor imports the proxy's agent and channel from the last
        # --proxy source tree (or the installed package).
        last = (args.proxy or ["proxy="])[-1].partition("=")[2]
        env = {"PYTHONPATH": last} if last and not last.startswith("@") else {}
        targets.append((relayFloorServer(proxyPython, backendPort, build, env), "relayfloor"))
    if not args.no_peers:
        targets += peerServers(backendPort)
    started: list[Server] = []
    try:
        for server, kind in targets:
            try:
                server.start(logDir)
                started.append(server)
                out["targets"][server.name] = {"kind": kind, "argv": server.argv, "env": {k: v for k, v in server.env.items() if "KEY" not in k}}
            except RuntimeError as e:
                out["targets"][server.name] = {"kind": kind, "failed": str(e)}
                say(f"!! {server.name} did not start: {e}")
        only = set(args.only or [])
        for sc in scenarios(args.duration, args.quick):
            if only and not any(o in sc.name for o in only):
                continue
            say(f"== {sc.name}")
            results = out["results"].setdefault(sc.name, {"concurrency": sc.concurrency, "chunks": sc.chunks, "route": sc.route})
            for server, kind in targets:
                if server not in started:
                    continue
                summary = await runScenario(sc, kind, server, say)
                if summary is not None:
                    results[server.name] = summary
                await asyncio.sleep(0.5)
    finally:
        for server in reversed(started):
            server.stop()
    out["machine"]["loadavgAfter"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    say(f"wrote {args.out} (server logs in {logDir})")
    if not args.keep_logs:
        shutil.rmtree(logDir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(HERE, "out", "run.json"))
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per throughput scenario")
    parser.add_argument("--quick", action="store_true", help="stream at c=1,16,128 only")
    parser.add_argument("--only", action="append", help="run scenarios whose name contains this")
    parser.add_argument("--proxy-python", default=os.path.join(os.path.dirname(HERE), "..", "venv-i7", "bin", "python"),
                        help="python of the venv with ollama-proxy installed")
    parser.add_argument("--proxy", action="append",
                        help="NAME=PYTHONPATH or NAME=@PYTHON (a venv with that build installed): a proxy "
                             "build to measure (repeatable); default: the installed one")
    parser.add_argument("--proxy-arg", action="append", default=[], help="extra argument for every proxy")
    parser.add_argument("--proxy-args", action="append", default=[],
                        help='NAME=ARGS: extra arguments for the --proxy named NAME only, e.g. '
                             '"twisted=--http-parser twisted"')
    parser.add_argument("--workers", type=int, default=0, help="also measure --workers N (not pinned)")
    parser.add_argument("--pypy", help="a PyPy python with ollama-proxy installed, measured as another target")
    parser.add_argument("--no-peers", action="store_true", help="no Python peers (K0IN is --k0in)")
    parser.add_argument("--k0in", default=os.environ.get("K0IN_BIN"),
                        help="path to a built K0IN/openai-ollama-proxy binary (or $K0IN_BIN); skipped without")
    parser.add_argument("--no-floor", action="store_true", help="without the bare twisted.web floor")
    parser.add_argument("--relay-floor", action="append", default=[], choices=("fast", "stock"),
                        help="also measure bench/relayfloor.py in this build (chat routes only)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args))
