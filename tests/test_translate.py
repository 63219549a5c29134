"""
Faithful chat translation, both directions, as tables over the pure functions
of L{ollama_proxy.translate} (issue 5): tools, thinking, images, structured
output, options, logprobs, usage; golden NDJSON for recorded streams, every
byte split of them; and a few end-to-end checks through L{ProxyHarness} that
assert what the backend really received.
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.chatbody import (
    chatRequestToOpenAI,
    generateRequestToOpenAI,
    imagePart,
    messagesToOpenAI,
    sniffImageType,
)
from ollama_proxy.protocol.clock import formatTimestamp
from ollama_proxy.protocol.completions import (
    CompletionStreamTranslator,
    completionAsChat,
    completionRequestToOpenAI,
)
from ollama_proxy.protocol.errors import BadRequest, UpstreamError
from ollama_proxy.protocol.flavors import (
    FLAVORS,
    GENERIC,
    flavorFor,
    withoutRejectedExtras,
)
from ollama_proxy.protocol.ollama import NDJSONStream
from ollama_proxy.protocol.openai import (
    StreamTranslator,
    doneReason,
    logprobsFromOpenAI,
    responseFromOpenAI,
    toolCallsFromOpenAI,
)
from ollama_proxy.protocol.requests import JSON
from ollama_proxy.protocol.thinktags import ThinkTagSplitter, splitThinkTags
from ollama_proxy.service.tap import Options
from ollama_proxy.testing.harness import BodyReader, ProxyHarness, delta

T0 = 1_750_000_000_123_456_789
STAMP = formatTimestamp(T0)
USER = {"role": "user", "content": "hi"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
GIF = b"GIF89a" + b"\x00" * 16
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 8
BMP = b"BM" + b"\x00" * 16


def b64(raw: bytes) -> str:
    """
    @return: C{raw} as standard padded base64 text, as Ollama clients send.
    """
    return base64.b64encode(raw).decode("ascii")


def constant() -> int:
    """
    A clock that never moves, so output is byte-for-byte comparable.
    """
    return T0


def chat(**fields: Any) -> JSON:
    """
    A chat body with one user message plus C{fields}.
    """
    return {"model": "m:proxy", "messages": [USER], **fields}


def sse(*events: Any) -> bytes:
    """
    Encode events as an SSE body; C{bytes} items are sent verbatim.
    """
    return b"".join(
        e if isinstance(e, bytes) else b"data: " + codec.dumps(e) + b"\n\n" for e in events
    )


def event(deltaFields: JSON | None = None, finish: str | None = None, **choice: Any) -> JSON:
    """
    One OpenAI stream chunk with one choice.
    """
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": deltaFields or {}, "finish_reason": finish, **choice}],
    }


def run(pieces: list[bytes], kind: Any = "chat", dropThinking: bool = False) -> bytes:
    """
    Push C{pieces} (one per socket read) through a fresh pipeline with a
    frozen clock.
    """
    translator = StreamTranslator("m:proxy", kind, T0 - 5_000_000, constant, dropThinking)
    pipeline = NDJSONStream(translator, clock=constant)
    return b"".join(pipeline.feed(p) for p in pieces) + pipeline.end()


def lines(data: bytes) -> list[JSON]:
    """
    Decode NDJSON, checking it is well formed (one object per line, no blank
    lines).
    """
    assert data.endswith(b"\n") and b"\n\n" not in data, data
    return [codec.loads(line) for line in data.splitlines()]


def final(**fields: Any) -> JSON:
    """
    The final chat object of a pipeline run with the frozen clock.
    """
    return {
        "model": "m:proxy",
        "created_at": STAMP,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 5_000_000,
        "load_duration": 0,
        "prompt_eval_count": 0,
        "prompt_eval_duration": 5_000_000,
        "eval_count": 0,
        "eval_duration": 1,
        **fields,
    }


def piece(content: str = "", **fields: Any) -> JSON:
    """
    One C{done: false} chat chunk of a pipeline run with the frozen clock.
    """
    message: JSON = {"role": "assistant", "content": content}
    logprobs = fields.pop("logprobs", None)
    message.update(fields)
    chunk: JSON = {"model": "m:proxy", "created_at": STAMP, "message": message, "done": False}
    if logprobs is not None:
        chunk["logprobs"] = logprobs
    return chunk


# ---------------------------------------------------------------------------
# Requests


class ToolRequestTests(SynchronousTestCase):
    """
    C{tools}, assistant C{tool_calls} and C{role: tool} results on the way
    to the backend.
    """

    def test_toolsPassthrough(self) -> None:
        """
        C{tools} are forwarded byte-for-byte (Ollama's own decoder would
        drop C{strict}, C{minLength}, C{additionalProperties}); an empty or
        absent list is not sent at all (ollama-python always sends C{[]}).
        """
        cases: list[tuple[Any, Any]] = [
            ([WEATHER_TOOL], [WEATHER_TOOL]),
            ([], None),
            (None, None),
        ]
        for tools, expected in cases:
            body = chat() if tools is None else chat(tools=tools)
            request = chatRequestToOpenAI(body, "m", False)
            self.assertEqual(request.get("tools"), expected, tools)
            self.assertEqual("tools" in request, expected is not None, tools)
        self.assertRaises(BadRequest, chatRequestToOpenAI, chat(tools={"a": 1}), "m", False)

    def test_assistantToolCalls(self) -> None:
        """
        Each history tool call gets C{type: function}, its id (given or a
        stable synthetic one) and its arguments as a JSON string, whatever
        form they came in; an assistant turn with only calls has C{null}
        content.
        """
        cases: list[tuple[JSON, JSON]] = [
            (
                {"id": "call_abc", "function": {"name": "f", "arguments": {"city": "Paris", "n": 1}}},
                {"id": "call_abc", "type": "function",
                 "function": {"name": "f", "arguments": '{"city":"Paris","n":1}'}},
            ),
            (
                {"function": {"name": "f", "arguments": {}}},
                {"id": "call_1_0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ),
            (
                {"function": {"name": "f"}},
                {"id": "call_1_0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ),
            (
                {"function": {"name": "f", "arguments": '{"already":"a string"}'}},
                {"id": "call_1_0", "type": "function",
                 "function": {"name": "f", "arguments": '{"already":"a string"}'}},
            ),
            (
                {"function": {"index": 0, "name": "f", "arguments": {"nested": {"a": [1, "\u00e9"]}}}},
                {"id": "call_1_0", "type": "function",
                 "function": {"name": "f", "arguments": '{"nested":{"a":[1,"\u00e9"]}}'}},
            ),
        ]
        for call, expected in cases:
            [_, assistant] = messagesToOpenAI(
                [USER, {"role": "assistant", "content": "", "tool_calls": [call]}]
            )
            self.assertEqual(
                assistant, {"role": "assistant", "content": None, "tool_calls": [expected]}, call
            )
            self.assertIsInstance(codec.loads(expected["function"]["arguments"]), dict)

    def test_badToolCalls(self) -> None:
        """
        Malformed history tool calls are a 400, not a 500 or a silent drop.
        """
        badCalls: list[Any] = ["x", [{"name": "f"}], [{"function": {"arguments": {}}}], [3]]
        for calls in badCalls:
            self.assertRaises(
                BadRequest,
                messagesToOpenAI,
                [{"role": "assistant", "content": "", "tool_calls": calls}],
            )

    def test_toolResultPairing(self) -> None:
        """
        A tool result gets the given C{tool_call_id}; else the id of the
        unanswered call with the same C{tool_name}; else the next unanswered
        call in order; else a synthetic id.
        """
        calls = {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "a", "function": {"name": "weather", "arguments": {}}},
                {"id": "b", "function": {"name": "time", "arguments": {}}},
                {"id": "c", "function": {"name": "weather", "arguments": {}}},
            ],
        }
        cases: list[tuple[list[JSON], list[str]]] = [
            # Given ids win.
            ([{"tool_call_id": "c"}, {"tool_call_id": "a"}], ["c", "a"]),
            # By name, out of order, same name twice in call order.
            ([{"tool_name": "time"}, {"tool_name": "weather"}, {"tool_name": "weather"}],
             ["b", "a", "c"]),
            # The older OpenAI-ish "name" key works like tool_name.
            ([{"name": "time"}], ["b"]),
            # No hint: in order, skipping the ones already answered.
            ([{"tool_call_id": "b"}, {}, {}], ["b", "a", "c"]),
            # Unknown name: next in order.
            ([{"tool_name": "nope"}], ["a"]),
            # More results than calls: a synthetic id.
            ([{}, {}, {}, {}], ["a", "b", "c", "call_5"]),
        ]
        for results, expected in cases:
            messages = [USER, calls] + [{"role": "tool", "content": "r", **r} for r in results]
            out = messagesToOpenAI(messages)
            self.assertEqual([m["tool_call_id"] for m in out[2:]], expected, results)
            self.assertTrue(all(m["role"] == "tool" and m["content"] == "r" for m in out[2:]))

    def test_pairingIsPerTurn(self) -> None:
        """
        Results pair with the calls of the latest assistant turn, and
        synthetic ids differ between turns, so a second round of the same tool
        is not answered with the first round's id.
        """
        turn = {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": {"x": 1}}}]}
        out = messagesToOpenAI([
            USER, turn, {"role": "tool", "content": "1", "tool_name": "f"},
            turn, {"role": "tool", "content": "2", "tool_name": "f"},
        ])
        self.assertEqual(out[1]["tool_calls"][0]["id"], out[2]["tool_call_id"])
        self.assertEqual(out[3]["tool_calls"][0]["id"], out[4]["tool_call_id"])
        self.assertNotEqual(out[2]["tool_call_id"], out[4]["tool_call_id"])


class ImageRequestTests(SynchronousTestCase):
    """
    C{images} (raw base64) to OpenAI C{image_url} parts.
    """

    def test_sniffing(self) -> None:
        """
        The data URL's MIME type comes from the magic bytes; unknown bytes
        are labelled JPEG.
        """
        cases = [
            (PNG, "image/png"),
            (JPEG, "image/jpeg"),
            (GIF, "image/gif"),
            (b"GIF87a" + b"\x00" * 4, "image/gif"),
            (WEBP, "image/webp"),
            (BMP, "image/bmp"),
            (b"\x00\x01\x02\x03", "image/jpeg"),
        ]
        for raw, mime in cases:
            self.assertEqual(sniffImageType(raw), mime, raw)
            self.assertEqual(
                imagePart(b64(raw)),
                {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64(raw)}"}},
            )

    def test_parts(self) -> None:
        """
        A message with text and images becomes a text part followed by one
        image part per image; without text, only image parts.
        """
        [withText] = messagesToOpenAI([{"role": "user", "content": "what?", "images": [b64(PNG), b64(GIF)]}])
        self.assertEqual(
            withText["content"],
            [
                {"type": "text", "text": "what?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(PNG)}},
                {"type": "image_url", "image_url": {"url": "data:image/gif;base64," + b64(GIF)}},
            ],
        )
        [alone] = messagesToOpenAI([{"role": "user", "content": "", "images": [b64(JPEG)]}])
        self.assertEqual([p["type"] for p in alone["content"]], ["image_url"])

    def test_lineBreaksTolerated(self) -> None:
        """
        Base64 wrapped at 76 columns (MIME style) is accepted, as Go's
        decoder accepts it, and sent unwrapped.
        """
        raw = PNG * 10
        wrapped = base64.encodebytes(raw).decode("ascii")
        self.assertIn("\n", wrapped)
        self.assertEqual(
            imagePart(wrapped)["image_url"]["url"], "data:image/png;base64," + b64(raw)
        )

    def test_invalid(self) -> None:
        """
        Anything that is not non-empty, padded, standard base64 is a 400 that
        says so.
        """
        for bad in ("not base64!!", "abc", "YWJ", "====", "", "YW Jj", "a-_b", "\u00e9\u00e9\u00e9\u00e9"):
            e = self.assertRaises(BadRequest, imagePart, bad)
            self.assertIn("invalid image input", e.message, bad)
        for notString in (123, None, {"data": "x"}):
            self.assertRaises(BadRequest, imagePart, notString)
        self.assertRaises(
            BadRequest, chatRequestToOpenAI,
            chat(messages=[{"role": "user", "content": "x", "images": "YWJj"}]), "m", True,
        )

    def test_dataURLPassedThrough(self) -> None:
        """
        A data URL (not Ollama's format, but sent by some clients) is used as
        it is.
        """
        url = "data:image/png;base64," + b64(PNG)
        self.assertEqual(imagePart(url), {"type": "image_url", "image_url": {"url": url}})


class ThinkRequestTests(SynchronousTestCase):
    """
    C{think} per backend flavor, and assistant C{thinking} in history.
    """

    def test_table(self) -> None:
        """
        Each flavor gets its own spelling of each C{think} value, and nothing
        else: generic backends get no switch for C{false} (non-reasoning
        models reject C{reasoning_effort: none}), vLLM the chat-template
        argument, OpenRouter its C{reasoning} object, DeepSeek its
        C{thinking} type.  C{"max"} is C{"high"}.
        """
        fields = ("reasoning_effort", "chat_template_kwargs", "reasoning", "thinking")
        cases: list[tuple[str, Any, JSON]] = [
            ("generic", None, {}),
            ("generic", True, {"reasoning_effort": "medium"}),
            ("generic", False, {}),
            ("generic", "low", {"reasoning_effort": "low"}),
            ("generic", "high", {"reasoning_effort": "high"}),
            ("generic", "max", {"reasoning_effort": "high"}),
            ("openai", True, {"reasoning_effort": "medium"}),
            ("openai", False, {}),
            ("litellm", "medium", {"reasoning_effort": "medium"}),
            ("deepseek", None, {}),
            ("deepseek", False, {"thinking": {"type": "disabled"}}),
            ("deepseek", True, {"thinking": {"type": "enabled"}}),
            ("deepseek", "max", {"thinking": {"type": "enabled"}, "reasoning_effort": "high"}),
            ("vllm", None, {}),
            ("vllm", True, {"chat_template_kwargs": {"enable_thinking": True}}),
            ("vllm", False, {"chat_template_kwargs": {"enable_thinking": False}}),
            ("vllm", "high", {"chat_template_kwargs": {"enable_thinking": True},
                              "reasoning_effort": "high"}),
            ("openrouter", None, {}),
            ("openrouter", True, {"reasoning": {"enabled": True}}),
            ("openrouter", False, {"reasoning": {"enabled": False}}),
            ("openrouter", "low", {"reasoning": {"effort": "low"}}),
            ("openrouter", "max", {"reasoning": {"effort": "high"}}),
        ]
        for flavor, think, expected in cases:
            body = chat() if think is None else chat(think=think)
            for build in (chatRequestToOpenAI, generateRequestToOpenAI):
                if build is generateRequestToOpenAI:
                    body = {**body, "prompt": "hi"}
                request = build(body, "m", True, FLAVORS[flavor])
                self.assertEqual(
                    {k: request[k] for k in fields if k in request}, expected, (flavor, think, build)
                )

    def test_invalid(self) -> None:
        """
        Any other value is a 400 with Ollama's message.
        """
        for think in ("extreme", 1, "", ["high"]):
            e = self.assertRaises(BadRequest, chatRequestToOpenAI, chat(think=think), "m", True)
            self.assertIn("invalid think value", e.message)

    def test_historyThinking(self) -> None:
        """
        Assistant C{thinking} in history is dropped, except for DeepSeek,
        whose thinking mode requires it back as C{reasoning_content}.
        """
        history = [USER, {"role": "assistant", "content": "Hello", "thinking": "greet back"}, USER]
        for flavor, expected in [
            ("generic", {"role": "assistant", "content": "Hello"}),
            ("openai", {"role": "assistant", "content": "Hello"}),
            ("vllm", {"role": "assistant", "content": "Hello"}),
            ("openrouter", {"role": "assistant", "content": "Hello"}),
            ("deepseek", {"role": "assistant", "content": "Hello", "reasoning_content": "greet back"}),
        ]:
            self.assertEqual(messagesToOpenAI(history, FLAVORS[flavor])[1], expected, flavor)
        toolTurn = {"role": "assistant", "content": "", "thinking": "call it",
                    "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": {}}}]}
        out = messagesToOpenAI([USER, toolTurn], FLAVORS["deepseek"])[1]
        self.assertEqual(out["reasoning_content"], "call it")
        self.assertEqual(out["tool_calls"][0]["id"], "x")


class OptionRequestTests(SynchronousTestCase):
    """
    C{options}, C{format}, C{logprobs} and the fields that are accepted but
    not forwarded.
    """

    def fieldsFor(self, options: JSON, flavor: str = "generic") -> JSON:
        """
        The request fields produced by C{options} alone.
        """
        request = chatRequestToOpenAI(chat(options=options), "m", False, FLAVORS[flavor])
        base = chatRequestToOpenAI(chat(), "m", False, FLAVORS[flavor])
        return {k: v for k, v in request.items() if k not in base}

    def test_table(self) -> None:
        """
        Options with an OpenAI equivalent are renamed or copied; C{-1}/C{-2}
        limits and a negative seed (Ollama's "unset") are omitted; a bare
        C{stop} string becomes a list; the sampling extras go only to
        flavors that take them; OpenAI gets C{max_completion_tokens}.
        """
        cases: list[tuple[JSON, str, JSON]] = [
            ({"num_predict": 64}, "generic", {"max_tokens": 64}),
            ({"num_predict": 64}, "openai", {"max_completion_tokens": 64}),
            ({"num_predict": -1}, "generic", {}),
            ({"num_predict": -2}, "generic", {}),
            ({"num_predict": 0}, "generic", {}),
            ({"temperature": 0}, "generic", {"temperature": 0}),
            ({"temperature": 0.7, "top_p": 0.9}, "openai", {"temperature": 0.7, "top_p": 0.9}),
            ({"seed": 42}, "generic", {"seed": 42}),
            ({"seed": -1}, "generic", {}),
            ({"stop": ["a", "b"]}, "generic", {"stop": ["a", "b"]}),
            ({"stop": "a"}, "generic", {"stop": ["a"]}),
            ({"stop": []}, "generic", {}),
            ({"presence_penalty": 0.5, "frequency_penalty": -0.5}, "generic",
             {"presence_penalty": 0.5, "frequency_penalty": -0.5}),
            ({"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}, "generic",
             {"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}),
            ({"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}, "vllm",
             {"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}),
            ({"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}, "openrouter",
             {"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}),
            ({"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}, "litellm",
             {"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}),
            ({"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}, "openai", {}),
            ({"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}, "deepseek", {}),
            ({"num_ctx": 32768, "num_gpu": 99, "num_thread": 8, "num_batch": 512, "num_keep": 4,
              "main_gpu": 0, "use_mmap": True, "typical_p": 0.9, "repeat_last_n": 64,
              "mirostat": 2, "tfs_z": 1.0, "low_vram": False, "penalize_newline": True}, "vllm", {}),
            ({}, "generic", {}),
        ]
        for options, flavor, expected in cases:
            self.assertEqual(self.fieldsFor(options, flavor), expected, (options, flavor))

    def test_badTypes(self) -> None:
        """
        A wrongly typed option is a 400 naming the option and the type, as
        Ollama does, also for options the flavor does not forward.
        """
        cases: list[tuple[JSON, str, str]] = [
            ({"num_predict": "10"}, "generic", 'option "num_predict" must be of type integer'),
            ({"num_predict": 1.5}, "generic", 'option "num_predict" must be of type integer'),
            ({"temperature": "hot"}, "generic", 'option "temperature" must be of type number'),
            ({"top_p": True}, "generic", 'option "top_p" must be of type number'),
            ({"seed": 1.5}, "generic", 'option "seed" must be of type integer'),
            ({"stop": [1]}, "generic", 'option "stop" must be of type array of strings'),
            ({"top_k": 0.5}, "openai", 'option "top_k" must be of type integer'),
            ({"min_p": "x"}, "vllm", 'option "min_p" must be of type number'),
            ({"repeat_penalty": []}, "generic", 'option "repeat_penalty" must be of type number'),
        ]
        for options, flavor, message in cases:
            e = self.assertRaises(
                BadRequest, chatRequestToOpenAI, chat(options=options), "m", True, FLAVORS[flavor]
            )
            self.assertEqual(e.message, message)
        self.assertRaises(BadRequest, chatRequestToOpenAI, chat(options=[1]), "m", True)

    def test_acceptedNotForwarded(self) -> None:
        """
        C{keep_alive}, C{truncate}, C{shift}, C{template}, C{context} and
        C{_debug_render_only} are accepted and the backend request is exactly
        what it would be without them.
        """
        ignored = {"keep_alive": "30m", "truncate": False, "shift": False, "template": "{{ .Prompt }}",
                   "context": [1, 2, 3], "_debug_render_only": False}
        for build, body in ((chatRequestToOpenAI, chat()),
                            (generateRequestToOpenAI, {"model": "m", "prompt": "hi"})):
            self.assertEqual(build({**body, **ignored}, "m", True), build(body, "m", True))

    def test_format(self) -> None:
        """
        C{"json"} is JSON mode, a schema is C{json_schema} with the name
        OpenAI requires (no C{strict}: Ollama's constraint is not strict
        either), empty is free text, anything else is a 400.
        """
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
        cases: list[tuple[Any, Any]] = [
            ("json", {"type": "json_object"}),
            (schema, {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}),
            ("", None),
            (None, None),
        ]
        for fmt, expected in cases:
            for build, body in ((chatRequestToOpenAI, chat(format=fmt)),
                                (generateRequestToOpenAI, {"model": "m", "prompt": "x", "format": fmt})):
                self.assertEqual(build(body, "m", True).get("response_format"), expected, fmt)
        for bad in ("yaml", 3, ["json"]):
            self.assertRaises(BadRequest, chatRequestToOpenAI, chat(format=bad), "m", True)

    def test_logprobs(self) -> None:
        """
        C{logprobs} and C{top_logprobs} are forwarded together; C{top_logprobs}
        alone means nothing (OpenAI would reject it), as in Ollama.
        """
        cases: list[tuple[JSON, JSON]] = [
            ({"logprobs": True}, {"logprobs": True}),
            ({"logprobs": True, "top_logprobs": 5}, {"logprobs": True, "top_logprobs": 5}),
            ({"logprobs": True, "top_logprobs": 20}, {"logprobs": True, "top_logprobs": 20}),
            ({"logprobs": True, "top_logprobs": 0}, {"logprobs": True}),
            ({"logprobs": False, "top_logprobs": 3}, {}),
            ({"top_logprobs": 3}, {}),
            ({}, {}),
        ]
        for fields, expected in cases:
            request = chatRequestToOpenAI(chat(**fields), "m", True)
            self.assertEqual(
                {k: request[k] for k in ("logprobs", "top_logprobs") if k in request}, expected, fields
            )

    def test_topLogprobsRange(self) -> None:
        """
        C{top_logprobs} outside 0..20 is a 400 with Ollama's message, on chat
        and generate; wrong types are 400s too.
        """
        for top in (-1, 21, 1000):
            for build, body in ((chatRequestToOpenAI, chat(logprobs=True, top_logprobs=top)),
                                (generateRequestToOpenAI, {"model": "m", "prompt": "x", "top_logprobs": top})):
                e = self.assertRaises(BadRequest, build, body, "m", True)
                self.assertEqual(e.message, "top_logprobs must be between 0 and 20")
        self.assertRaises(BadRequest, chatRequestToOpenAI, chat(top_logprobs="5"), "m", True)
        self.assertRaises(BadRequest, chatRequestToOpenAI, chat(logprobs="yes"), "m", True)

    def test_generate(self) -> None:
        """
        C{/api/generate} is a one-turn chat (system, then the prompt with its
        images) with the same options, format, think and logprobs handling.
        """
        body = {
            "model": "m:proxy", "prompt": "describe", "system": "be brief", "images": [b64(PNG)],
            "options": {"num_predict": 5, "top_k": 3}, "format": "json", "think": "low",
            "logprobs": True, "top_logprobs": 2, "keep_alive": 0,
        }
        self.assertEqual(
            generateRequestToOpenAI(body, "m", True, FLAVORS["vllm"]),
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "describe"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(PNG)}},
                    ]},
                ],
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": 5,
                "top_k": 3,
                "response_format": {"type": "json_object"},
                "chat_template_kwargs": {"enable_thinking": True},
                "reasoning_effort": "low",
                "logprobs": True,
                "top_logprobs": 2,
            },
        )


class FlavorTests(SynchronousTestCase):
    """
    Choosing a flavor, and withdrawing extras a backend refuses.
    """

    def test_flavorFor(self) -> None:
        """
        C{auto} recognises OpenAI, OpenRouter and DeepSeek by host (any
        port, path or subdomain) and treats everything else as generic;
        explicit names are taken as they are.
        """
        cases = [
            ("auto", "https://api.openai.com/v1", "openai"),
            ("auto", "https://openrouter.ai/api/v1", "openrouter"),
            ("auto", "https://eu.openrouter.ai/api", "openrouter"),
            ("auto", "https://api.deepseek.com", "deepseek"),
            ("auto", "http://127.0.0.1:4000", "generic"),
            ("auto", "http://notopenrouter.ai", "generic"),
            ("vllm", "http://127.0.0.1:8000", "vllm"),
            ("openai", "http://127.0.0.1:4000", "openai"),
        ]
        for name, target, expected in cases:
            self.assertEqual(flavorFor(name, target).name, expected, (name, target))
        self.assertRaises(ValueError, flavorFor, "ollama", "http://x")

    def test_option(self) -> None:
        """
        C{--backend-flavor} defaults to C{auto} and rejects unknown names
        with a usage error listing the choices.
        """
        options = Options()
        options.parseOptions(["--target", "http://127.0.0.1:8000"])
        self.assertEqual(options["backend-flavor"], "auto")
        options = Options()
        options.parseOptions(["--target", "http://127.0.0.1:8000", "--backend-flavor", "vllm"])
        self.assertEqual(options["backend-flavor"], "vllm")
        e = self.assertRaises(
            UsageError, Options().parseOptions, ["--target", "http://a", "--backend-flavor", "x"]
        )
        self.assertIn("openrouter", str(e))

    def test_withoutRejectedExtras(self) -> None:
        """
        A 400/422 naming a sampling extra that was sent yields the request
        without any extras; other errors, other statuses, or a request
        without extras yield C{None} (no retry).
        """
        request = {"model": "m", "messages": [], "top_k": 40, "min_p": 0.1, "temperature": 0.5}
        stripped = {"model": "m", "messages": [], "temperature": 0.5}
        cases: list[tuple[JSON, int, str, Any]] = [
            (request, 400, "Unrecognized request argument supplied: top_k", stripped),
            (request, 400, "Unrecognized request argument supplied: MIN_P", stripped),
            (request, 422, "extra_forbidden: ('body', 'min_p')", stripped),
            (request, 400, "model not found", None),
            (request, 500, "top_k broke me", None),
            (request, 404, "top_k", None),
            (stripped, 400, "Unrecognized request argument supplied: top_k", None),
        ]
        for body, status, message, expected in cases:
            self.assertEqual(withoutRejectedExtras(body, status, message), expected, message)


# ---------------------------------------------------------------------------
# Responses


TOOL_STREAM = sse(
    event({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
    event({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}),
    event({"tool_calls": [{"index": 1, "id": "call_t", "type": "function",
                           "function": {"name": "get_time", "arguments": '{"tz"'}}]}),
    event({"tool_calls": [{"index": 0, "function": {"arguments": 'ris", "unit": "\\u00b0C"}'}}]}),
    event({"tool_calls": [{"index": 1, "function": {"arguments": ': "CET"}'}}]}),
    event(finish="tool_calls"),
    {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}},
    b"data: [DONE]\n\n",
)
TOOL_LINES = [
    piece(tool_calls=[
        {"id": "call_w", "function": {"index": 0, "name": "get_weather",
                                      "arguments": {"city": "Paris", "unit": "\u00b0C"}}},
        {"id": "call_t", "function": {"index": 1, "name": "get_time", "arguments": {"tz": "CET"}}},
    ]),
    final(prompt_eval_count=12, eval_count=9),
]

REASONING_STREAM = sse(
    event({"role": "assistant", "reasoning_content": "Let me"}),
    event({"reasoning_content": " think."}),
    event({"reasoning": " (OpenRouter spelling)"}),
    event({"content": "Hi", "reasoning_content": None}),
    event({"content": "!"}),
    event(finish="stop"),
    # LiteLLM's usage chunk: a choice with an empty delta, after finish_reason.
    {"choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": 4, "completion_tokens": 7}},
    b"data: [DONE]\n\n",
)
REASONING_LINES = [
    piece(thinking="Let me"),
    piece(thinking=" think."),
    piece(thinking=" (OpenRouter spelling)"),
    piece("Hi"),
    piece("!"),
    final(prompt_eval_count=4, eval_count=7),
]

THINKTAG_STREAM = sse(
    event({"role": "assistant", "content": "<thi"}),
    event({"content": "nk>\n"}),
    event({"content": "Plan: greet"}),
    event({"content": ".\n</th"}),
    event({"content": "ink>\n\nHel"}),
    event({"content": "lo <think>literal</think>"}),
    event(finish="length"),
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    b"data: [DONE]\n\n",
)
THINKTAG_LINES = [
    piece(thinking="Plan: greet"),
    piece(thinking="."),
    piece("Hel"),
    piece("lo <think>literal</think>"),
    final(done_reason="length", prompt_eval_count=3, eval_count=2),
]

LP_A = {"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108],
        "top_logprobs": [{"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108]},
                         {"token": "Hi", "logprob": -1.5, "bytes": None}]}
LP_B = {"token": "lo", "logprob": -0.01, "bytes": [108, 111], "top_logprobs": []}
LOGPROB_STREAM = sse(
    event({"role": "assistant", "content": "Hel"}, logprobs={"content": [LP_A]}),
    event({"content": "lo"}, logprobs={"content": [LP_B], "refusal": None}),
    event(finish="stop", logprobs=None),
    b"data: [DONE]\n\n",
)
LOGPROB_LINES = [
    piece("Hel", logprobs=[{"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108],
                            "top_logprobs": [{"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108]},
                                             {"token": "Hi", "logprob": -1.5}]}]),
    piece("lo", logprobs=[{"token": "lo", "logprob": -0.01, "bytes": [108, 111]}]),
    final(),
]

GOLDEN = {
    "tool fragments": (TOOL_STREAM, TOOL_LINES),
    "reasoning deltas": (REASONING_STREAM, REASONING_LINES),
    "inline think tags": (THINKTAG_STREAM, THINKTAG_LINES),
    "logprobs": (LOGPROB_STREAM, LOGPROB_LINES),
}


class GoldenStreamTests(SynchronousTestCase):
    """
    Recorded OpenAI streams and the exact NDJSON they must become.
    """

    def test_golden(self) -> None:
        """
        Tool-call fragments (split mid-string, two calls interleaved) become
        one chunk with object arguments; C{reasoning_content} and
        C{reasoning} become C{thinking}; a leading C{<think>} block split
        mid-tag becomes C{thinking} and later tags stay content; logprobs
        ride on their token's chunk in Ollama's shape; usage that arrives
        after C{finish_reason} (OpenAI's C{choices: []} and LiteLLM's empty
        delta) fills the counts of the final object.
        """
        for name, (stream, expected) in GOLDEN.items():
            self.assertEqual(lines(run([stream])), expected, name)

    def test_everySplit(self) -> None:
        """
        Splitting each recorded stream at every byte boundary, and feeding it
        one byte per read, gives byte-identical NDJSON.
        """
        for name, (stream, _) in GOLDEN.items():
            whole = run([stream])
            for i in range(len(stream) + 1):
                self.assertEqual(run([stream[:i], stream[i:]]), whole, f"{name}: split at {i}")
            self.assertEqual(run([stream[i : i + 1] for i in range(len(stream))]), whole, name)

    def test_thinkFalseDropsThinking(self) -> None:
        """
        With C{think: false}, reasoning fields and a leading C{<think>}
        block are dropped; content is unchanged.
        """
        for stream in (REASONING_STREAM, THINKTAG_STREAM):
            out = lines(run([stream], dropThinking=True))
            self.assertFalse(any("thinking" in l["message"] for l in out))
        self.assertEqual(
            "".join(l["message"]["content"] for l in lines(run([THINKTAG_STREAM], dropThinking=True))),
            "Hello <think>literal</think>",
        )

    def test_generateShape(self) -> None:
        """
        For C{/api/generate}, thinking is top-level C{thinking}, text is
        C{response}, tool calls are top-level, logprobs are chunk-level.
        """
        out = lines(run([REASONING_STREAM], kind="generate"))
        self.assertEqual(out[0]["thinking"], "Let me")
        self.assertEqual(out[3]["response"], "Hi")
        self.assertTrue(all("message" not in l for l in out))
        tools = lines(run([TOOL_STREAM], kind="generate"))
        self.assertEqual(tools[0]["tool_calls"], TOOL_LINES[0]["message"]["tool_calls"])
        logprobs = lines(run([LOGPROB_STREAM], kind="generate"))
        self.assertEqual(logprobs[0]["logprobs"], LOGPROB_LINES[0]["logprobs"])
        self.assertEqual(lines(run([THINKTAG_STREAM], kind="generate"))[0]["thinking"], "Plan: greet")

    def test_heldTextFlushedAtEnd(self) -> None:
        """
        Text held back because it might be a tag is released at the end: a
        reply that is just C{"<thin"} is content, an unclosed think block
        (the token limit hit while thinking) is thinking.
        """
        out = lines(run([sse(event({"content": "<thin"}), event(finish="stop"))]))
        self.assertEqual(out[:-1], [piece("<thin")])
        out = lines(run([sse(event({"content": "<think>still going </thi"}), event(finish="length"))]))
        self.assertEqual(out[:-1], [piece(thinking="still going"), piece(thinking=" </thi")])
        self.assertEqual(out[-1]["done_reason"], "length")

    def test_toolFragmentVariants(self) -> None:
        """
        Backends that repeat the whole name in every fragment, number every
        call 0 with distinct ids (continuing without ids), send no ids, or
        send an arguments object instead of text, still give one chunk of
        well-formed calls in order (missing ids are synthesised so the client
        can echo them back).
        """
        repeated = sse(
            event({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x":'}}]}),
            event({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "1}"}}]}),
            event({"tool_calls": [{"index": 0, "id": "b", "function": {"name": "g", "arguments": '{"z"'}}]}),
            event({"tool_calls": [{"index": 0, "function": {"arguments": ": 3}"}}]}),
            event({"tool_calls": [{"index": 1, "function": {"name": "h", "arguments": {"y": 2}}}]}),
            event(finish="tool_calls"),
        )
        calls = lines(run([repeated]))[0]["message"]["tool_calls"]
        self.assertEqual(
            [(c["id"], c["function"]) for c in calls[:2]],
            [("a", {"index": 0, "name": "f", "arguments": {"x": 1}}),
             ("b", {"index": 1, "name": "g", "arguments": {"z": 3}})],
        )
        self.assertEqual(calls[2]["function"], {"index": 2, "name": "h", "arguments": {"y": 2}})
        self.assertRegex(calls[2]["id"], r"^call_[0-9a-f]{8}$")

    def test_unparsableToolArguments(self) -> None:
        """
        Arguments that are not a JSON object are reported, naming the tool
        and quoting the text, instead of calling the tool with C{{}}; in a
        stream this happens at the end, so the client gets an error line
        instead of C{done: true}.  Empty arguments mean C{{}}.
        """
        for raw in ('{"city": "Pa', "[1, 2]", "null", "42", "not json"):
            stream = sse(
                event({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "get_weather", "arguments": raw}}]}),
                event(finish="tool_calls"),
            )
            pipeline = NDJSONStream(StreamTranslator("m", "chat", T0, constant))
            self.assertEqual(pipeline.feed(stream), b"")
            e = self.assertRaises(UpstreamError, pipeline.end)
            self.assertIn("'get_weather'", e.message)
            self.assertIn(repr(raw), e.message)
        empty = sse(event({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "now", "arguments": ""}}]}),
                    event(finish="tool_calls"))
        self.assertEqual(lines(run([empty]))[0]["message"]["tool_calls"][0]["function"]["arguments"], {})

    def test_doneReason(self) -> None:
        """
        Only Ollama's values come out: C{length} stays, everything else
        (tool calls, content filter, unknown, none) is C{stop}.
        """
        for finish, expected in [("stop", "stop"), ("length", "length"), ("tool_calls", "stop"),
                                 ("function_call", "stop"), ("content_filter", "stop"),
                                 ("eos", "stop"), (None, "stop")]:
            self.assertEqual(doneReason(finish), expected, finish)

    def test_logprobsFromOpenAI(self) -> None:
        """
        OpenAI's C{logprobs} object becomes Ollama's list; null, empty or
        odd values give an empty list.
        """
        self.assertEqual(logprobsFromOpenAI({"content": [LP_B]}), [{"token": "lo", "logprob": -0.01, "bytes": [108, 111]}])
        for nothing in (None, {}, {"content": None}, {"content": "x"}, [1], {"content": [3]}):
            self.assertEqual(logprobsFromOpenAI(nothing), [], nothing)


class ThinkTagSplitterTests(SynchronousTestCase):
    """
    L{ThinkTagSplitter} on its own.
    """

    def test_table(self) -> None:
        """
        Only a tag at the very start (after whitespace) opens a think block;
        whitespace around the tags is trimmed like Ollama does; everything
        after the block, including later tags, is content.
        """
        cases = [
            ("<think>a</think>b", ("a", "b")),
            ("  \n<think>\n a \n</think>\n\n b ", ("a", "b ")),
            ("<think></think>answer", ("", "answer")),
            ("plain text", ("", "plain text")),
            ("  plain", ("", "  plain")),
            ("x <think>a</think>", ("", "x <think>a</think>")),
            ("<thinking>a</thinking>", ("", "<thinking>a</thinking>")),
            ("<think>a</think>b</think>", ("a", "b</think>")),
            ("<think>a < b </thin k></think>c", ("a < b </thin k>", "c")),
            ("<think>unclosed", ("unclosed", "")),
            ("", ("", "")),
            ("   ", ("", "   ")),
        ]
        for text, expected in cases:
            self.assertEqual(splitThinkTags(text), expected, text)

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(["<think>a b</think>\n\nc", " <think>\n\nx</think></think>y", "no tags <think>",
                         "<think>\u00e9 < /think </thi</think> \u00e9", "<think>never closed  "]),
        st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    )
    def test_anyPartition(self, text: str, cuts: list[int]) -> None:
        """
        However the text is cut into deltas, the concatenated thinking and
        content are those of the whole text.
        """
        points = sorted({min(c, len(text)) for c in cuts})
        parts = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
        splitter = ThinkTagSplitter()
        thinking = content = ""
        for part in parts:
            t, c = splitter.feed(part)
            thinking += t
            content += c
        t, c = splitter.flush()
        self.assertEqual((thinking + t, content + c), splitThinkTags(text))

    def test_passing(self) -> None:
        """
        Once real content is seen the splitter says so, so the stream stops
        consulting it.
        """
        splitter = ThinkTagSplitter()
        splitter.feed("<th")
        self.assertFalse(splitter.passing)
        splitter.feed("ere")
        self.assertTrue(splitter.passing)
        self.assertEqual(splitter.feed("<think>"), ("", "<think>"))


class AggregatedResponseTests(SynchronousTestCase):
    """
    L{responseFromOpenAI}: non-streamed replies carry the same fields,
    aggregated.
    """

    def completion(self, message: JSON, **choice: Any) -> JSON:
        """
        An OpenAI completion with one choice.
        """
        return {
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", **choice}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4},
        }

    def test_table(self) -> None:
        """
        Thinking from any of the three sources, tool calls with object
        arguments and ids, and logprobs land where a stream would have put
        them, for chat (in C{message}) and generate (top level).
        """
        calls = [{"id": "call_1", "type": "function",
                  "function": {"name": "f", "arguments": '{"a": [1, {"b": null}]}'}}]
        ollamaCalls = [{"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"a": [1, {"b": None}]}}}]
        cases: list[tuple[JSON, dict[str, Any], JSON]] = [
            ({"content": "Hi", "reasoning_content": "hmm"}, {}, {"content": "Hi", "thinking": "hmm"}),
            ({"content": "Hi", "reasoning": "hmm"}, {}, {"content": "Hi", "thinking": "hmm"}),
            ({"content": "<think>\nhmm\n</think>\n\nHi"}, {}, {"content": "Hi", "thinking": "hmm"}),
            ({"content": None, "tool_calls": calls}, {}, {"content": "", "tool_calls": ollamaCalls}),
            ({"content": "Hi"}, {"logprobs": {"content": [LP_B]}},
             {"content": "Hi", "logprobs": [{"token": "lo", "logprob": -0.01, "bytes": [108, 111]}]}),
        ]
        for message, choice, expected in cases:
            completion = self.completion(message, **choice)
            result = responseFromOpenAI(completion, "m:proxy", "chat", T0 - 10, T0)
            got = dict(result["message"])
            self.assertEqual(got.pop("role"), "assistant")
            if "logprobs" in result:
                got["logprobs"] = result["logprobs"]
            self.assertEqual(got, expected, message)
            self.assertEqual(
                (result["done"], result["done_reason"], result["prompt_eval_count"], result["eval_count"]),
                (True, "stop", 10, 4),
            )
            generated = responseFromOpenAI(completion, "m", "generate", T0 - 10, T0)
            self.assertNotIn("message", generated)
            self.assertEqual(generated["response"], expected["content"])
            for key in ("thinking", "tool_calls", "logprobs"):
                self.assertEqual(generated.get(key), expected.get(key), key)
            self.assertEqual(generated["context"], [])

    def test_thinkFalse(self) -> None:
        """
        With C{think: false}, no thinking is returned from any source.
        """
        for message in ({"content": "Hi", "reasoning_content": "x"}, {"content": "<think>x</think>Hi"}):
            result = responseFromOpenAI(self.completion(message), "m", "chat", T0, T0, dropThinking=True)
            self.assertEqual(result["message"], {"role": "assistant", "content": "Hi"})

    def test_badToolArguments(self) -> None:
        """
        Unparsable tool-call arguments are an upstream error naming the tool.
        """
        completion = self.completion({"content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]})
        e = self.assertRaises(UpstreamError, responseFromOpenAI, completion, "m", "chat", T0, T0)
        self.assertIn("'f'", e.message)
        self.assertIn("{oops", e.message)

    def test_toolCallsWithoutIds(self) -> None:
        """
        Calls without ids get distinct, repeatable synthetic ones.
        """
        calls = [{"function": {"name": "f", "arguments": "{}"}}, {"function": {"name": "f", "arguments": '{"x":1}'}}]
        first = toolCallsFromOpenAI(calls)
        self.assertEqual(first, toolCallsFromOpenAI(calls))
        self.assertNotEqual(first[0]["id"], first[1]["id"])
        self.assertEqual([c["function"]["index"] for c in first], [0, 1])


# ---------------------------------------------------------------------------
# End to end through the proxy (StubTreq on both sides)


class EndToEndTests(SynchronousTestCase):
    """
    What the backend really receives, and what the client really gets, for
    the cases where the resource layer is involved.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()

    def test_vllmRequest(self) -> None:
        """
        With the vLLM flavor the backend receives the sampling extras, the
        chat-template thinking switch, logprobs, string tool arguments and
        paired ids, and none of the Ollama-only fields.
        """
        self.h.backendClient.flavor = FLAVORS["vllm"]
        self.h.post("/api/chat", {
            "model": "m:proxy",
            "messages": [
                USER,
                {"role": "assistant", "content": "", "thinking": "use the tool",
                 "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "11C", "tool_name": "get_weather"},
            ],
            "tools": [WEATHER_TOOL],
            "think": False,
            "options": {"top_k": 20, "min_p": 0.05, "repeat_penalty": 1.05, "num_ctx": 4096, "temperature": 0.6},
            "logprobs": True,
            "top_logprobs": 3,
            "keep_alive": -1,
            "truncate": True,
        })
        received = self.h.backend.received[0].json()
        self.assertEqual(received["messages"][1], {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1_0", "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
        })
        self.assertEqual(received["messages"][2], {"role": "tool", "content": "11C", "tool_call_id": "call_1_0"})
        for key, value in {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05, "temperature": 0.6,
                           "chat_template_kwargs": {"enable_thinking": False}, "logprobs": True,
                           "top_logprobs": 3, "tools": [WEATHER_TOOL]}.items():
            self.assertEqual(received[key], value, key)
        for absent in ("num_ctx", "keep_alive", "truncate", "think", "options", "reasoning_effort"):
            self.assertNotIn(absent, received)

    def test_openrouterThinkFalse(self) -> None:
        """
        With the OpenRouter flavor, C{think: false} on C{/api/generate} is
        C{reasoning: {enabled: false}}.
        """
        self.h.backendClient.flavor = FLAVORS["openrouter"]
        self.h.post("/api/generate", {"model": "m", "prompt": "hi", "think": False, "stream": False})
        self.assertEqual(self.h.backend.received[0].json()["reasoning"], {"enabled": False})

    def test_retryWithoutExtras(self) -> None:
        """
        When the backend answers 400 naming C{top_k}, the proxy repeats the
        request once without the extras and streams that answer; the client
        never sees the 400.
        """
        d = self.h.post("/api/chat", chat(options={"top_k": 5, "temperature": 0.1}))
        first = self.h.backend.received[0]
        self.assertEqual(first.json()["top_k"], 5)
        first.respond(400, {"error": {"message": "Unrecognized request argument supplied: top_k",
                                      "type": "invalid_request_error"}})
        self.h.pump()
        self.assertEqual(len(self.h.backend.received), 2)
        second = self.h.backend.received[1]
        self.assertNotIn("top_k", second.json())
        self.assertEqual(second.json()["temperature"], 0.1)
        second.startSSE()
        second.event(delta("ok"))
        second.event(delta(finish_reason="stop"))
        second.finish()
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        reader = BodyReader(self.h, response)
        self.h.pump()
        out = reader.lines()
        self.assertEqual(out[0]["message"]["content"], "ok")
        self.assertIs(out[-1]["done"], True)

    def test_noRetryForOtherErrors(self) -> None:
        """
        A 400 about something else is relayed as it is, without a retry.
        """
        d = self.h.post("/api/chat", chat(options={"top_k": 5}))
        self.h.backend.received[0].respond(400, {"error": {"message": "context length exceeded"}})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 400)
        self.assertEqual(len(self.h.backend.received), 1)
        body = self.successResultOf(self.h.client.json_content(response))
        self.assertEqual(body, {"error": "context length exceeded"})

    def test_badRequests(self) -> None:
        """
        Invalid base64 images and C{top_logprobs} out of range are 400 JSON
        errors, and nothing is sent upstream.
        """
        cases: list[tuple[str, JSON, str]] = [
            ("/api/chat", chat(messages=[{"role": "user", "content": "x", "images": ["not base64!!"]}]),
             "invalid image input: images must be base64 encoded"),
            ("/api/generate", {"model": "m", "prompt": "x", "images": ["not base64!!"]},
             "invalid image input: images must be base64 encoded"),
            ("/api/chat", chat(logprobs=True, top_logprobs=21), "top_logprobs must be between 0 and 20"),
            ("/api/generate", {"model": "m", "prompt": "x", "top_logprobs": -1},
             "top_logprobs must be between 0 and 20"),
        ]
        for path, body, message in cases:
            response = self.successResultOf(self.h.post(path, body))
            self.assertEqual(response.code, 400, body)
            self.assertEqual(
                response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
            )
            self.assertEqual(self.successResultOf(self.h.client.json_content(response)), {"error": message})
        self.assertEqual(self.h.backend.received, [])

    def test_badToolArgumentsMidStream(self) -> None:
        """
        A streamed tool call with broken arguments ends the stream with an
        C{error} line naming the tool, and no C{done: true}.
        """
        d = self.h.post("/api/chat", chat(tools=[WEATHER_TOOL]))
        upstream = self.h.backend.received[0]
        upstream.startSSE()
        upstream.event(delta("Checking."))
        upstream.event(delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "get_weather", "arguments": '{"city":'}}]))
        upstream.event(delta(finish_reason="tool_calls"))
        upstream.done()
        self.h.pump()
        reader = BodyReader(self.h, self.successResultOf(d))
        self.h.pump()
        out = reader.lines()
        self.assertEqual(out[0]["message"]["content"], "Checking.")
        self.assertEqual(list(out[-1]), ["error"])
        self.assertIn("get_weather", out[-1]["error"])
        self.assertFalse(any(l.get("done") for l in out))

    def test_badToolArgumentsNonStreaming(self) -> None:
        """
        Without streaming the same problem is a 502 JSON error.
        """
        d = self.h.post("/api/chat", chat(stream=False, tools=[WEATHER_TOOL]))
        self.h.backend.received[0].respond(200, {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{"}}]}}]})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 502)
        self.assertIn("get_weather", self.successResultOf(self.h.client.json_content(response))["error"])

    def test_nonStreamingAggregated(self) -> None:
        """
        A non-streamed chat through the proxy returns thinking split from
        inline tags, tool calls with object arguments, logprobs and counts in
        one object.
        """
        d = self.h.post("/api/chat", chat(stream=False, logprobs=True))
        self.h.backend.received[0].respond(200, {
            "choices": [{"index": 0, "finish_reason": "tool_calls",
                         "logprobs": {"content": [LP_B]},
                         "message": {"role": "assistant", "content": "<think>plan</think>lo",
                                     "tool_calls": [{"id": "c", "type": "function",
                                                     "function": {"name": "f", "arguments": '{"a":1}'}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6},
        })
        self.h.pump()
        body = self.successResultOf(self.h.client.json_content(self.successResultOf(d)))
        self.assertEqual(body["message"], {
            "role": "assistant", "content": "lo", "thinking": "plan",
            "tool_calls": [{"id": "c", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}],
        })
        self.assertEqual(body["logprobs"], [{"token": "lo", "logprob": -0.01, "bytes": [108, 111]}])
        self.assertEqual((body["done_reason"], body["prompt_eval_count"], body["eval_count"]), ("stop", 5, 6))

    def test_defaultFlavorIsGeneric(self) -> None:
        """
        A backend built without a flavor is generic: extras are sent and
        C{think: false} sends no switch.
        """
        self.assertIs(self.h.backendClient.flavor, GENERIC)
        self.h.post("/api/chat", chat(think=False, options={"repeat_penalty": 1.2}))
        received = self.h.backend.received[0].json()
        self.assertEqual(received["repetition_penalty"], 1.2)
        for absent in ("reasoning_effort", "chat_template_kwargs", "reasoning"):
            self.assertNotIn(absent, received)


class TextCompletionInterplayTests(SynchronousTestCase):
    """
    The flavor and the C{<think>} splitting on the C{raw}/C{suffix} route to
    C{/v1/completions} (built for issue 4): extras follow the flavor, the
    legacy route always gets C{max_tokens}, and raw text is never split.
    """

    def test_request(self) -> None:
        """
        Sampling extras follow the flavor; C{num_predict} is C{max_tokens}
        even for OpenAI (the legacy route has no C{max_completion_tokens}).
        """
        body = {"model": "m", "prompt": "def f(", "suffix": "):", "options": {"top_k": 3, "num_predict": 9}}
        cases: list[tuple[str, JSON]] = [
            ("generic", {"top_k": 3, "max_tokens": 9}),
            ("openai", {"max_tokens": 9}),
            ("vllm", {"top_k": 3, "max_tokens": 9}),
        ]
        for flavor, expected in cases:
            request = completionRequestToOpenAI(body, "m", False, FLAVORS[flavor])
            self.assertEqual(
                {k: request[k] for k in ("top_k", "max_tokens", "max_completion_tokens") if k in request},
                expected,
                flavor,
            )

    def test_rawTextNotSplit(self) -> None:
        """
        A completion whose text starts with C{<think>} stays C{response} text,
        streamed or not.
        """
        text = "<think>x</think>y"
        stream = sse({"choices": [{"index": 0, "text": text, "finish_reason": None}]},
                     {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
        pipeline = NDJSONStream(CompletionStreamTranslator("m", T0, constant), clock=constant)
        out = lines(pipeline.feed(stream) + pipeline.end())
        self.assertEqual(out[0]["response"], text)
        self.assertFalse(any("thinking" in l for l in out))
        completion = completionAsChat({"choices": [{"index": 0, "text": text, "finish_reason": "stop"}]})
        result = responseFromOpenAI(completion, "m", "generate", T0, T0, thinkTags=False)
        self.assertEqual((result["response"], result.get("thinking")), (text, None))

    def test_rawRetryWithoutExtras(self) -> None:
        """
        Through the proxy, a raw generate whose C{top_k} the backend refuses
        by name is retried once on C{/v1/completions} without it, and the
        answer's leading C{<think>} is left alone.
        """
        h = ProxyHarness()
        d = h.post("/api/generate", {"model": "m", "prompt": "<p>", "raw": True, "stream": False,
                                      "options": {"top_k": 7}})
        first = h.backend.received[0]
        self.assertEqual((first.path, first.json()["top_k"]), ("/v1/completions", 7))
        first.respond(400, {"error": {"message": "Unrecognized request argument supplied: top_k"}})
        h.pump()
        second = h.backend.received[1]
        self.assertEqual(second.path, "/v1/completions")
        self.assertNotIn("top_k", second.json())
        second.respond(200, {"choices": [{"index": 0, "text": "<think>a</think>b", "finish_reason": "stop"}]})
        h.pump()
        body = self.successResultOf(h.client.json_content(self.successResultOf(d)))
        self.assertEqual(body["response"], "<think>a</think>b")
        self.assertNotIn("thinking", body)
