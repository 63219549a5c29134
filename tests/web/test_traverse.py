"""
L{ollama_proxy.web.traverse}: twisted.web's C{Request.process} with the
C{Date} formatted once per second, the same answers as twisted.web's own.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import datetimeToString
from twisted.web.resource import EncodingResourceWrapper, Resource
from twisted.web.server import GzipEncoderFactory, Request, Site

from ollama_proxy.web import traverse as traverseModule
from ollama_proxy.web.traverse import HTTPDate, traverse


class Traversed(Request):
    """
    A twisted.web request whose C{process} is L{traverse}.
    """

    def process(self) -> None:
        traverse(self)


class Echo(Resource):
    """
    Answers with what traversal left on the request.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return repr((request.prepath, request.postpath, request.site is not None)).encode() * 20


class Broken(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        raise RuntimeError("rendering failed")


def tree() -> Resource:
    root = Resource()
    root.putChild(b"echo", Echo())
    root.putChild(b"gz", EncodingResourceWrapper(Echo(), [GzipEncoderFactory()]))
    root.putChild(b"broken", Broken())
    return root


def serve(requestFactory: type[Request], raw: bytes) -> bytes:
    """
    @return: what a site over L{tree} with C{requestFactory} writes for
        C{raw}.
    """
    site = Site(tree())
    site.requestFactory = requestFactory
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    out: bytes = transport.value()
    protocol.connectionLost(Exception("done"))  # its idle timer is the global reactor's
    return out


def answer(requestFactory: type[Request], raw: bytes) -> bytes:
    """
    @return: L{serve}'s bytes, their C{Date} value blanked.
    """
    return re.sub(rb"(?m)^Date: [^\r]*", b"Date: -", serve(requestFactory, raw))


class TraverseTests(SynchronousTestCase):
    """
    L{traverse} against twisted.web's C{Request.process}.
    """

    def assertSame(self, raw: bytes) -> bytes:
        ours, theirs = answer(Traversed, raw), answer(Request, raw)
        self.assertEqual(ours, theirs)
        return ours

    def test_sameAnswers(self) -> None:
        """
        A plain resource (its path segments percent-decoded into
        C{postpath}), an encoding resource (gzip when asked), a resource
        that raises (twisted.web's failure page), a missing child and
        C{OPTIONS *}: the same bytes as twisted.web's own C{process}, the
        C{Server} and C{Date} headers included.
        """
        for raw in [
            b"GET /echo/a%2Fb/c%20d HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /gz HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
            b"GET /gz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        ]:
            out = self.assertSame(raw)
            self.assertIn(b"\r\nServer: TwistedWeb/", out)
            self.assertIn(b"\r\nDate: -\r\n", out)
        self.assertIn(b"Content-Encoding: gzip", answer(
            Traversed, b"GET /gz HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"))
        self.assertIn(b"a/b", answer(Traversed, b"GET /echo/a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n"))
        broken = self.assertSame(b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(broken.startswith(b"HTTP/1.1 500 "), broken)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_dateIsNow(self) -> None:
        """
        The C{Date} sent is the current second's.
        """
        seconds = [1_700_000_000.25]
        self.patch(traverseModule, "httpDate", HTTPDate(lambda: seconds[0]))
        out = serve(Traversed, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"\r\nDate: " + datetimeToString(1_700_000_000) + b"\r\n", out)


class HTTPDateTests(SynchronousTestCase):
    """
    L{HTTPDate}.
    """

    @given(st.floats(min_value=0, max_value=2**33, allow_nan=False))
    def test_twistedsValue(self, now: float) -> None:
        """
        The value is C{datetimeToString}'s for that time.
        """
        self.assertEqual(HTTPDate(lambda: now)(), datetimeToString(now))

    def test_formattedOncePerSecond(self) -> None:
        """
        Within one second the same bytes are returned (formatted once); the
        next second, or an earlier one (the clock set back), is formatted
        anew.
        """
        clock: list[float] = [100.0]
        formatted: list[Any] = []

        def counting(seconds: float) -> bytes:
            formatted.append(seconds)
            value: bytes = datetimeToString(seconds)
            return value

        self.patch(traverseModule, "datetimeToString", counting)
        date = HTTPDate(lambda: clock[0])
        first = date()
        clock[0] = 100.9
        self.assertIs(date(), first)
        clock[0] = 101.0
        self.assertEqual(date(), datetimeToString(101))
        clock[0] = 99.5
        self.assertEqual(date(), datetimeToString(99))
        self.assertEqual(formatted, [100, 101, 99])
