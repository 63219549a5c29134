"""
Tests for L{ollama_proxy.protocol.ollama_request}: Ollama C{/api/chat} and
C{/api/generate} bodies validated into the typed requests with Ollama's own
messages: images (strict base64, sniffed types), options, formats,
logprobs, raw and fill-in-the-middle bodies.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.flavors import FLAVORS
from ollama_proxy.protocol.ollama_request import (
    parseChat,
    parseGenerate,
    parseTextCompletion,
    sniffImageType,
    wantsCompletion,
    withDefaults,
)
from ollama_proxy.protocol.requests import (
    ChatRequest,
    Message,
    Sampling,
    TextRequest,
    ToolCallRequest,
)
from tests.protocol.helpers import (
    BMP,
    GIF,
    JPEG,
    PNG,
    WEBP,
    b64,
    chat,
    chatRequestToOpenAI,
    generateRequestToOpenAI,
    imagePart,
    messagesToOpenAI,
)


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


class RequestTests(SynchronousTestCase):
    """
    The chat request Ollama -> OpenAI.
    """

    def test_basic(self) -> None:
        """
        Messages, streaming with usage, and options with an OpenAI equivalent.
        """
        body = {
            "model": "m:proxy",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "options": {"temperature": 0.2, "num_predict": 64, "num_ctx": 8192, "stop": ["\n"]},
            "keep_alive": "5m",
            "tools": [],
        }
        self.assertEqual(
            chatRequestToOpenAI(body, "m", True),
            {
                "model": "m",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "temperature": 0.2,
                "max_tokens": 64,
                "stop": ["\n"],
            },
        )

    def test_generateImagesNotAList(self) -> None:
        """
        A generate request's C{images} of the wrong type is a 400 naming
        C{images}, not the chat message it is turned into.
        """
        e = self.assertRaises(
            BadRequest, generateRequestToOpenAI, {"prompt": "x", "images": "abc"}, "m", True
        )
        self.assertEqual(e.message, "images must be a list of base64 strings")

    def test_badOptions(self) -> None:
        """
        Wrongly typed options are a 400 naming the option.
        """
        e = self.assertRaises(
            BadRequest, chatRequestToOpenAI, {"messages": [], "options": {"temperature": "hot"}}, "m", True
        )
        self.assertIn('"temperature"', e.message)


class TypedRequestTests(SynchronousTestCase):
    """
    The typed requests themselves, field by field (no OpenAI body in
    between).
    """

    def test_chat(self) -> None:
        """
        A chat with history: roles lower-cased, object arguments as JSON
        text, a tool result's id and name, an assistant's thinking; options
        as sampling (C{num_predict -1} and a negative seed are unset).
        """
        request = parseChat({
            "model": "m", "stream": False, "think": "high", "format": "json",
            "options": {"num_predict": -1, "seed": -3, "temperature": 0, "stop": "END",
                        "top_k": 5},
            "messages": [
                {"role": "User", "content": "weather?"},
                {"role": "assistant", "content": "", "thinking": "look it up",
                 "tool_calls": [{"id": "c1", "function": {"name": "w", "arguments": {"q": 1}}}]},
                {"role": "tool", "content": "sunny", "tool_call_id": "c1", "tool_name": "w"},
            ],
        })
        self.assertEqual(request, ChatRequest(
            model="m",
            messages=(
                Message("user", "weather?"),
                Message("assistant", "", toolCalls=(ToolCallRequest("c1", "w", '{"q":1}'),),
                        thinking="look it up"),
                Message("tool", "sunny", toolCallId="c1", toolName="w"),
            ),
            stream=False, think="high", format="json",
            sampling=Sampling(temperature=0, stop=("END",), topK=5),
        ))

    def test_defaultsMerged(self) -> None:
        """
        A model's configured options apply unless the client set its own.
        """
        body = {"model": "m", "options": {"temperature": 0.2}}
        self.assertEqual(withDefaults(body, {"temperature": 0.9, "top_p": 0.5})["options"],
                         {"temperature": 0.2, "top_p": 0.5})
        self.assertIs(withDefaults(body, {}), body)
        self.assertEqual(parseChat({"model": "m"}, {"seed": 4}).sampling, Sampling(seed=4))

    def test_generate(self) -> None:
        """
        C{/api/generate} is a one-turn chat: the system prompt, then the
        prompt with its images.
        """
        request = parseGenerate({"model": "m", "system": "be brief", "prompt": "hi"})
        self.assertEqual(request.messages, (Message("system", "be brief"), Message("user", "hi")))
        self.assertEqual(request.stream, True)

    def test_completion(self) -> None:
        """
        Raw and fill-in-the-middle bodies go to C{/v1/completions}.
        """
        self.assertTrue(wantsCompletion({"raw": True}))
        self.assertTrue(wantsCompletion({"suffix": "x"}))
        self.assertFalse(wantsCompletion({"suffix": "", "raw": False}))
        self.assertEqual(parseTextCompletion({"model": "m", "prompt": "a", "suffix": "b",
                                              "options": {"num_predict": 3}}),
                         TextRequest("m", "a", "b", True, Sampling(maxTokens=3)))
        self.assertRaises(BadRequest, parseTextCompletion,
                          {"model": "m", "raw": True, "system": "s"})
