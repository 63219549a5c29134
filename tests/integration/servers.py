"""
Real processes on real sockets, for the few end-to-end tests: start
C{twistd -n fake-openai} and C{twistd -n ollama-proxy} on free loopback
ports, wait until they accept connections, stop them afterwards.

Everything listens on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

import zstandard

from tests.tempdirs import makeTempDir, removeTempDir

PARSER_ENV = "OLLAMA_PROXY_TEST_HTTP_PARSER"
"""Set to C{twisted} (or C{httptools}) to run every proxy these tests start
with that C{--http-parser}: the real-socket modules run once per parser."""


def parserArgs() -> list[str]:
    """
    @return: the C{--http-parser} arguments L{PARSER_ENV} asks for.
    """
    parser = os.environ.get(PARSER_ENV)
    return ["--http-parser", parser] if parser else []


def freePort() -> int:
    """
    @return: a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def twistdCommand() -> list[str]:
    """
    @return: the argv prefix that runs this environment's twistd.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class Twistd:
    """
    One C{twistd -n} child process.

    @ivar port: the TCP port it listens on.
    @ivar logPath: where its log goes.
    """

    _finalLog: str | None = None

    def __init__(self, plugin: str, args: Sequence[str], port: int) -> None:
        if plugin == "ollama-proxy" and not any(a.startswith("--drain-delay") for a in args):
            # Tests stop the proxy with SIGTERM: no balancer to wait for.
            args = [*args, "--drain-delay", "0"]
        if plugin == "ollama-proxy" and "--http-parser" not in args:
            args = [*args, *parserArgs()]
        self.port = port
        self.dir = makeTempDir()
        self.logPath = os.path.join(self.dir, "twistd.log")
        self.process = subprocess.Popen(
            [*twistdCommand(), "-n", "--pidfile=", f"--logfile={self.logPath}", plugin, *args],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._waitForPort()

    def _waitForPort(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log()
                removeTempDir(self.dir)
                raise RuntimeError(f"twistd exited early:\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        log = self.log()
        self.stop()
        raise RuntimeError(f"twistd did not listen on {self.port}:\n{log}")

    def log(self) -> str:
        """
        @return: the process's log so far (all of it once stopped).
        """
        if self._finalLog is not None:
            return self._finalLog
        try:
            with open(self.logPath, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """
        SIGTERM, then wait (bounded), then SIGKILL; then remove its
        directory (log included).
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        # The log stays readable (L{log}) after its directory is gone.
        self._finalLog = self.log()
        removeTempDir(self.dir)


class Stack:
    """
    The fake backend plus the proxy in front of it.

    @ivar backend: the C{fake-openai} process.
    @ivar proxy: the C{ollama-proxy} process.
    @ivar url: the proxy's base URL.
    """

    def __init__(self, proxyArgs: Sequence[str] = (), backendArgs: Sequence[str] = ()) -> None:
        backendPort = freePort()
        self.backend = Twistd(
            "fake-openai", ["--listen", f"tcp:{backendPort}:interface=127.0.0.1", *backendArgs],
            backendPort,
        )
        self.backendURL = f"http://127.0.0.1:{backendPort}"
        proxyPort = freePort()
        try:
            self.proxy = Twistd(
                "ollama-proxy",
                ["--listen", f"tcp:{proxyPort}:interface=127.0.0.1", "--target",
                 self.backendURL, "--fallback", "", *proxyArgs],
                proxyPort,
            )
        except Exception:
            self.backend.stop()
            raise
        self.url = f"http://127.0.0.1:{proxyPort}"

    def stop(self) -> None:
        """
        Stop both processes.
        """
        self.proxy.stop()
        self.backend.stop()


class DemoStack:
    """
    The proxy as the README starts it for a try-out: one C{twistd -n
    ollama-proxy --demo} process, its fake backend inside it (on a free
    C{--demo-port}).

    @ivar proxy: the process.
    @ivar url: the proxy's base URL.
    @ivar backendURL: the demo backend's base URL.
    """

    def __init__(self, proxyArgs: Sequence[str] = ()) -> None:
        backendPort, proxyPort = freePort(), freePort()
        self.proxy = Twistd(
            "ollama-proxy",
            ["--demo", "--demo-port", str(backendPort),
             "--listen", f"tcp:{proxyPort}:interface=127.0.0.1", "--fallback", "", *proxyArgs],
            proxyPort,
        )
        self.url = f"http://127.0.0.1:{proxyPort}"
        self.backendURL = f"http://127.0.0.1:{backendPort}"

    def stop(self) -> None:
        """
        Stop the process.
        """
        self.proxy.stop()


_demo: list[DemoStack] = []


def sharedDemo() -> DemoStack:
    """
    One L{DemoStack} for every test that asks, stopped when the test
    process exits.
    """
    if not _demo:
        _demo.append(DemoStack())
        atexit.register(_demo[0].stop)
    return _demo[0]


_shared: dict[tuple[tuple[str, ...], tuple[str, ...]], Stack] = {}


def sharedStack(proxyArgs: Sequence[str] = (), backendArgs: Sequence[str] = ()) -> Stack:
    """
    A L{Stack} shared by every test that asks for the same arguments, started
    on first use and stopped when the test process exits (trial has no
    class-level fixtures for synchronous tests).

    @return: the running stack.
    """
    key = (tuple(proxyArgs), tuple(backendArgs))
    if key not in _shared:
        stack = Stack(proxyArgs, backendArgs)
        _shared[key] = stack
        atexit.register(stack.stop)
    return _shared[key]


def sockets(pid: int, port: int, state: str) -> int:
    """
    How many of process C{pid}'s sockets have local TCP port C{port} in
    C{state} (as C{/proc/net/tcp} spells it: C{0A} LISTEN, C{01}
    ESTABLISHED).
    """
    hexPort = f":{port:04X}"
    inodes = set()
    with open("/proc/net/tcp", encoding="ascii") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(hexPort) and fields[3] == state:
                inodes.add(f"socket:[{fields[9]}]")
    try:
        return sum(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def listening(pid: int, port: int) -> bool:
    """
    Whether process C{pid} listens on TCP C{port}: with C{--workers}, a
    worker serves only once this is true.
    """
    return sockets(pid, port, "0A") > 0


def workerPids(parent: int, count: int, port: int, timeout: float = 20.0) -> list[int]:
    """
    Wait (bounded) until C{parent} has C{count} children listening on
    C{port}.

    @return: their pids (fewer if the time ran out).
    """
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
        children = [int(p) for p in out.stdout.split()]
        ready = [pid for pid in children if listening(pid, port)]
        if len(ready) >= count or time.monotonic() > deadline:
            return ready
        time.sleep(0.1)


class _Recorder(BaseHTTPRequestHandler):
    """
    Answers every method on every path with a small JSON body (a model list
    on C{/v1/models}) and records what it was asked.
    """

    protocol_version = "HTTP/1.1"
    server: "RecordingBackend"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.received.append((self.command, self.path))
        if self.path == "/v1/models":
            body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]})
        else:
            body = json.dumps({"ok": True, "path": self.path})
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer


class RecordingBackend(ThreadingHTTPServer):
    """
    A hostile backend on 127.0.0.1 that serves every path (an admin route
    included) and records the method and raw path of each request it
    receives, so a test can assert what never reached it.

    @ivar received: C{(method, path)} in arrival order.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.lock = threading.Lock()
        self.received: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """
        @return: its base URL.
        """
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        """
        Stop serving and close the socket.
        """
        self.shutdown()
        self.server_close()
        self._thread.join(5)


COMPLETION = json.dumps({
    "id": "c", "object": "chat.completion", "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}).encode()


class SlowGateway(BaseHTTPRequestHandler):
    """
    Lists one model at once; holds every POST C{server.hold} seconds
    (reading its body as it comes) before answering a completion.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(json.dumps({"object": "list", "data": [
            {"id": "m", "object": "model", "created": 0, "owned_by": "x"}]}).encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            length -= len(self.rfile.read(min(length, 1 << 20)) or b"x" * length)
        time.sleep(self.server.hold)  # type: ignore[attr-defined]
        self._send(COMPLETION)


def startGateway(hold: float) -> tuple[ThreadingHTTPServer, str]:
    """
    @return: the running slow gateway and its URL (stop it with
        C{shutdown()} and C{server_close()}).
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowGateway)
    server.hold = hold  # type: ignore[attr-defined]
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def bomb(size: int) -> bytes:
    """
    @return: a zstd frame (about 2 KB) that inflates to C{size} bytes of a
        valid C{/v1/messages} body.
    """
    head = b'{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"'
    tail = b'"}]}'
    raw = head + b"a" * (size - len(head) - len(tail)) + tail
    return zstandard.ZstdCompressor(level=19).compress(raw)


def rss(pid: int) -> tuple[int, int]:
    """
    @return: the process's RSS now and its peak (VmHWM), in bytes.
    """
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
