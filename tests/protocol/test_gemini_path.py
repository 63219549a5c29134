"""
L{ollama_proxy.protocol.gemini_path}: the Gemini API's paths, model and
action from the URL, and the route templates that keep the model out of
metric labels.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.gemini_path import ACTIONS, COUNT, GENERATE, STREAM, GeminiCall, parsePath


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

    def test_everyAction(self) -> None:
        """
        Each action of the API is recognised after any model name, and
        nothing else is an action.
        """
        self.assertEqual(ACTIONS, (GENERATE, STREAM, COUNT))
        for action in ACTIONS:
            self.assertEqual(parsePath(["models", f"m:{action}"]), GeminiCall("m", action))
        self.assertEqual(parsePath(["models", "m:embedContent"]), GeminiCall("m:embedContent"))
