"""
Tests for L{ollama_proxy.protocol.redact}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.redact import REDACTED, Redactor, StreamRedactor


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


class StreamRedactorTests(SynchronousTestCase):
    BODY = b'data: {"a": 1}\n\ndata: {"error": "key sk-abcdef and client-key seen"}\n\ndata: [DONE]\n\n'

    def test_everySplit(self) -> None:
        """
        Whatever the read boundaries, every secret is replaced and nothing
        else changes.
        """
        expected = Redactor(["sk-abcdef", "client-key"]).data(self.BODY)
        self.assertNotIn(b"sk-", expected)
        for i in range(len(self.BODY) + 1):
            for j in range(i, len(self.BODY) + 1, 7):
                redactor = StreamRedactor(["sk-abcdef", "client-key"])
                pieces = [self.BODY[:i], self.BODY[i:j], self.BODY[j:]]
                out = b"".join(redactor.feed(piece) for piece in pieces) + redactor.end()
                self.assertEqual(out, expected, (i, j))

    def test_eventsNotHeld(self) -> None:
        """
        A piece that ends an SSE event is passed on whole; only a tail that
        may start a secret waits, and the end releases it.
        """
        redactor = StreamRedactor(["sk-abcdef"])
        self.assertEqual(redactor.feed(b"data: 1\n\n"), b"data: 1\n\n")
        self.assertEqual(redactor.feed(b"data: sk-ab"), b"data: ")
        self.assertEqual(redactor.end(), b"sk-ab")

    def test_nothingToFind(self) -> None:
        """
        Without any secret there is no stream redactor at all.
        """
        self.assertIsNone(Redactor([None]).stream([None]))
        self.assertIsNotNone(Redactor([None]).stream(["k"]))
