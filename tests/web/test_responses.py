"""
C{/v1/responses} through the whole proxy (the harness): what the backend
receives, the answers and errors in OpenAI's shapes, the stateless refusal,
a failure mid-stream, zstd bodies as Codex sends them.
"""

from __future__ import annotations

from typing import Any

import zstandard
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import BodyCollector, ProxyHarness, delta
from tests.protocol.test_anthropic import events
from tests.web.helpers import _content, body
from tests.web.test_anthropic import streamSSE

BASE = {"model": "gpt-5-codex", "input": "hi"}


class ResponsesTests(SynchronousTestCase):
    """
    C{POST /v1/responses}.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()

    def test_requestMapping(self) -> None:
        """
        What the backend receives: OpenAI chat bodies, none of the
        Responses-only fields.
        """
        cases: list[tuple[Any, Any]] = [
            ({**BASE, "instructions": "I", "store": False, "include": ["x"],
              "prompt_cache_key": "k", "client_metadata": {}},
             {"messages": [{"role": "system", "content": "I"}, {"role": "user", "content": "hi"}],
              "stream": False}),
            ({**BASE, "stream": True, "max_output_tokens": 9, "reasoning": {"effort": "high",
                                                                             "summary": "auto"}},
             {"messages": [{"role": "user", "content": "hi"}], "stream": True,
              "stream_options": {"include_usage": True}, "max_tokens": 9,
              "reasoning_effort": "high"}),
            ({**BASE, "input": [
                {"type": "message", "role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c1", "name": "ls", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "a.txt"}],
              "tools": [{"type": "function", "name": "ls", "parameters": {"type": "object"}},
                        {"type": "web_search"}],
              "tool_choice": "required"},
             {"messages": [
                 {"role": "user", "content": "hi"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "c1", "type": "function", "function": {"name": "ls",
                                                                   "arguments": "{}"}}]},
                 {"role": "tool", "content": "a.txt", "tool_call_id": "c1"}],
              "stream": False,
              "tools": [{"type": "function", "function": {"name": "ls",
                                                          "parameters": {"type": "object"}}}],
              "tool_choice": "required"}),
        ]
        for payload, expected in cases:
            self.h.post("/v1/responses", payload)
            received = self.h.backend.received[-1]
            self.assertEqual(received.path, "/v1/chat/completions")
            self.assertEqual(received.json(), {"model": "gpt-5-codex", **expected})
            received.respond(200, {"choices": [{"message": {"content": "x"},
                                                "finish_reason": "stop"}]})
            self.h.pump()

    def test_whole(self) -> None:
        """
        A non-streamed answer is the response object.
        """
        d = self.h.post("/v1/responses", BASE)
        self.h.backend.received[-1].respond(200, {
            "choices": [{"message": {"content": "Hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
        self.h.pump()
        response = self.successResultOf(d)
        obj = body(self.h, response)
        self.assertEqual((response.code, obj["object"], obj["status"], obj["model"]),
                         (200, "response", "completed", "gpt-5-codex"))
        self.assertEqual(obj["output"][0]["content"][0]["text"], "Hello")
        self.assertEqual(obj["usage"]["total_tokens"], 4)

    def test_streamed(self) -> None:
        """
        A stream is the Responses event sequence, numbered.
        """
        d = self.h.post("/v1/responses", {**BASE, "stream": True})
        streamSSE(self.h.backend.received[-1], delta("Hi", finish_reason="stop"))
        self.h.pump()
        out = events(_content(self.h, self.successResultOf(d)))
        self.assertEqual([data["sequence_number"] for _, data in out], list(range(len(out))))
        self.assertEqual([n for n, _ in out][-1], "response.completed")

    def test_zstd(self) -> None:
        """
        A zstd body (Codex) is decoded.
        """
        data = zstandard.ZstdCompressor().compress(codec.dumps(BASE))
        self.h.post("/v1/responses", data, headers={b"Content-Encoding": [b"zstd"]})
        self.assertEqual(self.h.backend.received[-1].json()["messages"],
                         [{"role": "user", "content": "hi"}])

    def test_stateful(self) -> None:
        """
        C{previous_response_id} is a 400 naming the field, before any
        backend call.
        """
        response = self.successResultOf(
            self.h.post("/v1/responses", {**BASE, "previous_response_id": "resp_1",
                                          "stream": True}))
        self.assertEqual(response.code, 400)
        self.assertEqual(body(self.h, response)["error"]["param"], "previous_response_id")
        self.assertEqual(self.h.backend.received, [])

    def test_errors(self) -> None:
        """
        Bad input and a backend's refusal are OpenAI error objects with the
        status.
        """
        response = self.successResultOf(self.h.post("/v1/responses", {"input": "x"}))
        self.assertEqual((response.code, body(self.h, response)), (400, {"error": {
            "message": "model is required", "type": "invalid_request_error", "param": None,
            "code": None}}))
        d = self.h.post("/v1/responses", {**BASE, "stream": True})
        self.h.backend.received[-1].respond(404, {"error": {"message": "no such model"}})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual((response.code, body(self.h, response)["error"]["code"]),
                         (404, "model_not_found"))

    def test_failureMidStream(self) -> None:
        """
        A backend failing after the stream began: C{response.failed}.
        """
        d = self.h.post("/v1/responses", {**BASE, "stream": True})
        received = self.h.backend.received[-1]
        received.startSSE()
        received.event(delta("par"))
        received.finish()
        self.h.pump()
        out = events(_content(self.h, self.successResultOf(d)))
        name, data = out[-1]
        self.assertEqual((name, data["response"]["status"], data["response"]["error"]),
                         ("response.failed", "failed", {
                             "code": "server_error",
                             "message": "backend closed the stream before it was complete"}))

    def test_pingWhileSilent(self) -> None:
        """
        A silent backend: the response opens after ten seconds, then SSE
        comments keep the connection busy.
        """
        d = self.h.post("/v1/responses", {**BASE, "stream": True})
        self.h.clock.advance(10)
        self.h.pump()
        collector = BodyCollector(self.h, self.successResultOf(d))
        self.h.clock.advance(10)
        self.h.pump()
        self.assertTrue(collector.data.endswith(b"\n\n: keep-alive\n\n"))
        streamSSE(self.h.backend.received[-1], delta("Hi", finish_reason="stop"))
        self.h.pump()
        names = [n for n, _ in events(collector.data.replace(b": keep-alive\n\n", b""))]
        self.assertEqual(names[:2], ["response.created", "response.in_progress"])
        self.assertEqual(names.count("response.created"), 1)
        self.assertEqual(names[-1], "response.completed")


class ReplyCapTests(SynchronousTestCase):
    """
    The text a streamed reply's item may keep for its closing events is
    capped (C{ResponsesEncoder.maxText}); past it the stream ends with
    C{response.failed} naming the cap, and the backend is let go.
    """

    def setUp(self) -> None:
        from ollama_proxy.protocol.responses import ResponsesEncoder

        self.patch(ResponsesEncoder, "maxText", 1000)
        self.h = ProxyHarness()

    def test_overCapFails(self) -> None:
        """
        Past the cap: the deltas sent so far, then C{response.failed} with
        the limit in its message; no closing events, no C{completed}.
        """
        d = self.h.post("/v1/responses", {**BASE, "stream": True})
        upstream = self.h.backend.received[-1]
        upstream.startSSE()
        for _ in range(15):
            upstream.event(delta("x" * 100))
        self.h.pump()
        out = events(_content(self.h, self.successResultOf(d)))
        names = [n for n, _ in out]
        self.assertEqual(names[-1], "response.failed")
        self.assertNotIn("response.output_text.done", names)
        self.assertNotIn("response.completed", names)
        self.assertEqual(names.count("response.output_text.delta"), 10)
        failed = out[-1][1]["response"]
        self.assertEqual(failed["status"], "failed")
        self.assertIn("limit of 1000 characters", failed["error"]["message"])
        self.assertEqual(failed["output"], [])
        self.assertTrue(upstream.lost)

    def test_atCapCompletes(self) -> None:
        """
        Exactly the cap is a whole reply, its text repeated in the closing
        events and the response object.
        """
        d = self.h.post("/v1/responses", {**BASE, "stream": True})
        streamSSE(self.h.backend.received[-1], *[delta("y" * 100) for _ in range(10)],
                  delta(finish_reason="stop"))
        self.h.pump()
        out = events(_content(self.h, self.successResultOf(d)))
        self.assertEqual(out[-1][0], "response.completed")
        done = dict(out)
        self.assertEqual(done["response.output_text.done"]["text"], "y" * 1000)
        self.assertEqual(done["response.content_part.done"]["part"]["text"], "y" * 1000)
        self.assertEqual(done["response.output_item.done"]["item"]["content"][0]["text"],
                         "y" * 1000)
        self.assertEqual(out[-1][1]["response"]["output"][0]["content"][0]["text"], "y" * 1000)

    def test_wholeNotCapped(self) -> None:
        """
        C{stream: false} repeats nothing: a reply over the stream cap is
        the response object.
        """
        d = self.h.post("/v1/responses", BASE)
        self.h.backend.received[-1].respond(200, {
            "choices": [{"message": {"content": "z" * 5000}, "finish_reason": "stop"}]})
        self.h.pump()
        obj = body(self.h, self.successResultOf(d))
        self.assertEqual(obj["output"][0]["content"][0]["text"], "z" * 5000)

    def test_wholeAsStreamOverCap(self) -> None:
        """
        A backend that ignores C{stream: true} and answers one completion
        over the cap: nothing was sent yet, so the answer is a 502 OpenAI
        error naming the cap, not a 500.
        """
        d = self.h.post("/v1/responses", {**BASE, "stream": True})
        self.h.backend.received[-1].respond(200, {
            "choices": [{"message": {"content": "z" * 5000}, "finish_reason": "stop"}]})
        self.h.pump()
        response = self.successResultOf(d)
        error = body(self.h, response)["error"]
        self.assertEqual((response.code, error["type"]), (502, "server_error"))
        self.assertIn("limit of 1000 characters", error["message"])
