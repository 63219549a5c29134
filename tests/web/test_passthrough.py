"""
The OpenAI routes relayed to the backend.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.redact import PREFIX
from ollama_proxy.testing.harness import (
    BodyCollector,
    ProxyHarness,
)
from tests.web.helpers import body, embeddingData


class OpenAIRouteTests(SynchronousTestCase):
    """
    The OpenAI routes on the proxy's base URL, with and without C{/v1}.
    """

    def test_chatCompletionsAtRoot(self) -> None:
        """
        C{/chat/completions} (some Copilot builds) goes to the backend's
        C{/v1/chat/completions} with C{:latest} stripped, streamed as it
        arrives.
        """
        h = ProxyHarness()
        d = h.post("/chat/completions", {"model": "gpt-4o:latest", "stream": True, "messages": []})
        [upstream] = h.backend.received
        self.assertEqual(upstream.path, "/v1/chat/completions")
        self.assertEqual(upstream.json()["model"], "gpt-4o")
        upstream.startSSE()
        upstream.write(b"data: {}\n\n")
        h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        h.pump()
        self.assertEqual(reader.data, b"data: {}\n\n")
        self.assertNoResult(reader.done)
        upstream.finish()
        h.pump()
        self.successResultOf(reader.done)

    def test_modelsAtRoot(self) -> None:
        """
        C{GET /models} is the backend's C{/v1/models}.
        """
        h = ProxyHarness()
        d = h.get("/models")
        self.assertEqual(h.backend.received[0].path, "/v1/models")
        h.backend.received[0].respond(200, {"data": [{"id": "a"}]})
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d)), {"data": [{"id": "a"}]})

    def test_embeddings(self) -> None:
        """
        C{/v1/embeddings} is relayed with C{:proxy} stripped.
        """
        h = ProxyHarness()
        d = h.post("/v1/embeddings", {"model": "emb:proxy", "input": "x"})
        [upstream] = h.backend.received
        self.assertEqual((upstream.path, upstream.json()["model"]), ("/v1/embeddings", "emb"))
        upstream.respond(200, embeddingData([[1.0]]))
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d))["data"][0]["embedding"], [1.0])


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
        reader = BodyCollector(h, response)
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
        reader = BodyCollector(h, self.successResultOf(d))
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


BACKEND_KEY = "sk-host/ILE+backend-0123456789abcdef"
INBOUND_KEY = "in-key-ABCDEFGH12345678"


class SplitKeyTests(SynchronousTestCase):
    """
    A key a backend (or a model echoing it token by token) splits over the
    deltas of a relayed OpenAI stream never reaches the client, which joins
    the deltas: the hostile-backend run's release blocker.
    """

    def relayed(self, path: str, payload: dict[str, Any], events: list[dict[str, Any]],
                split: int) -> tuple[bytes, list[dict[str, Any]]]:
        h = ProxyHarness(apiKey=BACKEND_KEY, secrets=(INBOUND_KEY,))
        d = h.post(path, {**payload, "stream": True},
                   headers={b"Authorization": [b"Bearer " + INBOUND_KEY.encode()]})
        [upstream] = h.backend.received
        upstream.startSSE()
        data = b"".join(b"data: " + codec.dumps(e) + b"\n\n" for e in events)
        data += b"data: [DONE]\n\n"
        for piece in (data[:split], data[split:]):
            upstream.write(piece)
            h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        upstream.finish()
        h.pump()
        self.successResultOf(reader.done)
        chunks = [codec.loads(e[len(b"data: "):]) for e in reader.data.split(b"\n\n")
                  if e.startswith(b"data: {")]
        self.assertTrue(reader.data.endswith(b"data: [DONE]\n\n"), reader.data)
        return reader.data, chunks

    def assertNoPiece(self, data: bytes, joined: str) -> None:
        for secret in (BACKEND_KEY, INBOUND_KEY):
            self.assertNotIn(secret[:PREFIX], joined)
            self.assertNotIn(secret[1:].encode(), data)

    @settings(max_examples=40, deadline=None)
    @given(secret=st.sampled_from((BACKEND_KEY, INBOUND_KEY)), cut=st.integers(1, 22),
           split=st.integers(0, 2000), root=st.booleans())
    def test_chatDeltas(self, secret: str, cut: int, split: int, root: bool) -> None:
        """
        C{/v1/chat/completions} and C{/chat/completions}: the key in two
        deltas (C{"s"}, then the rest, or any other cut), at any split of
        the reads: the joined content has C{<redacted>} and no piece of it.
        """
        pieces = ["key: ", secret[:cut], secret[cut:], " done"]
        events = [{"id": "c", "object": "chat.completion.chunk", "model": "m",
                   "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                  for p in pieces]
        path = "/chat/completions" if root else "/v1/chat/completions"
        data, chunks = self.relayed(path, {"model": "m", "messages": []}, events,
                                    split % 2000)
        joined = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        self.assertEqual(joined, "key: <redacted> done")
        self.assertNoPiece(data, joined)

    def test_completionsText(self) -> None:
        """
        C{/v1/completions}: the key over several C{text} pieces, the last
        held one released before C{[DONE]}.
        """
        pieces = ["s", "k-host/ILE", "+backend-0123456789abcdef", " and s"]
        events = [{"id": "c", "object": "text_completion", "model": "m",
                   "choices": [{"index": 0, "text": p, "finish_reason": None}]} for p in pieces]
        data, chunks = self.relayed("/v1/completions", {"model": "m", "prompt": "x"}, events, 0)
        joined = "".join(c["choices"][0]["text"] for c in chunks)
        self.assertEqual(joined, "<redacted> and s")
        self.assertNoPiece(data, joined)

    def test_toolArgumentsAndReasoning(self) -> None:
        """
        A tool call's arguments and the reasoning text, each with the key in
        pieces, in one stream: each text is watched on its own.
        """
        def chunk(delta: dict[str, Any]) -> dict[str, Any]:
            return {"id": "c", "model": "m",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}

        def call(arguments: str) -> dict[str, Any]:
            return chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]})

        events = [chunk({"reasoning_content": "i"}), call('{"k": "s'),
                  chunk({"reasoning_content": "n-key-ABCDEFGH12345678"}),
                  call("k-host/ILE+backend-0123456789abcdef"), call('"}'),
                  {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
        data, chunks = self.relayed("/v1/chat/completions", {"model": "m", "messages": []},
                                    events, 0)
        deltas = [c["choices"][0]["delta"] for c in chunks]
        reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
        arguments = "".join(t["function"]["arguments"] for d in deltas
                            for t in d.get("tool_calls", []))
        self.assertEqual((reasoning, arguments), ("<redacted>", '{"k": "<redacted>"}'))
        self.assertNoPiece(data, reasoning + arguments)

    def test_cleanStreamAsItCame(self) -> None:
        """
        A stream with nothing to hold reaches the client byte for byte.
        """
        h = ProxyHarness(apiKey=BACKEND_KEY, secrets=(INBOUND_KEY,))
        d = h.post("/v1/chat/completions", {"model": "m", "stream": True, "messages": []},
                   headers={b"Authorization": [b"Bearer " + INBOUND_KEY.encode()]})
        [upstream] = h.backend.received
        upstream.startSSE()
        data = (b'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hello"}}]}\n\n'
                b': ping\n\n'
                b'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": " world."},'
                b' "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
        upstream.write(data)
        h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        upstream.finish()
        h.pump()
        self.successResultOf(reader.done)
        self.assertEqual(reader.data, data)

    def test_streamWithOtherContentType(self) -> None:
        """
        A streamed request answered as SSE under another content type (an
        SDK reads it as SSE all the same) is watched too.
        """
        h = ProxyHarness(apiKey=BACKEND_KEY, secrets=(INBOUND_KEY,))
        d = h.post("/v1/chat/completions", {"model": "m", "stream": True, "messages": []},
                   headers={b"Authorization": [b"Bearer " + INBOUND_KEY.encode()]})
        [upstream] = h.backend.received
        upstream.request.setResponseCode(200)
        upstream.request.setHeader(b"content-type", b"text/plain")
        for piece in ("s", BACKEND_KEY[1:]):
            upstream.write(b'data: {"choices": [{"index": 0, "delta": {"content": "'
                           + piece.encode() + b'"}}]}\n\n')
        h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        upstream.finish()
        h.pump()
        self.successResultOf(reader.done)
        self.assertNotIn(BACKEND_KEY[1:].encode(), reader.data)
        self.assertIn(b"<redacted>", reader.data)
