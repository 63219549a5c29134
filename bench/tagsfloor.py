"""
A warm C{GET /api/tags} through the proxy's whole site (its channel, the
key gate, CORS, the tree, the access line and the metrics) against the
bare twisted.web resource of C{bench/floor.py}, in one process without
sockets: keep-alive requests written into each site's channel, rounds
interleaved, CPU per request (best round) and function calls per request
(C{sys.setprofile}, the steady measure on a loaded machine).

    python bench/tagsfloor.py [REQUESTS_PER_ROUND] [ROUNDS]

Prefix C{PYTHONPATH=<other tree>/src} to measure another build.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import Site  # noqa: E402
from treq.testing import StubTreq  # noqa: E402

from ollama_proxy.testing.fake_openai import FakeOpenAI  # noqa: E402
from ollama_proxy.testing.harness import TARGET, contextFor  # noqa: E402
from ollama_proxy.upstream.backend import Backend  # noqa: E402
from ollama_proxy.web.auth import requireKeys  # noqa: E402
from ollama_proxy.web.cors import OriginPolicy  # noqa: E402
from ollama_proxy.web.metrics import Metrics  # noqa: E402
from ollama_proxy.web.site import makeSite  # noqa: E402
from ollama_proxy.web.tree import buildRoot  # noqa: E402

BODY = b'{"models":[{"name":"fake-model:latest","model":"fake-model:latest","size":0,"digest":"0"}]}'


class Tags(Resource):
    """
    C{bench/floor.py}'s resource (that module installs its reactor when
    imported).
    """

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return BODY

TURN = 50
"""Requests per reactor turn."""

REQUEST = b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\n\r\n"


def floorSite() -> Any:
    root = Resource()
    api = Resource()
    root.putChild(b"api", api)
    api.putChild(b"tags", Tags())
    site = Site(root)
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


def proxySite() -> Any:
    backend = Backend(StubTreq(FakeOpenAI(reactor)), TARGET, reactor)  # type: ignore[arg-type]
    ctx = contextFor(backend, reactor, metrics=Metrics())  # type: ignore[arg-type]
    root = requireKeys(buildRoot(ctx), [])
    site = makeSite(root, reactor, metrics=ctx.metrics, origins=OriginPolicy(()))  # type: ignore[arg-type]
    return site


def round_(site: Any, requests: int) -> tuple[float, bytes]:
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    answered = 0
    started = time.process_time()
    for i in range(requests):
        protocol.dataReceived(REQUEST)
        last = transport.value()
        answered += last.startswith(b"HTTP/1.1 200 OK")
        transport.clear()
        if i % TURN == TURN - 1:
            # A reactor turn's end: the proxy's admission starts at most
            # 100 requests per turn (web/admission.py) and queues the rest.
            reactor.runUntilCurrent()  # type: ignore[attr-defined]
    reactor.runUntilCurrent()  # type: ignore[attr-defined]
    spent = time.process_time() - started
    protocol.connectionLost(Failure(ConnectionDone()))
    assert answered == requests, (answered, requests, last[:200])
    return spent / requests, last


def calls(site: Any, requests: int = 2000) -> float:
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        round_(site, requests)
    finally:
        sys.setprofile(None)
    return count / requests


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sites = {"floor": floorSite(), "proxy": proxySite()}
    # Warm the proxy's model list: the first request starts the fetch
    # through StubTreq; a few turns of the reactor finish it.
    round_(sites["proxy"], 1)
    for _ in range(20):
        reactor.runUntilCurrent()  # type: ignore[attr-defined]
    _, answer = round_(sites["proxy"], 1)
    assert b"200 OK" in answer and b'"models":[{' in answer, answer[:300]
    results: dict[str, list[float]] = {name: [] for name in sites}
    for _ in range(rounds):
        for name, site in sites.items():
            results[name].append(round_(site, requests)[0])
    best = {name: min(values) for name, values in results.items()}
    counted = {name: calls(site) for name, site in sites.items()}
    for name in sites:
        print(f"{name:6s} {best[name] * 1e6:7.1f} µs/request (best of {rounds}), floor/this "
              f"{best['floor'] / best[name]:.3f}; {counted[name]:.1f} calls/request")


if __name__ == "__main__":
    main()
