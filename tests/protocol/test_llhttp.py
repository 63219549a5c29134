"""
The request-head parser on llhttp (L{ollama_proxy.protocol.llhttp}): heads
cut out of a byte stream at any split, twisted.web's limits and framing
rules, llhttp's stricter refusals, and the pinned C{httptools} releases.
(What a whole channel does with them is compared against twisted.web in
C{tests.web.test_fastchannel}.)
"""

from __future__ import annotations

import os
import tomllib
from importlib.metadata import version

from hypothesis import given, strategies as st
from packaging.requirements import Requirement
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.llhttp import (
    MAX_HEAD,
    MAX_HEADERS,
    BadRequest,
    RequestHead,
    RequestHeadParser,
)

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
