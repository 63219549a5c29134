"""
C{/health/live} and C{/health/ready} (L{ollama_proxy.web.health}): what a
load balancer or Kubernetes probes, open without the inbound key.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.service.config import BackendConfig
from ollama_proxy.testing.harness import MultiBackendHarness, ProxyHarness
from ollama_proxy.testing.memory import MemoryTreq
from ollama_proxy.web.auth import requireKeys

MODELS = {"object": "list", "data": [{"id": "m", "object": "model"}]}


def answer(h: ProxyHarness, d: Any) -> tuple[int, Any]:
    """
    @return: the status and decoded JSON body of a response that arrived.
    """
    h.pump()
    response = SynchronousTestCase().successResultOf(d)
    body = h.client.content(response)
    h.pump()
    return response.code, codec.loads(SynchronousTestCase().successResultOf(body))


class HealthTests(SynchronousTestCase):
    """
    Liveness always answers; readiness follows the backends' model lists.
    """

    def test_live(self) -> None:
        """
        C{GET /health/live} is 200 without asking any backend; C{/} still
        says C{Ollama is running}.
        """
        h = ProxyHarness()
        self.assertEqual(answer(h, h.get("/health/live")), (200, {"status": "ok"}))
        self.assertEqual(h.backend.received, [])
        response = self.successResultOf(h.get("/"))
        self.assertEqual(self.successResultOf(h.client.content(response)), b"Ollama is running")

    def test_readyAfterListing(self) -> None:
        """
        Before any backend has answered its model list, readiness is 503
        with the reason, and the probe starts a listing (without waiting
        for it); once the backend answered, 200.
        """
        h = ProxyHarness()
        code, body = answer(h, h.get("/health/ready"))
        self.assertEqual((code, body["status"]), (503, "not ready"))
        self.assertEqual(body["reason"],
                         "no backend answered its model list: default: not listed yet")
        [listing] = h.backend.received
        self.assertTrue(listing.path.endswith("/models"))
        listing.respond(200, MODELS)
        h.pump()
        self.assertEqual(answer(h, h.get("/health/ready")),
                         (200, {"status": "ready", "backends": {"default": "ok"}}))
        self.assertEqual(len(h.backend.received), 1)

    def test_notReadyWithReason(self) -> None:
        """
        A backend whose listing failed makes readiness 503 with what went
        wrong (its status);
        the probe asks again after the TTL, and a good answer makes it
        ready.
        """
        h = ProxyHarness(ttl=10)
        h.get("/health/ready")
        h.backend.received[0].respond(500, {"error": {"message": "database down"}})
        h.pump()
        code, body = answer(h, h.get("/health/ready"))
        self.assertEqual(code, 503)
        self.assertIn("default: ", body["reason"])
        # What went wrong in the proxy's words, never the backend's text.
        self.assertEqual(body["backends"]["default"], "backend answered 500")
        self.assertNotIn("database down", body["reason"])
        # No good list yet: the next probe tries again.
        self.assertEqual(len(h.backend.received), 2)
        h.backend.received[1].respond(200, MODELS)
        h.pump()
        self.assertEqual(answer(h, h.get("/health/ready"))[0], 200)

    def test_oneBackendIsEnough(self) -> None:
        """
        With two backends, one that answers makes the proxy ready; the
        other's error is shown.
        """
        h = MultiBackendHarness([BackendConfig(name="a", url="http://a.test"),
                                 BackendConfig(name="b", url="http://b.test")])
        h.get("/health/ready")
        h.answerModels("a", "m")
        for received in h.backends["b"].received:
            received.respond(502, {"error": {"message": "bad gateway"}})
        h.pump()
        code, body = answer(h, h.get("/health/ready"))
        self.assertEqual((code, body["status"], body["backends"]["a"]), (200, "ready", "ok"))
        self.assertEqual(body["backends"]["b"], "backend answered 502")

    def test_openWithoutKey(self) -> None:
        """
        Behind C{--require-key}, both probes answer without a key while the
        API refuses requests without one.
        """
        h = ProxyHarness()
        h.client = MemoryTreq(requireKeys(h.root, ["secret-key"]))
        self.assertEqual(answer(h, h.get("/health/live"))[0], 200)
        self.assertEqual(answer(h, h.get("/health/ready"))[0], 503)
        self.assertEqual(answer(h, h.get("/api/tags"))[0], 401)
        self.assertEqual(self.successResultOf(h.request("HEAD", "/health/live")).code, 200)
        self.assertEqual(self.successResultOf(h.request("POST", "/health/live")).code, 401)
