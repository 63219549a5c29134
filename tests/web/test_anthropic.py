"""
C{/v1/messages} and C{/v1/messages/count_tokens} through the whole proxy
(the harness: the real resource tree, the scripted fake backend, a memory
clock): what the backend receives, the answers in Anthropic's shapes,
keep-alive pings while the backend is silent, compressed bodies.
"""

from __future__ import annotations

import gzip
from typing import Any

import zstandard
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import BodyCollector, ProxyHarness, delta
from ollama_proxy.web.auth import requireKeys
from tests.protocol.test_anthropic import events
from tests.web.helpers import _content, body

USER = [{"role": "user", "content": "hi"}]
BASE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": USER}
HEADERS = {b"anthropic-version": [b"2023-06-01"], b"anthropic-beta": [b"tools-2024"],
           b"x-api-key": [b"client-key"], b"Content-Type": [b"application/json"]}


def streamSSE(received: Any, *chunks: Any) -> None:
    received.startSSE()
    for chunk in chunks:
        received.event(chunk)
    received.done()


class MessagesTests(SynchronousTestCase):
    """
    C{POST /v1/messages}.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()

    def send(self, payload: Any, path: str = "/v1/messages?beta=true", **kwargs: Any) -> Any:
        kwargs.setdefault("headers", HEADERS)
        return self.h.post(path, payload, **kwargs)

    def test_requestMapping(self) -> None:
        """
        What the backend receives for each Anthropic request: OpenAI chat
        bodies with the routed model id, without Anthropic-only fields, and
        none of the client's Anthropic headers or key.
        """
        cases: list[tuple[Any, Any]] = [
            ({**BASE, "system": "S", "metadata": {"user_id": "u"}},
             {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
              "max_tokens": 64, "stream": False}),
            ({**BASE, "stream": True, "temperature": 0, "stop_sequences": ["X"], "top_k": 5},
             {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, "stream": True,
              "stream_options": {"include_usage": True}, "temperature": 0, "stop": ["X"],
              "top_k": 5}),
            ({**BASE, "thinking": {"type": "disabled"}},
             {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64,
              "stream": False}),
            ({**BASE, "output_config": {"effort": "medium"}, "context_management": {}},
             {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64,
              "stream": False, "reasoning_effort": "medium"}),
            ({**BASE, "messages": [
                *USER,
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_9", "name": "ls", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_9", "content": "a.txt"}]}],
              "tools": [{"name": "ls", "input_schema": {"type": "object"}}],
              "tool_choice": {"type": "any"}},
             {"messages": [
                 {"role": "user", "content": "hi"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "toolu_9", "type": "function",
                      "function": {"name": "ls", "arguments": "{}"}}]},
                 {"role": "tool", "content": "a.txt", "tool_call_id": "toolu_9"}],
              "max_tokens": 64, "stream": False,
              "tools": [{"type": "function", "function": {"name": "ls",
                                                          "parameters": {"type": "object"}}}],
              "tool_choice": "required"}),
        ]
        for payload, expected in cases:
            self.send(payload)
            received = self.h.backend.received[-1]
            self.assertEqual(received.path, "/v1/chat/completions")
            self.assertEqual(received.json(), {"model": "claude-sonnet-4-5", **expected})
            self.assertEqual(received.headers["authorization"], "Bearer sk-secret")
            self.assertFalse([k for k in received.headers if k.startswith("anthropic")
                              or k == "x-api-key"])
            received.respond(200, {"choices": [{"message": {"content": "x"},
                                                "finish_reason": "stop"}]})
            self.h.pump()

    def test_whole(self) -> None:
        """
        A non-streamed answer is the message object, echoing the client's
        model name.
        """
        d = self.send(BASE)
        self.h.backend.received[-1].respond(200, {
            "choices": [{"message": {"content": "Hello", "reasoning_content": "hm"},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        message = body(self.h, response)
        self.assertTrue(message.pop("id").startswith("msg_"))
        self.assertEqual(message, {
            "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "thinking", "thinking": "hm", "signature": ""},
                        {"type": "text", "text": "Hello"}],
            "stop_reason": "max_tokens", "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1}})

    def test_streamed(self) -> None:
        """
        A stream is Anthropic's event sequence, as C{text/event-stream}.
        """
        d = self.send({**BASE, "stream": True})
        streamSSE(self.h.backend.received[-1], delta("Hel"), delta("lo", finish_reason="stop"),
                  {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        out = events(_content(self.h, response))
        self.assertEqual([name for name, _ in out], [
            "message_start", "content_block_start", "content_block_delta", "content_block_delta",
            "content_block_stop", "message_delta", "message_stop"])
        self.assertEqual(out[-2][1]["usage"], {"input_tokens": 3, "output_tokens": 2})

    def test_errorsBeforeTheStream(self) -> None:
        """
        Bad input, a backend's refusal and a wrong method are answered in
        Anthropic's error shape with the matching status and type.
        """
        d = self.send({**BASE, "max_tokens": None, "stream": True})
        response = self.successResultOf(d)
        self.assertEqual((response.code, body(self.h, response)), (400, {
            "type": "error", "error": {"type": "invalid_request_error",
                                       "message": "max_tokens is required and must be positive"}}))
        for status, kind in ((404, "not_found_error"), (429, "rate_limit_error"),
                             (500, "api_error")):
            d = self.send({**BASE, "stream": True})
            self.h.backend.received[-1].respond(status, {"error": {"message": f"no {status}"}})
            self.h.pump()
            response = self.successResultOf(d)
            self.assertEqual(response.code, status)
            self.assertEqual(body(self.h, response)["error"], {"type": kind,
                                                               "message": f"no {status}"})
        response = self.successResultOf(self.h.get("/v1/messages"))
        self.assertEqual(response.code, 405)
        self.assertEqual(body(self.h, response)["type"], "error")

    def test_failureMidStream(self) -> None:
        """
        A backend failing after the stream began ends it with C{event:
        error}, never C{message_stop}.
        """
        d = self.send({**BASE, "stream": True})
        received = self.h.backend.received[-1]
        received.startSSE()
        received.event(delta("par"))
        received.event({"error": {"message": "backend exploded"}})
        received.finish()
        self.h.pump()
        out = events(_content(self.h, self.successResultOf(d)))
        self.assertEqual(out[-1], ("error", {"type": "error", "error": {
            "type": "api_error", "message": "backend exploded"}}))
        self.assertNotIn("message_stop", [name for name, _ in out])

    def test_pingWhileSilent(self) -> None:
        """
        While the backend is silent (no headers yet), the stream is
        committed after ten seconds with C{message_start} and a C{ping},
        and pinged every ten seconds; the reply continues the same message;
        the pings stop with the reply.
        """
        d = self.send({**BASE, "stream": True})
        self.assertNoResult(d)
        self.h.clock.advance(10)
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        collector = BodyCollector(self.h, response)
        self.h.pump()
        self.assertEqual([n for n, _ in events(collector.data)], ["message_start", "ping"])
        self.h.clock.advance(10)
        self.h.pump()
        self.assertEqual([n for n, _ in events(collector.data)],
                         ["message_start", "ping", "ping"])
        streamSSE(self.h.backend.received[-1], delta("Hi", finish_reason="stop"))
        self.h.pump()
        names = [n for n, _ in events(collector.data)]
        self.assertEqual(names, ["message_start", "ping", "ping", "content_block_start",
                                 "content_block_delta", "content_block_stop", "message_delta",
                                 "message_stop"])
        self.assertTrue(collector.done.called)
        self.h.clock.advance(60)
        self.h.pump()
        self.assertEqual(len(events(collector.data)), len(names))

    def test_backendErrorAfterPing(self) -> None:
        """
        A backend refusal after the stream was committed by a ping is an
        C{event: error} in the stream (the status was already sent).
        """
        d = self.send({**BASE, "stream": True})
        self.h.clock.advance(10)
        self.h.pump()
        collector = BodyCollector(self.h, self.successResultOf(d))
        self.h.backend.received[-1].respond(503, {"error": {"message": "busy"}})
        self.h.pump()
        self.assertEqual(events(collector.data)[-1],
                         ("error", {"type": "error", "error": {"type": "api_error",
                                                               "message": "busy"}}))
        self.assertTrue(collector.done.called)

    def test_noPingWhenWhole(self) -> None:
        """
        A non-streamed request waits quietly.
        """
        d = self.send(BASE)
        self.h.clock.advance(30)
        self.h.pump()
        self.assertNoResult(d)

    def test_compressedBodies(self) -> None:
        """
        zstd and gzip bodies are decoded; a bomb is a 413 and an unknown
        coding a 415, in Anthropic's shape.
        """
        self.h = ProxyHarness(maxBody=4096)
        raw = codec.dumps(BASE)
        for data, coding in ((zstandard.ZstdCompressor().compress(raw), b"zstd"),
                             (gzip.compress(raw), b"gzip")):
            self.send(data, headers={**HEADERS, b"Content-Encoding": [coding]})
            self.assertEqual(self.h.backend.received[-1].json()["messages"],
                             [{"role": "user", "content": "hi"}])
        bomb = zstandard.ZstdCompressor().compress(b" " * 10_000_000)
        self.assertLess(len(bomb), 4096)
        response = self.successResultOf(
            self.send(bomb, headers={**HEADERS, b"Content-Encoding": [b"zstd"]}))
        self.assertEqual((response.code, body(self.h, response)["error"]["type"]),
                         (413, "request_too_large"))
        response = self.successResultOf(
            self.send(raw, headers={**HEADERS, b"Content-Encoding": [b"br"]}))
        self.assertEqual(response.code, 415)


class CountTokensTests(SynchronousTestCase):
    """
    C{POST /v1/messages/count_tokens}.
    """

    def test_estimate(self) -> None:
        """
        An estimate, labelled, without a backend call.
        """
        h = ProxyHarness()
        d = h.post("/v1/messages/count_tokens?beta=true",
                   {"model": "m", "messages": [{"role": "user", "content": "x" * 40}]})
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"x-token-count"), [b"estimate"])
        self.assertEqual(body(h, response), {"input_tokens": 11})
        self.assertEqual(h.backend.received, [])

    def test_invalid(self) -> None:
        """
        A body without messages is Anthropic's 400.
        """
        h = ProxyHarness()
        response = self.successResultOf(h.post("/v1/messages/count_tokens", {"model": "m"}))
        self.assertEqual((response.code, body(h, response)["error"]["message"]),
                         (400, "messages is required"))


class KeyTests(SynchronousTestCase):
    """
    The inbound key as the Anthropic SDK sends it.
    """

    def test_xApiKey(self) -> None:
        """
        With C{--require-key}, C{x-api-key} (the SDK's C{api_key}) and
        C{Authorization: Bearer} (its C{auth_token}) are both accepted.
        """
        from treq.testing import StubTreq

        h = ProxyHarness()
        client: Any = StubTreq(requireKeys(h.root, ["client-key"]))
        url = "http://proxy.test/v1/messages/count_tokens"
        payload = codec.dumps({"model": "m", "messages": USER})
        for headers, status in (({b"x-api-key": [b"client-key"]}, 200),
                                ({b"authorization": [b"Bearer client-key"]}, 200),
                                ({b"x-api-key": [b"wrong"]}, 401)):
            d = client.post(url, data=payload, headers=headers)
            client.flush()
            self.assertEqual(self.successResultOf(d).code, status)
        # The refusal is in each agent dialect's own shape.
        for path, expected in (
            ("/v1/messages", {"type": "error", "error": {"type": "authentication_error",
                                                         "message": "unauthorized"}}),
            ("/v1/responses", {"error": {"message": "unauthorized",
                                         "type": "invalid_request_error", "param": None,
                                         "code": "invalid_api_key"}}),
        ):
            d = client.post("http://proxy.test" + path, data=payload)
            client.flush()
            response = self.successResultOf(d)
            self.assertEqual(response.code, 401)
            self.assertEqual(codec.loads(self.successResultOf(client.content(response))),
                             expected)


class CancellationTests(SynchronousTestCase):
    """
    A client that leaves mid-stream.
    """

    def test_clientGone(self) -> None:
        """
        A client leaving a streamed message closes the backend connection
        at once and stops the pings.
        """
        h = ProxyHarness()
        h.post("/v1/messages", {**BASE, "stream": True})
        received = h.backend.received[-1]
        received.startSSE()
        received.event(delta("par"))
        h.pump()

        def beats() -> list[Any]:
            calls: list[Any] = list(h.clock.getDelayedCalls())
            return [c for c in calls
                    if getattr(c.func, "__name__", "") == "_beat"]

        self.assertEqual(len(beats()), 1)
        h.dropClients()
        self.assertTrue(received.lost)
        self.assertEqual(beats(), [])


class AliasTests(SynchronousTestCase):
    """
    Claude Code's own model names, mapped by configuration aliases.
    """

    def test_claudeNamesAliased(self) -> None:
        """
        An alias named like Claude Code's background model routes to the
        configured backend model, through the one resolver; the reply
        echoes the client's name.
        """
        from ollama_proxy.service.config import BackendConfig
        from ollama_proxy.testing.harness import MultiBackendHarness

        h = MultiBackendHarness([BackendConfig(
            name="vllm", url="http://vllm.test:8000/v1", discover=False, models=("qwen3",),
            aliases={"claude-haiku-4-5-20251001": "qwen3", "claude-sonnet-4-5": "qwen3"})])
        d = h.post("/v1/messages", {**BASE, "model": "claude-haiku-4-5-20251001"})
        received = h.backend.received[-1]
        self.assertEqual((received.path, received.json()["model"]),
                         ("/v1/chat/completions", "qwen3"))
        received.respond(200, {"choices": [{"message": {"content": "ok"},
                                            "finish_reason": "stop"}]})
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d))["model"], "claude-haiku-4-5-20251001")
        # A name nothing maps goes to the (only) backend as it is, which
        # decides; its 404 is Anthropic's not_found_error.
        d = h.post("/v1/messages", {**BASE, "model": "claude-opus-4-1"})
        received = h.backend.received[-1]
        self.assertEqual(received.json()["model"], "claude-opus-4-1")
        received.respond(404, {"error": {"message": "no such model"}})
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d))["error"]["type"], "not_found_error")


class NativeTests(SynchronousTestCase):
    """
    A backend configured C{native = [...]} gets the agent APIs as they are.
    """

    def harness(self, native: tuple[str, ...]) -> Any:
        from ollama_proxy.service.config import BackendConfig
        from ollama_proxy.testing.harness import MultiBackendHarness

        return MultiBackendHarness([BackendConfig(
            name="litellm", url="http://litellm.test:4000", discover=False, apiKey="sk-lite",
            models=("anthropic/claude-sonnet-4-5",), native=native,
            aliases={"claude-sonnet-4-5": "anthropic/claude-sonnet-4-5"})])

    def test_messagesRelayed(self) -> None:
        """
        C{/v1/messages} goes to the backend's own C{/v1/messages}: the body
        as sent but for the mapped model, the Anthropic headers, the
        backend's key; its event stream is relayed byte for byte.
        """
        h = self.harness(("messages",))
        payload = {**BASE, "model": "claude-sonnet-4-5", "stream": True,
                   "metadata": {"user_id": "u"}}
        d = h.post("/v1/messages?beta=true", payload, headers=HEADERS)
        received = h.backend.received[-1]
        self.assertEqual((received.path, received.request.uri),
                         ("/v1/messages", b"/v1/messages?beta=true"))
        self.assertEqual(received.json(), {**payload, "model": "anthropic/claude-sonnet-4-5"})
        self.assertEqual((received.headers["anthropic-version"], received.headers["anthropic-beta"],
                          received.headers["authorization"]),
                         ("2023-06-01", "tools-2024", "Bearer sk-lite"))
        self.assertNotIn("x-api-key", received.headers)
        stream = b'event: message_start\ndata: {"type":"message_start"}\n\n'
        received.startSSE()
        received.write(stream)
        received.finish()
        h.pump()
        self.assertEqual(_content(h, self.successResultOf(d)), stream)

    def test_responsesRelayed(self) -> None:
        """
        C{/v1/responses} on a native backend keeps its state: a
        C{previous_response_id} is the backend's business, not a 400.
        """
        h = self.harness(("responses",))
        d = h.post("/v1/responses", {"model": "claude-sonnet-4-5", "input": "hi",
                                     "previous_response_id": "resp_1"})
        received = h.backend.received[-1]
        self.assertEqual((received.path, received.json()["model"]),
                         ("/v1/responses", "anthropic/claude-sonnet-4-5"))
        received.respond(200, {"id": "resp_2", "object": "response"})
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d)), {"id": "resp_2", "object": "response"})

    def test_translatedOtherwise(self) -> None:
        """
        An API the backend is not configured for is still translated.
        """
        h = self.harness(("responses",))
        h.post("/v1/messages", {**BASE, "model": "claude-sonnet-4-5"})
        self.assertEqual(h.backend.received[-1].path, "/v1/chat/completions")
