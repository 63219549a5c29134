"""
Tests for L{ollama_proxy.service.drain}: the shutdown sequence a load
balancer sees (readiness 503 at once, requests served for the drain delay,
then the listeners close and streams finish within the grace), on the
memory clock.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.service.drain import DrainService
from ollama_proxy.testing.harness import ProxyHarness, delta
from ollama_proxy.web.site import makeSite
from tests.web.helpers import body


class RecordingService(Service):
    """
    Notes when it was stopped, and (like a listening port) may take a
    while to stop.
    """

    def __init__(self, clock: Any, log: list[tuple[str, float]], name: str) -> None:
        self.clock = clock
        self.log = log
        self.label = name

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.log.append((self.label, self.clock.seconds()))
        return None


class DrainSequenceTests(SynchronousTestCase):
    """
    L{DrainService.stopService} on the memory clock.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()
        self.site = makeSite(self.h.root, self.h.clock, timeout=None)
        self.stops: list[tuple[str, float]] = []
        self.drain = DrainService(self.site, grace=10, reactor=self.h.clock,
                                  lifecycle=self.h.ctx.lifecycle, delay=3)
        RecordingService(self.h.clock, self.stops, "listener").setServiceParent(self.drain)
        self.drain.stopAfter(RecordingService(self.h.clock, self.stops, "pool"))
        self.drain.startService()

    def ready(self) -> tuple[int, Any]:
        d = self.h.get("/health/ready")
        for received in self.h.backend.received:
            if received.path.endswith("/models") and not received.request.finished:
                received.respond(200, {"object": "list", "data": [{"id": "m"}]})
        self.h.pump()
        response = self.successResultOf(d)
        return response.code, body(self.h, response)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def chat(self, protocol: Any) -> None:
        data = codec.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        protocol.dataReceived(
            b"POST /api/chat HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(data)
            + data
        )
        self.h.pump()

    def test_readinessAtOnceListenersAfterDelay(self) -> None:
        """
        On stop, C{/health/ready} answers 503 C{draining} at once while the
        listeners stay open; they close after the delay, then the pool
        stops once nothing is in flight.
        """
        self.h.get("/api/tags")  # the first listing, so that the proxy is ready
        for received in self.h.backend.received:
            received.respond(200, {"object": "list", "data": [{"id": "m"}]})
        self.h.pump()
        self.h.clock.advance(1)
        code, answer = self.ready()
        self.assertEqual(code, 200)
        d = self.drain.stopService()
        code, answer = self.ready()
        self.assertEqual((code, answer["status"]), (503, "draining"))
        self.h.clock.advance(2.9)
        self.assertEqual(self.stops, [])
        self.assertNoResult(d)
        self.h.clock.advance(0.1)
        self.assertEqual(self.stops, [("listener", 4.0), ("pool", 4.0)])
        self.successResultOf(d)

    def test_requestsServedDuringDelay(self) -> None:
        """
        A request that arrives during the delay, on a new or kept-alive
        connection, is served as usual (not refused with the draining 503):
        the balancer may still send until its probes notice.
        """
        d = self.drain.stopService()
        self.h.clock.advance(1)
        protocol, transport = self.connect()
        self.chat(protocol)
        [upstream] = [r for r in self.h.backend.received if r.path.endswith("/chat/completions")]
        upstream.startSSE()
        upstream.event(delta("hello", finish_reason="stop"))
        upstream.done()
        self.h.pump()
        self.assertIn(b"HTTP/1.1 200", transport.value())
        self.assertIn(b'"done":true', transport.value())
        self.assertFalse(transport.disconnecting)
        self.assertNoResult(d)
        self.h.clock.advance(2)
        # The delay is over: the idle kept-alive connection is closed.
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)

    def test_streamFinishesAfterListenersClose(self) -> None:
        """
        A stream that runs past the delay keeps running, within the grace;
        the pool it uses stops only after it ended.
        """
        protocol, transport = self.connect()
        self.chat(protocol)
        [upstream] = [r for r in self.h.backend.received if r.path.endswith("/chat/completions")]
        upstream.startSSE()
        upstream.event(delta("a"))
        self.h.pump()
        d = self.drain.stopService()
        self.h.clock.advance(3)
        self.assertEqual(self.stops, [("listener", 3.0)])
        self.h.clock.advance(5)
        upstream.event(delta("b", finish_reason="stop"))
        upstream.done()
        self.h.pump()
        self.assertIn(b'"done":true', transport.value())
        self.assertEqual(self.stops, [("listener", 3.0)])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.assertEqual(self.stops, [("listener", 3.0), ("pool", 8.0)])

    def test_noDelay(self) -> None:
        """
        C{--drain-delay 0} closes the listeners at once (the old behaviour).
        """
        self.drain.delay = 0
        d = self.drain.stopService()
        self.assertEqual(self.stops, [("listener", 0.0), ("pool", 0.0)])
        self.successResultOf(d)
        self.assertTrue(self.h.ctx.lifecycle.draining)
