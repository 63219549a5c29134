# -*- test-case-name: tests.protocol.test_llhttp -*-
"""
HTTP/1.1 parsing on llhttp (C{httptools}): the one module that imports it.

Pure: bytes in, typed events out, no Twisted.  The upstream client
(L{ollama_proxy.upstream.agent}) feeds L{ResponseParser} the reads of one
backend connection and acts on its events; the parsing of one socket read,
status line, headers and every chunk of a chunked body, is one C call.

llhttp is stricter than Twisted's client parser in places, and decisions
that differ are made the same here or are documented as the safer one
(C{tests.protocol.test_llhttp} feeds both parsers the same bytes):

 - Checks added to match Twisted: a header line longer than
   L{MAX_RESPONSE_LINE} bytes (Twisted's C{LineReceiver} limit; counted
   as C{Name: value CR}, exact for one space after the colon and a CRLF;
   llhttp hands over no other whitespace, so at the boundary the decision
   may differ by those few bytes) and any C{Transfer-Encoding} other
   than exactly C{chunked} are rejected; 1xx answers are skipped; a bare
   LF ends a head line, as Twisted allows (but not a chunk-size line,
   which both require to end in CRLF).
 - Kept stricter than Twisted (each is a smuggling or desync vector a
   client gains nothing by accepting): a response with both
   C{Content-Length} and C{Transfer-Encoding} (RFC 9112 6.3: "ought to be
   handled as an error"; Twisted lets chunked win), a repeated
   C{Content-Length} even with equal values (Twisted accepts C{3, 3}),
   obs-fold continuation lines (deprecated, RFC 9112 5.2), a status line
   that is not C{HTTP/<digit>.<digit> <3 digits>} (Twisted accepts any
   protocol name and whatever C{int()} takes, C{+200} or C{2_00}),
   a malformed or conflicting C{Content-Length} on a 204, 304 or HEAD
   answer (Twisted reads no framing header there), control characters in
   header values, a 101 response (never asked for).
 - Limits Twisted lacks: at most L{MAX_RESPONSE_HEADERS} header lines and
   L{MAX_RESPONSE_HEAD} bytes of head (Twisted's client buffers any number of
   16 KiB lines).
 - Reuse: bytes after a complete response in the same read make the
   connection unusable (Twisted drops them and reuses the connection).
 - The one looser decision: a chunk-size line over 1,024 bytes (a long
   chunk extension) is accepted, up to L{MAX_QUIET} bytes of framing fed
   without chunk data.  Twisted's bound is on its own buffer for that
   line; llhttp does not buffer extensions (nothing is held), the framing
   decision is the same, and C{httptools} reports no position to measure
   the line with.  L{MAX_QUIET} also bounds trailers, whose values
   C{httptools} does hold.

Request side (L{RequestHeadParser}, fed by the server channel
L{ollama_proxy.web.fastchannel}): the head of a request, accepted or
refused exactly as twisted.web's C{HTTPChannel} does, stricter where llhttp
is (listed on L{RequestHeadParser}; C{tests.web.test_fastchannel} feeds
both channels the same bytes).  The head is cut out of the stream before
llhttp sees it (the request line ends at the first CRLF, the head at the
first CRLF CRLF), so llhttp never reads past it and the channel knows
where the body, or the next pipelined request, starts.  The request line
is checked in Python with Twisted's rules (any token is a method for
Twisted, llhttp knows a fixed list) and llhttp is handed a fixed C{GET /
HTTP/1.1} line before the header lines, which it validates (tokens, value
bytes, CRLF endings, framing conflicts); bodies are framed by the channel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

import httptools

MAX_RESPONSE_LINE = 16384
"""Longest head line (status or header, without its LF), as Twisted's
client (C{LineReceiver.MAX_LENGTH})."""

MAX_RESPONSE_HEADERS = 500
"""Most header lines in one response head (Twisted's server limit)."""

MAX_RESPONSE_HEAD = 256 * 1024
"""Most bytes of one response head (status line and headers)."""

MAX_TRAILERS = 2**16
"""Most bytes of trailer lines after a chunked body (Twisted's limit)."""

MAX_QUIET = MAX_TRAILERS + 4096
"""Most bytes of a chunked body fed without any chunk data: the framing
between two chunks (a size line, Twisted bounds at 1,024 bytes) or the
trailers.  httptools holds a trailer's value until its line ends; this
bounds what it can hold."""

RESPONSE_NO_BODY_CODES = frozenset({204, 304})


class ResponseParseError(ValueError):
    """The bytes are not a response this client accepts."""


@dataclass(slots=True)
class ResponseHead:
    """
    A response's status line and headers.

    @ivar version: the protocol version, as Twisted's response has it.
    @ivar code: the status code.
    @ivar phrase: the reason phrase.
    @ivar headers: the header lines in order, names as sent.
    @ivar length: the body length if known (C{Content-Length}, or 0 when the
        response has no body), else C{None} (chunked or until close).
    """

    version: tuple[bytes, int, int]
    code: int
    phrase: bytes
    headers: list[tuple[bytes, bytes]]
    length: int | None


@dataclass(slots=True)
class ResponseBody:
    """Body bytes: everything one read carried, chunks joined."""

    data: bytes


@dataclass(slots=True)
class ResponseEnd:
    """The response is complete and well framed; C{reusable}: the connection
    may carry another request (keep-alive, nothing after it, not HEAD)."""

    reusable: bool


@dataclass(slots=True)
class ResponseRejected:
    """The bytes broke the framing or a limit (C{reason}: why); nothing more
    is parsed."""

    reason: str


ResponseEvent = Union[ResponseHead, ResponseBody, ResponseEnd, ResponseRejected]


class _Stop(Exception):
    """Raised inside a callback to stop llhttp (HEAD: no body follows)."""


class ResponseParser:
    """
    Parse one response to one request, fed the connection's reads.

    @ivar untilClose: the body ends when the connection does (no length, not
        chunked), so an EOF is its normal end.
    @ivar reusable: the response ended complete and keep-alive with nothing
        after it (llhttp is back at a message's start): L{reset} may follow.
    """

    def __init__(self, method: bytes) -> None:
        """
        @param method: the request's method (a C{HEAD} answer has no body).
        """
        self._parser = httptools.HttpResponseParser(self)
        self._strict = True
        self._begin(method)

    def reset(self, method: bytes) -> None:
        """
        Parse the next response on the same keep-alive connection with the
        same llhttp parser (a new one per response cost more than a
        microsecond), every field started again.  Any other end (refused,
        cut short, a C{HEAD} answer stopped after its head, bytes after it,
        C{Connection: close}) leaves llhttp where no next response may be
        parsed: the connection is closed instead.

        @raise ValueError: if the last response is not L{reusable}.
        """
        if not self.reusable:
            raise ValueError("only a complete keep-alive response's parser is reused")
        self._begin(method)

    def _begin(self, method: bytes) -> None:
        self._head = method == b"HEAD"
        if self._strict:
            self._parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
            self._strict = False
        self.reusable = False
        self._events: list[ResponseEvent] = []
        self._body: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._phrase = b""
        self._headBytes = 0
        self._trailerBytes = 0
        self._quiet = 0
        self._inHead = True
        self._done = False
        self._failed = False
        self._chunked = False
        self.untilClose = False
        self.everReceived = False

    # llhttp callbacks

    def on_status(self, status: bytes) -> None:
        if len(status) + len(b"HTTP/1.1 200 \r") > MAX_RESPONSE_LINE:
            raise ResponseParseError("status line too long")
        self._phrase = status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._inHead:
            # A trailer: ignored, as Twisted does, within its 64 KiB.
            self._trailerBytes += len(name) + len(value) + 4
            if self._trailerBytes > MAX_TRAILERS:
                raise ResponseParseError("trailer headers too long")
            return
        headers = self._headers
        if len(name) + len(value) + 3 > MAX_RESPONSE_LINE:
            raise ResponseParseError("header line too long")
        if len(headers) >= MAX_RESPONSE_HEADERS:
            raise ResponseParseError(f"more than {MAX_RESPONSE_HEADERS} header lines")
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        code = parser.get_status_code()
        if 100 <= code < 200:
            if code == 101:
                raise ResponseParseError("unexpected 101 Switching Protocols")
            # Ignored, as Twisted does; the real response follows.
            self._headers = []
            self._phrase = b""
            return
        self._inHead = False
        length: int | None = None
        if code in RESPONSE_NO_BODY_CODES or self._head:
            # No body, whatever the framing headers say (Twisted looks at
            # none of them here either).
            length = 0
        else:
            transfer = [v for n, v in self._headers if n.lower() == b"transfer-encoding"]
            if transfer:
                if len(transfer) != 1 or transfer[0].strip(b" \t").lower() != b"chunked":
                    # The value itself stays out of the message: it is the
                    # backend's, and messages reach clients and logs.
                    raise ResponseParseError("unsupported Transfer-Encoding")
                self._chunked = True
                # A bare LF ended head lines (as Twisted allows); chunk
                # framing needs CRLF (as Twisted's decoder does).
                parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=False)
                self._strict = True
            else:
                for n, v in self._headers:
                    if n.lower() == b"content-length":
                        length = int(v)
                if length is None:
                    self.untilClose = True
        major, _, minor = parser.get_http_version().partition(".")
        self._events.append(ResponseHead(
            (b"HTTP", int(major), int(minor)), code, self._phrase, self._headers, length))
        if self._head:
            self._done = True
            self._events.append(ResponseEnd(False))
            raise _Stop()  # llhttp would read a body after the head

    def on_body(self, data: bytes) -> None:
        self._body.append(data)

    def on_message_complete(self) -> None:
        if self._inHead:
            # A 1xx answer ended: the real response follows.
            return
        self._flushBody()
        self._done = True
        self.reusable = bool(self._parser.should_keep_alive())
        self._events.append(ResponseEnd(self.reusable))

    def _flushBody(self) -> None:
        body = self._body
        if body:
            self._events.append(ResponseBody(body[0] if len(body) == 1 else b"".join(body)))
            body.clear()

    def feed(self, data: bytes) -> list[ResponseEvent]:
        """
        Parse one read.

        @param data: the bytes.
        @return: what they completed, in order; after a L{ResponseEnd} or a
            L{ResponseRejected}, nothing more.
        """
        if self._done or self._failed:
            if data and self._done:
                # Bytes after a complete response: never reuse.
                self.reusable = False
                return [ResponseRejected("data after the response")]
            return []
        self.everReceived = True
        if self._inHead:
            self._headBytes += len(data)
            if self._headBytes > MAX_RESPONSE_HEAD + MAX_RESPONSE_LINE:
                self._failed = True
                return [ResponseRejected(f"response head larger than {MAX_RESPONSE_HEAD} bytes")]
        events = self._events = []
        chunked = self._chunked
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            cause = e.__context__ if isinstance(e, httptools.HttpParserCallbackError) else None
            if self._done:
                # A HEAD answer's end, or llhttp began a next message on
                # bytes that followed the response: never reuse.
                self.reusable = False
                for event in events:
                    if isinstance(event, ResponseEnd):
                        event.reusable = False
                return events
            if isinstance(cause, ResponseParseError):
                return self._reject(events, str(cause))
            return self._reject(events, str(e) or type(e).__name__)
        if self._inHead and self._headBytes > MAX_RESPONSE_HEAD:
            return self._reject(events, f"response head larger than {MAX_RESPONSE_HEAD} bytes")
        if chunked and not self._done:
            if self._body:
                self._quiet = 0
            else:
                self._quiet += len(data)
                if self._quiet > MAX_QUIET:
                    return self._reject(events, "chunk framing or trailers too long")
        self._flushBody()
        return events

    def on_message_begin(self) -> None:
        if self._done:
            raise _Stop()

    def _reject(self, events: list[ResponseEvent], reason: str) -> list[ResponseEvent]:
        self._failed = True
        self._flushBody()
        events.append(ResponseRejected(reason))
        return events

    def eof(self) -> ResponseEnd | ResponseRejected | None:
        """
        The connection closed.

        @return: the end of a body that runs until close
            (C{ResponseEnd(False)}), a L{ResponseRejected} for a response cut
            short, or C{None} if the response had already ended or failed.
        """
        self.reusable = False
        if self._done or self._failed:
            return None
        self._failed = True
        if self.untilClose:
            return ResponseEnd(False)
        return ResponseRejected("the connection closed before the response ended")


# The request side: what the server channel parses.

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
