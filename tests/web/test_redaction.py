"""
No secret the proxy holds reaches a client through upstream text, in
every dialect: the backend answers with an error that quotes the request's
C{Authorization} header.  (The real-socket version is in
C{tests/integration/test_realsocket_hardening.py}.)
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.testing.harness import ProxyHarness
from tests.web.helpers import _content

USER = [{"role": "user", "content": "hi"}]

ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/api/chat", {"model": "m", "messages": USER}),
    ("/api/chat", {"model": "m", "messages": USER, "stream": False}),
    ("/api/generate", {"model": "m", "prompt": "hi"}),
    ("/v1/chat/completions", {"model": "m", "messages": USER}),
    ("/v1/messages", {"model": "m", "max_tokens": 8, "messages": USER}),
    ("/v1/messages", {"model": "m", "max_tokens": 8, "messages": USER, "stream": True}),
    ("/v1/responses", {"model": "m", "input": "hi"}),
    ("/v1/responses", {"model": "m", "input": "hi", "stream": True}),
]


class RedactionTests(SynchronousTestCase):
    def answer(self, path: str, payload: dict[str, Any], midStream: bool) -> bytes:
        h = ProxyHarness(secrets=("inbound-key-123456",))
        d = h.post(path, payload, headers={b"Authorization": [b"Bearer client-key-999999"]})
        received = h.backend.received[-1]
        echoed = ("denied; request had Authorization: " + received.headers["authorization"]
                  + " and x-debug inbound-key-123456 client-key-999999")
        if midStream:
            received.startSSE()
            received.event({"choices": [{"index": 0, "delta": {"content": "hi"},
                                          "finish_reason": None}]})
            received.event({"error": {"message": echoed}})
            received.done()
        else:
            received.respond(401, {"error": {"message": echoed, "type": "invalid_request_error"}})
        h.pump()
        return _content(h, self.successResultOf(d))

    def assertClean(self, data: bytes, path: str) -> None:
        self.assertIn(b"<redacted>", data, path)
        for secret in (b"sk-secret", b"inbound-key-123456", b"client-key-999999"):
            self.assertNotIn(secret, data, path)

    def test_errorBeforeStream(self) -> None:
        """
        A non-2xx answer, relayed or turned into the dialect's error.
        """
        for path, payload in ROUTES:
            self.assertClean(self.answer(path, payload, False), path)

    def test_errorMidStream(self) -> None:
        """
        An error event after the stream began: the dialect's stream error,
        or the relayed event of a passthrough stream.
        """
        for path, payload in ROUTES:
            if payload.get("stream") is not False:
                self.assertClean(self.answer(path, {**payload, "stream": True}, True), path)
