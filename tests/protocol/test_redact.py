"""
Tests for L{ollama_proxy.protocol.redact}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.redact import REDACTED, Redactor


class RedactorTests(SynchronousTestCase):
    def test_text(self) -> None:
        """
        Every secret is replaced, the longest first, empty ones ignored.
        """
        redactor = Redactor(["sk-abc", "sk-abcdef", None, ""])
        self.assertEqual(
            redactor.text("Bearer sk-abcdef and sk-abc"), f"Bearer {REDACTED} and {REDACTED}"
        )

    def test_extra(self) -> None:
        """
        Per-request secrets (the client's key) are replaced too.
        """
        redactor = Redactor(["k1-secret"])
        self.assertEqual(
            redactor.data(b"k1-secret client-key", ["client-key"]),
            REDACTED.encode() + b" " + REDACTED.encode(),
        )
        self.assertEqual(redactor.text("nothing here", [None]), "nothing here")
