"""
The fast paths added for throughput: the relay's once-per-turn delivery,
lines kept when a stream fails part-way through one read, and the site's
request class that skips form parsing.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.errors import StreamFailed, UpstreamError
from ollama_proxy.protocol.ollama import NDJSONStream
from ollama_proxy.protocol.openai import StreamTranslator
from ollama_proxy.upstream.body import BodyReader
from ollama_proxy.web.bridge import ClientState, Exchange
from ollama_proxy.web.relay import relayBody
from ollama_proxy.web.site import makeSite


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

    def notifyFinish(self) -> Deferred[None]:
        return self.finished

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)


def sse(content: str) -> bytes:
    """One OpenAI content event."""
    return b"data: " + codec.dumps({"choices": [{"delta": {"content": content}}]}) + b"\n\n"


class ConsumeBatchingTests(SynchronousTestCase):
    """
    L{BodyReader} hands the collector one call per reactor turn.
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

    def test_piecesOfOneTurnJoined(self) -> None:
        """
        Three pieces delivered in one turn reach the collector as one call,
        at the end of the turn, in order.
        """
        d = self.consume()
        for piece in (b"a", b"b", b"c"):
            self.response.piece(piece)
        self.assertEqual(self.calls, [])
        self.clock.advance(0)
        self.assertEqual(self.calls, [b"abc"])
        self.response.piece(b"d")
        self.clock.advance(0)
        self.assertEqual(self.calls, [b"abc", b"d"])
        self.response.end()
        self.assertIsNone(self.successResultOf(d))

    def test_lastPiecesDeliveredBeforeTheEnd(self) -> None:
        """
        Pieces that arrive in the same turn as the end of the body are
        delivered before L{BodyReader} returns, without waiting for the turn.
        """
        d = self.consume()
        self.response.piece(b"x")
        self.response.piece(b"y")
        self.response.end()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.calls, [b"xy"])

    def test_collectorFailureAtEndOfTurnClosesUpstream(self) -> None:
        """
        An exception from the collector at the end of a turn closes the
        upstream connection and is what L{BodyReader} raises.
        """

        def collector(data: bytes) -> None:
            raise UpstreamError("bad event")

        d = self.consume(collector)
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


class PartialFailureTests(SynchronousTestCase):
    """
    A stream that fails within one read keeps the lines before the failure.
    """

    def pipeline(self) -> NDJSONStream:
        return NDJSONStream(StreamTranslator("m:proxy", "chat", 0, lambda: 1_000_000_000))

    def test_streamFailedCarriesEarlierLines(self) -> None:
        """
        Content then an error event in one read: L{StreamFailed} (an
        L{UpstreamError}, so still a 502 with the upstream's message)
        carries the content line.
        """
        error = b'data: {"error": {"message": "rate limited"}}\n\n'
        exc = self.assertRaises(StreamFailed, self.pipeline().feed, sse("a") + sse("b") + error)
        self.assertIsInstance(exc, UpstreamError)
        self.assertEqual(exc.message, "rate limited")
        lines = [codec.loads(line) for line in exc.output.splitlines()]
        self.assertEqual([line["message"]["content"] for line in lines], ["a", "b"])

    def test_tooLongTailAfterEvents(self) -> None:
        """
        Complete events then an over-long unfinished line in one read: the
        events' lines are kept in the failure, whose message names the cap.
        """
        stream = NDJSONStream(StreamTranslator("m", "chat", 0, lambda: 0), maxLineLength=100)
        exc = self.assertRaises(StreamFailed, stream.feed, sse("a") + b"data: " + b"x" * 200)
        self.assertIn("100", exc.message)
        [line] = [codec.loads(line) for line in exc.output.splitlines()]
        self.assertEqual(line["message"]["content"], "a")

    def test_splitReadStillStreams(self) -> None:
        """
        A read ending inside an event is translated up to the last complete
        event; the rest completes with the next read.
        """
        stream = NDJSONStream(StreamTranslator("m", "chat", 0, lambda: 0))
        event = sse("b")
        first = stream.feed(sse("a") + event[:10])
        second = stream.feed(event[10:])
        self.assertEqual(codec.loads(first)["message"]["content"], "a")
        self.assertEqual(codec.loads(second)["message"]["content"], "b")

    def test_relayWritesEarlierLinesBeforeRaising(self) -> None:
        """
        Through L{BodyReader}, the client receives the lines translated before
        the failing event; the error is then raised for the error line.
        """
        clock = MemoryReactorClock()
        response = FakeResponse()
        request = FakeRequest()
        ex = Exchange(request, b"", 0, ClientState(request))  # type: ignore[arg-type]
        pipeline = self.pipeline()
        d = ensureDeferred(
            relayBody(ex, response, lambda data: request.write(pipeline.feed(data)), clock, None)  # type: ignore[arg-type]
        )
        response.piece(sse("hello"))
        response.piece(b'data: {"error": {"message": "overloaded"}}\n\n')
        clock.advance(0)
        response.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.message, "overloaded")
        lines = [codec.loads(line) for line in b"".join(request.written).splitlines()]
        self.assertEqual([line["message"]["content"] for line in lines], ["hello"])
        self.assertIsNone(request.producer)


class RecordArgs(Resource):
    """Remembers the request's C{args}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def render_POST(self, request: Request) -> bytes:
        self.seen.append((dict(request.args), request.content.read()))  # type: ignore[union-attr]
        return b"ok"


class FormParsingTests(SynchronousTestCase):
    """
    The proxy's request class does not parse form bodies.
    """

    def test_formBodyNotParsed(self) -> None:
        """
        A form-encoded POST is left as raw bytes: C{args} stays empty (no
        C{email.message} parsing of the content type per request), and the
        resource still reads the body.
        """
        resource = RecordArgs()
        site = makeSite(resource, MemoryReactorClock())
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(
            b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 3\r\n\r\na=b"
        )
        self.assertEqual(resource.seen, [({}, b"a=b")])
        self.assertIn(b"200 OK", transport.value())


def anyStream(kind: str = "chat") -> NDJSONStream:
    return NDJSONStream(StreamTranslator("m", kind, 0, lambda: 0))  # type: ignore[arg-type]


jsonScalars = st.none() | st.booleans() | st.integers() | st.text()


class TemplateEncodingTests(SynchronousTestCase):
    """
    L{NDJSONStream.encode} writes the common chunk from a template; every
    line must be byte-identical to L{codec.dumpLine} of the same dict.
    """

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.text(), st.text(), st.text(), st.sampled_from(["chat", "generate"]))
    def test_plainChunkIdentical(self, model: str, createdAt: str, content: str, kind: str) -> None:
        """
        Chunks built by the translator itself, with any model name,
        timestamp and content (quotes, control characters, non-BMP text).
        """
        translator = StreamTranslator(model, kind, 0, lambda: 0)  # type: ignore[arg-type]
        chunk = translator._chunk(createdAt, content, None)
        stream = NDJSONStream(translator)
        self.assertEqual(stream.encode([chunk]), codec.dumpLine(chunk))
        # The cached template is reused for the next chunk of the same read.
        again = translator._chunk(createdAt, content + "x", None)
        self.assertEqual(stream.encode([chunk, again]), codec.dumpLine(chunk) + codec.dumpLine(again))

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.dictionaries(st.sampled_from(["model", "created_at", "message", "response", "done", "thinking", "logprobs"]),
                        jsonScalars | st.dictionaries(st.sampled_from(["role", "content", "thinking", "tool_calls"]), jsonScalars),
                        max_size=7),
        st.sampled_from(["chat", "generate"]),
    )
    def test_anyDictIdentical(self, chunk: dict[str, Any], kind: str) -> None:
        """
        Arbitrary dicts (other key orders, extra keys, C{done: true}, other
        roles, non-string content) fall back to L{codec.dumpLine} or match it.
        """
        try:
            expected = codec.dumpLine(chunk)
        except TypeError:
            return
        try:
            self.assertEqual(anyStream(kind).encode([chunk]), expected)
        except TypeError:
            # Only the template rejects a non-string model or timestamp;
            # orjson would have encoded it, so the template must not apply.
            self.fail(f"template applied to {chunk!r}")

    def test_keyOrderMatters(self) -> None:
        """
        The same keys in another order are encoded in that order.
        """
        chunk = {"created_at": "t", "model": "m", "message": {"role": "assistant", "content": "c"}, "done": False}
        self.assertEqual(anyStream().encode([chunk]), codec.dumpLine(chunk))
        swapped = {"model": "m", "created_at": "t", "message": {"content": "c", "role": "assistant"}, "done": False}
        self.assertEqual(anyStream().encode([swapped]), codec.dumpLine(swapped))

    def test_wholeStreamIdentical(self) -> None:
        """
        A translated stream (content, thinking, final object) encodes as
        the dicts would.
        """
        translator = StreamTranslator("m:proxy", "chat", 0, lambda: 1_000_000_000)
        stream = NDJSONStream(translator)
        payloads = [
            codec.dumps({"choices": [{"delta": {"reasoning_content": "hmm"}}]}),
            codec.dumps({"choices": [{"delta": {"content": "Hi \"there\"\n"}}]}),
            codec.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]}),
        ]
        reference = StreamTranslator("m:proxy", "chat", 0, lambda: 1_000_000_000)
        expected = b"".join(map(codec.dumpLine, reference.feed(payloads) + reference.finish()))
        body = b"".join(b"data: " + p + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"
        self.assertEqual(stream.feed(body) + stream.end(), expected)
