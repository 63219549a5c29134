"""
The translation hub takes a new client dialect as one object (where the
model is named, a parser, an encoder per stream, an error shape): two toy
dialects defined here, mounted the way L{ollama_proxy.web.tree} mounts the
real ones and nothing else, stream replies through the real generation
path, relay, upstream code and fake backend.  The second is shaped like
Google's C{generateContent}: model and method in one path segment.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import NoResource, Resource

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.dialect import DONE, EncodedErrors, Encoder, EncoderMisuse, Generation
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.events import Delta, Event, Finish, Reply, ToolCalls
from ollama_proxy.protocol.requests import ChatRequest, Message, Sampling
from ollama_proxy.testing.fake_openai import REPLY, FakeOpenAI
from ollama_proxy.service.config import BackendConfig, ModelOverride
from ollama_proxy.testing.harness import Counter, ProxyHarness, contextFor, delta, pumpUntilQuiet
from ollama_proxy.testing.memory import MemoryTreq
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.upstream.cache import TTLCache
from ollama_proxy.upstream.directory import ModelDirectory
from ollama_proxy.upstream.routing import BackendModels, Router, makeFetcher
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.generation import GenerationResource
from ollama_proxy.web.metrics import Metrics
from ollama_proxy.web.tree import mount
from tests.web.helpers import _content


def parseToy(body: JSON) -> ChatRequest:
    """
    The toy dialect's request parser: C{{"who": model, "say": text,
    "live": bool, "limit": n, "tools": [...]}}.
    """
    who, say = body.get("who"), body.get("say")
    if not isinstance(who, str) or not isinstance(say, str):
        raise BadRequest("who and say must be strings")
    limit = body.get("limit")
    return ChatRequest(
        model=who,
        messages=(Message("user", say),),
        stream=body.get("live") is True,
        sampling=Sampling(maxTokens=limit if isinstance(limit, int) else None),
        tools=tuple(body.get("tools") or ()),
    )


class ToyEncoder(Encoder):
    """
    The toy dialect's event encoder: one text line per event (the
    lifecycle, START -> OPEN -> DONE, is the base's).
    """

    contentType = b"text/x-toy"

    def __init__(self, model: str) -> None:
        self.model = model

    def _encode(self, events: Sequence[Event]) -> bytes:
        out = []
        for event in events:
            if isinstance(event, Delta):
                out.append(f"say {event.content}\n")
            elif isinstance(event, ToolCalls):
                out.extend(f"call {c.name} {codec.dumps(c.arguments).decode()}\n" for c in event.calls)
            elif isinstance(event, Finish):
                if event is not events[-1]:
                    raise EncoderMisuse(f"{type(self).__name__}: events after the Finish")
                self.state = DONE
                out.append(f"end {event.reason} {event.usage.completionTokens}\n")
        return "".join(out).encode("utf-8")

    def _failure(self, message: str) -> bytes:
        return f"oops {message}\n".encode("utf-8")

    def _wholeReply(self, reply: Reply, end: int) -> bytes:
        self._open()
        self.state = DONE
        return codec.dumpLine(toyReply(reply, self.model))


def toyReply(reply: Reply, model: str) -> JSON:
    """
    The toy dialect's whole answer.
    """
    return {"who": model, "said": reply.content, "why": reply.reason}


class ToyErrors(EncodedErrors):
    """
    The toy dialect's errors: C{no <message>} before the stream, the
    encoder's C{oops} line in it.
    """

    contentType = b"text/x-toy"

    def body(self, status: int, message: str, param: str | None = None) -> bytes:
        return f"no {message}\n".encode("utf-8")


class ToyDialect:
    """
    The toy dialect's side of L{ollama_proxy.protocol.dialect.Dialect}.
    """

    errors = ToyErrors()

    def streamEncoder(self, model: str, start: int) -> ToyEncoder:
        return ToyEncoder(model)

    def reply(self, reply: Reply, model: str, start: int, end: int) -> JSON:
        return toyReply(reply, model)


class ToyRoute:
    """
    The toy dialect as its route speaks it: the model in the body.  Mounted
    as a L{GenerationResource}, so that the request takes the one
    generation path (and the model's C{extra} fields) as every dialect's.
    """

    errors = ToyDialect.errors
    native = None

    def model(self, body: JSON, params: Mapping[str, str]) -> object:
        return body.get("who")

    def parse(
        self, body: JSON, params: Mapping[str, str], override: ModelOverride
    ) -> Generation:
        return Generation(parseToy(body), ToyDialect())


def toyRoot(ctx: ProxyContext) -> Resource:
    """
    @return: a tree with the toy dialect mounted at C{/toy}.
    """
    root = Resource()
    mount(root, NoResource(), GenerationResource(ctx, ToyRoute(), "/toy"))
    return root


class HubTests(SynchronousTestCase):
    """
    A dialect the hub has never seen, end to end.
    """

    def setUp(self) -> None:
        clock = MemoryReactorClock()
        self.fake = FakeOpenAI()
        self.upstream = MemoryTreq(self.fake)
        backend = Backend(self.upstream, "http://backend.test:4000", clock)
        ctx = contextFor(backend, clock, now=Counter())
        self.client: Any = MemoryTreq(toyRoot(ctx))
        self.clock = clock

    def post(self, body: Any) -> tuple[int, bytes, bytes]:
        d = self.client.post("http://proxy.test/toy", data=codec.dumps(body))
        pumpUntilQuiet(self.clock, [self.client, self.upstream])
        response = self.successResultOf(d)
        content = self.successResultOf(self.client.content(response))
        [contentType] = response.headers.getRawHeaders(b"content-type", [b""])
        return response.code, contentType, content

    def test_streamed(self) -> None:
        """
        A streamed reply arrives in the toy dialect, one line per delta,
        ending with the backend's finish reason and token count; the
        backend received the OpenAI request the builder made.
        """
        status, contentType, content = self.post({"who": "fake-model", "say": "hi", "live": True})
        self.assertEqual((status, contentType), (200, b"text/x-toy"))
        lines = content.decode().splitlines()
        said = [line[len("say "):] for line in lines if line.startswith("say ")]
        self.assertEqual("".join(said), REPLY)
        self.assertEqual(lines[-1], f"end stop {len(said)}")
        sent = self.fake.requests[-1]["body"]
        self.assertEqual(sent["messages"], [{"role": "user", "content": "hi"}])
        self.assertEqual(sent["stream_options"], {"include_usage": True})

    def test_toolCall(self) -> None:
        """
        Tool calls reach the toy dialect complete, with object arguments.
        """
        tool = {"type": "function", "function": {"name": "weather", "parameters": {}}}
        _, _, content = self.post({"who": "fake-tools", "say": "hi", "live": True, "tools": [tool]})
        self.assertEqual(
            content.decode().splitlines(),
            ['call weather {"city":"Paris","unit":"celsius"}', "end tool_calls 3"],
        )

    def test_whole(self) -> None:
        """
        A non-streamed reply is the dialect's own object.
        """
        status, _, content = self.post({"who": "fake-model", "say": "hi", "limit": 2})
        self.assertEqual(status, 200)
        self.assertEqual(codec.loads(content), {"who": "fake-model", "said": "Hello! I", "why": "length"})

    def test_errorsInTheDialect(self) -> None:
        """
        A bad request and a backend's refusal are answered in the dialect's
        own error shape with the right status.
        """
        self.assertEqual(self.post({"who": 1}), (400, b"text/x-toy", b"no who and say must be strings\n"))
        status, _, content = self.post({"who": "nothing-such", "say": "hi"})
        self.assertEqual(status, 404)
        self.assertTrue(content.startswith(b"no The model `nothing-such` does not exist"), content)

    def test_midStreamErrorInTheDialect(self) -> None:
        """
        A backend failing after the stream began ends it with the dialect's
        own error, never a fake success.
        """
        scripted = FakeOpenAI(scripted=True)
        upstreamStub: Any = MemoryTreq(scripted)
        backend = Backend(upstreamStub, "http://backend.test:4000", self.clock)
        client: Any = MemoryTreq(toyRoot(contextFor(backend, self.clock, now=Counter())))
        d = client.post("http://proxy.test/toy", data=codec.dumps({"who": "m", "say": "hi", "live": True}))
        pumpUntilQuiet(self.clock, [client, upstreamStub])
        [upstream] = scripted.received
        upstream.startSSE()
        upstream.event({"choices": [{"index": 0, "delta": {"content": "par"}}]})
        upstream.event({"error": {"message": "overloaded"}})
        upstream.finish()
        pumpUntilQuiet(self.clock, [client, upstreamStub])
        response = self.successResultOf(d)
        content = self.successResultOf(client.content(response))
        self.assertEqual(content, b"say par\noops overloaded\n")


def sseData(obj: JSON) -> bytes:
    """
    One unnamed SSE event, as Google's C{alt=sse} streams are written.
    """
    return b"data: " + codec.dumps(obj) + b"\n\n"


class GeminiishEncoder(Encoder):
    """
    A Gemini-shaped stream: one SSE C{data:} candidate per delta, the
    finish reason and usage on the last, an C{error} object on failure.
    """

    contentType = b"text/event-stream"

    def _encode(self, events: Sequence[Event]) -> bytes:
        out = []
        for event in events:
            if type(event) is Delta:
                out.append(sseData({"candidates": [
                    {"content": {"role": "model", "parts": [{"text": event.content}]}}]}))
            elif type(event) is Finish:
                if event is not events[-1]:
                    raise EncoderMisuse(f"{type(self).__name__}: events after the Finish")
                self.state = DONE
                out.append(sseData({
                    "candidates": [{"content": {"role": "model", "parts": []},
                                    "finishReason": (event.reason or "stop").upper()}],
                    "usageMetadata": {"candidatesTokenCount": event.usage.completionTokens}}))
        return b"".join(out)

    def _failure(self, message: str) -> bytes:
        return sseData({"error": {"code": 500, "message": message}})


class GeminiishErrors(EncodedErrors):
    """
    Google's error object before the stream; the encoder's in it.
    """

    def _object(self, status: int, message: str, param: str | None) -> JSON:
        return {"error": {"code": status, "message": message, "status": "TOY"}}


class GeminiishDialect:
    """
    The reply side of one Gemini-shaped request.
    """

    errors = GeminiishErrors()

    def streamEncoder(self, model: str, start: int) -> GeminiishEncoder:
        return GeminiishEncoder()

    def reply(self, reply: Reply, model: str, start: int, end: int) -> JSON:
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": reply.content}]},
                                "finishReason": (reply.reason or "stop").upper()}],
                "modelVersion": model}


class GeminiishRoute:
    """
    C{/v1beta/models/{model}:{method}}: the model and whether to stream
    come from the URL, the conversation from the body's C{contents}.
    """

    errors = GeminiishDialect.errors
    native = None

    def model(self, body: JSON, params: Mapping[str, str]) -> object:
        return params["model"]

    def parse(
        self, body: JSON, params: Mapping[str, str], override: ModelOverride
    ) -> Generation:
        method = params["method"]
        if method not in ("generateContent", "streamGenerateContent"):
            raise BadRequest(f"unknown method {method}")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest("contents must be a non-empty list")
        messages = []
        for content in contents:
            parts = content.get("parts") if isinstance(content, dict) else None
            if not isinstance(parts, list):
                raise BadRequest("each content needs parts")
            role = "assistant" if content.get("role") == "model" else "user"
            messages.append(Message(role, "".join(str(p.get("text", "")) for p in parts)))
        return Generation(ChatRequest(model=params["model"], messages=tuple(messages),
                                      stream=method == "streamGenerateContent"),
                          GeminiishDialect())


TEMPLATE = "/v1beta/models/{model}:{method}"


class URLModelTests(SynchronousTestCase):
    """
    A dialect with its model in the URL, mounted by L{mount} at its route
    template: per-model C{extra} fields reach the backend (the one
    generation path), metrics are labelled by the template, errors are the
    dialect's own.
    """

    def setUp(self) -> None:
        clock = MemoryReactorClock()
        self.fake = FakeOpenAI()
        self.upstream = MemoryTreq(self.fake)
        backend = Backend(self.upstream, "http://backend.test:4000", clock)
        config = BackendConfig(name="default", url=backend.target, overrides={
            "fake-model": ModelOverride(extra={"user": "operator-set", "seed": 7}),
        })
        cache = TTLCache(makeFetcher(backend, config), clock, 0.0, "default")
        self.metrics = Metrics()
        ctx = ProxyContext(models=ModelDirectory(Router([BackendModels(config, backend, cache)],
                                                        "proxy"), {}),
                           now=Counter(), metrics=self.metrics)
        root = Resource()
        mount(root, NoResource(), GenerationResource(ctx, GeminiishRoute(), TEMPLATE))
        self.client: Any = MemoryTreq(root)
        self.clock = clock

    def post(self, path: str, body: Any) -> tuple[int, bytes]:
        d = self.client.post("http://proxy.test" + path, data=codec.dumps(body))
        pumpUntilQuiet(self.clock, [self.client, self.upstream])
        response = self.successResultOf(d)
        return response.code, self.successResultOf(self.client.content(response))

    def test_streamed(self) -> None:
        """
        C{:streamGenerateContent} streams Gemini-shaped events; the backend
        got the model from the URL, the conversation from the body, and the
        model's configured C{extra} fields.
        """
        status, content = self.post("/v1beta/models/fake-model:streamGenerateContent",
                                    {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        self.assertEqual(status, 200, content)
        datas = [codec.loads(line[len(b"data: "):]) for line in content.split(b"\n\n")
                 if line.startswith(b"data: ")]
        text = "".join(part["text"] for data in datas
                       for part in data["candidates"][0]["content"]["parts"])
        self.assertEqual(text, REPLY)
        self.assertEqual(datas[-1]["candidates"][0]["finishReason"], "STOP")
        sent = self.fake.requests[-1]["body"]
        self.assertEqual(sent["model"], "fake-model")
        self.assertEqual(sent["messages"], [{"role": "user", "content": "hi"}])
        self.assertEqual((sent["user"], sent["seed"], sent["stream"]), ("operator-set", 7, True))

    def test_whole(self) -> None:
        """
        C{:generateContent} is one object, with the C{extra} fields sent.
        """
        status, content = self.post("/v1beta/models/fake-model:generateContent",
                                    {"contents": [{"parts": [{"text": "hi"}]}]})
        self.assertEqual(status, 200)
        self.assertEqual(codec.loads(content)["candidates"][0]["content"]["parts"][0]["text"],
                         REPLY)
        self.assertEqual(self.fake.requests[-1]["body"]["user"], "operator-set")

    def test_labelIsTheTemplate(self) -> None:
        """
        The metrics' route label is the template, whatever model the URL
        names: a client cannot mint label values through the path.
        """
        body = {"contents": [{"parts": [{"text": "hi"}]}]}
        self.post("/v1beta/models/fake-model:generateContent", body)
        self.post("/v1beta/models/made-up-1:generateContent", body)
        self.post("/v1beta/models/made-up-2:generateContent", body)
        routes = [
            (sample.labels["route"], sample.value)
            for metric in self.metrics.registry.collect()
            if metric.name == "ollama_proxy_requests"
            for sample in metric.samples if sample.name == "ollama_proxy_requests_total"
        ]
        self.assertEqual(sum(value for _, value in routes), 3.0)
        self.assertEqual({route for route, _ in routes}, {TEMPLATE})
        text = self.metrics.render(None)[0].decode()
        self.assertNotIn("made-up", text)

    def test_errorsInTheDialect(self) -> None:
        """
        A bad body, an unknown method and an unknown model are the
        dialect's error objects, with the right status.
        """
        status, content = self.post("/v1beta/models/fake-model:generateContent", {"contents": 1})
        self.assertEqual((status, codec.loads(content)), (400, {"error": {
            "code": 400, "message": "contents must be a non-empty list", "status": "TOY"}}))
        status, content = self.post("/v1beta/models/fake-model:countTokens",
                                    {"contents": [{"parts": []}]})
        self.assertEqual((status, codec.loads(content)["error"]["message"]),
                         (400, "unknown method countTokens"))
        status, content = self.post("/v1beta/models/nothing-such:generateContent",
                                    {"contents": [{"parts": []}]})
        self.assertEqual(status, 404)
        self.assertEqual(codec.loads(content)["error"]["code"], 404)

    def test_pathOutsideTheTemplate(self) -> None:
        """
        A path below the mount point that does not fill the template is a
        404 in the dialect's shape, never a request to the backend.
        """
        before = len(self.fake.requests)
        status, content = self.post("/v1beta/models/a/b:generateContent", {"contents": []})
        self.assertEqual(status, 404)
        self.assertEqual(codec.loads(content)["error"]["status"], "TOY")
        status, _ = self.post("/v1beta/models", {"contents": []})
        self.assertEqual(status, 404)
        self.assertEqual(len(self.fake.requests), before)


DUPLICATE_CALL = {"index": 0, "id": "call_0", "type": "function",
                  "function": {"name": "ls", "arguments": '{"path": "."}'}}
"""A backend's tool call reusing an id the conversation already holds."""

HISTORIES: dict[str, Any] = {
    "/api/chat": {"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "function": {"name": "ls", "arguments": {"path": "."}}}]},
        {"role": "tool", "content": "a.txt", "tool_call_id": "call_0"}]},
    "/v1/messages": {"model": "m", "max_tokens": 50, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_0", "name": "ls", "input": {"path": "."}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_0", "content": "a.txt"}]}]},
    "/v1/responses": {"model": "m", "input": [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "call_0", "name": "ls", "arguments": '{"path": "."}'},
        {"type": "function_call_output", "call_id": "call_0", "output": "a.txt"}]},
}
"""The same conversation in each dialect: one call, C{call_0}, answered."""


def returnedIds(path: str, data: bytes) -> set[str]:
    """
    Every tool-call id in a dialect's answer, streamed or whole.
    """
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("call_id", "id") and isinstance(item, str) and item.startswith("call_"):
                    found.add(item)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for line in data.splitlines():
        line = line.removeprefix(b"data: ")
        if line.startswith(b"{"):
            walk(codec.loads(line))
    return found


class UniqueToolIdTests(SynchronousTestCase):
    """
    Every dialect's generation returns tool-call ids unique within the
    conversation: a backend that numbers its calls per request (C{call_0}
    every turn) gets a fresh id in its place, the same in every event.
    """

    def ask(self, path: str, stream: bool) -> set[str]:
        h = ProxyHarness()
        d = h.post(path, {**HISTORIES[path], "stream": stream})
        upstream = h.backend.received[-1]
        if stream:
            upstream.startSSE()
            upstream.event(delta(tool_calls=[DUPLICATE_CALL]))
            upstream.event(delta(finish_reason="tool_calls"))
            upstream.done()
        else:
            upstream.respond(200, {"choices": [{"index": 0, "finish_reason": "tool_calls",
                                                "message": {"role": "assistant", "content": None,
                                                            "tool_calls": [DUPLICATE_CALL]}}]})
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        return returnedIds(path, _content(h, response))

    def test_freshIds(self) -> None:
        """
        On C{/api/chat}, C{/v1/messages} and C{/v1/responses}, streamed and
        whole, the call comes back with one id, not C{call_0}.
        """
        for path in HISTORIES:
            for stream in (True, False):
                ids = self.ask(path, stream)
                self.assertEqual(len(ids), 1, (path, stream, ids))
                self.assertNotIn("call_0", ids, (path, stream))

    def test_uniqueIdsKept(self) -> None:
        """
        An id the conversation does not hold comes back as the backend
        sent it.
        """
        h = ProxyHarness()
        d = h.post("/v1/messages", {**HISTORIES["/v1/messages"], "stream": False})
        h.backend.received[-1].respond(200, {"choices": [{"index": 0, "finish_reason": "tool_calls",
                                                          "message": {"tool_calls": [
                                                              {**DUPLICATE_CALL, "id": "call_9"}]}}]})
        h.pump()
        self.assertEqual(returnedIds("/v1/messages", _content(h, self.successResultOf(d))),
                         {"call_9"})
