#!/usr/bin/env python3
"""
Soak test for ollama-proxy (not a unit test): many mixed requests, including
clients that hang up mid-stream, against the built-in fake backend.

By default it starts C{twistd -n fake-openai} and C{twistd -n ollama-proxy}
on free loopback ports, runs the requests with bounded concurrency and a
bounded total time, and reports:

  - counts per kind of request, and every unexpected status or garbled body;
  - the proxy's RSS after a warm-up and at the end;
  - established proxy->backend connections at the end (leaked upstream
    connections from aborted streams would show up here);
  - latency percentiles.

Usage::

    python bench/soak.py                   # 10,000 requests, 64 at a time
    python bench/soak.py -n 2000 -c 16
    python bench/soak.py --proxy http://127.0.0.1:11434 --backend-port 4000
                                           # against running processes

Exit status 0 only if every request got the expected answer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MESSAGES = [{"role": "user", "content": "hello"}]
KINDS: list[tuple[str, float]] = [
    ("chat-stream", 0.35),
    ("chat", 0.15),
    ("generate-stream", 0.10),
    ("tags", 0.10),
    ("abort-stream", 0.15),
    ("bad-input", 0.05),
    ("openai-stream", 0.05),
    ("version", 0.05),
]


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def twistd(plugin: str, args: list[str], port: int, workdir: str) -> subprocess.Popen[bytes]:
    """
    Start C{twistd -n plugin args} and wait (at most 30 s) until it listens.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [script, "-n", "--pidfile=", f"--logfile={os.path.join(workdir, plugin + '.log')}", plugin, *args],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{plugin} exited early; see {workdir}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{plugin} did not start listening on {port}")


def rssKiB(pid: int) -> int:
    """
    @return: the resident set size of C{pid} in KiB (Linux).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def establishedTo(port: int) -> int:
    """
    @return: ESTABLISHED IPv4 connections whose remote port is C{port}.
    """
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
                count += 1
    return count


class Soak:
    """
    Runs the requests and collects the outcomes.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.lock = threading.Lock()

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def post(self, path: str, body: Any) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = self.connection()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection.request("POST", path, data, {"Content-Type": "application/json"})
        return connection, connection.getresponse()

    def get(self, path: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = self.connection()
        connection.request("GET", path)
        return connection, connection.getresponse()

    def expectNDJSON(self, response: http.client.HTTPResponse, field: str) -> None:
        if response.status != 200:
            raise AssertionError(f"status {response.status}: {response.read()[:200]!r}")
        lines = [json.loads(line) for line in response.read().splitlines()]
        if not lines or lines[-1].get("done") is not True:
            raise AssertionError(f"stream did not end with done:true: {lines[-1:]}")
        if any("error" in line for line in lines):
            raise AssertionError(f"error line in stream: {lines}")
        text = "".join(
            (line.get("message") or {}).get("content", "") if field == "message" else line.get("response", "")
            for line in lines
        )
        if not text.startswith("Hello!"):
            raise AssertionError(f"garbled text: {text[:80]!r}")

    def one(self, kind: str) -> None:
        started = time.monotonic()
        connection = None
        try:
            if kind == "chat-stream":
                connection, response = self.post("/api/chat", {"model": "fake-model:proxy", "messages": MESSAGES})
                self.expectNDJSON(response, "message")
            elif kind == "generate-stream":
                connection, response = self.post("/api/generate", {"model": "fake-model", "prompt": "hi"})
                self.expectNDJSON(response, "response")
            elif kind == "chat":
                connection, response = self.post(
                    "/api/chat", {"model": "fake-model", "messages": MESSAGES, "stream": False}
                )
                body = json.loads(response.read())
                if response.status != 200 or not body["message"]["content"].startswith("Hello!"):
                    raise AssertionError(f"status {response.status}: {body}")
            elif kind == "tags":
                connection, response = self.get("/api/tags")
                body = json.loads(response.read())
                if response.status != 200 or "fake-model:proxy" not in [m["name"] for m in body["models"]]:
                    raise AssertionError(f"status {response.status}: {body}")
            elif kind == "version":
                connection, response = self.get("/api/version")
                body = json.loads(response.read())
                if response.status != 200 or "version" not in body:
                    raise AssertionError(f"status {response.status}: {body}")
            elif kind == "bad-input":
                connection, response = self.post(
                    "/api/chat", random.choice([b"{", b"[]", b'{"model": 1}', b'{"model":"m","messages":"x"}'])
                )
                body = json.loads(response.read())
                if response.status != 400 or not isinstance(body.get("error"), str):
                    raise AssertionError(f"status {response.status}: {body}")
            elif kind == "openai-stream":
                connection, response = self.post(
                    "/v1/chat/completions", {"model": "fake-model", "messages": MESSAGES, "stream": True}
                )
                data = response.read()
                if response.status != 200 or not data.rstrip().endswith(b"data: [DONE]"):
                    raise AssertionError(f"status {response.status}: {data[-200:]!r}")
            elif kind == "abort-stream":
                connection, response = self.post("/api/chat", {"model": "fake-model", "messages": MESSAGES})
                first = json.loads(response.readline())
                if response.status != 200 or first.get("done") is not False:
                    raise AssertionError(f"status {response.status}: {first}")
                # Hang up mid-stream.
                connection.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            else:
                raise AssertionError(kind)
        except Exception as e:
            with self.lock:
                self.failures.append(f"{kind}: {type(e).__name__}: {e}")
        finally:
            if connection is not None:
                connection.close()
        with self.lock:
            self.counts[kind] += 1
            self.latencies.append(time.monotonic() - started)

    def run(self, kinds: list[str], concurrency: int, deadline: float) -> bool:
        """
        @return: whether every request ran before the deadline.
        """
        stop = time.monotonic() + deadline
        finished = True

        def task(kind: str) -> None:
            nonlocal finished
            if time.monotonic() > stop:
                finished = False
                return
            self.one(kind)

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(task, kinds))
        return finished


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--requests", type=int, default=10_000)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--max-time", type=float, default=600.0, help="give up after this many seconds")
    parser.add_argument("--delay", type=float, default=0.005, help="fake backend's seconds between chunks")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", help="comma-separated subset of: " + ", ".join(n for n, _ in KINDS))
    parser.add_argument("--proxy", help="use a running proxy at this URL instead of starting one")
    parser.add_argument("--proxy-pid", type=int, help="its pid, for RSS")
    parser.add_argument("--backend-port", type=int, help="the running backend's port, for the leak check")
    args = parser.parse_args(argv)

    random.seed(args.seed)
    processes: list[subprocess.Popen[bytes]] = []
    workdir = tempfile.mkdtemp(prefix="ollama-proxy-soak-")
    if args.proxy:
        host, _, port = args.proxy.rsplit("/", 1)[-1].partition(":")
        proxyPort, proxyPid, backendPort = int(port), args.proxy_pid, args.backend_port
    else:
        host, backendPort, proxyPort = "127.0.0.1", freePort(), freePort()
        processes.append(
            twistd("fake-openai", ["--listen", f"tcp:{backendPort}:interface=127.0.0.1",
                                   "--delay", str(args.delay)], backendPort, workdir)
        )
        processes.append(
            twistd("ollama-proxy", ["--listen", f"tcp:{proxyPort}:interface=127.0.0.1",
                                    "--target", f"http://127.0.0.1:{backendPort}", "--fallback", ""],
                   proxyPort, workdir)
        )
        proxyPid = processes[-1].pid
    try:
        soak = Soak(host, proxyPort, timeout=30)
        chosen = [(n, w) for n, w in KINDS if not args.kinds or n in args.kinds.split(",")]
        names = [name for name, _ in chosen]
        weights = [weight for _, weight in chosen]
        warmup = random.choices(names, weights, k=min(500, args.requests))
        soak.run(warmup, args.concurrency, args.max_time)
        rssBefore = rssKiB(proxyPid) if proxyPid else -1
        soak = Soak(host, proxyPort, timeout=30)
        kinds = random.choices(names, weights, k=args.requests)
        started = time.monotonic()
        complete = soak.run(kinds, args.concurrency, args.max_time)
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        rssAfter = rssKiB(proxyPid) if proxyPid else -1
        upstream = establishedTo(backendPort) if backendPort else -1
        print(f"requests: {sum(soak.counts.values())} of {args.requests} in {elapsed:.1f} s "
              f"({sum(soak.counts.values()) / elapsed:.0f}/s), concurrency {args.concurrency}, "
              f"backend delay {args.delay} s/chunk")
        for name in names:
            print(f"  {name:16} {soak.counts[name]}")
        print(f"latency: p50 {percentile(soak.latencies, 0.5) * 1000:.0f} ms, "
              f"p99 {percentile(soak.latencies, 0.99) * 1000:.0f} ms, "
              f"max {max(soak.latencies, default=0) * 1000:.0f} ms")
        print(f"proxy RSS: {rssBefore / 1024:.1f} MiB after warm-up, {rssAfter / 1024:.1f} MiB after the run "
              f"({(rssAfter - rssBefore) / 1024:+.1f} MiB)")
        print(f"proxy->backend connections established 1 s after the run: {upstream}")
        print(f"failures: {len(soak.failures)}")
        for failure in soak.failures[:20]:
            print("  " + failure)
        return 0 if complete and not soak.failures else 1
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
