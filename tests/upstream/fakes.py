"""
Hand-driven stand-ins for an upstream response and a client request, to
feed the body reader piece by piece as Twisted's chunked decoder does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers


class FakeResponse:
    """
    An upstream response whose body the test pushes by hand, piece by piece,
    as Twisted's chunked decoder does within one socket read.
    """

    code = 200
    length = None
    headers = Headers()

    def __init__(self) -> None:
        self.protocol: Any = None
        self.transport = StringTransport()

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def piece(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def end(self) -> None:
        self.protocol.connectionLost(Failure(ResponseDone()))


class FakeRequest:
    """
    The parts of a client request that the relay uses.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.finished: Deferred[None] = Deferred()
        self.requestHeaders = Headers()
        # The client's key may be in the query on Google's routes
        # (ollama_proxy.web.auth.presentedKey reads the path and the URI).
        self.path = b"/api/chat"
        self.uri = b"/api/chat"

    def notifyFinish(self) -> Deferred[None]:
        return self.finished

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)


class _Discard:
    """
    A body protocol that ignores everything.
    """

    def makeConnection(self, transport: Any) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass
