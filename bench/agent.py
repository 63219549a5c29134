"""
The upstream client alone, in one process, no sockets: CPU time and
function calls per request through treq for the two C{--http-parser}
settings of the same run, C{twisted} (Twisted's C{Agent}, its pool and
C{HTTP11ClientProtocol}, with the batching chunked decoder of
C{upstream/compat.py}, as the proxy used it) and C{httptools}
(C{upstream/agent.py}).

Each request goes out on one keep-alive connection to an in-memory
transport that answers as the bench backend does: a non-streamed chat
completion (C{Content-Length}), or a 100-event SSE stream, chunked, one
chunk per event, all in one read (as a fast backend's arrive) and again
spread over 10 reads.  Rounds alternate the settings so that the noise of
a shared machine falls on both; the calls per request (cProfile) are the
steady measure.

    python bench/agent.py [--requests 2000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from typing import Any

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from memory import Endpoints  # noqa: E402
from ollama_proxy.upstream import pool as poolModule  # noqa: E402
from ollama_proxy.upstream.agent import FastAgent, KeepAlivePool  # noqa: E402
from ollama_proxy.upstream.body import readBody  # noqa: E402
from ollama_proxy.upstream.compat import ConnectionPool  # noqa: E402
from ollama_proxy.upstream.backend import ReadyURL  # noqa: E402
from ollama_proxy.upstream.pool import NO_COOKIES, clientFor  # noqa: E402

BODY = (b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],'
        b'"stream":false,"max_tokens":100}')
JSON = (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"fake-model",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + b"tok " * 60
        + b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":100,'
        b'"total_tokens":101}}')
NONSTREAM = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Sun, 06 Dec 2026 "
             b"10:00:00 GMT\r\nServer: lean\r\nContent-Length: %d\r\n\r\n" % len(JSON)) + JSON
EVENT = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"fake-model",'
         b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n')
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nDate: Sun, 06 Dec 2026 "
        b"10:00:00 GMT\r\nServer: lean\r\nTransfer-Encoding: chunked\r\n\r\n")
CHUNKS = [b"%x\r\n%s\r\n" % (len(EVENT), EVENT) for _ in range(100)]
DONE = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


def client(parser: str) -> tuple[Any, Endpoints]:
    endpoints = Endpoints()
    if parser == "httptools":
        fast = KeepAlivePool(reactor)
        fast.maxPersistentPerHost = 1024
        return clientFor(FastAgent(reactor, endpoints, fast)), endpoints
    pool = ConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1024
    pool.retryAutomatically = False
    agent = poolModule.Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    return clientFor(agent), endpoints


URL = ReadyURL.fromText("http://127.0.0.1:9/v1/chat/completions")


def one(http: Any, endpoints: Endpoints, reads: list[bytes]) -> bytes:
    """
    One request and its whole body, synchronously.
    """
    d = http.request("POST", URL, data=BODY, unbuffered=True, cookies=NO_COOKIES,
                     headers={b"Content-Type": [b"application/json"]})
    loop = endpoints.upstreams[-1]
    loop.clear()
    for data in reads:
        loop.protocol.dataReceived(data)
    out: list[Any] = []
    d.addCallback(lambda r: Deferred.fromCoroutine(readBody(r))).addBoth(out.append)
    result = out[0]
    if not isinstance(result, bytes):
        raise RuntimeError(result)
    return result


SHAPES = {
    "non-stream": [NONSTREAM],
    "stream, 1 read": [HEAD + b"".join(CHUNKS) + DONE],
    "stream, 10 reads": [HEAD] + [b"".join(CHUNKS[i:i + 10]) for i in range(0, 100, 10)] + [DONE],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    names = ("twisted", "httptools")
    clients = {name: client(name) for name in names}
    for shape, reads in SHAPES.items():
        bodies = {name: one(*clients[name], reads) for name in names}
        assert bodies["twisted"] == bodies["httptools"], shape
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                http, endpoints = clients[name]
                start = time.process_time()
                for _ in range(args.requests):
                    one(http, endpoints, reads)
                times[name].append((time.process_time() - start) / args.requests * 1e6)
        calls = {}
        for name in names:
            http, endpoints = clients[name]
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(200):
                one(http, endpoints, reads)
            profile.disable()
            stats = pstats.Stats(profile)
            calls[name] = stats.total_calls / 200  # type: ignore[attr-defined]
        tw, ht = statistics.median(times["twisted"]), statistics.median(times["httptools"])
        print(f"{shape:18} CPU us/request: twisted {tw:7.1f}  httptools {ht:7.1f}  "
              f"ratio {ht / tw:.2f} (rounds: "
              + ", ".join(f"{a / b:.2f}" for a, b in zip(times["httptools"], times["twisted"]))
              + f")  calls/request: twisted {calls['twisted']:.0f}  httptools {calls['httptools']:.0f}"
              f"  ratio {calls['httptools'] / calls['twisted']:.2f}")


if __name__ == "__main__":
    main()
