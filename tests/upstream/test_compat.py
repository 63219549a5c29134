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
