# -*- test-case-name: tests.upstream.test_connection -*-
"""
One upstream HTTP/1.1 connection on llhttp: it writes a request, parses
the response with L{ollama_proxy.protocol.llhttp.ResponseParser}, and hands
treq an L{IResponse} whose body goes to the protocol given to
C{deliverBody} with this connection's transport as its push producer.

Why not Twisted's C{HTTP11ClientProtocol}: its response side parses the
head one line at a time in Python (C{LineReceiver}, a state dispatcher per
line, C{Headers} per header) and a chunked body one chunk at a time; a
non-streamed request spent 13 % of its CPU there (C{bench/RESULTS.md}).
Here one C call parses a whole read.

Kept as Twisted does it: the transport is paused from the head until a
body protocol is attached; a body protocol that pauses the transport
pauses the socket read (back-pressure); C{stopProducing} closes the
connection, and a connection goes back to the pool only after a complete,
well-framed response with nothing after it, its request fully written and
nobody having asked it to stop; cancelling before the head aborts the
connection (C{ResponseNeverReceived([CancelledError])}, as Twisted); an
early EOF ends a read-until-close body with C{PotentialDataLoss} and any
other body with C{ResponseFailed}.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    PotentialDataLoss,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from ollama_proxy.protocol.llhttp import (
    ResponseBody,
    ResponseEnd,
    ResponseHead,
    ResponseParser,
    ResponseRejected,
)
from ollama_proxy.upstream.compat import writeThrough
from ollama_proxy.upstream.message import (
    BodyTransport,
    BytesProducer,
    ClientRequest,
    HTTPResponse,
    wholeBody,
)

_TOKEN = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VALID_URI = re.compile(rb"\A[\x21-\x7e]+\Z")

MAX_CHECKED = 1024
_checked: set[tuple[bytes, bytes]] = set()
"""Request lines' methods and paths found valid (the proxy's own few routes
come back at every request: two regular-expression matches fewer each); at
most L{MAX_CHECKED} of them, none longer than 512 bytes (a relayed client's
path may be long: it is checked each time)."""



class ReadScope:
    """
    The span of one upstream read's processing, for the client channels
    that join what they write in it (L{ollama_proxy.web.fastchannel}).

    A read that carries a stream's last events and its end makes the
    client's last line and the chunked terminator in the same call, as
    two writes; with the transport writing through, two sends (Twisted's
    next-turn C{doWrite} used to join them).  A channel written to while
    L{depth} is positive keeps its bytes and asks L{after} to be told
    when the outermost read returns (or it releases them itself sooner:
    at its request's end, before closing, beyond a size); nothing waits
    for a later reactor turn, so a stream's lines still leave as their
    reads arrive.

    @ivar depth: how many reads are being processed (nested, they are
        only where a read makes another connection read at once).
    """

    def __init__(self) -> None:
        self.depth = 0
        self.waiting: list[Callable[[], None]] = []
        """What L{after} was given, to be called at the outermost end."""

    def after(self, release: Callable[[], None]) -> None:
        """
        @param release: called (once) when the outermost read returns; it
            must not raise.
        """
        self.waiting.append(release)

    def end(self) -> None:
        """
        One read is done; after the outermost, release what was kept.
        """
        self.depth -= 1
        if self.depth == 0 and self.waiting:
            waiting, self.waiting = self.waiting, []
            for release in waiting:
                release()


oneRead = ReadScope()
"""The one scope: every upstream connection of the process reads in the
reactor's thread, one read at a time."""


class ResponseParseFailed(Exception):
    """
    The backend's bytes are not a response this client accepts (the
    reason is in the message).
    """


@implementer(IConsumer)
class _BodyConsumer:
    """
    Where a request body producer writes: the transport, with the length
    it declared enforced, or chunked when it declared none.
    """

    def __init__(self, transport: Any, length: Any, head: list[bytes]) -> None:
        self._transport = transport
        self._chunked = length is UNKNOWN_LENGTH
        self._left = 0 if self._chunked else int(length)
        self.failed: Exception | None = None
        self._held: list[bytes] | None = head

    def release(self) -> None:
        """
        Write the head and what the producer wrote so far in one
        C{write} (one segment for a small body, as C{BytesProducer} means
        it); later writes go straight to the transport.
        """
        held, self._held = self._held, None
        if held:
            self._transport.write(b"".join(held))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        else:
            self._left -= len(data)
            if self._left < 0:
                self.failed = ValueError("the body producer wrote more than its length")
                return
        if self._held is not None:
            self._held.append(data)
        else:
            self._transport.write(data)

    def finish(self) -> None:
        if self._chunked:
            if self._held is not None:
                self._held.append(b"0\r\n\r\n")
            else:
                self._transport.write(b"0\r\n\r\n")
        elif self._left != 0 and self.failed is None:
            self.failed = ValueError("the body producer wrote less than its length")


class ClientConnection(Protocol):
    """
    One keep-alive connection to one upstream, one request at a time.

    @ivar onIdle: called with this connection when it can carry another
        request (the pool keeps it).
    @ivar onLost: called with this connection when it closed.
    """

    def __init__(
        self,
        onIdle: Callable[["ClientConnection"], None],
        onLost: Callable[["ClientConnection"], None],
    ) -> None:
        self.onIdle = onIdle
        self.onLost = onLost
        self._parser: ResponseParser | None = None
        self._spare: ResponseParser | None = None
        """The last response's parser, when it ended reusable: the next
        request's response is parsed with it (L{ResponseParser.reset})."""
        self._waiting: Deferred[IResponse] | None = None
        self._request: ClientRequest | None = None
        self._response: HTTPResponse | None = None
        self._bodyTransport: BodyTransport | None = None
        self._producer: IBodyProducer | None = None
        self._writing = False
        self._abandoned = False
        self._lost = False
        self._closed: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        """
        A plain TCP transport writes through (L{writeThrough}): a request
        leaves in the call that writes it, not a reactor turn later; and
        its reads come here, not through the endpoint's wrapper.
        """
        writeThrough(self.transport, self)

    @property
    def usable(self) -> bool:
        """
        Whether the connection is open and not closing.
        """
        return not self._lost and not self._abandoned and self.transport is not None and not getattr(
            self.transport, "disconnecting", False)

    def request(
        self, method: bytes, absoluteURI: bytes, path: bytes, headers: Headers,
        bodyProducer: IBodyProducer | None, host: bytes | None = None,
    ) -> Deferred[IResponse]:
        """
        Send one request.

        @param host: a C{Host} value to write after C{headers} (the agent's,
            when they have none: written, rather than added to a copy).
        @return: fires with the response once its head arrived.
        """
        if (method, path) not in _checked:
            if not _TOKEN.match(method):
                raise ValueError(f"Invalid method {method!r}")
            if not _VALID_URI.match(path):
                raise ValueError(f"Invalid URI {path!r}")
            if len(_checked) < MAX_CHECKED and len(path) <= 512:
                _checked.add((method, path))
        spare, self._spare = self._spare, None
        if spare is not None and spare.reusable:
            spare.reset(method)
            self._parser = spare
        else:
            self._parser = ResponseParser(method)
        self._request = ClientRequest(method, absoluteURI, headers)
        d = self._waiting = Deferred(self._cancel)
        head = [method, b" ", path, b" HTTP/1.1\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        if host is not None:
            head += (b"Host: ", host, b"\r\n")
        transport = self.transport
        assert transport is not None
        if bodyProducer is None:
            if method in (b"PUT", b"POST"):
                head.append(b"Content-Length: 0\r\n")
            head.append(b"\r\n")
            transport.write(b"".join(head))
            return d
        if type(bodyProducer) is BytesProducer:
            # A body in memory (every request the proxy makes itself): head
            # and body in one write, as its producer would have written
            # them, without a consumer or a Deferred for the writing.
            body = bodyProducer.body
            if body:
                head += (b"Content-Length: %d\r\n\r\n" % len(body), body)
            else:
                head.append(b"Content-Length: 0\r\n\r\n")
            transport.write(b"".join(head))
            return d
        length = bodyProducer.length
        if length is UNKNOWN_LENGTH:
            head.append(b"Transfer-Encoding: chunked\r\n\r\n")
        else:
            head.append(b"Content-Length: %d\r\n\r\n" % length)
        consumer = _BodyConsumer(transport, length, head)
        self._producer = bodyProducer
        self._writing = True
        try:
            written = bodyProducer.startProducing(consumer)
        finally:
            consumer.release()

        def done(_: object) -> None:
            self._writing = False
            self._producer = None
            consumer.finish()
            if consumer.failed is not None:
                self._giveUp(Failure(consumer.failed))

        def failed(reason: Failure) -> None:
            self._writing = False
            self._producer = None
            if not reason.check(CancelledError):
                self._giveUp(reason)

        written.addCallbacks(done, failed)
        return d

    def _cancel(self, d: Deferred[IResponse]) -> None:
        # Before the head: the connection is dropped, as Twisted does.
        self._waiting = None
        self._stopWriting()
        self._abandoned = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        d.errback(Failure(ResponseNeverReceived([Failure(CancelledError())])))

    def _stopWriting(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None and self._writing:
            self._writing = False
            producer.stopProducing()

    def _giveUp(self, reason: Failure) -> None:
        # The request could not be written: fail whatever waits.
        self._abandoned = True
        if self.transport is not None:
            self.transport.loseConnection()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(Failure(ResponseFailed([reason])))

    def abandon(self) -> None:
        """
        The body's reader stopped: close the connection, never reuse it.

        C{stopProducing}, as Twisted's client stops a body: on TCP it is
        C{loseConnection}; on TLS it closes the socket under the TLS layer
        at once, where C{loseConnection} would wait for the backend's
        C{close_notify} (which a backend busy streaming may never send).
        """
        self._abandoned = True
        self._stopWriting()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        """
        Parse one read and act on what it completed, inside L{oneRead}: a
        client's bytes this read caused (the answer, or a stream's last
        line and its end) leave together when it returns.

        A stream's every read comes here, so the parse is in this method
        and a body's bytes go to its reader's C{dataReceived} directly
        (the response's C{bodyReceived} only when none reads it yet).
        """
        scope = oneRead
        scope.depth += 1
        try:
            parser = self._parser
            if parser is None:
                # Bytes nobody asked for, on an idle connection: it is unusable.
                self.abandon()
                return
            arrived: tuple[Deferred[IResponse] | None, HTTPResponse] | None = None
            for event in parser.feed(data):
                if isinstance(event, ResponseBody):
                    response = self._response
                    if response is not None:
                        protocol = response._protocol
                        if protocol is not None:
                            protocol.dataReceived(event.data)
                        else:
                            response.bodyReceived(event.data)
                elif isinstance(event, ResponseHead):
                    arrived = self._head(event)
                elif isinstance(event, ResponseEnd):
                    self._end(event.reusable)
                else:
                    self._rejected(event)
            if arrived is not None:
                self._deliver(*arrived)
        finally:
            if scope.depth > 1 or not scope.waiting:
                scope.depth -= 1
            else:
                scope.end()

    def _head(self, head: ResponseHead) -> tuple[Deferred[IResponse] | None, HTTPResponse]:
        """
        A response began: it is handed over by L{_deliver} once this read's
        events are all taken, so that a whole small answer (the usual
        non-streamed completion, head and body in one read) reaches its
        reader complete, read in the same call rather than after another
        round through every caller waiting for the end.
        """
        request = self._request
        assert request is not None
        bodyTransport = self._bodyTransport = BodyTransport(self)
        response = self._response = HTTPResponse(head, request, bodyTransport)
        waiting, self._waiting = self._waiting, None
        return waiting, response

    def _deliver(self, waiting: Deferred[IResponse] | None, response: HTTPResponse) -> None:
        if waiting is not None:
            waiting.callback(response)
        if (response is self._response and response._protocol is None
                and self.transport is not None):
            # Nobody reads the body yet: nothing more is read until
            # someone does (deliverBody resumes), so it cannot pile up.
            response.paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def _end(self, reusable: bool) -> None:
        response = self._response
        parser = self._parser
        self._parser = self._response = self._request = None
        if self._writing:
            reusable = False
            self._stopWriting()
        if reusable and self.usable:
            assert self.transport is not None
            self._spare = parser  # its response ended reusable: llhttp is at a start
            if response is None or response.paused or response._transport.paused:
                # Read again when idle (bytes or a close from the backend),
                # if the read was paused: a resume is a reactor call, not
                # made for the common answer that never paused it.
                self.transport.resumeProducing()  # type: ignore[attr-defined]
            if response is not None:
                response._transport.detach()
            self.onIdle(self)
        else:
            self.abandon()
        if response is not None:
            response.bodyComplete()

    def _rejected(self, event: ResponseRejected) -> None:
        self._parser = None
        self.abandon()
        failure = Failure(ResponseParseFailed(event.reason))
        self._fail(failure)

    def _fail(self, failure: Failure) -> None:
        waiting, self._waiting = self._waiting, None
        response, self._response = self._response, None
        if waiting is not None:
            waiting.errback(Failure(ResponseFailed([failure])))
        elif response is not None:
            response.bodyEnded(Failure(ResponseFailed([failure])))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The connection closed: end or fail what was in progress.
        """
        self._lost = True
        self._stopWriting()
        self.onLost(self)
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)
        parser, self._parser = self._parser, None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            received = parser is not None and parser.everReceived
            cls = ResponseFailed if received else ResponseNeverReceived
            waiting.errback(Failure(cls([reason])))
            return
        response, self._response = self._response, None
        if response is None or parser is None:
            return
        end = parser.eof()
        if isinstance(end, ResponseEnd):
            response.bodyEnded(Failure(PotentialDataLoss()))
        elif end is not None:
            response.bodyEnded(Failure(ResponseFailed([reason, Failure(ResponseParseFailed(end.reason))])))

    def close(self) -> Deferred[None]:
        """
        Close an idle connection.

        @return: fires once it is closed.
        """
        d: Deferred[None] = Deferred()
        if self._lost or self.transport is None:
            d.callback(None)
            return d
        self._closed.append(d)
        self.abandon()
        return d


__all__ = ["BytesProducer", "ClientConnection", "HTTPResponse", "ResponseParseFailed", "ConnectionDone", "wholeBody"]
