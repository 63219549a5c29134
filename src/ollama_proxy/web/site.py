# -*- test-case-name: tests.web.test_site -*-
"""
The HTTP server side: a request class that enforces a body-size cap and a
C{Site} without per-request access-log formatting.

twisted.web has no body limit of its own and buffers the whole body before a
resource runs; L{LimitedRequest} stops reading at the cap and answers 413
with Ollama's JSON error shape instead of rendering a truncated body.

The answers given here, before any resource runs (408, 413, 503 while
draining, 403 for a C{Host} a loopback-only proxy does not serve), carry the
CORS headers their origin is due, and every finished request that no
resource logged (these, the key gate's 401, the CORS 403, a 405) gets the
same log line and metrics as the others (L{ProxySite.log}).  Slow request
headers (408) and connections beyond C{--max-connections} (503) are answered
by the channel module, L{ollama_proxy.web.channel}, before any request exists.
"""

from __future__ import annotations

import inspect
import tempfile
from io import BytesIO
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.target import dialectOf, errorObject, refusedGrammar
from ollama_proxy.upstream.compat import SERVER_MISSING
from ollama_proxy.web.budget import CHARGE, RETRY_AFTER, BodyBudget
from ollama_proxy.web.channel import (DEFAULT_HEADER_TIMEOUT, MAX_LINGERING, BusyRefusal,
                                      ProxyChannel, countAnswer)
from ollama_proxy.web.cors import HostPolicy, OriginPolicy, corsHeaders
from ollama_proxy.web.metrics import Metrics
from ollama_proxy.web.context import DEFAULT_MAX_BODY
from ollama_proxy.web.fastchannel import AVAILABLE, FastChannel
from ollama_proxy.web.observe import OBSERVED, logAnswer
from ollama_proxy.web.traverse import traverse
from ollama_proxy.web.writes import FastWriteRequest

_CAN_SKIP_FORMS = "parsePOSTFormSubmission" in inspect.signature(http.Request.__init__).parameters

_REASONS = {
    413: b"Payload Too Large", 408: b"Request Timeout", 503: b"Service Unavailable",
}

_BUSY = "the proxy is holding too many request bodies (--body-budget); retry shortly"

JSON_TYPE = b"application/json; charset=utf-8"

_log = Logger()


class LimitedRequest(FastWriteRequest):
    """
    A request that refuses bodies larger than L{maxBody} bytes with 413, and
    (optionally) bodies that take longer than L{bodyTimeout} seconds with 408.

    twisted.web only hands a request to the resource once the whole body is
    in, and until then the request is not wired to its channel for writing.
    So a rejection is written straight to the transport as a complete
    C{Connection: close} response, the connection is closed, and
    L{requestReceived} never renders the (truncated) body, even when the
    rest of it, or a pipelined request, sits in the same read buffer.  Its
    body writes are L{FastWriteRequest}'s.

    @ivar maxBody: the cap in bytes, set per site by L{makeSite}.
    @ivar bodyTimeout: seconds from the end of the headers to the end of the
        body, or C{None} for no deadline (the site's idle timeout still
        applies); set per site by L{makeSite}.
    """

    maxBody: int = DEFAULT_MAX_BODY
    bodyTimeout: float | None = None
    budget: BodyBudget | None = None
    arrived: float | None = None
    _rejected = False
    _deadline: IDelayedCall | None = None
    _trackedBy: ProxySite | None = None
    _deadlineWanted = False
    _trackedChannel: Any = None

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        """
        Turn off form parsing: every body here is JSON, and C{Request} would
        otherwise parse each POST's C{Content-Type} with C{email.message}
        (about 5 % of the CPU of a streamed chat under load).
        """
        if _CAN_SKIP_FORMS:
            kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(channel, *args, **kwargs)
        if self.budget is not None:
            # The body bytes this request holds (raw as they arrive, then
            # decoded), given back however it ends.
            setattr(self, CHARGE, self.budget.charge())

    def gotLength(self, length: int | None) -> None:
        """
        Reject early when the declared C{Content-Length} is over the cap, and
        arm the body deadline.
        """
        super().gotLength(length)
        site = getattr(self.channel, "site", None)
        if site is not None:
            self.arrived = site.reactor.seconds()
        if length is not None and length > self.maxBody:
            self._reject(413, f"request body is larger than the limit of {self.maxBody} bytes")
            return
        if self.bodyTimeout is not None and length != 0:
            # FastChannel arms it at the end of a read that left the body
            # incomplete (no time passes within one read, so a body that
            # came with its head is never late): most requests, no timer.
            self._deadlineWanted = isinstance(self.channel, FastChannel)
            if not self._deadlineWanted:
                self.armBodyDeadline()

    def armBodyDeadline(self) -> None:
        """
        Start the C{bodyTimeout} for a body still being received (once).
        """
        if self._deadline is not None or self._rejected or self.bodyTimeout is None:
            return
        self._deadlineWanted = False
        clock: IReactorTime = self.channel.site.reactor  # type: ignore[attr-defined]
        self._deadline = clock.callLater(
            self.bodyTimeout,
            self._reject,
            408,
            f"request body not received within {self.bodyTimeout:g} seconds",
        )

    def handleContentChunk(self, data: bytes) -> None:
        """
        Count the body as it arrives; stop buffering at the cap.
        """
        if self._rejected:
            return
        held = self.content.tell() if self.content is not None else 0
        if held + len(data) > self.maxBody:
            self._reject(413, f"request body is larger than the limit of {self.maxBody} bytes")
            return
        # Charged as the bytes arrive, not as declared: a client that
        # declares 64 MB and sends nothing must not hold the budget.
        charge = getattr(self, CHARGE, None)
        if charge is not None and not charge.take(len(data)):
            self._reject(503, _BUSY)
            return
        super().handleContentChunk(data)

    def _reject(self, status: int, message: str) -> None:
        """
        Answer C{status} with Ollama's JSON error and close the connection;
        the body is never rendered.

        @param status: 413, 408, or 503 (the body budget is spent).
        @param message: the C{error} text.
        """
        if self._rejected:
            return
        self._rejected = True
        self._cancelDeadline()
        self._release()
        # Refused from gotLength, the channel would next answer an
        # "Expect: 100-continue" with a 100 after this final response.
        self.requestHeaders.removeHeader(b"expect")
        body = codec.dumps({"error": message})
        channel = self.channel
        if channel is None or channel.transport is None:
            return
        site = getattr(channel, "site", None)
        cors = b"".join(
            b"%s: %s\r\n" % header for header in self._corsHeaders(site)
        )
        if status == 503:
            cors += b"Retry-After: %d\r\n" % RETRY_AFTER
        channel.transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\n%s"
            b"Connection: close\r\n\r\n" % (status, _REASONS[status], len(body), cors)
            + body
        )
        channel.loseConnection()
        self.code = status
        if isinstance(site, ProxySite):
            site.log(self)

    def _corsHeaders(self, site: object) -> list[tuple[bytes, bytes]]:
        """
        @param site: the channel's site.
        @return: the CORS headers this request's origin is due from the
            site's policy (none without one).
        """
        if not isinstance(site, ProxySite) or site.origins is None:
            return []
        return corsHeaders(site.origins, self.getHeader(b"Origin"))

    def _answer(self, status: int, message: str, close: bool) -> None:
        """
        Answer before traversal (draining, a refused target or C{Host}) with
        the JSON error of the path's dialect (L{dialectOf}) and the CORS
        headers; the site logs it on finish.

        @param status: the HTTP status.
        @param message: the C{error} text.
        @param close: whether to close the connection after it.
        """
        body = codec.dumps(errorObject(dialectOf(self.path or b""), status, message))
        self.setResponseCode(status)
        self.setHeader(b"Content-Type", JSON_TYPE)
        self.setHeader(b"Content-Length", b"%d" % len(body))
        for name, value in self._corsHeaders(self.channel.site):  # type: ignore[attr-defined]
            self.responseHeaders.addRawHeader(name, value)
        if close:
            self.setHeader(b"Connection", b"close")
            # twisted.web decides persistence from the request's headers
            # only: make it close the connection as the header says.
            self.channel.persistent = False
        self.write(body)
        self.finish()

    def _cancelDeadline(self) -> None:
        self._deadlineWanted = False
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Render only complete, accepted bodies.
        """
        self._cancelDeadline()
        if not self._rejected:
            super().requestReceived(command, path, version)

    def _release(self) -> None:
        charge = getattr(self, CHARGE, None)
        if charge is not None:
            charge.release()

    def finish(self) -> None:
        """
        Give the body's share of the budget back with the answer, and end
        the site's tracking of it (L{ProxySite.track}).
        """
        super().finish()
        self._release()
        self._untrack()

    def _untrack(self) -> None:
        """
        Tell the site this request is over (finished, or its client gone),
        once: what a C{notifyFinish} Deferred per request did, without one.
        """
        site, self._trackedBy = self._trackedBy, None
        if site is not None:
            site._done(None, self, self._trackedChannel)

    def connectionLost(self, reason: Any) -> None:
        """
        Drop the body deadline and the body's share of the budget with the
        connection (a client that hangs up mid-body or mid-answer).
        """
        self._cancelDeadline()
        self._release()
        super().connectionLost(reason)
        self._untrack()

    def _refusedGrammar(self) -> str | None:
        """
        The request-target and C{Host} grammar, checked before traversal so
        that no resource, relayed route or fallback sees a dot segment, an
        encoded slash, an absolute-form target or an ambiguous C{Host}
        (see L{ollama_proxy.protocol.target}).

        @return: why the request is refused (a 400), or C{None}.
        """
        return refusedGrammar(self.uri, self.requestHeaders.getRawHeaders(b"host") or ())

    def processingFailed(self, reason: Any) -> None:
        """
        A resource that raised while rendering: logged, and answered with
        a JSON 500 in the path's dialect instead of twisted.web's HTML page.
        """
        _log.failure("rendering {uri} failed", reason, uri=self.uri)
        if self.finished or self._disconnected:
            return
        if self.startedWriting:
            self.finish()
            return
        body = codec.dumps(
            errorObject(dialectOf(self.path or b""), 500, "internal proxy error; see the proxy log")
        )
        self.setResponseCode(500)
        self.setHeader(b"Content-Type", JSON_TYPE)
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def process(self) -> None:
        """
        Track the request as in flight until it finishes (for a graceful
        shutdown), or refuse it with 503 if the site is draining.
        """
        site = self.channel.site  # type: ignore[attr-defined]
        if isinstance(site, ProxySite):
            if site.draining:
                self._answer(503, "the proxy is shutting down", close=True)
                return
            refused = self._refusedGrammar()
            if refused is not None:
                self._answer(400, refused, close=True)
                return
            if site.hosts is not None and not site.hosts.allows(self.getHeader(b"Host")):
                # DNS rebinding: a page on a name that now points at
                # 127.0.0.1 is same-origin with the proxy; serve only the
                # names that cannot be re-pointed (Ollama's rule).
                self._answer(
                    403,
                    "host not allowed: the proxy listens on loopback only and serves "
                    "local names (add others with --allow-host)",
                    close=False,
                )
                return
            site.track(self)
        traverse(self)


def _channelOf(protocol: Any) -> Any:
    """
    @param protocol: what L{Site.buildProtocol} returned (a wrapper that
        picks HTTP/1.1 or HTTP/2).
    @return: the channel inside, which owns the transport.
    """
    return getattr(protocol, "_channel", protocol)


class ProxySite(Site):
    """
    A L{Site} that does not write an access log (the proxy logs one
    structured line per request itself, off the hot path of formatting
    combined-log lines) and that can drain for a graceful shutdown.

    @ivar inFlight: requests being rendered.
    @ivar connections: open client connections (their protocols).
    @ivar draining: set by L{drain}; new requests get a 503.
    @ivar metrics: where every answer is counted, or C{None}.
    @ivar origins: the CORS policy for the answers the site gives itself,
        or C{None}.
    @ivar hosts: the C{Host} names served, or C{None} to serve any (a
        proxy that listens beyond loopback).
    @ivar maxConnections: open client connections served at once, or
        C{None} for no cap; a connection beyond it gets L{BusyRefusal}.
    """

    # Twisted's stubs type this as its HTTP/2-switching wrapper, which
    # L{ProxyChannel} replaces (see L{ollama_proxy.web.channel}).
    protocol = ProxyChannel  # type: ignore[assignment]
    draining = False
    maxConnections: int | None = None
    _refusing = False
    metrics: Metrics | None = None
    origins: OriginPolicy | None = None
    hosts: HostPolicy | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inFlight: set[Request] = set()
        self.connections: set[Any] = set()
        self._busy: dict[Any, int] = {}
        self._drained: list[Deferred[None]] = []
        self._graceTimer: IDelayedCall | None = None
        self._lingering = 0

    @staticmethod
    def getContentFile(length: int | None) -> IO[bytes]:
        """
        twisted.web's file for a request body (C{http._getContentFile}), from
        the site's hook: without one, C{server.Request.gotLength} raised and
        caught an C{AttributeError} per request to reach the same choice.
        """
        return BytesIO() if length is not None and length < 100000 else tempfile.TemporaryFile()

    def log(self, request: Any) -> None:
        """
        The one log line and the metrics of an answer that no resource
        observed (L{ollama_proxy.web.observe.logAnswer}); the others were
        observed with their details by
        L{ollama_proxy.web.bridge.ProxyResource}.  No combined-log line.
        """
        if getattr(request, OBSERVED, False):
            return
        arrived = getattr(request, "arrived", None)
        now = self.reactor.seconds()
        logAnswer(request, (now - arrived) * 1000 if arrived is not None else 0.0, self.metrics)

    def buildProtocol(self, addr: Any) -> Any:
        """
        Build a channel and keep track of it until its connection is lost,
        so that L{drain} knows when every response has been flushed; beyond
        L{maxConnections}, answer 503 instead (L{BusyRefusal}).
        """
        if self.maxConnections is not None and len(self.connections) >= self.maxConnections:
            return self._refuse()
        if self._refusing:
            self._refusing = False
            _log.info(
                "below the connection cap of {limit} again", limit=self.maxConnections
            )
        protocol = super().buildProtocol(addr)
        if protocol is None:
            return None
        self.connections.add(protocol)
        lost = protocol.connectionLost

        def connectionLost(reason: Any) -> None:
            self.connections.discard(protocol)
            lost(reason)
            self._maybeDrained()

        protocol.connectionLost = connectionLost
        return protocol

    def _refuse(self) -> BusyRefusal:
        """
        @return: the 503 answer for a connection over the cap; the first
            one after the count was below the cap is logged (not each, so
            that a flood does not flood the log).
        """
        if not self._refusing:
            self._refusing = True
            _log.warn(
                "connection cap of {limit} reached: new connections get 503 until one closes",
                limit=self.maxConnections,
            )
        countAnswer(self.metrics, 503)
        linger = self._lingering < MAX_LINGERING
        if linger:
            self._lingering += 1

        def closed() -> None:
            if linger:
                self._lingering -= 1

        assert self.maxConnections is not None
        return BusyRefusal(self.maxConnections, self.reactor.callLater, linger, closed)

    def track(self, request: Request) -> None:
        """
        Count C{request} as in flight until it finishes or its client leaves.

        @param request: a request about to be rendered.
        """
        self.inFlight.add(request)
        channel = request.channel
        self._busy[channel] = self._busy.get(channel, 0) + 1
        if isinstance(request, LimitedRequest):
            # Told by the request itself when it finishes or loses its
            # client (no Deferred per request).
            request._trackedBy, request._trackedChannel = self, channel
        else:
            request.notifyFinish().addBoth(self._done, request, channel)

    def _done(self, result: object, request: Request, channel: Any) -> None:
        self.inFlight.discard(request)
        self._busy[channel] -= 1
        if not self._busy[channel]:
            del self._busy[channel]
            if self.draining and channel.transport is not None:
                # Flush the end of the response, then close.
                channel.transport.loseConnection()

    def drain(self, grace: float) -> Deferred[None]:
        """
        Stop taking new requests and wait for the ones in flight.

        Idle kept-alive connections are closed at once; a connection whose
        request is still running is closed (after its last byte is flushed)
        when the request ends.  New requests that still arrive get a 503
        JSON error.  After C{grace} seconds the remaining connections are
        aborted, which cancels their handlers and closes their upstream
        connections.

        @param grace: seconds to let in-flight requests (streams) finish.
        @return: fires when every client connection is closed.
        """
        self.draining = True
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        for protocol in list(self.connections):
            channel = _channelOf(protocol)
            if channel not in self._busy and channel.transport is not None:
                channel.transport.loseConnection()
        if self._graceTimer is None and self.connections:
            clock: IReactorTime = self.reactor
            self._graceTimer = clock.callLater(grace, self._abortAll)
        self._maybeDrained()
        return d

    def _maybeDrained(self) -> None:
        if not self.draining or self.connections:
            return
        if self._graceTimer is not None and self._graceTimer.active():
            self._graceTimer.cancel()
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    def _abortAll(self) -> None:
        """
        The grace period is over: abort every connection still open.
        """
        for protocol in list(self.connections):
            channel = _channelOf(protocol)
            if channel.transport is not None:
                channel.transport.abortConnection()


def makeSite(
    root: IResource,
    reactor: IReactorTime | None = None,
    timeout: float | None = 60.0,
    maxBody: int = DEFAULT_MAX_BODY,
    bodyTimeout: float | None = None,
    metrics: Metrics | None = None,
    origins: OriginPolicy | None = None,
    hosts: HostPolicy | None = None,
    budget: BodyBudget | None = None,
    headerTimeout: float | None = DEFAULT_HEADER_TIMEOUT,
    maxConnections: int | None = None,
    httpParser: str = "httptools",
) -> ProxySite:
    """
    Build the site for the proxy.

    @param root: the resource tree.
    @param reactor: the reactor for the idle timer (injected in tests).
    @param timeout: seconds a client connection may stay idle (slow headers
        or body, keep-alive); never applies to a response being streamed.
    @param maxBody: the request body cap in bytes.
    @param bodyTimeout: seconds a client may take to send a whole body
        (bounds slow uploads that the idle C{timeout} cannot), or C{None}.
    @param metrics: where every answer is counted.
    @param origins: the CORS policy for the site's own answers.
    @param hosts: the C{Host} names served, or C{None} for any.
    @param budget: the memory budget every request body is charged to, or
        C{None} for none.
    @param headerTimeout: seconds for a request line and its headers
        (L{ProxyChannel}), or C{None} for no deadline.
    @param maxConnections: open client connections at once, or C{None}.
    @param httpParser: C{"httptools"} for L{FastChannel} (llhttp), or
        C{"twisted"} for L{ProxyChannel} (twisted.web's parser); the first
        falls back to the second when the installed Twisted lacks what it
        borrows (L{ollama_proxy.web.fastchannel.AVAILABLE}).
    @return: the site.
    """
    requestFactory = type(
        "LimitedRequest",
        (LimitedRequest,),
        {"maxBody": maxBody, "bodyTimeout": bodyTimeout, "budget": budget},
    )
    site = ProxySite(root, requestFactory=requestFactory, timeout=timeout, reactor=reactor)
    site.metrics, site.origins, site.hosts = metrics, origins, hosts
    site.maxConnections = maxConnections
    channel = channelClass(httpParser)
    site.protocol = type(  # type: ignore[assignment]
        channel.__name__, (channel,), {"headerTimeout": headerTimeout}
    )
    return site


HTTP_PARSERS = ("httptools", "twisted")
"""The values of C{--http-parser}."""


def channelClass(httpParser: str) -> type[FastChannel] | type[ProxyChannel]:
    """
    @param httpParser: one of L{HTTP_PARSERS}.
    @return: the server channel class it names.
    """
    if httpParser not in HTTP_PARSERS:
        raise ValueError(f"unknown HTTP parser {httpParser!r}; expected one of {HTTP_PARSERS}")
    if httpParser == "httptools":
        if AVAILABLE:
            return FastChannel
        _log.warn(
            "--http-parser httptools: this Twisted release lacks {missing}; "
            "using twisted.web's parser",
            missing=", ".join(SERVER_MISSING),
        )
    return ProxyChannel
