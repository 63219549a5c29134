"""
The proxy in front of two scripted backends: requests go to the backend
that offers the model, with its key, id and overrides; C{/api/tags} merges
the lists from the cache and survives a backend that is down; C{/metrics}
reports the requests, tokens, latencies and errors that were made; the log
line carries the route, backend and tokens.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.service.config import BackendConfig, ModelOverride
from ollama_proxy.testing.harness import BodyCollector, MultiBackendHarness, delta

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def configs() -> list[BackendConfig]:
    """
    Backend C{a} with an alias and an override; C{b} with a key and a
    static model.
    """
    return [
        BackendConfig(
            name="a", url="http://a.test:4000", apiKey="sk-a",
            aliases={"fast": "small"},
            overrides={
                "small": ModelOverride(contextLength=4096, options={"temperature": 0.1},
                                       extra={"user": "proxy-a"}),
                "big": ModelOverride(contextLength=131072, capabilities=("completion", "vision")),
            },
        ),
        BackendConfig(name="b", url="http://b.test:8000/v1", apiKey="sk-b", models=("static",)),
    ]



class Harness(MultiBackendHarness):
    """
    L{MultiBackendHarness} with the test's configuration and a few helpers.
    """

    def __init__(self, case: SynchronousTestCase, **kwargs: Any) -> None:
        super().__init__(configs(), **kwargs)
        self.case = case

    def listModels(self) -> None:
        """
        Answer both backends' pending model listings.
        """
        self.answerModels("a", "big", "small", "shared")
        self.answerModels("b", "shared", "other")

    def answerInfo(self) -> None:
        """
        Answer every backend's pending LiteLLM C{/v1/model/info} with a 404
        (not LiteLLM), as the catalog behind C{/api/tags} and C{/api/show}
        asks once per TTL.
        """
        for fake in self.backends.values():
            for received in fake.received:
                if received.path.endswith("/model/info") and not received.request.finished:
                    received.respond(404, {"error": "not found"})
                    self.pump()

    def json(self, d: Any) -> Any:
        """
        @return: the decoded body of a finished response.
        """
        response = self.case.successResultOf(d)
        return codec.loads(self.case.successResultOf(self.client.content(response)))

    def result(self, d: Any) -> tuple[int, Any]:
        """
        @return: the status and decoded body of a finished response.
        """
        response = self.case.successResultOf(d)
        body = codec.loads(self.case.successResultOf(self.client.content(response)))
        return response.code, body

    def lastChat(self, name: str) -> Any:
        """
        @return: the last C{chat/completions} request backend C{name} got.
        """
        return [r for r in self.backends[name].received if r.path.endswith("chat/completions")][-1]

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """
        @return: every sample of C{GET /metrics}, by name and sorted labels.
        """
        d = self.get("/metrics")
        response = self.case.successResultOf(d)
        self.case.assertEqual(response.code, 200)
        text = self.case.successResultOf(self.client.content(response)).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


class RoutingTests(SynchronousTestCase):
    """
    Requests go where the model is.
    """

    def test_chatGoesToOfferingBackend(self) -> None:
        """
        A chat for a model only C{b} lists is sent to C{b} with C{b}'s key
        and the bare id, after both lists were fetched once.
        """
        h = Harness(self)
        d = h.post("/api/chat", {**CHAT, "model": "other:proxy", "stream": False})
        h.listModels()
        upstream = h.lastChat("b")
        self.assertEqual(upstream.path, "/v1/chat/completions")
        self.assertEqual(upstream.json()["model"], "other")
        self.assertEqual(upstream.headers["authorization"], "Bearer sk-b")
        self.assertEqual([r for r in h.backends["a"].received if "chat" in r.path], [])
        upstream.respond(200, {"choices": [{"message": {"role": "assistant", "content": "ok"},
                                            "finish_reason": "stop"}]})
        h.pump()
        self.assertEqual(h.json(d)["message"]["content"], "ok")

    def test_aliasAndOverride(self) -> None:
        """
        An alias reaches its backend id, with the model's default options
        (the client's win) and extra fields in the upstream body.
        """
        h = Harness(self)
        h.post("/api/chat", {**CHAT, "model": "fast:latest",
                             "options": {"top_p": 0.5}})
        h.listModels()
        sent = h.lastChat("a").json()
        self.assertEqual((sent["model"], sent["temperature"], sent["top_p"], sent["user"]),
                         ("small", 0.1, 0.5, "proxy-a"))
        self.assertEqual(h.lastChat("a").headers["authorization"], "Bearer sk-a")

    def test_sharedGoesToOneMember(self) -> None:
        """
        A model both backends list is one pool: a request goes to exactly
        one of them.
        """
        h = Harness(self)
        h.post("/api/generate", {"model": "shared", "prompt": "x"})
        h.listModels()
        h.pump()
        chats = [name for name, fake in h.backends.items()
                 if any(r.path.endswith("chat/completions") for r in fake.received)]
        self.assertEqual(len(chats), 1)
        self.assertEqual(h.lastChat(chats[0]).json()["model"], "shared")

    def test_unknownModel404(self) -> None:
        """
        A model no backend offers is a 404 from the proxy; no backend is
        asked to chat.
        """
        h = Harness(self)
        d = h.post("/api/chat", {**CHAT, "model": "nope"})
        h.listModels()
        self.assertEqual(h.result(d), (404, {"error": 'model "nope" not found'}))

    def test_passthroughRoutes(self) -> None:
        """
        An OpenAI request is relayed to the backend of its model;
        C{GET /v1/models} with several backends is their merged list, and
        C{GET /v1/models/{id}} goes to the backend of that model.
        """
        h = Harness(self)
        h.post("/v1/chat/completions", {"model": "static", "messages": []})
        h.listModels()
        self.assertEqual(h.lastChat("b").json()["model"], "static")
        d = h.get("/v1/models")
        ids = [m["id"] for m in h.json(d)["data"]]
        self.assertEqual(ids, ["big", "small", "shared", "fast", "other", "static"])
        h.get("/v1/models/other:proxy")
        [retrieve] = [r for r in h.backends["b"].received if r.path.startswith("/v1/models/")]
        self.assertEqual((retrieve.method, retrieve.path), ("GET", "/v1/models/other"))


class MetadataTests(SynchronousTestCase):
    """
    C{/api/show} and C{/api/embed} across backends.
    """

    def show(self, h: Harness, name: str) -> tuple[int, Any]:
        """
        C{POST /api/show}, answering the listings and, for each backend,
        LiteLLM's C{/v1/model/info} with a 404 (not LiteLLM).
        """
        d = h.post("/api/show", {"model": name})
        h.listModels()
        h.answerInfo()
        return h.result(d)

    def test_configuredMetadata(self) -> None:
        """
        A model's C{context_length} and C{capabilities} from the
        configuration file reach C{/api/show}; an alias shows its model's
        metadata under its own name; a model of the second backend gets the
        defaults.
        """
        h = Harness(self)
        status, big = self.show(h, "big:proxy")
        self.assertEqual(status, 200)
        arch = big["model_info"]["general.architecture"]
        self.assertEqual(big["model_info"][f"{arch}.context_length"], 131072)
        self.assertEqual(big["capabilities"], ["completion", "vision"])
        status, fast = self.show(h, "fast")
        self.assertEqual((status, fast["model_info"]["general.basename"]), (200, "fast"))
        self.assertEqual(fast["model_info"][f"{arch}.context_length"], 4096)
        status, other = self.show(h, "other")
        self.assertEqual(other["model_info"][f"{arch}.context_length"], 32768)
        self.assertEqual(other["capabilities"], ["completion", "tools"])
        status, missing = self.show(h, "nope")
        self.assertEqual(status, 404)

    def test_showCached(self) -> None:
        """
        Repeated C{/api/show} calls within the TTL ask no backend again.
        """
        h = Harness(self)
        self.show(h, "big")
        before = sum(len(fake.received) for fake in h.backends.values())
        d = h.post("/api/show", {"model": "other"})
        self.assertEqual(h.result(d)[0], 200)
        self.assertEqual(sum(len(fake.received) for fake in h.backends.values()), before)

    def test_embedRouted(self) -> None:
        """
        C{/api/embed} goes to the backend that offers the model, with its
        id and key, and counts the prompt tokens.
        """
        h = Harness(self)
        d = h.post("/api/embed", {"model": "other:proxy", "input": ["a", "b"]})
        h.listModels()
        [upstream] = [r for r in h.backends["b"].received if r.path.endswith("/embeddings")]
        self.assertEqual((upstream.json()["model"], upstream.json()["input"]), ("other", ["a", "b"]))
        self.assertEqual(upstream.headers["authorization"], "Bearer sk-b")
        upstream.respond(200, {"data": [{"index": 0, "embedding": [1.0, 0.0]},
                                        {"index": 1, "embedding": [0.0, 1.0]}],
                               "usage": {"prompt_tokens": 4, "total_tokens": 4}})
        h.pump()
        status, result = h.result(d)
        self.assertEqual((status, len(result["embeddings"])), (200, 2))
        samples = h.samples()
        self.assertEqual(samples[("ollama_proxy_tokens_total", (("backend", "b"), ("direction", "in"),
                                                                ("model", "other")))], 4.0)


class OneResolverTests(SynchronousTestCase):
    """
    Every route resolves a model name the same way (one
    L{ollama_proxy.protocol.names.NameIndex}).
    """

    def test_taggedIdWithLatest(self) -> None:
        """
        Regression: with two backends, C{qwen3:8b:latest} (a client adding
        C{:latest} to an id that already has a tag) was found by
        C{/api/show} and was a 404 on C{/api/chat}.  Both now resolve it to
        backend C{b}'s C{qwen3:8b}.
        """
        h = MultiBackendHarness()
        show = h.post("/api/show", {"model": "qwen3:8b:latest"})
        h.answerModels("a", "llama")
        h.answerModels("b", "qwen3:8b")
        for fake in h.backends.values():
            for received in fake.received:
                if received.path.endswith("/model/info") and not received.request.finished:
                    received.respond(404, {"error": "not found"})
        h.pump()
        response = self.successResultOf(show)
        self.assertEqual(response.code, 200)
        shown = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertEqual(shown["model_info"]["general.basename"], "qwen3:8b")
        chat = h.post("/api/chat", {**CHAT, "model": "qwen3:8b:latest", "stream": False})
        [upstream] = [r for r in h.backends["b"].received if r.path.endswith("chat/completions")]
        self.assertEqual(upstream.json()["model"], "qwen3:8b")
        upstream.respond(200, {"choices": [{"message": {"role": "assistant", "content": "ok"},
                                            "finish_reason": "stop"}]})
        h.pump()
        response = self.successResultOf(chat)
        self.assertEqual(response.code, 200)
        answer = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertEqual(answer["model"], "qwen3:8b:latest")


class CacheTests(SynchronousTestCase):
    """
    C{/api/tags} from the cached lists.
    """

    def tags(self, h: Harness) -> list[str]:
        d = h.get("/api/tags")
        h.listModels()
        h.answerInfo()
        return [m["name"] for m in h.json(d)["models"]]

    def modelRequests(self, h: Harness, name: str) -> int:
        return len([r for r in h.backends[name].received if r.path.endswith("/models")])

    def test_mergedAndCached(self) -> None:
        """
        The merged list has every backend's models once (aliases and static
        models included); a second call within the TTL asks no backend.
        """
        h = Harness(self)
        names = self.tags(h)
        self.assertEqual(names, ["big:proxy", "small:proxy", "shared:proxy", "fast:proxy",
                                 "other:proxy", "static:proxy"])
        self.assertEqual(self.tags(h), names)
        self.assertEqual((self.modelRequests(h, "a"), self.modelRequests(h, "b")), (1, 1))
        h.clock.advance(61)
        self.tags(h)
        self.assertEqual((self.modelRequests(h, "a"), self.modelRequests(h, "b")), (2, 2))

    def test_backendDownKeepsOthers(self) -> None:
        """
        When C{a} fails after the TTL, its last list is still served next to
        C{b}'s fresh one; when C{a} never answered, C{b}'s list is still
        served alone.
        """
        h = Harness(self)
        self.tags(h)
        h.clock.advance(61)
        d = h.get("/api/tags")
        [pending] = [r for r in h.backends["a"].received if not r.request.finished]
        pending.respond(500, {"error": {"message": "down"}})
        h.answerModels("b", "other", "newer")
        h.answerInfo()
        names = [m["name"] for m in h.json(d)["models"]]
        self.assertEqual(names, ["big:proxy", "small:proxy", "shared:proxy", "fast:proxy",
                                 "other:proxy", "newer:proxy", "static:proxy"])

        fresh = Harness(self)
        d = fresh.get("/api/tags")
        [pending] = fresh.backends["a"].received
        pending.respond(502, b"bad gateway", b"text/plain")
        fresh.answerModels("b", "other")
        fresh.answerInfo()
        names = [m["name"] for m in fresh.json(d)["models"]]
        self.assertEqual(names, ["other:proxy", "static:proxy"])


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


class StartupListingTests(SynchronousTestCase):
    """
    L{ollama_proxy.service.tap.ModelListing}.
    """

    def test_duplicatesAndCountsLogged(self) -> None:
        """
        Starting the service lists every backend: the log says how many
        models each offers and, naming both backends, that a model both
        list is one pool.
        """
        from ollama_proxy.service.tap import ModelListing

        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        h = Harness(self)
        service = ModelListing(h.router)
        service.startService()
        self.addCleanup(service.stopService)
        h.pump()
        h.listModels()
        warnings = [e for e in events if "one pool" in e.get("log_format", "")]
        self.assertEqual([(e["model"], e["first"], e["second"]) for e in warnings],
                         [("shared:proxy", "a", "b")])
        counts = [(e["backend"], e["count"]) for e in events if "count" in e]
        self.assertEqual(counts, [("a", 3), ("b", 3)])


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
