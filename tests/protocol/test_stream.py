"""
The streaming pipeline: SSE bytes in, dialect bytes out, the same at
every split of the input; what a read that fails part-way still delivers.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.clock import formatTimestamp
from ollama_proxy.protocol.errors import UpstreamError
from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.anthropic import AnthropicDialect
from ollama_proxy.protocol.backend_reader import ChatStreamReader
from ollama_proxy.protocol.dialect import Encoder
from ollama_proxy.protocol.gemini import GeminiDialect
from ollama_proxy.protocol.ollama import NDJSONEncoder
from ollama_proxy.protocol.redact import PREFIX, Redactor
from ollama_proxy.protocol.responses import ResponsesDialect
from ollama_proxy.protocol.responses_request import ResponsesContext
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


@st.composite
def sseEvent(draw: Any) -> bytes:
    """
    One OpenAI content event in any of the framings SSE allows: one data
    line with or without its space, CRLF or CR line ends, a comment or an
    C{event:} line with it, its JSON over two data lines, or an empty one.
    """
    text = draw(st.text(alphabet=st.sampled_from("ab \n\r:\\\"é😀"), max_size=6))
    body = codec.dumps({"choices": [{"delta": {"content": text}}]})
    shape = draw(st.sampled_from(["space", "bare", "crlf", "cr", "comment", "named", "split",
                                  "empty", "keepalive"]))
    if shape == "bare":
        return b"data:" + body + b"\n\n"
    if shape == "crlf":
        return b"data: " + body + b"\r\n\r\n"
    if shape == "cr":
        return b"data: " + body + b"\r\r"
    if shape == "comment":
        return b": ping\ndata: " + body + b"\n\n"
    if shape == "named":
        return b"event: delta\ndata: " + body + b"\n\n"
    if shape == "split":
        return b'data: {"choices":\ndata: [{"delta":{"content":' + codec.dumps(text) + b"}}]}\n\n"
    if shape == "empty":
        return b"data: {}\n\n"
    if shape == "keepalive":
        return b": keep-alive\n\n"
    return b"data: " + body + b"\n\n"


class OneEventReadTests(SynchronousTestCase):
    """
    A read that is one whole event of one data line, nothing pending (the
    relay's common read) is taken in one pass; any read is translated as
    the decoder would.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.lists(sseEvent(), min_size=1, max_size=8), st.data())
    @example([b"data: {}\n\n", b"data: " + codec.dumps({"choices": [{"delta": {"content": "x"}}]})
              + b"\r\n\r\n"], None)
    def test_sameAsOneRead(self, events: list[bytes], data: Any) -> None:
        """
        One event per read, or the stream cut anywhere: the bytes of the
        whole stream given in one read.
        """
        whole = b"".join(events) + STREAM
        expected = run([whole])
        self.assertEqual(run([*events, STREAM]), expected)
        if data is not None:
            cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=4)))
            reads = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])]
            self.assertEqual(run(reads), expected)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(sseEvent(), st.sampled_from([
        b"\n", b"data: {}\n\n\n", b"\n\ndata: {}\n\n", b"data: {}\n\ndata:{}\n\n",
        b'data: {"choices":[{"delta":{"content":"a\\n\\ndata: b"}}]}\n\n',
    ])), min_size=1, max_size=12))
    @example([b"data: {}\n\n"] * 3)
    def test_manyEventsOneRead(self, events: list[bytes]) -> None:
        """
        Many events in one read (whole events of one C{data: } line each
        are cut in a few passes) give the bytes of the same stream read one
        byte at a time (the decoder's line loop), whatever else the read
        holds: other fields, stray blank lines, bare C{data:}, line ends.
        """
        whole = b"".join(events) + STREAM
        self.assertEqual(run([whole]), run([whole[i:i + 1] for i in range(len(whole))]))

    def test_manyEventsOverCapTogether(self) -> None:
        """
        Events each under the line cap, longer than it together, in one
        read: each passes.
        """
        events = [contentEvent(c * 40) for c in "abc"]
        pipeline = ollamaStream("m:proxy", "chat", T0, constant, maxLineLength=len(events[0]))
        out = pipeline.feed(b"".join(events))
        self.assertEqual([line["message"]["content"] for line in map(codec.loads, out.splitlines())],
                         [c * 40 for c in "abc"])

    def test_afterPendingPiece(self) -> None:
        """
        A whole event after a piece of one: the piece's event first.
        """
        pipeline = ollamaStream("m:proxy", "chat", T0, constant)
        self.assertEqual(pipeline.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}'), b"")
        out = pipeline.feed(b"\n\n" + contentEvent("b")[:-2])
        self.assertEqual([line["message"]["content"] for line in map(codec.loads, out.splitlines())],
                         ["a"])
        out = pipeline.feed(b"\n\n")
        self.assertEqual(codec.loads(out)["message"]["content"], "b")

    def test_oversizedEventRefused(self) -> None:
        """
        One whole event over the line cap is refused as the decoder refuses
        it; one at the cap passes.
        """
        event = contentEvent("x" * 40)
        pipeline = ollamaStream("m:proxy", "chat", T0, constant, maxLineLength=len(event) - 9)
        self.assertRaises(SSELineTooLong, pipeline.feed, event)
        pipeline = ollamaStream("m:proxy", "chat", T0, constant, maxLineLength=len(event) - 8)
        self.assertEqual(codec.loads(pipeline.feed(event))["message"]["content"], "x" * 40)


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


# The outbound byte filter's skip (issue 23): a read the event redactor
# certified is one the byte filter would not change.

PIECES = ["sk-", "secret", "key", "123456", "2025", "06-15", "content", "text_delta", "assistant",
          "model", "m-x", "msg_", "output_text", "data: ", "index", "ab", "é", ":", ",", "-",
          "{", "}", "Z", "T", ".", '"', "\\", "\n", "\x01", "u0073", "0", "vapi-key1", "ab", "he"]
TRICKY = ["123456", "2025-06-15", "15:06:40.1", ":0,", "0,\"item", '"},"done"', '"text":"he',
          "nvapi-key1", "u0001ab", "u0073k-x", "text_delta", "output_text", "assistant", "m-x-key",
          "sk-bench-secret-key", "n\\x"]
"""Secrets that only the framing, a number, a timestamp, a JSON quote or an
escape can complete."""
pieces = st.sampled_from(PIECES)
words = st.lists(pieces, min_size=1, max_size=4).map("".join)
texts = st.one_of(words, st.text(max_size=6), st.just(" w"), st.just("hello there"),
                  st.sampled_from(["\nvapi-key1", "\x01ab", "\ttext_delta", '"},"done"']))
thinking = st.one_of(st.just(""), st.just(""), st.just(""), texts)


def dialectEncoder(name: str, model: str) -> Encoder:
    """
    @return: a fresh stream encoder of the dialect C{name}.
    """
    if name == "ollama":
        return NDJSONEncoder(model, "chat", T0, constant)
    if name == "generate":
        return NDJSONEncoder(model, "generate", T0, constant)
    if name == "anthropic":
        return AnthropicDialect(5).streamEncoder(model, T0)
    if name == "responses":
        return ResponsesDialect(ResponsesContext({"tools": []})).streamEncoder(model, T0)
    return GeminiDialect("r", 5, True).streamEncoder(model, T0)


IDS = re.compile(rb"(msg|resp)_[0-9a-f]+")
"""The random ids of a stream, the same in two runs once replaced."""

DIALECTS = ["ollama", "generate", "anthropic", "responses", "gemini"]


def sseDeltas(deltas: list[tuple[str, str]]) -> bytes:
    """
    @return: the backend's SSE for C{(content, reasoning)} deltas and the end.
    """
    events = [
        {"choices": [{"index": 0, "delta": {"content": content, "reasoning_content": thinking}}]}
        if thinking else {"choices": [{"index": 0, "delta": {"content": content}}]}
        for content, thinking in deltas
    ]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return b"".join(b"data: " + codec.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


FIRST = len(sseDeltas([("a", "")]).split(b"\n\n")[0]) + 2
"""The length of the first delta's event: a read boundary after it."""


def filtered(name: str, model: str, secrets: list[str], reads: list[bytes]) -> tuple[bytes, int]:
    """
    Run a stream as the web layer does: every read through the event
    redactor, its output through the outbound byte filter unless the
    pipeline certified it (and the filter holds nothing back).  Fails if a
    certified read is one the byte filter would have changed.

    @return: what the client received, and how many reads skipped the filter.
    """
    redactor = Redactor(secrets)
    pipeline = TranslatedStream(ChatStreamReader(constant), dialectEncoder(name, model),
                                redactor=redactor.events())
    outbound = redactor.stream()
    assert outbound is not None
    sent, skipped = [], 0
    for read in reads:
        out = pipeline.feed(read)
        if pipeline.redacted and not outbound.holding:
            skipped += 1
            checked = outbound.feed(out)
            if checked != out or outbound.holding:
                raise AssertionError(f"certified {out!r}, the filter makes {checked!r}")
            sent.append(out)
        else:
            sent.append(outbound.feed(out))
    sent.append(outbound.feed(pipeline.end()))
    sent.append(outbound.end())
    return b"".join(sent), skipped


class CertifiedTests(SynchronousTestCase):
    """
    L{TranslatedStream.redacted}: the reads whose output the web layer
    writes past the outbound byte filter are exactly ones the filter would
    pass unchanged, whatever the secrets, the model name and the text.
    """

    @settings(max_examples=600, deadline=None)
    @example("ollama", "m", ["nvapi-key1"], [("a", ""), ("\nvapi-key1", "")], [FIRST])
    @example("anthropic", "m", ["u0001ab"], [("a", ""), ("\x01ab", "")], [FIRST])
    @example("ollama", "m", ['"},"done"'], [("a", ""), ("x", "")], [FIRST])
    @example("gemini", "m", ['"}],"role'], [("a", ""), ("x", "")], [FIRST])
    @example("ollama", "m", ["123456"], [("a", ""), ("x", "")], [FIRST])
    @example("responses", "m", ["0,\"item"], [("a", ""), ("x", "")], [FIRST])
    @example("ollama", "m-x-key", ["m-x-key"], [("a", ""), ("x", "")], [FIRST])
    @given(
        name=st.sampled_from(DIALECTS),
        model=st.one_of(st.just("m"), words),
        secrets=st.lists(st.one_of(st.sampled_from(TRICKY), words), min_size=1, max_size=3),
        deltas=st.lists(st.tuples(texts, thinking), min_size=1, max_size=8),
        cuts=st.lists(st.integers(0, 2000), max_size=6),
    )
    def test_skipChangesNothing(
        self, name: str, model: str, secrets: list[str], deltas: list[tuple[str, str]],
        cuts: list[int],
    ) -> None:
        """
        Secrets made of the dialects' framing words, digits, timestamps,
        quotes, backslashes, escapes and control characters; the model
        name and the text made of the same: at any read boundaries, no
        certified read is one the filter would change, and no secret
        reaches the client.
        """
        body = sseDeltas(deltas)
        bounds = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
        reads = [body[a:b] for a, b in zip(bounds, bounds[1:])]
        sent, _ = filtered(name, model, secrets, reads)
        for secret in secrets:
            if len(secret) >= PREFIX:
                self.assertNotIn(secret[:PREFIX].encode(), sent)
            elif "\\" not in secret:
                self.assertNotIn(secret.encode(), sent)

    def test_plainTextSkips(self) -> None:
        """
        The common stream, ordinary keys: every read after the one that
        opens the text skips the filter, in every dialect; the client gets
        the bytes it got through the filter.
        """
        body = sseDeltas([(f" w{i}", "") for i in range(6)])
        cuts = [body.index(b"data: ", i) for i in range(1, len(body) - 20, 60)]
        bounds = sorted({0, len(body), *cuts})
        reads = [body[a:b] for a, b in zip(bounds, bounds[1:])]
        secrets = ["sk-bench-secret-key", "client-key-999999"]
        for name in DIALECTS:
            sent, skipped = filtered(name, "m", secrets, reads)
            plain = TranslatedStream(ChatStreamReader(constant), dialectEncoder(name, "m"))
            expected = b"".join(plain.feed(r) for r in reads) + plain.end()
            self.assertEqual(IDS.sub(b"ID", sent), IDS.sub(b"ID", expected), name)
            self.assertGreaterEqual(skipped, len(reads) - 3, name)

    def test_framingWithSecretNotCertified(self) -> None:
        """
        A secret the framing helps spell is never certified: one the model
        name carries, one that is a dialect's own word, a number or a
        timestamp; the filter then replaces it.
        """
        body = sseDeltas([(" w1", ""), (" w2", ""), (" w3", "")])
        reads = [body[: body.index(b"data: ", 10)], body[body.index(b"data: ", 10):]]
        for name, model, secret in [
            ("ollama", "sk-abcdef-model", "sk-abcdef"), ("gemini", "sk-abcdef", "sk-abcdef"),
            ("anthropic", "m", "text_delta"), ("responses", "m", "output_text"),
            ("ollama", "m", "assistant"), ("ollama", "m", "2025-06"), ("responses", "m", "123456"),
        ]:
            sent, skipped = filtered(name, model, [secret], reads)
            self.assertEqual(skipped, 0, (name, secret))
            self.assertNotIn(secret.encode(), sent, (name, secret))

    def test_framingFailingTheCheckIsFiltered(self) -> None:
        """
        The skip never vouches for bytes whose framing failed the check: an
        encoder whose template holds a secret's head (or a backslash) has
        every read of plain, secret-free text sent through the byte
        filter, which removes the secret the framing spells.
        """
        for piece in [b"sk-abcdef", b"\\"]:

            class Spelling(NDJSONEncoder):
                def _framing(self) -> bytes:
                    return piece + b"\n" + super()._framing()

                def _encode(self, events: Any) -> bytes:
                    return super()._encode(events).replace(b'"created_at"', b'"' + piece + b'"')

            redactor = Redactor(["sk-abcdef"])
            pipeline = TranslatedStream(ChatStreamReader(constant), Spelling("m", "chat", T0, constant),
                                        redactor=redactor.events())
            outbound = redactor.stream()
            assert outbound is not None
            body = sseDeltas([(" w1", ""), (" w2", ""), (" w3", "")])
            cut = body.index(b"data: ", 10)
            sent = []
            for read in (body[:cut], body[cut:]):
                out = pipeline.feed(read)
                self.assertFalse(pipeline.redacted, piece)
                sent.append(outbound.feed(out))
            if piece == b"sk-abcdef":
                self.assertIn(b"sk-abcdef", out)
                self.assertNotIn(b"sk-abcdef", b"".join(sent))
