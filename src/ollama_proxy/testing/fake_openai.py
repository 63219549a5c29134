# -*- test-case-name: tests.testing.test_fake_openai -*-
"""
A small, deterministic OpenAI-compatible server for try-outs, tests and
benchmarks.

It answers C{/v1/models}, C{/v1/chat/completions} (streamed and not),
C{/v1/completions} and C{/v1/embeddings} with canned data, describes its
models like LiteLLM does at C{/v1/model/info} (and C{/model/info}), records what it
received (C{GET /_fake/requests}), and needs no network and no API key.  Run
it on its own with C{twistd -n fake-openai}, or inside the proxy with
C{twistd -n ollama-proxy --demo}.

Models:
  - C{fake-model}: echoes a canned sentence word by word.
  - C{fake-reasoner}: streams C{reasoning_content} before its answer.
  - C{fake-tools}: calls the first tool in the request, with its arguments
    split across chunks as real backends do; once the last message is a
    tool result, it answers in text (so an agent's loop ends).
  - C{fake-agent}: a coding agent's demo: calls the agent's shell tool once
    with a harmless command in that tool's own schema, then answers with
    what it returned (L{ollama_proxy.testing.fake_agent}).
  - C{fake-thinktags}: reasons inline, C{<think>...</think>} at the start of
    C{content} with the tags split across deltas (as some vLLM set-ups
    stream DeepSeek-R1), then answers.
  - C{fake-embed}: for C{/v1/embeddings}.
With C{logprobs: true}, every content delta carries
C{choices[0].logprobs.content} (and C{top_logprobs} alternatives when asked).
A reply is its sentence, never padded: C{max_tokens} smaller than it cuts it
to that many words and ends it with C{finish_reason: "length"}.  Every tool
call gets a fresh id.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ollama_proxy.protocol import codec
from ollama_proxy.testing.fake_agent import Call, agentTurn

MODELS = ("fake-model", "fake-reasoner", "fake-tools", "fake-agent", "fake-thinktags", "fake-embed")
REPLY = "Hello! I am the ollama-proxy fake backend, and this reply was streamed to you word by word."
REASONING = "The user greeted me. I should answer politely."
MODEL_INFO: dict[str, dict[str, Any]] = {
    "fake-model": {"max_input_tokens": 16384, "supports_function_calling": False,
                   "supports_vision": True, "mode": "chat"},
    "fake-reasoner": {"max_input_tokens": 65536, "supports_function_calling": False,
                      "supports_reasoning": True, "mode": "chat"},
    "fake-tools": {"max_input_tokens": 131072, "max_output_tokens": 8192,
                   "supports_function_calling": True, "mode": "chat"},
    "fake-agent": {"max_input_tokens": 131072, "max_output_tokens": 8192,
                   "supports_function_calling": True, "mode": "chat"},
    "fake-thinktags": {"max_input_tokens": 32768, "supports_function_calling": False,
                       "supports_reasoning": True, "mode": "chat"},
    "fake-embed": {"max_input_tokens": 512, "output_vector_size": 8, "mode": "embedding"},
}
"""What C{/v1/model/info} says about each model, in LiteLLM's field names."""
THINK_TAG_DELTAS = ("<thi", "nk>\n", "The user greeted me.", " I should answer politely.\n</th", "ink>\n\n")
"""C{fake-thinktags}'s reasoning as streamed: L{REASONING} inside tags cut
mid-tag."""


def _words(text: str) -> list[str]:
    """
    Split C{text} into stream deltas that join back to C{text}.
    """
    parts = text.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts)]


def replyTokens(maxTokens: Any, text: str = REPLY) -> tuple[list[str], str]:
    """
    The deltas of a reply and its finish reason: the whole text, one word
    per delta, or its first C{max_tokens} words and C{length} when that is
    fewer.  Never padded: agents ask for 32,000 tokens and must get an
    answer, not a sentence repeated to the limit.

    @param maxTokens: the request's C{max_tokens}, if any.
    @param text: the reply.
    @return: C{(deltas, finish_reason)}.
    """
    words = _words(text)
    if isinstance(maxTokens, int) and not isinstance(maxTokens, bool) and 0 < maxTokens < len(words):
        return words[:maxTokens], "length"
    return words, "stop"


def toolCallDeltas(name: str, arguments: Any, callId: str | None = None) -> list[dict[str, Any]]:
    """
    The stream deltas of one tool call, its arguments split in two as real
    backends split them.

    @param name: the tool's name.
    @param arguments: its arguments, a JSON object.
    @param callId: its id (a fresh one when C{None}).
    """
    text = codec.dumps(arguments).decode()
    half = len(text) // 2
    callId = callId or "call_" + secrets.token_hex(12)
    return [
        {"tool_calls": [{"index": 0, "id": callId, "type": "function",
                         "function": {"name": name, "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": text[:half]}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": text[half:]}}]},
    ]


def embedding(text: str, dimensions: int = 8) -> list[float]:
    """
    A deterministic unit vector for C{text}.

    @param text: the input.
    @param dimensions: the vector length.
    @return: the L2-normalised vector.
    """
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _chatProblem(body: dict[str, Any]) -> str | None:
    """
    What a real server would refuse in a chat request, as its 400 message
    (the fake must answer malformed input as a backend does, not crash).

    @param body: the decoded request.
    @return: the reason, or C{None} when the request is well formed.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "messages must be a list of objects"
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list)
        or not all(isinstance(t, dict) and isinstance(t.get("function", {}), dict) for t in tools)
    ):
        return "tools must be a list of function objects"
    return None


@attrs.define
class Received:
    """
    One request the fake backend got, kept open so a test can answer it.

    @ivar request: the live twisted.web request.
    @ivar method: e.g. C{"POST"}.
    @ivar path: e.g. C{"/v1/chat/completions"}.
    @ivar headers: lower-cased header names to their first value.
    @ivar body: the raw body.
    """

    request: Request
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    lost: list[Any] = attrs.field(factory=list)

    def json(self) -> Any:
        """
        @return: the decoded body.
        """
        return codec.loads(self.body)

    def respond(self, status: int, body: Any, contentType: bytes = b"application/json") -> None:
        """
        Answer in one go.

        @param status: HTTP status.
        @param body: bytes, or a value to encode as JSON.
        @param contentType: the C{Content-Type}.
        """
        self.request.setResponseCode(status)
        self.request.setHeader(b"Content-Type", contentType)
        self.request.write(body if isinstance(body, bytes) else codec.dumps(body))
        self.request.finish()

    def startSSE(self) -> None:
        """
        Send 200 and the C{text/event-stream} header; events follow.
        """
        self.request.setResponseCode(200)
        self.request.setHeader(b"Content-Type", b"text/event-stream")

    def write(self, data: bytes) -> None:
        """
        Write raw bytes of the response body.
        """
        self.request.write(data)

    def event(self, obj: Any) -> None:
        """
        Write one SSE event with C{obj} as JSON data.
        """
        self.request.write(b"data: " + codec.dumps(obj) + b"\n\n")

    def finish(self) -> None:
        """
        End the response body.
        """
        self.request.finish()

    def done(self) -> None:
        """
        End an SSE stream the way OpenAI servers do: C{data: [DONE]}, then
        the end of the body.
        """
        self.write(b"data: [DONE]\n\n")
        self.finish()



class FakeOpenAI(Resource):
    """
    The fake server's whole resource tree in one class.

    @ivar requests: C{(method, path, headers, body)} of every request
        received, newest last (the last 1,000 are kept).
    @ivar delay: seconds between streamed chunks; 0 writes them all at once.
    @ivar apiKey: if set, requests must carry C{Authorization: Bearer <key>}.
    @ivar scripted: whether to answer nothing by itself: every request is
        kept open in L{received} for a test to answer step by step (the mode
        L{ollama_proxy.testing.harness.ProxyHarness} uses).
    @ivar received: the requests held open in scripted mode.
    @ivar toolCallId: the id of every tool call, as backends that number
        calls per request give (C{None}: a fresh one each time).
    @ivar headerDelay: seconds a C{POST} waits before its answer starts
        (a slow backend: the time to its response headers).
    """

    isLeaf = True

    def __init__(
        self,
        reactor: IReactorTime | None = None,
        delay: float = 0.0,
        apiKey: str | None = None,
        scripted: bool = False,
        toolCallId: str | None = None,
        headerDelay: float = 0.0,
    ) -> None:
        super().__init__()
        if (delay or headerDelay) and reactor is None:
            raise ValueError("a delay needs a reactor")
        self.reactor = reactor
        self.scripted = scripted
        self.received: list[Received] = []
        self.delay = delay
        self.headerDelay = headerDelay
        self.apiKey = apiKey
        self.toolCallId = toolCallId
        self.requests: list[dict[str, Any]] = []

    def render(self, request: Request) -> Any:
        if self.scripted:
            return self._hold(request)
        if self.headerDelay and request.method == b"POST":
            assert self.reactor is not None
            gone: list[object] = []
            request.notifyFinish().addErrback(gone.append)

            def later() -> None:
                if gone:
                    return
                result = self._answer(request)
                if result is not NOT_DONE_YET:
                    request.write(result)
                    request.finish()

            self.reactor.callLater(self.headerDelay, later)
            return NOT_DONE_YET
        return self._answer(request)

    def _answer(self, request: Request) -> Any:
        """
        The answer to C{request} (bytes, or C{NOT_DONE_YET} for a stream).
        """
        path = request.path.decode("latin-1").rstrip("/")
        if path.startswith("/v1"):
            path = path[3:]
        method = (request.method or b"").decode("ascii")
        body = request.content.read() if request.content is not None else b""
        if path == "/_fake/requests":
            return self._json(request, {"requests": self.requests})
        headers = {
            k.decode("latin-1").lower(): v[0].decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        decoded: Any = None
        if body:
            try:
                decoded = codec.loads(body)
            except codec.JSONDecodeError:
                return self._error(request, 400, "body is not JSON")
        self.requests.append({"method": method, "path": path, "headers": headers, "body": decoded})
        del self.requests[:-1000]
        if self.apiKey and headers.get("authorization") != f"Bearer {self.apiKey}":
            return self._error(request, 401, "invalid API key", "authentication_error")
        if path == "/models" and method == "GET":
            return self._json(
                request,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                        for m in MODELS
                    ],
                },
            )
        if path == "/model/info" and method == "GET":
            return self._json(
                request,
                {
                    "data": [
                        {"model_name": m, "litellm_params": {"model": f"openai/{m}"},
                         "model_info": {"id": f"fake-{i}", "key": m, **MODEL_INFO[m]}}
                        for i, m in enumerate(MODELS)
                    ]
                },
            )
        if method != "POST" or not isinstance(decoded, dict):
            return self._error(request, 404, f"no route {method} {path}")
        model = decoded.get("model")
        if model not in MODELS:
            return self._error(request, 404, f"The model `{model}` does not exist", "not_found_error")
        if path == "/chat/completions":
            problem = _chatProblem(decoded)
            if problem is not None:
                return self._error(request, 400, problem)
            return self._chat(request, decoded)
        if path == "/completions":
            return self._completion(request, decoded)
        if path == "/embeddings":
            return self._embeddings(request, decoded)
        return self._error(request, 404, f"no route {method} {path}")

    def _hold(self, request: Request) -> Any:
        """
        Scripted mode: record the request and leave it open.
        """
        headers = {
            k.decode().lower(): v[0].decode()
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        entry = Received(
            request,
            (request.method or b"").decode(),
            request.path.decode(),
            headers,
            request.content.read() if request.content is not None else b"",
        )
        request.notifyFinish().addErrback(entry.lost.append)
        self.received.append(entry)
        return NOT_DONE_YET

    def _json(self, request: Request, obj: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return codec.dumps(obj)

    def _error(
        self, request: Request, status: int, message: str, kind: str = "invalid_request_error"
    ) -> bytes:
        return self._json(
            request,
            {"error": {"message": message, "type": kind, "param": None, "code": None}},
            status,
        )

    def _events(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, dict[str, int]]:
        """
        The deltas of a chat reply, its finish reason and usage.
        """
        deltas: list[dict[str, Any]] = []
        model = body["model"]
        tools = body.get("tools")
        messages = body.get("messages") or []
        answered = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
        text = REPLY
        if model == "fake-tools" and tools and not answered:
            name = tools[0].get("function", {}).get("name", "tool")
            deltas = toolCallDeltas(name, {"city": "Paris", "unit": "celsius"}, self.toolCallId)
            return deltas, "tool_calls", {"prompt_tokens": 12, "completion_tokens": 3}
        if model == "fake-agent":
            turn = agentTurn(messages, tools or ())
            if isinstance(turn, Call):
                deltas = toolCallDeltas(turn.name, turn.arguments, self.toolCallId)
                return deltas, "tool_calls", {"prompt_tokens": 12, "completion_tokens": 3}
            text = turn
        if model == "fake-reasoner":
            deltas.extend({"reasoning_content": w} for w in _words(REASONING))
        if model == "fake-thinktags":
            deltas.extend({"content": piece} for piece in THINK_TAG_DELTAS)
        tokens, finish = replyTokens(body.get("max_tokens"), text)
        deltas.extend({"content": t} for t in tokens)
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
        return deltas, finish, {"prompt_tokens": prompt, "completion_tokens": len(tokens)}

    @staticmethod
    def _logprobs(token: str, top: Any) -> dict[str, Any]:
        """
        Deterministic C{logprobs} for one content delta.

        @param token: the delta's text.
        @param top: the request's C{top_logprobs}.
        """
        entry: dict[str, Any] = {"token": token, "logprob": -0.25, "bytes": list(token.encode("utf-8"))}
        count = top if isinstance(top, int) and not isinstance(top, bool) else 0
        entry["top_logprobs"] = [
            {"token": token, "logprob": -0.25, "bytes": list(token.encode("utf-8"))},
            {"token": "?", "logprob": -3.5, "bytes": [63]},
        ][:count]
        return {"content": [entry]}

    def _chat(self, request: Request, body: dict[str, Any]) -> Any:
        deltas, finish, usage = self._events(body)
        withLogprobs = body.get("logprobs") is True
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        created = int(time.time())
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": ""}
            for delta in deltas:
                if "content" in delta:
                    message["content"] += delta["content"]
                if "reasoning_content" in delta:
                    message["reasoning_content"] = message.get("reasoning_content", "") + delta["reasoning_content"]
            if any("tool_calls" in d for d in deltas):
                first = deltas[0]["tool_calls"][0]
                arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas)
                message["content"] = None
                message["tool_calls"] = [{"id": first["id"], "type": "function",
                                          "function": {"name": first["function"]["name"], "arguments": arguments}}]
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
            if withLogprobs:
                choice["logprobs"] = {"content": [
                    self._logprobs(d["content"], body.get("top_logprobs"))["content"][0]
                    for d in deltas if d.get("content")
                ]}
            return self._json(request, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": created,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            })
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                "model": body["model"]}
        events: list[bytes] = []
        first = True
        for delta in deltas:
            if first:
                delta = {"role": "assistant", **delta}
                first = False
            streamed: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
            if withLogprobs and delta.get("content"):
                streamed["logprobs"] = self._logprobs(delta["content"], body.get("top_logprobs"))
            events.append(self._sse({**base, "choices": [streamed]}))
        events.append(self._sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(self._sse({**base, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return self._stream(request, events)

    def _completion(self, request: Request, body: dict[str, Any]) -> Any:
        tokens, finish = replyTokens(body.get("max_tokens"))
        base = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": body["model"]}
        if not body.get("stream"):
            return self._json(request, {**base, "choices": [
                {"index": 0, "text": "".join(tokens), "finish_reason": finish}]})
        events = [self._sse({**base, "choices": [{"index": 0, "text": t, "finish_reason": None}]})
                  for t in tokens]
        events.append(self._sse({**base, "choices": [{"index": 0, "text": "", "finish_reason": finish}]}))
        events.append(b"data: [DONE]\n\n")
        return self._stream(request, events)

    def _embeddings(self, request: Request, body: dict[str, Any]) -> Any:
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return self._error(request, 400, "input must be a string or a list of strings")
        dimensions = body.get("dimensions") or 8
        data = [{"object": "embedding", "index": i, "embedding": embedding(text, dimensions)}
                for i, text in enumerate(inputs)]
        tokens = sum(len(text.split()) for text in inputs)
        return self._json(request, {"object": "list", "data": data, "model": body["model"],
                                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @staticmethod
    def _sse(obj: Any) -> bytes:
        return b"data: " + codec.dumps(obj) + b"\n\n"

    def _stream(self, request: Request, events: list[bytes]) -> Any:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        if self.delay <= 0:
            request.write(b"".join(events))
            request.finish()
            return NOT_DONE_YET
        calls: list[IDelayedCall] = []
        gone: list[object] = []

        def stop(reason: object) -> None:
            gone.append(reason)
            if calls and calls[-1].active():
                calls[-1].cancel()

        request.notifyFinish().addErrback(stop)

        def step(i: int) -> None:
            if gone:
                return
            request.write(events[i])
            if i + 1 < len(events):
                assert self.reactor is not None  # the constructor insists on it
                calls.append(self.reactor.callLater(self.delay, step, i + 1))
                del calls[:-1]
            else:
                request.finish()

        step(0)
        return NOT_DONE_YET
