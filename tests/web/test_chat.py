"""
C{/api/chat} and C{/api/generate} through the proxy: streamed and not,
bad requests, a backend that is down, text completions, and end-to-end
checks of what the backend really received.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.flavors import (
    FLAVORS,
    GENERIC,
)
from ollama_proxy.testing.harness import (
    TARGET,
    BodyCollector,
    ProxyHarness,
    contextFor,
    delta,
)
from ollama_proxy.protocol.backends import ModelOverride
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.upstream.fleet import Route
from ollama_proxy.web.chat import upstreamBody
from ollama_proxy.web.tree import buildRoot
from tests.protocol.helpers import (
    LP_B,
    T0,
    USER,
    WEATHER_TOOL,
    chat,
    completionRequestToOpenAI,
    constant,
    lines,
    ollamaStream,
    responseFromOpenAI,
    sse,
)
from tests.web.helpers import CHAT, body


class EndToEndTests(SynchronousTestCase):
    """
    What the backend really receives, and what the client really gets, for
    the cases where the resource layer is involved.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()

    def test_vllmRequest(self) -> None:
        """
        With the vLLM flavor the backend receives the sampling extras, the
        chat-template thinking switch, logprobs, string tool arguments and
        paired ids, and none of the Ollama-only fields.
        """
        self.h.backendClient.flavor = FLAVORS["vllm"]
        self.h.post("/api/chat", {
            "model": "m:proxy",
            "messages": [
                USER,
                {"role": "assistant", "content": "", "thinking": "use the tool",
                 "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "11C", "tool_name": "get_weather"},
            ],
            "tools": [WEATHER_TOOL],
            "think": False,
            "options": {"top_k": 20, "min_p": 0.05, "repeat_penalty": 1.05, "num_ctx": 4096, "temperature": 0.6},
            "logprobs": True,
            "top_logprobs": 3,
            "keep_alive": -1,
            "truncate": True,
        })
        received = self.h.backend.received[0].json()
        self.assertEqual(received["messages"][1], {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1_0", "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
        })
        self.assertEqual(received["messages"][2], {"role": "tool", "content": "11C", "tool_call_id": "call_1_0"})
        for key, value in {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05, "temperature": 0.6,
                           "chat_template_kwargs": {"enable_thinking": False}, "logprobs": True,
                           "top_logprobs": 3, "tools": [WEATHER_TOOL]}.items():
            self.assertEqual(received[key], value, key)
        for absent in ("num_ctx", "keep_alive", "truncate", "think", "options", "reasoning_effort"):
            self.assertNotIn(absent, received)

    def test_openrouterThinkFalse(self) -> None:
        """
        With the OpenRouter flavor, C{think: false} on C{/api/generate} is
        C{reasoning: {enabled: false}}.
        """
        self.h.backendClient.flavor = FLAVORS["openrouter"]
        self.h.post("/api/generate", {"model": "m", "prompt": "hi", "think": False, "stream": False})
        self.assertEqual(self.h.backend.received[0].json()["reasoning"], {"enabled": False})

    def test_retryWithoutExtras(self) -> None:
        """
        When the backend answers 400 naming C{top_k}, the proxy repeats the
        request once without the extras and streams that answer; the client
        never sees the 400.
        """
        d = self.h.post("/api/chat", chat(options={"top_k": 5, "temperature": 0.1}))
        first = self.h.backend.received[0]
        self.assertEqual(first.json()["top_k"], 5)
        first.respond(400, {"error": {"message": "Unrecognized request argument supplied: top_k",
                                      "type": "invalid_request_error"}})
        self.h.pump()
        self.assertEqual(len(self.h.backend.received), 2)
        second = self.h.backend.received[1]
        self.assertNotIn("top_k", second.json())
        self.assertEqual(second.json()["temperature"], 0.1)
        second.startSSE()
        second.event(delta("ok"))
        second.event(delta(finish_reason="stop"))
        second.finish()
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        reader = BodyCollector(self.h, response)
        self.h.pump()
        out = reader.lines()
        self.assertEqual(out[0]["message"]["content"], "ok")
        self.assertIs(out[-1]["done"], True)

    def test_noRetryForOtherErrors(self) -> None:
        """
        A 400 about something else is relayed as it is, without a retry.
        """
        d = self.h.post("/api/chat", chat(options={"top_k": 5}))
        self.h.backend.received[0].respond(400, {"error": {"message": "context length exceeded"}})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 400)
        self.assertEqual(len(self.h.backend.received), 1)
        body = self.successResultOf(self.h.client.json_content(response))
        self.assertEqual(body, {"error": "context length exceeded"})

    def test_badRequests(self) -> None:
        """
        Invalid base64 images and C{top_logprobs} out of range are 400 JSON
        errors, and nothing is sent upstream.
        """
        cases: list[tuple[str, JSON, str]] = [
            ("/api/chat", chat(messages=[{"role": "user", "content": "x", "images": ["not base64!!"]}]),
             "invalid image input: images must be base64 encoded"),
            ("/api/generate", {"model": "m", "prompt": "x", "images": ["not base64!!"]},
             "invalid image input: images must be base64 encoded"),
            ("/api/chat", chat(logprobs=True, top_logprobs=21), "top_logprobs must be between 0 and 20"),
            ("/api/generate", {"model": "m", "prompt": "x", "top_logprobs": -1},
             "top_logprobs must be between 0 and 20"),
        ]
        for path, body, message in cases:
            response = self.successResultOf(self.h.post(path, body))
            self.assertEqual(response.code, 400, body)
            self.assertEqual(
                response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
            )
            self.assertEqual(self.successResultOf(self.h.client.json_content(response)), {"error": message})
        self.assertEqual(self.h.backend.received, [])

    def test_badToolArgumentsMidStream(self) -> None:
        """
        A streamed tool call with broken arguments ends the stream with an
        C{error} line naming the tool, and no C{done: true}.
        """
        d = self.h.post("/api/chat", chat(tools=[WEATHER_TOOL]))
        upstream = self.h.backend.received[0]
        upstream.startSSE()
        upstream.event(delta("Checking."))
        upstream.event(delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "get_weather", "arguments": '{"city":'}}]))
        upstream.event(delta(finish_reason="tool_calls"))
        upstream.done()
        self.h.pump()
        reader = BodyCollector(self.h, self.successResultOf(d))
        self.h.pump()
        out = reader.lines()
        self.assertEqual(out[0]["message"]["content"], "Checking.")
        self.assertEqual(list(out[-1]), ["error"])
        self.assertIn("get_weather", out[-1]["error"])
        self.assertFalse(any(l.get("done") for l in out))

    def test_badToolArgumentsNonStreaming(self) -> None:
        """
        Without streaming the same problem is a 502 JSON error.
        """
        d = self.h.post("/api/chat", chat(stream=False, tools=[WEATHER_TOOL]))
        self.h.backend.received[0].respond(200, {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{"}}]}}]})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 502)
        self.assertIn("get_weather", self.successResultOf(self.h.client.json_content(response))["error"])

    def test_nonStreamingAggregated(self) -> None:
        """
        A non-streamed chat through the proxy returns thinking split from
        inline tags, tool calls with object arguments, logprobs and counts in
        one object.
        """
        d = self.h.post("/api/chat", chat(stream=False, logprobs=True))
        self.h.backend.received[0].respond(200, {
            "choices": [{"index": 0, "finish_reason": "tool_calls",
                         "logprobs": {"content": [LP_B]},
                         "message": {"role": "assistant", "content": "<think>plan</think>lo",
                                     "tool_calls": [{"id": "c", "type": "function",
                                                     "function": {"name": "f", "arguments": '{"a":1}'}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6},
        })
        self.h.pump()
        body = self.successResultOf(self.h.client.json_content(self.successResultOf(d)))
        self.assertEqual(body["message"], {
            "role": "assistant", "content": "lo", "thinking": "plan",
            "tool_calls": [{"id": "c", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}],
        })
        self.assertEqual(body["logprobs"], [{"token": "lo", "logprob": -0.01, "bytes": [108, 111]}])
        self.assertEqual((body["done_reason"], body["prompt_eval_count"], body["eval_count"]), ("stop", 5, 6))

    def test_defaultFlavorIsGeneric(self) -> None:
        """
        A backend built without a flavor is generic: extras are sent and
        C{think: false} sends no switch.
        """
        self.assertIs(self.h.backendClient.flavor, GENERIC)
        self.h.post("/api/chat", chat(think=False, options={"repeat_penalty": 1.2}))
        received = self.h.backend.received[0].json()
        self.assertEqual(received["repetition_penalty"], 1.2)
        for absent in ("reasoning_effort", "chat_template_kwargs", "reasoning"):
            self.assertNotIn(absent, received)


class UpstreamBodyTests(SynchronousTestCase):
    """
    L{upstreamBody}: the one place a body bound for the backend is completed.
    """

    def test_extraWins(self) -> None:
        """
        The model's configured C{extra} fields are set over the translated
        ones (the operator's choice wins), and the builder's body is not
        changed.
        """
        h = ProxyHarness()
        route = Route("default", h.backendClient, "m",
                      ModelOverride(extra={"user": "proxy", "seed": 1}))
        built: Any = {"model": "m", "user": "x"}
        noExchange: Any = None  # consulted only for the --debug log line
        body = upstreamBody(h.ctx, route, built, noExchange)
        self.assertEqual(body, {"model": "m", "user": "proxy", "seed": 1})
        self.assertEqual(built, {"model": "m", "user": "x"})


class TextCompletionInterplayTests(SynchronousTestCase):
    """
    The flavor and the C{<think>} splitting on the C{raw}/C{suffix} route to
    C{/v1/completions} (built for issue 4): extras follow the flavor, the
    legacy route always gets C{max_tokens}, and raw text is never split.
    """

    def test_request(self) -> None:
        """
        Sampling extras follow the flavor; C{num_predict} is C{max_tokens}
        even for OpenAI (the legacy route has no C{max_completion_tokens}).
        """
        body = {"model": "m", "prompt": "def f(", "suffix": "):", "options": {"top_k": 3, "num_predict": 9}}
        cases: list[tuple[str, JSON]] = [
            ("generic", {"top_k": 3, "max_tokens": 9}),
            ("openai", {"max_tokens": 9}),
            ("vllm", {"top_k": 3, "max_tokens": 9}),
        ]
        for flavor, expected in cases:
            request = completionRequestToOpenAI(body, "m", False, FLAVORS[flavor])
            self.assertEqual(
                {k: request[k] for k in ("top_k", "max_tokens", "max_completion_tokens") if k in request},
                expected,
                flavor,
            )

    def test_rawTextNotSplit(self) -> None:
        """
        A completion whose text starts with C{<think>} stays C{response} text,
        streamed or not.
        """
        text = "<think>x</think>y"
        stream = sse({"choices": [{"index": 0, "text": text, "finish_reason": None}]},
                     {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
        pipeline = ollamaStream("m", "generate", T0, constant, thinkTags=False, text=True)
        out = lines(pipeline.feed(stream) + pipeline.end())
        self.assertEqual(out[0]["response"], text)
        self.assertFalse(any("thinking" in l for l in out))
        completion = {"choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}
        result = responseFromOpenAI(completion, "m", "generate", T0, T0, thinkTags=False, text=True)
        self.assertEqual((result["response"], result.get("thinking")), (text, None))

    def test_rawRetryWithoutExtras(self) -> None:
        """
        Through the proxy, a raw generate whose C{top_k} the backend refuses
        by name is retried once on C{/v1/completions} without it, and the
        answer's leading C{<think>} is left alone.
        """
        h = ProxyHarness()
        d = h.post("/api/generate", {"model": "m", "prompt": "<p>", "raw": True, "stream": False,
                                      "options": {"top_k": 7}})
        first = h.backend.received[0]
        self.assertEqual((first.path, first.json()["top_k"]), ("/v1/completions", 7))
        first.respond(400, {"error": {"message": "Unrecognized request argument supplied: top_k"}})
        h.pump()
        second = h.backend.received[1]
        self.assertEqual(second.path, "/v1/completions")
        self.assertNotIn("top_k", second.json())
        second.respond(200, {"choices": [{"index": 0, "text": "<think>a</think>b", "finish_reason": "stop"}]})
        h.pump()
        body = self.successResultOf(h.client.json_content(self.successResultOf(d)))
        self.assertEqual(body["response"], "<think>a</think>b")
        self.assertNotIn("thinking", body)


COMPLETION_EVENTS = [
    {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "def ", "finish_reason": None}]},
    {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "f():", "finish_reason": None}]},
    {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "", "finish_reason": "length"}]},
    {"id": "cmpl-1", "object": "text_completion", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
]


class GenerateTests(SynchronousTestCase):
    """
    C{POST /api/generate}.
    """

    def test_load(self) -> None:
        """
        An empty prompt loads the model: C{done_reason: "load"}, no backend
        call.
        """
        h = ProxyHarness()
        response = self.successResultOf(h.post("/api/generate", {"model": "m", "prompt": ""}))
        result = body(h, response)
        self.assertEqual(
            (result["model"], result["response"], result["done"], result["done_reason"]),
            ("m", "", True, "load"),
        )
        self.assertEqual(h.backend.received, [])

    def test_unload(self) -> None:
        """
        An empty prompt with C{keep_alive: 0} (Open WebUI's unload) answers
        C{done_reason: "unload"}, no backend call.
        """
        h = ProxyHarness()
        response = self.successResultOf(
            h.post("/api/generate", {"model": "m", "prompt": "", "keep_alive": 0})
        )
        self.assertEqual(body(h, response)["done_reason"], "unload")
        self.assertEqual(h.backend.received, [])

    def test_streamingThroughChat(self) -> None:
        """
        C{system} and C{prompt} become a one-turn chat; the NDJSON lines
        carry C{response}, not C{message}, and end with C{done: true}.
        """
        h = ProxyHarness()
        d = h.post("/api/generate", {"model": "m:latest", "prompt": "hi", "system": "be brief"})
        [upstream] = h.backend.received
        self.assertEqual(upstream.path, "/v1/chat/completions")
        self.assertEqual(
            upstream.json()["messages"],
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        )
        self.assertEqual(upstream.json()["model"], "m")
        upstream.startSSE()
        upstream.event(delta("Hel"))
        upstream.event(delta("lo", finish_reason="stop"))
        upstream.done()
        h.pump()
        response = self.successResultOf(d)
        reader = BodyCollector(h, response)
        h.pump()
        lines = reader.lines()
        self.assertEqual([l["response"] for l in lines], ["Hel", "lo", ""])
        self.assertTrue(all("message" not in l for l in lines))
        self.assertEqual([l["done"] for l in lines], [False, False, True])
        self.assertEqual(lines[-1]["model"], "m:latest")
        self.assertEqual(lines[-1]["done_reason"], "stop")

    def test_nonStreamingThroughChat(self) -> None:
        """
        With C{stream: false}, one object with the whole C{response}.
        """
        h = ProxyHarness()
        d = h.post("/api/generate", {"model": "m", "prompt": "hi", "stream": False})
        h.backend.received[0].respond(
            200,
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                          "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
        )
        h.pump()
        result = body(h, self.successResultOf(d))
        self.assertEqual((result["response"], result["done"], result["eval_count"]), ("Hello", True, 1))

    def test_nonStreamingDurationsMeasured(self) -> None:
        """
        A non-streamed chat reports the time it measured (the harness clock
        moves 1 ms per reading), not a 1 ns C{eval_duration}.
        """
        h = ProxyHarness()
        d = h.post("/api/chat", {"model": "m", "stream": False,
                                 "messages": [{"role": "user", "content": "hi"}]})
        h.backend.received[0].respond(
            200,
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                          "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        )
        h.pump()
        result = body(h, self.successResultOf(d))
        self.assertGreaterEqual(result["eval_duration"], 1_000_000)
        self.assertEqual(result["eval_duration"], result["total_duration"])
        self.assertEqual(result["prompt_eval_duration"], result["total_duration"])

    def test_rawStreamsThroughCompletions(self) -> None:
        """
        C{raw: true} sends the prompt untemplated to C{/v1/completions}; the
        text deltas stream back as generate lines with the finish reason and
        usage on the final one.
        """
        h = ProxyHarness()
        d = h.post(
            "/api/generate",
            {"model": "coder:proxy", "prompt": "<fim>", "raw": True, "options": {"num_predict": 2}},
        )
        [upstream] = h.backend.received
        self.assertEqual(upstream.path, "/v1/completions")
        self.assertEqual(
            upstream.json(),
            {"model": "coder", "prompt": "<fim>", "stream": True,
             "stream_options": {"include_usage": True}, "max_tokens": 2},
        )
        upstream.startSSE()
        for event in COMPLETION_EVENTS:
            upstream.event(event)
        upstream.done()
        h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        h.pump()
        lines = reader.lines()
        self.assertEqual([l["response"] for l in lines], ["def ", "f():", ""])
        final = lines[-1]
        self.assertEqual((final["done"], final["done_reason"]), (True, "length"))
        self.assertEqual((final["prompt_eval_count"], final["eval_count"]), (4, 2))
        self.assertEqual(final["model"], "coder:proxy")

    def test_suffixNonStreaming(self) -> None:
        """
        A C{suffix} (fill-in-the-middle) goes to C{/v1/completions} with the
        suffix; the non-streamed answer is one generate object.
        """
        h = ProxyHarness()
        d = h.post(
            "/api/generate",
            {"model": "coder", "prompt": "def f(", "suffix": "\n    return x", "stream": False},
        )
        [upstream] = h.backend.received
        self.assertEqual(upstream.path, "/v1/completions")
        self.assertEqual(upstream.json()["suffix"], "\n    return x")
        self.assertIs(upstream.json()["stream"], False)
        upstream.respond(200, {"choices": [{"index": 0, "text": "x):", "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
        h.pump()
        result = body(h, self.successResultOf(d))
        self.assertEqual(result["response"], "x):")
        self.assertEqual((result["done"], result["done_reason"], result["eval_count"]), (True, "stop", 3))
        self.assertNotIn("message", result)

    def test_rawFallsBackToChat(self) -> None:
        """
        A backend without C{/v1/completions} (404) gets the raw prompt as a
        one-turn chat instead.
        """
        h = ProxyHarness()
        d = h.post("/api/generate", {"model": "m", "prompt": "hi", "raw": True, "stream": False})
        h.backend.received[0].respond(404, {"detail": "Not Found"})
        h.pump()
        second = h.backend.received[1]
        self.assertEqual(second.path, "/v1/chat/completions")
        self.assertEqual(second.json()["messages"], [{"role": "user", "content": "hi"}])
        second.respond(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"},
                                          "finish_reason": "stop"}]})
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d))["response"], "yo")

    def test_suffixWithoutCompletionsIsAnError(self) -> None:
        """
        Fill-in-the-middle cannot become a chat: the backend's 404 reaches the
        client.
        """
        h = ProxyHarness()
        d = h.post("/api/generate", {"model": "m", "prompt": "a", "suffix": "b", "stream": False})
        h.backend.received[0].respond(404, {"detail": "Not Found"})
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 404)
        self.assertEqual(body(h, response), {"error": "Not Found"})
        self.assertEqual(len(h.backend.received), 1)

    def test_rawWithSystemRejected(self) -> None:
        """
        Ollama's 400 for C{raw} combined with C{system}.
        """
        h = ProxyHarness()
        response = self.successResultOf(
            h.post("/api/generate", {"model": "m", "prompt": "a", "raw": True, "system": "s"})
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(
            body(h, response), {"error": "raw mode does not support template, system, or context"}
        )




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
        reader = BodyCollector(self.h, response)
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
        reader = BodyCollector(self.h, self.successResultOf(d))
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
        reader = BodyCollector(self.h, self.successResultOf(d))
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
        reader = BodyCollector(self.h, self.successResultOf(d))
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
        reader = BodyCollector(self.h, response)
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
        reader = BodyCollector(self.h, self.successResultOf(d))
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
        reader = BodyCollector(self.h, self.successResultOf(d))
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
        reader = BodyCollector(self.h, self.successResultOf(d))
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
