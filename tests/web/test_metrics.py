"""
L{ollama_proxy.web.metrics}: C{GET /metrics} after known requests, through
the proxy in front of two scripted backends (L{tests.web.test_routing}'s).
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.testing.harness import BodyCollector, delta
from ollama_proxy.web import metrics as metricsModule
from ollama_proxy.web.metrics import Metrics, processGone, shareAcrossProcesses, singleProcess, totals
from tests.web.test_routing import CHAT, Harness


class MetricsTests(SynchronousTestCase):
    """
    C{GET /metrics} after known requests.
    """

    def test_valuesAfterRequests(self) -> None:
        """
        One streamed chat with usage, one upstream 429 and one unknown
        model leave exact counts: requests by route, model and status,
        tokens in and out, one time-to-first-token and latency observations
        with the seconds the clock moved, the upstream error by kind, and
        no stream still active.
        """
        h = Harness(self)
        d = h.post("/api/chat", {**CHAT, "model": "big"})
        h.listModels()
        upstream = h.lastChat("a")
        h.clock.advance(0.25)
        upstream.startSSE()
        upstream.event(delta("Hel", role="assistant"))
        h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        h.pump()
        self.assertEqual(h.samples()[("ollama_proxy_active_streams", ())], 1.0)
        upstream.event(delta("lo", finish_reason="stop"))
        upstream.event({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}})
        upstream.done()
        h.pump()
        self.successResultOf(reader.done)
        self.assertEqual(reader.lines()[-1]["eval_count"], 7)

        d = h.post("/api/chat", {**CHAT, "model": "other", "stream": False})
        h.lastChat("b").respond(429, {"error": {"message": "slow down"}})
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 429)
        d = h.post("/api/chat", {**CHAT, "model": "nope"})
        self.assertEqual(self.successResultOf(d).code, 404)

        samples = h.samples()
        requests = "ollama_proxy_requests_total"
        self.assertEqual(samples[(requests, (("model", "big"), ("route", "/api/chat"),
                                             ("status", "200")))], 1.0)
        self.assertEqual(samples[(requests, (("model", "other"), ("route", "/api/chat"),
                                             ("status", "429")))], 1.0)
        self.assertEqual(samples[(requests, (("model", "other"), ("route", "/api/chat"),
                                             ("status", "404")))], 1.0)
        tokens = "ollama_proxy_tokens_total"
        self.assertEqual(samples[(tokens, (("backend", "a"), ("direction", "in"),
                                           ("model", "big")))], 11.0)
        self.assertEqual(samples[(tokens, (("backend", "a"), ("direction", "out"),
                                           ("model", "big")))], 7.0)
        ttft = "ollama_proxy_time_to_first_token_seconds"
        self.assertEqual(samples[(ttft + "_count", (("backend", "a"), ("model", "big")))], 1.0)
        self.assertGreater(samples[(ttft + "_sum", (("backend", "a"), ("model", "big")))], 0)
        latency = "ollama_proxy_upstream_latency_seconds"
        # Backend a: its model list (no time passed) and the chat (0.25 s).
        self.assertEqual(samples[(latency + "_count", (("backend", "a"),))], 2.0)
        self.assertEqual(samples[(latency + "_sum", (("backend", "a"),))], 0.25)
        self.assertEqual(samples[(latency + "_bucket", (("backend", "a"), ("le", "0.1")))], 1.0)
        self.assertEqual(samples[(latency + "_bucket", (("backend", "a"), ("le", "0.25")))], 2.0)
        errors = "ollama_proxy_upstream_errors_total"
        self.assertEqual(samples[(errors, (("backend", "b"), ("kind", "http_4xx")))], 1.0)
        self.assertEqual(samples[("ollama_proxy_active_streams", ())], 0.0)

    def test_repeatedAnswersAccumulate(self) -> None:
        """
        Answers with the same route, model and status add to one series
        each (requests, durations, routed requests), a new status gets its
        own, and the routed in-flight gauge is back at zero after each.
        """
        h = Harness(self)
        answer = {"choices": [{"message": {"role": "assistant", "content": "x"},
                               "finish_reason": "stop"}]}
        for i, (status, code) in enumerate([(200, 200), (200, 200), (200, 200), (500, 500)]):
            d = h.post("/api/chat", {**CHAT, "model": "big", "stream": False})
            if i == 0:
                h.listModels()
            h.lastChat("a").respond(status, answer if status == 200 else {"error": "x"})
            h.pump()
            self.assertEqual(self.successResultOf(d).code, code)
            inFlight = h.samples()[("ollama_proxy_routed_in_flight", (("backend", "a"),))]
            self.assertEqual(inFlight, 0.0)
        samples = h.samples()
        labels = (("model", "big"), ("route", "/api/chat"))
        self.assertEqual(samples[("ollama_proxy_requests_total", labels + (("status", "200"),))], 3.0)
        self.assertEqual(samples[("ollama_proxy_requests_total", labels + (("status", "500"),))], 1.0)
        duration = "ollama_proxy_request_duration_seconds_count"
        self.assertEqual(samples[(duration, (("route", "/api/chat"),))], 4.0)
        self.assertEqual(samples[("ollama_proxy_routed_requests_total", (("backend", "a"),))], 4.0)

    def test_midStreamErrorKind(self) -> None:
        """
        A stream that breaks after bytes reached the client counts as a
        C{stream} error of its backend.
        """
        h = Harness(self)
        d = h.post("/api/chat", {**CHAT, "model": "big"})
        h.listModels()
        upstream = h.lastChat("a")
        upstream.startSSE()
        upstream.event(delta("Hel"))
        upstream.request.loseConnection()
        h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        h.pump()
        self.assertIn("error", reader.lines()[-1])
        samples = h.samples()
        self.assertEqual(samples[("ollama_proxy_upstream_errors_total",
                                  (("backend", "a"), ("kind", "stream")))], 1.0)

    def test_openMetricsNegotiated(self) -> None:
        """
        A scraper that asks for OpenMetrics gets it.
        """
        h = Harness(self)
        d = h.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        response = self.successResultOf(d)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0]
                        .startswith(b"application/openmetrics-text"))
        self.assertTrue(self.successResultOf(h.client.content(response)).endswith(b"# EOF\n"))

    def test_clientLeavingIsNoUpstreamError(self) -> None:
        """
        A client that leaves before the backend's response headers cancels
        the upstream request; that is no upstream failure (no
        C{upstream_errors} sample, in particular no C{timeout}), and the
        request counts as 499.
        """
        h = Harness(self)
        d = h.post("/api/chat", {**CHAT, "model": "big"})
        h.listModels()
        upstream = h.lastChat("a")
        h.dropClients()
        self.failureResultOf(d)
        self.assertEqual(len(upstream.lost), 1)
        samples = h.samples()
        errors = {labels for (name, labels) in samples
                  if name == "ollama_proxy_upstream_errors_total"}
        self.assertEqual(errors, set())
        self.assertEqual(samples[("ollama_proxy_requests_total", (
            ("model", "big"), ("route", "/api/chat"), ("status", "499")))], 1.0)

    def test_rootRouteLabelBounded(self) -> None:
        """
        Extra slashes (C{//}, C{///}, ...) reach the root resource again and
        again; they are all counted under the route C{/}, so that clients
        cannot mint C{route} label values (one series set per count of
        slashes).
        """
        h = Harness(self)
        for path in ("/", "//", "///", "/////"):
            self.successResultOf(h.get(path))
        routes = {dict(labels).get("route") for (name, labels) in h.samples()
                  if name == "ollama_proxy_requests_total"}
        self.assertEqual(routes, {"/"})

    def test_registriesAreSeparate(self) -> None:
        """
        Two proxies in one process do not share counters.
        """
        first, second = Harness(self), Harness(self)
        first.get("/api/version")
        key = ("ollama_proxy_requests_total",
               (("model", ""), ("route", "/api/version"), ("status", "200")))
        self.assertEqual(first.samples()[key], 1.0)
        self.assertNotIn(key, second.samples())

    def test_guardedByInboundKey(self) -> None:
        """
        With an inbound key required (C{--require-key}), C{/metrics} needs
        it too: 401 without, 200 with.
        """
        from treq.testing import StubTreq

        from ollama_proxy.web.auth import requireKeys

        h = Harness(self)
        client: Any = StubTreq(requireKeys(h.root, ["sk-inbound"]))
        response = self.successResultOf(client.get("http://proxy.test/metrics"))
        self.assertEqual(response.code, 401)
        response = self.successResultOf(client.get(
            "http://proxy.test/metrics", headers={"Authorization": "Bearer sk-inbound"}))
        self.assertEqual(response.code, 200)
        self.assertIn(b"ollama_proxy_requests_total",
                      self.successResultOf(client.content(response)))

    def test_disabled(self) -> None:
        """
        Without metrics, C{/metrics} is not served by the proxy (it goes to
        the fallback like any unknown path).
        """
        h = Harness(self, metrics=False)
        h.get("/metrics")
        self.assertEqual([r.path for r in h.ollama.received], ["/metrics"])


class SharedFilesTests(SynchronousTestCase):
    """
    With C{--workers}, a scrape (C{/metrics}) or the status page
    (L{totals}) read every worker's value files while the other workers
    create and remove them: a file caught mid-creation or gone mid-read is
    left out of that one reading, never a failure (it was a 500).
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        shareAcrossProcesses(self.directory)
        self.addCleanup(singleProcess)
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.metrics = Metrics(shared=self.directory)
        self.metrics.child(self.metrics.requests, "/api/chat", "m", "200").inc()
        self.metrics.activeStreams.inc()
        self.pid = os.getpid()

    def other(self, kind: str, pid: int = 999999) -> str:
        """
        @return: the path another worker's C{kind} file has.
        """
        return os.path.join(self.directory, f"{kind}_{pid}.db")

    def test_workerCreatingItsFile(self) -> None:
        """
        Another worker's counter file that exists but is still empty (it
        has opened it and not yet sized it, as C{prometheus_client} does
        on a worker's first value) is not read; once written, its values
        are in the sum.
        """
        open(self.other("counter"), "wb").close()
        self.assertEqual((totals(self.metrics).requests, totals(self.metrics).activeStreams),
                         (1.0, 1.0))
        body, _ = self.metrics.render(None)
        self.assertIn(b'ollama_proxy_requests_total{model="m",route="/api/chat",status="200"} 1.0',
                      body)
        shutil.copyfile(os.path.join(self.directory, f"counter_{self.pid}.db"),
                        self.other("counter"))
        self.assertEqual(totals(self.metrics).requests, 2.0)

    def test_workerLeavingMidRead(self) -> None:
        """
        A worker that leaves between the listing of the files and their
        reading (its live gauges removed by L{processGone}) takes its
        gauge out of the sum; its counters stay, and nothing fails.
        """
        for kind in ("counter", "gauge_livesum"):
            shutil.copyfile(os.path.join(self.directory, f"{kind}_{self.pid}.db"),
                            self.other(kind))
        self.assertEqual((totals(self.metrics).requests, totals(self.metrics).activeStreams),
                         (2.0, 2.0))
        listed: list[list[str]] = []
        realGlob = glob.glob

        def listThenLeave(pattern: str) -> list[str]:
            found = sorted(realGlob(pattern))
            if not listed:  # processGone lists the directory too
                listed.append(found)
                processGone(self.directory, 999999)
            return found

        self.patch(metricsModule.glob, "glob", listThenLeave)
        current = totals(self.metrics)
        self.assertIn(self.other("gauge_livesum"), listed[0])
        self.assertFalse(os.path.exists(self.other("gauge_livesum")))
        self.assertEqual((current.requests, current.activeStreams), (2.0, 1.0))
        body, _ = self.metrics.render(None)
        self.assertIn(b"ollama_proxy_active_streams 1.0", body)
