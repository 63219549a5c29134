"""
Unknown paths go to the fallback Ollama, or get a JSON 404 without one.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import (
    ProxyHarness,
)


class FallbackTests(SynchronousTestCase):
    """
    Unknown paths go to the fallback Ollama.
    """

    def test_forwarded(self) -> None:
        """
        Method, path, query and body reach the fallback; its answer reaches
        the client.
        """
        h = ProxyHarness()
        d = h.post("/api/create?x=1", {"model": "new"})
        [received] = h.ollama.received
        self.assertEqual((received.method, received.path), ("POST", "/api/create"))
        self.assertEqual(received.request.uri, b"/api/create?x=1")
        self.assertEqual(received.json(), {"model": "new"})
        self.assertEqual(h.backend.received, [])
        received.respond(200, b'{"status":"success"}\n', b"application/x-ndjson")
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(self.successResultOf(h.client.content(response)), b'{"status":"success"}\n')

    def test_clientKeysNotForwarded(self) -> None:
        """
        The key a client presents to the proxy (C{Authorization} or its
        equivalent C{X-API-Key}, see L{ollama_proxy.web.auth.presentedKey}) is
        the proxy's credential and never reaches the fallback Ollama.
        """
        h = ProxyHarness()
        h.post(
            "/api/create",
            {"model": "new"},
            headers={b"Authorization": [b"Bearer client"], b"X-API-Key": [b"client-key"]},
        )
        [received] = h.ollama.received
        self.assertNotIn("authorization", received.headers)
        self.assertNotIn("x-api-key", received.headers)

    def test_disabled(self) -> None:
        """
        Without a fallback, unknown paths get a JSON 404.
        """
        h = ProxyHarness(fallback=False)
        response = self.successResultOf(h.get("/api/nothing"))
        self.assertEqual(response.code, 404)
        body = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertIn("/api/nothing", body["error"])

    def test_root(self) -> None:
        """
        C{GET /} answers like Ollama, without the fallback.
        """
        h = ProxyHarness()
        response = self.successResultOf(h.get("/"))
        self.assertEqual(self.successResultOf(h.client.content(response)), b"Ollama is running")
        self.assertEqual(h.ollama.received, [])
