"""
Pure tests of the core translation: names, the tags list, the chat request,
and the whole SSE-to-NDJSON pipeline under every TCP split.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.chatbody import chatRequestToOpenAI, generateRequestToOpenAI
from ollama_proxy.protocol.clock import formatTimestamp
from ollama_proxy.protocol.errors import BadRequest, UpstreamError
from ollama_proxy.protocol.names import backendModel, clientModelName
from ollama_proxy.protocol.ollama import NDJSONStream, tagsFromModels
from ollama_proxy.protocol.openai import StreamTranslator

T0 = 1_750_000_000_123_456_789


def constant() -> int:
    """
    A clock that never moves, so output is byte-for-byte comparable.
    """
    return T0


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


def run(pieces: list[bytes]) -> bytes:
    """
    Push C{pieces} through a fresh pipeline.
    """
    pipeline = NDJSONStream(StreamTranslator("m:proxy", "chat", T0 - 5_000_000, constant))
    return b"".join(pipeline.feed(p) for p in pieces) + pipeline.end()


class PipelineTests(SynchronousTestCase):
    """
    L{NDJSONStream}: SSE bytes in, NDJSON bytes out.
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
        pipeline = NDJSONStream(StreamTranslator("m", "chat", T0, constant))
        pipeline.feed(STREAM[: STREAM.index(b'"finish_reason"')])
        self.assertRaises(UpstreamError, pipeline.end)

    def test_generateShape(self) -> None:
        """
        For C{/api/generate} the text is in C{response}, and the final object
        has C{context}.
        """
        pipeline = NDJSONStream(StreamTranslator("m", "generate", T0, constant))
        lines = [codec.loads(l) for l in (pipeline.feed(STREAM) + pipeline.end()).splitlines()]
        self.assertEqual(lines[0]["response"], "Hel")
        self.assertNotIn("message", lines[0])
        self.assertEqual(lines[-1]["context"], [])
        self.assertIs(lines[-1]["done"], True)


class NameTests(SynchronousTestCase):
    """
    Client names to backend ids and back.
    """

    def test_backendModel(self) -> None:
        """
        The proxy's tag and C{:latest} are stripped; real tags and ids known
        to the backend are kept.
        """
        cases = [
            ("gpt-4o:proxy", None, "gpt-4o"),
            ("gpt-4o:latest", None, "gpt-4o"),
            ("gpt-4o", None, "gpt-4o"),
            ("qwen3:8b", None, "qwen3:8b"),
            ("openrouter/deepseek:free", None, "openrouter/deepseek:free"),
            ("llama:latest", {"llama:latest"}, "llama:latest"),
            (":proxy", None, ":proxy"),
        ]
        for name, known, expected in cases:
            self.assertEqual(backendModel(name, known), expected, name)

    def test_clientModelName(self) -> None:
        """
        Untagged ids get the tag; tagged ids are listed as they are.
        """
        self.assertEqual(clientModelName("gpt-4o"), "gpt-4o:proxy")
        self.assertEqual(clientModelName("qwen3:8b"), "qwen3:8b")
        self.assertEqual(clientModelName("a/b", "latest"), "a/b:latest")

    def test_tagsOncePerModel(self) -> None:
        """
        Duplicate ids from the backend are listed once, with distinct digests
        per model.
        """
        tags = tagsFromModels({"data": [{"id": "a"}, {"id": "a"}, {"id": "b"}]}, T0)
        self.assertEqual([m["name"] for m in tags["models"]], ["a:proxy", "b:proxy"])
        self.assertNotEqual(tags["models"][0]["digest"], tags["models"][1]["digest"])

    def test_tagsRejectsGarbage(self) -> None:
        """
        A backend answer that is not a model list is an upstream error.
        """
        self.assertRaises(UpstreamError, tagsFromModels, {"nope": 1}, T0)
        self.assertEqual(tagsFromModels({"data": None}, T0), {"models": []})


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
