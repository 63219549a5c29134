"""
Reading OpenAI replies: malformed tool calls, C{"error": null}, content
as a list of parts, a stream's tokens read from their text alone.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Callable

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.errors import UpstreamError
from ollama_proxy.protocol.ollama import Kind
from ollama_proxy.protocol.backend_reader import LESSONS, TEMPLATE_MAX, ChatStreamReader
from ollama_proxy.protocol.events import Delta, StreamFailed
from tests.protocol.helpers import ollamaChunks, responseFromOpenAI


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
        events = [
            {"error": None, "choices": [{"index": 0, "delta": {"content": "hi"}}]},
            {"error": None, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        chunks = ollamaChunks([codec.dumps(e) for e in events] + [b"[DONE]"])
        self.assertEqual(chunks[0]["message"], {"role": "assistant", "content": "hi"})
        self.assertEqual(chunks[-1]["done"], True)
        self.assertEqual(chunks[-1]["done_reason"], "stop")

    def test_errorStillFails(self) -> None:
        """
        A real error object still fails the stream.
        """
        reader = ChatStreamReader(lambda: 5)
        self.assertRaises(
            UpstreamError, reader.feed, [codec.dumps({"error": {"message": "boom"}})]
        )

    def test_textCompletion(self) -> None:
        """
        A C{/v1/completions} reply with C{"error": null} is still rewritten
        into the chat shape, so its text is not lost.
        """
        completion = {"error": None, "choices": [{"text": "hi", "finish_reason": "stop"}]}
        result = responseFromOpenAI(completion, "m", "generate", 0, 1, text=True)
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
        events = [
            {"choices": [{"index": 0, "delta": {"content": MAGISTRAL_PARTS}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        chunks = ollamaChunks([codec.dumps(e) for e in events] + [b"[DONE]"])
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


def _event(delta: Any, envelope: dict[str, Any], finish: Any = None,
           after: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    A streamed chat chunk: C{envelope}'s fields, one choice, C{after}'s.
    """
    return {**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **(after or {})}


def _encodings() -> st.SearchStrategy[Callable[[Any], bytes]]:
    """
    The ways servers write JSON: orjson's compact UTF-8, Python's spaced
    ASCII with escapes, and compact with raw UTF-8.
    """
    return st.sampled_from([
        codec.dumps,
        lambda value: json.dumps(value).encode(),
        lambda value: json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(),
    ])


TEXT = st.lists(st.sampled_from(['a', ' ', '"', '\\', '{', '}', '<think>', '</think>', 'é', '\u2028',
                                 '"content":', 'content', '\n', '\x00', '😀']), max_size=6).map("".join)
ENVELOPES: st.SearchStrategy[dict[str, Any]] = st.sampled_from([
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "usage": None},
    {"id": "chatcmpl-2", "model": "m", "system_fingerprint": '"content":"x"'},
    {"note": {"content": "y"}},
    {},
])
AFTER: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.sampled_from([{}, {}, {"usage": None}]),
    st.builds(lambda text: {"note": {"content": text}}, TEXT),
    st.builds(lambda text: {'x"content': text}, TEXT),
    st.builds(lambda text: {"content": text}, TEXT),
)
DELTAS: st.SearchStrategy[Any] = st.one_of(
    st.builds(lambda text: {"content": text}, TEXT),
    st.builds(lambda text: {"content": text}, st.sampled_from(["", "a"])),
    st.builds(lambda text: {"role": "assistant", "content": text}, TEXT),
    st.builds(lambda text, more: {"content": text, "reasoning_content": more}, TEXT, TEXT),
    st.builds(lambda text: {"content": [{"type": "text", "text": text}]}, TEXT),
    st.just({"content": None}),
    st.just({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
)
SPLICED = st.sampled_from([
    b'null', b'"a" , "b"', b'"\\ud800"', b'["x"]', b'"unterminated', b' "a" ', b'1',
    b'"a"},"finish_reason":"stop","x":{"y":"b"', b'"a","content":"b"', b'"a"}}]}', b'',
    b'"a"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}//',
    b'"\\"content\\":\\"z\\""', b'"a\nb"', b'"\\u0000probe\\u0001"',
])


@st.composite
def _payloads(draw: st.DrawFn) -> list[bytes]:
    """
    A stream's payloads: chunks in many envelopes and spellings, now and
    then one whose C{content} string is replaced by other bytes (a
    template's pieces around anything), an error event or C{[DONE]}.
    """
    encode = draw(_encodings())
    out = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            out.append(b"[DONE]")
            continue
        event = _event(draw(DELTAS), draw(ENVELOPES),
                       draw(st.sampled_from([None, None, None, "stop", ""])), draw(AFTER))
        if kind == 1:
            event["error"] = {"message": draw(TEXT)}
        payload = encode(event)
        found = None
        for found in re.finditer(rb'"content"\s*:\s*("(?:[^"\\]|\\.)*")', payload):
            pass
        if kind == 2 and found is not None:
            start, end = found.span(1)
            payload = payload[:start] + draw(SPLICED) + payload[end:]
        out.append(payload)
    return out


def _read(groups: list[list[bytes]], lessons: int) -> list[Any]:
    """
    What a reader makes of a stream fed in C{groups}: each read's events
    (or its failure), then the end's and the counts.
    """
    reader = ChatStreamReader(itertools.count(1).__next__, lessons=lessons)
    seen: list[Any] = []
    try:
        for group in groups:
            seen.append(reader.feed(group))
        seen.append(reader.finish())
    except StreamFailed as e:
        seen.append(("failed", e.message, e.events))
    except UpstreamError as e:
        seen.append(("error", e.message))
    return [*seen, reader.usage, reader.sawDone, reader.sawFinish, reader.firstToken]


class TemplateTests(SynchronousTestCase):
    """
    A stream's plain text events after the first are read from their
    C{content} string alone, when the rest of their bytes is the first's
    (L{ChatStreamReader._learn}): whatever the backend sends, the events
    are those of decoding every payload whole.
    """

    @settings(max_examples=500, deadline=None)
    @given(_payloads(), st.data())
    @example([
        b'{"choices":[{"delta":{"content":"a"},"finish_reason":null}]}',
        b'{"choices":[{"delta":{"content":"a","content":"b"},"finish_reason":null}]}',
        b'{"choices":[{"delta":{"content":"b"},"finish_reason":null}]}',
    ], None)
    @example([
        b'{"choices":[{"delta":{"\\"content":"a","content":"q"},"finish_reason":null}]}',
        b'{"choices":[{"delta":{"\\"content":"b","content":"q"},"finish_reason":null}]}',
    ], None)
    def test_sameAsWhole(self, payloads: list[bytes], data: Any) -> None:
        """
        Any payloads, read in any groups, give the same events, failure,
        counts and end with templates as decoded whole.
        """
        cuts = sorted(data.draw(st.sets(st.integers(1, len(payloads)), max_size=4))) if data else []
        groups = [payloads[a:b] for a, b in zip([0, *cuts], [*cuts, len(payloads)]) if a < b]
        self.assertEqual(_read(groups, LESSONS), _read(groups, 0))

    def test_templateUsed(self) -> None:
        """
        A stream of tokens in one envelope decodes its first event and
        one probe whole; every later token is read from its string.
        """
        decoded = self.counted()
        envelope = {"id": "chatcmpl-1", "model": "m", "created": 1}
        words = [f"w{i} \"q\" \\ é" for i in range(50)]
        reader = ChatStreamReader()
        events = reader.feed([codec.dumps(_event({"content": w}, envelope)) for w in words])
        self.assertEqual(events, [Delta(w) for w in words])
        self.assertEqual(len(decoded), 2)

    def test_fewLessons(self) -> None:
        """
        Events that differ outside their text every time (a random padding
        field) are each decoded whole, with at most L{LESSONS} probes.
        """
        decoded = self.counted()
        reader = ChatStreamReader()
        events = reader.feed([
            codec.dumps({**_event({"content": f"w{i}"}, {}), "obfuscation": "x" * i}) for i in range(40)
        ])
        self.assertEqual(len(events), 40)
        self.assertEqual(len(decoded), 40 + LESSONS)

    def test_longEventNoTemplate(self) -> None:
        """
        An event over L{TEMPLATE_MAX} bytes is no template: a stream does
        not hold a backend's large event for its whole life.  A shorter one
        after it is.
        """
        decoded = self.counted()
        reader = ChatStreamReader()
        envelope = {"id": "x" * TEMPLATE_MAX}
        reader.feed([codec.dumps(_event({"content": "a"}, envelope)) for _ in range(3)])
        self.assertEqual(len(decoded), 3)
        reader.feed([codec.dumps(_event({"content": "a"}, {"id": "short"})) for _ in range(3)])
        self.assertEqual(len(decoded), 3 + 2)

    def counted(self) -> list[object]:
        """
        @return: the payloads the readers decode whole (and probe) from now.
        """
        decoded: list[object] = []

        def counting(data: bytes) -> object:
            decoded.append(data)
            return codec.loads(data)

        self.patch(codec, "loadsBounded", counting)
        return decoded
