"""
Tests for L{ollama_proxy.upstream.message}: the response a connection hands
treq (buffered until read, taken whole when it came whole, its transport
resumed only when the connection paused it) and the in-memory body.
"""

from __future__ import annotations

from typing import Any

from treq.response import _Response
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers

from ollama_proxy.protocol.llhttp import ResponseHead
from ollama_proxy.upstream.message import (
    BodyTransport,
    BytesProducer,
    ClientRequest,
    HTTPResponse,
    wholeBody,
)
from ollama_proxy.upstream.pool import NO_COOKIES


class Body(Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reason = reason


class Connection:
    """
    A connection as the body transport sees it.
    """

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.abandoned = 0

    def abandon(self) -> None:
        self.abandoned += 1


class ResponseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.connection = Connection()
        head = ResponseHead((b"HTTP", 1, 1), 200, b"OK",
                            [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")], 5)
        self.response = HTTPResponse(head, ClientRequest(b"GET", b"http://h/", Headers()),
                                     BodyTransport(self.connection))

    def test_head(self) -> None:
        """
        Status, headers without the framing ones, the length.
        """
        self.assertEqual((self.response.code, self.response.length), (200, 5))
        self.assertEqual(self.response.headers.getRawHeaders(b"content-type"), [b"text/plain"])
        self.assertFalse(self.response.headers.hasHeader(b"content-length"))

    def test_headersAsTwistedAddsThem(self) -> None:
        """
        A response's headers are what C{addRawHeader} of each field would
        make (canonical names, repeated fields in order, values as sent),
        without the connection's own fields; a C{HEAD} answer keeps its
        C{Content-Length}.
        """
        from ollama_proxy.protocol.llhttp import ResponseParser

        data = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nX-Request-ID: a b\r\n"
                b"set-cookie: a=1\r\nSet-Cookie: b=2\r\nETAG: \"x\"\r\nx-a: caf\xc3\xa9\t!\r\n"
                b"Content-Encoding: gzip\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
                b"Content-Length: 0\r\n\r\n")
        for method, keptLength in ((b"GET", False), (b"HEAD", True)):
            head = ResponseParser(method).feed(data)[0]
            assert isinstance(head, ResponseHead)
            response = HTTPResponse(head, ClientRequest(method, b"http://h/", Headers()),
                                    BodyTransport(self.connection))
            expected = Headers()
            for name, value in head.headers:
                if name.lower() not in (b"connection", b"keep-alive", b"content-length") or (
                        keptLength and name.lower() == b"content-length"):
                    expected.addRawHeader(name, value)
            self.assertEqual(list(response.headers.getAllRawHeaders()),
                             list(expected.getAllRawHeaders()))
            self.assertEqual(response.headers.getRawHeaders(b"set-cookie"), [b"a=1", b"b=2"])
            self.assertEqual(response.headers.getRawHeaders(b"ETag"), [b'"x"'])
            self.assertEqual(response.headers.hasHeader(b"content-length"), keptLength)
            self.assertFalse(response.headers.hasHeader(b"connection"))

    def test_takenWhole(self) -> None:
        """
        A complete body is taken as it is (through treq's wrapper too),
        once; not before it is complete; never after it was delivered.
        """
        wrapped: Any = _Response(self.response, NO_COOKIES)
        self.response.bodyReceived(b"hel")
        self.assertIsNone(wholeBody(wrapped))
        self.response.bodyReceived(b"lo")
        self.response.bodyComplete()
        self.assertEqual(wholeBody(wrapped), b"hello")
        self.assertIsNone(wholeBody(wrapped))
        self.assertRaises(RuntimeError, self.response.deliverBody, Body())
        self.assertIsNone(wholeBody(object()))  # type: ignore[arg-type]

    def test_failedNotTaken(self) -> None:
        """
        A body that ended in a failure is not taken: its reader gets the
        data and the failure.
        """
        self.response.bodyReceived(b"he")
        self.response.bodyEnded(Failure(ResponseFailed([Failure(ValueError())])))
        self.assertIsNone(wholeBody(self.response))
        body = Body()
        self.response.deliverBody(body)
        self.assertEqual(body.data, [b"he"])
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))

    def test_deliveredAfterComplete(self) -> None:
        """
        A reader attached after the end gets the body and C{ResponseDone};
        the transport is not resumed (it was never paused).
        """
        self.response.bodyReceived(b"hello")
        self.response.bodyComplete()
        body = Body()
        self.response.deliverBody(body)
        self.assertEqual(body.data, [b"hello"])
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertEqual(self.connection.transport.producerState, "producing")

    def test_resumedOnlyIfPaused(self) -> None:
        """
        The connection's read is resumed by the reader's arrival only when
        the connection paused it for want of one.
        """
        transport = self.connection.transport
        transport.pauseProducing()
        body = Body()
        self.response.deliverBody(body)
        self.assertEqual(transport.producerState, "paused")  # not this response's doing
        self.setUp()
        transport = self.connection.transport
        transport.pauseProducing()
        self.response.paused = True
        self.response.deliverBody(Body())
        self.assertEqual(transport.producerState, "producing")

    def test_transportDetached(self) -> None:
        """
        Once the body ended, its transport no longer reaches the connection.
        """
        body = Body()
        self.response.deliverBody(body)
        assert body.transport is not None
        body.transport.stopProducing()  # type: ignore[attr-defined]
        self.assertEqual(self.connection.abandoned, 1)
        self.response.bodyComplete()
        body.transport.stopProducing()  # type: ignore[attr-defined]
        self.assertEqual(self.connection.abandoned, 1)


class BytesProducerTests(SynchronousTestCase):
    def test_writesAtOnce(self) -> None:
        """
        The body is written in C{startProducing}, which has fired already.
        """
        consumer = StringTransport()
        producer = BytesProducer(b"abc")
        self.assertEqual((producer.length, producer.body), (3, b"abc"))
        self.assertIsNone(self.successResultOf(producer.startProducing(consumer)))
        self.assertEqual(consumer.value(), b"abc")
