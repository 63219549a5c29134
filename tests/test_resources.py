"""
The proxy's HTTP surface, driven through C{StubTreq} against a scripted
backend (see L{tests.fakes}).  Each test says which wire behaviour it pins.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import (
    TARGET,
    BodyReader,
    ProxyHarness,
    contextFor,
    delta,
)
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.web.tree import buildRoot

CHAT = {"model": "m:proxy", "messages": [{"role": "user", "content": "hi"}]}


class RefusingClient:
    """
    An HTTP client whose every request fails as if nothing listened.
    """

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        return fail(ConnectionRefusedError("127.0.0.1"))


class StreamingChatTests(SynchronousTestCase):
    """
    C{POST /api/chat} with streaming (the default).
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()

    def startChat(self, body: Any = CHAT) -> tuple[Any, Any]:
        d = self.h.post("/api/chat", body)
        [upstream] = self.h.backend.received
        upstream.startSSE()
        return d, upstream

    def test_upstreamRequest(self) -> None:
        """
        The chat goes to C{<target>/v1/chat/completions} with the suffix
        stripped, streaming on by default, usage requested and the API key
        as a bearer token.
        """
        self.h.post("/api/chat", CHAT)
        [upstream] = self.h.backend.received
        self.assertEqual(upstream.path, "/v1/chat/completions")
        self.assertEqual(upstream.method, "POST")
        self.assertEqual(upstream.headers["authorization"], "Bearer sk-secret")
        self.assertEqual(
            upstream.json(),
            {
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )

    def test_latestStripped(self) -> None:
        """
        C{:latest}, which clients append to untagged names, is stripped too.
        """
        self.h.post("/api/chat", {**CHAT, "model": "gpt-4o:latest"})
        self.assertEqual(self.h.backend.received[0].json()["model"], "gpt-4o")

    def test_eachEventIsOneLineBeforeTheEnd(self) -> None:
        """
        Each content delta reaches the client as one NDJSON line while the
        upstream is still streaming, with the client's model name, a
        timestamp, the assistant role and C{done: false}.
        """
        d, upstream = self.startChat()
        upstream.event(delta("Hel", role="assistant"))
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/x-ndjson"]
        )
        reader = BodyReader(self.h, response)
        self.h.pump()
        [line] = reader.lines()
        self.assertEqual(line["model"], "m:proxy")
        self.assertEqual(line["message"], {"role": "assistant", "content": "Hel"})
        self.assertIs(line["done"], False)
        self.assertRegex(line["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
        self.assertNoResult(reader.done)
        upstream.event(delta("lo"))
        self.h.pump()
        self.assertEqual([l["message"]["content"] for l in reader.lines()], ["Hel", "lo"])
        self.assertNoResult(reader.done)

    def test_finalLine(self) -> None:
        """
        The stream ends with one C{done: true} line carrying the done reason,
        the token counts from the usage chunk (which comes after
        C{finish_reason}) and positive durations.
        """
        d, upstream = self.startChat()
        upstream.event(delta("Hi"))
        upstream.event(delta(finish_reason="length"))
        upstream.event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 1}})
        upstream.done()
        self.h.pump()
        reader = BodyReader(self.h, self.successResultOf(d))
        self.h.pump()
        self.successResultOf(reader.done)
        lines = reader.lines()
        self.assertEqual(len(lines), 2)
        final = lines[-1]
        self.assertIs(final["done"], True)
        self.assertEqual(final["done_reason"], "length")
        self.assertEqual(final["prompt_eval_count"], 7)
        self.assertEqual(final["eval_count"], 1)
        self.assertEqual(final["message"], {"role": "assistant", "content": ""})
        for key in ("total_duration", "prompt_eval_duration", "eval_duration"):
            self.assertGreater(final[key], 0)

    def test_midStreamFailure(self) -> None:
        """
        If the upstream connection breaks after some lines, the client gets
        those lines and then one C{{"error": ...}} line, never C{done: true}.
        """
        d, upstream = self.startChat()
        upstream.event(delta("partial"))
        self.h.pump()
        reader = BodyReader(self.h, self.successResultOf(d))
        upstream.request.channel.transport.loseConnection()
        self.h.pump()
        self.successResultOf(reader.done)
        lines = reader.lines()
        self.assertEqual(lines[0]["message"]["content"], "partial")
        self.assertEqual(list(lines[-1]), ["error"])
        self.assertNotIn(True, [l.get("done") for l in lines])

    def test_truncatedStream(self) -> None:
        """
        An upstream that ends its body cleanly but never said it was done
        (no finish_reason, no [DONE]) is reported as an error line.
        """
        d, upstream = self.startChat()
        upstream.event(delta("partial"))
        upstream.finish()
        self.h.pump()
        reader = BodyReader(self.h, self.successResultOf(d))
        self.h.pump()
        lines = reader.lines()
        self.assertIn("before it was complete", lines[-1]["error"])
        self.assertEqual(len(lines), 2)

    def test_errorEventFirstInStream(self) -> None:
        """
        An OpenAI error object sent as the first SSE event, before the proxy
        wrote anything, becomes a 502 JSON error with the upstream's message
        (Ollama uses a real status whenever no byte was sent yet).
        """
        d, upstream = self.startChat()
        upstream.event({"error": {"message": "rate limited", "type": "x"}})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 502)
        reader = BodyReader(self.h, response)
        self.h.pump()
        self.assertEqual(codec.loads(reader.data), {"error": "rate limited"})

    def test_errorEventLaterInStream(self) -> None:
        """
        An OpenAI error event after some content ends the NDJSON with an
        error line carrying the upstream's message.
        """
        d, upstream = self.startChat()
        upstream.event(delta("a"))
        upstream.event({"error": {"message": "rate limited", "type": "x"}})
        self.h.pump()
        reader = BodyReader(self.h, self.successResultOf(d))
        self.h.pump()
        self.successResultOf(reader.done)
        self.assertEqual(reader.lines()[1:], [{"error": "rate limited"}])
        self.assertEqual(upstream.lost and len(upstream.lost), 1)

    def test_upstreamHTTPErrorBeforeStreaming(self) -> None:
        """
        A non-2xx upstream answer becomes the same status with the
        upstream's message as Ollama's C{error} field.
        """
        d = self.h.post("/api/chat", CHAT)
        self.h.backend.received[0].respond(
            429, {"error": {"message": "slow down", "type": "rate_limit", "code": "429"}}
        )
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 429)
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )
        self.assertEqual(
            codec.loads(self.successResultOf(self.h.client.content(response))),
            {"error": "slow down"},
        )

    def test_thinkingDeltas(self) -> None:
        """
        C{reasoning_content} deltas become C{message.thinking}.
        """
        d, upstream = self.startChat()
        upstream.event(delta(reasoning_content="hmm"))
        upstream.event(delta(finish_reason="stop"))
        upstream.done()
        self.h.pump()
        reader = BodyReader(self.h, self.successResultOf(d))
        self.h.pump()
        self.assertEqual(
            reader.lines()[0]["message"], {"role": "assistant", "content": "", "thinking": "hmm"}
        )

    def test_toolCallFragments(self) -> None:
        """
        Tool-call fragments are accumulated and sent as one chunk with an
        object C{arguments}, before the final line.
        """
        d, upstream = self.startChat()
        upstream.event(delta(tool_calls=[{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a"'}}]))
        upstream.event(delta(tool_calls=[{"index": 0, "function": {"arguments": ': 1}'}}]))
        upstream.event(delta(finish_reason="tool_calls"))
        upstream.done()
        self.h.pump()
        reader = BodyReader(self.h, self.successResultOf(d))
        self.h.pump()
        calls, final = reader.lines()
        self.assertEqual(
            calls["message"]["tool_calls"],
            [{"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}],
        )
        self.assertEqual(final["done_reason"], "stop")


class NonStreamingChatTests(SynchronousTestCase):
    """
    C{POST /api/chat} with C{stream: false}.
    """

    def test_aggregated(self) -> None:
        """
        One JSON object with the whole message and the final fields.
        """
        h = ProxyHarness()
        d = h.post("/api/chat", {**CHAT, "stream": False})
        [upstream] = h.backend.received
        self.assertIs(upstream.json()["stream"], False)
        self.assertNotIn("stream_options", upstream.json())
        upstream.respond(
            200,
            {
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            },
        )
        h.pump()
        response = self.successResultOf(d)
        body = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertEqual(body["message"], {"role": "assistant", "content": "Hello"})
        self.assertEqual(body["model"], "m:proxy")
        self.assertIs(body["done"], True)
        self.assertEqual(body["done_reason"], "stop")
        self.assertEqual((body["prompt_eval_count"], body["eval_count"]), (3, 2))


class BadRequestTests(SynchronousTestCase):
    """
    Malformed input gets a 400 JSON error and never reaches the backend.
    """

    def assertBadRequest(self, body: bytes, message: str) -> None:
        h = ProxyHarness()
        d = h.post("/api/chat", body)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 400)
        payload = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertIn(message, payload["error"])
        self.assertEqual(h.backend.received, [])

    def test_malformedJSON(self) -> None:
        """
        Not JSON at all.
        """
        self.assertBadRequest(b"{nope", "invalid JSON")

    def test_emptyBody(self) -> None:
        """
        No body.
        """
        self.assertBadRequest(b"", "missing request body")

    def test_missingModel(self) -> None:
        """
        Ollama's own message for a missing model.
        """
        self.assertBadRequest(b'{"messages": []}', "model is required")

    def test_messagesNotAList(self) -> None:
        """
        C{messages} of the wrong type.
        """
        self.assertBadRequest(b'{"model": "m", "messages": "hi"}', "messages must be a list")

    def test_streamNotBool(self) -> None:
        """
        C{stream: "yes"}.
        """
        self.assertBadRequest(
            b'{"model": "m", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
            "stream must be a boolean",
        )


class UpstreamDownTests(SynchronousTestCase):
    """
    A backend that refuses connections.
    """

    def test_502(self) -> None:
        """
        Connection refused becomes a 502 JSON error naming the problem.
        """
        from treq.testing import StubTreq
        from twisted.internet.testing import MemoryReactorClock

        clock = MemoryReactorClock()
        ctx = contextFor(Backend(RefusingClient(), TARGET, clock), clock=clock)
        client: Any = StubTreq(buildRoot(ctx))
        d = client.post("http://proxy.test/api/chat", data=codec.dumps(CHAT))
        client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 502)
        body = codec.loads(self.successResultOf(client.content(response)))
        self.assertIn("cannot connect to the backend", body["error"])


class TagsTests(SynchronousTestCase):
    """
    C{GET /api/tags}.
    """

    def test_listShape(self) -> None:
        """
        Backend ids become Ollama list entries; ids without a tag get
        C{:proxy}, tagged ids stay as they are.
        """
        h = ProxyHarness()
        d = h.get("/api/tags")
        [upstream] = h.backend.received
        self.assertEqual((upstream.method, upstream.path), ("GET", "/v1/models"))
        upstream.respond(200, {"data": [{"id": "gpt-4o"}, {"id": "qwen3:8b", "created": 1700000000}]})
        h.pump()
        body = codec.loads(self.successResultOf(h.client.content(self.successResultOf(d))))
        names = [m["name"] for m in body["models"]]
        self.assertEqual(names, ["gpt-4o:proxy", "qwen3:8b"])
        first = body["models"][0]
        self.assertEqual(first["model"], "gpt-4o:proxy")
        self.assertRegex(first["digest"], "^[0-9a-f]{64}$")
        self.assertIsInstance(first["size"], int)
        self.assertRegex(first["modified_at"], r"\.\d{9}Z$")
        self.assertEqual(body["models"][1]["modified_at"], "2023-11-14T22:13:20.000000000Z")
        for key in ("parent_model", "format", "family", "parameter_size", "quantization_level"):
            self.assertIsInstance(first["details"][key], str)
        self.assertEqual(first["details"]["families"], [first["details"]["family"]])


class PassthroughTests(SynchronousTestCase):
    """
    OpenAI routes relayed to the backend as they are.
    """

    def test_streamRelayedAsItArrives(self) -> None:
        """
        C{/v1/chat/completions} bytes reach the client before the upstream
        body ends, with the upstream status and content type, the model
        suffix stripped and the API key added.
        """
        h = ProxyHarness()
        d = h.post("/v1/chat/completions", {"model": "m:proxy", "stream": True, "messages": []})
        [upstream] = h.backend.received
        self.assertEqual(upstream.json()["model"], "m")
        self.assertEqual(upstream.headers["authorization"], "Bearer sk-secret")
        upstream.startSSE()
        upstream.write(b"data: 1\n\n")
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"])
        reader = BodyReader(h, response)
        h.pump()
        self.assertEqual(reader.data, b"data: 1\n\n")
        self.assertNoResult(reader.done)
        upstream.done()
        h.pump()
        self.successResultOf(reader.done)
        self.assertEqual(reader.data, b"data: 1\n\ndata: [DONE]\n\n")

    def test_streamFailureIsAnSSEError(self) -> None:
        """
        A passthrough SSE stream whose backend connection breaks ends with
        an OpenAI-style C{data: {"error": {...}}} event, as Ollama's own
        C{/v1} routes end theirs (OpenAI SDKs raise on it), not with an
        Ollama NDJSON line that SSE parsers skip as noise (the client would
        see a silently truncated answer).  A partial event from the backend
        is terminated first, so the error is an event of its own.
        """
        h = ProxyHarness()
        d = h.post("/v1/chat/completions", {"model": "m", "stream": True, "messages": []})
        [upstream] = h.backend.received
        upstream.startSSE()
        upstream.write(b'data: {"a": 1}\n\ndata: {"trunc')
        h.pump()
        reader = BodyReader(h, self.successResultOf(d))
        upstream.request.channel.transport.abortConnection()  # type: ignore[union-attr]
        h.pump()
        self.successResultOf(reader.done)
        events = reader.data.split(b"\n\n")
        self.assertEqual(events[0], b'data: {"a": 1}')
        self.assertEqual(events[1], b'data: {"trunc')
        self.assertEqual(events[-1], b"")
        self.assertTrue(events[-2].startswith(b"data: "), events)
        error = codec.loads(events[-2][len(b"data: "):])["error"]
        self.assertTrue(error["message"].startswith("connection to the backend failed"), error)
        self.assertEqual(error["type"], "api_error")

    def test_modelsGet(self) -> None:
        """
        C{GET /v1/models} is forwarded with its status and body.
        """
        h = ProxyHarness()
        d = h.get("/v1/models")
        h.backend.received[0].respond(200, {"data": []})
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(self.successResultOf(h.client.content(response)), b'{"data":[]}')

    def test_clientAuthorizationNotForwarded(self) -> None:
        """
        The client's own Authorization header is replaced by the configured
        key, never forwarded next to it.
        """
        h = ProxyHarness()
        h.post("/v1/completions", {"model": "m", "prompt": "x"}, headers={"Authorization": "Bearer client"})
        self.assertEqual(h.backend.received[0].headers["authorization"], "Bearer sk-secret")


class FallbackTests(SynchronousTestCase):
    """
    Unknown paths go to the fallback Ollama.
    """

    def test_forwarded(self) -> None:
        """
        Method, path, query and body reach the fallback; its answer reaches
        the client.
        """
        h = ProxyHarness()
        d = h.post("/api/create?x=1", {"model": "new"})
        [received] = h.ollama.received
        self.assertEqual((received.method, received.path), ("POST", "/api/create"))
        self.assertEqual(received.request.uri, b"/api/create?x=1")
        self.assertEqual(received.json(), {"model": "new"})
        self.assertEqual(h.backend.received, [])
        received.respond(200, b'{"status":"success"}\n', b"application/x-ndjson")
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(self.successResultOf(h.client.content(response)), b'{"status":"success"}\n')

    def test_clientKeysNotForwarded(self) -> None:
        """
        The key a client presents to the proxy (C{Authorization} or its
        equivalent C{X-API-Key}, see L{ollama_proxy.auth.presentedKey}) is
        the proxy's credential and never reaches the fallback Ollama.
        """
        h = ProxyHarness()
        h.post(
            "/api/create",
            {"model": "new"},
            headers={b"Authorization": [b"Bearer client"], b"X-API-Key": [b"client-key"]},
        )
        [received] = h.ollama.received
        self.assertNotIn("authorization", received.headers)
        self.assertNotIn("x-api-key", received.headers)

    def test_disabled(self) -> None:
        """
        Without a fallback, unknown paths get a JSON 404.
        """
        h = ProxyHarness(fallback=False)
        response = self.successResultOf(h.get("/api/nothing"))
        self.assertEqual(response.code, 404)
        body = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertIn("/api/nothing", body["error"])

    def test_root(self) -> None:
        """
        C{GET /} answers like Ollama, without the fallback.
        """
        h = ProxyHarness()
        response = self.successResultOf(h.get("/"))
        self.assertEqual(self.successResultOf(h.client.content(response)), b"Ollama is running")
        self.assertEqual(h.ollama.received, [])
