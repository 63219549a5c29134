"""
Tests for L{ollama_proxy.protocol.embeddings}: Ollama's embedding bodies
validated, the C{/v1/embeddings} body, the backend's vectors read back in
input order, and Ollama's answers.
"""

from __future__ import annotations

import math

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.embeddings import (
    dimensionsValue,
    embedInputs,
    embedRequestToOpenAI,
    embedResponse,
    emptyEmbedResponse,
    legacyPrompt,
    normalise,
    vectorsFromOpenAI,
)
from ollama_proxy.protocol.errors import BadRequest, UpstreamError


class RequestTests(SynchronousTestCase):
    """
    What a client sends, validated with Ollama's messages.
    """

    def test_inputs(self) -> None:
        """
        A string or a list of strings; nothing (only a model load) for a
        missing, null or empty input.
        """
        self.assertEqual(embedInputs({"input": "a"}), ["a"])
        self.assertEqual(embedInputs({"input": ["a", "b"]}), ["a", "b"])
        empties: list[dict[str, object]] = [{}, {"input": None}, {"input": ""}, {"input": []}]
        for body in empties:
            self.assertEqual(embedInputs(body), [])
        for bad in (1, ["a", 2], {"text": "a"}, True):
            e = self.assertRaises(BadRequest, embedInputs, {"input": bad})
            self.assertEqual(str(e), "invalid input type")

    def test_dimensions(self) -> None:
        """
        A positive integer, or the model's own length for none or 0.
        """
        self.assertEqual(dimensionsValue({"dimensions": 64}), 64)
        self.assertIsNone(dimensionsValue({}))
        self.assertIsNone(dimensionsValue({"dimensions": 0}))
        for bad in (-1, 1.5, "8", True):
            e = self.assertRaises(BadRequest, dimensionsValue, {"dimensions": bad})
            self.assertEqual(str(e), "dimensions must be a positive integer")

    def test_legacyPrompt(self) -> None:
        """
        C{/api/embeddings} takes one C{prompt} string.
        """
        self.assertEqual(legacyPrompt({"prompt": "p"}), "p")
        self.assertEqual(legacyPrompt({}), "")
        e = self.assertRaises(BadRequest, legacyPrompt, {"prompt": ["p"]})
        self.assertEqual(str(e), "prompt must be a string")

    def test_backendBody(self) -> None:
        """
        Float vectors asked for explicitly; C{dimensions} only when set.
        """
        self.assertEqual(embedRequestToOpenAI("b", ["x"], None),
                         {"model": "b", "input": ["x"], "encoding_format": "float"})
        self.assertEqual(embedRequestToOpenAI("b", ["x"], 8)["dimensions"], 8)


class ReplyTests(SynchronousTestCase):
    """
    The backend's vectors, checked, and Ollama's answers.
    """

    def test_order(self) -> None:
        """
        Vectors come back in input order by their C{index}, whatever order
        the backend listed them in; the token count is read.
        """
        vectors, tokens = vectorsFromOpenAI({
            "data": [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [2.5, 3]}],
            "usage": {"prompt_tokens": 6},
        }, 2)
        self.assertEqual((vectors, tokens), ([[2.5, 3.0], [0.0, 1.0]], 6))
        self.assertEqual(vectorsFromOpenAI({"data": [{"embedding": [1]}]}, 1), ([[1.0]], 0))

    def test_malformed(self) -> None:
        """
        Anything but one float vector per input is the backend's fault (a
        502), never a wrong answer.
        """
        for body, message in [
            ([], "without a data list"),
            ({"data": {}}, "without a data list"),
            ({"data": ["x"]}, "not an object"),
            ({"data": [{"embedding": "AAAA"}]}, "base64 embeddings"),
            ({"data": [{"embedding": [1, "x"]}]}, "malformed"),
            ({"data": [{"index": 5, "embedding": [1]}]}, "malformed"),
            ({"data": [{"index": True, "embedding": [1]}, {"embedding": [1]}]},
             "1 embeddings for 2 inputs"),
            ({"data": [{"embedding": [1]}]}, "1 embeddings for 2 inputs"),
        ]:
            e = self.assertRaises(UpstreamError, vectorsFromOpenAI, body, 2 if "2 inputs" in message else 1)
            self.assertIn(message, str(e))

    def test_answer(self) -> None:
        """
        C{/api/embed}: unit vectors, cut to C{dimensions} first, with the
        counts Ollama's clients need; an empty input is only a load.
        """
        answer = embedResponse("m", [[3.0, 4.0, 12.0]], 5, 2, 100, 350)
        self.assertEqual(answer, {"model": "m", "embeddings": [[0.6, 0.8]], "total_duration": 250,
                                  "load_duration": 0, "prompt_eval_count": 5})
        self.assertEqual(embedResponse("m", [], 0, None, 5, 5)["total_duration"], 1)
        self.assertEqual(emptyEmbedResponse("m"), {"model": "m", "embeddings": []})

    def test_normalise(self) -> None:
        """
        Unit length, and a zero vector stays as it is.
        """
        self.assertAlmostEqual(math.hypot(*normalise([1.0, 2.0, 2.0])), 1.0)
        self.assertEqual(normalise([0.0, 0.0]), [0.0, 0.0])
