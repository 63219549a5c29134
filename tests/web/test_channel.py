"""
Slow clients on a memory clock: the header deadline
(C{--client-header-timeout}) and the connection cap (C{--max-connections}),
driven byte by byte through C{StringTransport}s.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ollama_proxy.protocol import codec
from ollama_proxy.web.channel import REFUSAL_LINGER, BusyRefusal
from ollama_proxy.web.site import ProxySite, makeSite
from tests.upstream.helpers import LogCapture
from tests.web.test_site import parseResponse

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


class Slow(Resource):
    """
    A leaf that renders a C{POST}'s body, and holds every C{GET} open
    (a stream) until the test finishes it.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []
        self.open: list[Request] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.bodies.append(request.content.read())
        return b'{"ok": true}'

    def render_GET(self, request: Request) -> int:
        request.write(b"first ")
        self.open.append(request)
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes:
        return b""


class DeadlineTestCase(SynchronousTestCase):
    """
    Helpers: connections to a L{makeSite} site on a fake clock.
    """

    httpParser = "httptools"
    """C{--http-parser}: every test here runs on both (the C{Twisted}
    classes at the end)."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.resource = Slow()

    def site(self, **siteArgs: Any) -> ProxySite:
        siteArgs.setdefault("timeout", None)
        return makeSite(self.resource, self.clock, httpParser=self.httpParser, **siteArgs)

    def connect(self, site: ProxySite) -> tuple[Any, StringTransport]:
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def assert408(self, transport: StringTransport, seconds: str) -> None:
        status, headers, body = parseResponse(transport.value())
        self.assertEqual(status, 408)
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(headers["content-type"], "application/json; charset=utf-8")
        self.assertEqual(
            codec.loads(body),
            {"error": f"request headers not received within {seconds} seconds"},
        )
        self.assertTrue(transport.disconnecting)


class HeaderDeadlineTests(DeadlineTestCase):
    """
    A total time for the request line and headers, which an idle timer
    that every byte resets does not give.
    """

    def test_dribbledHeaders(self) -> None:
        """
        One header byte a second never trips a five-second idle timer, but
        the three-second header deadline answers 408 JSON and closes;
        what the client sends afterwards is never parsed or rendered.
        """
        protocol, transport = self.connect(self.site(timeout=5, headerTimeout=3))
        request = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok"
        for byte in request[:3]:
            protocol.dataReceived(bytes([byte]))
            self.clock.advance(0.99)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assert408(transport, "3")
        protocol.dataReceived(request[3:])
        self.assertEqual(self.resource.bodies, [])
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)

    def test_unreadAnswerAborted(self) -> None:
        """
        A client that never reads its 408 is aborted after twisted.web's
        C{abortTimeout} (15 s), as for the idle timer.
        """
        protocol, transport = self.connect(self.site(headerTimeout=3))
        protocol.dataReceived(b"GET /")
        self.clock.advance(3)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.clock.advance(15)
        self.assertTrue(transport.disconnected)

    def test_silentConnection(self) -> None:
        """
        A connection that sends nothing gets the 408 at the deadline,
        counted from the accept.
        """
        _, transport = self.connect(self.site(headerTimeout=2))
        self.clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        self.assert408(transport, "2")

    def test_off(self) -> None:
        """
        With no deadline, no timer is started.
        """
        self.connect(self.site(headerTimeout=None))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_headersJustInTimeThenSlowBody(self) -> None:
        """
        Headers complete just before the deadline, then a body that takes
        far longer: the header deadline is over (the body has
        C{--body-timeout}), and the body is rendered.
        """
        protocol, transport = self.connect(self.site(headerTimeout=3))
        self.clock.advance(2.9)
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        for byte in b"body":
            self.clock.advance(10)
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(self.resource.bodies, [b"body"])
        status, _, _ = parseResponse(transport.value())
        self.assertEqual(status, 200)
        self.assertFalse(transport.disconnecting)

    def test_streamNotCut(self) -> None:
        """
        A response streamed long past the deadline is not cut, and the
        next request's clock starts with its first byte, not at the end
        of the stream.
        """
        protocol, transport = self.connect(self.site(headerTimeout=3))
        protocol.dataReceived(GET)
        [request] = self.resource.open
        for _ in range(10):
            self.clock.advance(2)
            request.write(b"more ")
        self.assertFalse(transport.disconnecting)
        request.finish()
        self.assertIn(b"first ", transport.value())
        self.assertNotIn(b"408", transport.value())
        # Idle between requests: --client-timeout's (off here), not this.
        self.clock.advance(100)
        self.assertFalse(transport.disconnecting)
        transport.clear()
        protocol.dataReceived(b"POST /x HTTP/1.1\r\n")
        self.clock.advance(2.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        self.assert408(transport, "3")

    def test_keepAliveResets(self) -> None:
        """
        Each request on a kept-alive connection gets the whole deadline:
        three requests each sent over 2.5 s of a 3 s deadline are all
        answered (HEAD among them).
        """
        protocol, transport = self.connect(self.site(headerTimeout=3))
        for head in (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n",
                     b"HEAD /x HTTP/1.1\r\nHost: a\r\n",
                     b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"):
            for piece in (head[:5], head[5:], b"\r\n"):
                protocol.dataReceived(piece)
                self.clock.advance(1.25)
            # Idle between requests: --client-timeout's (off here).
            self.clock.advance(10)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertFalse(transport.disconnecting)

    def test_pipelinedAfterStream(self) -> None:
        """
        A request pipelined behind a stream that outlasts the deadline is
        served when the stream ends (its clock starts then, and its
        headers are already complete).
        """
        protocol, transport = self.connect(self.site(headerTimeout=3))
        protocol.dataReceived(GET + b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
        self.clock.advance(20)
        [request] = self.resource.open
        request.finish()
        self.assertEqual(self.resource.bodies, [b"ok"])
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertNotIn(b"408", transport.value())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pipelinedPartialAfterStream(self) -> None:
        """
        Half a request pipelined behind a stream: its deadline starts when
        the stream ends, not when its bytes arrived.
        """
        protocol, transport = self.connect(self.site(headerTimeout=3))
        protocol.dataReceived(GET + b"POST /x HT")
        self.clock.advance(20)
        [request] = self.resource.open
        request.finish()
        self.clock.advance(2.9)
        self.assertNotIn(b"408", transport.value())
        self.clock.advance(0.2)
        self.assertIn(b"HTTP/1.1 408 Request Timeout", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_disconnectDisarms(self) -> None:
        """
        A client that leaves mid-headers takes the deadline with it.
        """
        protocol, _ = self.connect(self.site(headerTimeout=3))
        protocol.dataReceived(b"GET /x HTTP/1.1\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closingConnectionNotAnswered(self) -> None:
        """
        A connection already being closed (here after twisted.web's 400
        for a bad request line, whose client does not read) gets no 408
        after it.
        """
        protocol, transport = self.connect(self.site(headerTimeout=3))
        protocol.dataReceived(b"NONSENSE\r\n")
        self.assertTrue(transport.disconnecting)
        self.clock.advance(3.1)
        self.assertNotIn(b"408", transport.value())

    def test_counted(self) -> None:
        """
        The 408 is counted in the requests metric, on the site's route.
        """
        from ollama_proxy.web.metrics import Metrics

        metrics = Metrics()
        self.connect(self.site(headerTimeout=3, metrics=metrics))
        self.clock.advance(3.1)
        body, _ = metrics.render(None)
        self.assertIn(b'ollama_proxy_requests_total{model="",route="-",status="408"} 1.0', body)

    def test_manyIdleConnections(self) -> None:
        """
        Fifty connections that send a byte now and then are all answered
        408 and closed at the deadline.
        """
        site = self.site(timeout=5, headerTimeout=3)
        pairs = [self.connect(site) for _ in range(50)]
        for _ in range(4):
            for protocol, _ in pairs:
                protocol.dataReceived(b"G")
            self.clock.advance(1)
        self.assertEqual(
            [t.value().split(b"\r\n", 1)[0] for _, t in pairs],
            [b"HTTP/1.1 408 Request Timeout"] * 50,
        )
        self.assertTrue(all(t.disconnecting for _, t in pairs))


@implementer(ITCPTransport)
class TCPStringTransport(StringTransport):
    """
    A C{StringTransport} that can half-close, as a TCP connection does.
    """

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def getTcpNoDelay(self) -> bool:
        return True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass


class ConnectionCapTests(DeadlineTestCase):
    """
    C{--max-connections}: open connections are counted; one more gets a
    503 JSON answer and is closed; the count drops as connections close.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events = LogCapture(self).observer

    def test_overCap(self) -> None:
        """
        With a cap of two, the third connection is answered 503 with
        C{Retry-After} and closed; when one of the two closes, the next
        connection is served again.  Reaching the cap is logged once, not
        per refused connection.
        """
        site = self.site(maxConnections=2)
        first, _ = self.connect(site)
        self.connect(site)
        self.assertEqual(len(site.connections), 2)
        for _ in range(3):
            refused, transport = self.connect(site)
            self.assertIsInstance(refused, BusyRefusal)
            status, headers, body = parseResponse(transport.value())
            self.assertEqual(status, 503)
            self.assertEqual(headers["retry-after"], "1")
            self.assertEqual(headers["connection"], "close")
            self.assertIn("too many open connections", codec.loads(body)["error"])
            self.assertTrue(transport.disconnecting)
            refused.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(site.connections), 2)
        capLines = [e for e in self.events if "connection cap" in e.get("log_format", "")]
        self.assertEqual(len(capLines), 1)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(site.connections), 1)
        protocol, transport = self.connect(site)
        self.assertNotIsInstance(protocol, BusyRefusal)
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(parseResponse(transport.value())[0], 200)

    def test_noCap(self) -> None:
        """
        Without a cap, every connection is served.
        """
        site = self.site()
        for _ in range(100):
            self.connect(site)
        self.assertEqual(len(site.connections), 100)

    def test_lingerBeforeClose(self) -> None:
        """
        Over TCP the refusal half-closes, drops what the client sends, and
        closes after L{REFUSAL_LINGER} seconds (so that the client reads
        the 503 before any reset); its timer goes with the connection.
        """
        site = self.site(maxConnections=1, headerTimeout=None)
        self.connect(site)
        refused = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        assert refused is not None
        transport = TCPStringTransport()
        refused.makeConnection(transport)
        self.assertTrue(transport.writeClosed)
        self.assertFalse(transport.disconnecting)
        refused.dataReceived(GET)
        self.clock.advance(REFUSAL_LINGER)
        self.assertTrue(transport.disconnecting)
        refused.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BadRequestTests(DeadlineTestCase):
    """
    What twisted.web cannot parse gets a JSON 400, not Twisted's bare
    status line with no body (C{ProxyChannel._respondToBadRequestAndDisconnect}).
    """

    def assert400(self, transport: StringTransport) -> None:
        status, headers, body = parseResponse(transport.value())
        self.assertEqual(status, 400)
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(headers["content-type"], "application/json; charset=utf-8")
        self.assertEqual(int(headers["content-length"]), len(body))
        self.assertEqual(codec.loads(body), {"error": "bad request"})
        self.assertTrue(transport.disconnecting)

    def test_malformedRequestLine(self) -> None:
        """
        A request line that is not C{METHOD target version} is a JSON 400;
        nothing reaches a resource and no 408 follows.
        """
        for line in (b"NONSENSE\r\n", b"GET /x\r\n", b"GET /x HTTP/1.1 extra\r\n"):
            protocol, transport = self.connect(self.site(headerTimeout=3))
            protocol.dataReceived(line)
            self.assert400(transport)
            self.clock.advance(3.1)
            self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1, line)
        self.assertEqual(self.resource.bodies, [])

    def test_oversizedHeaderLine(self) -> None:
        """
        A header line over twisted.web's C{totalHeadersSize} (16 KiB) is a
        JSON 400, as is a malformed header line.
        """
        protocol, transport = self.connect(self.site())
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n")
        self.assert400(transport)
        protocol, transport = self.connect(self.site())
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n")
        self.assert400(transport)

    def test_counted(self) -> None:
        """
        The 400 is counted on the site's route.
        """
        from ollama_proxy.web.metrics import Metrics

        metrics = Metrics()
        protocol, _ = self.connect(self.site(metrics=metrics))
        protocol.dataReceived(b"NONSENSE\r\n")
        body, _ = metrics.render(None)
        self.assertIn(b'ollama_proxy_requests_total{model="",route="-",status="400"} 1.0', body)

    def test_privateHookPinned(self) -> None:
        """
        The overridden method is private Twisted API: it must still exist
        on C{HTTPChannel} and be the one C{ProxyChannel} overrides, or the
        bare answer would come back silently with a Twisted upgrade.
        """
        from twisted.web.http import HTTPChannel

        from ollama_proxy.web import channel

        self.assertEqual(channel._BAD_REQUEST_HOOK, "_respondToBadRequestAndDisconnect")
        self.assertTrue(callable(getattr(HTTPChannel, channel._BAD_REQUEST_HOOK)))
        self.assertIsNot(
            getattr(channel.ProxyChannel, channel._BAD_REQUEST_HOOK),
            getattr(HTTPChannel, channel._BAD_REQUEST_HOOK),
        )


class HeaderDeadlineTwistedTests(HeaderDeadlineTests):
    """
    L{HeaderDeadlineTests} on twisted.web's parser (C{--http-parser twisted}).
    """

    httpParser = "twisted"


class ConnectionCapTwistedTests(ConnectionCapTests):
    """
    L{ConnectionCapTests} on twisted.web's parser.
    """

    httpParser = "twisted"


class BadRequestTwistedTests(BadRequestTests):
    """
    L{BadRequestTests} on twisted.web's parser.
    """

    httpParser = "twisted"
