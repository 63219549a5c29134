# -*- test-case-name: tests.upstream.test_message -*-
"""
The two sides of one exchange on a L{ollama_proxy.upstream.connection.
ClientConnection}, as treq sees them: L{BytesProducer}, a request body in
memory (written with the request head, in one send); L{HTTPResponse}, the
C{IResponse} whose body is buffered until a protocol is attached, then
delivered as it arrives, with L{BodyTransport} (the connection while the
response lasts) as that protocol's push producer; and L{wholeBody}, a
small answer's body taken as it is when it came whole with its head.
Their own module so that the connection stays one screenful of state
machine.
"""

from __future__ import annotations

import typing
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IClientRequest, IResponse
from zope.interface import implementer

from ollama_proxy.protocol.llhttp import ResponseHead


class Connection(typing.Protocol):
    """
    What a response's body transport needs of its connection.
    """

    transport: Any

    def abandon(self) -> None:
        """
        Close the connection; it is never reused.
        """


CONNECTION_HEADERS = frozenset({
    b"content-length", b"connection", b"keep-alive", b"te", b"trailers",
    b"transfer-encoding", b"upgrade", b"proxy-connection",
})
"""Headers Twisted's client keeps out of C{response.headers} (its
C{connHeaders}); C{Content-Length} stays in for a C{HEAD} answer."""


@implementer(IClientRequest)
class ClientRequest:
    """
    What a response says about its request (C{IResponse.request}).
    """

    def __init__(self, method: bytes, absoluteURI: bytes, headers: Headers) -> None:
        self.method = method
        self.absoluteURI = absoluteURI
        self.headers = headers


@implementer(IPushProducer)
class BodyTransport:
    """
    The body protocol's transport: the upstream connection while its
    response lasts, inert after (the connection may be serving another
    request by then).
    """

    def __init__(self, connection: Connection) -> None:
        self._connection: Connection | None = connection
        self.paused = False
        """Whether the body's reader paused the connection's read (and did
        not resume it): the connection resumes it when the response ends."""

    def detach(self) -> None:
        """
        The response is over: nothing here reaches the connection any more.
        """
        self._connection = None

    def pauseProducing(self) -> None:
        """
        Stop reading the upstream socket (the client is slow).
        """
        self.paused = True
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read the upstream socket again.
        """
        self.paused = False
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        Nobody wants the rest: close the connection (never pooled).
        """
        if self._connection is not None:
            self._connection.abandon()

    def loseConnection(self) -> None:
        """
        The same as L{stopProducing} (treq's collector calls this).
        """
        self.stopProducing()


def _done() -> Failure:
    """
    @return: how a complete body ends, as Twisted's client says it.
    """
    return Failure(ResponseDone("Response body fully received"))


_TAKEN = Protocol()
"""The body protocol of a response whose whole body was taken."""


def wholeBody(response: IResponse) -> bytes | None:
    """
    @param response: a response from this module's connection, as treq
        gives it (its C{_Response} wrapper, whose C{original} it is), or any
        other (decoded, or from another agent).
    @return: its body if it arrived whole with its head (see
        L{HTTPResponse.takeWholeBody}), else C{None}: read it as usual.
    """
    original = getattr(response, "original", response)
    if type(original) is not HTTPResponse:
        return None
    return original.takeWholeBody()


@implementer(IBodyProducer)
class BytesProducer:
    """
    An L{IBodyProducer} for a body already in memory: it writes everything
    in L{startProducing}, before the reactor runs again (and
    L{ClientConnection} writes it with the head itself).

    @ivar length: the body length, so the agent sends C{Content-Length}.
    @ivar body: the body.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """
        Write the whole body.

        @param consumer: the request's body consumer.
        @return: an already-fired L{Deferred}.
        """
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """
        Nothing to pause: the body was written at once.
        """

    def resumeProducing(self) -> None:
        """
        Nothing to resume.
        """

    def stopProducing(self) -> None:
        """
        Nothing to stop.
        """


@implementer(IResponse)
class HTTPResponse:
    """
    A response whose body is buffered until a protocol is attached, then
    delivered as it arrives.
    """

    previousResponse: IResponse | None = None

    def __init__(self, head: ResponseHead, request: ClientRequest, transport: BodyTransport) -> None:
        self.version = head.version
        self.code = head.code
        self.phrase = head.phrase
        headers = self.headers = Headers()
        keepLength = request.method == b"HEAD"
        for name, value in head.headers:
            lower = name.lower()
            if lower in CONNECTION_HEADERS and not (keepLength and lower == b"content-length"):
                continue
            headers.addRawHeader(lower, value)
        self.length: int | object = UNKNOWN_LENGTH if head.length is None else head.length
        self.request = request
        self._transport = transport
        self._protocol: IProtocol | None = None
        self._buffer: list[bytes] = []
        self._end: Failure | None = None
        self._complete = False
        self.paused = False
        """Whether the connection paused its read for want of a body
        protocol (L{deliverBody} resumes it)."""

    def setPreviousResponse(self, response: IResponse) -> None:
        """
        @param response: the response this one follows (a redirect).
        """
        self.previousResponse = response

    def deliverBody(self, protocol: IProtocol) -> None:
        """
        Deliver the body to C{protocol}: what arrived so far at once, the
        rest as it arrives, then C{connectionLost} with C{ResponseDone},
        C{PotentialDataLoss} or C{ResponseFailed}.

        @param protocol: the body's protocol.
        @raise RuntimeError: if a protocol is already attached.
        """
        if self._protocol is not None:
            raise RuntimeError("Response already has protocol")
        self._protocol = protocol
        protocol.makeConnection(self._transport)  # type: ignore[arg-type]
        buffered, self._buffer = self._buffer, []
        for data in buffered:
            protocol.dataReceived(data)
        if self._complete:
            self._complete = False
            protocol.connectionLost(_done())
        elif self._end is not None:
            end, self._end = self._end, None
            protocol.connectionLost(end)
        elif self.paused:
            self.paused = False
            self._transport.resumeProducing()

    def takeWholeBody(self) -> bytes | None:
        """
        The body, if it arrived whole before anyone asked for it (a small
        answer, read with its head): taken at once, with no body protocol,
        and this response is then read (a later L{deliverBody} fails).

        @return: the body, or C{None} when it did not arrive whole yet (or
            ended otherwise than complete, or is being read already): read
            it with L{deliverBody}.
        """
        if self._protocol is not None or not self._complete:
            return None
        self._protocol = _TAKEN
        self._complete = False
        buffered, self._buffer = self._buffer, []
        return buffered[0] if len(buffered) == 1 else b"".join(buffered)

    def bodyReceived(self, data: bytes) -> None:
        """
        @param data: body bytes from the connection.
        """
        if self._protocol is None:
            self._buffer.append(data)
        else:
            self._protocol.dataReceived(data)

    def bodyEnded(self, reason: Failure) -> None:
        """
        @param reason: how the body ended.
        """
        self._transport.detach()
        if self._protocol is None:
            self._end = reason
        else:
            self._protocol.connectionLost(reason)

    def bodyComplete(self) -> None:
        """
        The body ended whole: L{bodyEnded} with C{ResponseDone}, whose
        L{Failure} is made only for a protocol that reads it (a body taken
        whole needs none: a Failure walks its exception's classes).
        """
        self._transport.detach()
        if self._protocol is None:
            self._complete = True
        else:
            self._protocol.connectionLost(_done())
