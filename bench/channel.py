"""
What a server channel costs per request: one process, no sockets, CPU
time per keep-alive request through the proxy's site (C{web/site.py}) with
a trivial resource, in four configurations of the same run:

- C{twisted}: twisted.web's own channel (its HTTP/2-switching wrapper),
  as before issue 19;
- C{no-deadline}: the proxy's C{ProxyChannel} with C{--client-header-timeout}
  off;
- C{deadline}: C{ProxyChannel} with the 60 s deadline (a timer armed at each
  request's first byte and cancelled at the end of its headers, on the real
  epoll reactor's timer heap, which is run between rounds): C{--http-parser
  twisted};
- C{httptools}: C{FastChannel} (llhttp) with the same deadline: the default
  C{--http-parser httptools} (issue 23).

Two requests: a bare C{GET /api/version} with two headers, and the head and
200-byte body of a non-streamed C{POST /api/chat} as Python clients send it
(eight headers).

Rounds alternate the configurations so that noise from other processes is
spread over all three; function calls per request (C{sys.setprofile}) are
printed too, as the steady measure on a loaded machine.

    python bench/channel.py [REQUESTS_PER_ROUND] [ROUNDS]

C{--proxy}: the whole proxy in one process instead (the real resource tree,
the in-process fake backend, treq's in-memory client, one connection per
request), a non-streamed C{/api/chat} and a warm C{/api/tags}, served by
each channel in interleaved rounds: CPU per request (the client and the fake
backend included, so the channel's share is diluted) and function calls
per request (cProfile, steady).

    python bench/channel.py --proxy [REQUESTS_PER_ROUND] [ROUNDS]
"""

from __future__ import annotations

import sys
import time

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web.http import _genericHTTPChannelProtocolFactory  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import Request  # noqa: E402

from ollama_proxy.web.site import makeSite  # noqa: E402

GET = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\n\r\n"
_BODY = b'{"model":"m","stream":false,"messages":[{"role":"user","content":"' + b"x" * 132 + b'"}]}'
POST = (
    b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:11434\r\nAccept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
    b"User-Agent: ollama-python/0.5.1 (x86_64 linux) Python/3.11.7\r\n"
    b"X-Request-Id: 4f1c2a9e\r\nContent-Length: %d\r\n\r\n" % len(_BODY) + _BODY
)
REQUESTS = {"GET": GET, "POST": POST}


class Version(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b'{"version":"0.0.0"}'

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        request.content.read()
        return b'{"done":true}'


def build(name: str) -> object:
    site = makeSite(Version(), reactor, timeout=60.0,
                    headerTimeout=None if name == "no-deadline" else 60.0,
                    httpParser="httptools" if name == "httptools" else "twisted")
    if name == "twisted":
        site.protocol = lambda: _genericHTTPChannelProtocolFactory(None)  # type: ignore[assignment]
    return site


def round_(name: str, requests: int, request: bytes = GET) -> float:
    """
    @return: CPU seconds per request for C{requests} keep-alive requests on
        one connection.
    """
    site = build(name)
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))  # type: ignore[attr-defined]
    transport = StringTransport()
    protocol.makeConnection(transport)
    started = time.process_time()
    for _ in range(requests):
        protocol.dataReceived(request)
        transport.clear()
    reactor.runUntilCurrent()  # type: ignore[attr-defined]
    spent = time.process_time() - started
    protocol.connectionLost(Failure(ConnectionDone()))
    return spent / requests


def calls(name: str, request: bytes, requests: int = 2000) -> float:
    """
    @return: Python and C function calls per request, counted with
        C{sys.setprofile}: a steady measure where CPU time is noisy.
    """
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        round_(name, requests, request)
    finally:
        sys.setprofile(None)
    return count / requests


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    names = ["twisted", "no-deadline", "deadline", "httptools"]
    for kind, request in REQUESTS.items():
        results: dict[str, list[float]] = {name: [] for name in names}
        round_("deadline", 2000, request)  # warm-up
        for _ in range(rounds):
            for name in names:
                results[name].append(round_(name, requests, request))
        best = {name: min(values) for name, values in results.items()}
        counted = {name: calls(name, request) for name in names}
        print(f"{kind} ({len(request)} bytes)")
        for name in names:
            print(f"  {name:12s} {best[name] * 1e6:7.1f} µs/request (best of {rounds}), "
                  f"{best[name] / best['deadline']:.3f}× deadline; "
                  f"{counted[name]:.1f} calls/request, {counted[name] / counted['deadline']:.3f}×")


def throughProxy(requests: int, rounds: int) -> None:
    """
    The whole proxy, both channels, non-streamed chat and warm tags.
    """
    import cProfile
    import pstats
    import statistics

    from treq.testing import StubTreq
    from twisted.internet.testing import MemoryReactorClock

    from ollama_proxy.protocol import codec
    from ollama_proxy.testing.fake_openai import FakeOpenAI
    from ollama_proxy.testing.harness import TARGET, Counter, contextFor
    from ollama_proxy.upstream.backend import Backend
    from ollama_proxy.web.tree import buildRoot

    clock = MemoryReactorClock()
    root = buildRoot(contextFor(Backend(StubTreq(FakeOpenAI(clock)), TARGET, clock),
                                clock=clock, now=Counter()))
    clients: dict[str, Any] = {}
    for parser in ("twisted", "httptools"):
        client: Any = StubTreq(root)
        client._agent._serverFactory = makeSite(root, clock, timeout=None, httpParser=parser)
        clients[parser] = client
    chat = codec.dumps({"model": "fake-model", "stream": False,
                        "messages": [{"role": "user", "content": "hi"}]})

    def one(parser: str, kind: str) -> None:
        client = clients[parser]
        if kind == "chat":
            d = client.post("http://proxy.test/api/chat", data=chat)
        else:
            d = client.get("http://proxy.test/api/tags")
        for _ in range(6):
            client.flush()
        out: list[bytes] = []
        d.addCallback(client.content).addCallback(out.append)
        for _ in range(6):
            client.flush()
        assert out and out[0].startswith(b"{"), (parser, kind, out)

    for kind in ("chat", "tags"):
        for parser in clients:
            one(parser, kind)  # warm: the model list is cached from here on
        calls = {}
        for parser in clients:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(200):
                one(parser, kind)
            profile.disable()
            calls[parser] = pstats.Stats(profile).total_calls / 200  # type: ignore[attr-defined]
        cpu: dict[str, list[float]] = {parser: [] for parser in clients}
        for _ in range(rounds):
            for parser in clients:
                start = time.process_time()
                for _ in range(requests):
                    one(parser, kind)
                cpu[parser].append((time.process_time() - start) / requests * 1e6)
        ratio = statistics.median(h / t for h, t in zip(cpu["httptools"], cpu["twisted"]))
        print(f"{kind}: twisted {statistics.median(cpu['twisted']):.1f} µs/request, "
              f"httptools {statistics.median(cpu['httptools']):.1f} µs/request "
              f"(median ratio per round {ratio:.3f}×); calls/request twisted "
              f"{calls['twisted']:.0f}, httptools {calls['httptools']:.0f} "
              f"({calls['httptools'] / calls['twisted']:.3f}×)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--proxy"]:
        del sys.argv[1]
        throughProxy(int(sys.argv[1]) if len(sys.argv) > 1 else 1000,
                     int(sys.argv[2]) if len(sys.argv) > 2 else 9)
    else:
        main()
