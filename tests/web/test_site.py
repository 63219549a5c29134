"""
The server side on the wire: body caps, slow clients and timeouts, driven
byte by byte through a C{StringTransport} and a C{MemoryReactorClock}.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol import target
from ollama_proxy.web.site import makeSite


class Recording(Resource):
    """
    A leaf that records every body it was asked to render.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.bodies.append(request.content.read())
        return b'{"ok": true}'


def parseResponse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """
    Split one HTTP/1.1 response with a C{Content-Length}.

    @return: status, lower-cased headers, body.
    """
    head, _, body = data.partition(b"\r\n\r\n")
    statusLine, *headerLines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in headerLines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(statusLine.split()[1]), headers, body


class SiteTestCase(SynchronousTestCase):
    """
    Helpers: one connection to a L{makeSite} site on a fake clock.
    """

    httpParser = "httptools"
    """C{--http-parser}: every test here runs on both (the C{Twisted}
    classes at the end)."""

    def connect(self, **siteArgs: Any) -> tuple[Any, StringTransport]:
        self.clock = MemoryReactorClock()
        self.resource = Recording()
        site = makeSite(self.resource, self.clock, httpParser=self.httpParser, **siteArgs)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


class BodyLimitTests(SiteTestCase):
    """
    C{--max-body}: larger bodies get 413 with Ollama's JSON error and are
    never rendered, however they arrive.
    """

    def assert413(self, transport: StringTransport, limit: int) -> None:
        self.assertEqual(self.resource.bodies, [])
        status, headers, body = parseResponse(transport.value())
        self.assertEqual(status, 413)
        self.assertEqual(headers["content-type"], "application/json; charset=utf-8")
        self.assertEqual(
            codec.loads(body),
            {"error": f"request body is larger than the limit of {limit} bytes"},
        )
        self.assertEqual(headers["connection"], "close")
        self.assertTrue(transport.disconnecting)

    def test_declaredLengthOverCap(self) -> None:
        """
        A C{Content-Length} over the cap is refused as soon as the headers
        are in, before any body byte is read.
        """
        protocol, transport = self.connect(maxBody=10)
        protocol.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n"
        )
        self.assert413(transport, 10)

    def test_expectContinueOverCap(self) -> None:
        """
        A client that asks C{Expect: 100-continue} for a body over the cap
        gets the 413 as the only response: no C{100 Continue} after it
        (which would invite it to send the body it was just refused, and is
        a stray response on the wire).
        """
        protocol, transport = self.connect(maxBody=10)
        protocol.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        self.assert413(transport, 10)
        self.assertNotIn(b"100 Continue", transport.value())

    def test_bodyInSameBuffer(self) -> None:
        """
        When the whole oversized body arrives in the same read as the
        headers, it is still refused and never rendered truncated.
        """
        protocol, transport = self.connect(maxBody=10)
        protocol.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n" + b"x" * 20
        )
        self.assert413(transport, 10)

    def test_chunkedOverCap(self) -> None:
        """
        A chunked upload (no declared length) is cut off when it passes the
        cap, even when the rest follows in the same buffer.
        """
        protocol, transport = self.connect(maxBody=10)
        protocol.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nabcdef\r\n"
        )
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"6\r\nghijkl\r\n0\r\n\r\n")
        self.assert413(transport, 10)

    def test_chunkedOverCapOneBuffer(self) -> None:
        """
        The same, with every chunk and the terminator in one read.
        """
        protocol, transport = self.connect(maxBody=10)
        protocol.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n"
        )
        self.assert413(transport, 10)

    def test_atCap(self) -> None:
        """
        A body of exactly the cap, chunked or not, is rendered whole.
        """
        protocol, transport = self.connect(maxBody=10)
        protocol.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"
        )
        protocol.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n"
        )
        self.assertEqual(self.resource.bodies, [b"0123456789", b"0123456789"])
        self.assertFalse(transport.disconnecting)

    def test_pipelinedRequestAfterRejectNotServed(self) -> None:
        """
        A request pipelined after a rejected one on the same connection is
        not rendered: the connection is closed after the 413.
        """
        protocol, transport = self.connect(maxBody=10)
        protocol.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n" + b"x" * 20
            + b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assert413(transport, 10)
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)


class ContentFileTests(SiteTestCase):
    """
    The site's C{getContentFile}: twisted.web's choice of body file (in
    memory under 100,000 declared bytes, a temporary file otherwise or for
    a chunked body), the body intact either way.
    """

    def test_fileByLength(self) -> None:
        protocol, transport = self.connect(maxBody=1_000_000)
        files: list[bool] = []
        render = self.resource.render_POST

        def recording(request: Request) -> bytes:
            files.append(isinstance(request.content, BytesIO))
            return render(request)

        self.patch(self.resource, "render_POST", recording)
        small, large = b"s" * 99_999, b"L" * 150_000
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(small), small))
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(large), large))
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(self.resource.bodies, [small, large, b"abc"])
        self.assertEqual(files, [True, False, False])
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)


class ClientTimeoutTests(SiteTestCase):
    """
    C{--client-timeout}: a client that stalls while sending its request is
    disconnected; one that is being answered is not.
    """

    def test_slowHeaders(self) -> None:
        """
        Half a request line and then silence: the connection is closed
        after C{timeout} seconds.
        """
        protocol, transport = self.connect(timeout=5)
        protocol.dataReceived(b"POST /x HT")
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_slowBody(self) -> None:
        """
        Headers in, body stalled: closed after C{timeout} seconds of
        silence, and the partial body is never rendered.
        """
        protocol, transport = self.connect(timeout=5)
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01")
        self.clock.advance(5.1)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.resource.bodies, [])


class BodyDeadlineTests(SiteTestCase):
    """
    C{--body-timeout}: a whole-body deadline for uploads that trickle in
    just fast enough to defeat the idle timeout.
    """

    def test_trickleUpload(self) -> None:
        """
        A byte every four seconds never trips a five-second idle timeout,
        but the body deadline answers 408 with a JSON error and closes the
        connection; the partial body is never rendered.
        """
        protocol, transport = self.connect(timeout=5, bodyTimeout=10)
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
        for _ in range(2):
            self.clock.advance(4)
            protocol.dataReceived(b"x")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(2)
        status, headers, body = parseResponse(transport.value())
        self.assertEqual(status, 408)
        self.assertEqual(
            codec.loads(body), {"error": "request body not received within 10 seconds"}
        )
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"x" * 8)
        self.assertEqual(self.resource.bodies, [])

    def test_completeBodyDisarms(self) -> None:
        """
        A body that arrives in time is rendered, and the deadline is
        cancelled (no timer left on the clock for it).
        """
        protocol, transport = self.connect(timeout=None, bodyTimeout=10)
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        protocol.dataReceived(b"ok")
        self.assertEqual(self.resource.bodies, [b"ok"])
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
        status, _, _ = parseResponse(transport.value())
        self.assertEqual(status, 200)

    def test_wholeBodyInOneReadNoTimer(self) -> None:
        """
        A body that arrives with its head is never late: on the llhttp
        channel no body timer is armed for it at all; on either, none is
        left.
        """
        protocol, transport = self.connect(timeout=None, bodyTimeout=10, headerTimeout=None)
        armed: list[float] = []
        callLater = self.clock.callLater

        def watch(delay: float, *args: Any, **kwargs: Any) -> Any:
            armed.append(delay)
            return callLater(delay, *args, **kwargs)

        self.patch(self.clock, "callLater", watch)
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.resource.bodies, [b"ok"])
        self.assertEqual(parseResponse(transport.value())[0], 200)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])
        self.assertEqual(armed, [] if self.httpParser == "httptools" else [10])

    def test_disconnectDisarms(self) -> None:
        """
        A client that leaves mid-body takes the deadline with it.
        """
        protocol, transport = self.connect(timeout=None, bodyTimeout=10)
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])


class DrainTests(SynchronousTestCase):
    """
    Graceful shutdown (C{--shutdown-grace}): L{ProxySite.drain} lets
    in-flight streams finish, then disconnects what is left.
    """

    httpParser = "httptools"

    def setUp(self) -> None:
        from ollama_proxy.testing.harness import ProxyHarness

        self.h = ProxyHarness()
        self.site = makeSite(self.h.root, self.h.clock, timeout=None, httpParser=self.httpParser)

    def startChat(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        body = codec.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        protocol.dataReceived(
            b"POST /api/chat HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        self.h.pump()
        return protocol, transport

    def test_idleDrainsAtOnce(self) -> None:
        """
        With no connection, draining completes immediately.
        """
        self.successResultOf(self.site.drain(10))

    def test_idleConnectionClosed(self) -> None:
        """
        An idle kept-alive connection is closed at once; the drain completes
        when it is gone.
        """
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        d = self.site.drain(10)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)

    def test_streamFinishesWithinGrace(self) -> None:
        """
        A stream in flight when draining starts runs to its end; the drain
        completes when it does, and the pending grace timer is cancelled.
        """
        from ollama_proxy.testing.harness import delta

        protocol, transport = self.startChat()
        [upstream] = self.h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        self.h.pump()
        d = self.site.drain(10)
        self.assertNoResult(d)
        self.h.clock.advance(5)
        upstream.event(delta("b", finish_reason="stop"))
        upstream.done()
        self.h.pump()
        self.assertIn(b'"done":true', transport.value())
        self.assertTrue(transport.value().endswith(b"0\r\n\r\n"))
        # Closed once the response is written; done once the close is.
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)
        self.assertEqual([c for c in self.h.clock.getDelayedCalls() if c.active()], [])
        self.assertEqual(upstream.lost, [])

    def test_graceExpires(self) -> None:
        """
        A stream still running after the grace period is cut: the client
        connection is aborted and the backend sees its connection closed.
        """
        from ollama_proxy.testing.harness import delta

        protocol, transport = self.startChat()
        [upstream] = self.h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        self.h.pump()
        d = self.site.drain(10)
        self.h.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.h.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.h.pump()
        self.successResultOf(d)
        self.assertEqual(len(upstream.lost), 1)

    def test_newRequestRefused(self) -> None:
        """
        A new request on a kept-alive connection while draining gets a 503
        JSON error and C{Connection: close}; nothing goes upstream.
        """
        self.site.drain(10)
        protocol, transport = self.startChat()
        status, headers, body = parseResponse(transport.value())
        self.assertEqual(status, 503)
        self.assertEqual(codec.loads(body), {"error": "the proxy is shutting down"})
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(self.h.backend.received, [])

    def test_refusedConnectionClosed(self) -> None:
        """
        The connection that got the draining 503 is closed as its
        C{Connection: close} says (twisted.web only looks at the request's
        header), so the drain need not wait for the client, or the grace
        period, to close it.
        """
        d = self.site.drain(10)
        protocol, transport = self.startChat()
        self.assertEqual(parseResponse(transport.value())[0], 503)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)


class RecordArgs(Resource):
    """Remembers the request's C{args}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def render_POST(self, request: Request) -> bytes:
        self.seen.append((dict(request.args), request.content.read()))  # type: ignore[union-attr]
        return b"ok"


class FormParsingTests(SynchronousTestCase):
    """
    The proxy's request class does not parse form bodies.
    """

    def test_formBodyNotParsed(self) -> None:
        """
        A form-encoded POST is left as raw bytes: C{args} stays empty (no
        C{email.message} parsing of the content type per request), and the
        resource still reads the body.
        """
        resource = RecordArgs()
        site = makeSite(resource, MemoryReactorClock())
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 3\r\n\r\na=b"
        )
        self.assertEqual(resource.seen, [({}, b"a=b")])
        self.assertIn(b"200 OK", transport.value())


class ContentFileTwistedTests(ContentFileTests):
    httpParser = "twisted"


class BodyLimitTwistedTests(BodyLimitTests):
    """
    L{BodyLimitTests} on twisted.web's parser (C{--http-parser twisted}).
    """

    httpParser = "twisted"


class ClientTimeoutTwistedTests(ClientTimeoutTests):
    """
    L{ClientTimeoutTests} on twisted.web's parser.
    """

    httpParser = "twisted"


class BodyDeadlineTwistedTests(BodyDeadlineTests):
    """
    L{BodyDeadlineTests} on twisted.web's parser.
    """

    httpParser = "twisted"


class DrainTwistedTests(DrainTests):
    """
    L{DrainTests} on twisted.web's parser.
    """

    httpParser = "twisted"


class GrammarCacheTests(SiteTestCase):
    """
    The target and C{Host} checks remember their verdicts
    (L{ollama_proxy.protocol.target.refusedGrammar}): the same answer every time, in a bounded
    table.
    """

    def answer(self, target: bytes, host: bytes = b"a") -> tuple[int, bytes]:
        """
        @return: the status and body of one request to a new site.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\n\r\n{}" % (target, host)
        )
        status, _, body = parseResponse(transport.value())
        return status, body

    def setUp(self) -> None:
        target._verdicts.clear()
        self.addCleanup(target._verdicts.clear)

    def test_sameVerdictTwice(self) -> None:
        """
        A refused target, a refused C{Host} and an accepted pair: the same
        answer the second time, from the table.
        """
        cases = [(b"/a/%2e%2e/b", b"a", 400), (b"/ok", b"a b", 400), (b"/ok", b"a:1", 200)]
        first = [self.answer(target, host) for target, host, _ in cases]
        self.assertEqual(len(target._verdicts), 3)
        again = [self.answer(target, host) for target, host, _ in cases]
        self.assertEqual(first, again)
        self.assertEqual([status for status, _ in first], [status for _, _, status in cases])
        self.assertIn(b"dot segments", first[0][1])
        self.assertIn(b"malformed Host header", first[1][1])

    def test_twoHostsNeverCached(self) -> None:
        """
        Two C{Host} headers are refused however the first was judged.
        """
        self.answer(b"/ok", b"a")
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /ok HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}"
        )
        status, _, body = parseResponse(transport.value())
        self.assertEqual(status, 400)
        self.assertIn(b"more than one Host header", body)

    def test_bounded(self) -> None:
        """
        A flood of distinct targets never grows the table past
        L{target.GRAMMAR_CACHE_SIZE}; long ones are not kept at all.
        """
        for i in range(target.GRAMMAR_CACHE_SIZE + 20):
            self.answer(b"/t%d" % i)
            self.assertLessEqual(len(target._verdicts), target.GRAMMAR_CACHE_SIZE)
        target._verdicts.clear()
        self.assertEqual(self.answer(b"/" + b"x" * target.GRAMMAR_CACHE_KEY)[0], 200)
        self.assertEqual(target._verdicts, {})


class TrackingTests(SiteTestCase):
    """
    The site counts a request in flight until it finishes or its client
    leaves (L{ProxySite.track}, told by the request itself).
    """

    def test_finishedAndLost(self) -> None:
        """
        Finished or lost, a request leaves the site's count once.
        """
        protocol, transport = self.connect()
        siteOf = protocol.site
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(siteOf.inFlight, set())
        self.assertEqual(siteOf._busy, {})

        class Slow(Resource):
            isLeaf = True
            def __init__(self) -> None:
                super().__init__()
                self.pending: list[Request] = []

            def render_POST(self, request: Request) -> Any:
                self.pending.append(request)
                return NOT_DONE_YET

        slow = Slow()
        siteOf.resource = slow
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
        [request] = slow.pending
        self.assertEqual(siteOf.inFlight, {request})
        request.finish()
        self.assertEqual(siteOf.inFlight, set())
        self.assertEqual(siteOf._busy, {})
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
        self.assertEqual(siteOf.inFlight, {slow.pending[1]})
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(siteOf.inFlight, set())
        self.assertEqual(siteOf._busy, {})
        slow.pending[1].connectionLost(Failure(ConnectionLost()))  # no second count
        self.assertEqual(siteOf._busy, {})


class GrammarCacheTwistedTests(GrammarCacheTests):
    httpParser = "twisted"


class TrackingTwistedTests(TrackingTests):
    httpParser = "twisted"
