"""
L{ProxyHarness} itself: C{pump} runs until quiet and fails loudly at its
bound, and the harness's views of the connections on both sides.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

from ollama_proxy.testing.harness import (
    BodyCollector,
    Counter,
    MultiBackendHarness,
    ProxyHarness,
    delta,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class PumpTests(SynchronousTestCase):
    """
    L{ProxyHarness.pump}.
    """

    def echoStream(self, h: ProxyHarness, chunks: int | None) -> list[str]:
        """
        Start a streamed chat whose backend writes its next chunk only in
        the reactor turn after the client received the previous one: a
        ping-pong between the clock and both connections that needs a few
        pump rounds per chunk.

        @param chunks: how many chunks; C{None} for no end.
        @return: the contents the client received so far (it grows).
        """
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        upstream.startSSE()
        seen: list[str] = []

        def write() -> None:
            if chunks is not None and len(seen) >= chunks:
                upstream.event(delta(finish_reason="stop"))
                upstream.done()
            else:
                upstream.event(delta(str(len(seen))))

        def received(data: bytes) -> None:
            for line in data.splitlines():
                content = json.loads(line)["message"]["content"]
                if content:
                    seen.append(content)
                    h.clock.callLater(0, write)

        upstream.event(delta("start"))
        h.pump()
        h.client.collect(self.successResultOf(d), received)
        return seen

    def test_untilQuiet(self) -> None:
        """
        The ping-pong runs to its end in one pump, however many rounds it
        takes (more than 20: the old pump's fixed 20 turns would have
        returned mid-stream), and the clock has nothing due after.  A call for later does not run: time does not pass.
        """
        short = ProxyHarness()
        self.echoStream(short, 40)
        self.assertRaises(AssertionError, short.pump, 20)
        h = ProxyHarness()
        later = h.clock.callLater(1, lambda: None)
        seen = self.echoStream(h, 40)
        h.pump()
        self.assertEqual(seen, ["start", *(str(n) for n in range(1, 40))])
        self.assertEqual((h.dueCalls(), h.proxyChannels()), ([], []))
        self.assertTrue(later.active())

    def test_loudAtBound(self) -> None:
        """
        A ping-pong without end never lets the system become quiet: the
        pump fails, naming what is pending, instead of returning as if all
        was delivered.
        """
        h = ProxyHarness()
        seen = self.echoStream(h, None)
        with self.assertRaises(AssertionError) as e:
            h.pump(bound=10)
        self.assertIn("still not quiet after 10 rounds; pending: ", str(e.exception))
        self.assertGreater(len(seen), 1)

    def test_refusesBlindSides(self) -> None:
        """
        A C{StubTreq} put in place of a side cannot say whether anything
        moved, so the pump refuses it rather than guessing.
        """
        h = ProxyHarness()
        h.client = StubTreq(h.root)
        with self.assertRaises(AssertionError) as e:
            h.pump()
        self.assertIn("MemoryTreq", str(e.exception))

    def test_streamEndToEnd(self) -> None:
        """
        One pump after each backend step delivers it to the client: the
        request upstream, the streamed chunks, the end of the stream.
        """
        h = ProxyHarness()
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        self.assertEqual((upstream.method, upstream.path), ("POST", "/v1/chat/completions"))
        upstream.startSSE()
        upstream.event(delta("Hel"))
        h.pump()
        collector = BodyCollector(h, self.successResultOf(d))
        h.pump()
        self.assertEqual([line["message"]["content"] for line in collector.lines()], ["Hel"])
        upstream.event(delta("lo", finish_reason="stop"))
        upstream.done()
        h.pump()
        self.successResultOf(collector.done)
        lines = collector.lines()
        self.assertEqual("".join(line["message"]["content"] for line in lines), "Hello")
        self.assertTrue(lines[-1]["done"])
        self.assertEqual((h.proxyChannels(), h.upstreamTransports()), ([], []))


class ConnectionViewTests(SynchronousTestCase):
    """
    The harness's views of the open connections.
    """

    def test_dropClients(self) -> None:
        """
        While a request waits on the backend there is one client channel
        and one upstream transport; dropping the clients closes both
        (the proxy cancels the upstream request).
        """
        h = ProxyHarness()
        d = h.post("/api/chat", CHAT)
        self.assertEqual((len(h.proxyChannels()), len(h.upstreamTransports())), (1, 1))
        h.dropClients()
        self.assertEqual((h.proxyChannels(), h.upstreamTransports()), ([], []))
        self.failureResultOf(d, ResponseNeverReceived)


class MultiBackendTests(SynchronousTestCase):
    """
    L{MultiBackendHarness} pumps every backend's side.
    """

    def test_answerModels(self) -> None:
        """
        C{/api/tags} asks both backends; once both have answered (their
        model lists, then LiteLLM's C{/v1/model/info}, a 404 here), the
        pump delivers the merged list.
        """
        h = MultiBackendHarness()
        d = h.get("/api/tags")
        h.answerModels("a", "m1")
        self.assertNoResult(d)
        h.answerModels("b", "m2")
        for fake in h.backends.values():
            for received in fake.received:
                if received.path.endswith("/model/info") and not received.request.finished:
                    received.respond(404, {"error": "not found"})
        h.pump()
        response: Any = self.successResultOf(d)
        body = self.successResultOf(h.client.json_content(response))
        self.assertEqual(sorted(m["name"] for m in body["models"]), ["m1:proxy", "m2:proxy"])


class SmallPartsTests(SynchronousTestCase):
    """
    L{Counter} and L{delta}.
    """

    def test_counter(self) -> None:
        """
        Each reading of the fake wall clock is 1 ms after the last.
        """
        now = Counter(start=0)
        self.assertEqual((now(), now()), (1_000_000, 2_000_000))

    def test_delta(self) -> None:
        """
        One choice's delta, with the finish reason beside it.
        """
        chunk = delta("x", role="assistant", finish_reason="stop")
        self.assertEqual(chunk["choices"], [
            {"index": 0, "delta": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
        ])
