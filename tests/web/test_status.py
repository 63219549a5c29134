"""
Tests for L{ollama_proxy.web.status}:
C{/status.json} for two backends (one down), its counters and rates on the
memory clock, redaction of what came from a backend, the page's strict CSP,
the key gate, and that the page's own polls are not counted.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.service.config import BackendConfig
from ollama_proxy.testing.harness import BodyCollector, MultiBackendHarness, delta
from ollama_proxy.web.auth import requireKeys
from ollama_proxy.web.context import Lifecycle
from ollama_proxy.web.metrics import sampleHistory
from ollama_proxy.web.site import makeSite
from ollama_proxy.web.statuspage import CSP, PAGE, SCRIPT
from tests.web.helpers import body

SECRET = "sk-beta-secret-123"


class Harness(MultiBackendHarness):
    """
    Backends C{alpha} (up, two models) and C{beta} (down: it answers 401
    and echoes its key, as a careless gateway does).
    """

    def __init__(self) -> None:
        super().__init__([
            BackendConfig(name="alpha", url="http://alpha.test:4000"),
            BackendConfig(name="beta", url="http://user:pw@beta.test:8000/v1", apiKey=SECRET),
        ], lifecycle=Lifecycle(started=1_700_000_000_000_000_000, workers=3))

    def listModels(self) -> None:
        self.answerModels("alpha", "small", "big")
        self.failBeta()

    def failBeta(self) -> None:
        """
        Answer beta's pending model-list requests with its 401.
        """
        for received in self.backends["beta"].received:
            if received.path.endswith("/models") and not received.request.finished:
                received.respond(401, {"error": {"message": f"invalid key {SECRET}"}})
        self.pump()


class StatusJSONTests(SynchronousTestCase):
    """
    C{GET /status.json}.
    """

    def setUp(self) -> None:
        self.h = Harness()
        self.h.get("/api/tags")
        self.h.listModels()
        self.h.clock.advance(5)  # /api/tags gives up waiting for the metadata

    def status(self) -> Any:
        response = self.successResultOf(self.h.get("/status.json"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
        return body(self.h, response)

    def test_backends(self) -> None:
        """
        Each backend with its reachability, host (no user or password),
        models, the reason of a failed check, and (two backends: a fleet)
        its circuit.
        """
        self.h.clock.advance(2)
        report = self.status()
        alpha, beta = report["backends"]
        self.assertEqual(
            {k: alpha[k] for k in ("name", "host", "reachable", "state", "models", "circuit",
                                   "checked_seconds_ago", "requests", "errors", "in_flight")},
            {"name": "alpha", "host": "http://alpha.test:4000", "reachable": True, "state": "ok",
             "models": ["small", "big"], "circuit": "closed", "checked_seconds_ago": 7.0,
             "requests": 0, "errors": 0, "in_flight": 0},
        )
        self.assertEqual((beta["name"], beta["host"], beta["reachable"], beta["models"]),
                         ("beta", "http://beta.test:8000", False, []))
        self.assertNotIn(beta["state"], ("ok", ""))
        self.assertNotIn(SECRET, beta["state"])
        self.assertEqual(report["workers"], 3)
        self.assertTrue(report["ready"])
        self.assertFalse(report["draining"])
        self.assertEqual(report["started"], "2023-11-14T22:13:20Z")

    def test_noSecret(self) -> None:
        """
        The backend's key, echoed in its error or carried in a model id,
        never reaches the page, nor does the URL's password.
        """
        self.h.clock.advance(61)
        self.h.get("/api/tags")
        self.h.answerModels("alpha", "small", f"leak-{SECRET}")
        raw = codec.dumps(self.status())
        self.assertNotIn(SECRET.encode(), raw)
        self.assertNotIn(b"pw@", raw)
        self.assertIn(b"leak-", raw)

    def test_countersAndInFlight(self) -> None:
        """
        A stream counts as in flight on its backend and as a live stream
        while it runs; once it ends, as one request; an upstream 500 as an
        error of the backend and of the service.
        """
        d = self.h.post("/api/chat", {"model": "small", "messages": [{"role": "user",
                                                                      "content": "hi"}]})
        self.h.failBeta()  # beta has no list: routing asks it again
        upstream = [r for r in self.h.backends["alpha"].received
                    if r.path.endswith("chat/completions")][-1]
        upstream.startSSE()
        upstream.event(delta("a"))
        self.h.pump()
        collector = BodyCollector(self.h, self.successResultOf(d))
        report = self.status()
        self.assertEqual(report["backends"][0]["in_flight"], 1)
        self.assertEqual(report["totals"]["active_streams"], 1)
        upstream.event(delta("b", finish_reason="stop"))
        upstream.done()
        self.h.pump()
        self.successResultOf(collector.done)
        d = self.h.post("/api/chat", {"model": "small", "stream": False,
                                      "messages": [{"role": "user", "content": "hi"}]})
        self.h.failBeta()
        [r for r in self.h.backends["alpha"].received
         if r.path.endswith("chat/completions")][-1].respond(500, {"error": "boom"})
        self.h.pump()
        self.assertEqual(self.successResultOf(d).code, 500)
        report = self.status()
        alpha = report["backends"][0]
        self.assertEqual((alpha["requests"], alpha["errors"], alpha["in_flight"]), (2, 1, 0))
        self.assertIsNotNone(alpha["latency_ms"])
        self.assertEqual(report["totals"]["active_streams"], 0)
        # /api/tags and two chats (one a 500); not the polls (PollTests).
        self.assertEqual(report["totals"]["errors"], 1)
        self.assertEqual(report["totals"]["requests"], 3)

    def test_rates(self) -> None:
        """
        The history gives requests and errors per minute over each
        sampling interval.
        """
        metrics = self.h.ctx.metrics
        assert metrics is not None
        sampleHistory(metrics, self.h.clock.seconds())
        for _ in range(3):
            self.h.get("/api/version")
        self.h.clock.advance(10)
        sampleHistory(metrics, self.h.clock.seconds())
        self.h.clock.advance(10)
        sampleHistory(metrics, self.h.clock.seconds())
        history = self.status()["history"]
        self.assertEqual(history["requests_per_minute"], [18.0, 0.0])
        self.assertEqual(history["errors_per_minute"], [0.0, 0.0])
        self.assertEqual(history["interval_seconds"], 10.0)

    def test_circuitOpen(self) -> None:
        """
        A backend whose circuit opened after failures is shown down, with
        the circuit's state and the reason in the proxy's words.
        """
        fleet = self.h.router.fleet
        assert fleet is not None
        circuit = fleet.members["alpha"].circuit
        for _ in range(10):  # the default policy opens it after 3
            circuit.failure()
        self.assertEqual(circuit.state, "open")
        alpha = self.status()["backends"][0]
        self.assertEqual((alpha["circuit"], alpha["reachable"]), ("open", False))
        self.assertIn("circuit open", alpha["state"])

    def test_oneBackendNoCircuit(self) -> None:
        """
        With one backend there is no fleet, hence no circuit.
        """
        h = MultiBackendHarness([BackendConfig(name="only", url="http://only.test:4000")],
                                metrics=True)
        h.get("/api/tags")
        h.answerModels("only", "m")
        h.clock.advance(5)
        response = self.successResultOf(h.get("/status.json"))
        [only] = body(h, response)["backends"]
        self.assertEqual((only["circuit"], only["reachable"], only["models"]),
                         (None, True, ["m"]))

    def test_draining(self) -> None:
        """
        From SIGTERM on the page says draining, not ready.
        """
        self.h.ctx.lifecycle.draining = True
        report = self.status()
        self.assertEqual((report["draining"], report["ready"]), (True, False))

    def test_methodNotAllowed(self) -> None:
        """
        Anything but GET/HEAD gets a JSON 405.
        """
        response = self.successResultOf(self.h.post("/status.json", b"{}"))
        self.assertEqual(response.code, 405)
        self.assertEqual(body(self.h, response), {"error": "method POST not allowed"})

    def test_withoutMetrics(self) -> None:
        """
        With C{--no-metrics} there is no status page either: the paths go
        to the fallback like any unknown path.
        """
        h = MultiBackendHarness(metrics=False)
        h.get("/status.json")
        self.assertEqual([r.path for r in h.ollama.received], ["/status.json"])


class PageTests(SynchronousTestCase):
    """
    C{GET /status} and C{GET /status.js}: the static page under a strict
    CSP.
    """

    def setUp(self) -> None:
        self.h = Harness()

    def fetch(self, path: str) -> tuple[Any, bytes]:
        response = self.successResultOf(self.h.get(path))
        self.assertEqual(response.code, 200)
        return response.headers, self.successResultOf(self.h.client.content(response))

    def test_page(self) -> None:
        """
        The HTML is served as built, under its CSP (what both allow:
        L{tests.web.test_statuspage}).
        """
        headers, html = self.fetch("/status")
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        [csp] = headers.getRawHeaders("content-security-policy")
        self.assertEqual(csp.encode(), CSP)
        self.assertEqual(html, PAGE)

    def test_script(self) -> None:
        """
        The script is served as built, as JavaScript (what it does:
        L{tests.web.test_statuspage}).
        """
        headers, js = self.fetch("/status.js")
        self.assertEqual(headers.getRawHeaders("content-type"),
                         ["text/javascript; charset=utf-8"])
        self.assertEqual(js, SCRIPT)


class GateTests(SynchronousTestCase):
    """
    The status paths sit behind the inbound key, like C{/metrics}.
    """

    def test_keyRequired(self) -> None:
        """
        Without the key: 401 for each path; with it: served.
        """
        from treq.testing import StubTreq

        h = Harness()
        client: Any = StubTreq(requireKeys(h.root, ["k1"]))
        for path in ("/status", "/status.json", "/status.js"):
            response = self.successResultOf(client.get("http://proxy.test" + path))
            self.assertEqual(response.code, 401, path)
            self.assertEqual(response.headers.getRawHeaders("www-authenticate"),
                             ['Basic realm="ollama-proxy", charset="UTF-8"'])
            response = self.successResultOf(client.get(
                "http://proxy.test" + path, headers={"Authorization": "Bearer k1"}))
            self.assertEqual(response.code, 200, path)

    def test_browserBasic(self) -> None:
        """
        A browser sends the key as the password of HTTP Basic credentials
        (it asks for them on the challenge above): accepted on the status
        paths only, and only the right key.
        """
        from treq.testing import StubTreq

        h = Harness()
        client: Any = StubTreq(requireKeys(h.root, ["k1"]))

        def basic(credentials: bytes) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}

        for credentials, status in ((b"admin:k1", 200), (b":k1", 200), (b"admin:k2", 401),
                                    (b"k1", 401), (b"k1:", 401)):
            response = self.successResultOf(client.get(
                "http://proxy.test/status.json", headers=basic(credentials)))
            self.assertEqual(response.code, status, credentials)
        response = self.successResultOf(client.get(
            "http://proxy.test/status.json", headers={"Authorization": "Basic !!!"}))
        self.assertEqual(response.code, 401)
        response = self.successResultOf(client.get(
            "http://proxy.test/api/version", headers=basic(b"admin:k1")))
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"),
                         ['Bearer realm="ollama-proxy"'])


class PollTests(SynchronousTestCase):
    """
    Through the real site: the page's polls write no log line and move no
    counter; other requests do.
    """

    def request(self, site: Any, path: bytes) -> bytes:
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.h.pump()
        data: bytes = transport.value()
        return data

    def test_pollsNotCounted(self) -> None:
        """
        Three polls of C{/status.json}, then one C{/api/version}: the
        report counts one request.
        """
        self.h = Harness()
        site = makeSite(self.h.root, self.h.clock, metrics=self.h.ctx.metrics)
        for _ in range(3):
            self.assertIn(b"200 OK", self.request(site, b"/status.json"))
        self.request(site, b"/status")
        self.request(site, b"/api/version")
        answer = self.request(site, b"/status.json")
        report = codec.loads(answer.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(report["totals"]["requests"], 1)
