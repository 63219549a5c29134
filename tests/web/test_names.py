"""
Model names through the routes: case-insensitive resolution, as in Ollama.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.testing.harness import ProxyHarness


def models(*ids: str) -> dict[str, object]:
    return {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}


class CaseInsensitiveTests(SynchronousTestCase):
    """
    C{PLAIN} reaches the backend as the C{plain} it lists.
    """

    def test_chatBeforeAnyListing(self) -> None:
        """
        A name with capitals that nothing has listed yet makes the proxy list
        the (single) backend once, then send the listed id.
        """
        h = ProxyHarness()
        h.post("/api/chat", {"model": "PLAIN", "stream": False,
                             "messages": [{"role": "user", "content": "hi"}]})
        [listing] = h.backend.received
        self.assertEqual(listing.path, "/v1/models")
        listing.respond(200, models("plain", "other"))
        h.pump()
        chat = h.backend.received[1]
        self.assertEqual(chat.path, "/v1/chat/completions")
        self.assertEqual(chat.json()["model"], "plain")

    def test_lowerCaseNameNotListed(self) -> None:
        """
        A lower-case unknown name costs no listing (sent as it is).
        """
        h = ProxyHarness()
        h.post("/api/chat", {"model": "plain", "stream": False,
                             "messages": [{"role": "user", "content": "hi"}]})
        [chat] = h.backend.received
        self.assertEqual(chat.json()["model"], "plain")
