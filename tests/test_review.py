"""
Defects found by reading the pure translation modules against the wire
contract: odd but valid inputs, each pinned by the output a client needs.
"""

from __future__ import annotations

import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.catalog import buildCatalog, showResponse
from ollama_proxy.protocol.completions import (
    CompletionStreamTranslator,
    completionAsChat,
)
from ollama_proxy.protocol.errors import ProxyError, UpstreamError
from ollama_proxy.protocol.ollama import NDJSONStream, tagsFromModels
from ollama_proxy.protocol.openai import StreamTranslator, responseFromOpenAI
from ollama_proxy.protocol.requests import Kind

NOW = 1_750_000_000_123_456_789


def _parseable(stamp: str) -> datetime.datetime:
    """
    Parse a C{modified_at} the way Go's RFC 3339 parser and pydantic do:
    a four-digit year, nine fractional digits, C{Z}.
    """
    return datetime.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")


class CreatedTimestampTests(SynchronousTestCase):
    """
    C{modified_at} built from a backend's C{created} must stay a parseable
    RFC 3339 time, whatever unit or size the backend used.
    """

    def test_tagsMillisecondCreated(self) -> None:
        """
        A C{created} in milliseconds (some proxies do this) would be a year
        past 9999, which no client parses: C{/api/tags} falls back to now.
        """
        tags = tagsFromModels({"data": [{"id": "m", "created": 1_700_000_000_000}]}, NOW)
        stamp = tags["models"][0]["modified_at"]
        self.assertEqual(_parseable(stamp).year, 2025)

    def test_tagsHugeCreated(self) -> None:
        """
        A C{created} too large for the platform's C{time_t} must not crash
        C{/api/tags} (an C{OverflowError} would be a 500).
        """
        tags = tagsFromModels({"data": [{"id": "m", "created": 10**20}]}, NOW)
        self.assertEqual(_parseable(tags["models"][0]["modified_at"]).year, 2025)

    def test_tagsPlausibleCreatedKept(self) -> None:
        """
        A C{created} in seconds is still used.
        """
        tags = tagsFromModels({"data": [{"id": "m", "created": 1_700_000_000}]}, NOW)
        self.assertEqual(tags["models"][0]["modified_at"], "2023-11-14T22:13:20.000000000Z")

    def test_showHugeCreated(self) -> None:
        """
        C{/api/show}'s C{modified_at} has the same guard.
        """
        for created in (1_700_000_000_000, 10**20):
            catalog = buildCatalog({"data": [{"id": "m", "created": created}]}, None)
            stamp = showResponse(catalog["m"], NOW)["modified_at"]
            self.assertEqual(_parseable(stamp).year, 2025)


def _completion(message: Any) -> dict[str, Any]:
    """
    A non-streamed completion with one choice carrying C{message}.
    """
    return {"choices": [{"message": message, "finish_reason": "tool_calls"}]}


class MalformedToolCallTests(SynchronousTestCase):
    """
    A backend's malformed C{tool_calls} in a non-streamed reply is an
    upstream error (502), never a crash (500).
    """

    def test_malformedShapes(self) -> None:
        """
        C{tool_calls} that is an object, holds a string, or has a non-object
        C{function} raises L{UpstreamError}.
        """
        for calls in ({"a": 1}, ["x"], [{"function": "x"}], [{"function": ["f"]}]):
            completion = _completion({"role": "assistant", "content": "", "tool_calls": calls})
            for kind in ("chat", "generate"):
                with self.subTest(calls=calls, kind=kind):
                    self.assertRaises(
                        UpstreamError, responseFromOpenAI, completion, "m", kind, 0, 1
                    )

    def test_nameNotString(self) -> None:
        """
        A tool name that is not a string would reach the client as is, and
        ollama-python's pydantic C{ToolCall} rejects the whole reply: it is
        an upstream error instead.
        """
        for name in (5, ["f"], {"n": "f"}, True):
            completion = _completion(
                {"content": "", "tool_calls": [{"id": "c", "function": {"name": name, "arguments": "{}"}}]}
            )
            with self.subTest(name=name):
                self.assertRaises(UpstreamError, responseFromOpenAI, completion, "m", "chat", 0, 1)

    def test_nameMissing(self) -> None:
        """
        A missing or null name stays the empty string, as before.
        """
        for function in ({"arguments": "{}"}, {"name": None, "arguments": "{}"}):
            completion = _completion({"content": "", "tool_calls": [{"id": "c", "function": function}]})
            result = responseFromOpenAI(completion, "m", "chat", 0, 1)
            self.assertEqual(result["message"]["tool_calls"][0]["function"]["name"], "")


class NullErrorTests(SynchronousTestCase):
    """
    Some OpenAI-compatible servers send C{"error": null} beside a good
    result; a null error is no error.
    """

    def test_aggregated(self) -> None:
        """
        A completion with C{"error": null} is translated normally.
        """
        completion = {
            "error": None,
            "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        }
        result = responseFromOpenAI(completion, "m", "chat", 0, 1)
        self.assertEqual(result["message"], {"role": "assistant", "content": "hi"})

    def test_stream(self) -> None:
        """
        A stream event with C{"error": null} carries its delta.
        """
        translator = StreamTranslator("m", "chat", 0, lambda: 5)
        events = [
            {"error": None, "choices": [{"index": 0, "delta": {"content": "hi"}}]},
            {"error": None, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        chunks = translator.feed([codec.dumps(e) for e in events] + [b"[DONE]"])
        chunks += translator.finish()
        self.assertEqual(chunks[0]["message"], {"role": "assistant", "content": "hi"})
        self.assertEqual(chunks[-1]["done"], True)
        self.assertEqual(chunks[-1]["done_reason"], "stop")

    def test_errorStillFails(self) -> None:
        """
        A real error object still fails the stream.
        """
        translator = StreamTranslator("m", "chat", 0, lambda: 5)
        self.assertRaises(
            UpstreamError, translator.feed, [codec.dumps({"error": {"message": "boom"}})]
        )

    def test_textCompletion(self) -> None:
        """
        A C{/v1/completions} reply with C{"error": null} is still rewritten
        into the chat shape, so its text is not lost.
        """
        completion = {"error": None, "choices": [{"text": "hi", "finish_reason": "stop"}]}
        result = responseFromOpenAI(completionAsChat(completion), "m", "generate", 0, 1)
        self.assertEqual(result["response"], "hi")


MAGISTRAL_PARTS = [
    {"type": "text", "text": "Hel"},
    {"type": "image_url", "image_url": {"url": "data:,"}},
    {"type": "text", "text": "lo"},
]


class ContentPartsTests(SynchronousTestCase):
    """
    Some OpenAI-compatible servers (Mistral's reasoning models) send
    C{content} as a list of parts; the text parts are the reply text, in
    both the streamed and the aggregated translation.
    """

    def test_stream(self) -> None:
        """
        A delta whose C{content} is a list of parts is not dropped: its text
        parts become the chunk's content.
        """
        translator = StreamTranslator("m", "chat", 0, lambda: 5)
        events = [
            {"choices": [{"index": 0, "delta": {"content": MAGISTRAL_PARTS}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        chunks = translator.feed([codec.dumps(e) for e in events] + [b"[DONE]"])
        chunks += translator.finish()
        text = "".join(c["message"]["content"] for c in chunks)
        self.assertEqual(text, "Hello")

    def test_aggregated(self) -> None:
        """
        A message whose C{content} is a list of parts gives their text, not
        the parts' JSON.
        """
        cases: tuple[tuple[Kind, str | None], ...] = (("chat", None), ("generate", "response"))
        for kind, field in cases:
            completion = {
                "choices": [
                    {"message": {"role": "assistant", "content": MAGISTRAL_PARTS}, "finish_reason": "stop"}
                ]
            }
            result = responseFromOpenAI(completion, "m", kind, 0, 1)
            text = result["message"]["content"] if field is None else result[field]
            self.assertEqual(text, "Hello")


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
_KEYS = st.sampled_from(["index", "id", "type", "function", "name", "arguments", "text", "content"])
_ANY = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=3)),
    max_leaves=8,
)
_FRAGMENT = st.fixed_dictionaries(
    {},
    optional={
        "index": st.one_of(st.integers(0, 3), _ANY),
        "id": st.one_of(st.sampled_from(["a", "b"]), _ANY),
        "function": st.one_of(
            _ANY,
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.one_of(st.sampled_from(["f", "g"]), _ANY),
                    "arguments": st.one_of(st.sampled_from(['{"a":', "1}", "{}", "", "[]"]), _ANY),
                },
            ),
        ),
    },
)
_DELTA = st.one_of(
    _ANY,
    st.fixed_dictionaries(
        {},
        optional={
            "role": _ANY,
            "content": st.one_of(
                st.text(max_size=8), st.sampled_from(["<think>", "</think>", " "]), _ANY
            ),
            "reasoning_content": st.one_of(st.text(max_size=5), _ANY),
            "reasoning": _ANY,
            "tool_calls": st.one_of(st.lists(_FRAGMENT, max_size=3), _ANY),
        },
    ),
)
_CHOICE = st.one_of(
    _ANY,
    st.fixed_dictionaries(
        {},
        optional={
            "index": _ANY,
            "delta": _DELTA,
            "message": _DELTA,
            "text": _ANY,
            "finish_reason": st.one_of(st.sampled_from(["stop", "length", "tool_calls"]), _ANY),
            "logprobs": _ANY,
        },
    ),
)
_EVENT = st.one_of(
    _ANY,
    st.fixed_dictionaries(
        {},
        optional={
            "choices": st.one_of(st.lists(_CHOICE, max_size=2), _ANY),
            "usage": st.one_of(
                _ANY,
                st.fixed_dictionaries(
                    {}, optional={"prompt_tokens": _ANY, "completion_tokens": _ANY}
                ),
            ),
            "error": st.one_of(st.none(), _ANY),
        },
    ),
)

_WELL_FORMED = st.fixed_dictionaries(
    {
        "choices": st.lists(
            st.fixed_dictionaries(
                {"delta": _DELTA, "message": _DELTA},
                optional={"finish_reason": st.sampled_from(["stop", "length", "tool_calls"])},
            ),
            min_size=1,
            max_size=2,
        )
    },
    optional={"usage": _ANY, "error": st.none()},
)
"""Events that get past the first checks, so the deeper fields are
exercised."""
_EVENTS = st.one_of(_WELL_FORMED, _EVENT)


class OutputContractTests(SynchronousTestCase):
    """
    Whatever JSON a backend sends, the proxy either fails with a
    L{ProxyError} (an error status or error line) or emits objects in the
    shape Ollama's clients validate (ollama-python's pydantic models, the
    checklist of C{ollama-api.md} section 17).
    """

    def assertContract(self, chunks: list[Any], kind: Kind) -> None:
        """
        Every chunk has C{done}, a string C{created_at} and string text
        (chat: C{message.role == "assistant"}); tool calls have object
        arguments, string names and ids and C{function.index} 0..n-1; the
        final object has an Ollama C{done_reason} and integer metrics.
        """
        for chunk in chunks:
            self.assertIsInstance(chunk["done"], bool)
            self.assertIsInstance(chunk["created_at"], str)
            holder = chunk["message"] if kind == "chat" else chunk
            if kind == "chat":
                self.assertEqual(holder["role"], "assistant")
            self.assertIsInstance(holder["content" if kind == "chat" else "response"], str)
            self.assertIsInstance(holder.get("thinking", ""), str)
            for index, call in enumerate(holder.get("tool_calls", [])):
                self.assertIsInstance(call["id"], str)
                self.assertEqual(call["function"]["index"], index)
                self.assertIsInstance(call["function"]["name"], str)
                self.assertIsInstance(call["function"]["arguments"], dict)
            if chunk["done"]:
                self.assertIn(chunk["done_reason"], ("stop", "length"))
                for key in ("total_duration", "prompt_eval_count", "eval_count", "eval_duration"):
                    self.assertIsInstance(chunk[key], int)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_EVENTS, max_size=4), st.sampled_from(["chat", "generate", "completion"]))
    def test_stream(self, events: list[Any], mode: str) -> None:
        """
        A stream of arbitrary JSON events ends in an error or in contract
        conforming NDJSON lines.
        """
        translator = (
            CompletionStreamTranslator("m", 0, lambda: 5)
            if mode == "completion"
            else StreamTranslator("m", "chat" if mode == "chat" else "generate", 0, lambda: 5)
        )
        stream = NDJSONStream(translator, clock=lambda: 5)
        out = b""
        try:
            for event in events:
                out += stream.feed(b"data: " + codec.dumps(event) + b"\n\n")
            out += stream.feed(b"data: [DONE]\n\n") + stream.end()
        except ProxyError:
            return
        self.assertContract(
            [codec.loads(line) for line in out.splitlines()],
            "chat" if mode == "chat" else "generate",
        )

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_EVENTS, st.sampled_from(["chat", "generate", "completion"]))
    def test_aggregated(self, completion: Any, mode: str) -> None:
        """
        An arbitrary JSON completion gives an error or one contract
        conforming object.
        """
        kind: Kind = "chat" if mode == "chat" else "generate"
        body = completionAsChat(completion) if mode == "completion" else completion
        try:
            result = responseFromOpenAI(body, "m", kind, 0, 1)
        except ProxyError:
            return
        self.assertContract([result], kind)
