"""
L{ollama_proxy.upstream.compat.BatchingChunkedDecoder}: Twisted's chunked
decoder, one delivery per read.  It must decode exactly what Twisted's own
decoder decodes, with its errors, at any split; these tests also pin the
private Twisted API the pool module hooks into.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import HTTP11ClientProtocol, HTTPClientParser, Request
from twisted.web.http import _ChunkedTransferDecoder, _DataLoss, _MalformedChunkedDataError
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from ollama_proxy.upstream.compat import (
    BatchingChunkedDecoder,
    BatchingClientProtocol,
    ConnectionPool,
)
from tests.upstream.fakes import _Discard


class Recorder:
    """
    A decoder's two callbacks, recorded.
    """

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.finished: list[bytes] = []

    def data(self, data: bytes) -> None:
        self.calls.append(data)

    def finish(self, rest: bytes) -> None:
        self.finished.append(rest)


def decode(factory: Any, reads: list[bytes]) -> tuple[Recorder, BaseException | None]:
    """
    Feed C{reads} to a decoder built by C{factory}; return what it
    delivered and the error it raised, if any.
    """
    rec = Recorder()
    decoder = factory(rec.data, rec.finish)
    try:
        for read in reads:
            decoder.dataReceived(read)
    except Exception as e:  # noqa: BLE001 - compared below
        return rec, e
    return rec, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    C{data} cut at the given offsets (modulo its length).
    """
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a] or [b""]


def encode(chunks: list[bytes], ext: bool = False, trailer: bool = False, rest: bytes = b"") -> bytes:
    """
    A chunked body (optionally with extensions and a trailer), followed by
    C{rest}.
    """
    out = b"".join(
        b"%x%s\r\n%s\r\n" % (len(c), b";a=b" if ext and i % 3 == 1 else b"", c)
        for i, c in enumerate(chunks) if c
    )
    return out + b"0\r\n" + (b"X-T: 1\r\n" if trailer else b"") + b"\r\n" + rest


class EquivalenceTests(SynchronousTestCase):
    """
    The batching decoder delivers the same bytes, finish data and errors as
    Twisted's decoder.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        chunks=st.lists(st.binary(min_size=0, max_size=40), max_size=30),
        cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
        ext=st.booleans(),
        trailer=st.booleans(),
        rest=st.binary(max_size=8),
    )
    def test_sameAsTwisted(
        self, chunks: list[bytes], cuts: list[int], ext: bool, trailer: bool, rest: bytes
    ) -> None:
        """
        At any split, the delivered bytes and the bytes after the terminal
        chunk are Twisted's, with at most one delivery per read (a read
        after the terminal chunk's read is an error in both).
        """
        reads = split(encode(chunks, ext, trailer, rest), cuts)
        ours, ourError = decode(BatchingChunkedDecoder, reads)
        theirs, theirError = decode(_ChunkedTransferDecoder, reads)
        self.assertEqual(type(ourError), type(theirError))
        if not rest:
            self.assertIsNone(ourError)
        self.assertEqual(b"".join(ours.calls), b"".join(theirs.calls))
        self.assertEqual(ours.finished, theirs.finished)
        self.assertLessEqual(len(ours.calls), len(reads))

    @settings(max_examples=300, deadline=None)
    @given(
        body=st.binary(max_size=60).map(lambda b: b"5\r\nhello\r\n" + b),
        cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
    )
    def test_garbageSameErrors(self, body: bytes, cuts: list[int]) -> None:
        """
        Arbitrary bytes after a good chunk: the same data is delivered and
        the same kind of error (or none) is raised.
        """
        reads = split(body, cuts)
        ours, ourError = decode(BatchingChunkedDecoder, reads)
        theirs, theirError = decode(_ChunkedTransferDecoder, reads)
        self.assertEqual(type(ourError), type(theirError))
        self.assertEqual(b"".join(ours.calls), b"".join(theirs.calls))
        self.assertEqual(ours.finished, theirs.finished)

    def test_oneDeliveryPerRead(self) -> None:
        """
        A hundred chunks in one read are one delivery.
        """
        events = [b"data: {\"n\":%d}\n\n" % i for i in range(100)]
        rec, error = decode(BatchingChunkedDecoder, [encode(events)[:-5]])
        self.assertIsNone(error)
        self.assertEqual(rec.calls, [b"".join(events)])

    def test_dataBeforeTerminalChunkFirst(self) -> None:
        """
        The data of the read that also ends the body is delivered before
        the finish callback runs.
        """
        order: list[str] = []
        decoder = BatchingChunkedDecoder(
            lambda d: order.append("data"), lambda r: order.append("finish")
        )
        decoder.dataReceived(encode([b"a", b"b"]))
        self.assertEqual(order, ["data", "finish"])

    def test_malformedSizes(self) -> None:
        """
        Sizes Twisted refuses (signs, C{0x}, spaces, non-hex) are refused,
        after the data before them was delivered.
        """
        for bad in (b"+5", b"-5", b"0x5", b"0X5", b"x5", b"5_0", b" 5", b"5 ", b"zz", b"", "\u0661".encode()):
            rec, error = decode(BatchingChunkedDecoder, [b"1\r\na\r\n" + bad + b"\r\nhello\r\n"])
            self.assertIsInstance(error, _MalformedChunkedDataError, bad)
            self.assertEqual(rec.calls, [b"a"], bad)

    def test_missingCRLF(self) -> None:
        """
        Chunk data not followed by CRLF is an error.
        """
        rec, error = decode(BatchingChunkedDecoder, [b"1\r\naXY2\r\nbb\r\n"])
        self.assertIsInstance(error, _MalformedChunkedDataError)
        self.assertEqual(rec.calls, [b"a"])

    def test_longSizeLine(self) -> None:
        """
        A size line past Twisted's limit is refused even when it arrives a
        byte at a time.
        """
        rec, error = decode(BatchingChunkedDecoder, [b"0"] * 2000)
        self.assertIsInstance(error, _MalformedChunkedDataError)

    def test_afterFinished(self) -> None:
        """
        Bytes after the terminal chunk's end go to the finish callback;
        another read after it is a programming error, as in Twisted.
        """
        rec, error = decode(BatchingChunkedDecoder, [encode([b"x"], rest=b"extra"), b"more"])
        self.assertEqual(rec.finished, [b"extra"])
        self.assertIsInstance(error, RuntimeError)

    def test_noMoreDataEarly(self) -> None:
        """
        The connection closing in the middle of a chunk is data loss.
        """
        rec = Recorder()
        decoder = BatchingChunkedDecoder(rec.data, rec.finish)
        decoder.dataReceived(b"5\r\nhel")
        self.assertEqual(rec.calls, [b"hel"])
        self.assertRaises(_DataLoss, decoder.noMoreData)


class _Collect(_Discard):
    """
    A body protocol that keeps what it gets.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(data)


class ProtocolTests(SynchronousTestCase):
    """
    The pool's connections decode chunked responses with the batching
    decoder (this pins C{HTTP11ClientProtocol._parser} and
    C{HTTPClientParser._transferDecoders}).
    """

    def test_poolBuildsBatchingProtocol(self) -> None:
        """
        The pool's connection factory builds L{BatchingClientProtocol}.
        """
        factory = ConnectionPool._factory(lambda p: None, None)
        self.assertIsInstance(factory.buildProtocol(None), BatchingClientProtocol)

    def test_privateHooksExist(self) -> None:
        """
        The names the hook relies on are still Twisted's.
        """
        self.assertEqual(HTTPClientParser._transferDecoders[b"chunked"], _ChunkedTransferDecoder)
        self.assertIsNone(HTTP11ClientProtocol()._parser)
        for state in ("CHUNK_LENGTH", "BODY", "CRLF", "TRAILER", "FINISHED"):
            self.assertTrue(hasattr(_ChunkedTransferDecoder, "_dataReceived_" + state), state)
        decoder = _ChunkedTransferDecoder(lambda d: None, lambda r: None)
        self.assertEqual(decoder.state, "CHUNK_LENGTH")
        self.assertEqual((decoder._buffer, decoder._start), (bytearray(), 0))

    def test_oneBodyDeliveryPerRead(self) -> None:
        """
        A chunked response whose hundred chunks arrive in one read reaches
        the body protocol in one C{dataReceived}, and the connection goes
        back to quiescent when the body ends.
        """
        protocol = BatchingClientProtocol()
        protocol.makeConnection(StringTransport())
        d = protocol.request(
            Request(b"GET", b"/", Headers({b"host": [b"backend"]}), None, persistent=True)
        )
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        response = self.successResultOf(d)
        body = _Collect()
        response.deliverBody(body)
        events = [b"data: %d\n\n" % i for i in range(100)]
        protocol.dataReceived(encode(events[:50])[:-5])
        protocol.dataReceived(encode(events[50:]))
        self.assertEqual(body.reads, [b"".join(events[:50]), b"".join(events[50:])])
        self.assertEqual(protocol.state, "QUIESCENT")


class FenceTests(SynchronousTestCase):
    """
    The fence checks the private names it relies on at import, and falls
    back to Twisted's stock pool and decoder without them.
    """

    def test_installedTwistedHasEveryName(self) -> None:
        """
        On the Twisted releases C{pyproject.toml} allows, nothing is missing
        and the batching pool is in use.
        """
        from ollama_proxy.upstream import compat

        self.assertEqual(compat._check(), [])
        self.assertTrue(compat.COMPATIBLE)
        self.assertIs(compat.ConnectionPool, compat.BatchingConnectionPool)

    def test_missingNameFallsBack(self) -> None:
        """
        A Twisted without one of the names: the check names it, and the
        pool chosen is the stock one (whose protocol keeps Twisted's own
        chunked decoder), with a warning that says what is missing.
        """
        from twisted.logger import capturedLogs
        from twisted.web.client import HTTPConnectionPool

        from ollama_proxy.upstream import compat

        saved = HTTPClientParser.__dict__["_transferDecoders"]
        del HTTPClientParser._transferDecoders
        try:
            missing = compat._check()
        finally:
            HTTPClientParser._transferDecoders = saved
        self.assertEqual(missing, ["HTTPClientParser._transferDecoders"])
        with capturedLogs() as logged:
            self.assertIs(compat.choosePool(missing), HTTPConnectionPool)
        self.assertIn("HTTPClientParser._transferDecoders", logged[-1]["missing"])
        self.assertIs(compat.choosePool([]), compat.BatchingConnectionPool)


class ServerSideTests(SynchronousTestCase):
    """
    What the llhttp server channel borrows from twisted.web (a chunked
    request body's decoder and the pull-producer adapter), pinned.
    """

    def test_present(self) -> None:
        """
        On the installed Twisted nothing is missing, and the decoder
        delivers the body, the bytes after the terminal chunk, and raises
        the named error for garbage.
        """
        from ollama_proxy.upstream import compat

        self.assertEqual(compat.SERVER_MISSING, [])
        body: list[bytes] = []
        rest: list[bytes] = []
        decoder = compat.ChunkedRequestDecoder(body.append, rest.append)
        decoder.dataReceived(b"2;x=y\r\nok\r\n0\r\nX-T: 1\r\n\r\nNEXT")
        self.assertEqual((b"".join(body), rest), (b"ok", [b"NEXT"]))
        bad = compat.ChunkedRequestDecoder(body.append, rest.append)
        self.assertRaises(compat.MalformedChunkedData, bad.dataReceived, b"zz\r\n")

    def test_headerNamesCanonical(self) -> None:
        """
        C{addRequestHeaders} names every field as twisted.web's
        C{addRawHeader} does (any spelling, repeated names in order) and
        returns the request's table; the spellings it remembers stay
        bounded whatever names clients send.
        """
        from ollama_proxy.upstream import compat

        fields = [(b"content-TYPE", b"a"), (b"X-Many", b"1"), (b"x-many", b"2"), (b"Etag", b"e"),
                  (b"X-" + b"l" * 100, b"long"), *((b"X-Name-%d" % n, b"v") for n in range(1500))]
        ours, theirs = Headers(), Headers()
        for name, value in fields:
            theirs.addRawHeader(name, value)
        table = compat.addRequestHeaders(ours, fields)
        self.assertEqual(list(ours.getAllRawHeaders()), list(theirs.getAllRawHeaders()))
        self.assertEqual(table[b"X-Many"], [b"1", b"2"])
        self.assertIn(b"ETag", table)
        self.assertLessEqual(len(compat._canonical), 1000)
        self.assertNotIn(b"X-" + b"l" * 100, compat._canonical)

    def test_missingFallsBack(self) -> None:
        """
        Without them, C{--http-parser httptools} serves on twisted.web's
        channel, with a warning naming what is missing.
        """
        from twisted.logger import capturedLogs

        from ollama_proxy.web import site
        from ollama_proxy.web.channel import ProxyChannel

        self.patch(site, "AVAILABLE", False)
        self.patch(site, "SERVER_MISSING", ["_PullToPush.startStreaming"])
        with capturedLogs() as logged:
            self.assertIs(site.channelClass("httptools"), ProxyChannel)
        self.assertIn("_PullToPush.startStreaming", logged[-1]["missing"])


# Write-through transports, over real loopback sockets (the point is the
# kernel: what it takes at once, what it refuses while the reader is slow).

from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.internet import tcp  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402
from twisted.internet.interfaces import IPullProducer, IPushProducer  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.trial.unittest import TestCase  # noqa: E402
from zope.interface import implementer  # noqa: E402

from ollama_proxy.upstream.compat import (  # noqa: E402
    WRITE_THROUGH_MAX,
    WRITE_THROUGH_MISSING,
    WriteThroughClient,
    WriteThroughServer,
    writeThrough,
)

reactor: Any = _reactor

BIG = 8 * 1024 * 1024
"""More than loopback's socket buffers hold (a few MiB both ways)."""


async def waitFor(condition: Any, what: str, timeout: float = 10.0) -> None:
    """
    Run the reactor until C{condition()} is true, or fail after C{timeout}
    seconds.
    """
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        await deferLater(reactor, 0.005, lambda: None)


class Peer(Protocol):
    """
    One end: writes through if asked, records what arrives and how it ended.
    """

    def __init__(self, through: bool = True, direct: bool = True) -> None:
        self.through = through
        self.direct = direct
        self.swapped: bool | None = None
        self.received = bytearray()
        self.reason: Failure | None = None
        self.made: Deferred[Peer] = Deferred()

    def connectionMade(self) -> None:
        if self.through:
            self.swapped = writeThrough(self.transport, self if self.direct else None)
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.reason = reason


def buffered(transport: Any) -> int:
    """
    @return: the bytes the transport holds (Twisted's two buffers).
    """
    held: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return held


class WriteThroughTests(TestCase):
    """
    L{writeThrough}: plain TCP transports send at once when nothing is
    buffered, and behave as Twisted's buffered ones otherwise.
    """

    async def pair(self, serverThrough: bool = True, clientThrough: bool = True,
                   direct: bool = True) -> tuple[Peer, Peer]:
        servers: list[Peer] = []

        def build() -> Peer:
            servers.append(Peer(serverThrough))
            return servers[-1]

        port = reactor.listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Peer(clientThrough, direct)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        await waitFor(lambda: servers, "the accept")
        server = servers[0]

        def close() -> Deferred[None] | None:
            for peer in (client, server):
                if peer.transport is not None and peer.reason is None:
                    peer.transport.abortConnection()  # type: ignore[attr-defined]
            return deferLater(reactor, 0.01, lambda: None)

        self.addCleanup(close)
        return server, client

    def test_privateStatePresent(self) -> None:
        """
        The installed Twisted has the state write-through reads.
        """
        self.assertEqual(WRITE_THROUGH_MISSING, [])

    async def test_sentAtOnce(self) -> None:
        """
        Both sides' plain TCP transports are swapped; a write, and a
        C{writeSequence}, leave in the call (nothing buffered, no writer
        registered with the reactor) and arrive.
        """
        server, client = await self.pair()
        self.assertEqual((server.swapped, client.swapped), (True, True))
        self.assertIs(type(server.transport), WriteThroughServer)
        self.assertIs(type(client.transport), WriteThroughClient)
        assert server.transport is not None and client.transport is not None
        server.transport.write(b"hello ")
        server.transport.writeSequence([b"wor", b"ld"])
        client.transport.write(b"back")
        for transport in (server.transport, client.transport):
            self.assertEqual(buffered(transport), 0)
            self.assertNotIn(transport, reactor.getWriters())
        await waitFor(lambda: client.received == b"hello world" and server.received == b"back", "the bytes")

    async def test_readsDirect(self) -> None:
        """
        A client connection made through an endpoint reads into its protocol
        itself, not the endpoint's wrapper, when the protocol asks: its
        bytes arrive, and the peer's close ends it as Twisted reports it;
        without the ask, the wrapper stays.
        """
        server, client = await self.pair()
        assert server.transport is not None and client.transport is not None
        self.assertIs(client.transport.protocol, client)  # type: ignore[attr-defined]
        self.assertIs(server.transport.protocol, server)  # type: ignore[attr-defined]
        server.transport.write(b"to the client")
        await waitFor(lambda: client.received == b"to the client", "the bytes")
        server.transport.loseConnection()
        await waitFor(lambda: client.reason is not None, "the close")
        assert client.reason is not None
        self.assertTrue(client.reason.check(ConnectionDone))
        server, client = await self.pair(direct=False)
        assert client.transport is not None
        self.assertIsNot(client.transport.protocol, client)  # type: ignore[attr-defined]
        server.transport.write(b"wrapped")  # type: ignore[union-attr]
        await waitFor(lambda: client.received == b"wrapped", "the bytes through the wrapper")

    async def test_largeWriteBuffered(self) -> None:
        """
        A write over L{WRITE_THROUGH_MAX} is buffered as Twisted does (a
        partial send would copy its remainder), and still arrives.
        """
        server, client = await self.pair()
        assert server.transport is not None
        big = b"z" * (WRITE_THROUGH_MAX + 1)
        server.transport.write(big)
        self.assertEqual(buffered(server.transport), len(big))
        server.transport.writeSequence([big, b"!"])
        self.assertEqual(buffered(server.transport), 2 * len(big) + 1)
        await waitFor(lambda: len(client.received) == 2 * len(big) + 1, "the bytes")
        self.assertEqual(bytes(client.received), big + big + b"!")

    async def test_unswappedStaysBuffered(self) -> None:
        """
        Without L{writeThrough}, a transport is Twisted's own: a write is
        buffered for the next iteration (what the swap removes).
        """
        server, client = await self.pair(serverThrough=False)
        self.assertIs(type(server.transport), tcp.Server)
        assert server.transport is not None
        server.transport.write(b"later")
        self.assertEqual(buffered(server.transport), 5)
        await waitFor(lambda: client.received == b"later", "the bytes")

    def test_otherTransportsUntouched(self) -> None:
        """
        Only exactly C{tcp.Server} and C{tcp.Client} are swapped: not a
        test transport, not a subclass.
        """
        memory = StringTransport()
        self.assertFalse(writeThrough(memory))
        self.assertIs(type(memory), StringTransport)

        class Special(tcp.Server):
            pass

        special = Special.__new__(Special)
        self.assertFalse(writeThrough(special))
        self.assertIs(type(special), Special)

    async def test_tlsUntouched(self) -> None:
        """
        Behind TLS the protocol's transport is the TLS layer: nothing is
        swapped, and the TCP transport under it stays Twisted's.
        """
        from twisted.internet import ssl

        from tests.upstream.test_agent import selfSigned

        certPEM, keyPEM = selfSigned()
        options = ssl.PrivateCertificate.loadPEM(certPEM + keyPEM).options()
        servers: list[Peer] = []

        def build() -> Peer:
            servers.append(Peer())
            return servers[-1]

        port = reactor.listenSSL(0, Factory.forProtocol(build), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        trust = ssl.Certificate.loadPEM(certPEM)
        endpoint = ssl.optionsForClientTLS("localhost", trustRoot=trust)
        from twisted.internet.endpoints import wrapClientTLS

        client = Peer()
        await connectProtocol(
            wrapClientTLS(endpoint, TCP4ClientEndpoint(reactor, "localhost", port.getHost().port)), client)
        await waitFor(lambda: servers, "the accept")
        server = servers[0]
        self.assertEqual((server.swapped, client.swapped), (False, False))
        assert server.transport is not None and client.transport is not None
        self.assertIs(type(server.transport.transport), tcp.Server)  # type: ignore[attr-defined]
        self.assertIs(type(client.transport.transport), tcp.Client)  # type: ignore[attr-defined]
        server.transport.write(b"secret hello")
        await waitFor(lambda: client.received == b"secret hello", "the bytes through TLS")
        client.transport.loseConnection()
        await waitFor(lambda: server.reason is not None, "the close")

    async def test_orderWithSlowReader(self) -> None:
        """
        Small writes and sequences, more in all than the socket buffers
        hold, written while the reader does not read: the kernel takes the
        first at once, then part of one (or none), the rest is buffered,
        later writes queue behind it (never sent around it), and the
        reader, once it reads, gets every byte in order.
        """
        server, client = await self.pair()
        assert server.transport is not None and client.transport is not None
        client.transport.pauseProducing()  # type: ignore[attr-defined]
        transport: Any = server.transport
        handle = transport.socket
        sends: list[tuple[int, int]] = []

        class Spy:
            def __getattr__(self, name: str) -> Any:
                return getattr(handle, name)

            def send(self, data: Any) -> int:
                try:
                    sent: int = handle.send(data)
                except BlockingIOError:
                    sent = 0
                    sends.append((len(data), 0))
                    raise
                sends.append((len(data), sent))
                return sent

        transport.socket = Spy()
        expected = bytearray()
        for i in range(2 * BIG // 65536):
            small = b"<%d>" % i
            block = bytes([65 + i % 26]) * 65000
            server.transport.write(small)
            server.transport.writeSequence([block, b"|"])
            expected += small + block + b"|"
        transport.socket = handle
        # Sent at once while the kernel took it all; then one it did not
        # take whole; nothing sent at once after that.
        whole = [sent == size for size, sent in sends]
        self.assertTrue(whole[0])
        self.assertIn(False, whole)
        self.assertNotIn(True, whole[whole.index(False):])
        self.assertGreater(buffered(server.transport), 0)
        self.assertEqual(len(client.received), 0)
        client.transport.resumeProducing()  # type: ignore[attr-defined]
        await waitFor(lambda: len(client.received) >= len(expected), "every byte", timeout=30)
        self.assertEqual(bytes(client.received), bytes(expected))
        self.assertEqual(buffered(server.transport), 0)

    async def test_streamingProducerPaused(self) -> None:
        """
        A streaming producer on a write-through transport is paused when
        the reader stops reading and the kernel's buffer and Twisted's fill,
        and resumed once the reader drained them.
        """
        server, client = await self.pair()
        assert server.transport is not None and client.transport is not None

        @implementer(IPushProducer)
        class Producer:
            paused = False
            pauses = resumes = 0

            def pauseProducing(self) -> None:
                self.paused = True
                self.pauses += 1

            def resumeProducing(self) -> None:
                self.paused = False
                self.resumes += 1

            def stopProducing(self) -> None:
                pass

        producer = Producer()
        server.transport.registerProducer(producer, True)  # type: ignore[attr-defined]
        client.transport.pauseProducing()  # type: ignore[attr-defined]
        written = 0
        while not producer.paused and written < 4 * BIG:
            server.transport.write(b"x" * 65536)
            written += 65536
        self.assertTrue(producer.paused)
        self.assertEqual(producer.pauses, 1)
        client.transport.resumeProducing()  # type: ignore[attr-defined]
        await waitFor(lambda: producer.resumes == 1, "the resume")
        await waitFor(lambda: len(client.received) == written, "every byte")
        server.transport.unregisterProducer()  # type: ignore[attr-defined]

    async def test_pullProducerDriven(self) -> None:
        """
        A pull producer is still asked for more by Twisted's C{doWrite}:
        its writes are buffered, never sent around it.
        """
        server, client = await self.pair()
        assert server.transport is not None
        transport: Any = server.transport

        @implementer(IPullProducer)
        class Pull:
            count = 0

            def resumeProducing(self) -> None:
                self.count += 1
                transport.write(b"%04d" % self.count)
                if self.count == 50:
                    transport.unregisterProducer()

            def stopProducing(self) -> None:
                pass

        transport.registerProducer(Pull(), False)
        expected = b"".join(b"%04d" % i for i in range(1, 51))
        await waitFor(lambda: client.received == expected, "fifty pulls")

    async def test_loseConnectionAfterWrite(self) -> None:
        """
        C{loseConnection} after writes (some sent at once, some buffered
        behind a slow reader) closes only after every byte is delivered.
        """
        server, client = await self.pair()
        assert server.transport is not None and client.transport is not None
        client.transport.pauseProducing()  # type: ignore[attr-defined]
        server.transport.write(b"a" * BIG)
        server.transport.write(b"end")
        server.transport.loseConnection()
        client.transport.resumeProducing()  # type: ignore[attr-defined]
        await waitFor(lambda: client.reason is not None, "the close", timeout=30)
        self.assertEqual(bytes(client.received), b"a" * BIG + b"end")

    async def test_peerHangsUpMidSend(self) -> None:
        """
        A reader that resets the connection while the writer is sending:
        the next writes fail inside the kernel, fall back to the buffered
        write, and Twisted's own C{doWrite} reports the loss: the writer's
        protocol gets C{connectionLost}, nothing is logged as an error, and
        later writes are dropped.
        """
        import socket
        import struct

        server, client = await self.pair()
        assert server.transport is not None and client.transport is not None
        server.transport.write(b"first")
        await waitFor(lambda: client.received == b"first", "the first bytes")
        handle = client.transport.getHandle()  # type: ignore[attr-defined]
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.transport.abortConnection()  # type: ignore[attr-defined]
        await waitFor(lambda: client.reason is not None, "the reset")
        transport = server.transport
        for _ in range(1000):
            if server.reason is not None:
                break
            transport.write(b"y" * 1024)
            await deferLater(reactor, 0.001, lambda: None)
        await waitFor(lambda: server.reason is not None, "the writer to see the loss")
        self.assertFalse(transport.connected)  # type: ignore[attr-defined]
        transport.write(b"after")
        self.assertEqual(bytes(client.received), b"first")

    async def test_startTLSGoesThroughTLS(self) -> None:
        """
        TLS started on a swapped connection: writes go through the TLS
        layer (never raw to the socket), and the peer reads them decrypted.
        """
        from twisted.internet import ssl

        from tests.upstream.test_agent import selfSigned

        server, client = await self.pair()
        assert server.transport is not None and client.transport is not None
        certPEM, keyPEM = selfSigned()
        server.transport.startTLS(  # type: ignore[attr-defined]
            ssl.PrivateCertificate.loadPEM(certPEM + keyPEM).options())
        client.transport.startTLS(  # type: ignore[attr-defined]
            ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(certPEM)))
        self.assertTrue(server.transport.TLS)  # type: ignore[attr-defined]
        raw: list[bytes] = []
        handle = server.transport.socket  # type: ignore[attr-defined]
        original = handle.send

        class Spy:
            def __getattr__(self, name: str) -> Any:
                return getattr(handle, name)

            def send(self, data: Any) -> int:
                raw.append(bytes(data))
                sent: int = original(data)
                return sent

        server.transport.socket = Spy()  # type: ignore[attr-defined]
        server.transport.write(b"plain words")
        server.transport.writeSequence([b" and ", b"more"])
        await waitFor(lambda: client.received == b"plain words and more", "the decrypted bytes")
        self.assertTrue(raw)
        self.assertFalse(any(b"plain" in chunk or b"more" in chunk for chunk in raw))


@implementer(IAgent)
class _AnswerWith:
    """
    An C{IAgent} that records each request's headers and answers with a
    response carrying C{setCookie}.
    """

    def __init__(self, setCookie: list[bytes]) -> None:
        self.setCookie = setCookie
        self.sent: list[Headers] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> Any:
        from twisted.internet.defer import succeed

        self.sent.append(headers if headers is not None else Headers())
        response = type("R", (), {})()
        response.headers = Headers({b"Set-Cookie": self.setCookie} if self.setCookie else {})
        return succeed(response)


class LazyStdlibRequestTests(SynchronousTestCase):
    """
    C{CookieAgent}'s stand-in urllib request (what treq's every request
    makes) parses its URI only when a cookie jar asks, with Twisted's own
    answers.
    """

    URIS = [
        b"http://127.0.0.1:4000/v1/chat/completions", b"https://api.example.com/v1/models",
        b"http://h:80/a?b=1", b"https://[::1]:8443/x", b"http://example.com", b"https://h:443/",
    ]

    def test_installed(self) -> None:
        """
        On the Twisted releases C{pyproject.toml} allows, C{CookieAgent}
        makes L{LazyStdlibRequest}s.
        """
        from twisted.web import client

        from ollama_proxy.upstream import compat

        self.assertEqual(compat.LAZY_REQUEST_MISSING, [])
        self.assertIs(client._FakeStdlibRequest, compat.LazyStdlibRequest)
        self.assertTrue(issubclass(compat.LazyStdlibRequest, compat.STOCK_STDLIB_REQUEST))

    def test_sameAnswers(self) -> None:
        """
        Every field and method a C{CookieJar} reads gives Twisted's answer,
        and a field set is kept.
        """
        from ollama_proxy.upstream.compat import STOCK_STDLIB_REQUEST, LazyStdlibRequest

        for uri in self.URIS:
            stock, lazy = STOCK_STDLIB_REQUEST(uri), LazyStdlibRequest(uri)
            for name in ("uri", "type", "host", "origin_req_host", "unverifiable"):
                self.assertEqual(getattr(lazy, name), getattr(stock, name), (uri, name))
            for method in ("get_full_url", "get_host", "get_type", "is_unverifiable"):
                self.assertEqual(getattr(lazy, method)(), getattr(stock, method)(), (uri, method))
            lazy.add_unredirected_header("Cookie", "a=b")
            self.assertTrue(lazy.has_header("Cookie"))
            self.assertEqual(lazy.get_header("Cookie"), "a=b")
            lazy.host = "other:1"
            self.assertEqual((lazy.host, lazy.type), ("other:1", stock.type))

    def test_noParseWithoutAJarThatAsks(self) -> None:
        """
        A request through treq with the proxy's L{NoCookies} jar never
        parses the URI for the jar (the agent is given it as it is).
        """
        import treq.client
        from twisted.web import client

        from ollama_proxy.upstream.pool import NO_COOKIES

        parsed: list[bytes] = []
        stock = client.URI.fromBytes

        def counting(uri: bytes, defaultPort: int | None = None) -> Any:
            parsed.append(uri)
            return stock(uri, defaultPort)

        self.patch(client.URI, "fromBytes", counting)
        agent = _AnswerWith([b"k=v; Path=/"])
        http = treq.client.HTTPClient(agent, cookiejar=NO_COOKIES)
        self.successResultOf(http.request("POST", self.URIS[0], data=b"{}", cookies=NO_COOKIES,
                                          allow_redirects=False))
        self.assertEqual((len(agent.sent), parsed), (1, []))

    def test_realJarStillWorks(self) -> None:
        """
        With a stdlib jar that keeps cookies (a treq client other than the
        proxy's), a C{Set-Cookie} is stored for the request's host and sent
        back on the next request to it, and not to another host: the jar
        reads the lazily parsed fields.
        """
        from http.cookiejar import CookieJar

        from twisted.web.client import CookieAgent

        agent = _AnswerWith([b"k=v; Path=/"])
        cookies = CookieAgent(agent, CookieJar())
        self.successResultOf(cookies.request(b"GET", b"http://127.0.0.1:4000/a"))
        agent.setCookie = []
        self.successResultOf(cookies.request(b"GET", b"http://127.0.0.1:4000/b"))
        self.successResultOf(cookies.request(b"GET", b"http://other.example:4000/b"))
        self.assertEqual([h.getRawHeaders(b"cookie") for h in agent.sent], [None, [b"k=v"], None])
