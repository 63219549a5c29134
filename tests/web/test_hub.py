"""
The translation hub takes a new client dialect as one request parser plus
one event encoder: a toy dialect defined here, and nothing else, streams a
reply through the real relay, the real upstream code and the fake backend.
"""

from __future__ import annotations

from typing import Any, Sequence

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.dialect import DONE, EncodedErrors, Encoder
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.events import Delta, Event, Finish, Reply, ToolCalls
from ollama_proxy.protocol.openai_request import chatBody
from ollama_proxy.protocol.requests import ChatRequest, Message, Sampling
from ollama_proxy.testing.fake_openai import REPLY, FakeOpenAI
from ollama_proxy.testing.harness import Counter, contextFor
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.web.bridge import Exchange, ProxyResource
from ollama_proxy.web.chat import answer


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
                self._ended(event, events)
                out.append(f"end {event.reason} {event.usage.completionTokens}\n")
        return "".join(out).encode("utf-8")

    def _failure(self, message: str) -> bytes:
        return f"oops {message}\n".encode("utf-8")

    def whole(self, reply: Reply, end: int) -> bytes:
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


class ToyResource(ProxyResource):
    """
    The thin resource of the toy dialect: parse, route, build, answer.
    """

    async def handle_POST(self, ex: Exchange) -> JSON | None:
        request = parseToy(ex.json())
        route = await self.route(ex, request.model)
        response = await route.backend.postChat(
            chatBody(request, route.modelId, route.backend.flavor)
        )
        return await answer(self.ctx, ex, route.backend, response, ToyDialect(), request.stream)

    errors = ToyDialect.errors


class HubTests(SynchronousTestCase):
    """
    A dialect the hub has never seen, end to end.
    """

    def setUp(self) -> None:
        clock = MemoryReactorClock()
        self.fake = FakeOpenAI()
        backend = Backend(StubTreq(self.fake), "http://backend.test:4000", clock)
        ctx = contextFor(backend, clock, now=Counter())
        root = Resource()
        root.putChild(b"toy", ToyResource(ctx))
        self.client: Any = StubTreq(root)
        self.clock = clock

    def post(self, body: Any) -> tuple[int, bytes, bytes]:
        d = self.client.post("http://proxy.test/toy", data=codec.dumps(body))
        for _ in range(10):
            self.client.flush()
            self.clock.advance(0)
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
        upstreamStub: Any = StubTreq(scripted)
        backend = Backend(upstreamStub, "http://backend.test:4000", self.clock)
        root = Resource()
        root.putChild(b"toy", ToyResource(contextFor(backend, self.clock, now=Counter())))
        client: Any = StubTreq(root)
        d = client.post("http://proxy.test/toy", data=codec.dumps({"who": "m", "say": "hi", "live": True}))
        client.flush()
        [upstream] = scripted.received
        upstream.startSSE()
        upstream.event({"choices": [{"index": 0, "delta": {"content": "par"}}]})
        upstream.event({"error": {"message": "overloaded"}})
        upstream.finish()
        for _ in range(10):
            upstreamStub.flush()
            client.flush()
            self.clock.advance(0)
        response = self.successResultOf(d)
        content = self.successResultOf(client.content(response))
        self.assertEqual(content, b"say par\noops overloaded\n")
