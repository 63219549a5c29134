# -*- test-case-name: tests.protocol.test_llhttp -*-
"""
The one module that imports C{httptools} (llhttp, Node's HTTP/1.1 parser):
typed results out of bytes, no Twisted, no I/O.

Request side (L{RequestHeadParser}): the head of a request the server
receives, parsed so that it is accepted or refused exactly as
C{twisted.web.http.HTTPChannel} does (the twisted.web channel it replaces in
L{ollama_proxy.web.fastchannel}); where llhttp is stricter than Twisted, the
stricter answer is kept (see L{RequestHeadParser}).  The per-header work
that twisted.web does in Python, line by line (split, strip, validate, one
call per line), is one C pass here.

The head is cut out of the byte stream before llhttp sees it: the request
line ends at the first CRLF, the head at the first empty line (CRLF CRLF),
so llhttp never reads past the head and the caller knows exactly where the
body, or the next pipelined request, starts.  The request line is checked in
Python with Twisted's own rules (its grammar differs from llhttp's: any
token is a method for Twisted, llhttp knows a fixed list), and llhttp is
handed a fixed C{GET / HTTP/1.1} line before the header lines: it validates
the header section (tokens, value bytes, CRLF endings, Content-Length and
Transfer-Encoding conflicts).  Bodies are framed by the caller.

Version bounds: C{pyproject.toml} allows C{httptools>=0.6.4,<0.10} (the
releases with C{set_dangerous_leniencies}, i.e. llhttp 9's strict
defaults); C{tests.protocol.test_llhttp} pins them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httptools

MAX_HEAD = 16384
"""Bytes of a request line plus its header lines, line endings not counted
(twisted.web's C{HTTPChannel.totalHeadersSize}, and its C{MAX_LENGTH} for
one line)."""

MAX_HEADERS = 500
"""Header fields per request (twisted.web's C{HTTPChannel.maxHeaders})."""

_LINE = b"GET / HTTP/1.1\r\n"
"""The request line llhttp is given: the real one is checked here."""

_VERSIONS = frozenset({b"HTTP/1.1", b"HTTP/1.0"})

_COMMON_METHODS = frozenset({b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"})

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
"""RFC 9110 C{token}: what Twisted accepts as a method."""

_TARGET_BYTES = bytes(range(33, 177))
"""The bytes twisted.web accepts in a request-target: C{33 <= c <= 176}
(its check reads C{c > 176}, an octal C{0o176} written in decimal; the
site's own target grammar, L{ollama_proxy.protocol.target}, refuses what
is not ASCII after it)."""


class BadRequest(Exception):
    """
    The head cannot be accepted (a 400, as twisted.web answers).
    """


@dataclass(slots=True)
class RequestHead:
    """
    A request's line and header fields, as twisted.web hands them to a
    C{Request}.

    @ivar method: the method token.
    @ivar target: the request-target, as sent.
    @ivar version: C{HTTP/1.1} or C{HTTP/1.0}.
    @ivar headers: the header fields in order, names as sent, values with
        surrounding spaces and tabs removed.
    @ivar length: the body's C{Content-Length}, C{0} with no framing
        header, C{None} for C{Transfer-Encoding: chunked}.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    length: int | None


class _TooManyHeaders(Exception):
    """
    Raised inside llhttp's callback to stop it at header L{MAX_HEADERS} + 1.
    """


class RequestHeadParser:
    """
    Incremental parser of one request head at a time.

    L{feed} takes the bytes as they arrive and returns the head with the
    bytes after it once the empty line is in; call L{reset} before the next
    request's first byte.  A refused head raises L{BadRequest}.

    Decisions, and where they come from:

      - twisted.web's, checked here: one empty line before the request line
        is skipped (a second is an empty request line); the request line is
        C{method SP target SP version} with single spaces, a token method,
        a target of bytes 33-176, C{HTTP/1.0} or C{HTTP/1.1}; the request
        line plus header lines (CRLFs not counted) at most L{MAX_HEAD}
        bytes, a line without its CRLF refused once it reaches
        C{MAX_HEAD + 2} bytes; at most L{MAX_HEADERS} header fields; a
        C{Content-Length} of digits only; C{Transfer-Encoding} exactly
        C{chunked} (any case); at most one framing header.
      - llhttp's, stricter than twisted.web and kept (each is a request a
        front proxy may read differently, so refusing it is the safe
        answer; C{tests.web.test_fastchannel} lists them): obs-fold
        continuation lines (RFC 9112 allows a 400), control characters
        other than HTAB (and DEL) in a header value, C{Transfer-Encoding:
        identity} (Twisted ignored it), a C{Content-Length} of 2**64 or
        more (400 here; Twisted's request refused it with 413), and a bad
        header byte is refused when it arrives rather than at the end of
        its line.
    """

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self.reset()

    def reset(self) -> None:
        """
        Start a new request head.
        """
        self._buffer = b""
        self._skipped = False
        self._lineEnd = -1
        self._fed = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._complete = False
        self._request: tuple[bytes, bytes, bytes] | None = None
        if self._dirty:
            # A fresh llhttp state: the previous head may have left it in a
            # body, an error or an upgrade.
            self._parser = httptools.HttpRequestParser(self)
        self._dirty = False

    _dirty = False
    _lineFed = True

    # llhttp's callbacks (httptools looks them up by name).

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= MAX_HEADERS:
            raise _TooManyHeaders()
        headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self._complete = True

    def feed(self, data: bytes) -> tuple[RequestHead, bytes] | None:
        """
        @param data: the next bytes from the connection.
        @return: the head and the bytes after it once the head is complete,
            else C{None} (the bytes are kept).
        @raise BadRequest: if the head is refused.
        """
        buffer = self._buffer + data if self._buffer else data
        if not self._skipped and self._lineEnd < 0:
            if buffer[:2] == b"\r\n":
                # IE's extra CRLF after a POST body: skipped once.
                buffer = buffer[2:]
                self._skipped = True
            elif buffer == b"\r":
                self._buffer = buffer
                return None
        if self._lineEnd < 0:
            lineEnd = buffer.find(b"\r\n")
            if lineEnd < 0:
                if len(buffer) >= MAX_HEAD + 2:
                    raise BadRequest("request line too long")
                self._buffer = buffer
                return None
            self._request = self._requestLine(buffer, lineEnd)
            self._lineEnd = lineEnd
            self._fed = lineEnd + 2
            self._dirty = True
            self._lineFed = False
        lineEnd = self._lineEnd
        # Look for the empty line only in what is new (and the three bytes
        # before it), not again from the start for a dribbled head.
        found = buffer.find(b"\r\n\r\n", max(lineEnd, self._fed - 3))
        if found < 0:
            self._sizeSoFar(buffer)
            self._llhttp(buffer[self._fed:])
            self._fed = len(buffer)
            self._buffer = buffer
            return None
        end = found + 4
        if end - 2 * buffer.count(b"\r\n", 0, end) > MAX_HEAD:
            raise BadRequest("request head too large")
        self._llhttp(buffer[self._fed:end])
        if not self._complete:  # pragma: no cover - llhttp ends heads at CRLF CRLF
            raise BadRequest("incomplete head")
        assert self._request is not None
        method, target, version = self._request
        head = RequestHead(method, target, version, self._headers, self._framing())
        return head, buffer[end:]

    def _llhttp(self, data: bytes) -> None:
        if not self._lineFed:
            # The fixed request line goes with the first header bytes: one
            # call into llhttp for a head that arrived in one read.
            data = _LINE + data
            self._lineFed = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Connection: upgrade with an Upgrade header (or CONNECT): the
            # head is complete; twisted.web ignores upgrades, and so does
            # the channel (the body is framed by the caller).
            pass
        except httptools.HttpParserError as e:
            raise BadRequest(str(e)) from None

    @staticmethod
    def _requestLine(buffer: bytes, lineEnd: int) -> tuple[bytes, bytes, bytes]:
        """
        Twisted's C{_parseRequestLine}, and its line-length limit.
        """
        if lineEnd > MAX_HEAD:
            raise BadRequest("request line too long")
        parts = buffer[:lineEnd].split(b" ")
        if len(parts) != 3:
            raise BadRequest("malformed request line")
        method, target, version = parts
        if method not in _COMMON_METHODS and _TOKEN.match(method) is None:
            raise BadRequest("invalid method")
        if not target or target.translate(None, _TARGET_BYTES):
            raise BadRequest("invalid request-target")
        if version not in _VERSIONS:
            raise BadRequest("invalid version")
        return method, target, version

    def _sizeSoFar(self, buffer: bytes) -> None:
        """
        Refuse an incomplete head once twisted.web would: its complete lines
        over L{MAX_HEAD}, or a line still without its CRLF at
        C{MAX_HEAD + 2} bytes.
        """
        complete = buffer.rfind(b"\r\n") + 2
        if complete - 2 * buffer.count(b"\r\n", 0, complete) > MAX_HEAD:
            raise BadRequest("request head too large")
        if len(buffer) - complete >= MAX_HEAD + 2:
            raise BadRequest("header line too long")

    def _framing(self) -> int | None:
        """
        twisted.web's choice of body framing (C{_maybeChooseTransferDecoder}).

        @return: the C{Content-Length}, C{0} for none, C{None} for chunked.
        """
        length: int | None = 0
        chosen = False
        for name, value in self._headers:
            size = len(name)
            if size != 14 and size != 17:
                continue
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit() or chosen:
                    raise BadRequest("bad Content-Length")
                length, chosen = int(value), True
            elif lower == b"transfer-encoding":
                coding = value.lower()
                if coding == b"identity":  # pragma: no cover - llhttp refuses it first
                    continue
                if coding != b"chunked" or chosen:
                    raise BadRequest("bad Transfer-Encoding")
                length, chosen = None, True
        return length
