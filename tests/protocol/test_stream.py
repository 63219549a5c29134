"""
The streaming pipeline: SSE bytes in, dialect bytes out, the same at
every split of the input; what a read that fails part-way still delivers.
"""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.clock import formatTimestamp
from ollama_proxy.protocol.errors import UpstreamError
from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.stream import SSEDecoder, SSELineTooLong, TranslatedStream
from ollama_proxy.web.bridge import ClientState, Exchange
from ollama_proxy.web.relay import relayBody
from tests.protocol.helpers import T0, constant, ollamaStream, run
from tests.upstream.fakes import FakeRequest, FakeResponse

STREAM = b"".join(
    b"data: " + codec.dumps(obj) + b"\n\n"
    for obj in [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo, \u00e9t\u00e9 \U0001f600"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    ]
) + b"data: [DONE]\n\n"



class PipelineTests(SynchronousTestCase):
    """
    L{TranslatedStream}: SSE bytes in, NDJSON bytes out.
    """

    def test_output(self) -> None:
        """
        The exact lines for a recorded stream: one per non-empty delta, then
        the final object.
        """
        stamp = formatTimestamp(T0)
        expected = [
            {"model": "m:proxy", "created_at": stamp, "message": {"role": "assistant", "content": "Hel"}, "done": False},
            {"model": "m:proxy", "created_at": stamp, "message": {"role": "assistant", "content": "lo, \u00e9t\u00e9 \U0001f600"}, "done": False},
            {"model": "m:proxy", "created_at": stamp, "message": {"role": "assistant", "content": ""},
             "done": True, "done_reason": "stop", "total_duration": 5_000_000, "load_duration": 0,
             "prompt_eval_count": 5, "prompt_eval_duration": 5_000_000, "eval_count": 2, "eval_duration": 1},
        ]
        out = run([STREAM])
        self.assertTrue(out.endswith(b"\n"))
        self.assertNotIn(b"\n\n", out)
        self.assertEqual([codec.loads(l) for l in out.splitlines()], expected)

    def test_everySplitSameOutput(self) -> None:
        """
        Splitting the upstream body at any byte (inside UTF-8 sequences,
        inside C{data:}, between the two newlines) gives identical bytes.
        """
        whole = run([STREAM])
        for i in range(len(STREAM) + 1):
            self.assertEqual(run([STREAM[:i], STREAM[i:]]), whole, f"split at {i}")

    def test_byteByByte(self) -> None:
        """
        One byte per read gives identical bytes too.
        """
        self.assertEqual(run([STREAM[i : i + 1] for i in range(len(STREAM))]), run([STREAM]))

    def test_truncated(self) -> None:
        """
        Ending without C{[DONE]} or a finish reason is an error, not a done.
        """
        pipeline = ollamaStream("m", "chat", T0, constant)
        pipeline.feed(STREAM[: STREAM.index(b'"finish_reason"')])
        self.assertRaises(UpstreamError, pipeline.end)

    def test_generateShape(self) -> None:
        """
        For C{/api/generate} the text is in C{response}, and the final object
        has C{context}.
        """
        pipeline = ollamaStream("m", "generate", T0, constant)
        lines = [codec.loads(l) for l in (pipeline.feed(STREAM) + pipeline.end()).splitlines()]
        self.assertEqual(lines[0]["response"], "Hel")
        self.assertNotIn("message", lines[0])
        self.assertEqual(lines[-1]["context"], [])
        self.assertIs(lines[-1]["done"], True)


def contentEvent(content: str) -> bytes:
    """One OpenAI content event."""
    return b"data: " + codec.dumps({"choices": [{"delta": {"content": content}}]}) + b"\n\n"


class PartialFailureTests(SynchronousTestCase):
    """
    A stream that fails within one read keeps the lines before the failure.
    """

    def pipeline(self) -> TranslatedStream:
        return ollamaStream("m:proxy", "chat", 0, lambda: 1_000_000_000)

    def test_streamFailedCarriesEarlierLines(self) -> None:
        """
        Content then an error event in one read: L{StreamFailed} (an
        L{UpstreamError}, so still a 502 with the upstream's message)
        carries the content line.
        """
        error = b'data: {"error": {"message": "rate limited"}}\n\n'
        exc = self.assertRaises(StreamFailed, self.pipeline().feed, contentEvent("a") + contentEvent("b") + error)
        self.assertIsInstance(exc, UpstreamError)
        self.assertEqual(exc.message, "rate limited")
        lines = [codec.loads(line) for line in exc.output.splitlines()]
        self.assertEqual([line["message"]["content"] for line in lines], ["a", "b"])

    def test_tooLongTailAfterEvents(self) -> None:
        """
        Complete events then an over-long unfinished line in one read: the
        events' lines are kept in the failure, whose message names the cap.
        """
        stream = ollamaStream("m", "chat", 0, lambda: 0, maxLineLength=100)
        exc = self.assertRaises(StreamFailed, stream.feed, contentEvent("a") + b"data: " + b"x" * 200)
        self.assertIn("100", exc.message)
        [line] = [codec.loads(line) for line in exc.output.splitlines()]
        self.assertEqual(line["message"]["content"], "a")

    def test_splitReadStillStreams(self) -> None:
        """
        A read ending inside an event is translated up to the last complete
        event; the rest completes with the next read.
        """
        stream = ollamaStream("m", "chat", 0, lambda: 0)
        event = contentEvent("b")
        first = stream.feed(contentEvent("a") + event[:10])
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
        response.piece(contentEvent("hello"))
        response.piece(b'data: {"error": {"message": "overloaded"}}\n\n')
        clock.advance(0)
        response.protocol.connectionLost(Failure(ConnectionError("closed")))
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.message, "overloaded")
        lines = [codec.loads(line) for line in b"".join(request.written).splitlines()]
        self.assertEqual([line["message"]["content"] for line in lines], ["hello"])
        self.assertIsNone(request.producer)


RECORDED = (
    b": keep-alive comment\n"
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}\n\n'
    b'data:{"choices":[{"index":0,"delta":{"content":"lo \\u00e9\xc3\xa9"}}]}\n\n'
    b"event: message\n"
    b"id: 7\n"
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"retry: 10\n"
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)

EXPECTED = [
    b'{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}',
    b'{"choices":[{"index":0,"delta":{"content":"lo \\u00e9\xc3\xa9"}}]}',
    b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    b"[DONE]",
]


def decodeInPieces(pieces: list[bytes]) -> list[bytes]:
    """
    Feed C{pieces} one by one, then close.
    """
    decoder = SSEDecoder()
    out: list[bytes] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.close())
    return out


class SplittingTests(SynchronousTestCase):
    """
    Whatever the chunk boundaries, the events are the same.
    """

    def test_whole(self) -> None:
        """
        The recorded stream in one read.
        """
        self.assertEqual(decodeInPieces([RECORDED]), EXPECTED)

    def test_everyTwoWaySplit(self) -> None:
        """
        Every split of the stream into two reads gives the same events.
        """
        for i in range(len(RECORDED) + 1):
            self.assertEqual(
                decodeInPieces([RECORDED[:i], RECORDED[i:]]), EXPECTED, f"split at {i}"
            )

    def test_byteByByte(self) -> None:
        """
        One byte per read.
        """
        self.assertEqual(
            decodeInPieces([RECORDED[i : i + 1] for i in range(len(RECORDED))]), EXPECTED
        )

    def test_crlfEverySplit(self) -> None:
        """
        CRLF line ends, split everywhere (a CR at the end of a read must not
        end a line twice).
        """
        crlf = RECORDED.replace(b"\n", b"\r\n")
        for i in range(len(crlf) + 1):
            self.assertEqual(decodeInPieces([crlf[:i], crlf[i:]]), EXPECTED, f"split at {i}")

    def test_bareCR(self) -> None:
        """
        Old-Mac CR line ends are lines too.
        """
        self.assertEqual(decodeInPieces([RECORDED.replace(b"\n", b"\r")]), EXPECTED)

    def test_eventsAreReturnedWhenComplete(self) -> None:
        """
        An event is returned by the C{feed} that completes it, not before.
        """
        decoder = SSEDecoder()
        self.assertEqual(decoder.feed(b"data: a\n"), [])
        self.assertEqual(decoder.feed(b"\n"), [b"a"])


class FramingTests(SynchronousTestCase):
    """
    The SSE rules the decoder follows.
    """

    def test_multiLineData(self) -> None:
        """
        Several C{data:} lines of one event are joined with newlines.
        """
        self.assertEqual(decodeInPieces([b"data: a\ndata: b\n\n"]), [b"a\nb"])

    def test_onlyOneSpaceStripped(self) -> None:
        """
        One space after the colon is syntax; more are content.
        """
        self.assertEqual(decodeInPieces([b"data:  x\n\n"]), [b" x"])

    def test_finalEventWithoutBlankLine(self) -> None:
        """
        A server that closes right after its last data line still delivers it.
        """
        self.assertEqual(decodeInPieces([b"data: [DONE]\n"]), [b"[DONE]"])
        self.assertEqual(decodeInPieces([b"data: [DONE]"]), [b"[DONE]"])

    def test_blankLinesAlone(self) -> None:
        """
        Blank lines without data produce no event.
        """
        self.assertEqual(decodeInPieces([b"\n\n\n: c\n\n"]), [])

    def test_lineTooLong(self) -> None:
        """
        An unterminated line past the cap raises instead of growing forever.
        """
        decoder = SSEDecoder(maxLineLength=10)
        self.assertRaises(SSELineTooLong, decoder.feed, b"data: " + b"x" * 20)

    def test_eventTooLong(self) -> None:
        """
        Many data lines adding up past the cap raise too.
        """
        decoder = SSEDecoder(maxLineLength=10)
        self.assertRaises(SSELineTooLong, decoder.feed, b"data: 123456\n" * 3)

    def test_longLineUnderCap(self) -> None:
        """
        Lines far above the old 64 KiB scanner limit are fine by default.
        """
        payload = b"x" * 200_000
        self.assertEqual(decodeInPieces([b"data: " + payload[:70_000], payload[70_000:] + b"\n\n"]), [payload])
