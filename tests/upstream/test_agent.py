"""
Tests for L{ollama_proxy.upstream.agent}: treq driving L{FastAgent} over
real loopback sockets to a C{twisted.web} server (keep-alive, chunked
streams, back-pressure, cancellation), and the pool's limits on a
L{MemoryReactorClock}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from ollama_proxy.upstream.agent import FastAgent, KeepAlivePool
from ollama_proxy.upstream.body import BodyReader, readBody
from ollama_proxy.upstream.pool import makeClient

reactor: Any = _reactor


ENDLESS_BUDGET = 16 * 1024 * 1024
"""Bytes an endless flood writes at most before it only holds the stream open."""


async def waitFor(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """
    Let the reactor run until C{condition()} is true, or fail after
    C{timeout} seconds: a wait on what the test needs, never a guess at
    how long it takes on a loaded machine.
    """
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        await deferLater(reactor, 0.01, lambda: None)


@implementer(IPushProducer)
class Flood:
    """
    A server-side push producer writing 64 KiB blocks until paused, up to a
    total; it records pauses and whether the client went away.

    An C{endless} flood never ends the response itself: after its total
    (a byte budget, so a client that never leaves cannot fill memory) it
    holds the stream open until the client leaves, so a test that stops
    reading mid-stream is mid-stream however slowly the machine runs.
    """

    def __init__(self, request: Request, total: int, endless: bool = False) -> None:
        self.request = request
        self.left = total
        self.endless = endless
        self.pauses = 0
        self.paused = False
        self.gone = False
        self.finished = False
        request.notifyFinish().addErrback(self._gone)

    def _gone(self, _: Failure) -> None:
        self.gone = True

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left > 0 and not self.gone:
            block = min(self.left, 65536)
            self.left -= block
            self.request.write(b"x" * block)
        if self.left == 0 and not self.gone and not self.endless and not self.finished:
            self.finished = True
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def stopProducing(self) -> None:
        self.gone = True


class Server(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.floods: list[Flood] = []
        self.held: list[Request] = []
        self.peers: list[int] = []
        self.lost: list[Request] = []

    def render(self, request: Request) -> Any:
        self.peers.append(getattr(request.getClientAddress(), "port", 0))
        path = request.path
        if path == b"/echo":
            assert request.content is not None
            return b"echo:" + request.content.read()
        if path == b"/stream":
            for i in range(100):
                request.write(b"data: %d\n\n" % i)
            request.finish()
            return NOT_DONE_YET
        if path in (b"/flood", b"/endless"):
            if path == b"/flood":
                flood = Flood(request, 8 * 1024 * 1024)
            else:
                flood = Flood(request, ENDLESS_BUDGET, endless=True)
            self.floods.append(flood)
            flood.start()
            return NOT_DONE_YET
        if path == b"/hold":
            self.held.append(request)
            request.notifyFinish().addErrback(lambda _: self.lost.append(request))
            return NOT_DONE_YET
        return b"ok"


class AgentTests(TestCase):
    """
    treq over L{FastAgent}, against a real server on 127.0.0.1.
    """

    def setUp(self) -> None:
        self.server = Server()
        site = Site(self.server)
        site.noisy = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.http, pool = makeClient(reactor, 4, 5.0, httpParser="httptools")
        assert isinstance(pool, KeepAlivePool)
        self.pool = pool
        self.addCleanup(pool.closeCachedConnections)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def test_keepAlive(self) -> None:
        """
        Two requests in a row share one connection; a POST body arrives.
        """
        r1 = await self.http.request("POST", self.base + "/echo", data=b"hi", unbuffered=True)
        self.assertEqual(await readBody(r1), b"echo:hi")
        r2 = await self.http.request("GET", self.base + "/x", unbuffered=True)
        self.assertEqual(await readBody(r2), b"ok")
        self.assertEqual(len(set(self.server.peers)), 1)

    async def test_chunkedStream(self) -> None:
        """
        A chunked response arrives whole through the body reader.
        """
        response = await self.http.request("GET", self.base + "/stream", unbuffered=True)
        body = await readBody(response, reactor, 5.0)
        self.assertEqual(body, b"".join(b"data: %d\n\n" % i for i in range(100)))

    async def test_backPressure(self) -> None:
        """
        A reader that pauses the upstream transport stops the socket read:
        the server sees its writes paused and does not finish while the
        reader waits; resumed, everything arrives.
        """
        response = await self.http.request("GET", self.base + "/flood", unbuffered=True)
        got: list[int] = []
        done: Deferred[None] = Deferred()

        class Slow(Protocol):
            def dataReceived(self, data: bytes) -> None:
                got.append(len(data))
                if len(got) == 1:
                    transport: Any = self.transport
                    transport.pauseProducing()

            def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
                done.callback(None)

        slow = Slow()
        response.deliverBody(slow)
        [flood] = self.server.floods
        left: list[int] = []

        def stalled() -> bool:
            # Paused, and not one byte more written over the last 20 turns
            # of the reactor: the socket is full because nobody reads it.
            left.append(flood.left)
            return flood.paused and len(left) > 20 and left[-21] == flood.left

        await waitFor(stalled, "the server's writes to stall")
        self.assertGreater(flood.pauses, 0)
        self.assertTrue(flood.paused)
        self.assertGreater(flood.left, 0)
        self.assertLess(sum(got), 8 * 1024 * 1024)
        slowTransport: Any = slow.transport
        slowTransport.resumeProducing()
        await done
        self.assertEqual(sum(got), 8 * 1024 * 1024)

    async def test_cancelBeforeHead(self) -> None:
        """
        Cancelling a request the server holds closes the upstream
        connection (the server sees its client leave) and pools nothing.
        """
        d = self.http.request("GET", self.base + "/hold", unbuffered=True)
        await waitFor(lambda: self.server.held, "the server to hold the request")
        d.cancel()
        with self.assertRaises(Exception) as caught:
            await d
        self.assertTrue(isinstance(caught.exception, CancelledError)
                        or "Cancelled" in repr(caught.exception))
        await waitFor(lambda: self.server.lost, "the server to see its client leave")
        self.assertEqual(self.pool._idle.get((b"http", b"127.0.0.1", self.port.getHost().port), []), [])

    async def test_readerStops(self) -> None:
        """
        A body reader cancelled mid-stream (the client hung up) closes the
        upstream connection: the server, whose stream never ends by itself,
        sees its client leave, and nothing more reaches the collector.
        """
        response = await self.http.request("GET", self.base + "/endless", unbuffered=True)
        seen: list[bytes] = []

        def collect(data: bytes) -> None:
            seen.append(data)

        reading = Deferred.fromCoroutine(BodyReader(collect, reactor, 5.0).read(response))
        await waitFor(lambda: seen, "the first bytes")
        reading.cancel()
        with self.assertRaises(CancelledError):
            await reading
        delivered = len(seen)
        [flood] = self.server.floods
        await waitFor(lambda: flood.gone, "the server to see its client leave")
        self.assertFalse(flood.finished)
        self.assertEqual(len(seen), delivered)
        self.assertEqual(self.pool._idle.get((b"http", b"127.0.0.1", self.port.getHost().port), []), [])


def selfSigned() -> tuple[bytes, bytes]:
    """
    @return: a self-signed certificate for C{localhost} and its key, PEM.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keyPEM = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), keyPEM


class TLSTests(TestCase):
    """
    C{https} upstreams: the endpoint factory's TLS under L{FastAgent}.
    """

    async def test_https(self) -> None:
        """
        Over TLS, verified against the server's certificate: a keep-alive
        pair of requests on one connection, a chunked stream, and a stopped
        reader that closes the connection.
        """
        from twisted.internet import ssl
        from twisted.web.iweb import IPolicyForHTTPS

        from ollama_proxy.upstream.pool import CachingEndpointFactory, clientFor

        certPEM, keyPEM = selfSigned()
        server = Server()
        site = Site(server)
        site.noisy = False
        options = ssl.PrivateCertificate.loadPEM(certPEM + keyPEM).options()
        port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        trust = ssl.Certificate.loadPEM(certPEM)

        @implementer(IPolicyForHTTPS)
        class TrustOurs:
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=trust)

        pool = KeepAlivePool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        http = clientFor(FastAgent(reactor, CachingEndpointFactory(reactor, 5.0, TrustOurs()), pool))
        base = f"https://localhost:{port.getHost().port}"
        first = await http.request("POST", base + "/echo", data=b"tls", unbuffered=True)
        self.assertEqual(await readBody(first), b"echo:tls")
        second = await http.request("GET", base + "/stream", unbuffered=True)
        self.assertEqual(await readBody(second), b"".join(b"data: %d\n\n" % i for i in range(100)))
        self.assertEqual(len(set(server.peers)), 1)
        flood = await http.request("GET", base + "/endless", unbuffered=True)
        seen: list[bytes] = []
        reading = Deferred.fromCoroutine(BodyReader(seen.append, reactor, 5.0).read(flood))
        await waitFor(lambda: seen, "the first bytes")
        reading.cancel()
        with self.assertRaises(CancelledError):
            await reading
        await waitFor(lambda: server.floods[0].gone, "the server to see its client leave")
        self.assertFalse(server.floods[0].finished)


class Scripted(Protocol):
    """
    A raw server connection answering each request head with the next of
    its factory's scripted answers (bytes no twisted.web server would send).
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            answers: list[bytes] = self.factory.answers
            assert self.transport is not None
            self.transport.write(answers.pop(0))


class ParserReuseTests(TestCase):
    """
    treq over L{FastAgent} on one keep-alive connection whose parser is
    reused, against a server that answers as scripted.
    """

    async def test_refusedThenFresh(self) -> None:
        """
        Three answers on one connection (its parser reset between them),
        then a refused one (two lengths): that request fails and its
        connection is closed; the next request gets a new connection and
        is answered right.
        """
        from twisted.internet.protocol import ServerFactory

        factory = ServerFactory.forProtocol(Scripted)
        factory.connections = 0  # type: ignore[attr-defined]
        factory.answers = [  # type: ignore[attr-defined]
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nthree",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nno",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfive",
        ]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        http, pool = makeClient(reactor, 4, 5.0, httpParser="httptools")
        self.addCleanup(pool.closeCachedConnections)
        url = f"http://127.0.0.1:{port.getHost().port}/x"
        bodies = []
        for _ in range(3):
            response = await http.request("GET", url, unbuffered=True)
            bodies.append((response.code, await readBody(response, reactor, 5.0)))
        self.assertEqual(bodies, [(200, b"one"), (200, b"two"), (404, b"three")])
        self.assertEqual(factory.connections, 1)  # type: ignore[attr-defined]
        with self.assertRaises(Exception) as caught:
            await http.request("GET", url, unbuffered=True)
        self.assertIn("ResponseFailed", repr(caught.exception))
        response = await http.request("GET", url, unbuffered=True)
        self.assertEqual(await readBody(response, reactor, 5.0), b"five")
        self.assertEqual(factory.connections, 2)  # type: ignore[attr-defined]


class PoolTests(TestCase):
    """
    L{KeepAlivePool}'s limits.
    """

    def test_limits(self) -> None:
        """
        At most C{maxPersistentPerHost} idle connections per upstream (the
        oldest is closed); an idle one is closed after
        C{cachedConnectionTimeout}; C{closeCachedConnections} closes all.
        """
        from twisted.internet.task import Clock

        from ollama_proxy.upstream.connection import ClientConnection

        clock = Clock()
        pool = KeepAlivePool(clock)
        pool.maxPersistentPerHost = 2
        key = (b"http", b"h", 80)
        closed: list[ClientConnection] = []

        def make() -> ClientConnection:
            from twisted.internet.testing import StringTransport

            c = ClientConnection(lambda c: None, lambda c: None)
            c.makeConnection(StringTransport())
            def abandon() -> None:
                closed.append(c)

            c.abandon = abandon  # type: ignore[method-assign]
            return c

        a, b, c = make(), make(), make()
        for conn in (a, b, c):
            pool.put(key, conn)
        self.assertEqual(closed, [a])
        self.assertIs(pool.take(key), c)
        clock.advance(pool.cachedConnectionTimeout + 1)
        self.assertEqual(closed, [a, b])
        self.assertIsNone(pool.take(key))
        # A connection back from a request is kept for the whole timeout
        # from then on, not from when it was idle before; a busy one is
        # never closed by the timeout.
        pool.put(key, c)
        clock.advance(pool.cachedConnectionTimeout - 1)
        self.assertIs(pool.take(key), c)
        clock.advance(pool.cachedConnectionTimeout * 2)
        self.assertEqual(closed, [a, b])
        pool.put(key, c)
        clock.advance(pool.cachedConnectionTimeout - 1)
        self.assertIs(pool.take(key), c)
        pool.put(key, c)
        clock.advance(pool.cachedConnectionTimeout - 1)
        self.assertEqual(closed, [a, b])
        clock.advance(1)
        self.assertEqual(closed, [a, b, c])
        self.assertIsNone(pool.take(key))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_agentIsTreqs(self) -> None:
        """
        C{makeClient(httpParser="httptools")} gives treq a L{FastAgent}.
        """
        http, pool = makeClient(reactor, 8, 1.0, httpParser="httptools")
        self.assertIsInstance(http._agent, FastAgent)
        self.assertIsInstance(pool, KeepAlivePool)
        self.assertEqual(pool.maxPersistentPerHost, 8)
        self.assertFalse(pool.retryAutomatically)
