"""
Cancellation, back-pressure, timeouts and upstream faults, seen from both
ends: what the client gets, and what the fake backend saw (its request's
C{notifyFinish} errback in L{tests.fakes.Received.lost} proves that the
proxy closed the upstream connection).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import (
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError as ConnectTimeoutError,
)
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy import codec
from ollama_proxy.resources import ProxyContext, buildRoot
from ollama_proxy.upstream import Backend
from tests.fakes import BodyReader, Counter, ProxyHarness, TARGET, delta

CHAT = {"model": "m:proxy", "messages": [{"role": "user", "content": "hi"}]}


class Recorder:
    """
    Replaces C{pauseProducing}/C{resumeProducing} on a transport and records
    the calls (C{iosim}'s transports ignore them).
    """

    def __init__(self, transport: Any) -> None:
        self.calls: list[str] = []
        transport.pauseProducing = lambda: self.calls.append("pause")
        transport.resumeProducing = lambda: self.calls.append("resume")


class CancellationTests(SynchronousTestCase):
    """
    A client that leaves closes the upstream connection at once, whatever
    stage the exchange is at.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()

    def test_disconnectBeforeUpstreamHeaders(self) -> None:
        """
        A client that disconnects while the backend has not answered yet
        aborts the upstream request: the backend sees its connection lost.
        """
        d = self.h.post("/api/chat", CHAT)
        [upstream] = self.h.backend.received
        self.assertEqual(upstream.lost, [])
        self.h.dropClients()
        self.failureResultOf(d)
        self.assertEqual(len(upstream.lost), 1)
        self.assertEqual(self.h.upstreamTransports(), [])

    def test_disconnectMidStream(self) -> None:
        """
        A client that disconnects while lines are streaming closes the
        upstream connection; nothing is written after that.
        """
        d = self.h.post("/api/chat", CHAT)
        [upstream] = self.h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        self.h.pump()
        reader = BodyReader(self.h, self.successResultOf(d))
        self.h.pump()
        self.assertEqual(len(reader.lines()), 1)
        self.assertEqual(upstream.lost, [])
        self.h.dropClients()
        self.failureResultOf(reader.done)
        self.assertEqual(len(upstream.lost), 1)
        self.assertEqual(self.h.upstreamTransports(), [])

    def test_disconnectDuringNonStreamingBody(self) -> None:
        """
        With C{stream: false} the proxy reads the whole upstream body before
        answering; a client that leaves meanwhile still closes the upstream
        connection rather than letting the generation run to its end.
        """
        d = self.h.post("/api/chat", {**CHAT, "stream": False})
        [upstream] = self.h.backend.received
        upstream.request.setResponseCode(200)
        upstream.request.setHeader(b"Content-Type", b"application/json")
        upstream.write(b'{"id": "x", "choices": [')
        self.h.pump()
        self.h.dropClients()
        self.failureResultOf(d)
        self.assertEqual(len(upstream.lost), 1)

    def test_disconnectDuringPassthrough(self) -> None:
        """
        An OpenAI passthrough stream is closed upstream when its client
        leaves.
        """
        d = self.h.post("/v1/chat/completions", {"model": "m", "stream": True})
        [upstream] = self.h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        self.h.pump()
        reader = BodyReader(self.h, self.successResultOf(d))
        self.h.dropClients()
        self.failureResultOf(reader.done)
        self.assertEqual(len(upstream.lost), 1)


class BackPressureTests(SynchronousTestCase):
    """
    A client that cannot keep up pauses reading from the backend.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()

    def assertPausesUpstream(self, path: str, body: Any) -> None:
        d = self.h.post(path, body)
        [upstream] = self.h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        self.h.pump()
        self.successResultOf(d)
        [upstreamTransport] = self.h.upstreamTransports()
        recorder = Recorder(upstreamTransport)
        [channel] = self.h.proxyChannels()
        # What the reactor does when the client's socket buffer is full.
        channel.pauseProducing()
        self.assertEqual(recorder.calls, ["pause"])
        channel.resumeProducing()
        self.assertEqual(recorder.calls, ["pause", "resume"])

    def test_slowClientPausesUpstream(self) -> None:
        """
        When the client connection's transport pauses the proxy (its send
        buffer is full), the proxy pauses the upstream transport, and resumes
        it when the client drains: the stream is never buffered in memory.
        """
        self.assertPausesUpstream("/api/chat", CHAT)

    def test_slowClientPausesPassthrough(self) -> None:
        """
        The same holds for an OpenAI passthrough stream.
        """
        self.assertPausesUpstream("/v1/chat/completions", {"model": "m", "stream": True})


class IdleTimeoutTests(SynchronousTestCase):
    """
    C{--idle-timeout}: a stream whose backend goes silent ends with an error
    line after the last good one, and the upstream connection is closed.
    """

    def test_silentBackend(self) -> None:
        """
        After C{idleTimeout} seconds without a byte, the client gets the
        lines so far and an C{error} line naming the timeout, never
        C{done: true}; the backend's connection is closed.
        """
        h = ProxyHarness(idleTimeout=5.0)
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        h.pump()
        reader = BodyReader(h, self.successResultOf(d))
        h.clock.advance(4)
        upstream.event(delta("b"))
        h.pump()
        h.clock.advance(4)
        h.pump()
        self.assertNoResult(reader.done)
        h.clock.advance(1)
        h.pump()
        self.successResultOf(reader.done)
        lines = reader.lines()
        self.assertEqual([l["message"]["content"] for l in lines[:2]], ["a", "b"])
        self.assertEqual(lines[2:], [{"error": "backend sent nothing for 5 seconds"}])
        self.assertEqual(len(upstream.lost), 1)

    def test_noTimerLeftBehind(self) -> None:
        """
        A stream that ends normally leaves no pending timer on the clock.
        """
        h = ProxyHarness(idleTimeout=5.0)
        d = h.post("/api/chat", CHAT)
        upstream = h.backend.received[0]
        upstream.startSSE()
        upstream.event(delta("a", finish_reason="stop"))
        upstream.write(b"data: [DONE]\n\n")
        upstream.finish()
        h.pump()
        reader = BodyReader(h, self.successResultOf(d))
        h.pump()
        self.successResultOf(reader.done)
        self.assertEqual([c for c in h.clock.getDelayedCalls() if c.active()], [])


class HeaderTimeoutTests(SynchronousTestCase):
    """
    C{--header-timeout}: a backend that accepts the request but never
    answers yields a 504.
    """

    def test_504(self) -> None:
        """
        No response headers within C{headerTimeout} seconds: 504 with a JSON
        error, and the upstream request is aborted.
        """
        h = ProxyHarness()
        h.ctx.backend.headerTimeout = 30.0
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        h.clock.advance(29)
        h.pump()
        self.assertNoResult(d)
        h.clock.advance(1)
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        body = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertEqual(body, {"error": "timed out waiting for the backend"})
        self.assertEqual(len(upstream.lost), 1)

    def test_notAppliedToBody(self) -> None:
        """
        The header timeout stops counting once headers arrived: a long
        stream outlives it (only the idle timer applies).
        """
        h = ProxyHarness(idleTimeout=None)
        h.ctx.backend.headerTimeout = 30.0
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        upstream.startSSE()
        upstream.event(delta("x"))
        h.pump()
        reader = BodyReader(h, self.successResultOf(d))
        for _ in range(4):
            h.clock.advance(20)
            upstream.event(delta("x"))
            h.pump()
        self.assertEqual(len(reader.lines()), 5)
        self.assertEqual(upstream.lost, [])


class FailingClient:
    """
    An HTTP client whose every request fails with a given exception.
    """

    def __init__(self, exception: Exception) -> None:
        self.exception = exception

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        return fail(self.exception)


class ConnectFailureTests(SynchronousTestCase):
    """
    Failures to reach the backend map to 502/504 with a clear message.
    """

    def answer(self, exception: Exception, path: str = "/api/chat") -> tuple[int, Any]:
        clock = Counter()
        from twisted.internet.testing import MemoryReactorClock
        from treq.testing import StubTreq

        reactor = MemoryReactorClock()
        ctx = ProxyContext(
            backend=Backend(FailingClient(exception), TARGET, reactor),
            clock=reactor,
            now=clock,
        )
        client: Any = StubTreq(buildRoot(ctx))
        if path == "/api/tags":
            d = client.get("http://proxy.test" + path)
        else:
            d = client.post("http://proxy.test" + path, data=codec.dumps(CHAT))
        client.flush()
        response = self.successResultOf(d)
        return response.code, codec.loads(self.successResultOf(client.content(response)))

    def test_refused(self) -> None:
        """
        Connection refused: 502 naming the backend.
        """
        code, body = self.answer(ConnectionRefusedError("127.0.0.1"))
        self.assertEqual(code, 502)
        self.assertIn("cannot connect to the backend", body["error"])

    def test_dnsFailure(self) -> None:
        """
        A host name that does not resolve: 502 saying so.
        """
        code, body = self.answer(DNSLookupError("backend.invalid"))
        self.assertEqual(code, 502)
        self.assertIn("cannot resolve the backend", body["error"])

    def test_connectTimeout(self) -> None:
        """
        C{--connect-timeout} expired (the Agent's C{TimeoutError}): 504.
        """
        code, body = self.answer(ConnectTimeoutError())
        self.assertEqual(code, 504)
        self.assertEqual(body, {"error": "timed out connecting to the backend"})

    def test_tagsRefused(self) -> None:
        """
        C{GET /api/tags} reports an unreachable backend the same way.
        """
        code, body = self.answer(ConnectionRefusedError("127.0.0.1"), "/api/tags")
        self.assertEqual(code, 502)
        self.assertEqual(list(body), ["error"])
