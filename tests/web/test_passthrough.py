"""
The OpenAI routes relayed to the backend.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
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
