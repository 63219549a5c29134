"""
Tests for L{ollama_proxy.protocol.llhttp}: the response parser against
Twisted's own client parser (C{HTTP11ClientProtocol} over a
C{StringTransport}, as Twisted's tests drive it), fed the same bytes at any
split.  Where the two may differ is the module docstring's list (llhttp rejects,
Twisted accepts; each is a smuggling or desync vector, see the module's
docstring); everywhere else the decision and the body bytes are the same.

The request-head parser (L{RequestHeadParser}): heads cut out of a byte
stream at any split, twisted.web's limits and framing rules, llhttp's
stricter refusals (what a whole server channel does with them is compared
against twisted.web's in C{tests.web.test_fastchannel}); and the pinned
C{httptools} releases.
"""

from __future__ import annotations

import os
import tomllib
from importlib.metadata import version
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from ollama_proxy.protocol.llhttp import (
    MAX_HEAD,
    MAX_HEADERS,
    BadRequest,
    RequestHead,
    RequestHeadParser,
    MAX_RESPONSE_HEAD,
    MAX_RESPONSE_HEADERS,
    MAX_RESPONSE_LINE,
    MAX_QUIET,
    ResponseBody,
    ResponseEnd,
    ResponseHead,
    ResponseParser,
    ResponseRejected,
)

Outcome = tuple[Any, ...]


def twistedOutcome(parts: list[bytes], method: bytes = b"GET") -> Outcome:
    """
    Feed Twisted's client protocol C{parts}, then close the connection.

    @return: C{("accept", code, body)} or C{("reject",)}.
    """
    from twisted.web._newclient import HTTP11ClientProtocol, Request

    transport = StringTransport()
    quiet: list[object] = []
    proto = HTTP11ClientProtocol(quiet.append)
    proto.makeConnection(transport)
    d = proto.request(Request(method, b"/", Headers({b"host": [b"x"]}), None, persistent=True))
    out: dict[str, Any] = {"code": None, "body": [], "end": None, "failed": False}

    class Body(Protocol):
        def dataReceived(self, data: bytes) -> None:
            out["body"].append(data)

        def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # type: ignore[assignment]
            out["end"] = reason

    def got(response: Any) -> None:
        out["code"] = response.code
        response.deliverBody(Body())

    def bad(reason: Failure) -> None:
        out["failed"] = True

    d.addCallbacks(got, bad)
    for part in parts:
        if quiet or transport.disconnecting:
            break
        proto.dataReceived(part)
    if not quiet:
        proto.connectionLost(Failure(ConnectionDone()))
    end = out["end"]
    if out["failed"] or end is None or not end.check(ResponseDone, _potential()):
        return ("reject",)
    return ("accept", out["code"], b"".join(out["body"]))


def _potential() -> type[Exception]:
    from twisted.web.client import PotentialDataLoss

    return PotentialDataLoss


def ourOutcome(parts: list[bytes], method: bytes = b"GET") -> Outcome:
    """
    Feed L{ResponseParser} C{parts}, then the end of the connection.

    @return: as L{twistedOutcome}.
    """
    parser = ResponseParser(method)
    code, body, ended = None, [], None
    for part in parts:
        for event in parser.feed(part):
            if isinstance(event, ResponseHead):
                code = event.code
            elif isinstance(event, ResponseBody):
                body.append(event.data)
            elif isinstance(event, ResponseEnd):
                ended = True
            elif isinstance(event, ResponseRejected):
                return ("reject",)
        if ended:
            break
    if not ended:
        end = parser.eof()
        if not isinstance(end, ResponseEnd):
            return ("reject",)
    return ("accept", code, b"".join(body))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    @return: C{data} cut at the given offsets.
    """
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


STATUS = [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200",
          b"HTTP/1.1 500 Internal Server Error", b"HTTP/1.1 204 No Content",
          b"HTTP/1.1 304 Not Modified"]
STRICTER_STATUS = [b"FOO/1.1 200 OK", b"HTTP/1.1 +200 OK", b"HTTP/1.1 2_00 OK", b"HTTP/11 200 OK"]

PLAIN_HEADERS = [b"Content-Type: application/json", b"X-Request-Id: abc",
                 b"Server: fake", b"Date: Sun, 06 Dec 2026 10:00:00 GMT",
                 b"X-Big: " + b"v" * 10000, b"Connection: keep-alive", b"X-A:1",
                 b"X-A:   1   ", b"X-A: caf\xc3\xa9", b"X-A: a\tb", b"X-A:", b"X Y: 1", b": x",
                 b"NoColon", b"X-A\t: 1", b"Connection: close, keep-alive"]
CONTROL = [b"X-A: a\x00b", b"X-A: a\x01b", b"X-A: a\x7fb"]
OVERSIZED = [b"X-Huge: " + b"v" * 20000]

CHUNK_LINES = [b"%x", b"%X", b"%x;a=b", b"%x;name", b"0%x", b"%x;a=\"q\""]
BAD_CHUNK_LINES = [b"%x ", b" %x", b"-%x", b"0x%x", b"%xg", b"%x\n"]


@st.composite
def responses(draw: Any) -> tuple[bytes, bool, bytes]:
    """
    A response from the pieces that matter for framing, with hazards.

    @return: the bytes, whether they hold a construct llhttp is documented
        to refuse where Twisted accepts, and the request's method.
    """
    stricter = False
    method = draw(st.sampled_from([b"GET"] * 5 + [b"POST"] * 4 + [b"HEAD"]))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    if draw(st.integers(0, 9)) == 0:
        status = draw(st.sampled_from(STRICTER_STATUS))
        stricter = True
    else:
        status = draw(st.sampled_from(STATUS))
    headers = draw(st.lists(st.sampled_from(PLAIN_HEADERS + OVERSIZED), max_size=3))
    if draw(st.integers(0, 19)) == 0:
        # Control characters in a value: llhttp refuses them.
        headers.append(draw(st.sampled_from(CONTROL)))
        stricter = True
    body = draw(st.binary(max_size=48))
    framing = draw(st.sampled_from(["length", "chunked", "close", "none"]))
    noBody = method == b"HEAD" or b" 204 " in status or b" 304 " in status
    tail = b""
    if framing == "length":
        length = len(body) + draw(st.sampled_from([0, 0, 0, 2, -1]) if body else st.just(0))
        cl = [b"Content-Length: %d" % length]
        how = draw(st.integers(0, 5))
        if how == 1:
            cl.append(cl[0])
            stricter = True
        elif how == 2:
            cl.append(b"Content-Length: %d" % (length + 1))
            # Twisted reads no framing header of a response without a
            # body; a conflicting length is refused all the same.
            stricter = stricter or noBody
        elif how == 3:
            cl = [b"Content-Length: %d, %d" % (length, length)]
            stricter = True
        elif how == 4:
            cl = [draw(st.sampled_from([b"Content-Length: x%d", b"Content-Length: +%d",
                                        b"Content-Length: %d ", b"Content-Length: 0%d",
                                        b"Content-Length: %d\t"])) % length]
            stricter = stricter or noBody
        headers += cl
        encoded = body
    elif framing == "chunked":
        headers.append(draw(st.sampled_from(
            [b"Transfer-Encoding: chunked"] * 10 + [b"Transfer-Encoding: gzip, chunked",
                                                  b"Transfer-Encoding: gzip",
                                                  b"Transfer-Encoding: Chunked",
                                                  b"Transfer-Encoding:  chunked ",
                                                  b"Transfer-Encoding: chunked, chunked"])))
        if draw(st.integers(0, 9)) == 0:
            headers.append(b"Content-Length: %d" % len(body))
            stricter = True
        pieces, pos = [], 0
        while pos < len(body):
            n = draw(st.integers(1, len(body) - pos))
            if draw(st.integers(0, 19)) == 0:
                line = draw(st.sampled_from(BAD_CHUNK_LINES)) % n
            else:
                line = draw(st.sampled_from(CHUNK_LINES)) % n
            crlf = b"\r\n" if draw(st.integers(0, 29)) else draw(st.sampled_from([b"\n", b"xx", b""]))
            pieces.append(line + b"\r\n" + body[pos:pos + n] + crlf)
            pos += n
        trailer = draw(st.sampled_from([b"", b"X-Trailer: 1\r\n", b"X-T: a\r\nY-T: b\r\n"]))
        last = draw(st.sampled_from([b"0", b"000", b"0;ext=1"]))
        encoded = b"".join(pieces) + last + b"\r\n" + trailer + b"\r\n"
    elif framing == "close":
        encoded = body
    else:
        encoded = b""
    if draw(st.integers(0, 9)) == 0:
        # obs-fold: a continuation line.
        headers.insert(0, b"X-Folded: a" + eol + b" b")
        stricter = True
    head = status + eol + b"".join(h + eol for h in headers) + eol
    if draw(st.integers(0, 9)) == 0:
        head = b"HTTP/1.1 100 Continue" + eol + eol + head
    data = head + encoded + tail
    if draw(st.integers(0, 4)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    return data, stricter, method


REUSABLE = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\nContent-Length: 0\n\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
]
"""Complete keep-alive responses, after which a parser may be reset."""


class ResponseParserEquivalenceTests(SynchronousTestCase):
    """
    L{ResponseParser} decides as Twisted's client parser does.
    """

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
    @given(responses(), st.lists(st.integers(0, 1 << 20), max_size=6))
    def test_sameDecisionAnySplit(self, case: tuple[bytes, bool, bytes], cuts: list[int]) -> None:
        """
        Same accept/reject decision, status and body bytes, whatever the
        split; where a construct from the documented list is present, llhttp may only
        be the stricter one.
        """
        data, stricter, method = case
        parts = split(data, cuts)
        theirs = twistedOutcome(parts, method)
        ours = ourOutcome(parts, method)
        if stricter and ours == ("reject",):
            return
        self.assertEqual(ours, theirs, data[:400])

    def test_headHasNoBody(self) -> None:
        """
        The answer to a C{HEAD} ends after its head, whatever its
        C{Content-Length} says.
        """
        data = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        self.assertEqual(ourOutcome([data], b"HEAD"), twistedOutcome([data], b"HEAD"))
        self.assertEqual(ourOutcome([data], b"HEAD"), ("accept", 200, b""))

    def test_noBodyCodes(self) -> None:
        """
        204 and 304 have no body; a 1xx is skipped, as Twisted does.
        """
        for data in (b"HTTP/1.1 204 No Content\r\n\r\n",
                     b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                     b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"):
            self.assertEqual(ourOutcome([data]), twistedOutcome([data]), data)

    def test_stricterCases(self) -> None:
        """
        Each documented stricter case: Twisted accepts, llhttp rejects.
        """
        for data in (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 3\r\n\r\nabc",
            b"FOO/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        ):
            self.assertEqual(twistedOutcome([data])[0], "accept", data)
            self.assertEqual(ourOutcome([data]), ("reject",), data)

    def test_longChunkExtension(self) -> None:
        """
        The one documented looser case: a chunk extension past Twisted's
        1,024-byte size-line bound is skipped by llhttp without holding it,
        and the body is the same; past L{MAX_QUIET} bytes without chunk data
        (fed in reads) it is refused, as Twisted refuses it.
        """
        def chunked(extension: int) -> bytes:
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=" + b"x" * extension
                    + b"\r\nabc\r\n0\r\n\r\n")

        self.assertEqual(twistedOutcome([chunked(2000)]), ("reject",))
        self.assertEqual(ourOutcome(split(chunked(2000), [60, 600, 1200])), ("accept", 200, b"abc"))
        long = chunked(200000)
        self.assertEqual(twistedOutcome([long]), ("reject",))
        self.assertEqual(ourOutcome(split(long, list(range(0, len(long), 4096)))), ("reject",))

    def test_tooManyHeaders(self) -> None:
        """
        More than L{MAX_RESPONSE_HEADERS} header lines are refused (Twisted's client
        has no count limit; its server's is the same number).
        """
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_RESPONSE_HEADERS + 1))
        data = b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n"
        self.assertEqual(ourOutcome([data]), ("reject",))

    def test_headBounded(self) -> None:
        """
        A head larger than L{MAX_RESPONSE_HEAD} is refused as it arrives, in lines
        under the line limit or one value dripped in small reads, so
        nothing past the bound is held.
        """
        lines = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 15000) for i in range(20))
        data = b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 0\r\n\r\n"
        self.assertEqual(ourOutcome(split(data, list(range(0, len(data), 4096)))), ("reject",))
        parser = ResponseParser(b"GET")
        events = parser.feed(b"HTTP/1.1 200 OK\r\nX: ")
        fed = 0
        while not events:
            events = parser.feed(b"v" * 1024)
            fed += 1024
        self.assertIsInstance(events[-1], ResponseRejected)
        self.assertLessEqual(fed, MAX_RESPONSE_HEAD + MAX_RESPONSE_LINE)

    def test_trailerBounded(self) -> None:
        """
        A trailer line that never ends (dripped after the last chunk) is
        refused within L{MAX_QUIET} bytes, as Twisted refuses it past its
        64 KiB, so the parser never holds more.
        """
        parser = ResponseParser(b"GET")
        parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        events = parser.feed(b"2\r\nok\r\n0\r\nX-T: ")
        fed = 0
        while not any(isinstance(e, ResponseRejected) for e in events):
            events = parser.feed(b"v" * 4096)
            fed += 4096
        self.assertLessEqual(fed, MAX_QUIET + 4096)
        data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: "
                + b"v" * (MAX_QUIET + 10) + b"\r\n\r\n")
        self.assertEqual(twistedOutcome([data]), ("reject",))

    def test_switchingProtocols(self) -> None:
        """
        A 101 (never asked for) is refused, not taken for another protocol.
        """
        data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nabc"
        self.assertEqual(ourOutcome([data]), ("reject",))

    def test_bareLineFeeds(self) -> None:
        """
        A head in bare LFs is read, as Twisted reads it; a chunk whose
        data ends in a bare LF is refused, as Twisted refuses it.
        """
        good = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\r\nok\r\n0\r\n\r\n"
        bad = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\r\nok\n0\r\n\r\n"
        self.assertEqual(ourOutcome([good]), ("accept", 200, b"ok"))
        self.assertEqual(twistedOutcome([good]), ("accept", 200, b"ok"))
        self.assertEqual(ourOutcome([bad]), ("reject",))
        self.assertEqual(twistedOutcome([bad]), ("reject",))

    def test_oversizedLine(self) -> None:
        """
        A header line over 16 KiB is refused, by both, even split.
        """
        data = b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n\r\n"
        for parts in ([data], split(data, [30, 100, 17000])):
            self.assertEqual(ourOutcome(parts), ("reject",))
            self.assertEqual(twistedOutcome(parts), ("reject",))

    def test_reuse(self) -> None:
        """
        A keep-alive response may be followed by another request; bytes
        after it, an HTTP/1.0 answer or C{Connection: close} end the
        connection's use.
        """
        def reusable(data: bytes) -> bool:
            events = ResponseParser(b"GET").feed(data)
            end = events[-1]
            assert isinstance(end, ResponseEnd), events
            return end.reusable

        self.assertTrue(reusable(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        self.assertFalse(reusable(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"))
        self.assertFalse(reusable(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokjunk"))
        self.assertFalse(reusable(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        self.assertFalse(reusable(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(REUSABLE), responses(), st.lists(st.integers(0, 1 << 20), max_size=4),
           st.lists(st.integers(0, 1 << 20), max_size=6))
    def test_resetIsFresh(self, first: bytes, case: tuple[bytes, bool, bytes],
                          firstCuts: list[int], cuts: list[int]) -> None:
        """
        A parser L{ResponseParser.reset} after a complete keep-alive
        response (any split) parses the next response exactly as a new
        parser does: the same events (head, headers, length, body, end and
        its reuse) and the same end of connection, for every response the
        equivalence test draws.
        """
        data, _, method = case
        reused = ResponseParser(b"POST")
        firstEvents = [e for part in split(first, firstCuts) for e in reused.feed(part)]
        self.assertTrue(reused.reusable, firstEvents)
        reused.reset(method)
        fresh = ResponseParser(method)
        parts = split(data, cuts)
        for part in parts:
            self.assertEqual(reused.feed(part), fresh.feed(part), data[:400])
        self.assertEqual(reused.eof(), fresh.eof())
        self.assertEqual(reused.untilClose, fresh.untilClose)
        self.assertEqual(reused.everReceived, fresh.everReceived)

    def test_resetOnlyAfterReusable(self) -> None:
        """
        Only a complete keep-alive response's parser may be reset: not one
        mid-response, refused, cut short, followed by bytes, closing the
        connection, or answering a C{HEAD} (llhttp stopped after its head).
        """
        cases = [
            (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok"),
            (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok"),
            (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"),
            (b"GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"),
            (b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            (b"GET", b"HTTP/1.1 200 OK\r\n\r\nuntil close"),
            (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
            (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokzz"),
        ]
        for method, data in cases:
            parser = ResponseParser(method)
            parser.feed(data)
            self.assertFalse(parser.reusable, data)
            self.assertRaises(ValueError, parser.reset, b"GET")
        cut = ResponseParser(b"GET")
        cut.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
        cut.eof()
        self.assertRaises(ValueError, cut.reset, b"GET")
        # Complete, then bytes in a later read; complete, then closed.
        for after in (lambda p: p.feed(b"H"), lambda p: p.eof()):
            parser = ResponseParser(b"GET")
            parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.assertTrue(parser.reusable)
            after(parser)
            self.assertFalse(parser.reusable)
            self.assertRaises(ValueError, parser.reset, b"GET")

    def test_resetThreeTimes(self) -> None:
        """
        One parser for a keep-alive connection's responses in turn, of
        every framing, each read whole or byte by byte.
        """
        parser = ResponseParser(b"GET")
        answers = [
            (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, b"hello"),
            (b"POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", 201, b"abc"),
            (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
            (b"POST", b"HTTP/1.1 500 Oops\nContent-Length: 2\n\nno", 500, b"no"),
            (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", 304, b""),
            (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok"),
        ]
        for i, (method, data, code, body) in enumerate(answers * 2):
            if i:
                parser.reset(method)
            parts = [data[j:j + 1] for j in range(len(data))] if i % 2 else [data]
            events = [e for part in parts for e in parser.feed(part)]
            heads = [e for e in events if isinstance(e, ResponseHead)]
            self.assertEqual([h.code for h in heads], [code], events)
            self.assertEqual(b"".join(e.data for e in events if isinstance(e, ResponseBody)), body)
            self.assertEqual(events[-1], ResponseEnd(True))
        # A chunk line with a bare LF is refused after a head that ended
        # with bare LFs, on a reused parser too (the leniency is the head's).
        parser.reset(b"GET")
        events = parser.feed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n0\n\n")
        self.assertIsInstance(events[-1], ResponseRejected)

    def test_chunksJoinedPerRead(self) -> None:
        """
        All the chunks of one read come out as one body event.
        """
        data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
            b"3\r\nab%d\r\n" % (i % 10) for i in range(100))
        events = ResponseParser(b"GET").feed(data)
        self.assertEqual([type(e) for e in events], [ResponseHead, ResponseBody])
        body = events[1]
        assert isinstance(body, ResponseBody)
        self.assertEqual(body.data, b"".join(b"ab%d" % (i % 10) for i in range(100)))


POST = b"POST /api/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-Pad:  v \t\r\n\r\nok"


def parse(data: bytes) -> tuple[RequestHead, bytes] | None:
    return RequestHeadParser().feed(data)


class RequestHeadParserTests(SynchronousTestCase):
    """
    One head at a time, as the channel feeds it.
    """

    def test_head(self) -> None:
        """
        The line, the headers in order (values without surrounding
        whitespace), the framing and the bytes after the head.
        """
        parsed = parse(POST + b"GET")
        assert parsed is not None
        head, rest = parsed
        self.assertEqual(
            head,
            RequestHead(b"POST", b"/api/chat?x=1", b"HTTP/1.1",
                        [(b"Host", b"a"), (b"Content-Length", b"2"), (b"X-Pad", b"v")], 2),
        )
        self.assertEqual(rest, b"okGET")

    @given(st.lists(st.integers(0, len(POST)), max_size=8))
    def test_anySplit(self, cuts: list[int]) -> None:
        """
        Fed in any pieces, the same head and rest come out once the empty
        line is in, and nothing before.
        """
        parser = RequestHeadParser()
        points = sorted(set(cuts))
        result = None
        for a, b in zip([0, *points], [*points, len(POST)]):
            if result is None:
                result = parser.feed(POST[a:b])
                continue
            result = (result[0], result[1] + POST[a:b])
        self.assertEqual(result, parse(POST))

    def test_framing(self) -> None:
        """
        twisted.web's choice: no header is 0, chunked (any case) is
        C{None}, digits are the length; anything else, or two framing
        headers, is refused.
        """
        for headers, length in ((b"", 0), (b"Transfer-Encoding: Chunked\r\n", None),
                                (b"Content-Length: 007\r\n", 7)):
            parsed = parse(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
            assert parsed is not None
            self.assertEqual(parsed[0].length, length)
        for bad in (b"Content-Length: 1, 1", b"Content-Length: +1", b"Content-Length: ",
                    b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: identity",
                    b"Content-Length: 1\r\nContent-Length: 1",
                    b"Content-Length: 1\r\nTransfer-Encoding: chunked",
                    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                    b"Content-Length: 99999999999999999999999"):
            self.assertRaises(BadRequest, parse, b"GET / HTTP/1.1\r\n" + bad + b"\r\n\r\n")

    def test_requestLine(self) -> None:
        """
        Twisted's request line: any token method (llhttp's fixed list is not
        consulted), single spaces, a target of bytes 33-176, HTTP/1.0 or 1.1.
        """
        for line in (b"FOO /x HTTP/1.1", b"get /x HTTP/1.0", b"CONNECT h:443 HTTP/1.1",
                     b"GET http://h/x HTTP/1.1", b"GET /\x7f\xb0 HTTP/1.1"):
            self.assertIsNotNone(parse(line + b"\r\n\r\n"), line)
        for line in (b"GET  /x HTTP/1.1", b"GET /x", b"G(T /x HTTP/1.1", b"GET /\xb1 HTTP/1.1",
                     b"GET /x HTTP/2.0", b" /x HTTP/1.1", b"GET /x HTTP/1.1 ", b""):
            self.assertRaises(BadRequest, parse, line + b"\r\n\r\n")

    def test_leadingEmptyLine(self) -> None:
        """
        One CRLF before the request line is skipped (twisted.web's allowance
        for a client's stray CRLF after a body); two are an empty request
        line; a bare LF is not a line end.
        """
        self.assertIsNotNone(parse(b"\r\nGET / HTTP/1.1\r\n\r\n"))
        parser = RequestHeadParser()
        self.assertIsNone(parser.feed(b"\r"))
        self.assertIsNotNone(parser.feed(b"\nGET / HTTP/1.1\r\n\r\n"))
        self.assertRaises(BadRequest, parse, b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        self.assertRaises(BadRequest, parse, b"\nGET / HTTP/1.1\r\n\r\n")

    def test_sizeLimits(self) -> None:
        """
        The line plus header lines, CRLFs not counted, may be L{MAX_HEAD}
        bytes and no more; a line still without its CRLF is refused at
        C{MAX_HEAD + 2} bytes, before the rest arrives.
        """
        line = b"GET / HTTP/1.1"
        name = b"X: "
        fits = line + b"\r\n" + name + b"v" * (MAX_HEAD - len(line) - len(name)) + b"\r\n\r\n"
        self.assertIsNotNone(parse(fits))
        self.assertRaises(BadRequest, parse, fits.replace(b"X: ", b"X: v"))
        parser = RequestHeadParser()
        self.assertIsNone(parser.feed(b"GET / HTTP/1.1\r\nX: " + b"v" * (MAX_HEAD - 2)))
        self.assertRaises(BadRequest, parser.feed, b"v")
        self.assertRaises(BadRequest, RequestHeadParser().feed, b"G" * (MAX_HEAD + 2))

    def test_headerCount(self) -> None:
        """
        L{MAX_HEADERS} header fields are accepted, one more is refused.
        """
        def head(count: int) -> bytes:
            return b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: v\r\n" % i for i in range(count)) + b"\r\n"

        parsed = parse(head(MAX_HEADERS))
        assert parsed is not None
        self.assertEqual(len(parsed[0].headers), MAX_HEADERS)
        self.assertRaises(BadRequest, parse, head(MAX_HEADERS + 1))

    def test_stricterThanTwisted(self) -> None:
        """
        What llhttp refuses and twisted.web accepted: obs-fold, control
        characters in a value, a bare LF, a bad byte refused as soon as it
        arrives.
        """
        for header in (b"A: b\r\n c", b"A: b\x01", b"A: b\x7f", b"A: b\nB: c"):
            self.assertRaises(BadRequest, parse, b"GET / HTTP/1.1\r\n" + header + b"\r\n\r\n")
        self.assertRaises(BadRequest, RequestHeadParser().feed, b"GET / HTTP/1.1\r\nBad Name")

    def test_upgradeIgnored(self) -> None:
        """
        C{Connection: upgrade} stops llhttp at the end of the head; the body
        is still framed by its C{Content-Length}, as twisted.web does.
        """
        parsed = parse(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                       b"Content-Length: 2\r\n\r\nok")
        assert parsed is not None
        self.assertEqual((parsed[0].length, parsed[1]), (2, b"ok"))

    def test_reset(self) -> None:
        """
        After L{reset}, the next head parses on a fresh llhttp state, even
        after a body or a refusal.
        """
        parser = RequestHeadParser()
        for _ in range(3):
            self.assertIsNotNone(parser.feed(POST))
            parser.reset()
        self.assertRaises(BadRequest, parser.feed, b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n")
        parser.reset()
        self.assertIsNotNone(parser.feed(b"GET / HTTP/1.1\r\n\r\n"))


class VersionTests(SynchronousTestCase):
    """
    C{httptools} is bounded on both sides, and the installed release is
    within them.
    """

    def requirement(self) -> Requirement:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(os.path.join(root, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)["project"]
        [found] = [r for r in map(Requirement, project["dependencies"]) if r.name == "httptools"]
        return found

    def test_bounds(self) -> None:
        """
        At least 0.6.4 (llhttp 9's strict defaults, C{set_dangerous_leniencies}),
        below 0.10 (a release not yet tried).
        """
        self.assertEqual(str(self.requirement().specifier), "<0.10,>=0.6.4")

    def test_installedWithin(self) -> None:
        """
        The installed release satisfies them (a newer one is a failing
        test, not a silent change of parser).
        """
        self.assertTrue(self.requirement().specifier.contains(version("httptools")))
