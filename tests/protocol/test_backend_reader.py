"""
Reading OpenAI replies: malformed tool calls, C{"error": null}, content
as a list of parts.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.errors import UpstreamError
from ollama_proxy.protocol.ollama import Kind
from ollama_proxy.protocol.backend_reader import ChatStreamReader
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
