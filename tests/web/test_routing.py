"""
The proxy in front of two scripted backends: requests go to the backend
that offers the model, with its key, id and overrides; C{/api/tags} merges
the lists from the cache and survives a backend that is down.  (What
C{/metrics} and the log line report of such requests:
C{tests.web.test_metrics}, C{tests.web.test_observe}, with this module's
L{Harness}.)
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.service.config import BackendConfig, ModelOverride
from ollama_proxy.testing.harness import MultiBackendHarness

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
