# -*- test-case-name: tests.web.test_fastchannel -*-
"""
The server channel on llhttp (C{--http-parser httptools}, the default): the
same twisted.web C{Request}s for the same bytes, parsed in C.

twisted.web's C{HTTPChannel} reads a request head line by line in Python
(C{LineReceiver} splits, then per line a split, strip, name check and
C{Headers} call): about 15 function calls per header and the larger part
of a bare request's parsing cost.  L{FastChannel} hands each head to
L{ollama_proxy.protocol.llhttp.RequestHeadParser} (one C pass over the
header section, checked to accept and refuse what twisted.web does) and
does everything after the head as C{HTTPChannel} does, in the same order:

  - one request at a time: bytes that arrive while a request is being
    answered are buffered (the transport is paused beyond 16 KiB, twisted.web's
    C{_optimisticEagerReadSize}) and parsed when its response is finished,
    so pipelined requests are answered in order;
  - C{Content-Length} bodies are counted here, chunked bodies decoded by
    twisted.web's own decoder (L{ollama_proxy.upstream.compat}), both
    through C{Request.gotLength} / C{handleContentChunk} (so
    L{ollama_proxy.web.site.LimitedRequest}'s 413, C{--body-timeout} and
    C{--body-budget} apply unchanged);
  - persistence (C{Connection: close}, HTTP/1.0), C{Expect: 100-continue},
    the idle timer (C{timeOut}, never closing while a request is answered) and
    C{abortTimeout}, producer/consumer in both directions (a client that
    does not read pauses the request's producer, i.e. the upstream read),
    and C{connectionLost} reaching every request (C{notifyFinish} errbacks,
    which cancel the upstream call);
  - the L{HeaderDeadline} and the JSON 400 of L{ProxyChannel}.

C{tests.web.test_fastchannel} feeds this channel and L{ProxyChannel} the
same byte streams at random splits (hypothesis) and compares what reaches
the resource and what is answered; the existing channel and site tests run
on both.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.server import Request
from zope.interface import implementer

from ollama_proxy.protocol.llhttp import BadRequest, RequestHead, RequestHeadParser
from ollama_proxy.upstream.compat import (
    SERVER_MISSING,
    ChunkedRequestDecoder,
    MalformedChunkedData,
    PullToPush,
    addRequestHeaders,
    writeThrough,
)
from ollama_proxy.upstream.connection import oneRead
from ollama_proxy.web.admission import Admission, acceptEagerly, admissionFor
from ollama_proxy.web.channel import HeaderDeadline, NoPushProducer

AVAILABLE = not SERVER_MISSING
"""Whether the Twisted release has what L{FastChannel} borrows; if not, the
site uses L{ollama_proxy.web.channel.ProxyChannel}."""

COALESCE = 0x10000
"""The largest first body write sent in one C{bytes} with its head (a
larger one is written after it, not copied)."""

EAGER_READ = 0x4000
"""Bytes buffered while a request is answered before the transport is
paused (twisted.web's C{HTTPChannel._optimisticEagerReadSize})."""


@implementer(ITransport, IPushProducer, IConsumer)
class FastChannel(HeaderDeadline, Protocol, TimeoutMixin):
    """
    An HTTP/1.1 server channel that parses heads with llhttp and hands
    twisted.web C{Request}s to the site.

    Attributes set by the site (as for C{HTTPChannel}): C{site},
    C{requestFactory}, C{factory}, C{timeOut}, C{callLater},
    C{headerTimeout}.

    @ivar requests: the requests received and not yet finished (at most
        one: the next is parsed only when it is finished).
    @ivar persistent: whether the connection stays open after the current
        response (C{Connection: close} and HTTP/1.0 clear it, as may the
        site).
    """

    requestFactory: Any = Request
    site: Any = None
    factory: Any = None
    abortTimeout: float | None = 15
    persistent = True
    length: int | None = 0

    _log = Logger()
    _abortingCall: Any = None
    _requestProducer: Any = None
    _requestProducerStreaming: bool | None = None
    _waitingForTransport = False
    _handlingRequest = False
    _busy = False
    _nonQueued: bool | None = None
    _holding = False
    _readingPaused = False
    _peer: Any = None
    _host: Any = None
    _heldHead: bytes | None = None
    _kept: list[bytes] | None = None
    _keptSize = 0
    _admission: Admission | None = None

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._dataBuffer: list[bytes] = []
        self._input = b""
        self._parser = RequestHeadParser()
        self._head: RequestHead | None = None
        self._remaining = 0
        self._chunked: Any = None
        self._networkProducer: Any = NoPushProducer()

    # The connection.

    def connectionMade(self) -> None:
        """
        As twisted.web: no Nagle delay, the idle timer, this channel as the
        transport's producer; and the first request's header deadline.  A
        plain TCP transport writes through (L{writeThrough}): a response's
        bytes leave in the call that writes them, not a reactor turn later.
        """
        writeThrough(self.transport)
        # The port this connection came in on keeps accepting a burst in
        # few turns (L{acceptEagerly}).
        acceptEagerly(getattr(self.transport, "server", None))
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self.setTimeout(self.timeOut)
        self._networkProducer = IPushProducer(self.transport, NoPushProducer())
        self._networkProducer.registerProducer(self, True)
        self._armHeaderDeadline()

    def dataReceived(self, data: bytes) -> None:
        """
        Parse what can be parsed now; buffer what arrives while a request
        is answered; drop anything after a 408 or once closing.
        """
        if self._timedOut:
            return
        self.resetTimeout()
        if self._handlingRequest:
            self._hold(data)
            return
        if self._busy:
            # Replayed by requestDone while this read is being parsed.
            self._input += data
            return
        self._busy = True
        try:
            self._input = self._input + data if self._input else data
            self._consume()
        finally:
            self._busy = False

    def _hold(self, data: bytes) -> None:
        """
        Keep bytes for after the current response; beyond L{EAGER_READ},
        stop reading the client until then (twisted.web's back-pressure on
        a client that pipelines without reading).
        """
        self._dataBuffer.append(data)
        if (sum(map(len, self._dataBuffer)) > EAGER_READ
                and not self._waitingForTransport):
            self._pauseReading()

    def _closing(self) -> bool:
        return self.transport is None or bool(getattr(self.transport, "disconnecting", False))

    def _consume(self) -> None:
        """
        Parse heads and bodies from C{_input} until it is empty, a request
        is being answered, or the connection is closing.
        """
        while self._input and not self._handlingRequest:
            if self.transport is None or self.transport.disconnecting:  # type: ignore[attr-defined]
                self._input = b""
                return
            if self._head is None:
                if not self.persistent:
                    # twisted.web drops what follows a last request.
                    self._input = b""
                    return
                # The next request's first byte starts its header deadline;
                # a head that is complete in this same read is never timed
                # (no time passes within it), so the timer is only armed
                # for a head still incomplete: a keep-alive request in one
                # read costs no timer at all.
                starting, self._betweenRequests = self._betweenRequests, False
                data, self._input = self._input, b""
                try:
                    parsed = self._parser.feed(data)
                except BadRequest:
                    self._respondToBadRequestAndDisconnect()
                    return
                if parsed is None:
                    if starting:
                        self._armHeaderDeadline()
                    return
                head, rest = parsed
                self._input = rest + self._input if self._input else rest
                self._startRequest(head)
            elif self._chunked is not None:
                data, self._input = self._input, b""
                try:
                    self._chunked.dataReceived(data)
                except MalformedChunkedData:
                    self._respondToBadRequestAndDisconnect()
                    return
            else:
                self._bodyReceived()
        if self._input:
            # A request is being answered: what follows waits for it
            # (unless the answer already closed the connection).
            data, self._input = self._input, b""
            if not self._closing():
                self._hold(data)
        elif self._head is not None and getattr(self.requests[-1], "_deadlineWanted", False):
            # A body still incomplete at the end of this read: its
            # deadline starts now (LimitedRequest.gotLength left it to us).
            self.requests[-1].armBodyDeadline()  # type: ignore[attr-defined]

    def _startRequest(self, head: RequestHead) -> None:
        """
        Build the request from its head, as twisted.web does at the end of
        the headers; a body-less request is handed to the site at once.
        """
        self._head = head
        factory = self.requestFactory
        if self._nonQueued is None:
            self._nonQueued = INonQueuedRequestFactory.providedBy(factory)
        request = factory(self) if self._nonQueued else factory(self, len(self.requests))
        self.requests.append(request)
        self.length = head.length
        if head.length is None:
            self._chunked = ChunkedRequestDecoder(request.handleContentChunk, self._chunkedDone)
        else:
            self._remaining = head.length
        self.allHeadersReceived()
        if head.length == 0 and not self._closing():
            self._allContentReceived()

    def _bodyReceived(self) -> None:
        """
        The next bytes of a C{Content-Length} body.
        """
        data = self._input
        request = self.requests[-1]
        if len(data) < self._remaining:
            self._remaining -= len(data)
            self._input = b""
            request.handleContentChunk(data)
            return
        remaining, self._remaining = self._remaining, 0
        self._input = data[remaining:]
        request.handleContentChunk(data[:remaining] if len(data) > remaining else data)
        self._allContentReceived()

    def _chunkedDone(self, rest: bytes) -> None:
        """
        The terminal chunk and trailers are in: C{rest} is the next
        request's.
        """
        self._chunked = None
        self._input = rest + self._input if self._input else rest
        self._allContentReceived()

    def allHeadersReceived(self) -> None:
        """
        twisted.web's end of the headers: cookies, persistence, the body
        length (where the site refuses an oversized one), C{Expect:
        100-continue}; the header deadline is over.
        """
        self._cancelHeaderDeadline()
        request = self.requests[-1]
        head = self._head
        assert head is not None
        raw = addRequestHeaders(request.requestHeaders, head.headers)
        if b"Cookie" in raw:  # all twisted.web's parseCookies reads
            request.parseCookies()
        self.persistent = self.checkPersistence(request, head.version)
        request.gotLength(self.length)
        expect = raw.get(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and head.version == b"HTTP/1.1":
            self._send100Continue()

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """
        twisted.web's rule: HTTP/1.1 without C{Connection: close} stays open.
        """
        connection = request.requestHeaders.getRawHeaders(b"Connection")
        tokens = [t.lower() for t in connection[0].split(b" ")] if connection else []
        if version == b"HTTP/1.1":
            if b"close" in tokens:
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
                return False
            return True
        return False

    def _allContentReceived(self) -> None:
        """
        Hand the complete request to the site; the idle timer cannot
        close the connection until its response is finished.
        """
        head = self._head
        assert head is not None
        self._head = None
        self.length = 0
        self._remaining = 0
        self._chunked = None
        self._parser.reset()
        # The idle timer stays armed while the request is answered (one
        # timer per connection, not a cancel and a new one per request):
        # L{timeoutConnection} re-arms it instead of closing while
        # C{_handlingRequest}, and L{requestDone} restarts its period.
        self._handlingRequest = True
        request = self.requests[-1]
        admission = self._admission
        if admission is None:
            admission = self._admission = admissionFor(self.site, self.callLater)
        if admission is None:
            request.requestReceived(head.method, head.target, head.version)
            return
        # A burst's requests start a hundred per turn (L{Admission}); one
        # whose client left while it waited is dropped.
        admission.admit(
            lambda: request.requestReceived(head.method, head.target, head.version),
            # (twisted.web's Request drops its channel when the connection goes.)
            lambda: request.channel is not None and not self._closing())

    def requestDone(self, request: Any) -> None:
        """
        The first request's response is finished: parse what was buffered
        behind it, or close if it was the last.
        """
        if request is not self.requests[0]:
            raise TypeError
        self._release()
        del self.requests[0]
        self._betweenRequests = True
        if not self._waitingForTransport:
            self._resumeReading()
        if self.persistent:
            self._handlingRequest = False
            self.resetTimeout()
            if self._dataBuffer:
                data = b"".join(self._dataBuffer)
                self._dataBuffer = []
                self.dataReceived(data)
        else:
            # The idle timer goes on: a client that never reads the last
            # answer is closed, then aborted, as an idle one.
            self._handlingRequest = False
            self.resetTimeout()
            self.loseConnection()

    def _pauseReading(self) -> None:
        self._readingPaused = True
        self._networkProducer.pauseProducing()

    def _resumeReading(self) -> None:
        """
        Read the client again if this channel stopped reading it (not at
        every request's end: a resumed transport costs a reactor call).
        """
        if self._readingPaused:
            self._readingPaused = False
            self._networkProducer.resumeProducing()

    def timeoutConnection(self) -> None:
        """
        The idle timer (or the header deadline) fired: close, and abort
        after C{abortTimeout} if the client does not read.  Not while a
        request is being answered (a long stream, a slow backend): the idle
        timer is then re-armed, as twisted.web suspends it.
        """
        if self._handlingRequest and not self._timedOut:
            self.setTimeout(self.timeOut)
            return
        assert self.transport is not None
        self._log.info("Timing out client: {peer}", peer=str(self.transport.getPeer()))
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        if not self._closing():
            self.loseConnection()

    def forceAbortClient(self) -> None:
        """
        C{abortTimeout} passed after a timeout and the connection is still
        open.
        """
        assert self.transport is not None
        self._log.info("Forcibly timing out client: {peer}", peer=str(self.transport.getPeer()))
        self._abortingCall = None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Every request still open learns it (C{notifyFinish} errbacks, which
        cancel their upstream calls); timers go with the connection.
        """
        self._cancelHeaderDeadline()
        self.setTimeout(None)
        self._kept = None
        for request in self.requests:
            request.connectionLost(reason)
        if self._abortingCall is not None:
            self._abortingCall.cancel()
            self._abortingCall = None

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        A head or chunked body that cannot be accepted: the JSON 400
        (the name is twisted.web's, which C{Request} may call).
        """
        self._answerBadRequest()

    def _send100Continue(self) -> None:
        self._out(b"HTTP/1.1 100 Continue\r\n\r\n")

    # What a Request uses of its channel.

    def isSecure(self) -> bool:
        return ISSLTransport(self.transport, None) is not None

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        """
        Write a response head (C{headers} is a C{Headers}), the same bytes
        as twisted.web's C{HTTPChannel.writeHeaders}, as one C{bytes}: the
        transport's C{writeSequence} checks and counts each of the ~30
        pieces of a head in Python.  Inside L{holdHead} the head waits for
        the first body bytes, so that a whole answer leaves in one write.
        """
        head = b"%s %s %s\r\n%s\r\n" % (
            version, code, reason,
            b"".join([b"%s: %s\r\n" % (name, value)
                      for name, values in headers.getAllRawHeaders() for value in values]),
        )
        if self._holding:
            self._heldHead = head
            return
        self._out(head)

    def holdHead(self) -> None:
        """Keep the next head for the body's first bytes (see
        L{ollama_proxy.web.site.LimitedRequest.write}) until L{releaseHead}."""
        self._holding = True

    def releaseHead(self) -> None:
        """Send a head no body followed (C{HEAD}, 204, 304); stop holding."""
        self._holding = False
        head, self._heldHead = self._heldHead, None
        if head is not None:
            self._out(head)

    def write(self, data: bytes) -> None:
        head = self._heldHead
        if head is not None:
            self._heldHead = None
            if len(data) <= COALESCE:
                data = head + data
            else:
                self._out(head)
        self._out(data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        head = self._heldHead
        if head is not None:
            self._heldHead = None
            iovec = [head, *iovec]
        self._out(b"".join(iovec))

    def _out(self, data: bytes) -> None:
        """
        Every response byte goes out here.  While an upstream read is
        processed (L{oneRead}) they are kept and leave in one write when it
        returns, at the request's end, before closing, or beyond
        L{COALESCE}: a stream's last line and terminator are one send (a
        body of known length has no terminator: it is never kept).
        """
        kept = self._kept
        if kept is None:
            if not (oneRead.depth and self.requests and self.requests[0].chunked):
                self.transport.write(data)  # type: ignore[union-attr]
                return
            kept = self._kept = []
            self._keptSize = 0
            oneRead.after(self._release)
        kept.append(data)
        self._keptSize += len(data)
        if self._keptSize > COALESCE:
            self._release()

    writeBody = _out  # a started chunked answer's framed bytes (web/writes.py)

    def _release(self) -> None:
        kept, self._kept = self._kept, None
        if kept and self.transport is not None:
            self.transport.write(b"".join(kept))

    def getPeer(self) -> Any:
        """
        The client's address, asked of the transport once per connection
        (it cannot change; a TCP transport builds a new address object,
        and C{getHost} makes a system call, at each ask, and every
        C{Request} asks both).
        """
        peer = self._peer
        if peer is None:
            assert self.transport is not None
            peer = self._peer = self.transport.getPeer()
        return peer

    def getHost(self) -> Any:
        """
        The listening address, once per connection (see L{getPeer}).
        """
        host = self._host
        if host is None:
            assert self.transport is not None
            host = self._host = self.transport.getHost()
        return host

    def loseConnection(self) -> None:
        """
        Close after what is written is sent.
        """
        self._networkProducer.unregisterProducer()
        self._release()
        if self.transport is not None:
            self.transport.loseConnection()

    # Producer and consumer, as twisted.web's.

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        A request's producer (the upstream body): paused and resumed with
        the client's transport.
        """
        if self._requestProducer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}, because producer "
                f"{self._requestProducer} was never unregistered."
            )
        if not streaming:
            producer = PullToPush(producer, self)
        self._requestProducer = producer
        self._requestProducerStreaming = streaming
        if not streaming:
            producer.startStreaming()

    def unregisterProducer(self) -> None:
        if self._requestProducer is None:
            return
        if not self._requestProducerStreaming:
            self._requestProducer.stopStreaming()
        self._requestProducer = None
        self._requestProducerStreaming = None

    def stopProducing(self) -> None:
        if self._requestProducer is not None:
            self._requestProducer.stopProducing()

    def pauseProducing(self) -> None:
        """
        The client's send buffer is full: pause the request's producer,
        and stop reading the client unless a request is being answered.
        """
        self._waitingForTransport = True
        if self._requestProducer is not None:
            self._requestProducer.pauseProducing()
        if not self._handlingRequest:
            self._pauseReading()

    def resumeProducing(self) -> None:
        self._waitingForTransport = False
        if self._requestProducer is not None:
            self._requestProducer.resumeProducing()
        if not self._handlingRequest:
            self._resumeReading()
