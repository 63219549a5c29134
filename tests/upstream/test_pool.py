"""
The upstream HTTP client built by L{ollama_proxy.upstream.pool}: a body producer
that writes at once (so head and body leave in one send) and endpoints
built once per host.
"""

from __future__ import annotations

import io
import os
import socket
import sys
from http.cookiejar import CookieJar
from importlib.metadata import version
from typing import Any

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web._newclient import HTTP11ClientProtocol, Request
from twisted.web.client import URI, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer

from ollama_proxy.upstream.compat import ConnectionPool
from ollama_proxy.upstream.pool import (
    BytesProducer,
    CachingEndpointFactory,
    bodyProducer,
    makeClient,
)
from tests.upstream.fakes import _Discard


class BytesProducerTests(SynchronousTestCase):
    """
    L{BytesProducer}.
    """

    def test_writesEverythingBeforeReturning(self) -> None:
        """
        The whole body is written inside C{startProducing}, and the returned
        Deferred has already fired: nothing waits for a later reactor turn.
        """
        consumer = StringTransport()
        producer = BytesProducer(b'{"model":"m"}')
        d = producer.startProducing(consumer)
        self.assertEqual(consumer.value(), b'{"model":"m"}')
        self.assertIsNone(self.successResultOf(d))

    def test_lengthIsKnown(self) -> None:
        """
        The length is the body's, so the agent sends C{Content-Length}
        rather than chunked encoding.
        """
        self.assertEqual(BytesProducer(b"12345").length, 5)
        self.assertTrue(IBodyProducer.providedBy(BytesProducer(b"")))

    def test_bodyProducerAdaptsBytesOnly(self) -> None:
        """
        C{bytes} get a L{BytesProducer}; other bodies (files) keep treq's
        default adaptation.
        """
        self.assertIsInstance(bodyProducer(b"x"), BytesProducer)
        self.assertIsInstance(bodyProducer(io.BytesIO(b"x")), FileBodyProducer)


class CachingEndpointFactoryTests(SynchronousTestCase):
    """
    L{CachingEndpointFactory}.
    """

    def setUp(self) -> None:
        self.factory = CachingEndpointFactory(MemoryReactorClock(), connectTimeout=3)

    def test_sameHostSameEndpoint(self) -> None:
        """
        Two requests to one host and port use one endpoint object.
        """
        first = self.factory.endpointForURI(URI.fromBytes(b"http://backend.test:4000/v1/models"))
        second = self.factory.endpointForURI(URI.fromBytes(b"http://backend.test:4000/v1/chat/completions"))
        self.assertIs(first, second)
        self.assertIsInstance(first, HostnameEndpoint)

    def test_addressConnectedDirectly(self) -> None:
        """
        A host that is an IPv4 or IPv6 address gets a TCP endpoint of its
        family, connecting without a resolver (no thread, no turn), with
        the connect timeout; a name still gets C{HostnameEndpoint}.
        """
        reactor = MemoryReactorClock()
        factory = CachingEndpointFactory(reactor, connectTimeout=3)
        v4 = factory.endpointForURI(URI.fromBytes(b"http://127.0.0.1:4000/v1/models"))
        v6 = factory.endpointForURI(URI.fromBytes(b"http://[::1]:4001/v1/models"))
        name = factory.endpointForURI(URI.fromBytes(b"http://localhost:4002/v1/models"))
        self.assertIsInstance(v4, TCP4ClientEndpoint)
        self.assertIsInstance(v6, TCP6ClientEndpoint)
        self.assertIsInstance(name, HostnameEndpoint)
        v4.connect(Factory.forProtocol(Protocol))
        v6.connect(Factory.forProtocol(Protocol))
        self.assertEqual([(host, port, timeout) for host, port, _, timeout, _ in reactor.tcpClients],
                         [("127.0.0.1", 4000, 3), ("::1", 4001, 3)])

    def test_differentPortOrSchemeDifferentEndpoint(self) -> None:
        """
        The key includes the scheme and port; C{https} is wrapped in TLS.
        """
        plain = self.factory.endpointForURI(URI.fromBytes(b"http://example.com/"))
        other = self.factory.endpointForURI(URI.fromBytes(b"http://example.com:8080/"))
        tls = self.factory.endpointForURI(URI.fromBytes(b"https://example.com/"))
        self.assertIsNot(plain, other)
        self.assertIsNot(plain, tls)
        self.assertNotIsInstance(tls, HostnameEndpoint)

    def test_otherSchemeRejected(self) -> None:
        """
        Only http and https are spoken.
        """
        self.assertRaises(ValueError, self.factory.endpointForURI, URI.fromBytes(b"ftp://example.com/"))

    def test_cacheIsBounded(self) -> None:
        """
        Past C{maxSize} hosts, endpoints are still built but not kept.
        """
        self.factory.maxSize = 2
        for port in range(3):
            self.factory.endpointForURI(URI.fromBytes(b"http://h:%d/" % (9000 + port)))
        again = self.factory.endpointForURI(URI.fromBytes(b"http://h:9002/"))
        self.assertIsNot(again, self.factory.endpointForURI(URI.fromBytes(b"http://h:9002/")))
        self.assertIs(
            self.factory.endpointForURI(URI.fromBytes(b"http://h:9000/")),
            self.factory.endpointForURI(URI.fromBytes(b"http://h:9000/")),
        )


def nagleOff(protocol: Protocol) -> bool:
    """
    @return: whether C{protocol}'s TCP socket has C{TCP_NODELAY} set.
    """
    assert protocol.transport is not None
    handle = protocol.transport.getHandle()  # type: ignore[attr-defined]
    return bool(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class NoDelayTests(TestCase):
    """
    Upstream connections send without Nagle's delay, over real sockets.
    """

    async def connected(self, url: bytes | None = None, endpoint: Any = None) -> Protocol:
        reactor: Any = _reactor
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        if endpoint is None:
            assert url is not None
            uri = URI.fromBytes(url % port.getHost().port)
            endpoint = CachingEndpointFactory(reactor, connectTimeout=5).endpointForURI(uri)
        else:
            endpoint = endpoint(reactor, "127.0.0.1", port.getHost().port)
        protocol: Protocol = await endpoint.connect(Factory.forProtocol(Protocol))
        assert protocol.transport is not None
        self.addCleanup(protocol.transport.loseConnection)
        return protocol

    async def test_address(self) -> None:
        """
        A backend given by IP address: C{TCP_NODELAY} is set by the time
        the connection is handed to the agent (before its first write).
        """
        self.assertTrue(nagleOff(await self.connected(b"http://127.0.0.1:%d/v1")))

    async def test_name(self) -> None:
        """
        A backend given by name (C{HostnameEndpoint}, which may race
        several addresses): the same.
        """
        self.assertTrue(nagleOff(await self.connected(b"http://localhost:%d/v1")))

    async def test_twistedDefault(self) -> None:
        """
        What the option changes: Twisted's own client endpoint leaves
        Nagle's algorithm on.
        """
        self.assertFalse(nagleOff(await self.connected(endpoint=TCP4ClientEndpoint)))


class MakeClientTests(SynchronousTestCase):
    """
    L{makeClient}.
    """

    def test_poolSettings(self) -> None:
        """
        The pool is persistent, sized as asked, and never retries a request
        on its own (a retried POST would be sent to the model twice).
        """
        http, pool = makeClient(MemoryReactorClock(), 128, 5.0)
        assert isinstance(pool, HTTPConnectionPool)
        self.assertTrue(pool.persistent)
        self.assertEqual(pool.maxPersistentPerHost, 128)
        self.assertFalse(pool.retryAutomatically)
        self.assertTrue(callable(http.request))

    def test_requestHeadAndBodyInOneWrite(self) -> None:
        """
        A POST made through the client puts the request head and the JSON
        body into the transport in the same reactor turn: the connection's
        buffer holds both right after the connection is made, with no
        cooperator tick in between.
        """
        reactor = MemoryReactorClock()
        http, _ = makeClient(reactor, 4, 5.0)
        http.request("POST", "http://127.0.0.1:4000/v1/chat/completions", data=b'{"a":1}')
        # HostnameEndpoint resolves, then connects: let it run.
        reactor.advance(0)
        for _ in range(5):
            reactor.advance(0.01)
        self.assertTrue(reactor.tcpClients, "the agent did not connect")
        host, port, factory, _, _ = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 4000))
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        written = transport.value()
        self.assertTrue(written.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n"))
        self.assertIn(b"Content-Length: 7\r\n", written)
        self.assertTrue(written.endswith(b'\r\n\r\n{"a":1}'))


class CookieTests(SynchronousTestCase):
    """
    The shared upstream client keeps no cookies.
    """

    def storeFrom(self, jar: "CookieJar") -> list[object]:
        """
        Offer C{jar} a C{Set-Cookie} from the backend; return what it kept.
        """
        import email
        from urllib.request import Request as URLRequest

        class Reply:
            def info(self) -> email.message.Message:
                return email.message_from_string("Set-Cookie: session=abc; Path=/\n\n")

        jar.extract_cookies(Reply(), URLRequest("http://backend.test/v1/models"))  # type: ignore[arg-type]
        return list(jar)

    def test_refused(self) -> None:
        """
        A backend's C{Set-Cookie} is not stored (a default jar would keep it
        and replay it on every user's later requests).
        """
        from http.cookiejar import CookieJar

        from ollama_proxy.upstream.pool import refusingCookieJar

        self.assertEqual(len(self.storeFrom(CookieJar())), 1)
        self.assertEqual(self.storeFrom(refusingCookieJar()), [])


class PoolRaceTests(SynchronousTestCase):
    """
    L{ollama_proxy.upstream.compat.ConnectionPool} does not cache a connection that
    is already closing (found by the soak: spurious 502s after aborted
    streams).
    """

    poolFactory: Any = ConnectionPool

    def finishResponse(self, closeFirst: bool) -> list[Any]:
        pool = self.poolFactory(MemoryReactorClock(), persistent=True)
        key = ("http", b"backend", 4000)
        protocol = HTTP11ClientProtocol(lambda p: pool._putConnection(key, p))
        # Lenient like a TCP transport, which accepts resumeProducing while
        # it is closing.
        transport = StringTransport(lenient=True)
        protocol.makeConnection(transport)
        d = protocol.request(
            Request(b"GET", b"/", Headers({b"host": [b"backend"]}), None, persistent=True)
        )
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        response = self.successResultOf(d)
        response.deliverBody(_Discard())
        if closeFirst:
            # What stopProducing does when the client leaves: a lazy close.
            transport.loseConnection()
        # ...while the rest of the body was already in the socket buffer.
        protocol.dataReceived(b"ok")
        self.assertEqual(protocol.state, "QUIESCENT")
        cached: list[Any] = pool._connections.get(key, [])
        return cached

    def test_closingConnectionNotCached(self) -> None:
        """
        A response that completes after its transport was told to close
        does not put the connection back in the pool.
        """
        self.assertEqual(self.finishResponse(closeFirst=True), [])

    def test_quietFactory(self) -> None:
        """
        Upstream connections are not announced with "Starting factory" /
        "Stopping factory" log lines (two per connection under load).
        """
        self.assertFalse(ConnectionPool._factory.noisy)

    def test_healthyConnectionCached(self) -> None:
        """
        A normal keep-alive connection is still reused.
        """
        self.assertEqual(len(self.finishResponse(closeFirst=False)), 1)


class PinnedDependencyTests(SynchronousTestCase):
    """
    The private Twisted API the pool relies on, and treq's collector shape
    the body reader follows, are only known for the releases tried: both
    dependencies have an upper bound, and the installed ones are within it.
    """

    def requirements(self) -> dict[str, Requirement]:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(os.path.join(root, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)["project"]
        found = [Requirement(line) for line in project["dependencies"]]
        return {r.name.lower(): r for r in found}

    def test_upperBounds(self) -> None:
        """
        C{twisted} and C{treq} are bounded above (C{<N}).
        """
        requirements = self.requirements()
        for name in ("twisted", "treq"):
            bounds = [s for s in requirements[name].specifier if s.operator in ("<", "<=")]
            self.assertEqual(len(bounds), 1, (name, str(requirements[name].specifier)))

    def test_installedWithin(self) -> None:
        """
        The installed releases satisfy the bounds (a newer one is a failing
        test, not a silent fallback).
        """
        requirements = self.requirements()
        for name in ("twisted", "treq"):
            installed = version(name)
            self.assertTrue(requirements[name].specifier.contains(installed, prereleases=True),
                            (name, installed, str(requirements[name].specifier)))
