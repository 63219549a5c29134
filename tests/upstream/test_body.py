"""
Reading upstream bodies: one delivery per reactor turn, the idle timer,
collector failures, and the size cap of non-streamed bodies.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.errors import UpstreamError
from ollama_proxy.testing.harness import ProxyHarness
from ollama_proxy.upstream.body import BodyReader, readInto
from tests.upstream.fakes import FakeRequest, FakeResponse
from tests.web.helpers import CHAT


class ConsumeBatchingTests(SynchronousTestCase):
    """
    L{BodyReader} hands the collector a body's first bytes at once, in the
    read that brought them, and after them one call per reactor turn.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.response = FakeResponse()
        self.calls: list[bytes] = []

    def consume(self, collector: Any = None, **kwargs: Any) -> Deferred[None]:
        return ensureDeferred(
            BodyReader(collector or self.calls.append, self.clock, **kwargs).read(
                self.response  # type: ignore[arg-type]
            )
        )

    def test_firstPieceAtOnce(self) -> None:
        """
        The body's first piece reaches the collector in the call that
        delivered it, without waiting for the end of the turn (a new
        stream's first line under load, issue 23), and asks for no
        end-of-turn call.
        """
        d = self.consume()
        self.response.piece(b"first")
        self.assertEqual(self.calls, [b"first"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.response.end()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.calls, [b"first"])

    def test_firstBytesWithTheHeadAtOnce(self) -> None:
        """
        Bytes that arrive inside C{deliverBody} (they came in the read of
        the head) reach the collector before L{BodyReader.read} first
        waits, after the producer is registered on the consumer; the next
        read's pieces are joined per turn again.
        """
        seen: list[tuple[bytes, object]] = []
        request = FakeRequest()
        response = FakeResponse()
        deliver = response.deliverBody

        def deliverWithHead(protocol: Any) -> None:
            deliver(protocol)
            response.piece(b"with-head")

        response.deliverBody = deliverWithHead  # type: ignore[method-assign]

        def collect(data: bytes) -> None:
            seen.append((data, request.producer))

        d = ensureDeferred(BodyReader(collect, self.clock).read(
            response, request))  # type: ignore[arg-type]
        self.assertEqual([data for data, _ in seen], [b"with-head"])
        self.assertIsNotNone(seen[0][1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        response.piece(b"a")
        response.piece(b"b")
        self.assertEqual(len(seen), 1)
        self.clock.advance(0)
        self.assertEqual([data for data, _ in seen], [b"with-head", b"ab"])
        response.end()
        self.assertIsNone(self.successResultOf(d))

    def test_collectorFailureOnBytesWithTheHead(self) -> None:
        """
        An exception from the collector on the bytes that came with the
        head (passed on at once inside L{BodyReader.read}) stops the
        upstream connection and is what L{BodyReader.read} raises once the
        connection is gone.
        """
        response = FakeResponse()
        deliver = response.deliverBody

        def deliverWithHead(protocol: Any) -> None:
            deliver(protocol)
            response.piece(b"with-head")

        response.deliverBody = deliverWithHead  # type: ignore[method-assign]

        def collector(data: bytes) -> None:
            raise UpstreamError("bad first read")

        d = ensureDeferred(BodyReader(collector, self.clock).read(response))  # type: ignore[arg-type]
        self.assertEqual(response.transport.producerState, "stopped")
        self.assertNoResult(d)
        response.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.message, "bad first read")

    def test_piecesOfOneTurnJoined(self) -> None:
        """
        After the first piece, three pieces delivered in one turn reach the
        collector as one call, at the end of the turn, in order.
        """
        d = self.consume()
        self.response.piece(b"0")
        for piece in (b"a", b"b", b"c"):
            self.response.piece(piece)
        self.assertEqual(self.calls, [b"0"])
        self.clock.advance(0)
        self.assertEqual(self.calls, [b"0", b"abc"])
        self.response.piece(b"d")
        self.clock.advance(0)
        self.assertEqual(self.calls, [b"0", b"abc", b"d"])
        self.response.end()
        self.assertIsNone(self.successResultOf(d))

    def test_firstPieceThenSameTurnJoined(self) -> None:
        """
        Pieces that follow the first one in its own turn are joined and
        delivered at the end of that turn: one more call, not one per piece.
        """
        d = self.consume()
        for piece in (b"0", b"a", b"b"):
            self.response.piece(piece)
        self.assertEqual(self.calls, [b"0"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.calls, [b"0", b"ab"])
        self.response.end()
        self.assertIsNone(self.successResultOf(d))

    def test_oneDelayedCallPerTurn(self) -> None:
        """
        Several streams read in the same turn share one delayed call (the
        thousand-stream case, issue 23); each collector gets its own bytes,
        and a stream that ends before the turn does is not delivered twice.
        """
        responses = [FakeResponse() for _ in range(3)]
        calls: list[list[bytes]] = [[] for _ in responses]
        ds = [ensureDeferred(BodyReader(c.append, self.clock).read(r))  # type: ignore[arg-type]
              for c, r in zip(calls, responses)]
        for response in responses:
            response.piece(b"first")
        self.assertEqual(calls, [[b"first"]] * 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        for i, response in enumerate(responses):
            response.piece(b"%d" % i)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        responses[2].end()
        self.assertEqual(calls[2], [b"first", b"2"])
        self.clock.advance(0)
        self.assertEqual(calls, [[b"first", b"0"], [b"first", b"1"], [b"first", b"2"]])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        responses[0].piece(b"x")
        self.clock.advance(0)
        self.assertEqual(calls[0], [b"first", b"0", b"x"])
        for response in responses[:2]:
            response.end()
        for d in ds:
            self.assertIsNone(self.successResultOf(d))

    def test_turnCancelledElsewhere(self) -> None:
        """
        The shared end-of-turn call cancelled by someone else (trial cancels
        the delayed calls a test leaves on the global reactor) is made
        again by the next read: no stream waits forever.
        """
        d = self.consume()
        other = FakeResponse()
        got: list[bytes] = []
        d2 = ensureDeferred(BodyReader(got.append, self.clock).read(other))  # type: ignore[arg-type]
        self.response.piece(b"0")
        other.piece(b"0")
        self.response.piece(b"a")
        [call] = self.clock.getDelayedCalls()
        call.cancel()
        other.piece(b"b")
        self.clock.advance(0)
        self.assertEqual((self.calls, got), ([b"0", b"a"], [b"0", b"b"]))
        self.response.end()
        other.end()
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(d2))

    def test_lastPiecesDeliveredBeforeTheEnd(self) -> None:
        """
        Pieces that arrive in the same turn as the end of the body are
        delivered before L{BodyReader} returns, without waiting for the turn.
        """
        d = self.consume()
        self.response.piece(b"0")
        self.response.piece(b"x")
        self.response.piece(b"y")
        self.response.end()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.calls, [b"0", b"xy"])

    def test_collectorFailureOnFirstPieceClosesUpstream(self) -> None:
        """
        An exception from the collector on the first piece (delivered at
        once) closes the upstream connection and is what L{BodyReader}
        raises.
        """

        def collector(data: bytes) -> None:
            raise UpstreamError("bad first event")

        d = self.consume(collector)
        self.response.piece(b"data: x\n\n")
        self.assertTrue(self.response.transport.disconnecting)
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.message, "bad first event")

    def test_collectorFailureAtEndOfTurnClosesUpstream(self) -> None:
        """
        An exception from the collector at the end of a turn closes the
        upstream connection and is what L{BodyReader} raises.
        """

        def collector(data: bytes) -> None:
            if data != b"first":
                raise UpstreamError("bad event")

        d = self.consume(collector)
        self.response.piece(b"first")
        self.response.piece(b"data: x\n\n")
        self.clock.advance(0)
        self.assertEqual(self.response.transport.producerState, "stopped")
        self.response.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.message, "bad event")

    def test_idleTimerResetPerTurn(self) -> None:
        """
        Data within the idle timeout keeps the stream alive; silence past it
        ends the stream with a timeout.
        """
        d = self.consume(idleTimeout=5.0)
        self.clock.advance(4)
        self.response.piece(b"a")
        self.clock.advance(0)
        self.clock.advance(4)
        self.assertNoResult(d)
        self.clock.advance(1.5)
        self.response.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.status, 504)

    def test_idleTimerCountsFromLastDelivery(self) -> None:
        """
        The stream is stopped exactly the idle timeout after the last
        delivery, however many came before (the timer is not moved per
        read but measured from the last one when it runs out), with one
        timer pending at a time.
        """
        d = self.consume(idleTimeout=5.0)
        for _ in range(4):
            self.clock.advance(3)
            self.response.piece(b"a")
            self.clock.advance(0)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        # The last delivery was at 12: stopped at 17, not before.
        self.clock.advance(4.9)
        self.assertNotEqual(self.response.transport.producerState, "stopped")
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.response.transport.producerState, "stopped")
        self.response.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.status, 504)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idleTimerAfterResumeCountsFromResume(self) -> None:
        """
        A client that paused the stream and resumed it: the backend's
        silence is counted from the resume, not from the last delivery
        before the pause.
        """
        reader = BodyReader(self.calls.append, self.clock, idleTimeout=5.0)
        d = ensureDeferred(reader.read(self.response))  # type: ignore[arg-type]
        self.response.piece(b"a")
        self.clock.advance(1)
        reader.pauseIdle()
        self.clock.advance(10)
        reader.resumeIdle()
        self.clock.advance(4.9)
        self.assertNotEqual(self.response.transport.producerState, "stopped")
        self.clock.advance(0.1)
        self.assertEqual(self.response.transport.producerState, "stopped")
        self.response.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.status, 504)




class BackendBodyTests(SynchronousTestCase):
    """
    Bodies that L{Backend} reads whole (model lists, error bodies,
    non-streamed answers) are bounded in time and size.
    """

    def stall(self, h: ProxyHarness, upstream: Any, status: int) -> None:
        upstream.request.setResponseCode(status)
        upstream.request.setHeader(b"Content-Type", b"application/json")
        upstream.write(b'{"partial": ')
        h.pump()

    def test_modelListStalls(self) -> None:
        """
        C{/api/tags} whose backend sends headers and then nothing: 504 after
        the idle timeout, upstream closed.
        """
        h = ProxyHarness()
        h.backendClient.idleTimeout = 5.0
        d = h.get("/api/tags")
        [upstream] = h.backend.received
        self.stall(h, upstream, 200)
        self.assertNoResult(d)
        h.clock.advance(5)
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        self.assertEqual(len(upstream.lost), 1)

    def test_oversizedBody(self) -> None:
        """
        A non-streamed answer larger than C{MAX_RESPONSE_BODY} is a 502 and
        the upstream connection is closed, instead of unbounded memory.
        """
        from ollama_proxy.upstream import body as upstreamModule

        self.patch(upstreamModule, "MAX_RESPONSE_BODY", 1000)
        h = ProxyHarness()
        d = h.post("/api/chat", {**CHAT, "stream": False})
        [upstream] = h.backend.received
        upstream.request.setResponseCode(200)
        upstream.request.setHeader(b"Content-Type", b"application/json")
        upstream.write(b'{"choices": [' + b" " * 2000)
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 502)
        self.assertEqual(
            codec.loads(self.successResultOf(h.client.content(response))),
            {"error": "backend response is larger than 1000 bytes"},
        )
        self.assertEqual(len(upstream.lost), 1)


class BodyProtocolTests(SynchronousTestCase):
    """
    L{BodyReader} is the protocol Twisted delivers the body to: the
    transport arrives in C{makeConnection}, no wrapper captures it.
    """

    def test_isTheBodyProtocol(self) -> None:
        """
        C{deliverBody} gets the reader itself; its producer is the
        transport it was connected to, registered on the consumer as a
        streaming producer before any data (pausing it pauses the
        transport).
        """
        response = FakeResponse()
        calls: list[bytes] = []
        reader = BodyReader(calls.append, None)
        consumer = StringTransport()
        d = ensureDeferred(reader.read(response, consumer))  # type: ignore[arg-type]
        self.assertTrue(IProtocol.providedBy(reader))
        self.assertIs(response.protocol, reader)
        self.assertIs(reader.producer, response.transport)
        self.assertTrue(reader.registered)
        self.assertTrue(consumer.streaming)
        registered = consumer.producer
        assert registered is not None
        registered.pauseProducing()
        self.assertEqual(response.transport.producerState, "paused")
        registered.resumeProducing()
        self.assertEqual(response.transport.producerState, "producing")
        response.piece(b"x")
        response.end()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(calls, [b"x"])

    def test_collectorFailureClosesTheConnection(self) -> None:
        """
        Without a clock the collector runs within C{dataReceived}: its
        failure closes the upstream connection and ends the read with it.
        """
        response = FakeResponse()

        def fail(data: bytes) -> None:
            raise UpstreamError("bad bytes")

        d = ensureDeferred(BodyReader(fail, None).read(response))  # type: ignore[arg-type]
        response.piece(b"x")
        self.assertTrue(response.transport.disconnecting)
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.message, "bad bytes")
        response.end()  # the connection's own end afterwards changes nothing


class ReadIntoTests(SynchronousTestCase):
    """
    L{readInto}: starting a read is one call; the producer the reader
    registered on the consumer is taken off when the read ends.
    """

    def setUp(self) -> None:
        self.response = FakeResponse()
        self.consumer = StringTransport()
        self.calls: list[bytes] = []

    def test_unregisteredAtTheEnd(self) -> None:
        """
        The upstream transport is the consumer's streaming producer while
        the body is read, and no longer once it ended.
        """
        d = ensureDeferred(readInto(self.response, self.calls.append, None,  # type: ignore[arg-type]
                                    consumer=self.consumer))
        self.assertIsNotNone(self.consumer.producer)
        self.assertTrue(self.consumer.streaming)
        self.response.piece(b"x")
        self.response.end()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.calls, [b"x"])
        self.assertIsNone(self.consumer.producer)

    def test_unregisteredOnFailure(self) -> None:
        """
        A collector failure ends the read with its error, the producer
        unregistered.
        """
        def fail(data: bytes) -> None:
            raise UpstreamError("bad bytes")

        d = ensureDeferred(readInto(self.response, fail, None,  # type: ignore[arg-type]
                                    consumer=self.consumer))
        self.response.piece(b"x")
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.message, "bad bytes")
        self.assertIsNone(self.consumer.producer)

    def test_goneClientNotUnregistered(self) -> None:
        """
        When the client left, its request has nothing to unregister from:
        the reader leaves it alone, and a broken upstream is the client's
        doing (a cancellation), not a backend error.
        """
        client = ClientGone()
        d = ensureDeferred(readInto(self.response, self.calls.append, None,  # type: ignore[arg-type]
                                    consumer=self.consumer, client=client))
        registered = self.consumer.producer
        self.assertIsNotNone(registered)
        client.gone = True
        self.response.protocol.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, CancelledError)
        self.assertIs(self.consumer.producer, registered)


class ClientGone:
    """
    The client as the reader sees it.
    """

    gone = False
