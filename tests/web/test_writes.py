"""
Tests for L{ollama_proxy.web.writes}: a body's later writes on
L{FastChannel} are one channel call each, with twisted.web's bytes, counts
and checks.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ollama_proxy.web.site import makeSite
from ollama_proxy.web.writes import FastWriteRequest
from tests.web.test_fastchannel import CountingTransport
from tests.web.test_ready import withoutDate


class Held(Resource):
    """
    A leaf that keeps each request for the test to answer.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Request] = []

    def render(self, request: Request) -> Any:
        request.setHeader(b"Content-Type", b"application/x-ndjson")
        self.pending.append(request)
        return NOT_DONE_YET


def connect(site: Any, resource: Held, head: bytes) -> tuple[Any, CountingTransport, Request]:
    """
    @return: a new connection's channel, its transport and the request
        C{head} (one request's head) made on it.
    """
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = CountingTransport()
    channel.makeConnection(transport)
    channel.dataReceived(head)
    return channel, transport, resource.pending.pop()


def answer(site: Any, resource: Held, head: bytes, pieces: list[bytes]) -> tuple[bytes, int]:
    """
    @return: the bytes a request got for C{pieces} written one by one and
        finished (without the C{Date}), and the request's C{sentLength}.
    """
    _, transport, request = connect(site, resource, head)
    for piece in pieces:
        request.write(piece)
    request.finish()
    return withoutDate(transport.value()), request.sentLength


HEADS = [
    b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /s HTTP/1.0\r\nHost: a\r\n\r\n",
    b"HEAD /s HTTP/1.1\r\nHost: a\r\n\r\n",
]


class SameAsTwistedWebTests(SynchronousTestCase):
    """
    Whatever is written, the client gets twisted.web's bytes and the
    access line its size.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"\r\n0\r\n\r\n",
                                                                     b"x" * 70_000])),
                    max_size=6),
           st.sampled_from(HEADS))
    def test_sameBytes(self, pieces: list[bytes], head: bytes) -> None:
        """
        Any writes (empty ones, one that spells a chunk terminator, one over
        the channel's joining size), chunked (HTTP/1.1), by length
        (HTTP/1.0, closed) or none (C{HEAD}): the same bytes and
        C{sentLength} as twisted.web's own site and channel, and as the
        proxy's site on twisted.web's channel.
        """
        twisted, theirs = Held(), Held()
        twistedSite = Site(twisted, reactor=MemoryReactorClock())
        twistedSite.log = lambda request: None  # type: ignore[method-assign]
        expected = answer(twistedSite, twisted, head, pieces)
        fast = Held()
        self.assertEqual(answer(makeSite(fast, MemoryReactorClock(), headerTimeout=None),
                                fast, head, pieces), expected)
        self.assertEqual(
            answer(makeSite(theirs, MemoryReactorClock(), headerTimeout=None,
                            httpParser="twisted"), theirs, head, pieces), expected)


class LaterWritesTests(SynchronousTestCase):
    """
    A started chunked answer's writes on L{FastChannel}.
    """

    def setUp(self) -> None:
        self.resource = Held()
        self.site = makeSite(self.resource, MemoryReactorClock(), headerTimeout=None)
        self.channel, self.transport, self.request = connect(self.site, self.resource, HEADS[0])
        self.assertIsInstance(self.request, FastWriteRequest)
        self.request.write(b"first\n")

    def test_oneTransportWriteEach(self) -> None:
        """
        Each later write is one transport write: its chunk, framed.
        """
        before = self.transport.writes
        for line in (b"a\n", b"bb\n", b"c" * 300):
            start = len(self.transport.value())
            self.request.write(line)
            self.assertEqual(self.transport.value()[start:], b"%x\r\n%s\r\n" % (len(line), line))
        self.assertEqual(self.transport.writes, before + 3)
        self.assertEqual(self.request.sentLength, len(b"first\n") + 2 + 3 + 300)

    def test_emptyWriteNothing(self) -> None:
        """
        An empty write sends nothing (an empty chunk would end the body).
        """
        sent = self.transport.value()
        self.request.write(b"")
        self.assertEqual(self.transport.value(), sent)

    def test_afterFinishRaises(self) -> None:
        """
        A write after C{finish} raises twisted.web's C{RuntimeError} and
        sends nothing.
        """
        self.request.finish()
        sent = self.transport.value()
        self.assertRaises(RuntimeError, self.request.write, b"late\n")
        self.assertEqual(self.transport.value(), sent)

    def test_goneClientDropped(self) -> None:
        """
        After the client hung up, writes are dropped without an error and
        not counted.
        """
        sent, length = self.transport.value(), self.request.sentLength
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.request.write(b"after\n")
        self.assertEqual(self.transport.value(), sent)
        self.assertEqual(self.request.sentLength, length)

    def test_pausedClientKeepsOrder(self) -> None:
        """
        A client that stopped reading (its transport paused the channel):
        the writes are still handed over in order, and the channel pauses
        the request's producer (the upstream read), as before.
        """
        paused: list[str] = []

        class Producer:
            def pauseProducing(self) -> None:
                paused.append("pause")

            def resumeProducing(self) -> None:
                paused.append("resume")

            def stopProducing(self) -> None:
                paused.append("stop")

        self.request.registerProducer(Producer(), True)
        self.channel.pauseProducing()
        self.assertEqual(paused, ["pause"])
        self.request.write(b"one\n")
        self.request.write(b"two\n")
        self.assertTrue(self.transport.value().endswith(b"4\r\none\n\r\n4\r\ntwo\n\r\n"))
        self.channel.resumeProducing()
        self.assertEqual(paused, ["pause", "resume"])
        self.request.unregisterProducer()
        self.request.finish()
        self.assertTrue(self.transport.value().endswith(b"0\r\n\r\n"))


class FirstWriteTests(SynchronousTestCase):
    """
    The first write of a chunked answer, then the next.
    """

    def test_headWithFirstBytes(self) -> None:
        """
        The head and the first bytes leave in one write, the next in one more.
        """
        resource = Held()
        site = makeSite(resource, MemoryReactorClock(), headerTimeout=None)
        _, transport, request = connect(site, resource, HEADS[0])
        request.write(b"first\n")
        self.assertEqual(transport.writes, 1)
        self.assertTrue(transport.value().endswith(b"Transfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n"))
        request.write(b"next\n")
        self.assertEqual(transport.writes, 2)
        request.finish()
        self.assertEqual(transport.writes, 3)
        self.assertTrue(transport.value().endswith(b"5\r\nnext\n\r\n0\r\n\r\n"))


def setCode(request: Request) -> None:
    request.setResponseCode(500)


def setReason(request: Request) -> None:
    request.setResponseCode(200, b"Fine")


def addHeader(request: Request) -> None:
    request.setHeader(b"X-Ollama-Proxy-Backend", b"b")


def appendValue(request: Request) -> None:
    # In place: the same list, one more value.
    request.responseHeaders.addRawHeader(b"Content-Type", b"text/plain")


def replaceType(request: Request) -> None:
    request.setHeader(b"Content-Type", b"application/json")


def setLength(request: Request) -> None:
    request.setHeader(b"Content-Length", b"6")


def removeType(request: Request) -> None:
    request.responseHeaders.removeHeader(b"Content-Type")


def setETag(request: Request) -> None:
    request.setETag(b"e")


def addCookie(request: Request) -> None:
    request.addCookie(b"k", b"v")


def setModified(request: Request) -> None:
    request.setLastModified(1_700_000_000)


def unchanged(request: Request) -> None:
    pass


CHANGES = [unchanged, setCode, setReason, addHeader, appendValue, replaceType, setLength,
           removeType, setETag, addCookie, setModified]


def prepared(site: Any, resource: Held, head: bytes, change: Any, pieces: list[bytes],
             prepare: bool) -> tuple[bytes, int, list[tuple[bytes, list[bytes]]]]:
    """
    @return: what L{answer} returns, and the response headers after, for a
        request whose head was prepared (C{prepare}), then changed by
        C{change} before C{pieces} were written.
    """
    _, transport, request = connect(site, resource, head)
    if prepare:
        assert isinstance(request, FastWriteRequest)
        request.prepareHead()
    change(request)
    for piece in pieces:
        request.write(piece)
    headers = [(name, list(values)) for name, values in request.responseHeaders.getAllRawHeaders()
               if name != b"Date"]
    request.finish()
    return withoutDate(transport.value()), request.sentLength, headers


class PreparedHeadTests(SynchronousTestCase):
    """
    L{FastWriteRequest.prepareHead}: a stream's head rendered when the
    backend's head arrives, used by the first write only if nothing it was
    made from changed; the client gets twisted.web's bytes either way.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"x" * 70_000])),
                    max_size=4),
           st.sampled_from(HEADS), st.sampled_from(CHANGES))
    def test_sameBytes(self, pieces: list[bytes], head: bytes, change: Any) -> None:
        """
        Prepared, then any change to the status, the reason or the headers
        (in place too), twisted.web's C{etag}, cookies, C{lastModified}, or
        none, then any writes: the same bytes, C{sentLength} and headers
        as twisted.web's own site, which prepares nothing.
        """
        twisted = Held()
        twistedSite = Site(twisted, reactor=MemoryReactorClock())
        twistedSite.log = lambda request: None  # type: ignore[method-assign]
        expected = prepared(twistedSite, twisted, head, change, pieces, prepare=False)
        fast = Held()
        self.assertEqual(prepared(makeSite(fast, MemoryReactorClock(), headerTimeout=None),
                                  fast, head, change, pieces, prepare=True), expected)

    def connect(self) -> tuple[Any, CountingTransport, FastWriteRequest]:
        resource = Held()
        channel, transport, request = connect(
            makeSite(resource, MemoryReactorClock(), headerTimeout=None), resource, HEADS[0])
        assert isinstance(request, FastWriteRequest)
        return channel, transport, request

    def test_used(self) -> None:
        """
        Unchanged, the prepared head is the one sent: the channel renders
        none, the head and the first bytes leave in one write, and nothing
        is sent or committed before it.
        """
        channel, transport, request = self.connect()
        request.prepareHead()
        self.assertEqual((transport.value(), request.startedWriting, request.chunked), (b"", 0, 0))
        self.assertFalse(request.responseHeaders.hasHeader(b"Transfer-Encoding"))
        rendered: list[bytes] = []
        channel.writeHeaders = lambda *a: rendered.append(a[1])
        request.write(b"first\n")
        self.assertEqual((rendered, transport.writes), ([], 1))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(transport.value().endswith(b"Transfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n"))

    def test_errorBeforeFirstByte(self) -> None:
        """
        An error status set after the head was prepared is the one sent.
        """
        _, transport, request = self.connect()
        request.prepareHead()
        request.setResponseCode(502)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"2")
        request.write(b"{}")
        request.finish()
        value = transport.value()
        self.assertTrue(value.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertNotIn(b"chunked", value)
        self.assertTrue(value.endswith(b"\r\n\r\n{}"))

    def test_notPrepared(self) -> None:
        """
        Nothing is prepared for an answer twisted.web would not chunk, or
        one already started.
        """
        for head in HEADS[2:]:
            resource = Held()
            _, _, request = connect(makeSite(resource, MemoryReactorClock(), headerTimeout=None),
                                    resource, head)
            assert isinstance(request, FastWriteRequest)
            request.prepareHead()
            self.assertIsNone(request._prepared)
        _, _, request = self.connect()
        request.write(b"a")
        request.prepareHead()
        self.assertIsNone(request._prepared)


def whole(site: Any, resource: Held, head: bytes, body: bytes, change: Any, fast: bool) -> tuple[bytes, int, int]:
    """
    @return: the bytes a request got for C{body} as its whole answer (with
        L{FastWriteRequest.writeWhole} if C{fast}, else by setting the two
        headers and writing, as twisted.web does) and finished, without the
        C{Date}; its C{sentLength}; and how many transport writes it took.
    """
    _, transport, request = connect(site, resource, head)
    change(request)
    if fast:
        assert isinstance(request, FastWriteRequest)
        request.writeWhole(b"application/json; charset=utf-8", body)
    else:
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
    request.finish()
    return withoutDate(transport.value()), request.sentLength, transport.writes


def _noChange(request: Request) -> None:
    pass


def _cookie(request: Request) -> None:
    request.addCookie(b"a", b"b")


def _status(code: int) -> Any:
    def change(request: Request) -> None:
        request.setResponseCode(code)
    return change


def _header(request: Request) -> None:
    request.setHeader(b"X-Other", b"1")


class WholeAnswerTests(SynchronousTestCase):
    """
    L{FastWriteRequest.writeWhole}: a whole answer of known length.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.one_of(st.binary(max_size=60), st.sampled_from([b"", b"x" * 70_000])),
           st.sampled_from(HEADS),
           st.sampled_from([_noChange, _cookie, _status(404), _status(204), _status(304), _header]))
    def test_sameBytes(self, body: bytes, head: bytes, change: Any) -> None:
        """
        Any body (empty, over the channel's joining size), any request
        (HTTP/1.1, C{Connection: close}, HTTP/1.0, C{HEAD}), any status
        (one without a body included), a cookie, another header: the same
        bytes and C{sentLength} as setting the headers and writing through
        twisted.web's own site and channel.
        """
        twisted = Held()
        twistedSite = Site(twisted, reactor=MemoryReactorClock())
        twistedSite.log = lambda request: None  # type: ignore[method-assign]
        expected = whole(twistedSite, twisted, head, body, change, False)[:2]
        fast = Held()
        self.assertEqual(whole(makeSite(fast, MemoryReactorClock(), headerTimeout=None),
                               fast, head, body, change, True)[:2], expected)

    def test_oneWrite(self) -> None:
        """
        The usual answer (HTTP/1.1, keep-alive, a JSON body) leaves in one
        transport write, head and body together; the request then counts as
        started and its size as sent.
        """
        resource = Held()
        site = makeSite(resource, MemoryReactorClock(), headerTimeout=None)
        out, sent, writes = whole(site, resource, HEADS[0], b'{"a":1}', _noChange, True)
        self.assertEqual(writes, 1)
        self.assertEqual(sent, 7)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertIn(b"Content-Length: 7\r\n", out)
        self.assertTrue(out.endswith(b'\r\n\r\n{"a":1}'), out)

    def test_goneClientNothing(self) -> None:
        """
        A client gone before the answer gets nothing, as with twisted.web's
        C{write}.
        """
        resource = Held()
        site = makeSite(resource, MemoryReactorClock(), headerTimeout=None)
        channel, transport, request = connect(site, resource, HEADS[0])
        before = transport.value()
        channel.connectionLost(Failure(ConnectionDone()))
        assert isinstance(request, FastWriteRequest)
        request.writeWhole(b"application/json", b"{}")
        self.assertEqual(transport.value(), before)
        self.assertEqual(request.sentLength, 0)

    def test_afterWritingTwisted(self) -> None:
        """
        After a first write, the rest goes as twisted.web's C{write} sends
        it (the headers then set are not sent: they cannot be).
        """
        resource = Held()
        site = makeSite(resource, MemoryReactorClock(), headerTimeout=None)
        _, transport, request = connect(site, resource, HEADS[0])
        request.write(b"a")
        assert isinstance(request, FastWriteRequest)
        request.writeWhole(b"application/json", b"bc")
        request.finish()
        self.assertEqual(withoutDate(transport.value()).split(b"\r\n\r\n", 1)[1], b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n")

