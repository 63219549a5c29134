"""
The body budget shared by every request (C{--body-budget}) and the stepped
decompression that charges it, through the real site (L{makeSite}) in front
of the real resource tree, driven byte by byte on a memory clock.
"""

from __future__ import annotations

import gzip
from typing import Any

import zstandard
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.compression import MAX_WINDOW, STEP, TooLarge
from ollama_proxy.testing.harness import ProxyHarness
from ollama_proxy.web.budget import BodyBudget, Busy, cooperator, inflate
from ollama_proxy.web.site import makeSite
from tests.web.test_site import parseResponse

MESSAGES = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


class ChargeTests(SynchronousTestCase):
    """
    L{BodyBudget} and its per-request charges.
    """

    def test_takeAndRelease(self) -> None:
        """
        Charges add up to the limit and no further; a refused take charges
        nothing; release gives back everything, once.
        """
        budget = BodyBudget(100)
        a, b = budget.charge(), budget.charge()
        self.assertTrue(a.take(60))
        self.assertFalse(b.take(41))
        self.assertTrue(b.take(40))
        self.assertEqual(budget.used, 100)
        a.release()
        a.release()
        self.assertEqual((budget.used, a.held), (40, 0))
        self.assertFalse(a.take(1))
        b.release()
        self.assertEqual(budget.used, 0)


class InflateTests(SynchronousTestCase):
    """
    L{inflate}: stepped, charged, capped as it grows.
    """

    def run_(self, d: Any, clock: MemoryReactorClock) -> int:
        steps = 0
        while not d.called and steps < 10_000:
            clock.advance(0)
            steps += 1
        return steps

    def test_yieldsBetweenSteps(self) -> None:
        """
        A body of several steps returns to the reactor between them and
        charges every decoded byte.
        """
        clock = MemoryReactorClock()
        budget = BodyBudget(1 << 30)
        data = b"x" * (5 * STEP)
        d = defer(inflate(zstandard.ZstdCompressor().compress(data), "zstd", 1 << 30,
                          budget.charge(), cooperator(clock)))
        # Nothing decoded until the reactor runs the cooperator.
        self.assertNoResult(d)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertLessEqual(budget.used, 3 * STEP + MAX_WINDOW)
        self.run_(d, clock)
        self.assertEqual(self.successResultOf(d), data)
        # The output stays charged; the decoder's window is given back.
        self.assertEqual(budget.used, len(data))

    def test_bombStopsAtCap(self) -> None:
        """
        A bomb of either codec stops one step past the cap (413): it is
        never inflated whole, and charges at most the cap plus a step.
        """
        for data, coding in ((zstandard.ZstdCompressor().compress(b"a" * 200_000_000), "zstd"),
                             (gzip.compress(b"a" * 200_000_000, 9), "gzip")):
            clock = MemoryReactorClock()
            budget = BodyBudget(1 << 40)
            d = defer(inflate(data, coding, 3 * STEP, budget.charge(), cooperator(clock)))
            self.assertLess(self.run_(d, clock), 10)
            self.failureResultOf(d, TooLarge)
            self.assertLessEqual(budget.used, 3 * STEP + 10 * STEP)

    def test_budgetSpent(self) -> None:
        """
        A body that decodes past what is left of the budget is a 503.
        """
        clock = MemoryReactorClock()
        budget = BodyBudget(2 * STEP)
        d = defer(inflate(gzip.compress(b"a" * (4 * STEP)), "gzip", 1 << 30,
                          budget.charge(), cooperator(clock)))
        self.run_(d, clock)
        self.assertEqual(self.failureResultOf(d, Busy).value.status, 503)


def defer(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred
    return Deferred.fromCoroutine(coroutine)


class SiteBudgetTests(SynchronousTestCase):
    """
    The budget through the whole proxy: the site charges raw bytes, the
    routes charge decoded ones, and every way a request ends gives them
    back.
    """

    httpParser = "httptools"
    """C{--http-parser}: every test here runs on both."""

    def setUp(self) -> None:
        self.h = ProxyHarness()
        self.clock: MemoryReactorClock = self.h.clock
        self.budget = BodyBudget(16 * STEP)
        self.site = makeSite(self.h.root, self.clock, budget=self.budget,
                             httpParser=self.httpParser)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def post(self, path: str, body: bytes, coding: bytes | None = None,
             length: int | None = None) -> tuple[Any, StringTransport]:
        protocol, transport = self.connect()
        headers = b"Content-Type: application/json\r\n"
        if coding:
            headers += b"Content-Encoding: " + coding + b"\r\n"
        protocol.dataReceived(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n" + headers
            + b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length) + body
        )
        self.pump()
        return protocol, transport

    def pump(self) -> None:
        # The client side is a StringTransport here, written at once; the
        # harness's pump moves the backend's side and the clock's due calls
        # (the body decoder's steps) until quiet.
        self.h.pump()

    def test_heldWhileInFlightReleasedOnSuccess(self) -> None:
        """
        A compressed body is charged raw and decoded while the backend
        works, and given back when the answer is finished.
        """
        raw = codec.dumps({**MESSAGES, "system": "s" * STEP})
        packed = zstandard.ZstdCompressor().compress(raw)
        self.post("/v1/messages", packed, b"zstd")
        [upstream] = self.h.backend.received
        self.assertGreaterEqual(self.budget.used, len(raw))
        upstream.respond(200, {"id": "c", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"},
             "finish_reason": "stop"}]})
        self.pump()
        self.assertEqual(self.budget.used, 0)

    def test_releasedOnError(self) -> None:
        """
        A body answered with an error (corrupt, bomb, bad JSON) gives its
        share back.
        """
        for body, coding, status in [
            (b"nonsense", b"zstd", 400),
            (zstandard.ZstdCompressor().compress(b"a" * 50 * STEP), b"zstd", 503),
            (gzip.compress(b"{not json"), b"gzip", 400),
        ]:
            _, transport = self.post("/v1/messages", body, coding)
            self.assertEqual(parseResponse(transport.value())[0], status, body[:20])
            self.assertEqual(self.budget.used, 0)

    def test_releasedOnHangUp(self) -> None:
        """
        A client that hangs up mid-body, or while its request is at the
        backend, gives its share back.
        """
        protocol, _ = self.post("/v1/messages", b'{"model"', length=STEP)
        self.assertEqual(self.budget.used, len(b'{"model"'))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.budget.used, 0)
        protocol, _ = self.post("/v1/messages", codec.dumps(MESSAGES))
        self.assertEqual(len(self.h.backend.received), 1)
        self.assertGreater(self.budget.used, 0)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.pump()
        self.assertEqual(self.budget.used, 0)

    def test_releasedOnHangUpWhileDecoding(self) -> None:
        """
        A client that hangs up while its body is being decoded stops the
        decoding, and its share stays given back.
        """
        packed = zstandard.ZstdCompressor().compress(b"a" * (10 * STEP))
        protocol, _ = self.connect()
        protocol.dataReceived(
            b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Encoding: zstd\r\n"
            b"Content-Length: %d\r\n\r\n" % len(packed) + packed)
        self.assertGreater(self.budget.used, 0)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.budget.used, 0)
        self.pump()
        self.assertEqual(self.budget.used, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fullIs503(self) -> None:
        """
        While the budget is held, a new body is refused with a JSON 503 and
        C{Retry-After} before it is read; once released, it is served.
        """
        # A client that declares a large body and sends nothing holds
        # nothing; one that sent the budget's worth holds it.
        idle, _ = self.post("/v1/messages", b"", length=16 * STEP)
        self.assertEqual(self.budget.used, 0)
        idle.connectionLost(Failure(ConnectionDone()))
        holder, _ = self.post("/v1/messages", b"x" * 16 * STEP, length=17 * STEP)
        _, transport = self.post("/api/chat", codec.dumps(MESSAGES))
        status, headers, body = parseResponse(transport.value())
        self.assertEqual((status, headers["retry-after"]), (503, "1"))
        self.assertIn("--body-budget", codec.loads(body)["error"])
        self.assertEqual(self.h.backend.received, [])
        holder.connectionLost(Failure(ConnectionDone()))
        self.post("/api/chat", codec.dumps({**MESSAGES, "stream": False}))
        [upstream] = self.h.backend.received
        upstream.respond(200, {"id": "c", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"},
             "finish_reason": "stop"}]})
        self.pump()
        self.assertEqual(self.budget.used, 0)

    def test_decodedOverBudgetIs503InDialect(self) -> None:
        """
        A small compressed body whose decoding does not fit is a 503 with
        C{Retry-After}, in the route's own dialect.
        """
        bomb = zstandard.ZstdCompressor().compress(b" " * 20 * STEP)
        _, transport = self.post("/v1/messages", bomb, b"zstd")
        status, headers, body = parseResponse(transport.value())
        self.assertEqual((status, headers["retry-after"]), (503, "1"))
        # Chunked: the dialect's error object is in it.
        self.assertIn(b'"type":"overloaded_error"', body)
        self.assertEqual(self.budget.used, 0)

    def test_tinyContainersCharged(self) -> None:
        """
        Tiny arrays (C{[[],[],...]}, which parse to about 21 times their
        size) are charged for what they parse to, before they are parsed: a
        body whose parse could never fit the budget is a 413 naming
        C{--body-budget}; one that fits an idle budget but not the rest of
        a held one is a 503 in the route's dialect, while a string body of
        the same size is served; the charge is back afterwards.
        """
        def tiny(count: int) -> bytes:
            return (b'{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}],'
                    b'"x":[' + b",".join([b"[]"] * count) + b"]}")

        never = tiny(STEP // 3)
        self.assertLess(2 * len(never), self.budget.limit)
        for path in ("/v1/messages", "/v1/chat/completions", "/api/chat"):
            _, transport = self.post(path, never)
            status, _, body = parseResponse(transport.value())
            self.assertEqual(status, 413, (path, body[:200]))
            self.assertIn(b"--body-budget", body, path)
            self.assertEqual(self.budget.used, 0)
        now = tiny(60_000)
        holder, _ = self.post("/v1/messages", b"x" * 8 * STEP, length=9 * STEP)
        for path, marker in (("/v1/messages", b'"type":"overloaded_error"'),
                             ("/v1/chat/completions", b'"code":"server_is_overloaded"'),
                             ("/api/chat", b'"error"')):
            _, transport = self.post(path, now)
            status, headers, body = parseResponse(transport.value())
            self.assertEqual((status, headers.get("retry-after")), (503, "1"), (path, body[:200]))
            self.assertIn(marker, body, path)
        self.assertEqual(self.h.backend.received, [])
        text = codec.dumps({**MESSAGES, "stream": False, "x": "y" * len(now)})
        self.post("/api/chat", text)
        [upstream] = self.h.backend.received
        upstream.respond(200, {"id": "c", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"},
             "finish_reason": "stop"}]})
        self.pump()
        holder.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.budget.used, 0)


class SiteBudgetTwistedTests(SiteBudgetTests):
    """
    L{SiteBudgetTests} on twisted.web's parser (C{--http-parser twisted}).
    """

    httpParser = "twisted"
