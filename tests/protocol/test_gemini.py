"""
The Gemini API dialect: the exact chunk sequences (text, thinking, tool
calls split across chunks, usage after the finish, a failure part-way) at
every byte split, SSE and JSON-array framing, the response object, the
path parser, the request parser's validation and what it drops, and the
model list.
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
from ollama_proxy.protocol.gemini_path import GENERATE, STREAM, GeminiCall, GeminiTemplate, parsePath
from ollama_proxy.protocol.gemini_request import jsonSchema, parseCountRequest, parseGenerateRequest
from ollama_proxy.protocol.backend_reader import ChatStreamReader
from ollama_proxy.protocol.requests import Message, ToolCallRequest
from ollama_proxy.protocol.stream import TranslatedStream
from tests.protocol.helpers import PNG, T0, b64, constant, sse
from tests.protocol.test_anthropic import THINKING_STREAM, TOOL_STREAM, USAGE, chunk


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


class PathTests(SynchronousTestCase):
    """
    L{parsePath}.
    """

    def test_paths(self) -> None:
        """
        The model may carry C{:} and C{/}; the action follows the last
        C{:}; anything else is not a path of the API.
        """
        cases: list[tuple[list[str], GeminiCall | None]] = [
            (["models"], GeminiCall(None)),
            (["models", ""], GeminiCall(None)),
            (["models", "gemini-2.5-pro"], GeminiCall("gemini-2.5-pro")),
            (["models", "m:streamGenerateContent"], GeminiCall("m", "streamGenerateContent")),
            (["models", "qwen3:8b:generateContent"], GeminiCall("qwen3:8b", "generateContent")),
            (["models", "hf.co", "org", "m:Q4:countTokens"], GeminiCall("hf.co/org/m:Q4", "countTokens")),
            (["models", "m:proxy"], GeminiCall("m:proxy")),
            (["models", ":generateContent"], None),
            (["models", "..", "x:generateContent"], None),
            (["tunedModels", "m"], None),
            ([], None),
            (["files"], None),
        ]
        for segments, expected in cases:
            self.assertEqual(parsePath(segments), expected, segments)

    def test_templates(self) -> None:
        """
        The route label never carries the model.
        """
        self.assertEqual(GeminiCall(None).template(), "/v1beta/models")
        self.assertEqual(GeminiCall("secret-model").template(), "/v1beta/models/{model}")
        self.assertEqual(GeminiCall("x", "streamGenerateContent").template("v1"),
                         "/v1/models/{model}:streamGenerateContent")


USER = [{"role": "user", "parts": [{"text": "hi"}]}]


class RequestTests(SynchronousTestCase):
    """
    L{parseGenerateRequest}: the mapping into the hub's request, what is
    dropped, what is refused.
    """

    def test_conversation(self) -> None:
        """
        A tool turn as Gemini CLI sends it: the model's thought, text and
        C{functionCall} (its id kept, C{thoughtSignature} dropped), then
        the user's C{functionResponse} as a tool message before the user's
        own text; an inline image as a data URL.
        """
        parsed = parseGenerateRequest({
            "contents": [
                {"role": "user", "parts": [{"text": "look"},
                                           {"inlineData": {"mimeType": "image/png", "data": b64(PNG)}}]},
                {"role": "model", "parts": [
                    {"text": "hm", "thought": True}, {"text": "Checking."},
                    {"functionCall": {"id": "ls_1", "name": "ls", "args": {"path": "."}},
                     "thoughtSignature": "c2ln"}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"id": "ls_1", "name": "ls", "response": {"output": "a.txt"}}},
                    {"text": "and?"}]},
                {"parts": [{"functionCall": {"name": "x"}}]},
            ],
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Really."}]},
        }, "m", True)
        self.assertEqual(parsed.chat.messages, (
            Message("system", "Be brief.\nReally."),
            Message("user", "look", (f"data:image/png;base64,{b64(PNG)}",)),
            Message("assistant", "Checking.", (), (ToolCallRequest("ls_1", "ls", '{"path":"."}'),),
                    thinking="hm"),
            Message("tool", '{"output":"a.txt"}', toolCallId="ls_1", toolName="ls"),
            Message("user", "and?"),
            Message("user", ""),
        ))
        self.assertEqual(parsed.dropped, ("contents.parts.thoughtSignature", "contents.parts.functionCall (in a user turn)"))

    def test_dropped(self) -> None:
        """
        What the backend has no place for is named, each once, and the
        request still parses.
        """
        parsed = parseGenerateRequest({
            "contents": [{"role": "user", "parts": [
                {"text": "a"}, {"inlineData": {"mimeType": "audio/wav", "data": "AAAA"}},
                {"executableCode": {"code": "1"}}, {"fileData": {"mimeType": "image/png",
                                                                "fileUri": "gs://b/x.png"}}]}],
            "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH"}],
            "cachedContent": "cachedContents/1",
            "tools": [{"googleSearch": {}}, {"codeExecution": {}}],
            "generationConfig": {"candidateCount": 2, "responseLogprobs": True,
                                 "responseModalities": ["TEXT", "IMAGE"]},
            "toolConfig": {"retrievalConfig": {}},
        }, "m", False)
        self.assertEqual(parsed.chat.messages, (Message("user", "a"),))
        self.assertEqual(parsed.chat.tools, ())
        self.assertEqual(set(parsed.dropped), {
            "safetySettings", "cachedContent", "contents.parts.inlineData (audio/wav media)",
            "contents.parts.executableCode", "contents.parts.fileData (not an http(s) URL)",
            "tools.googleSearch", "tools.codeExecution",
            "generationConfig.candidateCount (one candidate)",
            "generationConfig.responseModalities (text only)",
            "generationConfig.responseLogprobs", "toolConfig.retrievalConfig",
        })

    def test_droppedBounded(self) -> None:
        """
        However many unknown fields a body has, a bounded number of
        bounded names is kept.
        """
        body: Any = {"contents": USER, **{f"k{i}" + "x" * 500: i for i in range(1000)}}
        dropped = parseGenerateRequest(body, "m", False).dropped
        self.assertEqual(len(dropped), 64)
        self.assertEqual(max(len(name) for name in dropped), 200)

    def test_invalid(self) -> None:
        """
        Malformed input is a 400 naming the field.
        """
        cases: list[tuple[Any, str]] = [
            ([], "request body must be a JSON object"),
            ({}, "contents is required: a non-empty list"),
            ({"contents": []}, "contents is required: a non-empty list"),
            ({"contents": [{"role": "bot", "parts": []}]}, "contents[0].role"),
            ({"contents": [{"role": "user"}]}, "contents[0].parts: expected a list"),
            ({"contents": [{"parts": [{"text": 1}]}]}, "contents[0].parts[0].text: expected a string"),
            ({"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "!!"}}]}]},
             "contents[0].parts[0].inlineData.data: invalid base64"),
            ({"contents": [{"parts": [{"functionCall": {"args": {}}}]}]},
             "contents[0].parts[0].functionCall.name"),
            ({"contents": [{"parts": [{"functionCall": {"name": "f", "args": [1]}}]}]},
             "contents[0].parts[0].functionCall.args: expected an object"),
            ({"contents": [{"parts": [{"functionResponse": {"name": "f", "response": "x"}}]}]},
             "contents[0].parts[0].functionResponse.response: expected an object"),
            ({"contents": USER, "generationConfig": {"temperature": "hot"}},
             "generationConfig.temperature: expected a number"),
            ({"contents": USER, "generationConfig": {"maxOutputTokens": 0}},
             "generationConfig.maxOutputTokens: must be positive"),
            ({"contents": USER, "generationConfig": {"stopSequences": "x"}},
             "generationConfig.stopSequences"),
            ({"contents": USER, "generationConfig": {"thinkingConfig": {"thinkingLevel": "HUGE"}}},
             "generationConfig.thinkingConfig.thinkingLevel"),
            ({"contents": USER, "tools": [{"functionDeclarations": [{"description": "x"}]}]},
             "tools[0].functionDeclarations[0].name"),
            ({"contents": USER, "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}},
             "toolConfig.functionCallingConfig.mode"),
            ({"contents": USER, "systemInstruction": {"parts": [{"text": 2}]}},
             "systemInstruction.parts[0].text"),
        ]
        deep: Any = {}
        for _ in range(300):
            deep = {"a": deep}
        cases += [
            ({"contents": [{"parts": [{"functionCall": {"name": "f", "args": deep}}]}]},
             "contents[0].parts[0].functionCall.args: nested too deeply"),
            ({"contents": [{"parts": [{"functionResponse": {"name": "f", "response": deep}}]}]},
             "contents[0].parts[0].functionResponse.response: nested too deeply"),
        ]
        for body, message in cases:
            with self.assertRaises(BadRequest, msg=repr(body)[:200]) as e:
                parseGenerateRequest(body, "m", False)
            self.assertIn(message, e.exception.message)

    def test_schemaConversion(self) -> None:
        """
        Google's OpenAPI subset becomes JSON Schema: lower-case types,
        C{nullable} as a C{null} type, C{propertyOrdering} dropped, at
        every level; nesting is bounded.
        """
        self.assertEqual(jsonSchema({
            "type": "OBJECT", "propertyOrdering": ["a"], "required": ["a"],
            "properties": {"a": {"type": "STRING", "nullable": True, "enum": ["x"]},
                           "b": {"type": "ARRAY", "items": {"type": "INTEGER", "format": "int32"}},
                           "c": {"anyOf": [{"type": "NUMBER"}, {"type": "BOOLEAN"}]}},
        }, "parameters"), {
            "type": "object", "required": ["a"],
            "properties": {"a": {"type": ["string", "null"], "enum": ["x"]},
                           "b": {"type": "array", "items": {"type": "integer", "format": "int32"}},
                           "c": {"anyOf": [{"type": "number"}, {"type": "boolean"}]}},
        })
        deep: Any = {"type": "STRING"}
        for _ in range(100):
            deep = {"type": "ARRAY", "items": deep}
        with self.assertRaises(BadRequest):
            jsonSchema(deep, "parameters")

    def test_thinking(self) -> None:
        """
        C{thinkingConfig}: a zero budget is off, -1 on, a budget a level
        by its size, C{thinkingLevel} its level; C{includeThoughts} says
        whether thoughts are shown.
        """
        cases: list[tuple[Any, Any, bool]] = [
            ({"includeThoughts": True}, None, True),
            ({"thinkingBudget": 0}, False, False),
            ({"thinkingBudget": -1, "includeThoughts": True}, True, True),
            ({"thinkingBudget": 512}, "low", False),
            ({"thinkingBudget": 4096}, "medium", False),
            ({"thinkingBudget": 24576}, "high", False),
            ({"thinkingLevel": "MINIMAL"}, "low", False),
            ({"thinkingLevel": "HIGH"}, "high", False),
        ]
        for config, think, thoughts in cases:
            parsed = parseGenerateRequest(
                {"contents": USER, "generationConfig": {"thinkingConfig": config}}, "m", True)
            self.assertEqual((parsed.chat.think, parsed.thoughts), (think, thoughts), config)

    def test_snakeCase(self) -> None:
        """
        Protocol fields by their C{snake_case} names, as Google's servers
        take them and the Python SDK sends some, are read like the
        C{lowerCamelCase} ones; what the fields hold (arguments, schema
        property names) is left as it is.
        """
        parsed = parseGenerateRequest({
            "contents": [{"role": "model", "parts": [{"function_call": {
                "name": "f", "args": {"city_name": "Paris"}}}]}],
            "system_instruction": {"parts": [{"text": "S"}]},
            "generation_config": {"max_output_tokens": 5, "maxOutputTokens": 6,
                                  "thinking_config": {"include_thoughts": True}},
            "tools": [{"function_declarations": [{"name": "f", "parameters": {
                "type": "OBJECT", "properties": {"city_name": {"type": "STRING"}},
                "property_ordering": ["city_name"]}}]}],
        }, "m", False)
        self.assertEqual(parsed.chat.messages, (
            Message("system", "S"),
            Message("assistant", "", (), (ToolCallRequest(None, "f", '{"city_name":"Paris"}'),)),
        ))
        self.assertEqual((parsed.chat.sampling.maxTokens, parsed.thoughts), (6, True))
        self.assertEqual(parsed.chat.tools[0]["function"]["parameters"], {
            "type": "object", "properties": {"city_name": {"type": "string"}}})
        self.assertEqual(parsed.dropped, ())

    def test_count(self) -> None:
        """
        C{countTokens} takes C{contents} or a whole
        C{generateContentRequest}.
        """
        self.assertEqual(parseCountRequest({"contents": USER}, "m").messages, (Message("user", "hi"),))
        whole = parseCountRequest({"generateContentRequest": {
            "model": "models/m", "contents": USER, "systemInstruction": {"parts": [{"text": "S"}]}}}, "m")
        self.assertEqual(whole.messages, (Message("system", "S"), Message("user", "hi")))
        with self.assertRaises(BadRequest):
            parseCountRequest({}, "m")


class GeminiTemplateTests(SynchronousTestCase):
    """
    L{GeminiTemplate}: a generation method's route, read by L{parsePath}.
    """

    def test_matches(self) -> None:
        """
        The model may hold C{/} and C{:}; the method is what follows the
        last C{:}; the label is the template, never the model.
        """
        template = GeminiTemplate("v1beta", STREAM)
        self.assertEqual(template.prefix, ("v1beta", "models"))
        self.assertEqual(template.label, "/v1beta/models/{model}:streamGenerateContent")
        self.assertEqual(template.match(["hf.co", "org", "qwen3:8b:streamGenerateContent"]),
                         {"model": "hf.co/org/qwen3:8b", "method": STREAM})
        self.assertEqual(GeminiTemplate("v1", GENERATE).label, "/v1/models/{model}:generateContent")

    def test_otherPaths(self) -> None:
        """
        Another method, no model, or an empty segment is not this route.
        """
        template = GeminiTemplate("v1beta", GENERATE)
        self.assertIsNone(template.match(["m:streamGenerateContent"]))
        self.assertIsNone(template.match(["m:countTokens"]))
        self.assertIsNone(template.match([":generateContent"]))
        self.assertIsNone(template.match(["a", "", "b:generateContent"]))
        self.assertIsNone(template.match([]))


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
