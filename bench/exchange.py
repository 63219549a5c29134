"""
One non-streamed C{/api/chat} exchange, the whole proxy in one process, no
sockets: the proxy's site and resource tree (C{FastChannel}) on an
in-memory client connection, its production upstream client (treq over
C{FastAgent}, C{makeClient}) on in-memory upstream connections that answer
as the bench backend does (head and JSON body in one read).  CPU time per
request (C{time.process_time}: the proxy's own work, the in-memory ends
cost next to nothing) and function calls per request (C{sys.setprofile},
steady on a shared machine), for A/B between source trees:

    PYTHONPATH=TREE/src python bench/exchange.py [--requests 3000] [--rounds 7] [--key]

C{--key} configures a backend key (the redaction then has a secret to look
for, as in most deployments; the bench's socket runs have none).
C{--metrics} turns the Prometheus metrics on, as the service (and so the
socket runs) has them by default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from memory import Endpoints  # noqa: E402
from ollama_proxy.protocol import codec  # noqa: E402
from ollama_proxy.testing.harness import contextFor  # noqa: E402
from ollama_proxy.upstream import pool as poolModule  # noqa: E402
from ollama_proxy.upstream.backend import Backend  # noqa: E402
from ollama_proxy.web.site import makeSite  # noqa: E402
from ollama_proxy.web.tree import buildRoot  # noqa: E402

MODELS = codec.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]})
CHAT = (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + b"tok " * 60
        + b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":60,'
        b'"total_tokens":61}}')
_BODY = b'{"model":"m","stream":false,"messages":[{"role":"user","content":"' + b"x" * 132 + b'"}]}'
POST = (
    b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:11434\r\nAccept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
    b"User-Agent: ollama-python/0.5.1 (x86_64 linux) Python/3.11.7\r\n"
    b"Content-Length: %d\r\n\r\n" % len(_BODY) + _BODY
)


def answer(body: bytes, contentType: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + contentType + b"\r\nDate: Sun, 06 Dec 2026 12:00:00 GMT\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


class Bench:
    def __init__(self, key: bool, metrics: bool = False) -> None:
        self.endpoints = Endpoints()
        fast = poolModule.KeepAlivePool(reactor)
        fast.maxPersistentPerHost = 1024
        http = poolModule.clientFor(poolModule.FastAgent(reactor, self.endpoints, fast))
        backend = Backend(http, "http://127.0.0.1:4000", reactor,
                          apiKey="sk-bench-key-0123456789" if key else None)
        extra: dict[str, Any] = {}
        if metrics:
            from ollama_proxy.web.metrics import Metrics
            from ollama_proxy.web.observe import watchUpstream

            extra["metrics"] = Metrics()
            watchUpstream(extra["metrics"], [backend])
        site = makeSite(buildRoot(contextFor(backend, clock=reactor, **extra)), reactor)
        self.server = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.client = StringTransport()
        self.server.makeConnection(self.client)

    def serve(self) -> None:
        """
        Answer every request the proxy wrote upstream, run what is due.
        """
        for _ in range(10):
            busy = False
            for upstream in self.endpoints.upstreams:
                written = upstream.value()
                if written:
                    upstream.clear()
                    busy = True
                    body = MODELS if written.startswith(b"GET /v1/models") else CHAT
                    upstream.protocol.dataReceived(answer(body))
            reactor.runUntilCurrent()  # type: ignore[attr-defined]
            if not busy:
                return

    def one(self) -> bytes:
        self.server.dataReceived(POST)
        self.serve()
        out = self.client.value()
        self.client.clear()
        return out

    def run(self, requests: int) -> float:
        started = time.process_time()
        for _ in range(requests):
            self.one()
        return (time.process_time() - started) / requests


def calls(bench: Bench, requests: int = 500) -> float:
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        bench.run(requests)
    finally:
        sys.setprofile(None)
    return count / requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--key", action="store_true")
    parser.add_argument("--metrics", action="store_true",
                        help="the Prometheus metrics on, as the service runs by default")
    args = parser.parse_args()
    bench = Bench(args.key, args.metrics)
    first = bench.one()
    assert first.startswith(b"HTTP/1.1 200 OK"), first[:300]
    assert b'"done":true' in first and b"tok tok" in first, first
    bench.run(500)  # warm
    times = [bench.run(args.requests) * 1e6 for _ in range(args.rounds)]
    print(f"CPU us/request: median {statistics.median(times):.1f}, best {min(times):.1f} "
          f"(rounds: {', '.join(f'{t:.0f}' for t in times)}); calls/request {calls(bench):.0f}")


if __name__ == "__main__":
    main()
