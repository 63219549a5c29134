"""
The backend client's own decisions: 429 retries before any byte reached
the client.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import (
    ProxyHarness,
    delta,
)
from tests.web.helpers import CHAT


class RetryTests(SynchronousTestCase):
    """
    C{--retry-429}: bounded retries of a rate-limited request before the
    first byte reached the client.
    """

    def rateLimit(self, upstream: Any, retryAfter: bytes | None) -> None:
        upstream.request.setResponseCode(429)
        if retryAfter is not None:
            upstream.request.setHeader(b"Retry-After", retryAfter)
        upstream.request.write(codec.dumps({"error": {"message": "slow down"}}))
        upstream.request.finish()

    def test_retriedAfterDelay(self) -> None:
        """
        A 429 with C{Retry-After: 2} is retried after two seconds, and the
        client sees only the successful stream.
        """
        h = ProxyHarness()
        h.backendClient.retries = 2
        d = h.post("/api/chat", CHAT)
        self.rateLimit(h.backend.received[0], b"2")
        h.pump()
        h.clock.advance(1.9)
        h.pump()
        self.assertEqual(len(h.backend.received), 1)
        h.clock.advance(0.1)
        h.pump()
        self.assertEqual(len(h.backend.received), 2)
        self.assertEqual(h.backend.received[1].body, h.backend.received[0].body)
        second = h.backend.received[1]
        second.startSSE()
        second.event(delta("ok", finish_reason="stop"))
        second.done()
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        body = self.successResultOf(h.client.content(response))
        self.assertEqual(codec.loads(body.splitlines()[0])["message"]["content"], "ok")

    def test_retriesBounded(self) -> None:
        """
        After C{retries} retries the last 429 is passed on with its message.
        """
        h = ProxyHarness()
        h.backendClient.retries = 1
        d = h.post("/api/chat", CHAT)
        self.rateLimit(h.backend.received[0], None)
        h.pump()
        h.clock.advance(1)
        h.pump()
        self.rateLimit(h.backend.received[1], None)
        h.pump()
        self.assertEqual(len(h.backend.received), 2)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 429)
        self.assertEqual(codec.loads(self.successResultOf(h.client.content(response))), {"error": "slow down"})

    def test_longWaitNotHonoured(self) -> None:
        """
        A C{Retry-After} longer than C{maxRetryWait} is not waited for.
        """
        h = ProxyHarness()
        h.backendClient.retries = 3
        d = h.post("/api/chat", CHAT)
        self.rateLimit(h.backend.received[0], b"3600")
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 429)
        self.assertEqual(len(h.backend.received), 1)

    def test_unreadableRetryAfter(self) -> None:
        """
        A C{Retry-After} that is neither seconds nor an HTTP date (here
        empty, which C{stringToDatetime} fails on with C{IndexError} rather
        than C{ValueError}) is not waited for: the 429 is passed on as a
        JSON error, not a 500.
        """
        for value in (b"", b"soon", b"Wed, 21 Oct 2015 07:28 GMT"):
            with self.subTest(value=value):
                h = ProxyHarness()
                h.backendClient.retries = 2
                d = h.post("/api/chat", CHAT)
                self.rateLimit(h.backend.received[0], value)
                h.pump()
                response = self.successResultOf(d)
                self.assertEqual(response.code, 429)
                self.assertEqual(
                    codec.loads(self.successResultOf(h.client.content(response))),
                    {"error": "slow down"},
                )
                self.assertEqual(len(h.backend.received), 1)

    def test_offByDefault(self) -> None:
        """
        Without C{--retry-429} a 429 is passed on at once.
        """
        h = ProxyHarness()
        d = h.post("/api/chat", CHAT)
        self.rateLimit(h.backend.received[0], b"1")
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 429)

    def test_clientLeavesDuringWait(self) -> None:
        """
        A client that disconnects while the proxy waits to retry cancels the
        retry: the backend gets no second request.
        """
        h = ProxyHarness()
        h.backendClient.retries = 2
        d = h.post("/api/chat", CHAT)
        self.rateLimit(h.backend.received[0], b"5")
        h.pump()
        h.dropClients()
        self.failureResultOf(d)
        h.clock.advance(10)
        h.pump()
        self.assertEqual(len(h.backend.received), 1)


class ClientKeyOwnerTests(SynchronousTestCase):
    """
    The forwarded client key is owned by L{ollama_proxy.upstream.backend}:
    set through L{forwardingClientKey}, read through L{currentClientKey},
    per context.
    """

    def test_perContext(self) -> None:
        """
        A key set in one context is not seen in another.
        """
        import contextvars

        from ollama_proxy.upstream.backend import currentClientKey, forwardingClientKey

        def inRequest(key: bytes) -> bytes | None:
            forwardingClientKey(key)
            return currentClientKey()

        self.assertEqual(contextvars.copy_context().run(inRequest, b"k-one"), b"k-one")
        self.assertEqual(contextvars.copy_context().run(currentClientKey), None)
