"""
Hostile or sloppy client bodies: each gets a 400 JSON error that names what
is wrong, nothing is sent upstream, and what Ollama tolerates (unknown
fields, large strings) is tolerated.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import ProxyHarness

M = [{"role": "user", "content": "hi"}]


class BadInputTests(SynchronousTestCase):
    """
    Table of bad bodies with the word their error message must contain.
    """

    def reject(self, path: str, body: Any, mentions: str) -> None:
        h = ProxyHarness()
        d = h.post(path, body)
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 400, (path, body))
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )
        error = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertEqual(list(error), ["error"])
        self.assertIn(mentions, error["error"], (path, body))
        self.assertEqual(h.backend.received, [])

    def test_malformedJSON(self) -> None:
        """
        Truncated JSON, invalid UTF-8 and absurd nesting are 400s that say
        the JSON is invalid (never a recursion error or a 500).
        """
        for body in (
            b'{"model": "m", "messages": [',
            b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}',
            b"[" * 5000 + b"]" * 5000,
            b"\x00\x01",
        ):
            self.reject("/api/chat", body, "invalid JSON")
            self.reject("/api/generate", body, "invalid JSON")

    def test_notAnObject(self) -> None:
        """
        Valid JSON that is not an object is refused.
        """
        for body in (b"[]", b"42", b'"chat"', b"null"):
            self.reject("/api/chat", body, "object")

    def test_wrongTypes(self) -> None:
        """
        Each mistyped field is named in the error.
        """
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("/api/chat", {"model": "m", "messages": {"role": "user"}}, "messages"),
            ("/api/chat", {"model": "m", "messages": ["hi"]}, "messages[0]"),
            ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": 5}]}, "content"),
            ("/api/chat", {"model": "m", "messages": M, "stream": "yes"}, "stream"),
            ("/api/chat", {"model": "m", "messages": M, "options": [1]}, "options"),
            ("/api/chat", {"model": "m", "messages": M, "options": {"temperature": "hot"}}, "temperature"),
            ("/api/chat", {"model": "m", "messages": M, "tools": "x"}, "tools"),
            ("/api/chat", {"model": "m", "messages": M, "format": "xml"}, "format"),
            ("/api/chat", {"model": "m", "messages": M, "think": "maybe"}, "think"),
            ("/api/chat", {"model": 5, "messages": M}, "model"),
            ("/api/generate", {"model": "m", "prompt": ["x"]}, "prompt"),
            ("/api/generate", {"model": "m", "prompt": "x", "stream": 1}, "stream"),
        ]
        for path, body, mentions in cases:
            self.reject(path, body, mentions)

    def test_missingModel(self) -> None:
        """
        No model: C{model is required} on both native routes.
        """
        self.reject("/api/chat", {"messages": M}, "model is required")
        self.reject("/api/generate", {"prompt": "x"}, "model is required")

    def test_invalidImages(self) -> None:
        """
        Images that are not base64 (in C{generate} or in a chat message)
        are refused before anything is sent upstream.
        """
        self.reject("/api/generate", {"model": "m", "prompt": "x", "images": ["not base64!!"]}, "image")
        self.reject(
            "/api/chat",
            {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["@@@"]}]},
            "image",
        )
        self.reject("/api/generate", {"model": "m", "prompt": "x", "images": [42]}, "image")


class ToleratedInputTests(SynchronousTestCase):
    """
    What Ollama accepts, the proxy accepts.
    """

    def test_unknownFieldsIgnored(self) -> None:
        """
        Unknown top-level and option fields are accepted and not forwarded.
        """
        h = ProxyHarness()
        h.post("/api/chat", {"model": "m", "messages": M, "whatever": {"a": 1}, "options": {"mirostat_zeta": 3}})
        [upstream] = h.backend.received
        sent = upstream.json()
        self.assertNotIn("whatever", sent)
        self.assertNotIn("mirostat_zeta", codec.dumps(sent).decode())

    def test_hugeString(self) -> None:
        """
        A multi-megabyte message under the body cap is forwarded intact.
        """
        h = ProxyHarness()
        content = "x" * (3 * 1024 * 1024)
        h.post("/api/chat", {"model": "m", "messages": [{"role": "user", "content": content}]})
        [upstream] = h.backend.received
        self.assertEqual(upstream.json()["messages"][0]["content"], content)
