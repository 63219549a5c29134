"""
L{ollama_proxy.web.fleet}: the backend that answered is named in
C{X-Ollama-Proxy-Backend} (its configured name, never its URL, no control
characters); the pools and failover themselves are
C{tests.upstream.test_fleet}'s.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.testing.harness import ProxyHarness
from ollama_proxy.web.fleet import BACKEND_HEADER, backendHeader


class BackendHeaderTests(SynchronousTestCase):
    """
    Naming the backend that answered.
    """

    def test_controlCharacters(self) -> None:
        """
        A name with control characters cannot forge a header line.
        """
        self.assertEqual(backendHeader("a\r\nX-Evil: 1\x7f"), b"a??X-Evil: 1?")
        self.assertEqual(backendHeader("gpu-box"), b"gpu-box")

    def test_oneBackendNamed(self) -> None:
        """
        With one backend (no fleet), a generation's answer names it.
        """
        h = ProxyHarness()
        d = h.post("/api/chat", {"model": "m", "stream": False,
                                 "messages": [{"role": "user", "content": "hi"}]})
        h.backend.received[-1].respond(200, {"choices": [
            {"index": 0, "finish_reason": "stop", "message": {"content": "ok"}}]})
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(BACKEND_HEADER), [b"default"])
