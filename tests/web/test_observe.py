"""
L{ollama_proxy.web.observe}: the log line of a request, the kind of
upstream error it is counted as, and the model label the metrics use.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.web import observe
from tests.web.test_routing import CHAT, Harness


class LogLineTests(SynchronousTestCase):
    """
    The per-request log line.
    """

    def test_fields(self) -> None:
        """
        The line of a non-streamed chat names the route, model, backend,
        status and tokens, as text and as event fields.
        """
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        h = Harness(self)
        d = h.post("/api/chat", {**CHAT, "model": "other:proxy", "stream": False})
        h.listModels()
        h.lastChat("b").respond(200, {
            "choices": [{"message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        h.pump()
        self.successResultOf(d)
        [event] = [e for e in events if e.get("route") == "/api/chat"]
        self.assertEqual(
            (event["model"], event["backend"], event["status"], event["tokens_in"],
             event["tokens_out"], event["ttft_ms"]),
            ("other:proxy", "b", 200, 3, 2, None),
        )
        from twisted.logger import formatEvent

        self.assertIn("model=other:proxy status=200 backend=b tokens=3/2", formatEvent(event))


class ErrorKindTests(SynchronousTestCase):
    """
    Upstream failures that never produced a response.
    """

    def proxy(self, client: Any) -> Any:
        """
        @return: a proxy with metrics whose only backend uses C{client}.
        """
        from treq.testing import StubTreq
        from twisted.internet.testing import MemoryReactorClock

        from ollama_proxy.testing.harness import contextFor
        from ollama_proxy.upstream.backend import Backend
        from ollama_proxy.web.metrics import Metrics
        from ollama_proxy.web.tree import buildRoot

        self.clock = MemoryReactorClock()
        self.ctx = contextFor(Backend(client, "http://backend.test", self.clock,
                                                headerTimeout=5),
                                clock=self.clock, metrics=Metrics())
        return StubTreq(buildRoot(self.ctx))

    def errors(self) -> dict[str, float]:
        """
        @return: C{upstream_errors_total} by kind.
        """
        out = {}
        assert self.ctx.metrics is not None
        for family in self.ctx.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "ollama_proxy_upstream_errors_total":
                    out[sample.labels["kind"]] = sample.value
        return out

    def test_connectionRefused(self) -> None:
        """
        A refused connection is a 502 counted as C{connection}.
        """
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError

        class Refusing:
            def request(self, method: str, url: str, **kwargs: Any) -> Any:
                return fail(ConnectionRefusedError("127.0.0.1"))

        client = self.proxy(Refusing())
        d = client.post("http://proxy.test/api/chat", data=codec.dumps({**CHAT, "stream": False}))
        client.flush()
        self.assertEqual(self.successResultOf(d).code, 502)
        self.assertEqual(self.errors(), {"connection": 1.0})

    def test_headerTimeout(self) -> None:
        """
        A backend that never answers is a 504 counted as C{timeout} once the
        header timeout passes.
        """
        from treq.testing import StubTreq

        from ollama_proxy.testing.harness import ScriptedOpenAI

        client = self.proxy(StubTreq(ScriptedOpenAI()))
        d = client.post("http://proxy.test/api/chat", data=codec.dumps({**CHAT, "stream": False}))
        client.flush()
        self.clock.advance(6)
        client.flush()
        self.assertEqual(self.successResultOf(d).code, 504)
        self.assertEqual(self.errors(), {"timeout": 1.0})


class SingleBackendLabelTests(SynchronousTestCase):
    """
    With one backend, requests are sent without waiting for a model list;
    their C{model} label is still the served model's name.
    """

    def test_guessLabelledByLaterListing(self) -> None:
        """
        A name the last (stale) list did not have is sent at once, and
        starts a listing in the background; when that listing names the
        model before the request ends, the request is counted under it.
        A name no list has stays C{other}.
        """
        from ollama_proxy.testing.harness import ProxyHarness
        from ollama_proxy.web.metrics import Metrics

        h = ProxyHarness(ttl=10, metrics=Metrics())

        def models(*ids: str) -> dict[str, Any]:
            return {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}

        h.get("/api/tags")
        h.backend.received[-1].respond(200, models("old"))
        h.pump()
        h.clock.advance(11)
        d = h.post("/api/chat", {**CHAT, "model": "new", "stream": False})
        listing, chat = h.backend.received[-2:]
        self.assertTrue(listing.path.endswith("/models"))
        self.assertEqual(chat.json()["model"], "new")
        listing.respond(200, models("old", "new"))
        h.pump()
        chat.respond(200, {"choices": [{"message": {"role": "assistant", "content": "hi"},
                                        "finish_reason": "stop"}]})
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 200)
        d = h.post("/api/chat", {**CHAT, "model": "bogus", "stream": False})
        h.backend.received[-1].respond(404, {"error": {"message": "no such model"}})
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 404)
        response = self.successResultOf(h.get("/metrics"))
        text = self.successResultOf(h.client.content(response)).decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}
        requests = "ollama_proxy_requests_total"
        self.assertEqual(samples[(requests, (("model", "new"), ("route", "/api/chat"),
                                             ("status", "200")))], 1.0)
        self.assertEqual(samples[(requests, (("model", "other"), ("route", "/api/chat"),
                                             ("status", "404")))], 1.0)


class AccessLoggerTests(SynchronousTestCase):
    """
    The access line's logger (L{observe.log}) emits what C{Logger.emit}
    emits: the same keys and values but the time, to the same observer.
    """

    def test_sameEventAsLogger(self) -> None:
        """
        An info event, and another level (which takes C{Logger.emit}
        itself), are the events a plain C{Logger} makes.
        """
        seen = EventLoggingObserver()
        ours = type(observe.log)("ollama_proxy.web.observe", observer=seen)
        plain = Logger("ollama_proxy.web.observe", observer=seen)
        for logger in (ours, plain):
            logger.info("{line}", line="GET /api/tags", status=200)
            logger.warn("w {x}", x=1)
        mine, mineWarn, theirs, theirsWarn = (seen[i] for i in range(4))
        for a, b in ((mine, theirs), (mineWarn, theirsWarn)):
            self.assertEqual(set(a), set(b))
            for key in a:
                if key not in ("log_time", "log_logger"):
                    self.assertEqual(a[key], b[key], key)
            self.assertIsInstance(a["log_time"], float)
        self.assertIs(mine["log_logger"], ours)
        self.assertIs(mine["log_level"], LogLevel.info)
        self.assertEqual(formatEvent(mine), "GET /api/tags")

    def test_accessIsInfo(self) -> None:
        """
        L{observe.log}'s C{access} emits the event C{info("{line}", ...)}
        emits with the same fields (the access line's way in).
        """
        seen = EventLoggingObserver()
        ours = type(observe.log)("ollama_proxy.web.observe", observer=seen)
        ours.access({"line": "GET /api/tags", "status": 200, "path": "/api/tags"})
        ours.info("{line}", line="GET /api/tags", status=200, path="/api/tags")
        mine, theirs = seen[0], seen[1]
        self.assertEqual(set(mine), set(theirs))
        for key in mine:
            if key != "log_time":
                self.assertEqual(mine[key], theirs[key], key)
        self.assertIs(mine["log_logger"], ours)
        self.assertEqual(formatEvent(mine), "GET /api/tags")

    def test_badLevelRefused(self) -> None:
        """
        An unknown level is refused as C{Logger.emit} refuses it.
        """
        seen = EventLoggingObserver()
        ours = type(observe.log)("x", observer=seen)
        ours.emit("nonsense", "x")  # type: ignore[arg-type]
        self.assertEqual(len(seen), 1)
        event = seen[0]
        self.assertIs(event["log_level"], LogLevel.critical)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
