"""
L{MemoryTreq} and L{MemoryAgent}: treq's functions against a resource over
in-memory connections that say whether anything moved.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.error import SchemeNotSupported
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ollama_proxy.testing.memory import MemoryTreq, SynchronousProducer


class Held(Resource):
    """
    Answers nothing until the test writes: holds each request.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


class Echo(Resource):
    """
    Answers the method, the body and whether the connection is secure.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        secure = b"secure" if request.isSecure() else b"plain"
        return b" ".join([request.method, request.content.read(), secure])


class MemoryTreqTests(SynchronousTestCase):
    """
    The client side: treq's functions, bodies, schemes.
    """

    def test_roundTrip(self) -> None:
        """
        A POST's body (bytes or text) reaches the resource and its answer
        comes back: a new connection is flushed once as it opens (as
        C{StubTreq}'s are), so a synchronous answer needs no more.
        """
        client = MemoryTreq(Echo())
        for data in (b"bytes", "text"):
            d = client.post("http://memory.test/x", data=data)
            self.assertFalse(client.flush())
            response = self.successResultOf(d)
            body = self.successResultOf(client.content(response))
            self.assertEqual(body, b"POST " + (data if isinstance(data, bytes) else data.encode())
                             + b" plain")

    def test_https(self) -> None:
        """
        An https URL makes both ends secure transports, as C{StubTreq}
        does.
        """
        client = MemoryTreq(Echo())
        d = client.get("https://memory.test/")
        client.flush()
        body = self.successResultOf(client.content(self.successResultOf(d)))
        self.assertEqual(body, b"GET  secure")
        self.assertEqual(client.agent.connections, [])

    def test_otherSchemes(self) -> None:
        """
        Anything but http and https fails the request at once.
        """
        client = MemoryTreq(Echo())
        self.failureResultOf(client.get("ftp://memory.test/"), SchemeNotSupported)
        self.assertEqual(client.agent.connections, [])

    def test_producer(self) -> None:
        """
        The body producer writes the whole body at once and refuses other
        types (what treq's C{data=} would have streamed from a file).
        """
        written: list[bytes] = []

        class Consumer:
            write = written.append

        producer = SynchronousProducer("é")
        self.successResultOf(producer.startProducing(Consumer()))  # type: ignore[arg-type]
        self.assertEqual((written, producer.length), ([b"\xc3\xa9"], 2))
        self.assertRaises(TypeError, SynchronousProducer, 12)


class FlushTests(SynchronousTestCase):
    """
    The server side: L{MemoryAgent.flush} says whether anything moved, and
    L{MemoryAgent.pending} what is left.
    """

    def test_flushSaysWhetherAnythingMoved(self) -> None:
        """
        True while bytes or a disconnect move, False once quiet; a
        connection whose both ends closed is dropped.
        """
        held = Held()
        client = MemoryTreq(held)
        d = client.get("http://memory.test/")
        # Delivered as the connection opened.
        self.assertFalse(client.flush())
        [request] = held.requests
        [connection] = client.agent.connections
        self.assertIsInstance(connection.server, HTTPChannel)
        request.write(b"partial")
        self.assertTrue(client.flush())
        self.assertFalse(client.flush())
        request.finish()
        connection.clientIO.loseConnection()
        self.assertTrue(client.flush())
        self.assertEqual(client.agent.connections, [])
        self.assertEqual(self.successResultOf(client.content(self.successResultOf(d))), b"partial")

    def test_pending(self) -> None:
        """
        Bytes written and not yet flushed, and a close not yet delivered,
        are named with their side.
        """
        held = Held()
        client = MemoryTreq(held)
        client.get("http://memory.test/")
        client.flush()
        self.assertEqual(client.agent.pending(), [])
        [request] = held.requests
        request.write(b"12345")
        [pending] = client.agent.pending()
        self.assertIn("bytes buffered on the server side", pending)
        client.flush()
        client.agent.connections[0].clientIO.loseConnection()
        [pending] = client.agent.pending()
        self.assertIn("an undelivered disconnect on the client side", pending)
