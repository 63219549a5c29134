"""
The Gemini API dialect: the exact chunk sequences (text, thinking, tool
calls split across chunks, usage after the finish, a failure part-way) at
every byte split, SSE and JSON-array framing, the response object and
the model list (the request parser's tests are in
L{tests.protocol.test_gemini_request}, the path parser's and the route
template's in L{tests.protocol.test_gemini_path}).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.catalog import ModelMeta
from ollama_proxy.protocol.errors import BadRequest, UpstreamError
from ollama_proxy.protocol.events import Reply, StreamFailed, ToolCall, Usage
from ollama_proxy.protocol.backends import NO_OVERRIDE
from ollama_proxy.protocol.gemini import GEMINI, GeminiDialect, errorObject, modelList
from ollama_proxy.protocol.gemini_path import GENERATE, STREAM
from ollama_proxy.protocol.backend_reader import ChatStreamReader
from ollama_proxy.protocol.stream import TranslatedStream
from tests.protocol.helpers import T0, constant, sse
from tests.protocol.test_anthropic import THINKING_STREAM, TOOL_STREAM, chunk


def chunks(data: bytes) -> list[Any]:
    """
    Parse Gemini's SSE: C{data:} lines only (no C{event:}, no C{[DONE]}),
    each followed by a blank line.
    """
    assert data.endswith(b"\n\n"), data
    out = []
    for block in data[:-2].split(b"\n\n"):
        assert block.startswith(b"data: ") and b"\n" not in block, block
        out.append(codec.loads(block[len(b"data: "):]))
    return out


def pipeline(thoughts: bool = True, sse: bool = True) -> TranslatedStream:
    encoder = GeminiDialect("r-1", 7, thoughts, sse).streamEncoder("gem-x", T0)
    return TranslatedStream(ChatStreamReader(constant), encoder)


def run(pieces: list[bytes], thoughts: bool = True, sse: bool = True) -> bytes:
    stream = pipeline(thoughts, sse)
    return b"".join(stream.feed(p) for p in pieces) + stream.end()


def response(*parts: Any, finish: str | None = None, usage: Any = None) -> Any:
    candidate: Any = {"content": {"parts": list(parts), "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    out: Any = {"candidates": [candidate]}
    if usage is not None:
        out["usageMetadata"] = usage
    return {**out, "modelVersion": "gem-x", "responseId": "r-1"}


def end(finish: str = "STOP", prompt: int = 9, output: int = 14) -> Any:
    return response({"text": ""}, finish=finish, usage={
        "promptTokenCount": prompt, "candidatesTokenCount": output,
        "totalTokenCount": prompt + output})


class StreamTests(SynchronousTestCase):
    """
    The chunk sequence, exactly, at every split of the backend's bytes.
    """

    def assertEverySplit(self, stream: bytes, **kwargs: Any) -> bytes:
        whole = run([stream], **kwargs)
        for i in range(len(stream) + 1):
            self.assertEqual(run([stream[:i], stream[i:]], **kwargs), whole, f"split at {i}")
        return whole

    def test_thinkingThenText(self) -> None:
        """
        Reasoning is thought parts, text is text parts, one chunk per
        backend delta; the last chunk has C{STOP} and the usage that came
        after the finish chunk.
        """
        out = self.assertEverySplit(THINKING_STREAM)
        self.assertEqual(chunks(out), [
            response({"text": "The user ", "thought": True}),
            response({"text": "greets me.", "thought": True}),
            response({"text": "Hi \u00e9t\u00e9 "}),
            response({"text": "\U0001f600!"}),
            end(),
        ])

    def test_thoughtsOnlyWhenAsked(self) -> None:
        """
        Without C{includeThoughts} (Google's default) reasoning is not
        sent.
        """
        out = self.assertEverySplit(THINKING_STREAM, thoughts=False)
        self.assertEqual(chunks(out), [
            response({"text": "Hi \u00e9t\u00e9 "}), response({"text": "\U0001f600!"}), end(),
        ])

    def test_toolCalls(self) -> None:
        """
        Tool calls whose arguments arrive in pieces are one chunk of
        C{functionCall} parts, object C{args} and the backend's ids, after
        the text; the finish is C{STOP}, as Google's is for calls.
        """
        out = self.assertEverySplit(TOOL_STREAM)
        self.assertEqual(chunks(out), [
            response({"text": "Let me check."}),
            response({"functionCall": {"id": "toolu_1", "name": "get_weather",
                                       "args": {"city": "Paris"}}},
                     {"functionCall": {"id": "toolu_2", "name": "now", "args": {}}}),
            end(),
        ])

    def test_finishReasons(self) -> None:
        """
        C{length} is C{MAX_TOKENS}, C{content_filter} C{SAFETY}; without
        usage from the backend, the prompt count is the estimate.
        """
        for finish, reason in (("length", "MAX_TOKENS"), ("content_filter", "SAFETY"),
                               ("stop", "STOP")):
            out = run([sse(chunk(finish, content="x")) + b"data: [DONE]\n\n"])
            self.assertEqual(chunks(out)[-1], end(reason, 7, 0))

    def test_failurePartWay(self) -> None:
        """
        A backend error event after some text, at every split: the text
        already read, then a final C{error} chunk in Google's shape; no
        C{finishReason}.
        """
        body = sse(chunk(content="par"), {"error": {"message": "overloaded"}})
        for i in range(len(body) + 1):
            stream = pipeline()
            out = b""
            with self.assertRaises(StreamFailed) as e:
                out += stream.feed(body[:i])
                out += stream.feed(body[i:])
            out += e.exception.output + stream.encoder.error(e.exception.message)
            self.assertEqual(chunks(out), [
                response({"text": "par"}),
                {"error": {"code": 502, "message": "overloaded", "status": "UNAVAILABLE"}},
            ], f"split at {i}")

    def test_truncatedAtEverySplit(self) -> None:
        """
        A backend that stops part-way (no finish, no C{[DONE]}) ends the
        stream with the error chunk at every cut, never a C{STOP}.
        """
        body = sse(chunk(content="Hi"), chunk(content=" there"))
        for i in range(len(body) + 1):
            stream = pipeline()
            out = stream.feed(body[:i])
            with self.assertRaises(UpstreamError) as e:
                out += stream.end()
            out += stream.encoder.error(e.exception.message)
            decoded = chunks(out)
            self.assertIn("error", decoded[-1])
            self.assertNotIn(b"finishReason", out)

    def test_jsonArray(self) -> None:
        """
        Without C{alt=sse}, the stream is one JSON array of the same
        responses (Google's default framing), closed by the last one or by
        the error.
        """
        out = self.assertEverySplit(THINKING_STREAM, sse=False)
        self.assertEqual(codec.loads(out)[-1], end())
        self.assertEqual(len(codec.loads(out)), 5)
        stream = pipeline(sse=False)
        with self.assertRaises(StreamFailed) as e:
            stream.feed(sse(chunk(content="par"), {"error": {"message": "overloaded"}}))
        out = e.exception.output + stream.encoder.error(e.exception.message)
        self.assertEqual(codec.loads(out)[1]["error"]["message"], "overloaded")


class ReplyTests(SynchronousTestCase):
    """
    The non-streamed response, and errors.
    """

    def test_reply(self) -> None:
        """
        One response: thought, text, then C{functionCall} parts; the
        finish and the usage.
        """
        reply = Reply("Hello", "hm", (ToolCall("c1", "ls", {"path": "."}, 0),), "stop",
                      Usage(3, 2), [])
        self.assertEqual(GeminiDialect("r-1", 7, True).reply(reply, "gem-x", T0, T0), response(
            {"text": "hm", "thought": True}, {"text": "Hello"},
            {"functionCall": {"id": "c1", "name": "ls", "args": {"path": "."}}},
            finish="STOP",
            usage={"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5},
        ))
        empty = Reply("", "hm", (), "length", Usage(), [])
        self.assertEqual(GeminiDialect("r-1", 7, False).reply(empty, "gem-x", T0, T0), response(
            {"text": ""}, finish="MAX_TOKENS",
            usage={"promptTokenCount": 7, "candidatesTokenCount": 0, "totalTokenCount": 7}))

    def test_replyAsStream(self) -> None:
        """
        A whole answer where a stream was asked for is the same chunks.
        """
        reply = Reply("Hello", "", (), "stop", Usage(9, 14), [])
        out = GeminiDialect("r-1", 7, True).streamEncoder("gem-x", T0).whole(reply, T0)
        self.assertEqual(chunks(out), [response({"text": "Hello"}), end()])

    def test_errorObject(self) -> None:
        """
        Google's error shape: the HTTP status as C{code}, its canonical
        name as C{status}.
        """
        for status, name in ((400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"),
                             (404, "NOT_FOUND"), (429, "RESOURCE_EXHAUSTED"), (413, "INVALID_ARGUMENT"),
                             (500, "INTERNAL"), (503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED"),
                             (507, "INTERNAL")):
            self.assertEqual(errorObject(status, "m"),
                             {"error": {"code": status, "message": "m", "status": name}})

    def test_modelList(self) -> None:
        """
        Chat models in Google's shape with their limits, embedding models
        left out, pages with a C{nextPageToken}.
        """
        catalog = [
            ModelMeta("a", {"context_length": 8192, "max_input_tokens": 4096,
                            "max_output_tokens": 1024, "thinking": True}),
            ModelMeta("nomic-embed-text"),
            ModelMeta("b", {"context_length": 32768}),
        ]
        page = modelList(catalog, 1, 0)
        self.assertEqual(page, {"models": [{
            "name": "models/a", "baseModelId": "a", "version": "001", "displayName": "a",
            "description": "a, served by ollama-proxy", "inputTokenLimit": 4096,
            "outputTokenLimit": 1024,
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                           "countTokens"],
            "thinking": True}], "nextPageToken": "1"})
        last = modelList(catalog, 1, 1)
        self.assertNotIn("nextPageToken", last)
        self.assertEqual([(m["name"], m["inputTokenLimit"], m["outputTokenLimit"])
                          for m in last["models"]], [("models/b", 32768, 32768)])


class GeminiRouteTests(SynchronousTestCase):
    """
    L{GEMINI}: the Gemini API's generation as the generic resource runs it.
    """

    BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "safetySettings": [], "generationConfig": {"candidateCount": 2}}

    def test_modelFromTheURL(self) -> None:
        """
        The model is the URL's, whatever the body says.
        """
        self.assertEqual(GEMINI.model({"model": "other"}, {"model": "m", "method": GENERATE}), "m")

    def test_parse(self) -> None:
        """
        The method says whether to stream, C{alt=sse} how; the fields the
        backend gets nothing for are named.
        """
        streamed = GEMINI.parse(self.BODY, {"model": "m", "method": STREAM, "alt": "sse"},
                                NO_OVERRIDE)
        self.assertTrue(streamed.request.stream)
        self.assertEqual(streamed.request.model, "m")
        self.assertEqual(streamed.reply.streamEncoder("m", 0).contentType, b"text/event-stream")
        self.assertIn("safetySettings", streamed.dropped)
        self.assertIn("generationConfig.candidateCount (one candidate)", streamed.dropped)
        array = GEMINI.parse(self.BODY, {"model": "m", "method": STREAM}, NO_OVERRIDE)
        self.assertEqual(array.reply.streamEncoder("m", 0).contentType,
                         b"application/json; charset=utf-8")
        whole = GEMINI.parse(self.BODY, {"model": "m", "method": GENERATE}, NO_OVERRIDE)
        self.assertFalse(whole.request.stream)
        self.assertRaises(BadRequest, GEMINI.parse, {"contents": "no"},
                          {"model": "m", "method": GENERATE}, NO_OVERRIDE)
