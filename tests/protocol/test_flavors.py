"""
Backend flavors: chosen by name or host, and what each sends.
"""

from __future__ import annotations

from typing import Any

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.flavors import (
    flavorFor,
    withoutRejectedExtras,
)
from ollama_proxy.protocol.requests import JSON
from ollama_proxy.service.tap import Options


class FlavorTests(SynchronousTestCase):
    """
    Choosing a flavor, and withdrawing extras a backend refuses.
    """

    def test_flavorFor(self) -> None:
        """
        C{auto} recognises OpenAI, OpenRouter and DeepSeek by host (any
        port, path or subdomain) and treats everything else as generic;
        explicit names are taken as they are.
        """
        cases = [
            ("auto", "https://api.openai.com/v1", "openai"),
            ("auto", "https://openrouter.ai/api/v1", "openrouter"),
            ("auto", "https://eu.openrouter.ai/api", "openrouter"),
            ("auto", "https://api.deepseek.com", "deepseek"),
            ("auto", "http://127.0.0.1:4000", "generic"),
            ("auto", "http://notopenrouter.ai", "generic"),
            ("vllm", "http://127.0.0.1:8000", "vllm"),
            ("openai", "http://127.0.0.1:4000", "openai"),
        ]
        for name, target, expected in cases:
            self.assertEqual(flavorFor(name, target).name, expected, (name, target))
        self.assertRaises(ValueError, flavorFor, "ollama", "http://x")

    def test_option(self) -> None:
        """
        C{--backend-flavor} defaults to C{auto} and rejects unknown names
        with a usage error listing the choices.
        """
        options = Options()
        options.parseOptions(["--target", "http://127.0.0.1:8000"])
        self.assertEqual(options["backend-flavor"], "auto")
        options = Options()
        options.parseOptions(["--target", "http://127.0.0.1:8000", "--backend-flavor", "vllm"])
        self.assertEqual(options["backend-flavor"], "vllm")
        e = self.assertRaises(
            UsageError, Options().parseOptions, ["--target", "http://a", "--backend-flavor", "x"]
        )
        self.assertIn("openrouter", str(e))

    def test_withoutRejectedExtras(self) -> None:
        """
        A 400/422 naming a sampling extra that was sent yields the request
        without any extras; other errors, other statuses, or a request
        without extras yield C{None} (no retry).
        """
        request = {"model": "m", "messages": [], "top_k": 40, "min_p": 0.1, "temperature": 0.5}
        stripped = {"model": "m", "messages": [], "temperature": 0.5}
        cases: list[tuple[JSON, int, str, Any]] = [
            (request, 400, "Unrecognized request argument supplied: top_k", stripped),
            (request, 400, "Unrecognized request argument supplied: MIN_P", stripped),
            (request, 422, "extra_forbidden: ('body', 'min_p')", stripped),
            (request, 400, "model not found", None),
            (request, 500, "top_k broke me", None),
            (request, 404, "top_k", None),
            (stripped, 400, "Unrecognized request argument supplied: top_k", None),
        ]
        for body, status, message, expected in cases:
            self.assertEqual(withoutRejectedExtras(body, status, message), expected, message)
