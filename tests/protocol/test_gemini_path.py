"""
L{ollama_proxy.protocol.gemini_path}: the Gemini API's paths, model and
action from the URL, and the route templates that keep the model out of
metric labels.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.gemini_path import (
    ACTIONS,
    COUNT,
    GENERATE,
    STREAM,
    GeminiCall,
    GeminiTemplate,
    parsePath,
)


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
