"""
Tests for L{ollama_proxy.upstream.connection}: one connection driven over
a C{StringTransport}, as Twisted's own client tests drive theirs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import (
    PotentialDataLoss,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from ollama_proxy.upstream.connection import ClientConnection, HTTPResponse
from ollama_proxy.upstream.pool import BytesProducer


class Body(Protocol):
    """
    A body protocol that records what it gets.
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.reason = reason


class ConnectionTests(SynchronousTestCase):
    """
    L{ClientConnection}: writing, framing, reuse, back-pressure, cancel.
    """

    def setUp(self) -> None:
        self.idle: list[ClientConnection] = []
        self.lost: list[ClientConnection] = []
        self.conn = ClientConnection(self.idle.append, self.lost.append)
        self.transport = StringTransport()
        self.conn.makeConnection(self.transport)

    def closed(self) -> bool:
        """
        Whether the connection was told to close (C{loseConnection},
        C{abortConnection}, or C{stopProducing}, which is how TCP and TLS
        transports are stopped at once).
        """
        return bool(self.transport.disconnecting) or self.transport.producerState == "stopped"

    def send(self, method: bytes = b"GET", body: bytes | None = None) -> list[Any]:
        results: list[Any] = []
        producer = BytesProducer(body) if body is not None else None
        d = self.conn.request(method, b"http://h/p", b"/p?q=1", Headers({b"host": [b"h"]}), producer)
        d.addBoth(results.append)
        self.requestDeferred = d
        return results

    def test_requestBytes(self) -> None:
        """
        The head and a known-length body leave in order, with its length.
        """
        self.send(b"POST", b'{"a":1}')
        self.assertEqual(
            self.transport.value(),
            b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        )

    def test_chunkedBody(self) -> None:
        """
        A producer without a length is sent chunked: what it writes at once
        leaves with the head, later writes as they come, then the last
        chunk.
        """
        later: Deferred[None] = Deferred()
        consumers: list[Any] = []

        @implementer(IBodyProducer)
        class Streamed:
            length = UNKNOWN_LENGTH

            def startProducing(self, consumer: Any) -> Deferred[None]:
                consumer.write(b"abc")
                consumers.append(consumer)
                return later

            def pauseProducing(self) -> None: ...
            def resumeProducing(self) -> None: ...
            def stopProducing(self) -> None: ...

        self.conn.request(b"POST", b"http://h/p", b"/p", Headers({b"host": [b"h"]}), Streamed())
        self.assertEqual(self.transport.value(),
                         b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        self.transport.clear()
        consumers[0].write(b"defgh")
        later.callback(None)
        self.assertEqual(self.transport.value(), b"5\r\ndefgh\r\n0\r\n\r\n")

    def test_wrongLength(self) -> None:
        """
        A producer that writes more than its length fails the request and
        closes the connection.
        """
        @implementer(IBodyProducer)
        class Liar:
            length = 2

            def startProducing(self, consumer: Any) -> Deferred[None]:
                consumer.write(b"abc")
                return succeed(None)

            def pauseProducing(self) -> None: ...
            def resumeProducing(self) -> None: ...
            def stopProducing(self) -> None: ...

        results: list[Any] = []
        self.conn.request(b"POST", b"http://h/p", b"/p", Headers(), Liar()).addBoth(results.append)
        self.assertTrue(results[0].check(ResponseFailed))
        self.assertTrue(self.closed())
        self.assertNotIn(b"abc", self.transport.value())

    def test_emptyPost(self) -> None:
        """
        A POST without a body says C{Content-Length: 0}, as Twisted's does.
        """
        self.send(b"POST")
        self.assertIn(b"Content-Length: 0\r\n", self.transport.value())

    def test_badMethod(self) -> None:
        """
        A method that is not a token is refused before anything is sent.
        """
        self.assertRaises(ValueError, self.send, b"GET /x")
        self.assertEqual(self.transport.value(), b"")

    def test_badPathEveryTime(self) -> None:
        """
        A path with a space or a control character is refused before
        anything is sent, every time; a valid line asked again (found valid
        once, remembered) is still sent, with the same bytes.
        """
        for _ in range(2):
            for path in (b"/p HTTP/1.1\r\nX-Injected: 1", b"/p\r\n", b"/a b", b""):
                self.assertRaises(ValueError, self.conn.request, b"GET", b"http://h/p", path,
                                  Headers(), None)
                self.assertEqual(self.transport.value(), b"")
            self.assertRaises(ValueError, self.conn.request, b"G T", b"http://h/p", b"/p", Headers(), None)
        for _ in range(2):
            self.send(b"POST", b"{}")
            self.assertEqual(self.transport.value(),
                             b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
            self.transport.clear()
            self.conn.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")

    def test_responseAndReuse(self) -> None:
        """
        A complete keep-alive response: the response, its body, then the
        connection is idle again (and read again).
        """
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                               b"Content-Length: 5\r\n\r\nhel")
        [response] = results
        assert isinstance(response, HTTPResponse)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, 5)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain"])
        self.assertFalse(response.headers.hasHeader(b"content-length"))
        self.assertEqual(self.transport.producerState, "paused")
        body = Body()
        response.deliverBody(body)
        self.assertEqual(self.transport.producerState, "producing")
        self.conn.dataReceived(b"lo")
        self.assertEqual(b"".join(body.data), b"hello")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertEqual(self.idle, [self.conn])
        self.assertFalse(self.closed())

    def test_parserReusedOnKeepAlive(self) -> None:
        """
        A keep-alive connection's second and third responses (other
        framings, split reads, a body read later) are parsed right by the
        first response's parser, reset: one llhttp parser per connection.
        """
        answers = [
            (b"GET", [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"], 200, b"hello"),
            (b"POST", [b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\nab",
                       b"c\r\n0\r\n\r\n"], 201, b"abc"),
            (b"GET", [b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"], 404, b"no"),
        ]
        parsers = []
        for method, reads, code, body in answers:
            self.idle.clear()
            results = self.send(method, b"x" if method == b"POST" else None)
            parsers.append(self.conn._parser)
            for data in reads:
                self.conn.dataReceived(data)
            [response] = results
            self.assertEqual(response.code, code)
            reader = Body()
            response.deliverBody(reader)
            self.assertEqual(b"".join(reader.data), body)
            assert reader.reason is not None
            self.assertTrue(reader.reason.check(ResponseDone))
            self.assertEqual(self.idle, [self.conn])
            self.assertFalse(self.closed())
        self.assertIs(parsers[1], parsers[0])
        self.assertIs(parsers[2], parsers[0])
        self.assertEqual(self.conn._parser, None)

    def test_refusedThenFresh(self) -> None:
        """
        A refused response (after a good one on the same connection) fails
        its request and closes the connection, whose parser is not kept;
        the pool's next request goes on a new connection with a new parser.
        """
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.idle, [self.conn])
        first = self.conn._spare
        results = self.send()
        self.assertIs(self.conn._parser, first)
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok")
        [failure] = results
        self.assertTrue(failure.check(ResponseFailed))
        self.assertTrue(self.closed())
        self.assertFalse(self.conn.usable)
        self.assertIsNone(self.conn._spare)
        self.assertEqual(self.idle, [self.conn])  # from the first answer only
        old = self.conn
        self.setUp()
        results = self.send()
        self.assertIsNot(self.conn, old)
        self.assertIsNot(self.conn._parser, first)
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(results[0].code, 200)

    def countPauses(self) -> list[None]:
        """
        @return: a list that gets an entry each time the connection pauses
            its transport.
        """
        pauses: list[None] = []
        pause = self.transport.pauseProducing

        def counted() -> None:
            pauses.append(None)
            pause()

        self.transport.pauseProducing = counted  # type: ignore[method-assign]
        return pauses

    def test_wholeAnswerInOneRead(self) -> None:
        """
        Head and body in one read (a small non-streamed answer): the
        response is handed over once the read is parsed, so its reader gets
        the whole body within the same call, with no pause and resume of
        the socket and nothing left scheduled (no idle timer, no
        end-of-turn call); the connection is idle again.
        """
        from twisted.internet.testing import MemoryReactorClock

        from ollama_proxy.upstream.body import readBody

        pauses = self.countPauses()
        clock = MemoryReactorClock()
        read: list[bytes] = []
        d: Deferred[Any] = self.conn.request(b"POST", b"http://h/p", b"/p", Headers({b"host": [b"h"]}), None)
        d.addCallback(lambda r: Deferred.fromCoroutine(readBody(r, clock, 30.0)))
        d.addCallback(read.append)
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(read, [b"hello"])
        self.assertEqual(pauses, [])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.idle, [self.conn])
        self.assertEqual(self.transport.producerState, "producing")

    def readWith(self, answer: bytes, wrap: bool = False) -> list[Any]:
        """
        Send a request, answer it with C{answer}, read the body with
        L{readBody} (of the response as treq wraps it, with C{wrap}).

        @return: the body read, or the failure.
        """
        from treq.response import _Response

        from ollama_proxy.upstream.body import readBody
        from ollama_proxy.upstream.pool import NO_COOKIES

        read: list[Any] = []
        d: Deferred[Any] = self.conn.request(b"GET", b"http://h/p", b"/p", Headers({b"host": [b"h"]}), None)
        if wrap:
            d.addCallback(lambda r: _Response(r, NO_COOKIES))
        d.addCallback(lambda r: Deferred.fromCoroutine(readBody(r)))
        d.addBoth(read.append)
        self.conn.dataReceived(answer)
        return read

    def test_wholeBodyTaken(self) -> None:
        """
        A body that arrived whole with its head is taken as it is, through
        treq's wrapper too; the response cannot be read a second time.
        """
        from ollama_proxy.upstream.connection import wholeBody

        self.assertEqual(self.readWith(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", wrap=True),
                         [b"hello"])
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        [response] = results
        self.assertEqual(wholeBody(response), b"ok")
        self.assertRaises(RuntimeError, response.deliverBody, Body())
        self.assertIsNone(wholeBody(response))

    def test_wholeBodyTooLarge(self) -> None:
        """
        The size cap holds for a body taken whole.
        """
        from ollama_proxy.protocol.errors import UpstreamError
        from ollama_proxy.upstream import body

        self.patch(body, "MAX_RESPONSE_BODY", 4)
        [failure] = self.readWith(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        self.assertIsInstance(failure, Failure)
        self.assertIsInstance(failure.value, UpstreamError)
        self.assertIn("larger than 4 bytes", str(failure.value))

    def test_brokenBodyNotTaken(self) -> None:
        """
        A body that ended short, or without a length at the close, is read
        as before: the first an error, the second whole.
        """
        from ollama_proxy.protocol.errors import UpstreamError

        read = self.readWith(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello")
        self.assertEqual(read, [])
        self.conn.connectionLost(Failure(ConnectionDone()))
        [failure] = read
        self.assertIsInstance(failure.value, UpstreamError)
        self.setUp()
        read = self.readWith(b"HTTP/1.1 200 OK\r\n\r\nhello")
        self.assertEqual(read, [])
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(read, [b"hello"])

    def test_readerAttachedAtOnce(self) -> None:
        """
        A stream's head and first chunk in one read, its reader attached as
        soon as the response is handed over: the chunk reaches it, the
        socket is never paused, and the rest follows as it arrives.
        """
        pauses = self.countPauses()
        body = Body()
        d = self.conn.request(b"GET", b"http://h/p", b"/p", Headers({b"host": [b"h"]}), None)
        d.addCallback(lambda r: r.deliverBody(body))
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
        self.assertEqual(body.data, [b"ok"])
        self.assertEqual(pauses, [])
        self.assertIsNone(body.reason)
        self.conn.dataReceived(b"1\r\n!\r\n0\r\n\r\n")
        self.assertEqual(body.data, [b"ok", b"!"])
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertEqual(self.idle, [self.conn])

    def test_pauseReachesTheSocket(self) -> None:
        """
        The body protocol's transport pauses and resumes the connection;
        once the response is over it no longer reaches it.
        """
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        body = Body()
        results[0].deliverBody(body)
        body.transport.pauseProducing()  # type: ignore[union-attr]
        self.assertEqual(self.transport.producerState, "paused")
        body.transport.resumeProducing()  # type: ignore[union-attr]
        self.assertEqual(self.transport.producerState, "producing")
        self.conn.dataReceived(b"2\r\nok\r\n0\r\n\r\n")
        self.assertEqual(body.data, [b"ok"])
        body.transport.stopProducing()  # type: ignore[union-attr]
        self.assertFalse(self.closed())
        self.assertEqual(self.idle, [self.conn])

    def countResumes(self) -> list[None]:
        """
        @return: a list that gets an entry each time the connection resumes
            its transport.
        """
        resumes: list[None] = []
        resume = self.transport.resumeProducing

        def counted() -> None:
            resumes.append(None)
            resume()

        self.transport.resumeProducing = counted  # type: ignore[method-assign]
        return resumes

    def test_pausedAtTheEndResumed(self) -> None:
        """
        A response whose reader paused the read (back-pressure) and whose
        end came in that same read leaves the connection idle and reading
        again; one that was never paused is not resumed (a reactor call per
        answer for nothing), and a response read later (the read paused for
        want of a reader, resumed by it) is resumed once, by its reader.
        """
        resumes = self.countResumes()
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(self.transport.producerState, "paused")

        class Pausing(Body):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.pauseProducing()  # type: ignore[union-attr]

        body = Pausing()
        results[0].deliverBody(body)
        self.assertEqual(len(resumes), 1)
        self.conn.dataReceived(b"2\r\nok\r\n0\r\n\r\n")
        self.assertEqual(body.data, [b"ok"])
        self.assertEqual(self.idle, [self.conn])
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(len(resumes), 2)
        self.idle.clear()
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.idle, [self.conn])
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(len(resumes), 2)

    def test_stopClosesAndNeverPools(self) -> None:
        """
        A reader that stops closes the connection; the rest of the
        response, arriving in the same turn, does not pool it.
        """
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        body = Body()
        results[0].deliverBody(body)
        body.transport.stopProducing()  # type: ignore[union-attr]
        self.assertTrue(self.closed())
        self.conn.dataReceived(b"cd")
        self.assertEqual(self.idle, [])

    def test_bytesAfterResponse(self) -> None:
        """
        Bytes after a complete response: it is delivered, the connection
        is closed, not pooled.
        """
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n")
        body = Body()
        results[0].deliverBody(body)
        self.assertEqual(body.data, [b"ok"])
        self.assertEqual(self.idle, [])
        self.assertTrue(self.closed())

    def test_earlyEOF(self) -> None:
        """
        A body cut short by the connection ends in C{ResponseFailed}.
        """
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab")
        body = Body()
        results[0].deliverBody(body)
        self.conn.connectionLost(Failure(ConnectionDone()))
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))
        self.assertEqual(self.lost, [self.conn])

    def test_untilClose(self) -> None:
        """
        A body without a length ends with the connection, as
        C{PotentialDataLoss} (what treq and the body reader accept).
        """
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nabc")
        body = Body()
        results[0].deliverBody(body)
        self.conn.connectionLost(Failure(ConnectionDone()))
        assert body.reason is not None
        self.assertTrue(body.reason.check(PotentialDataLoss))
        self.assertEqual(body.data, [b"abc"])

    def test_badResponse(self) -> None:
        """
        A malformed head fails the request with C{ResponseFailed} and
        closes the connection.
        """
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        [failure] = results
        self.assertTrue(failure.check(ResponseFailed))
        self.assertTrue(self.closed())

    def test_badChunk(self) -> None:
        """
        A bad chunk after some body: what came before is delivered, then
        C{ResponseFailed}.
        """
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        body = Body()
        results[0].deliverBody(body)
        self.conn.dataReceived(b"2\r\nok\r\nzz\r\n")
        self.assertEqual(body.data, [b"ok"])
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))
        self.assertTrue(self.closed())

    def test_cancelBeforeHead(self) -> None:
        """
        Cancelling before the head aborts the connection and fails with
        C{ResponseNeverReceived([CancelledError])}, as Twisted's client.
        """
        results = self.send()
        self.requestDeferred.cancel()
        [failure] = results
        self.assertTrue(failure.check(ResponseNeverReceived))
        self.assertTrue(failure.value.reasons[0].check(CancelledError))
        self.assertTrue(self.closed())

    def test_neverReceived(self) -> None:
        """
        A connection that closes before any byte of the answer fails with
        C{ResponseNeverReceived}; after some, with C{ResponseFailed}.
        """
        results = self.send()
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(results[0].check(ResponseNeverReceived))
        self.setUp()
        results = self.send()
        self.conn.dataReceived(b"HTTP/1.1 200")
        self.conn.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(results[0].check(ResponseFailed))
        self.assertFalse(results[0].check(ResponseNeverReceived))

    def test_head(self) -> None:
        """
        A HEAD answer has no body, keeps its C{Content-Length} header, and
        its connection is not reused.
        """
        results = self.send(b"HEAD")
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        response = results[0]
        self.assertEqual(response.length, 0)
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"10"])
        self.assertEqual(self.idle, [])

    def test_idleBytesClose(self) -> None:
        """
        Bytes on an idle connection make it unusable.
        """
        self.conn.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(self.closed())
        self.assertFalse(self.conn.usable)
