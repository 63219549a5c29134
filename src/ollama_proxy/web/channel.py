# -*- test-case-name: tests.web.test_channel -*-
"""
The connection side of slow clients: a header deadline on each request and
an answer for connections beyond the cap.

C{--client-timeout} is twisted.web's idle timer: every byte resets it, so a
client that sends one header byte a second keeps its connection (and a file
descriptor) forever, and C{--body-timeout} only starts once the headers are
in.  L{ProxyChannel} adds what nginx calls C{client_header_timeout}: a total
time for the request line and headers, counted from the accept (the first
request) or from the first byte of the next request on a kept-alive
connection (the idle wait between requests stays C{--client-timeout}'s, as
with nginx's C{keepalive_timeout}).  It is off from the end of the headers
until the response is finished, so it never cuts a body being received
(that is C{--body-timeout}'s) or a response being streamed.

C{HTTPChannel}'s public hooks are used (C{connectionMade},
C{dataReceived}, C{allHeadersReceived}, C{requestDone}, C{connectionLost},
C{timeoutConnection}), and one private method, fenced:
C{_respondToBadRequestAndDisconnect}, which twisted.web calls for a
malformed request line, a malformed header line, headers over
C{totalHeadersSize}, too many headers or a bad chunked body (and, through
the public C{lineLengthExceeded}, a line over 16 KiB, which
C{LineReceiver} closed without a word), and which writes a bare C{400} with no body
or headers.  L{ProxyChannel} overrides it to answer Ollama's JSON error
like every other answer of the proxy.  Because the name is private, this
module checks at import that C{HTTPChannel} still has it
(L{_BAD_REQUEST_HOOK}), so a Twisted release that renames it stops the
proxy from starting (and C{tests.web.test_channel} fails) instead of
silently bringing back the bare answer.  The channel replaces the
C{_GenericHTTPChannelProtocol} wrapper of L{twisted.web.server.Site}, whose
only job is to switch to HTTP/2 after a TLS ALPN negotiation: that needs the
C{h2} package and a TLS listener, neither of which the proxy offers.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from ollama_proxy.protocol import codec
from ollama_proxy.upstream.compat import writeThrough
from ollama_proxy.web.metrics import Metrics
from ollama_proxy.web.observe import SITE_ROUTE

DEFAULT_HEADER_TIMEOUT = 60.0
"""Seconds for a request line and its headers (nginx's default)."""

REFUSAL_LINGER = 1.0
"""
Seconds a refused connection is kept half-closed, its input read and
dropped, so that closing it does not reset the connection before the
client has read the 503 (a close with unread input sends an RST, and a
client's kernel may drop the answer it has not yet read).
"""

MAX_LINGERING = 256
"""Refused connections lingering at once; beyond it they are closed at once."""

RETRY_AFTER = 1
"""The C{Retry-After} seconds of the 503 for a connection over the cap."""

_JSON = b"application/json; charset=utf-8"

log = Logger()

_BAD_REQUEST_HOOK = "_respondToBadRequestAndDisconnect"
"""
The private C{HTTPChannel} method twisted.web calls for a request it cannot
parse; overridden by L{ProxyChannel}, and checked here at import.
"""

if not callable(getattr(HTTPChannel, _BAD_REQUEST_HOOK, None)):  # pragma: no cover
    raise ImportError(
        f"twisted.web.http.HTTPChannel has no {_BAD_REQUEST_HOOK}: this Twisted release "
        "changed its private API; ollama_proxy.web.channel must be updated"
    )


def errorResponse(status: int, reason: bytes, message: str, extra: bytes = b"") -> bytes:
    """
    @param status: the HTTP status.
    @param reason: its reason phrase.
    @param message: the C{error} text.
    @param extra: more header lines, each ending in CRLF.
    @return: a complete HTTP/1.1 response with Ollama's JSON error that
        closes the connection, for answers written straight to the
        transport (no request is wired to it yet).
    """
    body = codec.dumps({"error": message})
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s"
        b"Connection: close\r\n\r\n" % (status, reason, _JSON, len(body), extra)
        + body
    )


def countAnswer(metrics: Metrics | None, status: int) -> None:
    """
    Count an answer given before any request was parsed, as the site's
    own answers are counted (route C{-}, no model).

    @param metrics: the site's metrics, or C{None}.
    @param status: the HTTP status.
    """
    if metrics is not None:
        metrics.child(metrics.requests, SITE_ROUTE, "", str(status)).inc()


class HeaderDeadline:
    """
    The deadline for each request's line and headers, and the JSON 400 for
    a request that cannot be parsed: shared by L{ProxyChannel} (twisted.web's
    parser) and L{ollama_proxy.web.fastchannel.FastChannel} (llhttp's).

    The deadline runs in the I{headers} phase: from C{connectionMade}, and
    from the first byte after a finished response (a pipelined request's
    bytes, buffered while the previous one was answered, count as arriving
    when that answer ends).  The end of the headers ends the phase.  When the
    deadline passes, nothing of this request has been answered, so a 408
    JSON error is written and the connection closed (aborted after
    C{abortTimeout} if the client does not read, as for the idle timer).

    @ivar headerTimeout: the deadline in seconds, or C{None} for none; set
        per site by L{ollama_proxy.web.site.makeSite}.
    """

    headerTimeout: float | None = DEFAULT_HEADER_TIMEOUT
    _headerDeadline: IDelayedCall | None = None
    _betweenRequests = False
    _timedOut = False

    def _answerBadRequest(self) -> None:
        """
        Answer a request that could not be parsed with a 400 JSON error and
        close, instead of Twisted's bare status line.  The deadline is
        dropped: this request is answered.
        """
        this: Any = self
        self._cancelHeaderDeadline()
        if this.transport is not None:
            this.transport.write(errorResponse(400, b"Bad Request", "bad request"))
        countAnswer(getattr(getattr(this, "site", None), "metrics", None), 400)
        this.loseConnection()

    def _armHeaderDeadline(self) -> None:
        self._cancelHeaderDeadline()
        if self.headerTimeout is not None:
            callLater: Callable[..., IDelayedCall] = getattr(self, "callLater")
            self._headerDeadline = callLater(self.headerTimeout, self._headerDeadlinePassed)

    def _cancelHeaderDeadline(self) -> None:
        if self._headerDeadline is not None and self._headerDeadline.active():
            self._headerDeadline.cancel()
        self._headerDeadline = None

    def _headerDeadlinePassed(self) -> None:
        """
        Answer 408 and close: the request line and headers took too long.
        """
        this: Any = self
        self._headerDeadline = None
        if this.transport is None or getattr(this.transport, "disconnecting", False):
            # Already closing (a 400 for a bad request line, the idle
            # timer, a drain): nothing more is written.
            return
        self._timedOut = True
        this.transport.write(
            errorResponse(
                408,
                b"Request Timeout",
                f"request headers not received within {self.headerTimeout:g} seconds",
            )
        )
        log.info(
            "client header deadline passed ({seconds:g} s): 408 to {peer}",
            seconds=self.headerTimeout,
            peer=str(this.transport.getPeer()),
        )
        countAnswer(getattr(getattr(this, "site", None), "metrics", None), 408)
        # twisted.web's own idle-timeout path: close after the write is
        # flushed, abort if the client never reads it.
        this.timeoutConnection()


class ProxyChannel(HeaderDeadline, HTTPChannel):
    """
    twisted.web's C{HTTPChannel} with the L{HeaderDeadline} (C{allHeadersReceived}
    ends its phase) and the JSON 400 (C{--http-parser twisted}).
    """

    def connectionMade(self) -> None:
        """
        Start the first request's deadline at the accept; a plain TCP
        transport writes through (L{writeThrough}).
        """
        writeThrough(self.transport)
        super().connectionMade()
        self._armHeaderDeadline()

    def dataReceived(self, data: bytes) -> None:
        """
        Start the deadline with the first byte of the next request on a
        kept-alive connection; drop anything after a 408.
        """
        if self._timedOut:
            return
        if self._betweenRequests and data:
            self._betweenRequests = False
            self._armHeaderDeadline()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        """
        The headers are in: the body has its own deadline.
        """
        self._cancelHeaderDeadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        """
        The response is finished: the next request's clock starts with its
        first byte (replayed from the buffer here when it was pipelined).
        """
        self._betweenRequests = True
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Drop the deadline with the connection.
        """
        self._cancelHeaderDeadline()
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        Answer a request twisted.web could not parse (request line, header
        line over C{totalHeadersSize}, too many headers, bad chunking) with
        a 400 JSON error and close, instead of Twisted's bare status line.
        """
        self._answerBadRequest()

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A request or header line over C{MAX_LENGTH} (16 KiB): the same 400
        JSON (C{LineReceiver}'s default closes without a word).
        """
        self._respondToBadRequestAndDisconnect()


class BusyRefusal(Protocol):
    """
    The answer for a connection over C{--max-connections}: a 503 JSON error
    with C{Retry-After}, written at once without reading the request, then
    the write side is closed and input is read and dropped for
    L{REFUSAL_LINGER} seconds before the socket is closed.

    @ivar onClose: called once when the connection is gone.
    """

    def __init__(self, limit: int, callLater: Callable[..., IDelayedCall],
                 linger: bool, onClose: Callable[[], None]) -> None:
        self.limit = limit
        self.callLater = callLater
        self.linger = linger
        self.onClose = onClose
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            errorResponse(
                503,
                b"Service Unavailable",
                f"too many open connections (the limit is {self.limit}); retry shortly",
                b"Retry-After: %d\r\n" % RETRY_AFTER,
            )
        )
        if self.linger and ITCPTransport.providedBy(self.transport):
            self.transport.loseWriteConnection()
            self._timer = self.callLater(REFUSAL_LINGER, self.transport.loseConnection)
        else:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """
        The request is not read: dropped.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.onClose()


@implementer(IPushProducer)
class NoPushProducer:
    """The transport's producer side when it has none (as twisted.web's)."""

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
