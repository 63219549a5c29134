"""
Tests for L{ollama_proxy.protocol.management}: Ollama's rules for
management bodies.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.management import checkFields, modelName, validName


class FieldTests(SynchronousTestCase):
    def test_wrongTypes(self) -> None:
        """
        Each typed field of the wrong type is a 400 naming it; C{null} and
        unknown fields pass, as with Go's decoder.
        """
        cases = [
            ("pull", {"model": 1}, "model must be a string"),
            ("pull", {"model": "m", "insecure": "yes"}, "insecure must be a boolean"),
            ("push", {"model": "m", "stream": 0}, "stream must be a boolean"),
            ("delete", {"name": ["m"]}, "name must be a string"),
            ("copy", {"source": {}, "destination": "d"}, "source must be a string"),
            ("create", {"model": "m", "files": {"a": 1}}, "files must be an object of strings"),
            ("create", {"model": "m", "license": [1]}, "license must be a string or a list of strings"),
            ("create", {"model": "m", "parameters": []}, "parameters must be an object"),
            ("create", {"model": "m", "messages": {}}, "messages must be a list"),
        ]
        for route, body, message in cases:
            error = self.assertRaises(BadRequest, checkFields, route, body)
            self.assertEqual(error.message, message, (route, body))
        checkFields("pull", {"model": "m", "insecure": None, "whatever": 3})
        checkFields("create", {"model": "m", "license": ["MIT", "x"], "files": {"a": "sha256:1"}})

    def test_modelName(self) -> None:
        """
        C{model}, else the deprecated C{name}; one is required.
        """
        self.assertEqual(modelName({"name": "old"}), "old")
        self.assertEqual(modelName({"model": "new", "name": "old"}), "new")
        self.assertEqual(self.assertRaises(BadRequest, modelName, {}).message, "model is required")


class NameTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for name in ("llama3", "llama3:8b", "library/llama3:latest", "user/model:q4_K_M",
                     "registry.ollama.ai/library/llama3:8b", "hf.co/bartowski/Qwen3-8B-GGUF:Q4_K_M",
                     "localhost:5000/ns/m", "_private", "m@sha256-abc"):
            self.assertTrue(validName(name), name)

    def test_invalid(self) -> None:
        for name in ("", "-leading", "a b", "a/b/c/d", "ns.dot/m", "m:", "m:bad/tag",
                     "x" * 81, "m@", "m:" + "t" * 81, "é"):
            self.assertFalse(validName(name), name)
