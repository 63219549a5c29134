"""
Property tests: arbitrary backend JSON (streamed and aggregated, chat,
generate, text completion) gives a L{ProxyError} or objects in the shape
Ollama clients validate.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.errors import ProxyError
from ollama_proxy.protocol.ollama import Kind
from tests.protocol.helpers import ollamaStream, responseFromOpenAI

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
        stream = ollamaStream(
            "m", "chat" if mode == "chat" else "generate", 0, lambda: 5,
            thinkTags=mode != "completion", text=mode == "completion",
        )
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
        try:
            result = responseFromOpenAI(completion, "m", kind, 0, 1, text=mode == "completion")
        except ProxyError:
            return
        self.assertContract([result], kind)
