"""
L{ollama_proxy.web.generation.GenerationResource}, the one resource every
JSON generation dialect is served by: the dialect's errors on paths below
its route, the template as its metrics label, keep-alives only for
encoders that can ping, and the one generation path to the backend.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import NoResource

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.backends import ModelOverride
from ollama_proxy.protocol.dialect import Answer, Generation
from ollama_proxy.protocol.flavors import FLAVORS
from ollama_proxy.protocol.requests import ChatRequest, Message, Sampling
from ollama_proxy.testing.harness import BodyCollector, ProxyHarness, delta
from ollama_proxy.web.generation import GenerationResource, RouteTemplate
from ollama_proxy.web.metrics import Metrics
from ollama_proxy.web.tree import mount
from tests.web.test_hub import ToyDialect


class ToyRoute:
    """
    A dialect whose encoder cannot ping (the toy's line encoder).
    """

    errors = ToyDialect.errors
    native = None

    def model(self, body: JSON, params: Mapping[str, str]) -> object:
        return body.get("model")

    def parse(
        self, body: JSON, params: Mapping[str, str], override: ModelOverride
    ) -> Generation:
        return Generation(ChatRequest(model=str(body["model"]), messages=(Message("user", "hi"),),
                                      stream=True), ToyDialect())


class GenerationResourceTests(SynchronousTestCase):
    """
    The generic resource, through the proxy's real tree.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness(metrics=Metrics())

    def test_subPathIsTheDialectsNotFound(self) -> None:
        """
        A path below C{/v1/messages} that is no child of it is a 404 in
        Anthropic's shape (the resource's dialect), and no backend is asked.
        """
        before = len(self.h.backend.received)
        d = self.h.post("/v1/messages/nothing", {"model": "m"})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 404)
        body = codec.loads(self.successResultOf(response.content()))
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "not_found_error")
        self.assertEqual(len(self.h.backend.received), before)

    def test_labelIsTheTemplate(self) -> None:
        """
        C{/v1/responses} is counted under its template, whatever query the
        client added.
        """
        d = self.h.post("/v1/responses?x=1", {"model": "m", "input": "hi"})
        self.h.backend.received[-1].respond(200, {"choices": [
            {"index": 0, "finish_reason": "stop", "message": {"content": "ok"}}]})
        self.h.pump()
        self.assertEqual(self.successResultOf(d).code, 200)
        metrics = self.h.ctx.metrics
        assert metrics is not None
        routes = {s.labels["route"] for m in metrics.registry.collect()
                  if m.name == "ollama_proxy_requests" for s in m.samples
                  if s.name == "ollama_proxy_requests_total"}
        self.assertEqual(routes, {"/v1/responses"})

    def test_noKeepAliveWithoutPing(self) -> None:
        """
        A dialect whose encoder cannot ping gets no keep-alive: the stream
        is not committed while the backend is silent, so a late failure is
        still an HTTP error in its shape.
        """
        cors: Any = self.h.root
        mount(cors.wrapped, NoResource(), GenerationResource(self.h.ctx, ToyRoute(), "/toy"))
        d = self.h.post("/toy", {"model": "m"})
        self.h.clock.advance(30)
        self.h.pump()
        self.assertNoResult(d)
        upstream = self.h.backend.received[-1]
        upstream.startSSE()
        upstream.event(delta("Hi", finish_reason="stop"))
        upstream.done()
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        collector: Any = BodyCollector(self.h, response)
        self.h.pump()
        self.assertEqual(collector.data.decode().splitlines(), ["say Hi", "end stop None"])


class ParamsRoute:
    """
    A dialect that answers without a backend, with the parameters it got.
    """

    errors = ToyDialect.errors
    native = None

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def model(self, body: JSON, params: Mapping[str, str]) -> object:
        self.seen.append(dict(params))
        return params["model"]

    def parse(
        self, body: JSON, params: Mapping[str, str], override: ModelOverride
    ) -> Generation | Answer:
        if body.get("answer"):
            return Answer({"params": dict(params), "temperature": override.options.get("t")})
        return Generation(ChatRequest(model=params["model"], messages=(Message("user", "hi"),),
                                      stream=False, sampling=Sampling(topK=3)),
                          ToyDialect(), dropped=("body.secretSauce",))


class GenericPathTests(SynchronousTestCase):
    """
    What the generic resource hands a dialect, and what a dialect may
    answer itself.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()
        self.route = ParamsRoute()
        cors: Any = self.h.root
        mount(cors.wrapped, NoResource(), GenerationResource(self.h.ctx, self.route, "/q/{model}"))

    def test_queryParameters(self) -> None:
        """
        The query string's parameters join the template's, which win; a
        dialect's own answer is sent as it is, and no backend is asked.
        """
        d = self.h.post("/q/m?alt=sse&model=evil&model=worse", {"answer": True})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(codec.loads(self.successResultOf(response.content())),
                         {"params": {"model": "m", "alt": "sse"}, "temperature": None})
        self.assertEqual(self.route.seen, [{"model": "m", "alt": "sse"}])
        self.assertEqual([r for r in self.h.backend.received if "chat" in r.path], [])

    def test_droppedNamedInTheDebugLog(self) -> None:
        """
        With C{--debug}, what the dialect's parser dropped and a C{top_k}
        the backend's flavor cannot take are named under the route's
        template; without it, nothing is.
        """
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        for debug in (False, True):
            h = ProxyHarness(debug=debug)
            h.backendClient.flavor = FLAVORS["openai"]  # no top_k
            cors: Any = h.root
            mount(cors.wrapped, NoResource(), GenerationResource(h.ctx, ParamsRoute(), "/q/{model}"))
            d = h.post("/q/m", {})
            h.backend.received[-1].respond(200, {"choices": [
                {"index": 0, "finish_reason": "stop", "message": {"content": "ok"}}]})
            h.pump()
            self.assertEqual(self.successResultOf(d).code, 200)
        lines = [formatEvent(e) for e in events if "cannot take" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        self.assertIn("/q/{model}", lines[0])
        self.assertIn("body.secretSauce", lines[0])
        self.assertIn("top_k (", lines[0])


class RouteTemplateTests(SynchronousTestCase):
    """
    Route templates: the fixed segments to mount at, the rest matched.
    """

    def test_fixed(self) -> None:
        """
        A template without parameters matches exactly its own path.
        """
        template = RouteTemplate("/v1/messages")
        self.assertEqual(template.prefix, ("v1", "messages"))
        self.assertFalse(template.parameters)
        self.assertEqual(template.match([]), {})
        self.assertIsNone(template.match(["x"]))

    def test_parameters(self) -> None:
        """
        Parameters fill one segment each, never empty; a model name with a
        colon keeps it, the method is what follows the last one.
        """
        template = RouteTemplate("/v1beta/models/{model}:{method}")
        self.assertEqual(template.prefix, ("v1beta", "models"))
        self.assertEqual(template.match(["qwen3:8b:streamGenerateContent"]),
                         {"model": "qwen3:8b", "method": "streamGenerateContent"})
        self.assertEqual(template.match(["g:generateContent"]),
                         {"model": "g", "method": "generateContent"})
        for rest in ([], [""], ["nomethod"], [":generateContent"], ["a", "b:c"], ["a/b:c"]):
            self.assertIsNone(template.match(rest), rest)

    def test_literalSuffix(self) -> None:
        """
        Text after a parameter is matched literally.
        """
        template = RouteTemplate("/v1beta/models/{model}:streamGenerateContent")
        self.assertEqual(template.match(["m:streamGenerateContent"]), {"model": "m"})
        self.assertIsNone(template.match(["m:generateContent"]))
        self.assertRaises(ValueError, RouteTemplate, "no/slash")


class NativeSplitKeyTests(SynchronousTestCase):
    """
    A backend that serves the agent APIs natively (its answer relayed
    without the hub) and splits a key the proxy holds over the delta
    events a client joins: the client never reads it.
    """

    KEY = "sk-host/ILE+backend-0123456789abcdef"

    def relayed(self, path: str, payload: dict[str, Any], events: list[tuple[str, Any]]) -> bytes:
        from ollama_proxy.service.config import BackendConfig
        from ollama_proxy.testing.harness import MultiBackendHarness

        h = MultiBackendHarness([BackendConfig(
            name="litellm", url="http://litellm.test:4000", discover=False, apiKey=self.KEY,
            models=("claude",), native=("messages", "responses"))])
        d = h.post(path, {**payload, "model": "claude", "stream": True},
                   headers={b"anthropic-version": [b"2023-06-01"]})
        received = h.backend.received[-1]
        self.assertEqual(received.path, path)
        received.startSSE()
        for name, obj in events:
            received.write(b"event: " + name.encode() + b"\ndata: " + codec.dumps(obj) + b"\n\n")
            h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        received.finish()
        h.pump()
        self.successResultOf(reader.done)
        self.assertNotIn(self.KEY[1:].encode(), reader.data)
        return reader.data

    def test_messages(self) -> None:
        """
        C{/v1/messages}: C{"s"} in one C{text_delta}, the rest in the next.
        """
        deltas = [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": t}})
                  for t in ["s", self.KEY[1:], "!"]]
        out = self.relayed("/v1/messages", {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
                           [*deltas, ("message_stop", {"type": "message_stop"})])
        joined = "".join(codec.loads(e.split(b"data: ", 1)[1])["delta"]["text"]
                         for e in out.split(b"\n\n") if e.startswith(b"event: content_block_delta"))
        self.assertEqual(joined, "<redacted>!")

    def test_responses(self) -> None:
        """
        C{/v1/responses}: a function call's arguments over two deltas.
        """
        kind = "response.function_call_arguments.delta"
        deltas = [(kind, {"type": kind, "item_id": "fc", "output_index": 0, "delta": t,
                          "sequence_number": i}) for i, t in enumerate(['{"k":"s', self.KEY[1:] + '"}'])]
        out = self.relayed("/v1/responses", {"input": "x"},
                           [*deltas, ("response.completed", {"type": "response.completed"})])
        joined = "".join(codec.loads(e.split(b"data: ", 1)[1])["delta"]
                         for e in out.split(b"\n\n") if e.startswith(b"event: " + kind.encode()))
        self.assertEqual(codec.loads(joined), {"k": "<redacted>"})
