"""
C{/v1beta/...} (Google's Gemini API) through the whole proxy (the harness:
the real resource tree, the scripted fake backend, a memory clock): what
the backend receives for each Gemini request, the answers and errors in
Google's shapes, the model list, C{countTokens}, the key, the route
labels, the model's extras and aliases, the debug log.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.service.config import BackendConfig, ModelOverride
from ollama_proxy.testing.harness import MultiBackendHarness, ProxyHarness, delta
from ollama_proxy.web.auth import requireKeys
from tests.protocol.helpers import PNG, b64
from tests.protocol.test_gemini import chunks
from tests.web.helpers import _content, body, serveCatalog
from tests.web.test_tree import TreeCase

USER = [{"role": "user", "parts": [{"text": "hi"}]}]
STREAM = "/v1beta/models/gem:streamGenerateContent?alt=sse"
WHOLE = "/v1beta/models/gem:generateContent"
HEADERS = {b"x-goog-api-key": [b"client-key"], b"Content-Type": [b"application/json"]}
TOOL = {"name": "get_weather", "description": "Weather.",
        "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}}
OPENAI_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": TOOL["parametersJsonSchema"], "description": "Weather."}}
HI = [{"role": "user", "content": "hi"}]


def answer(received: Any, content: str = "x", finish: str = "stop") -> None:
    received.respond(200, {"choices": [{"message": {"content": content}, "finish_reason": finish}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 1}})


class GenerateTests(SynchronousTestCase):
    """
    C{:generateContent} and C{:streamGenerateContent}.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()

    def send(self, payload: Any, path: str = WHOLE, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", HEADERS)
        return self.h.post(path, payload, **kwargs)

    def test_requestMapping(self) -> None:
        """
        What the backend receives for each Gemini request: an OpenAI chat
        body with the model from the path, built field by field (nothing
        Google-only), with the backend's key and none of the client's.
        """
        cases: list[tuple[str, Any, Any]] = [
            # Gemini CLI's shape: system instruction, sampling, thoughts, a
            # tool with a plain JSON Schema.
            (STREAM, {"contents": USER, "systemInstruction": {"parts": [{"text": "S"}]},
                      "generationConfig": {"temperature": 1, "topP": 0.95, "topK": 64,
                                           "thinkingConfig": {"includeThoughts": True}},
                      "tools": [{"functionDeclarations": [TOOL]}]},
             {"messages": [{"role": "system", "content": "S"}, *HI], "stream": True,
              "stream_options": {"include_usage": True}, "temperature": 1, "top_p": 0.95,
              "top_k": 64, "tools": [OPENAI_TOOL]}),
            (WHOLE, {"contents": USER, "generationConfig": {
                "maxOutputTokens": 50, "stopSequences": ["X"], "seed": 7, "presencePenalty": 0.5,
                "frequencyPenalty": 0.25, "candidateCount": 1, "thinkingConfig": {"thinkingBudget": 0}},
                "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH",
                                    "threshold": "BLOCK_NONE"}]},
             {"messages": HI, "stream": False, "max_tokens": 50, "stop": ["X"], "seed": 7,
              "presence_penalty": 0.5, "frequency_penalty": 0.25}),
            (WHOLE, {"contents": USER, "generationConfig": {"thinkingConfig": {"thinkingLevel": "HIGH"}}},
             {"messages": HI, "stream": False, "reasoning_effort": "high"}),
            # The OpenAPI-subset parameters, and a forced function.
            (WHOLE, {"contents": USER, "tools": [{"functionDeclarations": [
                {"name": "get_weather", "description": "Weather.", "parameters": {
                    "type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                                                         "allowedFunctionNames": ["get_weather"]}}},
             {"messages": HI, "stream": False, "tools": [OPENAI_TOOL],
              "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
            (WHOLE, {"contents": USER, "tools": [{"functionDeclarations": [TOOL, {"name": "now"}]}],
                     "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}},
             {"messages": HI, "stream": False, "tool_choice": "none", "tools": [
                 OPENAI_TOOL, {"type": "function", "function": {
                     "name": "now", "parameters": {"type": "object", "properties": {}}}}]}),
            (WHOLE, {"contents": USER, "tools": [{"functionDeclarations": [TOOL, {"name": "now"}]}],
                     "toolConfig": {"functionCallingConfig": {
                         "mode": "ANY", "allowedFunctionNames": ["get_weather", "x"]}}},
             {"messages": HI, "stream": False, "tool_choice": "required", "tools": [OPENAI_TOOL]}),
            # Structured output: a JSON Schema, Google's schema, plain JSON.
            (WHOLE, {"contents": USER, "generationConfig": {
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
             {"messages": HI, "stream": False, "response_format": {"type": "json_schema", "json_schema": {
                 "name": "response",
                 "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}),
            (WHOLE, {"contents": USER, "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": {"type": "ARRAY", "items": {"type": "STRING", "nullable": True}}}},
             {"messages": HI, "stream": False, "response_format": {"type": "json_schema", "json_schema": {
                 "name": "response",
                 "schema": {"type": "array", "items": {"type": ["string", "null"]}}}}}),
            (WHOLE, {"contents": USER, "generationConfig": {"responseMimeType": "application/json"}},
             {"messages": HI, "stream": False, "response_format": {"type": "json_object"}}),
            # A tool round trip as Gemini CLI sends it, and an image.
            (WHOLE, {"contents": [
                {"role": "user", "parts": [{"text": "weather?"}, {"inlineData": {
                    "mimeType": "image/png", "data": b64(PNG)}}]},
                {"role": "model", "parts": [{"functionCall": {
                    "id": "get_weather_1796541525882_0", "name": "get_weather",
                    "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"}]},
                {"role": "user", "parts": [{"functionResponse": {
                    "id": "get_weather_1796541525882_0", "name": "get_weather",
                    "response": {"output": "sunny"}}}]}],
                "tools": [{"functionDeclarations": [TOOL]}]},
             {"messages": [
                 {"role": "user", "content": [
                     {"type": "text", "text": "weather?"},
                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}}]},
                 {"role": "assistant", "content": None, "tool_calls": [{
                     "id": "get_weather_1796541525882_0", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
                 {"role": "tool", "content": '{"output":"sunny"}',
                  "tool_call_id": "get_weather_1796541525882_0"}],
              "stream": False, "tools": [OPENAI_TOOL]}),
            # Calls without ids (other Google clients): paired by name.
            (WHOLE, {"contents": [
                *USER,
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
                {"role": "user", "parts": [{"functionResponse": {
                    "name": "get_weather", "response": {"error": "down"}}}]}]},
             {"messages": [*HI,
                           {"role": "assistant", "content": None, "tool_calls": [{
                               "id": "call_1_0", "type": "function",
                               "function": {"name": "get_weather", "arguments": "{}"}}]},
                           {"role": "tool", "content": '{"error":"down"}', "tool_call_id": "call_1_0"}],
              "stream": False}),
        ]
        for path, payload, expected in cases:
            self.send(payload, path)
            received = self.h.backend.received[-1]
            self.assertEqual(received.path, "/v1/chat/completions")
            self.assertEqual(received.json(), {"model": "gem", **expected})
            self.assertEqual(received.headers["authorization"], "Bearer sk-secret")
            self.assertNotIn("x-goog-api-key", received.headers)
            self.assertNotIn(b"client-key", received.request.uri + received.body)
            answer(received)
            self.h.pump()

    def test_whole(self) -> None:
        """
        C{:generateContent} answers one C{GenerateContentResponse}, echoing
        the client's model name; thoughts only when asked for.
        """
        for config, parts in (
            ({"thinkingConfig": {"includeThoughts": True}},
             [{"text": "hm", "thought": True}, {"text": "Hello"}]),
            ({}, [{"text": "Hello"}]),
        ):
            d = self.send({"contents": USER, "generationConfig": config})
            self.h.backend.received[-1].respond(200, {
                "choices": [{"message": {"content": "Hello", "reasoning_content": "hm"},
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
            self.h.pump()
            response = self.successResultOf(d)
            self.assertEqual(response.code, 200)
            decoded = body(self.h, response)
            self.assertTrue(decoded.pop("responseId"))
            self.assertEqual(decoded, {
                "candidates": [{"content": {"parts": parts, "role": "model"},
                                "finishReason": "MAX_TOKENS", "index": 0}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1,
                                  "totalTokenCount": 4},
                "modelVersion": "gem"})

    def test_streamed(self) -> None:
        """
        C{alt=sse}: C{data:} events of C{GenerateContentResponse}s, the
        last with the finish and usage, no C{[DONE]}.
        """
        d = self.send({"contents": USER}, STREAM)
        received = self.h.backend.received[-1]
        received.startSSE()
        received.event(delta("Hel"))
        received.event(delta("lo", finish_reason="stop"))
        received.event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        received.done()
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"])
        data = _content(self.h, response)
        self.assertNotIn(b"[DONE]", data)
        out = chunks(data)
        self.assertEqual([c["candidates"][0]["content"]["parts"] for c in out],
                         [[{"text": "Hel"}], [{"text": "lo"}], [{"text": ""}]])
        self.assertEqual(out[-1]["candidates"][0]["finishReason"], "STOP")
        self.assertEqual(out[-1]["usageMetadata"], {
            "promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5})
        self.assertEqual(len({c["responseId"] for c in out}), 1)

    def test_oddQueries(self) -> None:
        """
        Query strings with escapes that are not ASCII or not UTF-8 are
        answered (the key and C{alt} read from them as bytes).
        """
        for query in ("?alt=%C2%B2", "?key=%FF&alt=sse", "?%FF=%FE"):
            d = self.send({"contents": USER}, "/v1beta/models/gem:streamGenerateContent" + query)
            received = self.h.backend.received[-1]
            received.startSSE()
            received.event(delta("Hi", finish_reason="stop"))
            received.done()
            self.h.pump()
            self.assertEqual(self.successResultOf(d).code, 200, query)

    def test_streamedAsJSONArray(self) -> None:
        """
        Without C{alt=sse}, Google's default framing: one JSON array.
        """
        d = self.send({"contents": USER}, "/v1beta/models/gem:streamGenerateContent")
        received = self.h.backend.received[-1]
        received.startSSE()
        received.event(delta("Hi", finish_reason="stop"))
        received.done()
        self.h.pump()
        response = self.successResultOf(d)
        decoded = codec.loads(_content(self.h, response))
        self.assertEqual([c["candidates"][0]["content"]["parts"] for c in decoded],
                         [[{"text": "Hi"}], [{"text": ""}]])

    def test_errorsBeforeTheStream(self) -> None:
        """
        Bad input, a backend's refusal, a wrong method and an unknown path
        are answered as Google's C{{"error": {"code", "message",
        "status"}}} with the HTTP status.
        """
        response = self.successResultOf(self.send({"contents": "hi"}, STREAM))
        self.assertEqual((response.code, body(self.h, response)), (400, {"error": {
            "code": 400, "message": "contents is required: a non-empty list",
            "status": "INVALID_ARGUMENT"}}))
        response = self.successResultOf(self.send(b"{", STREAM))
        self.assertEqual(body(self.h, response)["error"]["status"], "INVALID_ARGUMENT")
        for status, name in ((404, "NOT_FOUND"), (429, "RESOURCE_EXHAUSTED"),
                             (500, "INTERNAL"), (503, "UNAVAILABLE")):
            d = self.send({"contents": USER}, STREAM)
            self.h.backend.received[-1].respond(status, {"error": {"message": f"no {status}"}})
            self.h.pump()
            response = self.successResultOf(d)
            self.assertEqual(response.code, status)
            self.assertEqual(body(self.h, response), {"error": {
                "code": status, "message": f"no {status}", "status": name}})
        response = self.successResultOf(self.h.get(WHOLE))
        self.assertEqual((response.code, body(self.h, response)["error"]["status"]),
                         (405, "UNIMPLEMENTED"))
        for path in ("/v1beta/files", "/v1beta/models/gem", "/v1beta/models/gem:embedContent", "/v1beta", "/v1beta/models/gem:embedContent/x",
                     "/v1beta/models/:generateContent"):
            response = self.successResultOf(self.h.post(path, {"contents": USER}))
            self.assertEqual((response.code, body(self.h, response)["error"]["status"]),
                             (404, "NOT_FOUND"), path)
        self.assertEqual(self.h.ollama.received, [])

    def test_failureMidStream(self) -> None:
        """
        A backend failing after the stream began ends it with a final
        C{error} event, never a C{finishReason}.
        """
        d = self.send({"contents": USER}, STREAM)
        received = self.h.backend.received[-1]
        received.startSSE()
        received.event(delta("par"))
        received.event({"error": {"message": "backend exploded"}})
        received.finish()
        self.h.pump()
        data = _content(self.h, self.successResultOf(d))
        out = chunks(data)
        self.assertEqual(out[-1], {"error": {"code": 502, "message": "backend exploded",
                                             "status": "UNAVAILABLE"}})
        self.assertNotIn(b"finishReason", data)

    def test_secretsNeverReachTheClient(self) -> None:
        """
        The backend key and the client's own Google key (header or query),
        echoed by a backend in its text, split across reads, or in an
        error, reach the Gemini client redacted, streamed or whole.
        """
        for path, headers in ((STREAM, HEADERS), (STREAM + "&key=client-key", {}),
                              (WHOLE, HEADERS)):
            d = self.send({"contents": USER}, path, headers=headers)
            received = self.h.backend.received[-1]
            if path == WHOLE:
                answer(received, "sk-secret and client-key")
            else:
                received.startSSE()
                received.event(delta("sk-se"))
                received.event(delta("cret, client-"))
                received.event(delta("key", finish_reason="stop"))
                received.done()
            self.h.pump()
            data = _content(self.h, self.successResultOf(d))
            self.assertNotIn(b"sk-secret", data)
            self.assertNotIn(b"client-key", data)
        d = self.send({"contents": USER}, STREAM)
        self.h.backend.received[-1].respond(401, {"error": {"message": "bad key sk-secret"}})
        self.h.pump()
        self.assertNotIn(b"sk-secret", _content(self.h, self.successResultOf(d)))

    def test_timeouts(self) -> None:
        """
        A backend that never answers is Google's 504 C{DEADLINE_EXCEEDED}
        after the header timeout; one that stops mid-stream ends the stream
        with the error event after the idle timeout.
        """
        self.h.backendClient.headerTimeout = 30.0
        d = self.send({"contents": USER}, STREAM)
        self.h.clock.advance(30)
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual((response.code, body(self.h, response)["error"]["status"]),
                         (504, "DEADLINE_EXCEEDED"))
        d = self.send({"contents": USER}, STREAM)
        received = self.h.backend.received[-1]
        received.startSSE()
        received.event(delta("Hel"))
        self.h.pump()
        self.h.clock.advance(301)
        self.h.pump()
        out = chunks(_content(self.h, self.successResultOf(d)))
        self.assertEqual(out[0]["candidates"][0]["content"]["parts"], [{"text": "Hel"}])
        self.assertEqual(set(out[-1]), {"error"})

    def test_clientGone(self) -> None:
        """
        A client that leaves mid-stream cancels the upstream request.
        """
        self.send({"contents": USER}, STREAM)
        received = self.h.backend.received[-1]
        received.startSSE()
        received.event(delta("Hel"))
        self.h.pump()
        self.h.dropClients()
        self.assertTrue(received.lost)

    def test_fakeBackendToolLoop(self) -> None:
        """
        Against the built-in fake backend (the demo's C{fake-tools}), a
        call comes back as a C{functionCall} part with an id, and the
        C{functionResponse} sent with that id gets the text answer.
        """
        from ollama_proxy.testing.fake_openai import REPLY, FakeOpenAI
        from ollama_proxy.testing.harness import TARGET, Counter, contextFor, pumpUntilQuiet
        from ollama_proxy.testing.memory import MemoryTreq
        from ollama_proxy.upstream.backend import Backend
        from ollama_proxy.web.tree import buildRoot
        from twisted.internet.testing import MemoryReactorClock

        clock = MemoryReactorClock()
        upstream = MemoryTreq(FakeOpenAI(clock))
        root = buildRoot(contextFor(Backend(upstream, TARGET, clock),
                                    clock=clock, now=Counter()))
        client: Any = MemoryTreq(root)

        def post(payload: Any) -> Any:
            d = client.post("http://proxy.test/v1beta/models/fake-tools:generateContent",
                            data=codec.dumps(payload))
            pumpUntilQuiet(clock, [client, upstream])
            return codec.loads(self.successResultOf(client.content(self.successResultOf(d))))

        tools = [{"functionDeclarations": [TOOL]}]
        first = post({"contents": USER, "tools": tools})
        [part] = first["candidates"][0]["content"]["parts"]
        call = part["functionCall"]
        self.assertEqual((call["name"], call["args"]), ("get_weather", {"city": "Paris", "unit": "celsius"}))
        self.assertTrue(call["id"])
        second = post({"contents": [*USER, {"role": "model", "parts": [part]}, {"role": "user", "parts": [
            {"functionResponse": {"id": call["id"], "name": "get_weather",
                                  "response": {"output": "sunny"}}}]}], "tools": tools})
        self.assertEqual(second["candidates"][0]["content"]["parts"], [{"text": REPLY}])


class ModelsTests(SynchronousTestCase):
    """
    C{GET /v1beta/models} and C{/v1beta/models/{model}}.
    """

    def test_listAndGet(self) -> None:
        """
        The served chat models in Google's shape with the catalog's
        limits, paged; one model by name (its C{:proxy} name too); an
        unknown one is Google's 404.
        """
        h = ProxyHarness()
        d = h.get("/v1beta/models?pageSize=1", headers=HEADERS)
        serveCatalog(h, [{"id": "gem"}, {"id": "text-embedding-3-small"}, {"id": "o3"}], {
            "data": [{"model_name": "gem", "model_info": {
                "max_input_tokens": 100000, "max_output_tokens": 8192, "mode": "chat"}}]})
        page = body(h, self.successResultOf(d))
        self.assertEqual(page["nextPageToken"], "1")
        [model] = page["models"]
        self.assertEqual((model["name"], model["inputTokenLimit"], model["outputTokenLimit"]),
                         ("models/gem", 100000, 8192))
        page = body(h, self.successResultOf(h.get("/v1beta/models?pageToken=1")))
        self.assertEqual([m["name"] for m in page["models"]], ["models/o3"])
        self.assertNotIn("nextPageToken", page)
        for name in ("gem", "gem:proxy"):
            response = self.successResultOf(h.get(f"/v1beta/models/{name}"))
            self.assertEqual(body(h, response)["name"], "models/gem")
        response = self.successResultOf(h.get("/v1beta/models/nothing-such"))
        self.assertEqual((response.code, body(h, response)["error"]["status"]), (404, "NOT_FOUND"))
        for query in ("pageToken=abc", "pageToken=%C2%B2", "pageSize=%C2%B2", "pageSize=-1"):
            response = self.successResultOf(h.get(f"/v1beta/models?{query}"))
            self.assertEqual((response.code, body(h, response)["error"]["status"]),
                             (400, "INVALID_ARGUMENT"), query)


class VersionOneTests(SynchronousTestCase):
    """
    Google's C{v1} API (the C{google-genai} SDKs' default) on C{/v1/models},
    beside OpenAI's model routes.
    """

    def test_sharedModelsRoute(self) -> None:
        """
        A Gemini method, or Google's key header or parameter, makes a
        C{/v1/models} request Google's (answered by the proxy, labelled
        C{/v1/models/{model}:...}); anything else is still OpenAI's,
        relayed to the backend.
        """
        h = MultiBackendHarness([BackendConfig(name="a", url="http://a.test:4000", discover=False,
                                               models=("gem",))])
        d = h.post("/v1/models/gem:generateContent", {"contents": USER})
        received = h.backend.received[-1]
        self.assertEqual(received.path, "/v1/chat/completions")
        answer(received)
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d))["modelVersion"], "gem")
        for path, headers in (("/v1/models", HEADERS), ("/v1/models?key=k", {})):
            listed = body(h, self.successResultOf(h.get(path, headers=headers)))
            self.assertEqual([m["name"] for m in listed["models"]], ["models/gem"])
        one = body(h, self.successResultOf(h.get("/v1/models/gem", headers=HEADERS)))
        self.assertEqual(one["name"], "models/gem")
        before = len(h.backend.received)
        h.get("/v1/models/gem")
        [relayed] = h.backend.received[before:]
        self.assertEqual(relayed.path, "/v1/models/gem")
        response = self.successResultOf(h.get("/v1/models/x:generateContent", headers=HEADERS))
        self.assertEqual(body(h, response)["error"]["status"], "UNIMPLEMENTED")
        response = self.successResultOf(h.get("/metrics"))
        text = self.successResultOf(h.client.content(response)).decode()
        routes = {s.labels.get("route") for f in text_string_to_metric_families(text)
                  for s in f.samples if f.name == "ollama_proxy_requests"}
        self.assertLessEqual({"/v1/models/{model}:generateContent", "/v1/models",
                              "/v1/models/{model}"}, routes)

    def test_keyQueryNeverRelayed(self) -> None:
        """
        With C{--require-key}, C{?key=} on C{/v1/models} is Google's: it is
        answered by the proxy and never reaches the backend in a relayed
        query.
        """
        h = ProxyHarness()
        client: Any = StubTreq(requireKeys(h.root, ["client-key"]))
        d = client.get("http://proxy.test/v1/models?key=client-key")
        client.flush()
        h.pump()
        serveCatalog(h, [{"id": "gem"}])
        client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertNotIn(b"client-key", b"".join(r.request.uri for r in h.backend.received))
        d = client.get("http://proxy.test/v1/models?key=wrong")
        client.flush()
        self.assertEqual(codec.loads(self.successResultOf(client.content(self.successResultOf(d)))),
                         {"error": {"code": 401, "message": "unauthorized",
                                    "status": "UNAUTHENTICATED"}})


class CountTokensTests(SynchronousTestCase):
    """
    C{:countTokens}.
    """

    def test_sameEstimateAsAnthropic(self) -> None:
        """
        The same conversation counts the same on C{countTokens} as on
        C{/v1/messages/count_tokens}, labelled as an estimate, without a
        backend call.
        """
        h = ProxyHarness()
        text = "x" * 400
        d = h.post("/v1beta/models/gem:countTokens",
                   {"contents": [{"role": "user", "parts": [{"text": text}]}]})
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"x-token-count"), [b"estimate"])
        gemini = body(h, response)["totalTokens"]
        anthropic = body(h, self.successResultOf(h.post("/v1/messages/count_tokens", {
            "model": "gem", "messages": [{"role": "user", "content": text}]})))["input_tokens"]
        self.assertEqual(gemini, anthropic)
        self.assertEqual(gemini, 101)
        whole = body(h, self.successResultOf(h.post("/v1beta/models/gem:countTokens", {
            "generateContentRequest": {"contents": USER, "tools": [{"functionDeclarations": [TOOL]}]}})))
        self.assertGreater(whole["totalTokens"], 20)
        self.assertEqual(h.backend.received, [])
        response = self.successResultOf(h.post("/v1beta/models/gem:countTokens", {}))
        self.assertEqual(body(h, response)["error"]["code"], 400)


class KeyTests(SynchronousTestCase):
    """
    The key as Google's clients send it.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()
        self.client: Any = StubTreq(requireKeys(self.h.root, ["client-key"]))

    def status(self, path: str, headers: Any = None) -> tuple[int, Any]:
        d = self.client.post("http://proxy.test" + path, headers=headers or {},
                             data=codec.dumps({"contents": USER}))
        self.client.flush()
        response = self.successResultOf(d)
        return response.code, codec.loads(self.successResultOf(self.client.content(response)))

    def test_requireKey(self) -> None:
        """
        With C{--require-key}, C{x-goog-api-key} and C{?key=} are accepted
        on the Gemini routes; a wrong or missing key is Google's 401; the
        C{key} parameter means nothing on other routes.
        """
        count = "/v1beta/models/gem:countTokens"
        self.assertEqual(self.status(count, {b"x-goog-api-key": [b"client-key"]})[0], 200)
        self.assertEqual(self.status(count + "?key=client-key")[0], 200)
        for headers, path in (({b"x-goog-api-key": [b"wrong"]}, count), ({}, count),
                              ({}, count + "?key=wrong")):
            self.assertEqual(self.status(path, headers), (401, {"error": {
                "code": 401, "message": "unauthorized", "status": "UNAUTHENTICATED"}}))
        self.assertEqual(self.status("/v1/messages/count_tokens?key=client-key")[0], 401)
        # Percent-escapes that are not ASCII (or not UTF-8) in the query are
        # a wrong key like any other, never an error that hangs the request.
        for query in ("?key=%C2%B2", "?key=%FF%FE", "?key=client-key%00", "?alt=%FF&key=x"):
            self.assertEqual(self.status(count + query)[0], 401, query)
        self.assertEqual(self.status(count + "?key=client-key&alt=%FF")[0], 200)

    def test_keyNeverUpstreamNorLogged(self) -> None:
        """
        The client's key, from the header or the query, goes neither to
        the backend nor into the log (C{--debug} included).
        """
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        h = ProxyHarness(debug=True)
        client: Any = StubTreq(requireKeys(h.root, ["client-key"]))
        for path, headers in ((STREAM + "&key=client-key", {}),
                              (STREAM, {b"x-goog-api-key": [b"client-key"]})):
            client.post("http://proxy.test" + path, headers=headers,
                        data=codec.dumps({"contents": USER}))
            h.pump()
            received = h.backend.received[-1]
            self.assertNotIn(b"client-key", received.request.uri + received.body)
            self.assertNotIn("client-key", repr(received.headers))
            received.startSSE()
            received.event(delta("client-key is not in your output", finish_reason="stop"))
            received.done()
            h.pump()
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("POST /v1beta/models/gem:streamGenerateContent", text)
        self.assertNotIn("client-key", text.replace("client-key is not in your output", ""))


class RoutingTests(SynchronousTestCase):
    """
    The model in the path, through the one resolver: aliases, several
    backends, the model's extra fields; metrics by route template.
    """

    def harness(self) -> MultiBackendHarness:
        return MultiBackendHarness([
            BackendConfig(name="a", url="http://a.test:4000", discover=False, models=("qwen3",),
                          aliases={"gemini-2.5-pro": "qwen3"},
                          overrides={"qwen3": ModelOverride(extra={"user": "team-a"})}),
            BackendConfig(name="b", url="http://b.test:8000/v1", discover=False, models=("gpt-x",)),
        ])

    def test_aliasesBackendsExtras(self) -> None:
        """
        Gemini CLI's default model name, aliased, reaches backend C{a} with
        the model's configured C{extra}; another model in the path goes to
        backend C{b}; the reply echoes the client's name.
        """
        h = self.harness()
        d = h.post("/v1beta/models/gemini-2.5-pro:generateContent", {"contents": USER})
        received = h.backends["a"].received[-1]
        self.assertEqual(received.json(), {"model": "qwen3", "messages": HI, "stream": False,
                                           "user": "team-a"})
        answer(received)
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d))["modelVersion"], "gemini-2.5-pro")
        h.post("/v1beta/models/gpt-x:proxy:streamGenerateContent?alt=sse", {"contents": USER})
        self.assertEqual(h.backends["b"].received[-1].json()["model"], "gpt-x")

    def test_routeLabels(self) -> None:
        """
        The metrics' route label is the path's template: model names in
        paths, known or not, never become label values.
        """
        h = self.harness()
        for name in ("gemini-2.5-pro", "made-up-1", "made-up-2"):
            d = h.post(f"/v1beta/models/{name}:generateContent", {"contents": USER})
            for fake in h.backends.values():
                for received in fake.received:
                    if not received.request.finished:
                        answer(received)
            h.pump()
            self.successResultOf(d)
        h.post("/v1beta/models/x:countTokens", {"contents": USER})
        h.get("/v1beta/models/x:generateContent")
        h.get("/v1beta/whatever/secret")
        response = self.successResultOf(h.get("/metrics"))
        text = self.successResultOf(h.client.content(response)).decode()
        routes = {s.labels.get("route") for f in text_string_to_metric_families(text)
                  for s in f.samples if f.name == "ollama_proxy_requests"}
        self.assertEqual({r for r in routes if r and r.startswith("/v1beta")}, {
            "/v1beta/models/{model}:generateContent", "/v1beta/models/{model}:countTokens"})
        self.assertNotIn("made-up-1", text)


class DebugTests(SynchronousTestCase):
    """
    C{--debug} names what the backend could not take.
    """

    def test_droppedNamed(self) -> None:
        """
        Google-only fields are dropped, never an error, and named in the
        debug log; without C{--debug} nothing is logged about them.
        """
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        payload = {"contents": USER, "safetySettings": [], "cachedContent": "c/1",
                   "tools": [{"googleSearch": {}}],
                   "generationConfig": {"topK": 5, "candidateCount": 3}}
        for debug in (False, True):
            h = ProxyHarness(debug=debug)
            d = h.post(WHOLE, payload)
            answer(h.backend.received[-1])
            h.pump()
            self.assertEqual(self.successResultOf(d).code, 200)
        dropped = [formatEvent(e) for e in events if "dropped" in formatEvent(e)]
        self.assertEqual(len(dropped), 1)
        for name in ("safetySettings", "cachedContent", "tools.googleSearch",
                     "generationConfig.candidateCount"):
            self.assertIn(name, dropped[0])


class DoorTests(TreeCase):
    """
    The request grammar, checked by the real site before traversal, under
    C{/v1beta}.
    """

    def test_refusedInGoogleShape(self) -> None:
        """
        A dot segment or an encoded slash under C{/v1beta} is Google's 400,
        and nothing reaches the backend or the fallback; an unknown path is
        Google's 404.
        """
        for target in (b"/v1beta/models/..%2f..%2fadmin:generateContent",
                       b"/v1beta/models/%2e%2e/x:generateContent",
                       b"/v1beta/models/x/../../api/tags"):
            status, _, answer = self.send(b"POST", target)
            self.assertEqual((status, answer["error"]["status"]), (400, "INVALID_ARGUMENT"), target)
        status, _, answer = self.send(b"GET", b"/v1beta/cachedContents")
        self.assertEqual((status, answer["error"]["status"]), (404, "NOT_FOUND"))
        self.assertEqual(self.upstreamPaths(), [])
